"""Token release: the run algebra, the SO_DEVMEM_DONTNEED planner and the Receiver's queue.

``sock_devmem_dontneed`` (net/core/sock.c) takes an array of ``struct
dmabuf_token`` ranges (token_start, token_count; u32 each): more than
``MAX_DONTNEED_TOKENS`` (128) ranges, or an optlen that is not a multiple of
8, is EINVAL, and it stops silently after ``MAX_DONTNEED_FRAGS`` (1024)
tokens; ``token_start + j`` is u32 arithmetic. Tokens come from the socket's
xarray (lowest free id from 1), so a flow's released tokens are nearly
always a few runs of consecutive values.

* :class:`ReleaseQueue` holds the tokens an application gave back and not yet
  handed to the kernel, as runs while they are few (no copy, no sort, a step
  per run) and as a uint32 array otherwise, switching by itself.
* :func:`plan_dontneed` (ascending array) and :func:`plan_runs` (runs) are the
  one planner: greedy calls of exactly 1024 tokens or 128 ranges, the last
  one possibly smaller (or left queued with ``full_only``).
* :func:`token_runs`, :func:`merge_runs`, :func:`drop_tokens`: the run algebra
  (flat ``[start, count, ...]`` lists).
"""

from __future__ import annotations

import struct

import numpy as np

from devmemtcp import abi

__all__ = [
    "ReleaseQueue",
    "drop_tokens",
    "merge_runs",
    "plan_dontneed",
    "plan_runs",
    "token_runs",
]

_U32_MASK = 0xFFFFFFFF


def _dedupe_sorted(t: np.ndarray) -> np.ndarray:
    """Drop repeated values from an ascending array (vectorised, no sort)."""
    if t.shape[0] < 2:
        return t
    keep = np.empty(t.shape[0], bool)
    keep[0] = True
    np.not_equal(t[1:], t[:-1], out=keep[1:])
    return t[keep]


_PACK_RANGE = struct.Struct("<II").pack
_TOKEN_DTYPE = abi.DMABUF_TOKEN_DTYPE
_ONE_U32 = np.uint32(1)
#: at most this many runs of consecutive tokens are planned in plain Python (a
#: loop per run, never per token); more go through the vectorised plan
_FEW_RUNS = 32


def plan_dontneed(
    t: np.ndarray,
    full_only: bool = False,
    max_tokens: int = abi.MAX_DONTNEED_TOKENS,
    max_frags: int = abi.MAX_DONTNEED_FRAGS,
) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """Plan SO_DEVMEM_DONTNEED calls for ascending tokens ``t`` (uint32,
    shape ``(n,)``, duplicates allowed), in as few numpy calls as possible.

    Returns ``(toks, chunks, ends)``: ``toks`` is ``t`` without duplicates
    (``t`` itself when it has none); ``chunks`` are ``DMABUF_TOKEN_DTYPE``
    arrays, one per call, covering ``toks`` in order, greedily: a call closes
    at ``max_frags`` tokens (cutting a run of consecutive tokens) or at
    ``max_tokens`` ranges, the limits of ``sock_devmem_dontneed``
    (net/core/sock.c: 1024 frags, 128 ranges). ``ends[i]`` is the index in
    ``toks`` where call ``i`` ends (``toks[ends[i]:]`` is what is left after
    it). With ``full_only`` a last call full in neither limit is not planned
    (the caller keeps those tokens queued).

    Duplicates and run breaks are found in one pass (a subtraction); when the
    tokens form fewer than 32 runs (the steady state of a flow: the kernel
    hands out the lowest free ids) the calls are cut from the runs
    (:func:`plan_runs`, a step per run), otherwise in index space, a step per
    call.
    """
    n = t.shape[0]
    if n < 2:
        return t, *_chunk_sorted(t, max_tokens, max_frags, full_only)
    d = t[1:] - t[:-1]  # sorted: no wraparound; 0 marks a duplicate, > 1 a gap
    if np.count_nonzero(d) != n - 1:
        t = _dedupe_sorted(t)
        return t, *_chunk_sorted(t, max_tokens, max_frags, full_only)
    first = int(t[0])
    if int(t[n - 1]) - first == n - 1:  # distinct and spanning n values: one run
        return t, *plan_runs([first], [n], full_only, max_tokens, max_frags)
    brk = (d != _ONE_U32).nonzero()[0]
    if brk.shape[0] >= _FEW_RUNS:
        return t, *_chunk_sorted(t, max_tokens, max_frags, full_only, breaks=brk)
    cut = brk + 1
    bounds = cut.tolist()
    starts = [first, *t[cut].tolist()]
    counts = [b - a for a, b in zip([0, *bounds], [*bounds, n], strict=True)]
    return t, *plan_runs(starts, counts, full_only, max_tokens, max_frags)


def plan_runs(
    starts: list[int],
    counts: list[int],
    full_only: bool = False,
    max_tokens: int = abi.MAX_DONTNEED_TOKENS,
    max_frags: int = abi.MAX_DONTNEED_FRAGS,
) -> tuple[list[np.ndarray], list[int]]:
    """:func:`plan_dontneed` for tokens given as ascending, disjoint,
    non-adjacent runs ``starts[i] .. starts[i] + counts[i] - 1``: the same
    greedy chunks (a chunk closes at ``max_frags`` frags, cutting a run, or at
    ``max_tokens`` ranges), in a loop over runs and chunks, never over tokens;
    ``ends`` count the tokens planned up to the end of each chunk. A run that
    reaches past 2**32 - 1 continues at 0, as ``token_start + j`` does in the
    kernel (u32)."""
    chunks: list[np.ndarray] = []
    ends: list[int] = []
    if len(starts) == 1 and max_tokens > 1:  # one run: whole max_frags pieces of it, then the tail
        s, c = starts[0], counts[0]
        for done in range(max_frags, c + 1, max_frags):
            chunks.append(np.frombuffer(bytearray(_PACK_RANGE((s + done - max_frags) & _U32_MASK, max_frags)),
                                        _TOKEN_DTYPE))
            ends.append(done)
        tail = c % max_frags
        if tail and not full_only:
            chunks.append(np.frombuffer(bytearray(_PACK_RANGE((s + c - tail) & _U32_MASK, tail)),
                                        _TOKEN_DTYPE))
            ends.append(c)
        return chunks, ends
    flat: list[int] = []  # the open chunk, token_start/token_count pairs
    room = max_frags
    done = 0  # tokens planned in closed chunks
    for s, c in zip(starts, counts, strict=True):
        while c:
            take = c if c < room else room
            flat += (s & _U32_MASK, take)
            s += take
            c -= take
            room -= take
            if room == 0 or len(flat) == 2 * max_tokens:
                done += max_frags - room
                chunks.append(np.frombuffer(bytearray(
                    _PACK_RANGE(*flat) if len(flat) == 2 else struct.pack(f"<{len(flat)}I", *flat)
                ), _TOKEN_DTYPE))
                ends.append(done)
                flat = []
                room = max_frags
    if flat and not full_only:
        done += max_frags - room
        chunks.append(np.frombuffer(bytearray(
            _PACK_RANGE(*flat) if len(flat) == 2 else struct.pack(f"<{len(flat)}I", *flat)
        ), _TOKEN_DTYPE))
        ends.append(done)
    return chunks, ends


def _chunk_sorted(
    t: np.ndarray,
    max_tokens: int = abi.MAX_DONTNEED_TOKENS,
    max_frags: int = abi.MAX_DONTNEED_FRAGS,
    full_only: bool = False,
    breaks: np.ndarray | None = None,
) -> tuple[list[np.ndarray], list[int]]:
    """:func:`plan_dontneed`'s many-runs path, for ascending, distinct tokens ``t``:
    the same greedy chunks (each at most ``max_frags`` frags
    and ``max_tokens`` ranges, full in one of them except the last), computed
    in index space: a chunk is ``t[a:b]``, and a run of consecutive tokens is
    recognised from ``t[b-1] - t[a] == b - a - 1`` without building ranges.
    With ``full_only`` a last chunk that is full in neither dimension is not
    planned (the Receiver keeps those tokens for its next call).
    Returns ``(chunks, ends)``: the ``DMABUF_TOKEN_DTYPE`` arrays and, for
    each, the index in ``t`` where it ends (so ``t[ends[i]:]`` is what is
    left after the first ``i + 1`` calls). ``breaks``, if given, must be
    ``np.flatnonzero(np.diff(t) != 1)`` (a caller that has it saves a pass).
    """
    n = t.shape[0]
    chunks: list[np.ndarray] = []
    ends: list[int] = []
    brk = breaks  # break positions i: t[i + 1] != t[i] + 1 (computed when first needed)
    a = 0
    while a < n:
        b = min(a + max_frags, n)
        first = int(t[a])
        if int(t[b - 1]) - first == b - a - 1:  # one contiguous run
            if full_only and b - a < max_frags and max_tokens > 1:
                break
            chunks.append(np.frombuffer(bytearray(_PACK_RANGE(first, b - a)), abi.DMABUF_TOKEN_DTYPE))
            ends.append(b)
            a = b
            continue
        if brk is None:
            brk = np.flatnonzero((t[1:] - t[:-1]) != 1)
        lo = int(brk.searchsorted(a))
        hi = int(brk.searchsorted(b - 1))  # breaks i with a <= i < b - 1
        if hi - lo + 1 > max_tokens:
            hi = lo + max_tokens - 1
            b = int(brk[hi]) + 1
        elif full_only and b - a < max_frags and hi - lo + 1 < max_tokens:
            break
        cut = brk[lo:hi] + 1
        m = cut.shape[0] + 1
        idx = np.empty(m + 1, np.int64)
        idx[0] = a
        idx[1:m] = cut
        idx[m] = b
        out = np.empty((m, 2), np.uint32)
        out[:, 0] = t[idx[:-1]]
        out[:, 1] = idx[1:] - idx[:-1]
        chunks.append(out.view(abi.DMABUF_TOKEN_DTYPE).reshape(-1))
        ends.append(b)
        a = b
    return chunks, ends


# ---------------------------------------------------------------------------
# Token runs
# ---------------------------------------------------------------------------
_U32_MAX = 0xFFFFFFFF


def token_runs(t: np.ndarray, limit: int = _FEW_RUNS) -> list[int] | None:
    """The runs of consecutive values in ``t`` (uint32, any order, any
    strides), in the order they come: ``[start0, count0, start1, count1, ...]``,
    or None when there are ``limit`` runs or more (or a run would wrap past
    2**32 - 1). Three numpy calls (one subtraction finds every break) and a
    step per run."""
    n = t.shape[0]
    if n < 2:
        return [int(t[0]), 1] if n else []
    brk = ((t[1:] - t[:-1]) != _ONE_U32).nonzero()[0].tolist()  # uint32: a step down breaks too
    if len(brk) >= limit - 1:
        return None
    item = t.item
    s = item(0)
    out: list[int] = []
    a = 0  # index where the open run starts
    for i in brk:
        out += (s, i + 1 - a)
        if s + i - a > _U32_MAX:  # 0xFFFFFFFF then 0: consecutive only mod 2**32
            return None
        a = i + 1
        s = item(a)
    if s + n - 1 - a > _U32_MAX:
        return None
    out += (s, n - a)
    return out


def merge_runs(a: list[int], b: list[int], limit: int = _FEW_RUNS) -> list[int] | None:
    """The union of two sets of token runs (flat ``[start, count, ...]`` lists
    as :func:`token_runs` returns), as ascending, disjoint, non-adjacent runs;
    None when that is ``limit`` runs or more. A token in both is kept once."""
    runs = a + b
    if len(runs) <= 2:
        return runs
    pairs = sorted(zip(runs[0::2], runs[1::2], strict=True))
    out: list[int] = []
    cur, end = pairs[0]
    end += cur  # exclusive end of the open run
    for s, c in pairs:
        if s <= end:  # overlaps or touches the open run (the first pair: itself)
            c += s
            if c > end:
                end = c
        else:
            out += (cur, end - cur)
            cur = s
            end = s + c
    out += (cur, end - cur)
    return out if len(out) < 2 * limit else None


def drop_tokens(runs: list[int], k: int) -> list[int]:
    """``runs`` (ascending ``[start, count, ...]``) without their first ``k``
    tokens."""
    i = 0
    while k:
        c = runs[i + 1]
        if c > k:
            return [runs[i] + k, c - k, *runs[i + 2:]]
        k -= c
        i += 2
    return runs[i:]


# ---------------------------------------------------------------------------
# The release queue
# ---------------------------------------------------------------------------
class ReleaseQueue:
    """Tokens given back by the application and not yet handed to the kernel.

    While the queued tokens are fewer than 32 runs of consecutive values (the
    steady state: the kernel hands out the lowest free ids) they are kept as
    runs, a flat ascending ``[start, count, ...]`` list, and nothing is copied
    or sorted per token; otherwise as a uint32 array. The queue switches
    between the two by itself: to the array when a release adds too many
    runs, back to runs after :meth:`consume` when what is left is few runs.

    ``queued`` counts every token added, duplicates included, in both forms
    (the Receiver's thresholds count releases); :meth:`plan` drops the
    duplicates, after which ``queued`` is the number of distinct tokens.

    Use: ``chunks, ends = q.plan(full_only)``, issue the calls in order, then
    ``q.consume(k)`` with ``k`` the ``ends`` value of the last call that went
    through (0 if none): the unsent tail stays queued.
    """

    __slots__ = ("_arr", "_runs", "queued")

    def __init__(self, capacity: int = 4 * abi.MAX_DONTNEED_FRAGS) -> None:
        self._runs: list[int] | None = []
        self._arr = np.empty(max(capacity, 1), dtype=np.uint32)
        self.queued = 0

    def __len__(self) -> int:
        return self.queued

    @property
    def is_runs(self) -> bool:
        """True while the queue is kept as runs (False: as an array)."""
        return self._runs is not None

    def add(self, tokens: np.ndarray, runs: list[int] | None = None) -> None:
        """Queue ``tokens`` (uint32, shape ``(k,)``, any order and strides).

        ``runs``, if given, must be ``token_runs(tokens)`` (the caller that
        has it, e.g. from :func:`~devmemtcp.codec.rx.parse_rx_batch`, saves a
        pass over the tokens)."""
        k = tokens.shape[0]
        if not k:
            return
        have = self._runs
        if have is not None:
            new = runs if runs is not None else token_runs(tokens)
            if new is not None:
                merged = merge_runs(have, new)
                if merged is not None:
                    self._runs = merged
                    self.queued += k
                    return
            self._to_array()
        end = self.queued + k
        if end > self._arr.shape[0]:
            grown = np.empty(max(2 * self._arr.shape[0], end), dtype=np.uint32)
            grown[: self.queued] = self._arr[: self.queued]
            self._arr = grown
        self._arr[self.queued: end] = tokens
        self.queued = end

    def _to_array(self) -> None:
        """Switch to the array form. The runs hold each queued token once; the
        ``queued - len`` tokens queued twice are written as repeats of the
        first token, so the array holds the same set and the same count."""
        runs = self._runs
        assert runs is not None
        self._runs = None
        n = self.queued
        if n > self._arr.shape[0]:
            self._arr = np.empty(max(2 * self._arr.shape[0], n), dtype=np.uint32)
        pos = 0
        for i in range(0, len(runs), 2):  # a step per run (fewer than 32)
            s, c = runs[i], runs[i + 1]
            self._arr[pos: pos + c] = np.arange(s, s + c, dtype=np.uint32)
            pos += c
        if pos < n:
            self._arr[pos:n] = runs[0]

    def plan(self, full_only: bool = False) -> tuple[list[np.ndarray], list[int]]:
        """The SO_DEVMEM_DONTNEED calls for the queue (:func:`plan_runs` or
        :func:`plan_dontneed`): ``(chunks, ends)``, chunks of at most 128
        ranges and 1024 tokens covering the distinct queued tokens in
        ascending order. With ``full_only`` a last partial call is left out.
        Sorts and dedupes the queue in place (``queued`` becomes the distinct
        count); call :meth:`consume` next."""
        runs = self._runs
        if runs is not None:
            self.queued = sum(runs[1::2])
            return plan_runs(runs[0::2], runs[1::2], full_only)
        n = self.queued
        toks = self._arr[:n]
        toks.sort(kind="stable")  # a few sorted runs: a merge sort is near-linear; in place
        distinct, chunks, ends = plan_dontneed(toks, full_only)
        m = distinct.shape[0]
        if m != n:
            self._arr[:m] = distinct
            self.queued = m
        return chunks, ends

    def consume(self, sent: int) -> None:
        """Drop the first ``sent`` tokens of the last :meth:`plan` (those the
        kernel was given); a queue left with few runs goes back to runs."""
        if sent <= 0:
            if self._runs is None:
                self._back_to_runs()
            return
        left = self.queued - sent
        if self._runs is not None:
            self._runs = drop_tokens(self._runs, sent)
        else:
            self._arr[:left] = self._arr[sent: self.queued]  # numpy copies overlaps safely
        self.queued = left
        if self._runs is None:
            self._back_to_runs()

    def _back_to_runs(self) -> None:
        rest = token_runs(self._arr[: self.queued])
        if rest is not None:
            self._runs = merge_runs([], rest)

    def clear(self) -> None:
        """Forget every queued token (the socket went: the kernel freed them)."""
        self._runs = []
        self.queued = 0

    def __repr__(self) -> str:
        form = f"runs={len(self._runs) // 2}" if self._runs is not None else "array"
        return f"<ReleaseQueue queued={self.queued} {form}>"
