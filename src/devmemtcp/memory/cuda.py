"""CUDA device memory exported as a dma-buf (cuda-python's driver API).

Strategy: one ``cuMemAlloc`` per buffer (the driver accepts cuMemAlloc ranges
for dma-buf export, as it does fully mapped cuMemAddressReserve ranges),
over-allocated by one page so the exported range starts on a host page
boundary; the export is ``cuMemGetHandleForAddressRange(ptr, size,
CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0)`` after checking
``CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED`` (both the pointer and the size must
be host-page aligned, per the driver API reference). The driver's fd is the
dma-buf handed to bind-rx / bind-tx (net/core/devmem.c
``net_devmem_bind_dmabuf`` takes it with ``dma_buf_get``).

Device memory is not host-readable: :meth:`CudaBuffer.host_view` raises.
Bytes move with driver copies (``copy_in`` / ``copy_out``), and the emulated
NIC, which stands in for the NIC's DMA engine, moves payload with
:meth:`CudaBuffer.write_at` / :meth:`CudaBuffer.read_at` through a pinned
host staging buffer (:meth:`CudaBuffer.staging`). A real devmem NIC writes
device memory itself and none of those copies happen. Gather and pattern
validation on the device are in :mod:`devmemtcp.memory.cuda_ops` (CuPy).

cuda-python is imported lazily (the ``[cuda]`` extra), so this module loads
without it; every entry point raises :class:`~devmemtcp.errors.DevmemError`
with the fix when cuda-python, the NVIDIA driver or the GPU is missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from devmemtcp import abi
from devmemtcp.errors import DevmemError
from devmemtcp.memory.base import host_array
from devmemtcp.memory.memfd import check_size

if TYPE_CHECKING:
    from devmemtcp.codec import FragBatch

__all__ = ["CudaBuffer", "driver", "driver_version", "parse_device", "probe"]

_INSTALL_HINT = "pip install 'devmemtcp[cuda]' (cuda-python), or use --memory host"
_OPEN_MODULES_HINT = (
    "dma-buf export of GPU memory needs the NVIDIA open kernel modules (nvidia-open, driver R515 or later; "
    "/proc/driver/nvidia/version then says 'Open Kernel Module') and a CUDA 11.7+ driver; "
    "or use --memory host / udmabuf")

_KIND_RE = re.compile(r"^cuda(?::(\d+))?$")


def parse_device(kind: str) -> int:
    """The device ordinal of a memory kind: ``"cuda"`` -> 0, ``"cuda:N"`` -> N.

    Raises DevmemError for any other text (the hint gives the accepted forms)."""
    m = _KIND_RE.match(kind.strip())
    if not m:
        raise DevmemError(f"memory kind {kind!r} is not cuda or cuda:N",
                          "use --memory cuda (GPU 0) or --memory cuda:N (GPU N, as nvidia-smi numbers them "
                          "under CUDA_DEVICE_ORDER=PCI_BUS_ID)")
    return int(m.group(1) or 0)


def driver() -> Any:
    """cuda-python's driver API module (``cuda.bindings.driver``; ``cuda.cuda``
    before cuda-python 12.6). Raises DevmemError when cuda-python is absent."""
    try:
        from cuda.bindings import driver as drv
    except ImportError:
        try:
            from cuda import cuda as drv
        except ImportError:
            raise DevmemError("cuda-python is not installed: CUDA memory needs its driver API bindings",
                              _INSTALL_HINT) from None
    return drv


def _name(err: Any) -> str:
    return str(getattr(err, "name", None) or f"CUresult {int(err)}")


def _ok(res: Any, what: str, hint: str | None = None) -> Any:
    """Unpack a cuda-python result tuple: the value(s) after CUresult, or DevmemError."""
    if not isinstance(res, tuple):
        res = (res,)
    err = res[0]
    if int(err) != 0:
        raise DevmemError(f"{what} failed: {_name(err)}", hint or "check the NVIDIA driver (nvidia-smi)")
    if len(res) == 1:
        return None
    return res[1] if len(res) == 2 else res[1:]


def _init(drv: Any) -> None:
    """cuInit(0), turning "no driver library" and CUDA_ERROR_NO_DEVICE into DevmemError."""
    try:
        res = drv.cuInit(0)
    except Exception as exc:  # cuda.pathfinder raises when libcuda.so is not on the system
        raise DevmemError(f"no NVIDIA driver: libcuda cannot be loaded ({type(exc).__name__}: {exc})",
                          "install the NVIDIA driver on a machine with a GPU, or use --memory host") from None
    err = res[0] if isinstance(res, tuple) else res
    if int(err) != 0:
        raise DevmemError(f"cuInit failed: {_name(err)} (no usable NVIDIA GPU)",
                          "check nvidia-smi and /dev/nvidia*, or use --memory host")


def driver_version(drv: Any | None = None) -> str:
    """The CUDA version the driver supports, as "MAJOR.MINOR" (cuDriverGetVersion:
    1000 * major + 10 * minor). Raises DevmemError without cuda-python or a driver."""
    drv = drv or driver()
    _init(drv)
    v = int(_ok(drv.cuDriverGetVersion(), "cuDriverGetVersion"))
    return f"{v // 1000}.{v % 1000 // 10}"


def _attr(drv: Any, name: str, dev: Any) -> int | None:
    a = getattr(drv.CUdevice_attribute, name, None)
    if a is None:
        return None
    return int(_ok(drv.cuDeviceGetAttribute(a, dev), f"cuDeviceGetAttribute({name})"))


def probe(device: int = 0, drv: Any | None = None) -> dict[str, Any]:
    """Facts for dma-buf export on GPU ``device``: ``{"driver": "12.4",
    "device": N, "name": str, "count": devices, "dmabuf_supported": bool | None}``
    (None: this cuda-python does not know the attribute). Raises DevmemError
    without cuda-python, a driver or that device."""
    drv = drv or driver()
    _init(drv)
    version = driver_version(drv)
    count = int(_ok(drv.cuDeviceGetCount(), "cuDeviceGetCount"))
    if not 0 <= device < count:
        raise DevmemError(f"no CUDA device {device}: the driver sees {count} device(s)",
                          f"use --memory cuda:N with N below {count} (nvidia-smi lists them)")
    dev = _ok(drv.cuDeviceGet(device), f"cuDeviceGet({device})")
    raw = _ok(drv.cuDeviceGetName(256, dev), "cuDeviceGetName")
    name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes | bytearray) else str(raw)
    supported = _attr(drv, "CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED", dev)
    return {"driver": version, "device": device, "name": name, "count": count,
            "dmabuf_supported": None if supported is None else bool(supported)}


class CudaBuffer:
    """``size`` bytes of device memory on CUDA device ``device``, exported as a dma-buf.

    ``fd``: the dma-buf fd (bind-rx / bind-tx). ``size``: bytes, a positive
    multiple of ``page_size`` (4096). ``ptr``: device address of byte 0
    (host-page aligned). ``device``: the ordinal. ``kind`` is ``"cuda"``.

    Raises :class:`~devmemtcp.errors.DevmemError`: no cuda-python / driver /
    device (with the fix), the device lacks CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED,
    the driver refuses the export (the message names the driver version and
    the attribute, the hint the fix), out of device memory. Nothing is left
    allocated when the constructor raises. Work is done in the device's
    primary context (the one CuPy and torch use), pushed for each call, so
    any thread may use the buffer. Use as a context manager; ``close()``
    closes the dma-buf fd, then frees the device memory, the pinned staging
    buffers and the stream, then releases the context (idempotent).
    """

    kind = "cuda"

    def __init__(self, size: int, page_size: int = abi.PAGE_SIZE, *, device: int = 0,
                 drv: Any | None = None) -> None:
        check_size(size, page_size)
        self.size = size
        self.page_size = page_size
        self.device = device
        self.fd = -1
        self.ptr = 0
        self._base: Any = None  # the CUdeviceptr cuMemAlloc returned (ptr rounds it up)
        self._ctx: Any = None
        self._dev: Any = None
        self._stream: Any = None
        self._pinned: list[tuple[int, int]] = []  # (address, bytes) from cuMemHostAlloc
        self._stage_lock = threading.Lock()
        self._stage: dict[int, np.ndarray] = {}  # thread id -> its staging buffer
        self._drv = drv or driver()
        info = probe(device, self._drv)
        self.driver_version = str(info["driver"])
        self.device_name = str(info["name"])
        self._attr_text = ("although CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 1" if info["dmabuf_supported"]
                           else "(this cuda-python cannot read CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED)")
        if info["dmabuf_supported"] is False:
            raise DevmemError(
                f"CUDA device {device} ({self.device_name}, driver CUDA {self.driver_version}) cannot export "
                "dma-bufs: CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 0", _OPEN_MODULES_HINT)
        drv_ = self._drv
        self._dev = _ok(drv_.cuDeviceGet(device), f"cuDeviceGet({device})")
        self._ctx = _ok(drv_.cuDevicePrimaryCtxRetain(self._dev), "cuDevicePrimaryCtxRetain")
        try:
            with self._current():
                self._alloc()
                self._export()
                flags = drv_.CUstream_flags.CU_STREAM_NON_BLOCKING
                self._stream = _ok(drv_.cuStreamCreate(int(flags)), "cuStreamCreate")
        except BaseException:
            self.close()
            raise

    # -- set-up ----------------------------------------------------------------
    @contextlib.contextmanager
    def _current(self) -> Iterator[None]:
        """Make the device's primary context current on this thread for a call."""
        if self._ctx is None:
            raise DevmemError("the CUDA dma-buf is closed", "do not use a buffer after close()")
        _ok(self._drv.cuCtxPushCurrent(self._ctx), "cuCtxPushCurrent")
        try:
            yield
        finally:
            self._drv.cuCtxPopCurrent()

    def _alloc(self) -> None:
        res = self._drv.cuMemAlloc(self.size + self.page_size)
        err = res[0]
        if int(err) != 0:
            hint = ("use a smaller --size or free GPU memory (nvidia-smi shows who holds it)"
                    if "OUT_OF_MEMORY" in _name(err) else "check the NVIDIA driver (nvidia-smi)")
            raise DevmemError(
                f"cannot allocate {self.size} bytes on CUDA device {self.device}: {_name(err)}", hint)
        self._base = res[1]
        base = int(self._base)
        self.ptr = (base + self.page_size - 1) & ~(self.page_size - 1)

    def _export(self) -> None:
        drv = self._drv
        htype = drv.CUmemRangeHandleType.CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD
        res = drv.cuMemGetHandleForAddressRange(self.ptr, self.size, htype, 0)
        err = res[0]
        if int(err) != 0:
            raise DevmemError(
                f"the NVIDIA driver (CUDA {self.driver_version}) refused to export {self.size} bytes of CUDA "
                f"device {self.device} ({self.device_name}) as a dma-buf: cuMemGetHandleForAddressRange("
                f"CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD) returned {_name(err)} {self._attr_text}",
                _OPEN_MODULES_HINT)
        self.fd = int(res[1])

    # -- views and copies ------------------------------------------------------
    def host_view(self) -> np.ndarray:
        """Always raises DevmemError: device memory is not host-readable.

        Use :meth:`copy_out`, :meth:`gather` (on the device), or
        :func:`devmemtcp.memory.cuda_ops.pool_array` for a device array."""
        raise DevmemError(
            f"CUDA device memory (device {self.device}) has no host view: the CPU cannot read it",
            "use copy_out() / read_at() to copy bytes to the host, or gather() and "
            "devmemtcp.memory.cuda_ops for work on the device")

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise DevmemError(f"range [{offset}, {offset + length}) is outside the {self.size}-byte dma-buf",
                              "keep offsets and lengths within the buffer size")

    def copy_in(self, offset: int, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Copy host ``data`` (raw bytes of any bytes-like or array) to ``offset`` (cuMemcpyHtoD)."""
        src = np.ascontiguousarray(data).reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) \
            else np.frombuffer(data, dtype=np.uint8)
        self._check_range(offset, src.shape[0])
        if src.shape[0] == 0:
            return
        with self._current():
            _ok(self._drv.cuMemcpyHtoD(self.ptr + offset, src.ctypes.data, src.shape[0]), "cuMemcpyHtoD")

    def copy_out(self, offset: int, length: int) -> np.ndarray:
        """A new host ``uint8`` array of ``length`` bytes from ``offset`` (cuMemcpyDtoH)."""
        self._check_range(offset, length)
        out = np.empty(length, np.uint8)
        if length:
            with self._current():
                _ok(self._drv.cuMemcpyDtoH(out.ctypes.data, self.ptr + offset, length), "cuMemcpyDtoH")
        return out

    def staging(self, nbytes: int) -> np.ndarray:
        """A pinned (page-locked, cuMemHostAlloc) host ``uint8`` array of at
        least ``nbytes`` bytes, one per calling thread, reused and grown
        (doubling) on demand; freed by :meth:`close`. What the emulated NIC
        receives into and sends from."""
        tid = threading.get_ident()
        with self._stage_lock:
            cur = self._stage.get(tid)
            if cur is not None and cur.shape[0] >= nbytes:
                return cur
            want = max(nbytes, abi.PAGE_SIZE, 2 * (cur.shape[0] if cur is not None else 0))
            with self._current():
                addr = int(_ok(self._drv.cuMemHostAlloc(want, self._drv.CU_MEMHOSTALLOC_PORTABLE),
                               "cuMemHostAlloc", "free host memory, or lower RLIMIT_MEMLOCK use elsewhere"))
            self._pinned.append((addr, want))
            arr = host_array(addr, want)
            self._stage[tid] = arr
            return arr

    @staticmethod
    def _runs(offsets: np.ndarray, sizes: np.ndarray, size: int) -> tuple[list[int], list[int], int]:
        offs = np.asarray(offsets, dtype=np.int64).reshape(-1)
        lens = np.asarray(sizes, dtype=np.int64).reshape(-1)
        if offs.shape != lens.shape:
            raise DevmemError(f"{offs.shape[0]} offsets but {lens.shape[0]} sizes",
                              "give one size per offset")
        if offs.shape[0] and (int(offs.min()) < 0 or int(lens.min()) < 0 or int((offs + lens).max()) > size):
            raise DevmemError(f"a range lies outside the {size}-byte dma-buf",
                              "keep offsets and lengths within the buffer size")
        return offs.tolist(), lens.tolist(), int(lens.sum())

    def write_at(self, offsets: np.ndarray, sizes: np.ndarray, src: np.ndarray) -> None:
        """Scatter host bytes into the buffer: ``src[0:sizes[0]]`` to
        ``offsets[0]``, the next ``sizes[1]`` bytes to ``offsets[1]``, ...

        ``offsets`` / ``sizes``: shape ``(k,)`` integer arrays (bytes; k is
        the number of contiguous runs, usually 1 or 2 per received batch);
        ``src``: a host ``uint8`` array of at least ``sum(sizes)`` bytes,
        ideally from :meth:`staging` (pinned: the copies then run at full
        PCIe speed). One asynchronous cuMemcpyHtoDAsync per run on the
        buffer's stream and one stream synchronisation per call: the bytes
        are in device memory when it returns. DevmemError on a bad range."""
        self._copy_runs(offsets, sizes, src, to_device=True)

    def read_at(self, offsets: np.ndarray, sizes: np.ndarray, out: np.ndarray) -> None:
        """Gather bytes of the buffer to the host: the reverse of
        :meth:`write_at` (``out``: a host ``uint8`` array of at least
        ``sum(sizes)`` bytes). One cuMemcpyDtoHAsync per run, one
        synchronisation per call."""
        self._copy_runs(offsets, sizes, out, to_device=False)

    def _copy_runs(self, offsets: np.ndarray, sizes: np.ndarray, host: np.ndarray, *,
                   to_device: bool) -> None:
        """write_at / read_at: one async copy per run between the buffer and the
        packed host bytes ``host``, then one stream synchronisation."""
        offs, lens, total = self._runs(offsets, sizes, self.size)
        if host.shape[0] < total:
            what = "write_at source" if to_device else "read_at destination"
            raise DevmemError(f"{what} has {host.shape[0]} bytes, the ranges {total}",
                              f"pass a {what.split()[1]} of sum(sizes) bytes")
        base = host.ctypes.data
        drv = self._drv
        with self._current():
            pos = 0
            for o, n in zip(offs, lens, strict=True):
                if n and to_device:
                    _ok(drv.cuMemcpyHtoDAsync(self.ptr + o, base + pos, n, self._stream), "cuMemcpyHtoDAsync")
                elif n:
                    _ok(drv.cuMemcpyDtoHAsync(base + pos, self.ptr + o, n, self._stream), "cuMemcpyDtoHAsync")
                pos += n
            _ok(drv.cuStreamSynchronize(self._stream), "cuStreamSynchronize")

    def gather(self, frags: FragBatch, out: Any = None) -> Any:
        """Concatenate the fragments' bytes, in batch order, into a device
        array on this buffer's device: one kernel launch
        (:func:`devmemtcp.memory.cuda_ops.device_gather`, CuPy). ``out``: a
        1-D uint8 device array (CuPy, or anything with
        ``__cuda_array_interface__``, e.g. a CUDA torch tensor) of at least
        ``frags.nbytes`` bytes, allocated when None. Returns the CuPy view
        of the first ``frags.nbytes`` bytes. DevmemError without CuPy, for a
        fragment outside the buffer, or a destination too small."""
        from devmemtcp.memory.cuda_ops import device_gather

        return device_gather(self, frags, out)

    # -- lifetime ------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._ctx is None

    def close(self) -> None:
        """Close the dma-buf fd, then free device memory, staging buffers and
        the stream, then release the primary context (idempotent). Errors of
        the driver while freeing are not raised (nothing else could free it)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
        if self._ctx is None:
            return
        drv = self._drv
        with contextlib.suppress(DevmemError), self._current():
            if self._base is not None:
                base, self._base = self._base, None
                drv.cuMemFree(base)
            self.ptr = 0
            with self._stage_lock:
                self._stage.clear()
                pinned, self._pinned = self._pinned, []
            for addr, _ in pinned:
                drv.cuMemFreeHost(addr)
            if self._stream is not None:
                stream, self._stream = self._stream, None
                drv.cuStreamDestroy(stream)
        ctx_dev, self._ctx = self._dev, None
        if ctx_dev is not None:
            drv.cuDevicePrimaryCtxRelease(ctx_dev)

    def __enter__(self) -> CudaBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_ctx", None) is not None or getattr(self, "fd", -1) >= 0:
            with contextlib.suppress(Exception):
                self.close()

    def __repr__(self) -> str:
        return f"<CudaBuffer fd={self.fd} size={self.size} device={self.device} kind=cuda>"
