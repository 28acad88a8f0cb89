"""The Channel's device side: messages in CUDA memory (``memory="cuda"`` / ``"cuda:N"``).

With a CUDA dma-buf (:class:`~devmemtcp.memory.cuda.CudaBuffer`) the CPU
cannot read the RX frags nor write the TX dma-buf, so the Channel hands its
byte moves to :class:`DeviceSide`:

- receive: each batch's frags are gathered on the device by the dma-buf's
  own ``gather`` (one kernel launch per batch, CuPy) into a device
  destination: a CUDA torch tensor, a CuPy array, anything with
  ``__cuda_array_interface__`` or a CUDA DLPack device. The stream is
  synchronised before the batch's tokens go back (the NIC may reuse the
  net_iovs at once). A host destination (numpy) is gathered into a device
  array first, then copied device to host once (counted in ``host_copy_bytes``).
- send: a device source is copied device to device into the TX staging
  ring; a host source host to device (``copy_in``, counted as a host copy);
  an array from :meth:`DeviceSide.empty` lives in the TX dma-buf and is
  sent without a copy.

CuPy is the device library (``devmemtcp[gpu]``); torch is needed only for
torch tensors. Host memory channels never load this module's device paths.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from devmemtcp.channel.header import DL_BFLOAT, MessageHeader, destination_size_error
from devmemtcp.codec import FragBatch
from devmemtcp.errors import ChannelError, DevmemError

__all__ = ["DeviceSide", "cuda_provider_usable", "device_kind", "is_device_array", "torch_cuda_ok"]

# DLPack device types whose memory a CUDA kernel can address (dlpack.h DLDeviceType)
_DL_CUDA = 2
_DL_CUDA_MANAGED = 13


def device_kind(dmabuf: Any) -> bool:
    """True for a dma-buf in device memory (no host view): the CUDA provider."""
    return getattr(dmabuf, "kind", "") == "cuda"


def is_device_array(obj: Any) -> bool:
    """True for a CUDA torch tensor, a CuPy array, anything with
    ``__cuda_array_interface__``, or a DLPack object on a CUDA device."""
    if type(obj).__module__.split(".")[0] == "torch" and hasattr(obj, "device"):
        return bool(obj.device.type == "cuda")
    if hasattr(obj, "__cuda_array_interface__"):
        return True
    dev = getattr(obj, "__dlpack_device__", None)
    if dev is None:
        return False
    try:
        return int(dev()[0]) in (_DL_CUDA, _DL_CUDA_MANAGED)
    except Exception:  # a broken __dlpack_device__ is not a device array
        return False


def cuda_provider_usable() -> bool:
    """True when the CUDA provider can be tried: cuda-python's driver API
    imports (no driver call is made). What the torch backend checks before
    registering device "cuda"."""
    from devmemtcp.memory.cuda import driver

    try:
        driver()
    except DevmemError:
        return False
    return True


def torch_cuda_ok(what: str) -> Any:
    """The torch module when torch has CUDA, else ChannelError naming ``what``."""
    try:
        import torch
    except ImportError:
        raise ChannelError(f"{what} needs torch", "pip install torch (a CUDA build), or use like='cupy'") \
            from None
    if not torch.cuda.is_available():
        raise ChannelError(
            f"{what} needs torch with CUDA: torch {torch.__version__} sees no CUDA device",
            "install a CUDA build of torch (pip install torch) on the GPU host, or use like='cupy'",
        )
    return torch


def _cupy() -> Any:
    from devmemtcp.memory.cuda_ops import cupy

    try:
        return cupy()
    except DevmemError as exc:
        raise ChannelError(exc.message, exc.hint) from None


def _torch_dtype(h: MessageHeader) -> Any:
    import torch

    if h.dtype.dlpack == (DL_BFLOAT, 16, 1):
        return torch.bfloat16
    try:
        return torch.from_numpy(np.empty(0, h.dtype.numpy())).dtype
    except TypeError:
        raise ChannelError(f"dtype {h.dtype} has no torch equivalent", "receive with like='cupy'") from None


class DeviceSide:
    """Byte moves of a Channel whose dma-bufs are CUDA memory.

    ``rx`` / ``tx``: the RX and TX CudaBuffers (on one device: ``device``).
    Device views are 1-D ``uint8`` CuPy arrays; slicing them is free."""

    def __init__(self, rx: Any, tx: Any) -> None:
        self.cp = _cupy()
        self.rx = rx
        self.tx = tx
        self.device = int(rx.device)
        from devmemtcp.memory.cuda_ops import pool_array

        with self.cp.cuda.Device(self.device):
            self.tx_pool = pool_array(tx)

    # -- views -------------------------------------------------------------
    def u8(self, obj: Any) -> Any:
        """A device array as a contiguous 1-D uint8 CuPy view (no copy)."""
        cp = self.cp
        if type(obj).__module__.split(".")[0] == "torch":
            t = obj.detach()
            if t.device.index is not None and t.device.index != self.device:
                raise ChannelError(
                    f"the tensor is on {t.device}, this channel's dma-bufs on cuda:{self.device}",
                    f"move it with .to('cuda:{self.device}'), or open the channel with "
                    f"memory='cuda:{t.device.index}'",
                )
            if not t.is_contiguous():
                raise ChannelError("the CUDA tensor is not contiguous", "pass t.contiguous()")
            import torch

            # torch's own stream may still be writing it: CuPy works on its stream
            torch.cuda.current_stream(t.device).synchronize()
            arr = cp.asarray(t.reshape(-1).view(torch.uint8)) if t.numel() else cp.empty(0, dtype=cp.uint8)
        elif hasattr(obj, "__cuda_array_interface__"):
            arr = cp.asarray(obj)
        else:
            arr = cp.from_dlpack(obj)
        if not arr.flags.c_contiguous:
            raise ChannelError("the device array is not C-contiguous", "pass a contiguous array")
        return arr.reshape(-1).view(cp.uint8)

    def destination(self, out: Any, nbytes: int, tag: int) -> Any:
        """``out`` (a device array) as a uint8 view of exactly ``nbytes``, or ChannelError."""
        view = self.u8(out)
        size = int(view.shape[0])
        if size != nbytes:
            raise destination_size_error(size, nbytes, tag)
        return view

    def new(self, h: MessageHeader, like: str) -> tuple[Any, Any]:
        """A new device array for message ``h``: ``like`` "torch" (a CUDA
        tensor on this channel's device) or "cupy"; ``(result, uint8 view)``."""
        cp = self.cp
        if like == "torch":
            torch = torch_cuda_ok("recv(like='torch') on a CUDA channel")
            t = torch.empty(h.shape, dtype=_torch_dtype(h), device=f"cuda:{self.device}")
            return t, self.u8(t)
        if like == "cupy":
            with cp.cuda.Device(self.device):
                a = cp.empty(h.shape, dtype=h.dtype.numpy())
            return a, self.u8(a)
        raise ChannelError(f"like={like!r}", "use like='torch', 'cupy' or 'numpy'")

    def scratch(self, nbytes: int) -> Any:
        """A new 1-D uint8 device array of ``nbytes`` (a spilled message, a host destination's staging)."""
        with self.cp.cuda.Device(self.device):
            return self.cp.empty(nbytes, dtype=self.cp.uint8)

    def sync(self) -> None:
        self.cp.cuda.get_current_stream().synchronize()

    def to_host(self, src: Any, dst: np.ndarray) -> None:
        """Device ``src`` into host ``dst`` (same length): one device-to-host copy."""
        if dst.shape[0]:
            src.get(out=dst)

    def from_host(self, dst: Any, src: np.ndarray) -> None:
        if src.shape[0]:
            dst.set(src)

    # -- receive -----------------------------------------------------------
    def gather_batch(self, batch: FragBatch, dst: Any, msg_bytes: int = 0) -> int:
        """One received batch, in stream order, into device view ``dst``:
        frags by the RX dma-buf's gather (one kernel launch), the batch's
        SCM_DEVMEM_LINEAR and readable bytes (host memory) host to device.
        Synchronises before returning: the frags may be given back then.
        ``msg_bytes`` (the host gather's choice of non-temporal stores) does not apply."""
        cp = self.cp
        with cp.cuda.Device(self.device):
            if batch.readable.shape[0]:
                n = int(batch.readable.shape[0])
                self.from_host(dst[:n], np.ascontiguousarray(batch.readable))
                return n
            if not batch.linear_bytes:
                n = batch.nbytes
                if n:
                    self.rx.gather(batch, dst[:n])
                    self.sync()
                return n
            pos = lin = done = 0
            for size, at in zip(batch.linear_sizes.tolist(), batch.linear_at.tolist(), strict=True):
                if at > done:
                    pos += self._gather_part(batch, done, at, dst[pos:])
                    done = at
                self.from_host(dst[pos : pos + size], np.ascontiguousarray(batch.linear[lin : lin + size]))
                pos += size
                lin += size
            if batch.offset.shape[0] > done:
                pos += self._gather_part(batch, done, batch.offset.shape[0], dst[pos:])
            self.sync()
            return pos

    def _gather_part(self, batch: FragBatch, lo: int, hi: int, dst: Any) -> int:
        part = FragBatch(batch.offset[lo:hi], batch.size[lo:hi], batch.token[lo:hi], batch.dmabuf_id[lo:hi])
        n = part.nbytes
        if n:
            self.rx.gather(part, dst[:n])
        return n

    # -- send --------------------------------------------------------------
    def tx_offset(self, src: Any) -> int | None:
        """The TX dma-buf offset of device view ``src`` when it lies inside it (an :meth:`empty` array)."""
        n = int(src.shape[0])
        if not n:
            return None
        from devmemtcp.memory.cuda_ops import device_address

        off = device_address(src) - int(self.tx.ptr)
        return off if off >= 0 and off + n <= int(self.tx.size) else None

    def stage(self, off: int, src: Any) -> None:
        """Copy ``src`` (a device view, or host uint8) to TX offset ``off`` and
        wait for it (the NIC reads the dma-buf when sendmsg runs)."""
        if not hasattr(src, "__cuda_array_interface__"):
            self.tx.copy_in(off, src)  # cuMemcpyHtoD: synchronous
            return
        with self.cp.cuda.Device(self.device):
            self.tx_pool[off : off + int(src.shape[0])] = src
            self.sync()

    def check_like(self, like: str | None) -> None:
        """ChannelError unless :meth:`empty` can give ``like`` (None, "cupy", "torch" with CUDA)."""
        if like == "torch":
            torch_cuda_ok("empty(like='torch') on a CUDA channel")
        elif like not in (None, "cupy"):
            raise ChannelError(f"empty(like={like!r}) on a CUDA channel: device memory has no host view",
                               "use like='cupy' or like='torch'")

    def empty(self, off: int, need: int, n: int, dt: np.dtype, shape: tuple[int, ...], like: str,
              release: Any) -> Any:
        """An array of ``shape`` / ``dt`` over TX bytes ``off .. off+n`` (a
        region of ``need`` bytes): a CuPy array, or a CUDA tensor for
        ``like="torch"`` (DLPack, same memory). ``release(off, need)`` runs
        when the array and every view of it are gone."""
        cp = self.cp
        torch = torch_cuda_ok("empty(like='torch') on a CUDA channel") if like == "torch" else None
        holder = _Region()
        weakref.finalize(holder, release, off, need)
        with cp.cuda.Device(self.device):
            mem = cp.cuda.UnownedMemory(int(self.tx.ptr) + off, need, holder, device_id=self.device)
            arr = cp.ndarray((n,), dtype=cp.uint8, memptr=cp.cuda.MemoryPointer(mem, 0))
            arr = arr.view(dt).reshape(shape)
        if torch is not None:
            return torch.from_dlpack(arr)
        return arr


class _Region:
    """Owner of an empty() region: its finaliser gives the region back."""

