"""Per-socket token tables: what ``sk->sk_user_frags`` does in the kernel.

``tcp_recvmsg_dmabuf`` (net/ipv4/tcp.c) gives every fragment it hands to
user space a token from the socket's xarray ``sk_user_frags``, initialised
with ``XA_FLAGS_ALLOC1`` and allocated with ``xa_alloc(..., xa_limit_31b)``:
the lowest free index, starting at 1, below 2**31. ``sock_devmem_dontneed``
(net/core/sock.c) erases tokens and drops the net_iov references; tokens
still held when the socket is destroyed are released then
(``tcp_v4_destroy_sock`` -> ``tcp_release_user_frags``).

:class:`TokenTable` keeps the same numbering with numpy arrays and no Python
object per fragment: ``page[t]`` is the net_iov index token ``t`` refers to
(-1: free), ``binding[t]`` its binding id and ``queue[t]`` the RX queue it was
delivered on.
"""

from __future__ import annotations

import errno
import os
import threading

import numpy as np

from devmemtcp import abi

_SCAN_CHUNK = 4096
#: SO_DEVMEM_DONTNEED calls with at most this many ranges are erased range by range
_FEW_RANGES = 8
_U32_MAX = 0xFFFFFFFF


class TokenTable:
    """Tokens of one socket. Thread-safe."""

    def __init__(self, capacity: int = 1024) -> None:
        self.page = np.full(capacity, -1, dtype=np.int64)
        self.binding = np.zeros(capacity, dtype=np.uint32)
        self.queue = np.zeros(capacity, dtype=np.int32)
        self.hw = abi.FIRST_TOKEN  # lowest token never handed out
        self.lowest_free = abi.FIRST_TOKEN  # no free token below this one
        self.outstanding = 0
        self.lock = threading.Lock()

    def _grow(self, need: int) -> None:
        cap = self.page.shape[0]
        if need <= cap:
            return
        new = max(need, cap * 2)
        for name, fill in (("page", -1), ("binding", 0), ("queue", 0)):
            old = getattr(self, name)
            arr = np.full(new, fill, dtype=old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)

    def _lowest_free(self, k: int) -> np.ndarray:
        """The ``k`` lowest free tokens (caller holds the lock)."""
        holes = self.hw - abi.FIRST_TOKEN - self.outstanding
        if holes <= 0:
            first = self.hw
            if first + k - 1 > abi.TOKEN_LIMIT:
                raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM) + ": token space exhausted")
            return np.arange(first, first + k, dtype=np.int64)
        found: list[np.ndarray] = []
        nfound = 0
        lo = self.lowest_free
        want = min(k, holes)
        while nfound < want and lo < self.hw:
            hi = min(self.hw, lo + max(_SCAN_CHUNK, 4 * k))
            idx = np.flatnonzero(self.page[lo:hi] < 0) + lo
            if idx.shape[0]:
                take = idx[: want - nfound]
                found.append(take)
                nfound += int(take.shape[0])
            lo = hi
        rest = k - nfound
        if rest:
            found.append(np.arange(self.hw, self.hw + rest, dtype=np.int64))
        return np.concatenate(found) if len(found) > 1 else found[0]

    def alloc(self, pages: np.ndarray, binding_id: int, queue: int) -> np.ndarray:
        """Give each net_iov in ``pages`` (int64, shape ``(n,)``) a token;
        returns the tokens (uint32, shape ``(n,)``), lowest free first."""
        k = int(pages.shape[0])
        with self.lock:
            if self.hw - abi.FIRST_TOKEN == self.outstanding:
                # no free token below the high-water mark: a contiguous block
                first = self.hw
                top = first + k
                if top - 1 > abi.TOKEN_LIMIT:
                    raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM) + ": token space exhausted")
                self._grow(top)
                self.page[first:top] = pages
                self.binding[first:top] = binding_id
                self.queue[first:top] = queue
                self.hw = top
                self.outstanding += k
                self.lowest_free = top
                return np.arange(first, top, dtype=np.uint32)
            lo = self.lowest_free
            top = lo + k
            if top - 1 <= abi.TOKEN_LIMIT:
                self._grow(top)
            if top - 1 <= abi.TOKEN_LIMIT and bool((self.page[lo:top] < 0).all()):
                # the k lowest free tokens are one run (the usual case: whole ranges come back)
                self.page[lo:top] = pages
                self.binding[lo:top] = binding_id
                self.queue[lo:top] = queue
                self.hw = max(self.hw, top)
                self.outstanding += k
                self.lowest_free = top
                return np.arange(lo, top, dtype=np.uint32)
            toks = self._lowest_free(k)
            top = int(toks[-1]) + 1
            if top > self.hw:
                self._grow(top)
                self.hw = top
            self.page[toks] = pages
            self.binding[toks] = binding_id
            self.queue[toks] = queue
            self.outstanding += k
            # the k lowest free tokens were taken: none is free below the last one
            self.lowest_free = top
        return toks.astype(np.uint32)

    def erase_range(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Erase tokens ``start .. start+count-1`` (one dmabuf_token range;
        free or out-of-range ones are skipped). Same result as :meth:`erase`."""
        with self.lock:
            lo = max(start, abi.FIRST_TOKEN)
            hi = min(start + count, self.hw)
            if hi <= lo:
                return _EMPTY_I64, _EMPTY_U32, _EMPTY_I32
            pg = self.page[lo:hi]
            live = pg >= 0
            if live.all():
                pages = pg.copy()
                bids = self.binding[lo:hi].copy()
                queues = self.queue[lo:hi].copy()
                pg[:] = -1
                n = hi - lo
            else:
                idx = np.flatnonzero(live) + lo
                n = int(idx.shape[0])
                if n == 0:
                    return _EMPTY_I64, _EMPTY_U32, _EMPTY_I32
                pages = self.page[idx].copy()
                bids = self.binding[idx].copy()
                queues = self.queue[idx].copy()
                self.page[idx] = -1
                lo = int(idx[0])
            self.outstanding -= n
            self.lowest_free = min(self.lowest_free, lo)
            if self.outstanding == 0:
                self.hw = abi.FIRST_TOKEN
                self.lowest_free = abi.FIRST_TOKEN
        return pages, bids, queues

    def erase(self, tokens: np.ndarray, ordered: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Erase ``tokens`` (int64 array, in order; unknown and repeated ones are
        skipped like ``__xa_erase`` finding nothing). ``ordered``: the caller
        guarantees strictly increasing tokens (no duplicates). Returns the
        erased entries' ``(pages, binding ids, queues)``."""
        with self.lock:
            t = tokens[(tokens >= abi.FIRST_TOKEN) & (tokens < self.hw)]
            if t.shape[0] == 0:
                return _EMPTY_I64, _EMPTY_U32, _EMPTY_I32
            pg = self.page[t]
            live = pg >= 0
            if not live.all():
                t = t[live]
            if t.shape[0] > 1 and not ordered and not bool((t[1:] > t[:-1]).all()):
                # (np.unique hashes in numpy 2.x: far slower than a sort on a few thousand ints)
                t = np.sort(t)
                t = t[np.concatenate(([True], t[1:] != t[:-1]))]
            if t.shape[0] == 0:
                return _EMPTY_I64, _EMPTY_U32, _EMPTY_I32
            pages = self.page[t].copy()
            bids = self.binding[t].copy()
            queues = self.queue[t].copy()
            self.page[t] = -1
            self.outstanding -= int(t.shape[0])
            self.lowest_free = min(self.lowest_free, int(t[0]))
            if self.outstanding == 0:
                self.hw = abi.FIRST_TOKEN
                self.lowest_free = abi.FIRST_TOKEN
        return pages, bids, queues

    def dontneed(self, ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Erase what ``sock_devmem_dontneed`` (net/core/sock.c) erases for
        ``ranges`` (a ``DMABUF_TOKEN_DTYPE`` array, 1..128 entries): the tokens
        of :func:`dontneed_walk`, unknown ones skipped. Returns the erased
        entries' ``(pages, binding ids, queues)``. A few ranges within the
        1024-frag limit (the coalesced case) are erased slice by slice, without
        expanding them into tokens."""
        if int(ranges.shape[0]) <= _FEW_RANGES:
            plan: list[tuple[int, int]] = []
            wraps = False
            left = abi.MAX_DONTNEED_FRAGS
            for start, count in ranges.tolist():
                take = min(count, left)
                if take == 0:
                    continue
                if start + take - 1 > _U32_MAX:  # the token numbers wrap: walk them
                    wraps = True
                    break
                plan.append((start, take))
                left -= take
                if left == 0:
                    break
            if not wraps:
                if len(plan) == 1:
                    return self.erase_range(*plan[0])
                if not plan:
                    return _EMPTY_I64, _EMPTY_U32, _EMPTY_I32
                got = [self.erase_range(a, c) for a, c in plan]
                pages, bids, queues = (np.concatenate(col) for col in zip(*got, strict=True))
                return pages, bids, queues
        toks = dontneed_walk(ranges)
        if toks.shape[0] == 0:
            return _EMPTY_I64, _EMPTY_U32, _EMPTY_I32
        return self.erase(toks)

    def erase_all(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Erase every outstanding token (socket destroyed)."""
        with self.lock:
            live = np.flatnonzero(self.page[: self.hw] >= 0)
            pages = self.page[live].copy()
            bids = self.binding[live].copy()
            queues = self.queue[live].copy()
            self.page[live] = -1
            self.outstanding = 0
            self.hw = abi.FIRST_TOKEN
            self.lowest_free = abi.FIRST_TOKEN
        return pages, bids, queues


_EMPTY_I64 = np.empty(0, np.int64)
_EMPTY_U32 = np.empty(0, np.uint32)
_EMPTY_I32 = np.empty(0, np.int32)


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
        return _EMPTY_I64
    rep = np.repeat(np.arange(take.shape[0]), take)
    j = np.arange(ntot) - np.repeat(np.cumsum(take) - take, take)
    return (ranges["token_start"].astype(np.int64)[rep] + j) & 0xFFFFFFFF
