"""Validation of received data against ncdevmem's pattern, straight from the dma-buf.

:class:`FragValidator` checks a stream's frags where the NIC put them (the
dma-buf's host view at the cmsg offsets), in stream order, with no Python
loop per fragment; :class:`~devmemtcp.pattern.PatternChecker` does the byte
comparison. :class:`CudaFragValidator` does the same for a CUDA dma-buf on
the device (:mod:`devmemtcp.memory.cuda_ops`); :func:`frag_validator` picks
the one that fits the buffer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from devmemtcp import abi
from devmemtcp.errors import DevmemError

if TYPE_CHECKING:
    from devmemtcp.memory.base import DmaBuf

__all__ = ["CudaFragValidator", "FragValidator", "frag_validator"]

#: A batch whose frags form more contiguous runs than this is gathered once
#: into a scratch buffer and checked there, instead of run by run.
_MAX_RUNS_DIRECT = 32


class FragValidator:
    """Checks a stream's bytes against ncdevmem's pattern, in stream order.

    Frags are read from the dma-buf's host view at their offsets: contiguous
    runs of frags (found with numpy, no per-frag Python) are checked in place;
    a batch scattered over many pages is gathered with one ``np.take`` into a
    scratch buffer (allocated once, no per-batch temporaries) and checked there.
    """

    def __init__(self, period: int, dmabuf: DmaBuf) -> None:
        from devmemtcp.pattern import PatternChecker

        self.checker = PatternChecker(period)
        self.dmabuf = dmabuf
        self.view = dmabuf.host_view()
        whole = self.view.size - self.view.size % abi.PAGE_SIZE
        self.pages = self.view[:whole].reshape(-1, abi.PAGE_SIZE)
        self.scratch = np.empty(0, dtype=np.uint8)
        self._base = self.view.__array_interface__["data"][0]  # the view keeps the mapping alive

    def close(self) -> None:
        """Drop the views of the dma-buf (idempotent), so closing the dma-buf
        really unmaps it (and closes the fd Python's mmap holds) even while
        something, e.g. an exception's traceback, still references this
        validator. Do not check with it after close."""
        empty = np.empty(0, dtype=np.uint8)
        self.view = empty
        self.pages = empty.reshape(0, abi.PAGE_SIZE)
        self.scratch = empty
        self._base = 0

    def _check_run(self, a: int, b: int) -> None:
        """Check dma-buf bytes ``a .. b-1`` in place (ValidationError at the first bad one)."""
        if b > self.view.size or a < 0:
            raise DevmemError(f"frag bytes {a}..{b} lie outside the {self.view.size}-byte dma-buf",
                              "validate against the dma-buf bound to the queue that received them")
        if not self.checker.check_at(self._base + a, b - a):
            self.checker.check(self.view[a:b])

    def check_bytes(self, data: np.ndarray | memoryview | bytes) -> None:
        arr = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
        if arr.size:
            self.checker.check(arr)

    def check_batch(self, batch: Any) -> None:
        """Check one FragBatch in stream order: readable data (a flow on an
        ordinary queue), then devmem frags interleaved with the linear pieces
        at the positions ``linear_at`` gives (tcp_recvmsg_dmabuf copies an
        skb's linear part before its frags)."""
        readable = batch.readable
        if len(readable):
            self.check_bytes(readable)
        sizes_lin = batch.linear_sizes
        if not len(sizes_lin):
            self.check_frags(batch.offset, batch.size)
            return
        linear = batch.linear
        done_frags = 0
        lin_pos = 0
        for at, piece in zip(batch.linear_at.tolist(), sizes_lin.tolist(), strict=True):
            if at > done_frags:
                self.check_frags(batch.offset[done_frags:at], batch.size[done_frags:at])
                done_frags = at
            self.check_bytes(linear[lin_pos:lin_pos + piece])
            lin_pos += piece
        if done_frags < len(batch):
            self.check_frags(batch.offset[done_frags:], batch.size[done_frags:])

    def check_frags(self, offsets: np.ndarray, sizes: np.ndarray) -> None:
        """Check frags (dma-buf ``offsets``, ``sizes``; stream order) in place.

        Few contiguous runs: each run is checked where it lies. Many runs of
        whole pages (the usual case): one ``np.take`` of the pages into a
        scratch buffer, then one check. Otherwise the runs are copied into
        the scratch buffer one by one."""
        n = int(offsets.size)
        if n == 0:
            return
        if n == 1:
            start = int(offsets[0])
            self._check_run(start, start + int(sizes[0]))
            return
        # frag i+1 continues frag i unless a break is here
        brk = (offsets[1:] != offsets[:-1] + sizes[:-1]).nonzero()[0]
        if brk.shape[0] < _MAX_RUNS_DIRECT:
            # few runs (a first-fit page pool gives one or two): each checked where it lies
            first = 0
            for last in [*brk.tolist(), n - 1]:
                self._check_run(int(offsets[first]), int(offsets[last]) + int(sizes[last]))
                first = last + 1
            return
        offs = offsets.astype(np.int64, copy=False)
        lens = sizes.astype(np.int64, copy=False)
        ends = offs + lens
        first_i = np.concatenate(([0], brk + 1))
        last_i = np.concatenate((brk, [n - 1]))
        if int(ends.max()) > self.view.size:
            bad = int(np.argmax(ends > self.view.size))
            self._check_run(int(offs[bad]), int(ends[bad]))  # raises: outside the dma-buf
        total = int(lens.sum())
        if self.scratch.size < total:
            self.scratch = np.empty(max(total, 2 * self.scratch.size), dtype=np.uint8)
        page = abi.PAGE_SIZE
        if bool((lens == page).all()) and not bool((offs % page).any()):
            rows = self.scratch[:total].reshape(n, page)
            np.take(self.pages, offs // page, axis=0, out=rows, mode="clip")
        else:
            pos = 0
            for a, b in zip(offs[first_i].tolist(), ends[last_i].tolist(), strict=True):
                self.scratch[pos:pos + b - a] = self.view[a:b]
                pos += b - a
        self.checker.check(self.scratch[:total])


class CudaFragValidator(FragValidator):
    """:class:`FragValidator` for a CUDA dma-buf: frags are checked on the
    device where the NIC put them (one kernel launch per batch, see
    :func:`devmemtcp.memory.cuda_ops.first_mismatch`); linear and readable
    bytes, which are in host memory, on the host. The stream offset is
    ``checker.offset`` for both, so a mismatch raises the same
    :class:`~devmemtcp.errors.ValidationError` (stream offset, expected,
    received) as the host path. DevmemError without CuPy."""

    def __init__(self, period: int, dmabuf: DmaBuf) -> None:
        from devmemtcp.memory.cuda_ops import cupy
        from devmemtcp.pattern import PatternChecker

        cupy()  # a clear error now rather than at the first batch
        self.checker = PatternChecker(period)
        self.dmabuf = dmabuf

    def check_frags(self, offsets: np.ndarray, sizes: np.ndarray) -> None:
        """Check frags (dma-buf ``offsets``, ``sizes``; stream order) on the device."""
        from devmemtcp.errors import ValidationError
        from devmemtcp.memory.cuda_ops import first_mismatch, plan_gather

        buf: Any = self.dmabuf
        plan = plan_gather(offsets, sizes, page_size=buf.page_size, limit=buf.size)
        base = self.checker.offset
        bad = first_mismatch(buf, plan, base, self.checker.period)
        if bad is None:
            self.checker.offset = base + plan.nbytes
            return
        offset, got = bad
        self.checker.offset = offset
        raise ValidationError(offset, int(self.checker.expected(offset, 1)[0]), got)


def frag_validator(period: int, dmabuf: DmaBuf) -> FragValidator:
    """The validator for ``dmabuf``: on the device for CUDA memory
    (:class:`CudaFragValidator`), else on the host view (:class:`FragValidator`)."""
    if dmabuf.kind == "cuda":
        return CudaFragValidator(period, dmabuf)
    return FragValidator(period, dmabuf)
