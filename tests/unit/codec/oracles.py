"""Oracles for the token release planner: the two earlier generations of it.

``devmemtcp.codec.tokens`` keeps one planner (:func:`plan_dontneed` /
:func:`plan_runs`, and :class:`ReleaseQueue` over them). These are the
straightforward forms it replaced, kept here as references for property
tests:

* :func:`coalesce_tokens` + :func:`dontneed_chunks`: sort, merge into
  ``struct dmabuf_token`` ranges, then split the ranges greedily so that no
  SO_DEVMEM_DONTNEED call carries more than 128 ranges or 1024 tokens
  (``sock_devmem_dontneed``, net/core/sock.c);
* :func:`dedupe_sorted` + :func:`chunk_sorted_tokens`: the same greedy chunks
  computed in index space.

``dontneed_chunks`` cuts a range that reaches past 2**32 - 1 as the kernel
counts it (``token_start + j`` in u32: it continues at 0).
"""

from __future__ import annotations

import itertools
import struct

import numpy as np

from devmemtcp import abi

_PACK_RANGE = struct.Struct("<II").pack


def coalesce_tokens(tokens: np.ndarray) -> np.ndarray:
    """Sort ``tokens`` (uint32, shape ``(n,)``) and merge runs of consecutive
    values into ``struct dmabuf_token`` ranges.

    Returns an array of ``abi.DMABUF_TOKEN_DTYPE`` (token_start, token_count),
    ascending, covering each distinct input token exactly once (duplicates are
    dropped: the kernel would skip a token already given back).
    """
    return coalesce_sorted(np.sort(np.asarray(tokens, dtype=np.uint32), kind="stable"))


def coalesce_sorted(t: np.ndarray) -> np.ndarray:
    """:func:`coalesce_tokens` for tokens already sorted ascending (uint32)."""
    n = t.shape[0]
    if n == 0:
        return np.empty(0, abi.DMABUF_TOKEN_DTYPE)
    if n > 1:
        d = np.diff(t)
        ones = d == 1
        if ones.all():  # one contiguous run: the common case
            out = np.empty((1, 2), np.uint32)
            out[0, 0] = t[0]
            out[0, 1] = n
            return out.view(abi.DMABUF_TOKEN_DTYPE).reshape(1)
        if not d.all():  # duplicates: keep the first of each run of equal tokens
            keep = np.empty(n, bool)
            keep[0] = True
            np.not_equal(d, 0, out=keep[1:])
            return coalesce_sorted(t[keep])
        brk = np.flatnonzero(~ones)
    else:
        brk = np.empty(0, np.int64)
    m = brk.shape[0] + 1
    out = np.empty((m, 2), np.uint32)
    out[0, 0] = t[0]
    out[1:, 0] = t[brk + 1]
    # run lengths: distance between consecutive run starts (index space)
    bounds = np.empty(m + 1, np.int64)
    bounds[0] = 0
    bounds[1:-1] = brk + 1
    bounds[-1] = n
    out[:, 1] = np.diff(bounds)
    return out.view(abi.DMABUF_TOKEN_DTYPE).reshape(m)


def dontneed_chunks(
    ranges: np.ndarray,
    max_tokens: int = abi.MAX_DONTNEED_TOKENS,
    max_frags: int = abi.MAX_DONTNEED_FRAGS,
) -> list[np.ndarray]:
    """Split ``dmabuf_token`` ranges into SO_DEVMEM_DONTNEED-sized arrays.

    Each returned array (``abi.DMABUF_TOKEN_DTYPE``) holds at most
    ``max_tokens`` ranges (128: larger optlen is EINVAL) and at most
    ``max_frags`` frags (1024: ``sock_devmem_dontneed`` silently stops after
    that many). A range crossing a ``max_frags`` boundary is cut in two, so
    every chunk but the last carries exactly ``max_frags`` frags unless the
    range limit cuts it first. Loops run once per chunk, never per frag.
    """
    r = np.asarray(ranges, dtype=abi.DMABUF_TOKEN_DTYPE)
    if r.shape[0] == 0:
        return []
    counts = r["token_count"].astype(np.int64)
    keep = counts > 0
    if not keep.all():
        r, counts = r[keep], counts[keep]
        if r.shape[0] == 0:
            return []
    cum_end = np.cumsum(counts)
    total = int(cum_end[-1])
    if total <= max_frags and r.shape[0] <= max_tokens:
        return [r.copy()]
    # Greedy: each chunk takes as many whole ranges as both limits allow, then
    # fills the remaining frag room with the head of the next range.
    # searchsorted finds each chunk's end, so the loop runs once per chunk.
    m = r.shape[0]
    starts = r["token_start"]
    chunks: list[np.ndarray] = []
    i, used = 0, 0  # current range, frags of it already given out
    while i < m:
        base = int(cum_end[i] - counts[i]) + used
        limit = base + max_frags
        j = min(int(np.searchsorted(cum_end, limit, side="right")), i + max_tokens, m)
        if j == i:  # range i alone fills the chunk
            chunk = np.empty(1, abi.DMABUF_TOKEN_DTYPE)
            chunk[0] = ((int(starts[i]) + used) & 0xFFFFFFFF, max_frags)  # u32, as the kernel
            chunks.append(chunk)
            used += max_frags
            if used == counts[i]:
                i, used = i + 1, 0
            continue
        room = limit - int(cum_end[j - 1])
        tail = 1 if (j < m and room > 0 and j - i < max_tokens) else 0
        chunk = np.empty(j - i + tail, abi.DMABUF_TOKEN_DTYPE)
        chunk[: j - i] = r[i:j]
        if used:
            chunk[0] = ((int(starts[i]) + used) & 0xFFFFFFFF, int(counts[i]) - used)
        if tail:
            chunk[-1] = (int(starts[j]), room)
        chunks.append(chunk)
        i, used = j, (room if tail else 0)
        if tail and used == counts[i]:
            i, used = i + 1, 0
    return chunks


def dedupe_sorted(t: np.ndarray) -> np.ndarray:
    """Drop repeated values from an ascending array (vectorised, no sort)."""
    if t.shape[0] < 2:
        return t
    d = t[1:] - t[:-1]
    if d.all():
        return t
    keep = np.empty(t.shape[0], bool)
    keep[0] = True
    np.not_equal(d, 0, out=keep[1:])
    return t[keep]


def chunk_sorted_tokens(
    t: np.ndarray,
    max_tokens: int = abi.MAX_DONTNEED_TOKENS,
    max_frags: int = abi.MAX_DONTNEED_FRAGS,
    full_only: bool = False,
) -> tuple[list[np.ndarray], list[int]]:
    """Plan SO_DEVMEM_DONTNEED calls for ascending, distinct tokens ``t``: the
    kept planner's contract, written independently of it (a walk over the runs,
    no index arithmetic shared with codec.tokens), so the property tests
    compare two implementations rather than a copy with itself.

    Greedy chunks of at most ``max_frags`` frags and ``max_tokens`` ranges
    (sock_devmem_dontneed's limits); a run longer than the room left is cut.
    With ``full_only`` a last chunk that is full in neither dimension is not
    planned. Returns ``(chunks, ends)``: ``DMABUF_TOKEN_DTYPE`` arrays and,
    for each, the index in ``t`` where it ends."""
    n = int(t.shape[0])
    if n == 0:
        return [], []
    cuts = [0, *(np.flatnonzero(np.diff(t.astype(np.int64)) != 1) + 1).tolist(), n]
    runs = [[int(t[a]), b - a] for a, b in itertools.pairwise(cuts)]
    chunks: list[np.ndarray] = []
    ends: list[int] = []
    pos = 0
    cur: list[tuple[int, int]] = []
    frags = 0
    for start, count in runs:
        while count:
            take = min(count, max_frags - frags)
            cur.append((start, take))
            frags += take
            start, count = start + take, count - take
            if frags == max_frags or len(cur) == max_tokens:
                pos += frags
                chunks.append(np.array(cur, np.uint32).view(abi.DMABUF_TOKEN_DTYPE).reshape(-1))
                ends.append(pos)
                cur, frags = [], 0
    if cur and not full_only:
        pos += frags
        chunks.append(np.array(cur, np.uint32).view(abi.DMABUF_TOKEN_DTYPE).reshape(-1))
        ends.append(pos)
    return chunks, ends

