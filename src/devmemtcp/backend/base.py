"""The backend boundary: the netlink requests and the four socket calls.

Everything above this line (Receiver, Sender, NicSetup, the CLI) is the same
code for the real kernel (:class:`~devmemtcp.backend.kernel.KernelBackend`) and
the software NIC (:class:`~devmemtcp.backend.emulated.EmulatedBackend`). Both
speak kernel bytes: control buffers in the kernel's cmsg layout, errors as
``OSError`` with the kernel's errno, netlink failures as
:class:`~devmemtcp.errors.NetlinkError` carrying the kernel's extack text.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from devmemtcp.memory.base import DmaBuf


@runtime_checkable
class Binding(Protocol):
    """A dma-buf bound to a device (bind-rx or bind-tx).

    The binding lives as long as its owner (the netlink socket in the kernel):
    ``close()`` unbinds. Usable as a context manager.
    """

    id: int  # binding (dmabuf) id, shared RX/TX id space, from 1
    ifindex: int
    kind: Literal["rx", "tx"]
    queues: tuple[int, ...]  # RX queue ids (empty for TX)
    dmabuf: DmaBuf

    def close(self) -> None: ...
    def __enter__(self) -> Binding: ...
    def __exit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class Rings:
    """ethtool rings state that devmem RX depends on (ETHTOOL_MSG_RINGS_GET).

    ``tcp_data_split``: "unknown" | "disabled" | "enabled";
    ``hds_thresh`` / ``hds_thresh_max`` in bytes, ``None`` when not reported.
    """

    rx: int | None = None
    rx_max: int | None = None
    tx: int | None = None
    tcp_data_split: str = "unknown"
    hds_thresh: int | None = None
    hds_thresh_max: int | None = None


@dataclass(frozen=True)
class Channels:
    """ethtool channel counts (ETHTOOL_MSG_CHANNELS_GET); ``None`` = not reported."""

    rx: int | None = None
    tx: int | None = None
    combined: int | None = None
    rx_max: int | None = None
    tx_max: int | None = None
    combined_max: int | None = None


@dataclass(frozen=True)
class NtupleRule:
    """A flow-steering rule: TCP to ``dst_ip:dst_port`` (optionally from
    ``src_ip:src_port``) lands on RX queue ``queue``. ``location`` is the
    rule slot the driver reports (assigned on insert)."""

    dst_ip: str
    dst_port: int
    queue: int
    src_ip: str | None = None
    src_port: int | None = None
    location: int | None = None
    family: int = socket.AF_INET


@dataclass
class NicState:
    """A snapshot of what NicSetup changes and must restore."""

    rings: Rings = field(default_factory=Rings)
    channels: Channels = field(default_factory=Channels)
    rss_indir: list[int] = field(default_factory=list)
    rules: list[NtupleRule] = field(default_factory=list)


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
    """The devmem boundary. ``name`` is ``"kernel"`` or ``"emulated"``."""

    name: str

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
