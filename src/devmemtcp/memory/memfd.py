"""Host memory standing in for a dma-buf: a memfd, mapped shared.

The emulated NIC DMAs (reads the socket payload) straight into this mapping,
and the udmabuf provider wraps the same kind of memfd into a real dma-buf.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
from typing import TYPE_CHECKING

import numpy as np

from devmemtcp import abi
from devmemtcp.errors import DevmemError

if TYPE_CHECKING:
    from devmemtcp.codec import FragBatch


def check_size(size: int, page_size: int) -> None:
    """Raise DevmemError unless ``size`` is a positive multiple of ``page_size``
    (bind-rx refuses "dmabuf size not aligned to niov size", net/core/devmem.c)."""
    if page_size <= 0 or page_size & (page_size - 1):
        raise DevmemError(f"page size {page_size} is not a power of two",
                          "use the net_iov size, 4096 bytes")
    if size <= 0 or size % page_size:
        up = max(page_size, -(-size // page_size) * page_size)
        raise DevmemError(
            f"dma-buf size {size} is not a positive multiple of the page size {page_size}",
            f"use a multiple of {page_size} bytes, e.g. {up}",
        )


class MemfdBuffer:
    """A memfd of ``size`` bytes (``MFD_ALLOW_SEALING | MFD_CLOEXEC``), mapped
    ``MAP_SHARED`` read/write. Pages are allocated when first touched: the
    emulated NIC fills net_iovs lowest first, so a large dma-buf costs memory
    only for the part a flow actually cycles through.

    ``fd`` is the memfd (for the emulated NIC it is the "dma-buf" handed to
    bind-rx/bind-tx). ``size`` must be a multiple of ``page_size`` (the net_iov
    size, 4096), else :class:`~devmemtcp.errors.DevmemError`. All copies are
    numpy slice/fancy-index operations; none loops per byte or per fragment in
    the common case. Use as a context manager; ``close()`` unmaps and closes
    the fd (idempotent).
    """

    kind = "memfd"

    def __init__(self, size: int, page_size: int = abi.PAGE_SIZE, *, name: str = "devmemtcp") -> None:
        check_size(size, page_size)
        self.size = size
        self.page_size = page_size
        self.fd = -1
        self._mm: mmap.mmap | None = None
        self._view: np.ndarray | None = None
        fd = os.memfd_create(name, abi.MFD_ALLOW_SEALING | abi.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            os.close(fd)
            raise DevmemError(
                f"cannot allocate {size} bytes of host memory for the dma-buf: {e.strerror}",
                "use a smaller --size, or free memory (memfd counts against shmem and RLIMIT_MEMLOCK "
                "is not involved)",
            ) from e
        self.fd = fd
        self._view = np.frombuffer(self._mm, dtype=np.uint8)

    # -- views and copies ----------------------------------------------------
    def host_view(self) -> np.ndarray:
        """Writable ``uint8`` array of shape ``(size,)`` over the mapping (no copy).

        Raises DevmemError after ``close()``."""
        if self._view is None:
            raise DevmemError("the dma-buf is closed", "do not use a buffer after close()")
        return self._view

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise DevmemError(
                f"range [{offset}, {offset + length}) is outside the {self.size}-byte dma-buf",
                "keep offsets and lengths within the buffer size",
            )

    def copy_in(self, offset: int, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Copy ``data`` (any bytes-like or array, taken as raw bytes) to ``offset``."""
        src = data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else np.frombuffer(
            data, dtype=np.uint8)
        self._check_range(offset, src.shape[0])
        self.host_view()[offset: offset + src.shape[0]] = src

    def copy_out(self, offset: int, length: int) -> np.ndarray:
        """A new ``uint8`` array with ``length`` bytes from ``offset``."""
        self._check_range(offset, length)
        return self.host_view()[offset: offset + length].copy()

    def _runs(self, offsets: np.ndarray, sizes: np.ndarray) -> tuple[list[int], list[int], int]:
        offs = np.asarray(offsets, dtype=np.int64).reshape(-1)
        lens = np.asarray(sizes, dtype=np.int64).reshape(-1)
        if offs.shape != lens.shape:
            raise DevmemError(f"{offs.shape[0]} offsets but {lens.shape[0]} sizes",
                              "give one size per offset")
        if offs.shape[0] and (int(offs.min()) < 0 or int(lens.min()) < 0
                              or int((offs + lens).max()) > self.size):
            raise DevmemError(f"a range lies outside the {self.size}-byte dma-buf",
                              "keep offsets and lengths within the buffer size")
        return offs.tolist(), lens.tolist(), int(lens.sum())

    def write_at(self, offsets: np.ndarray, sizes: np.ndarray, src: np.ndarray) -> None:
        """Scatter ``src`` (host uint8, ``sum(sizes)`` bytes back to back) to
        the ranges ``(offsets[i], sizes[i])``: one slice copy per range (the
        ranges are a batch's contiguous runs, a few). DevmemError on a bad range."""
        offs, lens, total = self._runs(offsets, sizes)
        if src.shape[0] < total:
            raise DevmemError(f"write_at source has {src.shape[0]} bytes, the ranges {total}",
                              "pass a source of sum(sizes) bytes")
        view = self.host_view()
        pos = 0
        for o, n in zip(offs, lens, strict=True):
            view[o: o + n] = src[pos: pos + n]
            pos += n

    def read_at(self, offsets: np.ndarray, sizes: np.ndarray, out: np.ndarray) -> None:
        """Copy the ranges ``(offsets[i], sizes[i])`` back to back into ``out``
        (host uint8 of at least ``sum(sizes)`` bytes): the reverse of :meth:`write_at`."""
        offs, lens, total = self._runs(offsets, sizes)
        if out.shape[0] < total:
            raise DevmemError(f"read_at destination has {out.shape[0]} bytes, the ranges {total}",
                              "pass a destination of sum(sizes) bytes")
        view = self.host_view()
        pos = 0
        for o, n in zip(offs, lens, strict=True):
            out[pos: pos + n] = view[o: o + n]
            pos += n

    def gather(self, frags: FragBatch, out: np.ndarray | None = None) -> np.ndarray:
        """Concatenate the fragments' byte ranges, in batch order, into ``out``.

        ``frags.offset`` / ``frags.size`` give the ranges (linear bytes are not
        in the dma-buf and are not included). ``out`` is a ``uint8`` array of
        at least ``frags.nbytes`` bytes (allocated if ``None``); returns the
        ``out[:frags.nbytes]`` view. Vectorised: full aligned pages are one
        fancy-indexed take; other shapes are copied by runs of contiguous
        frags (one index array when they are scattered).
        Raises DevmemError if a fragment lies outside the buffer or ``out`` is
        too small.
        """
        view = self.host_view()
        offs = np.asarray(frags.offset, dtype=np.int64)
        sizes = np.asarray(frags.size, dtype=np.int64)
        total = int(sizes.sum())
        if out is None:
            out = np.empty(total, np.uint8)
        elif out.dtype != np.uint8 or out.ndim != 1 or out.shape[0] < total:
            raise DevmemError(
                f"gather destination must be a 1-D uint8 array of at least {total} bytes",
                "allocate out with np.empty(batch.nbytes, np.uint8)",
            )
        dst = out[:total]
        n = offs.shape[0]
        if n == 0:
            return dst
        if int(offs.min()) < 0 or int((offs + sizes).max()) > self.size:
            raise DevmemError(
                "a fragment lies outside the dma-buf",
                "gather only batches received on a binding of this buffer",
            )
        ps = self.page_size
        maxsz = int(sizes.max())
        if maxsz == 0:
            return dst
        if int(sizes.min()) == ps and not (offs & (ps - 1)).any():
            # np.take with out=: no n*page_size temporary
            np.take(view.reshape(-1, ps), offs // ps, axis=0, out=dst.reshape(n, ps))
            return dst
        # other shapes (a real NIC's frags: not page aligned, several per page):
        # contiguous frags merged into runs, each run one slice copy; many
        # scattered runs at once are one fancy-indexed copy. (np.take on a
        # strided window view copies the whole view first: never that.)
        starts = np.cumsum(sizes) - sizes
        brk = np.flatnonzero(offs[1:] != offs[:-1] + sizes[:-1]) + 1
        if brk.shape[0] < 64:
            edges = [0, *brk.tolist(), n]
            for i, j in itertools.pairwise(edges):
                o, d = int(offs[i]), int(starts[i])
                ln = int(starts[j - 1] + sizes[j - 1]) - d
                dst[d: d + ln] = view[o: o + ln]
            return dst
        idx = np.repeat(offs - starts, sizes) + np.arange(total, dtype=np.int64)
        np.take(view, idx, out=dst)
        return dst

    # -- lifetime ------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        """Unmap and close the memfd (idempotent). ``self.fd`` is closed
        regardless; views still held by the caller keep the mapping (and the
        private fd duplicate Python's mmap holds) alive until they are dropped,
        since Python's mmap refuses to unmap exported buffers."""
        self._view = None
        mm, self._mm = self._mm, None
        if mm is not None:
            # with views still exported, unmapped when the last one is garbage-collected
            with contextlib.suppress(BufferError):
                mm.close()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> MemfdBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self.fd} size={self.size} kind={self.kind}>"
