"""The backend boundary: the netlink requests and the four socket calls.

Everything above this line (Receiver, Sender, NicSetup, the CLI) is the same
code for the real kernel (:class:`~devmemtcp.backend.kernel.KernelBackend`) and
the software NIC (:class:`~devmemtcp.backend.emulated.EmulatedBackend`). Both
speak kernel bytes: control buffers in the kernel's cmsg layout, errors as
``OSError`` with the kernel's errno, netlink failures as
:class:`~devmemtcp.errors.NetlinkError` carrying the kernel's extack text.

Both are checked against these protocols by mypy (``_conforms`` at the end of
kernel.py and emulated.py); :func:`devmemtcp.backend.open_backend` makes one.
Callers use only what is declared here, never probe with ``getattr``.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

from devmemtcp.types import Channels, NtupleRule, Rings

if TYPE_CHECKING:
    from devmemtcp.memory.base import DmaBuf


@runtime_checkable
class Binding(Protocol):
    """A dma-buf bound to a device (bind-rx or bind-tx).

    The binding lives as long as its owner (the netlink socket in the kernel):
    ``close()`` unbinds (idempotent). Usable as a context manager. The
    attributes are read-only for callers.
    """

    @property
    def id(self) -> int:
        """Binding (dmabuf) id, from 1; RX and TX share one id space."""
        ...

    @property
    def ifindex(self) -> int: ...

    @property
    def kind(self) -> Literal["rx", "tx"]: ...

    @property
    def queues(self) -> tuple[int, ...]:
        """RX queue ids, ascending (empty for TX)."""
        ...

    @property
    def dmabuf(self) -> DmaBuf | None:
        """The memory provider object; None for a binding made from a bare fd
        (:func:`devmemtcp.netlink.netdev.bind_rx` without ``dmabuf=``)."""
        ...

    def close(self) -> None: ...
    def __enter__(self) -> Binding: ...
    def __exit__(self, *exc: object) -> None: ...


class NicControl(Protocol):
    """ethtool side of one interface: what devmem setup reads and changes.

    Every refused change raises :class:`~devmemtcp.errors.NetlinkError` (or
    ``OSError`` for ioctls) with the kernel's errno and message.
    """

    ifname: str
    ifindex: int

    def driver(self) -> str: ...
    def rx_queue_count(self) -> int: ...
    def get_rings(self) -> Rings: ...
    def set_rings(self, *, tcp_data_split: str | None = None, hds_thresh: int | None = None) -> None: ...
    def get_channels(self) -> Channels: ...
    def set_channels(
        self, *, rx: int | None = None, tx: int | None = None, combined: int | None = None
    ) -> None: ...
    def get_rss_indir(self) -> list[int]: ...
    def set_rss_indir(self, table: list[int]) -> None: ...
    def list_rules(self) -> list[NtupleRule]: ...
    def add_rule(self, rule: NtupleRule) -> NtupleRule: ...
    def delete_rule(self, location: int) -> None: ...


class Backend(Protocol):
    """The devmem boundary. ``name`` is ``"kernel"`` or ``"emulated"``.

    Use as a context manager, or call :meth:`close`, when done with it.
    """

    @property
    def name(self) -> str: ...

    # -- lifetime ------------------------------------------------------------
    def close(self) -> None:
        """Give back what this backend holds on behalf of its caller
        (idempotent). The emulated NIC unbinds its bindings and returns every
        socket's tokens; the kernel backend holds nothing (a kernel binding is
        owned by its netlink socket, tokens by their TCP socket)."""
        ...

    def __enter__(self) -> Backend: ...
    def __exit__(self, *exc: object) -> None: ...

    # -- netlink -----------------------------------------------------------
    def bind_rx(self, ifindex: int, dmabuf: DmaBuf, queues: list[int]) -> Binding:
        """bind-rx: raises NetlinkError with the kernel's errno and extack."""
        ...

    def bind_tx(self, ifindex: int, dmabuf: DmaBuf) -> Binding:
        """bind-tx: raises NetlinkError with the kernel's errno and extack."""
        ...

    def nic(self, ifname: str) -> NicControl:
        """ethtool control of ``ifname`` (raises DevmemError if unknown)."""
        ...

    # -- the four socket calls ---------------------------------------------
    def recvmsg(self, sock: socket.socket, buf: memoryview, control: memoryview,
                flags: int) -> tuple[int, int, int]:
        """recvmsg(2) into ``buf`` with cmsgs written into ``control``.

        Returns ``(nbytes, controllen, msg_flags)``; raises OSError with the
        kernel's errno (EFAULT for unreadable data without MSG_SOCK_DEVMEM or
        a too-small control buffer, EAGAIN on timeout)."""
        ...

    def dontneed(self, sock: socket.socket, tokens: np.ndarray) -> int:
        """setsockopt(SO_DEVMEM_DONTNEED) with a ``DMABUF_TOKEN_DTYPE`` array.

        Returns the number of frags freed (the kernel's return value)."""
        ...

    def sendmsg(self, sock: socket.socket, iov: np.ndarray, control: bytes, flags: int) -> int:
        """sendmsg(2) with ``iov`` an ``(n, 2)`` uint64 array of (dmabuf offset,
        length) and ``control`` the SCM_DEVMEM_DMABUF cmsg bytes. Returns bytes
        sent; raises OSError with the kernel's errno."""
        ...

    def recv_errqueue(self, sock: socket.socket, control: memoryview) -> tuple[int, int]:
        """recvmsg(MSG_ERRQUEUE | MSG_DONTWAIT) into ``control``.

        Returns ``(controllen, msg_flags)``; raises BlockingIOError when the
        error queue is empty."""
        ...

    def wait_errqueue(self, sock: socket.socket, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds (>= 0) until :meth:`recv_errqueue`
        has a zerocopy completion to read; True if it may have one, False on
        timeout. (The kernel reports a queued completion as POLLERR,
        net/core/sock.c ``sock_queue_err_skb``.)"""
        ...
