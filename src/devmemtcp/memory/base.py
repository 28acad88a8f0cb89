"""The DmaBuf protocol: memory a NIC can DMA into and out of."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from devmemtcp.codec import FragBatch


def host_array(addr: int, nbytes: int) -> np.ndarray:
    """A writable ``uint8`` array of shape ``(nbytes,)`` over host memory at
    ``addr``. It owns nothing and keeps nothing alive: the caller keeps the
    memory mapped while the array is used."""
    if not nbytes:
        return np.empty(0, np.uint8)
    return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(addr))


@runtime_checkable
class DmaBuf(Protocol):
    """A dma-buf (or, for the emulated NIC, host memory standing in for one).

    ``fd``: the file descriptor handed to bind-rx/bind-tx. ``size``: bytes, a
    multiple of ``page_size`` (the net_iov size, 4096). ``kind``: "memfd",
    "udmabuf", "cuda". ``host_view()`` returns a writable ``uint8`` array of
    shape ``(size,)`` over the memory, or raises DevmemError for device memory.

    ``write_at(offsets, sizes, src)`` scatters the host bytes ``src`` (uint8,
    ``sum(sizes)`` bytes back to back) to the ranges ``(offsets[i],
    sizes[i])``; ``read_at(offsets, sizes, out)`` is the reverse. The emulated
    NIC moves payload with them when there is no host view (device memory):
    they are its DMA engine. ``gather(frags, out)`` returns a numpy array for
    host memory and a device array (CuPy) for CUDA memory.
    """

    fd: int
    size: int
    page_size: int
    kind: str

    def host_view(self) -> np.ndarray: ...
    def copy_in(self, offset: int, data: bytes | memoryview | np.ndarray) -> None: ...
    def copy_out(self, offset: int, length: int) -> np.ndarray: ...
    def write_at(self, offsets: np.ndarray, sizes: np.ndarray, src: np.ndarray) -> None: ...
    def read_at(self, offsets: np.ndarray, sizes: np.ndarray, out: np.ndarray) -> None: ...
    def gather(self, frags: FragBatch, out: Any = None) -> Any: ...
    def close(self) -> None: ...
    def __enter__(self) -> DmaBuf: ...
    def __exit__(self, *exc: object) -> None: ...
