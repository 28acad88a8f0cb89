"""dma-buf providers: host memory (memfd), udmabuf, CUDA.

:func:`open_dmabuf` picks a provider by name; every provider implements the
:class:`~devmemtcp.memory.base.DmaBuf` protocol and is a context manager.
"""

from __future__ import annotations

from typing import Literal

from devmemtcp import abi
from devmemtcp.errors import DevmemError
from devmemtcp.memory.base import DmaBuf
from devmemtcp.memory.memfd import MemfdBuffer
from devmemtcp.memory.udmabuf import UdmabufBuffer

__all__ = ["KINDS", "DmaBuf", "MemfdBuffer", "UdmabufBuffer", "open_dmabuf"]

KINDS = ("host", "udmabuf")


def open_dmabuf(kind: Literal["host", "udmabuf"] | str, size: int, page_size: int = abi.PAGE_SIZE) -> DmaBuf:
    """Allocate a dma-buf of ``size`` bytes (a multiple of ``page_size``).

    ``kind``: ``"host"`` (memfd host memory, what the emulated NIC uses) or
    ``"udmabuf"`` (a real dma-buf over a sealed memfd, needs /dev/udmabuf).
    Raises :class:`~devmemtcp.errors.DevmemError` for an unknown kind, a bad
    size, or a provider that is unavailable (with the fix in the hint).
    """
    if kind == "host":
        return MemfdBuffer(size, page_size)
    if kind == "udmabuf":
        return UdmabufBuffer(size, page_size)
    raise DevmemError(f"unknown memory kind {kind!r}", f"use one of: {', '.join(KINDS)}")
