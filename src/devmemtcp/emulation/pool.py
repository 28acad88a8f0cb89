"""Page pools of the emulated NIC: PAGE_SIZE net_iovs drawn from a binding.

An RX binding cuts its dma-buf into ``size // PAGE_SIZE`` net_iovs. The NIC
takes free ones first fit, lowest index first, as the genpool allocator of
net/core/devmem.c does on the kernels this emulation follows (6.12-6.18:
``net_devmem_alloc_dmabuf`` -> ``gen_pool_alloc_owner`` on the binding's
chunk pool with the default ``gen_pool_first_fit``; later kernels pop a LIFO
free list instead). Each bound RX queue has a page pool that refills from
the binding (``mp_dmabuf_devmem_alloc_netmems``, bulk of
PP_ALLOC_CACHE_REFILL = 64). Buffers the application holds (tokens not yet
given back) are buffers the NIC cannot use: when none is free the pool
counts ``alloc-empty`` and the flow stalls until tokens come back.

First fit keeps the net_iovs in use packed at the low end of the dma-buf, so
a receive usually lands in one contiguous run (one ``recv_into`` for the
emulated NIC) and touches few distinct pages. The page pool's own recycle
ring is not modelled: a net_iov given back is free for the next receive.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from devmemtcp import abi

PP_ALLOC_CACHE_REFILL = 64  # include/net/page_pool/types.h
_SCAN_CHUNK = 4096  # free-map entries scanned per numpy call when allocating


@dataclass
class QueueStats:
    """Counters of one bound RX queue: its page pool and its traffic.

    ``alloc_fast``: net_iovs handed to the NIC; ``alloc_slow``: refills from
    the binding's free list (one per PP_ALLOC_CACHE_REFILL net_iovs, at least
    one per receive); ``alloc_empty``: times the free list was empty when the
    NIC needed a buffer (the flow stalls); ``recycle_released``: net_iovs
    given back through SO_DEVMEM_DONTNEED or socket close; ``rx_packets``:
    buffers filled (one frag each), ``rx_bytes``: payload bytes delivered."""

    alloc_fast: int = 0
    alloc_slow: int = 0
    alloc_empty: int = 0
    recycle_released: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "alloc-fast": self.alloc_fast,
            "alloc-slow": self.alloc_slow,
            "alloc-empty": self.alloc_empty,
            "recycle-released-refcnt": self.recycle_released,
            "rx-packets": self.rx_packets,
            "rx-bytes": self.rx_bytes,
        }


@dataclass
class RxPool:
    """The free net_iovs of one RX binding and the page pools of its queues.

    ``pages`` net_iovs of ``page_size`` bytes; ``free[i]`` is True while
    net_iov ``i`` is free. Thread-safe (one condition variable: waiters sleep
    until net_iovs come back, never spin)."""

    binding_id: int
    pages: int
    page_size: int = abi.PAGE_SIZE
    free: np.ndarray = field(init=False)
    nfree: int = field(init=False)
    cond: threading.Condition = field(init=False, default_factory=threading.Condition)
    stats: dict[int, QueueStats] = field(init=False, default_factory=dict)
    waiters: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.free = np.ones(self.pages, dtype=np.bool_)
        self.nfree = self.pages
        self._first_free = 0  # no free net_iov below this index

    def queue_stats(self, queue: int) -> QueueStats:
        st = self.stats.get(queue)
        if st is None:
            st = self.stats[queue] = QueueStats()
        return st

    @property
    def inflight(self) -> int:
        """net_iovs not on the free list (held by the application)."""
        return self.pages - self.nfree

    def alloc(self, k: int, queue: int, deadline: float | None) -> np.ndarray:
        """Take up to ``k`` (>= 1) net_iov indices for RX ``queue``.

        Returns an int64 array of 1..k indices, the lowest free first (first
        fit: ascending, usually one contiguous run). When none is free, it
        counts alloc-empty and waits until net_iovs come back or
        ``deadline`` (``time.monotonic()`` value; None = forever) passes, then
        returns an empty array."""
        st = self.queue_stats(queue)
        with self.cond:
            if self.nfree == 0:
                st.alloc_empty += 1
                self.waiters += 1
                try:
                    while self.nfree == 0:
                        if deadline is None:
                            self.cond.wait()
                        else:
                            left = deadline - time.monotonic()
                            if left <= 0:
                                return np.empty(0, dtype=np.int64)
                            self.cond.wait(left)
                finally:
                    self.waiters -= 1
            n = min(k, self.nfree)
            out = self._take_first_fit(n)
        st.alloc_fast += n
        st.alloc_slow += -(-n // PP_ALLOC_CACHE_REFILL)
        return out

    def _take_first_fit(self, n: int) -> np.ndarray:
        """The ``n`` lowest free indices, marked used (caller holds the lock and
        checked ``n <= nfree``)."""
        lo = self._first_free
        top = lo + n
        if top <= self.pages and bool(self.free[lo:top].all()):
            # the n lowest free net_iovs are one run (the usual case)
            self.free[lo:top] = False
            self.nfree -= n
            self._first_free = top
            return np.arange(lo, top, dtype=np.int64)
        found: list[np.ndarray] = []
        got = 0
        while got < n:
            hi = min(self.pages, lo + max(_SCAN_CHUNK, 4 * n))
            idx = np.flatnonzero(self.free[lo:hi])
            if idx.shape[0]:
                idx = idx[: n - got]
                idx += lo
                found.append(idx)
                got += int(idx.shape[0])
            lo = hi
        out = found[0] if len(found) == 1 else np.concatenate(found)
        self.free[out] = False
        self.nfree -= n
        self._first_free = int(out[-1]) + 1
        return out

    def _put(self, idx: np.ndarray) -> None:
        """Mark ``idx`` free (caller holds the lock)."""
        self.free[idx] = True
        self.nfree += int(idx.shape[0])
        low = int(idx.min())
        if low < self._first_free:
            self._first_free = low

    def give_back(self, idx: np.ndarray, queue: int | None = None) -> None:
        """Return unused net_iovs (taken by :meth:`alloc`, never delivered)."""
        n = int(idx.shape[0])
        if n == 0:
            return
        with self.cond:
            self._put(idx)
            if self.waiters:
                self.cond.notify_all()
        if queue is not None:
            st = self.queue_stats(queue)
            st.alloc_fast -= n

    def release(self, idx: np.ndarray, queues: np.ndarray | None = None) -> None:
        """net_iovs the application gave back (SO_DEVMEM_DONTNEED, socket close):
        free again (``gen_pool_free``), waking stalled flows.
        ``queues`` (same shape) names the RX queue each one was delivered on,
        for the per-queue recycle counters."""
        n = int(idx.shape[0])
        if n == 0:
            return
        with self.cond:
            if self.free[idx].any():
                raise RuntimeError(f"binding {self.binding_id}: net_iov given back twice")
            self._put(idx)
            if self.waiters:
                self.cond.notify_all()
        if queues is not None:
            q0 = int(queues[0])
            if int(queues[-1]) == q0 and bool((queues == q0).all()):
                self.queue_stats(q0).recycle_released += n
                return
            counts = np.bincount(queues.astype(np.int64))
            for q in np.flatnonzero(counts):
                self.queue_stats(int(q)).recycle_released += int(counts[q])
