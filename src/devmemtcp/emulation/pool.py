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
from devmemtcp.emulation.tokens import PageRun, expand_runs, page_runs

PP_ALLOC_CACHE_REFILL = 64  # include/net/page_pool/types.h
_SCAN_CHUNK = 4096  # free-map entries scanned per numpy call when allocating
_FEW_EDGES = 64  # free/held flips in a scanned window walked in Python
_FEW_RUNS = 8  # runs given back with a numpy call each; more go as one index array


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

    def alloc_runs(self, k: int, queue: int, deadline: float | None) -> list[tuple[int, int]]:
        """Take up to ``k`` (>= 1) net_iovs for RX ``queue``.

        Returns runs ``[(first, count), ...]`` of 1..k net_iov indices in
        all, the lowest free first (first fit: ascending, usually one run).
        When none is free, it counts alloc-empty and waits until net_iovs
        come back or ``deadline`` (``time.monotonic()`` value; None =
        forever) passes, then returns ``[]``."""
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
                                return []
                            self.cond.wait(left)
                finally:
                    self.waiters -= 1
            n = min(k, self.nfree)
            out = self._take_first_fit(n)
        st.alloc_fast += n
        st.alloc_slow += -(-n // PP_ALLOC_CACHE_REFILL)
        return out

    def _take_first_fit(self, n: int) -> list[tuple[int, int]]:
        """The ``n`` lowest free indices as runs, marked used (caller holds the
        lock and checked ``n <= nfree``)."""
        lo = self._first_free
        top = lo + n
        free = self.free
        if top <= self.pages and bool(free[lo:top].all()):
            # the n lowest free net_iovs are one run (the usual case)
            free[lo:top] = False
            self.nfree -= n
            self._first_free = top
            return [(lo, n)]
        runs: list[tuple[int, int]] = []
        got = 0
        while got < n:
            hi = min(self.pages, lo + max(_SCAN_CHUNK, 4 * n))
            win = free[lo:hi]
            edges = (win[1:] != win[:-1]).nonzero()[0]  # (cheaper than flatnonzero on numpy 2.4)
            if edges.shape[0] > _FEW_EDGES:
                # fragmented: the free indices themselves, then their runs
                idx = win.nonzero()[0][: n - got] + lo
                free[idx] = False
                more = page_runs(idx)
                got += int(idx.shape[0])
            else:
                # free runs of the window from where free/held flips (edge e: between e and e+1)
                more = []
                start = lo if win[0] else -1
                for e in edges.tolist():
                    if start >= 0:
                        more.append((start, lo + e + 1 - start))
                        start = -1
                    else:
                        start = lo + e + 1
                if start >= 0:
                    more.append((start, hi - start))
                for i, (a, c) in enumerate(more):
                    c = min(c, n - got)
                    more[i] = (a, c)
                    free[a : a + c] = False
                    got += c
                    if got == n:
                        del more[i + 1 :]
                        break
            if runs and more and runs[-1][0] + runs[-1][1] == more[0][0]:
                # a run that crosses the window boundary stays one run
                more[0] = (runs[-1][0], runs[-1][1] + more[0][1])
                runs.pop()
            runs.extend(more)
            lo = hi
        self.nfree -= n
        a, c = runs[-1]
        self._first_free = a + c
        return runs

    def give_back_runs(self, runs: list[tuple[int, int]], queue: int | None = None) -> None:
        """Return unused net_iovs, as runs ``[(first, count), ...]`` (taken by
        :meth:`alloc_runs`, never delivered)."""
        n = sum(c for _, c in runs)
        if n == 0:
            return
        with self.cond:
            for a, c in runs:
                self.free[a : a + c] = True
            self._freed(n, min(a for a, _ in runs))
        if queue is not None:
            self.queue_stats(queue).alloc_fast -= n

    def release(self, idx: np.ndarray, queues: np.ndarray | None = None) -> None:
        """net_iovs the application gave back (SO_DEVMEM_DONTNEED, socket close):
        free again (``gen_pool_free``), waking stalled flows. ``idx``: int
        array; ``queues`` (same shape) names the RX queue each one was
        delivered on, for the per-queue recycle counters. RuntimeError if one
        is already free (nothing is changed then)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.shape[0] == 0:
            return
        with self.cond:
            if self.free[idx].any():
                raise RuntimeError(f"binding {self.binding_id}: net_iov given back twice")
            self.free[idx] = True
            self._freed(int(idx.shape[0]), int(idx.min()))
        if queues is not None:
            counts = np.bincount(np.asarray(queues, dtype=np.int64))
            for q in np.flatnonzero(counts):
                self.queue_stats(int(q)).recycle_released += int(counts[q])

    def release_runs(self, runs: list[tuple[int, int, int, int]]) -> None:
        """:meth:`release` for ``(first, count, binding, queue)`` runs (the
        binding field is not looked at: the caller sorted runs by binding)."""
        if len(runs) > _FEW_RUNS:
            # scattered releases: one index array instead of a numpy call per run
            counts = [c for _, c, _, _ in runs]
            self.release(expand_runs([(a, c) for a, c, _, _ in runs]),
                         np.repeat(np.array([q for _, _, _, q in runs], dtype=np.int64), counts))
            return
        free = self.free
        with self.cond:
            for a, c, _, _ in runs:
                if free[a : a + c].any():
                    raise RuntimeError(f"binding {self.binding_id}: net_iov given back twice")
            n = 0
            for a, c, _, _ in runs:
                free[a : a + c] = True
                n += c
            if n == 0:
                return
            self._freed(n, min(a for a, _, _, _ in runs))
        for _, c, _, q in runs:
            self.queue_stats(q).recycle_released += c

    def _freed(self, n: int, low: int) -> None:
        """Account ``n`` net_iovs marked free, the lowest ``low`` (caller holds the lock)."""
        self.nfree += n
        if low < self._first_free:
            self._first_free = low
        if self.waiters:
            self.cond.notify_all()


class PoolRegistry:
    """The page pools of one process's RX bindings, by binding id.

    A binding's pool lives while the binding is bound or the application
    still holds frags of it, and goes with the last of the two: net/core/devmem.c
    keeps an unbound binding (and its chunk pool) alive through the references
    its in-flight net_iovs hold (``net_devmem_dmabuf_binding_put``), then
    frees it. Thread-safe."""

    def __init__(self) -> None:
        self._pools: dict[int, RxPool] = {}
        self._retired: set[int] = set()  # unbound, frags still held
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pools)

    def __contains__(self, binding_id: object) -> bool:
        return binding_id in self._pools

    def add(self, pool: RxPool) -> None:
        with self._lock:
            self._pools[pool.binding_id] = pool
            self._retired.discard(pool.binding_id)

    def get(self, binding_id: int) -> RxPool | None:
        return self._pools.get(binding_id)

    def items(self) -> list[tuple[int, RxPool]]:
        """``[(binding id, pool), ...]``: a snapshot."""
        with self._lock:
            return list(self._pools.items())

    def retire(self, binding_id: int) -> None:
        """The binding was unbound: drop its pool now if no frag of it is
        held, else once the last one comes back (:meth:`return_pages`)."""
        with self._lock:
            pool = self._pools.get(binding_id)
            if pool is None:
                return
            if pool.inflight == 0:
                del self._pools[binding_id]
            else:
                self._retired.add(binding_id)

    def return_pages(self, runs: list[PageRun]) -> None:
        """Give erased tokens' net_iovs (``(first, count, binding, queue)``
        runs) back to their bindings' pools; a retired pool whose last frag
        came back goes."""
        if not runs:
            return
        first = runs[0][2]
        if all(r[2] == first for r in runs):
            pool = self._pools.get(first)
            if pool is not None:
                pool.release_runs(runs)
        else:
            for bid in sorted({r[2] for r in runs}):
                pool = self._pools.get(bid)
                if pool is not None:
                    pool.release_runs([r for r in runs if r[2] == bid])
        if self._retired:
            with self._lock:
                for bid in [b for b in self._retired if self._pools[b].inflight == 0]:
                    self._retired.discard(bid)
                    del self._pools[bid]
