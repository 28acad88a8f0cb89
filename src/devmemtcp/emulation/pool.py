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
    """Counters of one bound RX queue's page pool, with the kernel's meanings
    (page-pool-stats-get; net/core/page_pool.c), and its traffic.

    A devmem page pool gets net_iovs from its alloc cache (``alloc_fast``),
    refills the cache from its ptr_ring of recycled net_iovs, up to
    PP_ALLOC_CACHE_REFILL at a time (``alloc_refill``, one per refill), and
    when the ring is empty counts ``alloc_empty`` and asks the memory
    provider (``mp_dmabuf_devmem_alloc_netmems``, one net_iov per call,
    counted in no stat: ``alloc_slow`` stays 0 for devmem). A net_iov whose
    last reference goes (SO_DEVMEM_DONTNEED, socket close) is recycled into
    the ptr_ring (``recycle_ring``) or, the ring being full, given back to
    the provider (``recycle_ring_full``); ``recycle_released_refcnt`` is for
    pages with an elevated refcount and stays 0 for net_iovs.
    ``ring_size``: the ptr_ring's size (the pool size: the RX ring's
    entries); ``ring``/``cache``: net_iovs in the ptr_ring / alloc cache.
    ``stalls``: times no net_iov was free at all (the flow waits: the
    emulation's own counter); ``rx_packets``: frags filled, ``rx_bytes``:
    payload bytes delivered."""

    alloc_fast: int = 0
    alloc_slow: int = 0
    alloc_empty: int = 0
    alloc_refill: int = 0
    recycle_ring: int = 0
    recycle_ring_full: int = 0
    recycle_released: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    stalls: int = 0
    ring_size: int = 1024
    ring: int = 0
    cache: int = 0

    def took(self, n: int) -> None:
        """``n`` net_iovs allocated for the NIC: from the cache, refills from
        the ring, else from the provider (page_pool_alloc_netmems)."""
        while n > 0:
            if self.cache:
                c = min(self.cache, n)
                self.cache -= c
                self.alloc_fast += c
                n -= c
            elif self.ring:
                t = min(self.ring, PP_ALLOC_CACHE_REFILL)
                self.ring -= t
                self.alloc_refill += 1
                self.cache += t - 1
                n -= 1
            else:
                self.alloc_empty += n  # each cache miss finds the ring empty
                n = 0

    def untake(self, n: int) -> None:
        """``n`` net_iovs taken but not used go back to the cache."""
        self.cache += n

    def recycled(self, n: int) -> None:
        """``n`` net_iovs lost their last reference (page_pool_put_unrefed_netmem)."""
        room = max(0, self.ring_size - self.ring)
        to_ring = min(room, n)
        self.ring += to_ring
        self.recycle_ring += to_ring
        self.recycle_ring_full += n - to_ring

    def as_dict(self) -> dict[str, int]:
        return {
            "alloc-fast": self.alloc_fast,
            "alloc-slow": self.alloc_slow,
            "alloc-empty": self.alloc_empty,
            "alloc-refill": self.alloc_refill,
            "recycle-ring": self.recycle_ring,
            "recycle-ring-full": self.recycle_ring_full,
            "recycle-released-refcnt": self.recycle_released,
            "rx-packets": self.rx_packets,
            "rx-bytes": self.rx_bytes,
            "stalls": self.stalls,
            "ring-size": self.ring_size,
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
    ring_size: int = 1024  # RX ring entries of the bound queues (the page pools' size)
    free: np.ndarray = field(init=False)
    nfree: int = field(init=False)
    cond: threading.Condition = field(init=False, default_factory=threading.Condition)
    stats: dict[int, QueueStats] = field(init=False, default_factory=dict)
    waiters: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.free = np.ones(self.pages, dtype=np.bool_)
        self.nfree = self.pages
        self._first_free = 0  # no free net_iov below this index
        # references beyond the first, per net_iov: with a real NIC's buffer
        # placement several frags share one net_iov (each holds a reference,
        # net_iov's pp_ref_count), and the NIC holds the buffer it fills
        self.extra = np.zeros(self.pages, dtype=np.int32)
        self.shared = False

    def add_refs(self, idx: list[int]) -> None:
        """One more reference on each net_iov of ``idx`` (repeats count; all held)."""
        if not idx:
            return
        with self.cond:
            self.shared = True
            np.add.at(self.extra, np.asarray(idx, dtype=np.int64), 1)

    def queue_stats(self, queue: int) -> QueueStats:
        st = self.stats.get(queue)
        if st is None:
            st = self.stats[queue] = QueueStats(ring_size=self.ring_size)
        return st

    def kernel_inflight(self, queue: int, nqueues: int = 1) -> int:
        """page-pool-get's ``inflight`` of ``queue``'s page pool: net_iovs taken
        from the provider and not given back: those the application and the
        NIC hold, plus those posted to the RX ring and kept in the pool's
        ptr_ring and cache (``min(free, ring entries + ring + cache)``). With
        several queues on one binding the held and free ones are split evenly
        among them (the emulation keeps one free map per binding)."""
        qs = self.queue_stats(queue)
        held = self.inflight // nqueues
        free = self.nfree // nqueues
        return held + min(free, qs.ring_size + qs.ring + qs.cache)

    @property
    def inflight(self) -> int:
        """net_iovs not on the free list (held by the application, or by the
        NIC: buffers it is filling or has posted)."""
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
                st.stalls += 1
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
        st.took(n)
        return out

    def _take_first_fit(self, n: int) -> list[tuple[int, int]]:
        """The ``n`` lowest free indices as runs, marked used (caller holds the
        lock and checked ``n <= nfree``)."""
        lo = self._first_free
        top = lo + n
        free = self.free
        if top <= self.pages and np.count_nonzero(free[lo:top]) == n:  # (ndarray.all goes through Python)
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
            self.queue_stats(queue).untake(n)

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
            if self.shared:
                # drop one reference per entry; a net_iov is free when its last goes
                uniq, cnt = np.unique(idx, return_counts=True)
                dec = np.minimum(self.extra[uniq], cnt)
                self.extra[uniq] -= dec.astype(np.int32)
                last = cnt - dec
                if (last > 1).any():
                    raise RuntimeError(f"binding {self.binding_id}: net_iov given back twice")
                gone = uniq[last == 1]
                if gone.shape[0]:
                    self.free[gone] = True
                    self._freed(int(gone.shape[0]), int(gone.min()))
                if queues is not None:
                    # recycled once, by the queue of the reference that was the last
                    _, first = np.unique(idx, return_index=True)
                    sel = first[np.isin(idx[first], gone)]
                    queues = np.asarray(queues, dtype=np.int64)[sel]
            else:
                self.free[idx] = True
                self._freed(int(idx.shape[0]), int(idx.min()))
        if queues is not None and len(queues):
            counts = np.bincount(np.asarray(queues, dtype=np.int64))
            for q in np.flatnonzero(counts):
                self.queue_stats(int(q)).recycled(int(counts[q]))

    def release_runs(self, runs: list[tuple[int, int, int, int]]) -> None:
        """:meth:`release` for ``(first, count, binding, queue)`` runs (the
        binding field is not looked at: the caller sorted runs by binding)."""
        if len(runs) > _FEW_RUNS or self.shared:
            # scattered releases: one index array instead of a numpy call per run
            counts = [c for _, c, _, _ in runs]
            self.release(expand_runs([(a, c) for a, c, _, _ in runs]),
                         np.repeat(np.array([q for _, _, _, q in runs], dtype=np.int64), counts))
            return
        free = self.free
        with self.cond:
            for a, c, _, _ in runs:
                if np.count_nonzero(free[a : a + c]):
                    raise RuntimeError(f"binding {self.binding_id}: net_iov given back twice")
            n = 0
            for a, c, _, _ in runs:
                free[a : a + c] = True
                n += c
            if n == 0:
                return
            self._freed(n, min(a for a, _, _, _ in runs))
        for _, c, _, q in runs:
            self.queue_stats(q).recycled(c)

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
