"""KernelBackend: the real kernel's devmem interface through libc and netlink.

The four socket calls go straight to libc through :mod:`ctypes`
(``use_errno=True``), because CPython's socket module cannot express them:

- ``recvmsg(MSG_SOCK_DEVMEM)``: the kernel writes one ``struct dmabuf_cmsg``
  cmsg per fragment into the caller's (preallocated) control buffer
  (net/ipv4/tcp.c, ``tcp_recvmsg_dmabuf``).
- ``setsockopt(SO_DEVMEM_DONTNEED)``: its positive return value is the number
  of frags freed (net/core/sock.c, ``sock_devmem_dontneed``); CPython's
  ``socket.setsockopt`` throws it away.
- ``sendmsg`` with iovecs whose ``iov_base`` is a byte *offset* into the
  dma-buf, plus an ``SCM_DEVMEM_DMABUF`` cmsg carrying the binding id
  (net/core/sock.c ``__sock_cmsg_send``, net/core/datagram.c
  ``zerocopy_fill_skb_from_devmem``).
- ``recvmsg(MSG_ERRQUEUE)``: MSG_ZEROCOPY completions.

``struct msghdr`` and ``struct iovec`` are allocated once per thread and
reused. The RX/TX iovec arrays handed in by the caller are used in place: an
``(n, 2)`` C-contiguous ``uint64`` array has exactly the layout of
``struct iovec[n]`` on 64-bit Linux.

Errors come back as ``OSError`` with the kernel's errno (``BlockingIOError``
for EAGAIN, ``TimeoutError`` when a Python-level socket timeout expires).
EINTR is retried after Python's signal handlers have run (PEP 475 style).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import socket
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from devmemtcp import abi
from devmemtcp.errors import NetlinkError
from devmemtcp.host import ifaces
from devmemtcp.netlink import ethtool, netdev, ntuple
from devmemtcp.netlink.netdev import KernelBinding
from devmemtcp.types import Channels, NtupleRule, Rings

if TYPE_CHECKING:
    from devmemtcp.memory.base import DmaBuf

# ---------------------------------------------------------------------------
# libc
# ---------------------------------------------------------------------------


class Iovec(ctypes.Structure):
    """``struct iovec`` (include/uapi/linux/uio.h): 16 bytes on 64-bit."""

    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class Msghdr(ctypes.Structure):
    """``struct msghdr`` as user space sees it (include/linux/socket.h
    ``struct user_msghdr``): 56 bytes on 64-bit."""

    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


def _load_libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c") or "libc.so.6"
    lib = ctypes.CDLL(name, use_errno=True)
    lib.recvmsg.argtypes = (ctypes.c_int, ctypes.POINTER(Msghdr), ctypes.c_int)
    lib.recvmsg.restype = ctypes.c_ssize_t
    lib.sendmsg.argtypes = (ctypes.c_int, ctypes.POINTER(Msghdr), ctypes.c_int)
    lib.sendmsg.restype = ctypes.c_ssize_t
    lib.setsockopt.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                               ctypes.c_uint32)
    lib.setsockopt.restype = ctypes.c_int
    return lib


_libc = _load_libc()


def _raise_errno(err: int) -> None:
    raise OSError(err, os.strerror(err))


_Char = ctypes.c_char
_addressof = ctypes.addressof


def _address(buf: memoryview | bytearray | np.ndarray | bytes | None) -> tuple[int, int, Any]:
    """(address, length, keep-alive object) of a contiguous buffer, without copying.

    Writable buffers (bytearray, memoryview, numpy arrays) go through
    ``ctypes.c_char.from_buffer`` (about 0.3 us, against 1 us for
    ``ndarray.ctypes.data``); ``bytes`` through ``c_char_p`` (points into the
    bytes object); other read-only buffers are copied once.
    """
    if type(buf) is memoryview and buf.c_contiguous and not buf.readonly:  # the hot path
        n = buf.nbytes
        if n:
            obj = _Char.from_buffer(buf)
            return _addressof(obj), n, obj
    if buf is None:
        return 0, 0, None
    if isinstance(buf, np.ndarray):
        n = buf.nbytes
        if not n:
            return 0, 0, None
        if not buf.flags.c_contiguous:
            raise ValueError("buffer must be C-contiguous")
        if buf.flags.writeable:
            obj = _Char.from_buffer(buf)  # type: ignore[arg-type]  # ndarray has the buffer protocol
            return _addressof(obj), n, obj
        return int(buf.ctypes.data), n, buf
    if isinstance(buf, bytes):
        keep = ctypes.c_char_p(buf)
        return ctypes.cast(keep, ctypes.c_void_p).value or 0, len(buf), keep
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    n = mv.nbytes
    if n == 0:
        return 0, 0, None
    if mv.readonly:
        data = mv.tobytes()
        keep2 = ctypes.c_char_p(data)
        return ctypes.cast(keep2, ctypes.c_void_p).value or 0, n, (keep2, data)
    obj = _Char.from_buffer(mv)
    return _addressof(obj), n, obj


_setsockopt = _libc.setsockopt
# setsockopt for SO_DEVMEM_DONTNEED alone, without argtypes: ctypes' default conversions (Python
# int -> C int, bytes -> pointer to its data) suit (int fd, int, int, const void *, socklen_t
# len <= 1024) and cost 0.4 us less per call than argtypes' from_param checks.
_dontneed_setsockopt = _libc["setsockopt"]
_dontneed_setsockopt.restype = ctypes.c_int
_SOL_SOCKET = abi.SOL_SOCKET
_SO_DEVMEM_DONTNEED = abi.SO_DEVMEM_DONTNEED
_recvmsg = _libc.recvmsg
_sendmsg = _libc.sendmsg
_get_errno = ctypes.get_errno


def libc_setsockopt(fd: int, level: int, optname: int, value: bytes | bytearray | np.ndarray) -> int:
    """setsockopt(2) through libc, returning the kernel's (non-negative) return value.

    ``value`` is passed byte for byte with ``optlen = len(value)`` (so a
    deliberately bad length can be tested). Raises ``OSError(errno)`` on
    failure. Example: SO_DEVMEM_DONTNEED returns the number of frags freed.
    """
    addr, n, keep = _address(value)
    while True:
        ret = _setsockopt(fd, level, optname, addr or None, n)
        if ret >= 0:
            del keep
            return int(ret)
        err = _get_errno()
        if err != errno.EINTR:
            _raise_errno(err)


class _Scratch(threading.local):
    """Per-thread ``struct msghdr`` + one ``struct iovec``, allocated once.

    The fields that never change (no address, one iovec pointing at ``iov``)
    are set here; each call writes only the buffers and flags."""

    def __init__(self) -> None:
        self.msg = Msghdr()
        self.iov = Iovec()
        self.msg_ptr = ctypes.pointer(self.msg)
        self.iov_addr = ctypes.addressof(self.iov)
        self.msg.msg_iov = self.iov_addr
        self.msg.msg_iovlen = 1


_scratch = _Scratch()


def _wait(fd: int, events: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def libc_recvmsg(sock: socket.socket, buf: memoryview | bytearray | np.ndarray | None,
                 control: memoryview | bytearray | np.ndarray | None, flags: int) -> tuple[int, int, int]:
    """recvmsg(2) through libc into ``buf`` (one iovec) with cmsgs into ``control``.

    Returns ``(nbytes, controllen, msg_flags)``. Honors a Python socket timeout
    (``TimeoutError`` carrying EAGAIN when it expires); raises ``OSError`` with
    the kernel's errno otherwise (``BlockingIOError`` for EAGAIN on a
    non-blocking call).
    """
    s = _scratch
    msg = s.msg
    iov = s.iov
    baddr, blen, bkeep = _address(buf)
    caddr, clen, ckeep = _address(control)
    fd = sock.fileno()
    iov.iov_base = baddr
    iov.iov_len = blen
    msg.msg_iov = s.iov_addr  # sendmsg on this thread points it elsewhere
    msg.msg_iovlen = 1
    while True:
        msg.msg_control = caddr
        msg.msg_controllen = clen
        msg.msg_flags = 0
        n = _recvmsg(fd, s.msg_ptr, flags)
        if n >= 0:
            del bkeep, ckeep
            return n, msg.msg_controllen, msg.msg_flags
        err = _get_errno()
        if err == errno.EINTR:
            continue
        if err == errno.EAGAIN and not flags & (abi.MSG_DONTWAIT | abi.MSG_ERRQUEUE):
            timeout = sock.gettimeout()
            if timeout:
                if _wait(fd, select.POLLIN, timeout):
                    continue
                raise TimeoutError(errno.EAGAIN, "timed out")
        _raise_errno(err)


def libc_sendmsg(sock: socket.socket, iov: np.ndarray, control: bytes | bytearray | memoryview | None,
                 flags: int) -> int:
    """sendmsg(2) through libc with ``iov`` an ``(n, 2)`` uint64 array of
    ``(iov_base, iov_len)`` pairs, used in place as ``struct iovec[n]``.

    For devmem TX ``iov_base`` is a byte offset into the bound dma-buf. Returns
    bytes sent; raises ``OSError`` with the kernel's errno.
    """
    arr = iov if (iov.dtype == np.uint64 and iov.flags.c_contiguous) else np.ascontiguousarray(iov, np.uint64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"iov must have shape (n, 2), got {arr.shape}")
    s = _scratch
    msg = s.msg
    ctl = bytes(control) if control is not None and not isinstance(control, bytes) else control
    caddr, clen, ckeep = _address(ctl if ctl else None)
    iaddr, _ilen, ikeep = _address(arr)
    fd = sock.fileno()
    try:
        while True:
            msg.msg_iov = iaddr
            msg.msg_iovlen = arr.shape[0]
            msg.msg_control = caddr
            msg.msg_controllen = clen
            msg.msg_flags = 0
            n = _sendmsg(fd, s.msg_ptr, flags)
            if n >= 0:
                return n
            err = _get_errno()
            if err == errno.EINTR:
                continue
            if err == errno.EAGAIN and not flags & abi.MSG_DONTWAIT:
                timeout = sock.gettimeout()
                if timeout:
                    if _wait(fd, select.POLLOUT, timeout):
                        continue
                    raise TimeoutError(errno.EAGAIN, "timed out")
            _raise_errno(err)
    finally:
        del ckeep, ikeep


# ---------------------------------------------------------------------------
# NicControl on the real kernel
# ---------------------------------------------------------------------------


class KernelNicControl:
    """ethtool control of one interface in the caller's network namespace.

    Rings (tcp-data-split, hds-thresh) go through ethtool netlink
    (``devmemtcp.netlink.ethtool``); channels and the RSS indirection table
    use ethtool netlink and fall back to the SIOCETHTOOL ioctl when netlink
    reports EOPNOTSUPP; ntuple rules have no netlink op and always use the
    ioctl (``devmemtcp.netlink.ntuple``). Refusals raise NetlinkError (netlink,
    with the extack message) or OSError (ioctl) carrying the kernel's errno.
    """

    def __init__(self, ifname: str) -> None:
        self.ifindex = ifaces.ifindex(ifname)
        self.ifname = ifname

    def driver(self) -> str:
        return ntuple.driver_name(self.ifname)

    def rx_queue_count(self) -> int:
        """RX queues: rx + combined channels, else the ``rx-*`` queues in sysfs."""
        try:
            ch = self.get_channels()
        except NetlinkError:  # no get_channels (loopback): count what the stack sees
            ch = Channels()
        counts = [c for c in (ch.rx, ch.combined) if c]
        if counts:
            return int(sum(counts))
        return ethtool.rx_queue_count(self.ifname)

    def get_rings(self) -> Rings:
        return ethtool.get_rings(self.ifname)

    def set_rings(self, *, tcp_data_split: str | None = None, hds_thresh: int | None = None) -> None:
        ethtool.set_rings(self.ifname, tcp_data_split=tcp_data_split, hds_thresh=hds_thresh)

    # Channels and the RSS table: ethtool netlink, and on EOPNOTSUPP (an op the
    # kernel or driver lacks over netlink) the SIOCETHTOOL ioctl.
    def get_channels(self) -> Channels:
        try:
            return ethtool.get_channels(self.ifname)
        except NetlinkError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
        return ntuple.get_channels(self.ifname)

    def set_channels(self, *, rx: int | None = None, tx: int | None = None,
                     combined: int | None = None) -> None:
        try:
            ethtool.set_channels(self.ifname, rx=rx, tx=tx, combined=combined)
            return
        except NetlinkError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
        ntuple.set_channels(self.ifname, rx=rx, tx=tx, combined=combined)

    def get_rss_indir(self) -> list[int]:
        try:
            return list(ethtool.get_rss_indir(self.ifname))
        except NetlinkError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
        return list(ntuple.get_rss_indir(self.ifname))

    def set_rss_indir(self, table: list[int]) -> None:
        """Write the RSS table; ``[]`` resets it to the driver default (ETHTOOL_SRXFHINDIR
        with size 0, include/uapi/linux/ethtool.h), clearing "user configured"."""
        if table:
            try:
                ethtool.set_rss_indir(self.ifname, table)
                return
            except NetlinkError as exc:
                if exc.errno != errno.EOPNOTSUPP:
                    raise
        ntuple.set_rss_indir(self.ifname, table)

    # ntuple rules have no netlink op: always the ioctl
    def list_rules(self) -> list[NtupleRule]:
        return ntuple.list_rules(self.ifname)

    def add_rule(self, rule: NtupleRule) -> NtupleRule:
        return ntuple.add_rule(self.ifname, rule, location=ntuple.location_policy(self.driver()))

    def delete_rule(self, location: int) -> None:
        ntuple.delete_rule(self.ifname, location)


# ---------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------


_TOKEN = abi.DMABUF_TOKEN_DTYPE


class KernelBackend:
    """The real kernel: netlink via ``devmemtcp.netlink.netdev``, sockets via libc.

    Thread-safe: the reusable ``struct msghdr`` is per thread.
    """

    name: str = "kernel"

    # -- netlink -----------------------------------------------------------
    # -- lifetime ------------------------------------------------------------
    def close(self) -> None:
        """Nothing to give back: each KernelBinding owns its netlink socket
        (closing it unbinds) and the kernel frees a socket's tokens with it."""

    def __enter__(self) -> KernelBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- netlink -----------------------------------------------------------
    def bind_rx(self, ifindex: int, dmabuf: DmaBuf, queues: list[int]) -> KernelBinding:
        """bind-rx ``dmabuf`` to RX ``queues`` of ``ifindex``; raises NetlinkError
        with the kernel's errno and extack (net/core/netdev-genl.c)."""
        return netdev.bind_rx(ifindex, dmabuf.fd, [int(q) for q in queues], dmabuf=dmabuf)

    def bind_tx(self, ifindex: int, dmabuf: DmaBuf) -> KernelBinding:
        """bind-tx ``dmabuf`` to ``ifindex``; raises NetlinkError (EOPNOTSUPP
        "Driver does not support netmem TX" on NICs without netmem TX)."""
        return netdev.bind_tx(ifindex, dmabuf.fd, dmabuf=dmabuf)

    def nic(self, ifname: str) -> KernelNicControl:
        """ethtool control of ``ifname``; DevmemError if there is no such interface."""
        return KernelNicControl(ifname)

    # -- the four socket calls ---------------------------------------------
    def recvmsg(self, sock: socket.socket, buf: memoryview, control: memoryview,
                flags: int) -> tuple[int, int, int]:
        """recvmsg(2) into ``buf`` with cmsgs into ``control``: ``(nbytes,
        controllen, msg_flags)``. See :func:`libc_recvmsg`."""
        return libc_recvmsg(sock, buf, control, flags)

    def dontneed(self, sock: socket.socket, tokens: np.ndarray) -> int:
        """SO_DEVMEM_DONTNEED with a ``DMABUF_TOKEN_DTYPE`` array (at most 128
        ranges). Returns the number of frags freed: 0 for unknown tokens. Errors
        from net/core/sock.c: EBADF on a non-TCP socket, EINVAL for more than
        128 ranges."""
        # the ranges as bytes (at most 1 KiB, a copy cheaper than taking the array's address),
        # passed to a setsockopt without argtypes: the Receiver's hot path, 0.4 us less per call
        data = (tokens if tokens.dtype == _TOKEN else np.asarray(tokens, dtype=_TOKEN)).tobytes()
        fd = sock.fileno()
        while True:
            ret = _dontneed_setsockopt(fd, _SOL_SOCKET, _SO_DEVMEM_DONTNEED, data, len(data))
            if ret >= 0:
                return int(ret)
            err = _get_errno()
            if err != errno.EINTR:
                _raise_errno(err)

    def sendmsg(self, sock: socket.socket, iov: np.ndarray, control: bytes, flags: int) -> int:
        """sendmsg(2) with offset iovecs and the SCM_DEVMEM_DMABUF cmsg. See
        :func:`libc_sendmsg`."""
        return libc_sendmsg(sock, iov, control, flags)

    def recv_errqueue(self, sock: socket.socket, control: memoryview) -> tuple[int, int]:
        """recvmsg(MSG_ERRQUEUE | MSG_DONTWAIT): ``(controllen, msg_flags)``;
        BlockingIOError when the error queue is empty."""
        _n, clen, mflags = libc_recvmsg(sock, None, control, abi.MSG_ERRQUEUE | abi.MSG_DONTWAIT)
        return clen, mflags

    def wait_errqueue(self, sock: socket.socket, timeout: float) -> bool:
        """poll(2) ``sock`` up to ``timeout`` seconds for POLLERR, which a
        queued zerocopy completion raises (net/core/sock.c
        ``sock_queue_err_skb``, net/ipv4/tcp.c ``tcp_poll``); True if it did."""
        return _wait(sock.fileno(), 0, timeout)  # POLLERR is reported without asking


if TYPE_CHECKING:
    from devmemtcp.backend.base import Backend, Binding, NicControl

    def _conforms(kb: KernelBackend, nic: KernelNicControl,
                  b: KernelBinding) -> tuple[Backend, NicControl, Binding]:
        """Never called: mypy fails here when a class drifts from its protocol."""
        return kb, nic, b
