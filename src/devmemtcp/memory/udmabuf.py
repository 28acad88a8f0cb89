"""udmabuf: host memory exported as a real dma-buf (drivers/dma-buf/udmabuf.c).

A memfd sealed with F_SEAL_SHRINK is turned into a dma-buf fd by the
UDMABUF_CREATE ioctl on /dev/udmabuf. The host view maps the memfd (the same
pages the dma-buf exports), so the CPU can fill and check the buffer.
"""

from __future__ import annotations

import errno
import fcntl
import os

import numpy as np

from devmemtcp import abi
from devmemtcp.errors import DevmemError
from devmemtcp.memory.memfd import MemfdBuffer, check_size

UDMABUF_DEVICE = "/dev/udmabuf"

_MODULE_HINT = ("load the udmabuf module: modprobe udmabuf (the kernel needs CONFIG_UDMABUF=y or m); "
                "or use --memory host with the emulated backend")


def udmabuf_size_limit(path: str = abi.UDMABUF_SIZE_LIMIT_PARAM) -> int | None:
    """The udmabuf module's size limit in bytes (``size_limit_mb`` parameter,
    default 64 MiB), or ``None`` if the parameter cannot be read."""
    try:
        with open(path) as f:
            return int(f.read().strip()) * 1024 * 1024
    except (OSError, ValueError):
        return None


class UdmabufBuffer(MemfdBuffer):
    """A dma-buf of ``size`` bytes backed by a sealed memfd.

    ``fd`` is the dma-buf fd (hand it to bind-rx/bind-tx); ``memfd`` the
    backing memfd, which is what :meth:`host_view` maps. Raises
    :class:`~devmemtcp.errors.DevmemError`:

    * when ``device`` (/dev/udmabuf) is missing: the hint names the module
      (``modprobe udmabuf``, CONFIG_UDMABUF);
    * when ``size`` exceeds the module's ``size_limit_mb`` (the ioctl would
      fail with EINVAL): the hint says how to raise it;
    * when ``size`` is not a multiple of ``page_size``, or the ioctl fails
      (errno and the cause in the message).
    """

    kind = "udmabuf"

    def __init__(
        self,
        size: int,
        page_size: int = abi.PAGE_SIZE,
        *,
        device: str = UDMABUF_DEVICE,
        size_limit_path: str = abi.UDMABUF_SIZE_LIMIT_PARAM,
    ) -> None:
        check_size(size, page_size)
        if not os.path.exists(device):
            raise DevmemError(f"{device} is missing: the udmabuf module is not loaded", _MODULE_HINT)
        limit = udmabuf_size_limit(size_limit_path)
        if limit is not None and size > limit:
            raise DevmemError(
                f"dma-buf size {size} bytes exceeds udmabuf's size_limit_mb ({limit // (1024 * 1024)} MiB)",
                f"raise the limit: echo {-(-size // (1024 * 1024))} > {size_limit_path} "
                f"(or modprobe udmabuf size_limit_mb=N), or use a smaller --size",
            )
        super().__init__(size, page_size, name="devmemtcp-udmabuf")
        self.memfd = self.fd
        self.fd = -1
        try:
            fcntl.fcntl(self.memfd, abi.F_ADD_SEALS, abi.F_SEAL_SHRINK)
            self.fd = self._create(device, self.memfd, size)
        except BaseException:
            self._close_memfd()
            raise

    @staticmethod
    def _create(device: str, memfd: int, size: int) -> int:
        try:
            dev = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise DevmemError(f"cannot open {device}: {e.strerror}",
                              "run as root or grant access to /dev/udmabuf") from e
        try:
            req = np.zeros(1, abi.UDMABUF_CREATE_DTYPE)
            req["memfd"] = memfd
            req["flags"] = abi.UDMABUF_FLAGS_CLOEXEC
            req["offset"] = 0
            req["size"] = size
            arg = bytearray(req.tobytes())
            try:
                return int(fcntl.ioctl(dev, abi.UDMABUF_CREATE, arg, True))
            except OSError as e:
                name = errno.errorcode.get(e.errno or 0, str(e.errno))
                raise DevmemError(
                    f"UDMABUF_CREATE on {device} failed: {name} ({e.strerror})",
                    "check size_limit_mb and that the memfd is sealed against shrinking"
                    if e.errno == errno.EINVAL else _MODULE_HINT,
                ) from e
        finally:
            os.close(dev)

    def _close_memfd(self) -> None:
        # the MemfdBuffer machinery closes whatever self.fd is: point it at the memfd
        dmabuf_fd, self.fd = self.fd, self.memfd
        self.memfd = -1
        MemfdBuffer.close(self)
        if dmabuf_fd >= 0:
            os.close(dmabuf_fd)

    @property
    def closed(self) -> bool:
        return self.fd < 0 and getattr(self, "memfd", -1) < 0

    def close(self) -> None:
        """Close the dma-buf fd, unmap and close the memfd (idempotent)."""
        if getattr(self, "memfd", -1) < 0 and self.fd < 0:
            return
        self._close_memfd()

    def __del__(self) -> None:
        if getattr(self, "memfd", -1) >= 0 or getattr(self, "fd", -1) >= 0:
            self.close()
