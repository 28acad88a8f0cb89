"""EmulatedBackend: the Backend protocol over the emulated devmem NIC.

The emulated NIC sits under the receiver: sockets are ordinary kernel TCP
sockets (on ``lo``, or a veth inside a namespace) and any plain TCP peer
talks to them. What the kernel does for a devmem NIC is reproduced on top,
with the kernel's bytes, errno values, extack texts and limits, by
:mod:`devmemtcp.emulation`:

* bind-rx / bind-tx and the binding registry: :mod:`devmemtcp.emulation.netdev`;
* steering, RX fill, cmsgs and SO_DEVMEM_DONTNEED: :mod:`devmemtcp.emulation.rx`;
* TX validation and MSG_ZEROCOPY completions: :mod:`devmemtcp.emulation.tx`;
* ethtool (rings, channels, RSS, ntuple rules): :mod:`devmemtcp.emulation.nic`;
* netkit devices and queue leasing (queue-create): :mod:`devmemtcp.emulation.netkit`.

This module only joins them under the :class:`~devmemtcp.backend.base.Backend`
protocol; each call goes straight to the one module that handles it.

Limits of the emulation, each reported with a clear error: a flow steered to
a queue bound by *another* process cannot be received here (the dma-buf
memory lives in that process) and a TX binding is usable only by the process
that created it.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import numpy as np

from devmemtcp.emulation import netkit
from devmemtcp.emulation.netdev import EmulatedBinding, Netdev, require_net_admin
from devmemtcp.emulation.nic import EmulatedNicControl
from devmemtcp.emulation.rx import EmulatedRx, encode_frags
from devmemtcp.emulation.tx import EmulatedTx

if TYPE_CHECKING:
    from devmemtcp.memory.base import DmaBuf

__all__ = ["EmulatedBackend", "EmulatedBinding", "encode_frags"]


class EmulatedBackend:
    """The devmem boundary over the emulated NIC (see the module docstring).

    ``directory``: state directory (default :func:`devmemtcp.emulation.state.state_dir`);
    ``queues``: RX queue count of NICs that have no state yet (default 4);
    ``recheck_s``: how often a socket's steering is re-read from the NIC state;
    ``stats_interval_s``: how often receiving writes the per-queue counters to
    the NIC state file (None: only when a binding closes); ``frags``: RX
    buffer placement for every NIC of this backend ("driver": a real NIC's,
    "page": whole pages; None: each NIC's own setting, see
    :func:`devmemtcp.emulation.rx.frag_mode`). Thread-safe. Use as
    a context manager (or call :meth:`close`) to unbind this backend's bindings
    and return every socket's tokens.

    ``netdev``, ``rx`` and ``tx`` are the emulation's parts (bindings, RX
    path, TX path), for inspection."""

    name: str = "emulated"

    def __init__(self, directory: str | None = None, queues: int | None = None,
                 recheck_s: float = 0.1, stats_interval_s: float | None = 1.0,
                 frags: str | None = None) -> None:
        self.netdev = Netdev(directory, queues)
        self.rx = EmulatedRx(self.netdev, recheck_s, stats_interval_s, frags)
        self.tx = EmulatedTx(self.netdev)

    # -- lifetime ------------------------------------------------------------
    def close(self) -> None:
        """Return every tracked socket's tokens and close this backend's bindings."""
        self.rx.close()
        self.netdev.close()

    def __enter__(self) -> EmulatedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- netlink ---------------------------------------------------------------
    def nic(self, ifname: str) -> EmulatedNicControl:
        """ethtool control of the emulated NIC on ``ifname`` (DevmemError if no such interface)."""
        return self.netdev.nic(ifname)

    def bind_rx(self, ifindex: int, dmabuf: DmaBuf, queues: list[Any]) -> EmulatedBinding:
        """bind-rx; see :meth:`devmemtcp.emulation.netdev.Netdev.bind_rx`."""
        return self.netdev.bind_rx(ifindex, dmabuf, queues)

    def bind_tx(self, ifindex: int, dmabuf: DmaBuf) -> EmulatedBinding:
        """bind-tx; see :meth:`devmemtcp.emulation.netdev.Netdev.bind_tx`."""
        return self.netdev.bind_tx(ifindex, dmabuf)

    def queue_create(self, guest_ifindex: int, phys_ifindex: int, phys_queue: int,
                     guest_netns: str | None = None) -> int:
        """queue-create (lease a physical RX queue to a netkit guest); see
        :func:`devmemtcp.emulation.netkit.queue_create`. Needs CAP_NET_ADMIN (EPERM)."""
        require_net_admin("queue-create")
        return netkit.queue_create(guest_ifindex, phys_ifindex, phys_queue, guest_netns=guest_netns,
                                   directory=self.netdev.directory)

    # -- RX --------------------------------------------------------------------
    def recvmsg(self, sock: socket.socket, buf: memoryview, control: memoryview,
                flags: int) -> tuple[int, int, int]:
        """recvmsg(2) through the emulated NIC; see
        :meth:`devmemtcp.emulation.rx.EmulatedRx.recvmsg`."""
        return self.rx.recvmsg(sock, buf, control, flags)

    def dontneed(self, sock: socket.socket, tokens: np.ndarray | bytes | bytearray | memoryview) -> int:
        """SO_DEVMEM_DONTNEED; see :meth:`devmemtcp.emulation.rx.EmulatedRx.dontneed`."""
        return self.rx.dontneed(sock, tokens)

    def flow_info(self, sock: socket.socket) -> dict[str, Any]:
        """How the emulated NIC steers ``sock``'s flow; see
        :meth:`devmemtcp.emulation.rx.EmulatedRx.flow_info`."""
        return self.rx.flow_info(sock)

    def release_socket(self, sock: socket.socket) -> int:
        """Give back every frag ``sock`` holds and forget it; returns frags freed."""
        return self.rx.release_socket(sock)

    def outstanding(self, sock: socket.socket) -> int:
        """Frags ``sock`` holds (tokens not given back)."""
        return self.rx.outstanding(sock)

    # -- TX --------------------------------------------------------------------
    def sendmsg(self, sock: socket.socket, iov: np.ndarray, control: bytes, flags: int) -> int:
        """Devmem sendmsg; see :meth:`devmemtcp.emulation.tx.EmulatedTx.sendmsg`."""
        return self.tx.sendmsg(sock, iov, control, flags)

    def recv_errqueue(self, sock: socket.socket, control: memoryview) -> tuple[int, int]:
        """recvmsg(MSG_ERRQUEUE); see :meth:`devmemtcp.emulation.tx.EmulatedTx.recv_errqueue`."""
        return self.tx.recv_errqueue(sock, control)

    def wait_errqueue(self, sock: socket.socket, timeout: float) -> bool:
        """Wait for a zerocopy completion; see
        :meth:`devmemtcp.emulation.tx.EmulatedTx.wait_errqueue`."""
        return self.tx.wait_errqueue(sock, timeout)

    def pending_completions(self, sock: socket.socket) -> int:
        """sendmsg calls on ``sock`` not yet reported as completed."""
        return self.tx.pending_completions(sock)

    # -- stats -----------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters of this process's bindings; see
        :meth:`devmemtcp.emulation.netdev.Netdev.stats`."""
        return self.netdev.stats()

    def flush_stats(self) -> None:
        """Write this process's per-queue counters to the NIC state files."""
        self.netdev.flush_stats()


if TYPE_CHECKING:
    from devmemtcp.backend.base import Backend, Binding, NicControl

    def _conforms(be: EmulatedBackend, nic: EmulatedNicControl,
                  b: EmulatedBinding) -> tuple[Backend, NicControl, Binding]:
        """Never called: mypy fails here when a class drifts from its protocol."""
        return be, nic, b
