"""A test double of the part of cuda-python's driver API that CudaBuffer uses.

It is not CUDA: "device memory" is host memory that the code under test can
reach only through the driver calls (CudaBuffer never hands out a host view),
so the bookkeeping of memory/cuda.py (alignment, export arguments, copies,
staging, the order of frees, errors) is tested on a machine without a GPU.
The dma-buf "export" returns a memfd. Results are tuples whose first item is
a CUresult-like enum, as cuda-python returns them. Every call is logged.
"""

from __future__ import annotations

import ctypes
import enum
import os
from types import SimpleNamespace
from typing import Any

import numpy as np


class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_OUT_OF_MEMORY = 2
    CUDA_ERROR_NOT_SUPPORTED = 801
    CUDA_ERROR_NO_DEVICE = 100


OK = CUresult.CUDA_SUCCESS


class FakeDriver:
    """``dmabuf_supported``: the attribute's value (None: attribute unknown);
    ``export_error``: a CUresult the export returns instead of an fd;
    ``misalign``: how far past a page boundary cuMemAlloc's pointer lies."""

    CU_MEMHOSTALLOC_PORTABLE = 1

    def __init__(self, *, devices: int = 1, dmabuf_supported: int | None = 1,
                 export_error: CUresult | None = None, misalign: int = 256, version: int = 12040) -> None:
        self.devices = devices
        self.dmabuf_supported = dmabuf_supported
        self.export_error = export_error
        self.misalign = misalign
        self.version = version
        self.log: list[tuple[Any, ...]] = []
        self.device_mem: dict[int, np.ndarray] = {}  # address -> backing array
        self.host_mem: dict[int, Any] = {}
        self.fds: list[int] = []
        self.export_of: dict[int, int] = {}  # allocation address -> the dma-buf fd exported from it
        self.ctx_refs = 0
        self.ctx_stack = 0
        self.streams = 0
        attrs = {"CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED": 124} if dmabuf_supported is not None else {}
        self.CUdevice_attribute = SimpleNamespace(**attrs)
        self.CUmemRangeHandleType = SimpleNamespace(CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD=1)
        self.CUstream_flags = SimpleNamespace(CU_STREAM_NON_BLOCKING=1)

    # -- init and devices -------------------------------------------------------
    def cuInit(self, flags: int) -> tuple[CUresult]:
        return (OK if self.devices else CUresult.CUDA_ERROR_NO_DEVICE,)

    def cuDriverGetVersion(self) -> tuple[CUresult, int]:
        return OK, self.version

    def cuDeviceGetCount(self) -> tuple[CUresult, int]:
        return OK, self.devices

    def cuDeviceGet(self, ordinal: int) -> tuple[CUresult, int]:
        return OK, ordinal

    def cuDeviceGetName(self, n: int, dev: int) -> tuple[CUresult, bytes]:
        return OK, b"Fake GPU\0\0"

    def cuDeviceGetAttribute(self, attr: int, dev: int) -> tuple[CUresult, int]:
        assert attr == 124
        return OK, int(self.dmabuf_supported or 0)

    def cuDevicePrimaryCtxRetain(self, dev: int) -> tuple[CUresult, str]:
        self.ctx_refs += 1
        return OK, f"ctx{dev}"

    def cuDevicePrimaryCtxRelease(self, dev: int) -> tuple[CUresult]:
        self.ctx_refs -= 1
        self.log.append(("ctx_release",))
        return (OK,)

    def cuCtxPushCurrent(self, ctx: str) -> tuple[CUresult]:
        self.ctx_stack += 1
        return (OK,)

    def cuCtxPopCurrent(self) -> tuple[CUresult, str]:
        self.ctx_stack -= 1
        return OK, "ctx"

    def cuStreamCreate(self, flags: int) -> tuple[CUresult, str]:
        self.streams += 1
        return OK, "stream"

    def cuStreamDestroy(self, stream: str) -> tuple[CUresult]:
        self.streams -= 1
        return (OK,)

    def cuStreamSynchronize(self, stream: str) -> tuple[CUresult]:
        self.log.append(("sync",))
        return (OK,)

    # -- memory -------------------------------------------------------------------
    def cuMemAlloc(self, n: int) -> tuple[CUresult, int]:
        backing = np.zeros(n + 2 * 4096, np.uint8)
        addr = (backing.ctypes.data + 4095) // 4096 * 4096 + self.misalign
        self.device_mem[addr] = backing
        self.log.append(("alloc", addr, n))
        return OK, addr

    def cuMemFree(self, addr: int) -> tuple[CUresult]:
        del self.device_mem[int(addr)]
        fd = self.export_of.pop(int(addr), -1)
        self.log.append(("free", int(addr), fd >= 0 and _is_open(fd)))  # (.., its dma-buf still open?)
        return (OK,)

    def cuMemHostAlloc(self, n: int, flags: int) -> tuple[CUresult, int]:
        buf = (ctypes.c_uint8 * n)()
        addr = ctypes.addressof(buf)
        self.host_mem[addr] = buf
        return OK, addr

    def cuMemFreeHost(self, addr: int) -> tuple[CUresult]:
        del self.host_mem[addr]
        return (OK,)

    def cuMemGetHandleForAddressRange(self, ptr: int, size: int, htype: int, flags: int) -> tuple[Any, ...]:
        self.log.append(("export", ptr, size, htype, flags))
        assert ptr % 4096 == 0 and size % 4096 == 0, "the driver needs host-page aligned ranges"
        if self.export_error is not None:
            return (self.export_error, 0)
        fd = os.memfd_create("fake-dmabuf")
        os.ftruncate(fd, size)
        self.fds.append(fd)
        base = max(a for a in self.device_mem if a <= ptr)
        self.export_of[base] = fd
        return OK, fd

    def _in_device(self, addr: int, n: int) -> None:
        for base, arr in self.device_mem.items():
            lo = arr.ctypes.data
            if lo <= addr and addr + n <= lo + arr.shape[0] and addr >= base:
                return
        raise AssertionError(f"device range {addr:#x}+{n} outside every allocation")

    def cuMemcpyHtoD(self, dst: int, src: int, n: int) -> tuple[CUresult]:
        self._in_device(dst, n)
        ctypes.memmove(dst, src, n)
        return (OK,)

    def cuMemcpyDtoH(self, dst: int, src: int, n: int) -> tuple[CUresult]:
        self._in_device(src, n)
        ctypes.memmove(dst, src, n)
        return (OK,)

    def CUstream(self, ptr: int) -> str:
        return f"stream{ptr}"

    def cuMemcpyDtoDAsync(self, dst: int, src: int, n: int, stream: str) -> tuple[CUresult]:
        self.log.append(("dtod", dst, n))
        self._in_device(src, n)
        ctypes.memmove(dst, src, n)
        return (OK,)

    def cuMemcpyHtoDAsync(self, dst: int, src: int, n: int, stream: str) -> tuple[CUresult]:
        self.log.append(("htod", dst, n))
        return self.cuMemcpyHtoD(dst, src, n)

    def cuMemcpyDtoHAsync(self, dst: int, src: int, n: int, stream: str) -> tuple[CUresult]:
        self.log.append(("dtoh", src, n))
        return self.cuMemcpyDtoH(dst, src, n)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
