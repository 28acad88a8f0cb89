"""Page pools of the emulated NIC: PAGE_SIZE net_iovs drawn from a binding.

An RX binding cuts its dma-buf into ``size // PAGE_SIZE`` net_iovs and keeps
their indices on a free list (``binding->freelist`` in net/core/devmem.c, a
LIFO stack: ``net_iov_free_pop`` takes from the top, ``net_iov_free_push``
puts back on top). Each bound RX queue has a page pool that refills from that
free list (``mp_dmabuf_devmem_alloc_netmems``, bulk of PP_ALLOC_CACHE_REFILL =
64). Buffers the application holds (tokens not yet given back) are buffers the
NIC cannot use: when the free list is empty the pool counts ``alloc-empty``
and the flow stalls until tokens come back.

Order: the kernel pops up to 64 indices from the top of the stack and hands
them out lowest-address first; :meth:`RxPool.alloc` takes the top ``k``
entries and hands them out in ascending address order, which gives the same
runs for a fresh binding (pages 0, 1, 2, ... are pushed in order) and lets
the emulated NIC fill contiguous runs with one ``recv_into`` (net_iovs given
back in one batch come out as one run again).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from devmemtcp import abi

PP_ALLOC_CACHE_REFILL = 64  # include/net/page_pool/types.h


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
    """The free list of one RX binding and the page pools of its queues.

    ``pages`` net_iovs of ``page_size`` bytes; thread-safe (one condition
    variable: waiters sleep until net_iovs come back, never spin)."""

    binding_id: int
    pages: int
    page_size: int = abi.PAGE_SIZE
    free: np.ndarray = field(init=False)
    nfree: int = field(init=False)
    cond: threading.Condition = field(init=False, default_factory=threading.Condition)
    stats: dict[int, QueueStats] = field(init=False, default_factory=dict)
    waiters: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        # net_devmem_bind_dmabuf pushes niov 0..n-1 in order
        self.free = np.arange(self.pages, dtype=np.int64)
        self.nfree = self.pages

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

        Returns an int64 array of 1..k indices. When the free list is empty,
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
                                return self.free[:0].copy()
                            self.cond.wait(left)
                finally:
                    self.waiters -= 1
            n = min(k, self.nfree)
            top = self.nfree
            self.nfree = top - n
            # lowest address first, as the kernel hands out a bulk refill
            out = np.sort(self.free[top - n : top])
        st.alloc_fast += n
        st.alloc_slow += -(-n // PP_ALLOC_CACHE_REFILL)
        return out

    def give_back(self, idx: np.ndarray, queue: int | None = None) -> None:
        """Return unused net_iovs (taken by :meth:`alloc`, never delivered) to the
        top of the free list, in the order they were taken."""
        n = int(idx.shape[0])
        if n == 0:
            return
        with self.cond:
            top = self.nfree
            self.free[top : top + n] = idx
            self.nfree = top + n
            if self.waiters:
                self.cond.notify_all()
        if queue is not None:
            st = self.queue_stats(queue)
            st.alloc_fast -= n

    def release(self, idx: np.ndarray, queues: np.ndarray | None = None) -> None:
        """net_iovs the application gave back (SO_DEVMEM_DONTNEED, socket close):
        pushed on the free list (``net_iov_free_push``), waking stalled flows.
        ``queues`` (same shape) names the RX queue each one was delivered on,
        for the per-queue recycle counters."""
        n = int(idx.shape[0])
        if n == 0:
            return
        with self.cond:
            top = self.nfree
            if top + n > self.pages:
                raise RuntimeError(
                    f"binding {self.binding_id}: free list overflow ({top} + {n} > {self.pages})"
                )
            self.free[top : top + n] = idx
            self.nfree = top + n
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
