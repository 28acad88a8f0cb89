"""Per-socket token tables: what ``sk->sk_user_frags`` does in the kernel.

``tcp_recvmsg_dmabuf`` (net/ipv4/tcp.c) gives every fragment it hands to
user space a token from the socket's xarray ``sk_user_frags``, initialised
with ``XA_FLAGS_ALLOC1`` and allocated with ``xa_alloc(..., xa_limit_31b)``:
the lowest free index, starting at 1, below 2**31. ``sock_devmem_dontneed``
(net/core/sock.c) erases tokens and drops the net_iov references; tokens
still held when the socket is destroyed are released then
(``tcp_v4_destroy_sock`` -> ``tcp_release_user_frags``).

:class:`TokenTable` keeps the same numbering as a sorted list of *segments*:
a segment ``(token, count, page, binding, queue)`` says that tokens
``token .. token+count-1`` refer to net_iovs ``page .. page+count-1`` of RX
binding ``binding``, delivered on RX ``queue``. A receive lands in one or two
runs of net_iovs and takes one or two runs of tokens, and the application
gives tokens back in coalesced ranges, so a socket holds a handful of
segments and each operation is a few list operations, whatever the number of
fragments. Scattered releases split segments; the numbering stays exact.
"""

from __future__ import annotations

import bisect
import errno
import os
import threading

import numpy as np

from devmemtcp import abi

_U32_END = 1 << 32  # token numbers are u32: a range's end wraps past this

#: (token, count, page, binding id, queue)
Segment = tuple[int, int, int, int, int]
#: (page, count, binding id, queue): net_iovs going back to a binding
PageRun = tuple[int, int, int, int]


def page_runs(pages: np.ndarray) -> list[tuple[int, int]]:
    """``pages`` (int array, shape ``(n,)``) as ``[(first, count), ...]`` runs
    of consecutive (+1) net_iov indices, in order."""
    n = int(pages.shape[0])
    if n == 0:
        return []
    first = int(pages[0])
    if int(pages[-1]) - first == n - 1 and (n < 3 or bool((np.diff(pages) == 1).all())):
        return [(first, n)]
    cut = np.flatnonzero(np.diff(pages) != 1) + 1
    starts = np.concatenate(([0], cut))
    counts = np.diff(np.concatenate((starts, [n])))
    return list(zip(pages[starts].tolist(), counts.tolist(), strict=True))


def expand_runs(runs: list[tuple[int, int]], dtype: type = np.int64) -> np.ndarray:
    """The integers of ``[(first, count), ...]`` in order (shape ``(sum counts,)``)."""
    if len(runs) == 1:
        a, c = runs[0]
        return np.arange(a, a + c, dtype=dtype)
    if not runs:
        return np.empty(0, dtype=dtype)
    firsts = np.array([a for a, _ in runs], dtype=np.int64)
    counts = np.array([c for _, c in runs], dtype=np.int64)
    base = np.repeat(firsts - (np.cumsum(counts) - counts), counts)
    return (base + np.arange(int(counts.sum()))).astype(dtype, copy=False)


class TokenTable:
    """Tokens of one socket. Thread-safe.

    ``outstanding``: tokens handed out and not erased. ``segments``: the
    sorted, non-overlapping segments (see the module docstring)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._segs: list[Segment] = []
        self.outstanding = 0
        self.lock = threading.Lock()

    @property
    def segments(self) -> list[Segment]:
        return list(self._segs)

    # -- allocation ------------------------------------------------------------
    def _lowest_free(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` lowest free tokens as runs (caller holds the lock).
        Raises OSError(EBUSY) past xa_limit_31b, taking nothing (xa_alloc's
        answer when no index in the limit is free)."""
        runs: list[tuple[int, int]] = []
        need = k
        cur = abi.FIRST_TOKEN
        for tok, cnt, _, _, _ in self._segs:
            if tok > cur:
                take = min(tok - cur, need)
                runs.append((cur, take))
                need -= take
                if need == 0:
                    return runs
            cur = tok + cnt
        if cur + need - 1 > abi.TOKEN_LIMIT:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY) + ": token space exhausted")
        runs.append((cur, need))
        return runs

    def alloc_runs(self, pages: list[tuple[int, int]], binding_id: int, queue: int) -> list[tuple[int, int]]:
        """Give each net_iov of ``pages`` (runs ``[(first, count), ...]`` in
        frag order) a token, the lowest free first (xa_alloc per frag, in
        order); returns the tokens as runs ``[(first, count), ...]``."""
        k = sum(c for _, c in pages)
        if k == 0:
            return []
        with self.lock:
            toks = self._lowest_free(k)
            # pair token runs with page runs, cutting at either's boundaries
            ti = pi = 0
            t0, tc = toks[0]
            p0, pc = pages[0]
            new: list[Segment] = []
            while True:
                c = min(tc, pc)
                new.append((t0, c, p0, binding_id, queue))
                t0 += c
                tc -= c
                p0 += c
                pc -= c
                if tc == 0:
                    ti += 1
                    if ti == len(toks):
                        break
                    t0, tc = toks[ti]
                if pc == 0:
                    pi += 1
                    p0, pc = pages[pi]
            for seg in new:
                self._insert(seg)
            self.outstanding += k
        return toks

    def _insert(self, seg: Segment) -> None:
        """Insert a segment into a gap, merging it with neighbours it continues."""
        tok, cnt, page, bid, q = seg
        starts, segs = self._starts, self._segs
        i = bisect.bisect_left(starts, tok)
        if i:
            pt, pc, pp, pb, pq = segs[i - 1]
            if pt + pc == tok and pp + pc == page and pb == bid and pq == q:
                i -= 1
                tok, cnt, page = pt, pc + cnt, pp
                del starts[i], segs[i]
        if i < len(segs):
            nt, nc, np_, nb, nq = segs[i]
            if tok + cnt == nt and page + cnt == np_ and nb == bid and nq == q:
                cnt += nc
                del starts[i], segs[i]
        starts.insert(i, tok)
        segs.insert(i, (tok, cnt, page, bid, q))

    # -- erasing ---------------------------------------------------------------
    def _erase(self, a: int, e: int, out: list[PageRun]) -> int:
        """Erase tokens ``a .. e-1`` (caller holds the lock); appends the net_iov
        runs to ``out`` in token order and returns how many were erased."""
        if e <= a:
            return 0
        starts, segs = self._starts, self._segs
        i = bisect.bisect_right(starts, a) - 1
        if i < 0 or starts[i] + segs[i][1] <= a:
            i += 1
        j = bisect.bisect_left(starts, e, i)
        if i >= j:
            return 0
        erased = 0
        for tok, cnt, page, bid, q in segs[i:j]:
            lo = max(tok, a)
            hi = min(tok + cnt, e)
            out.append((page + lo - tok, hi - lo, bid, q))
            erased += hi - lo
        keep: list[Segment] = []
        tok, cnt, page, bid, q = segs[i]
        if tok < a:
            keep.append((tok, a - tok, page, bid, q))
        tok, cnt, page, bid, q = segs[j - 1]
        if tok + cnt > e:
            keep.append((e, tok + cnt - e, page + e - tok, bid, q))
        segs[i:j] = keep
        starts[i:j] = [s[0] for s in keep]
        self.outstanding -= erased
        return erased

    def erase_range_runs(self, start: int, count: int) -> list[PageRun]:
        """Erase tokens ``start .. start+count-1`` (unknown ones skipped);
        returns their net_iovs as ``(page, count, binding, queue)`` runs."""
        out: list[PageRun] = []
        with self.lock:
            self._erase(start, start + count, out)
        return out

    def dontneed_runs(self, ranges: list[tuple[int, int]] | np.ndarray) -> list[PageRun]:
        """Erase what ``sock_devmem_dontneed`` (net/core/sock.c) erases for
        ``ranges`` (``(token_start, token_count)`` pairs or a
        ``DMABUF_TOKEN_DTYPE`` array, up to 128): for each range in order
        ``token_start + j`` (u32 arithmetic) for ``j < token_count``, stopping
        once MAX_DONTNEED_FRAGS (1024) tokens were tried, known or not. Returns
        the erased net_iovs as ``(page, count, binding, queue)`` runs."""
        pairs = ranges.tolist() if isinstance(ranges, np.ndarray) else ranges
        out: list[PageRun] = []
        left = abi.MAX_DONTNEED_FRAGS
        with self.lock:
            for start, count in pairs:
                take = min(count, left)
                if take == 0:
                    continue
                end = start + take
                if end > _U32_END:  # token_start + j wraps in u32
                    self._erase(start, _U32_END, out)
                    self._erase(0, end - _U32_END, out)
                else:
                    self._erase(start, end, out)
                left -= take
                if left == 0:
                    break
        return out

    def erase_all_runs(self) -> list[PageRun]:
        """Erase every outstanding token (socket destroyed); their net_iov runs."""
        with self.lock:
            out = [(page, cnt, bid, q) for _, cnt, page, bid, q in self._segs]
            self._segs.clear()
            self._starts.clear()
            self.outstanding = 0
        return out

def dontneed_walk(ranges: np.ndarray) -> np.ndarray:
    """The tokens ``sock_devmem_dontneed`` (net/core/sock.c) tries to erase,
    in its order: for each ``dmabuf_token`` range, ``token_start + j`` for
    ``j < token_count`` (u32 arithmetic), stopping once ``++num_frags`` exceeds
    MAX_DONTNEED_FRAGS (1024), whether or not the tokens exist.

    ``ranges``: a ``DMABUF_TOKEN_DTYPE`` array; returns int64 tokens, at most
    1024 of them, without a Python loop over ranges or tokens."""
    counts = ranges["token_count"].astype(np.int64)
    before = np.cumsum(counts) - counts
    take = np.minimum(counts, np.clip(abi.MAX_DONTNEED_FRAGS - before, 0, None))
    ntot = int(take.sum())
    if ntot == 0:
        return np.empty(0, np.int64)
    rep = np.repeat(np.arange(take.shape[0]), take)
    j = np.arange(ntot) - np.repeat(np.cumsum(take) - take, take)
    return (ranges["token_start"].astype(np.int64)[rep] + j) & 0xFFFFFFFF
