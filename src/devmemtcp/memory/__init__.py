"""dma-buf providers: host memory (memfd), udmabuf, CUDA.

:func:`open_dmabuf` picks a provider by name; every provider implements the
:class:`~devmemtcp.memory.base.DmaBuf` protocol and is a context manager.
The CUDA provider (:mod:`devmemtcp.memory.cuda`) imports cuda-python only
when a CUDA buffer is opened.
"""

from __future__ import annotations

from typing import Literal

from devmemtcp import abi
from devmemtcp.errors import DevmemError
from devmemtcp.memory.base import DmaBuf
from devmemtcp.memory.memfd import MemfdBuffer
from devmemtcp.memory.udmabuf import UdmabufBuffer

__all__ = ["KINDS", "DmaBuf", "MemfdBuffer", "UdmabufBuffer", "is_memory_kind", "open_dmabuf"]

#: Provider names; "cuda" also takes a device ordinal, "cuda:N".
KINDS = ("host", "udmabuf", "cuda")


def is_memory_kind(kind: str) -> bool:
    """True for "host", "udmabuf", "cuda" and "cuda:N" (N a device ordinal)."""
    if kind in KINDS:
        return True
    head, sep, tail = kind.partition(":")
    return head == "cuda" and sep == ":" and tail.isdigit()


def open_dmabuf(kind: Literal["host", "udmabuf", "cuda"] | str, size: int,
                page_size: int = abi.PAGE_SIZE) -> DmaBuf:
    """Allocate a dma-buf of ``size`` bytes (a multiple of ``page_size``).

    ``kind``: ``"host"`` (memfd host memory, what the emulated NIC uses),
    ``"udmabuf"`` (a real dma-buf over a sealed memfd, needs /dev/udmabuf),
    or ``"cuda"`` / ``"cuda:N"`` (device memory of GPU 0 / N exported with
    cuMemGetHandleForAddressRange; needs cuda-python, the NVIDIA driver with
    dma-buf support and a GPU). Raises :class:`~devmemtcp.errors.DevmemError`
    for an unknown kind, a bad size, or a provider that is unavailable (with
    the fix in the hint).
    """
    if kind == "host":
        return MemfdBuffer(size, page_size)
    if kind == "udmabuf":
        return UdmabufBuffer(size, page_size)
    if is_memory_kind(kind):
        from devmemtcp.memory.cuda import CudaBuffer, parse_device

        return CudaBuffer(size, page_size, device=parse_device(kind))
    raise DevmemError(f"unknown memory kind {kind!r}", "use one of: host, udmabuf, cuda, cuda:N")
