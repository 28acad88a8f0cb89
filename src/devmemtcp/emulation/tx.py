"""The TX path of the emulated NIC: sendmsg validation and zerocopy completions.

Follows net/ipv4/tcp.c ``tcp_sendmsg_locked``, net/core/devmem.c
``net_devmem_get_binding`` and net/core/datagram.c
``zerocopy_fill_skb_from_devmem``: the SCM_DEVMEM_DMABUF cmsg names a TX
binding of :class:`~devmemtcp.emulation.netdev.Netdev`; the iovecs' bases are
offsets into its dma-buf, whose bytes are sent on the real TCP socket (the
copy stands in for the NIC's DMA). MSG_ZEROCOPY completions
(net/core/skbuff.c ``__msg_zerocopy_callback``): a sendmsg's sequence number
completes once TCP has acknowledged all of its bytes (SIOCOUTQ), and
consecutive completions are merged into one ``[lo, hi]`` notification as the
kernel merges them.

A TX binding is usable only by the process that created it (its dma-buf
lives there): another process's binding id is a clear DevmemError.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
import termios
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from devmemtcp import abi, codec
from devmemtcp.emulation import netkit as nk
from devmemtcp.emulation import state as st
from devmemtcp.emulation.netdev import EmulatedBinding, Netdev, oserror
from devmemtcp.emulation.steering import ingress_ifindex
from devmemtcp.errors import DevmemError
from devmemtcp.host import netns

U32_MAX = 0xFFFFFFFF
_SEND_PASS_FLAGS = abi.MSG_DONTWAIT | abi.MSG_NOSIGNAL | abi.MSG_MORE
_GSO_MAX = 65536  # one TSO/GSO skb carries at most 64 KiB: drops are counted per skb of that size


@dataclass
class TxSocket:
    """What the emulated NIC keeps for one sending socket."""

    family: int = socket.AF_INET
    zckey: int = 0  # next sendmsg sequence number (sk->sk_zckey)
    sent: int = 0  # payload bytes sent through the emulated devmem path
    pending: deque[tuple[int, int]] = field(default_factory=deque)  # (seq, cumulative end byte)
    done_lo: int | None = None  # completed, not yet reported range
    done_hi: int = 0
    routes: dict[int, tuple[int, int]] = field(default_factory=dict)  # binding id -> (ifindex, netns)
    ctl: bytes = b""  # last control buffer parsed, and its binding id
    ctl_id: int = 0
    blackhole: tuple[int, str] | None = None  # (netns, ifname) dropping this socket's devmem skbs
    verdicts: dict[int, tuple[int, str] | None] = field(default_factory=dict)  # binding id -> drop device


class EmulatedTx:
    """sendmsg, the error queue and its wait over ``netdev``'s TX bindings
    (see the module docstring). Distinct sockets may send from distinct
    threads; one socket has one sender at a time."""

    def __init__(self, netdev: Netdev) -> None:
        self.netdev = netdev
        self.sockets: weakref.WeakKeyDictionary[socket.socket, TxSocket] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def state(self, sock: socket.socket) -> TxSocket:
        """``sock``'s state, created on first use."""
        s = self.sockets.get(sock)
        if s is None:
            s = TxSocket(family=sock.family)
            with self._lock:
                self.sockets[sock] = s
        return s

    def binding(self, sock: socket.socket, s: TxSocket, bid: int) -> EmulatedBinding:
        """net_devmem_get_binding: EINVAL unless ``bid`` is a live TX binding,
        EHOSTUNREACH without a route, ENODEV when the route's device is
        neither the binding's device nor its virtual device (``binding->vdev``,
        a netkit guest; netkit TX series)."""
        b = self.netdev.tx_binding(bid)
        route = s.routes.get(bid)
        if route is None:
            route = s.routes[bid] = (ingress_ifindex(sock), netns.cookie())
        vdev = (b.vdev[1], b.vdev[0]) if b.vdev is not None else None
        if route != (b.ifindex, b.netns) and route != vdev:
            raise oserror(errno.ENODEV, f"route to the peer leaves through ifindex {route[0]}, "
                                        f"binding {bid} is on {b.ifname} (ifindex {b.ifindex})")
        return b

    def xmit_verdict(self, sock: socket.socket, s: TxSocket, b: EmulatedBinding) -> tuple[int, str] | None:
        """validate_xmit_unreadable_skb (net/core/dev.c, netkit TX series) on
        each device the socket's unreadable skbs pass: None when they get
        through, else ``(netns inode, ifname)`` of the device that drops them.

        NETMEM_TX_NO_DMA passes them (a netkit guest: its packets are then
        forwarded in the physical device's namespace, along the route to the
        peer there); NONE drops them; DMA drops them unless it is the
        binding's device (``binding->dev``). Decided once per socket and
        binding (a new socket reads the routes again)."""
        if b.id in s.verdicts:
            return s.verdicts[b.id]
        ns, ifindex = netns.cookie(), s.routes[b.id][0]
        nic = self.netdev_nic(ns, ifindex)
        for _hop in range(4):
            if nic is None or nk.netmem_tx(nic) != "no_dma":
                break
            nxt = _route_in(b.netns, _norm_peer(sock))
            if nxt is None:
                nic = None
                break
            ns, ifindex = b.netns, nxt
            nic = self.netdev_nic(ns, ifindex)
        verdict: tuple[int, str] | None = None
        if nic is not None:
            mode = nk.netmem_tx(nic)
            if mode == "none" or (mode == "dma" and (ns, str(nic["ifname"])) != (b.netns, b.ifname)):
                verdict = (ns, str(nic["ifname"]))
        s.verdicts[b.id] = verdict
        return verdict

    def netdev_nic(self, ns: int, ifindex: int) -> dict[str, Any] | None:
        """The state of the emulated NIC with ``ifindex`` in namespace ``ns``
        (a fresh default for an interface of this namespace without state)."""
        if ns == netns.cookie():
            try:
                return st.load_nic(socket.if_indextoname(ifindex), directory=self.netdev.directory, ns=ns)
            except (OSError, DevmemError):
                return None
        return _nic_by_index(self.netdev.directory, ns, ifindex)

    def sendmsg(self, sock: socket.socket, iov: np.ndarray, control: bytes, flags: int) -> int:
        """Devmem sendmsg: ``iov`` an ``(n, 2)`` uint64 array of (dma-buf offset,
        length), ``control`` the SCM_DEVMEM_DMABUF cmsg. Returns bytes sent.

        Order of checks (tcp_sendmsg_locked): the cmsg is parsed
        (``codec.parse_tx_cmsg``; its EINVAL is reported last); with
        MSG_ZEROCOPY, SO_ZEROCOPY and a non-empty iov the binding is looked up
        (EINVAL unknown/RX id, EHOSTUNREACH, ENODEV wrong device); a binding
        id without MSG_ZEROCOPY or SO_ZEROCOPY is EINVAL. Without a binding
        the offsets would be user pointers: EFAULT. An offset at or past the
        dma-buf's end is EFAULT (or a short count once bytes went out);
        bytes past the end of the dma-buf are not sent. Each successful call
        takes the next zerocopy sequence number."""
        if sock.fileno() < 0:
            raise oserror(errno.EBADF)
        arr = np.ascontiguousarray(iov, dtype=np.uint64).reshape(-1, 2)
        if arr.shape[0] > abi.UIO_MAXIOV:
            raise oserror(errno.EMSGSIZE, f"{arr.shape[0]} iovecs (at most {abi.UIO_MAXIOV})")
        k = arr.shape[0]
        size = int(arr[0, 1]) if k == 1 else int(np.add.reduce(arr[:, 1])) if k else 0
        tx = self.state(sock)
        sockc_err: OSError | None = None
        bid = 0
        if control and control == tx.ctl:
            bid = tx.ctl_id
        else:
            try:
                bid = codec.parse_tx_cmsg(control) if control else 0
                tx.ctl, tx.ctl_id = bytes(control), bid
            except OSError as exc:
                sockc_err = exc
        zc = bool(flags & abi.MSG_ZEROCOPY) and bool(
            sock.getsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY))
        binding: EmulatedBinding | None = None
        if zc and size and sockc_err is None and bid:
            binding = self.binding(sock, tx, bid)
        if sockc_err is None and bid and not zc:
            raise oserror(errno.EINVAL, "a devmem sendmsg needs SO_ZEROCOPY on the socket and MSG_ZEROCOPY")
        if sockc_err is not None:
            raise sockc_err
        if size == 0:
            return 0
        if binding is None:
            raise oserror(errno.EFAULT, "iov_base values are dma-buf offsets only with SCM_DEVMEM_DMABUF")
        view = binding.view
        bsize = binding.size
        # the byte ranges to send, adjacent iovecs merged: the copy is the emulated
        # NIC's DMA, and one long iovec is copied faster than many short ones
        spans: list[list[int]] = []
        offs, lens = arr[:, 0], arr[:, 1]
        first, end = int(offs[0]), int(offs[-1]) + int(lens[-1])
        # (lengths within the dma-buf, at most UIO_MAXIOV of them: the sums cannot wrap)
        if k == 1:
            if first < end <= bsize:
                spans.append([first, end])  # one iovec inside the dma-buf (the usual case)
        elif (first < end <= bsize and int(np.maximum.reduce(lens)) <= bsize
              and not np.count_nonzero(lens == 0)
              and np.count_nonzero(offs[1:] == offs[:-1] + lens[:-1]) == k - 1):
            spans.append([first, end])  # one contiguous run inside the dma-buf (the usual case)
        for off, ln in ([] if spans else arr.tolist()):
            if ln == 0:
                continue
            if off >= bsize:
                break
            end = min(off + ln, bsize)
            if spans and spans[-1][1] == off:
                spans[-1][1] = end
            else:
                spans.append([off, end])
            if end < off + ln:
                break
        if not spans:
            raise oserror(errno.EFAULT, f"dma-buf offset past the end of binding {bid} ({bsize} bytes)")
        drop = self.xmit_verdict(sock, tx, binding) if tx.blackhole is None else tx.blackhole
        if drop is not None:
            # the skbs are accepted and then freed before the driver (validate_xmit_skb
            # -> dev_core_stats_tx_dropped_inc): nothing reaches the wire, no completion
            n = sum(b_ - a for a, b_ in spans)
            if n:
                count_tx_drop(self.netdev.directory, drop[0], drop[1], -(-n // _GSO_MAX))
            tx.blackhole = drop
            tx.zckey = (tx.zckey + 1) & U32_MAX
            return n
        if view is not None:
            n = sock.sendmsg([view[a:b] for a, b in spans], [], flags & _SEND_PASS_FLAGS)
        else:
            # no host view (device memory): the DMA engine's read is one read_at into staging
            span_at = np.array([a for a, _ in spans], np.int64)
            span_len = np.array([b for _, b in spans], np.int64) - span_at
            tot = int(span_len.sum())
            stage = binding.stage(tot)
            binding.dmabuf.read_at(span_at, span_len, stage)
            n = sock.sendmsg([memoryview(stage.data)[:tot]], [], flags & _SEND_PASS_FLAGS)
        seq = tx.zckey
        tx.zckey = (seq + 1) & U32_MAX
        tx.sent += n
        tx.pending.append((seq, tx.sent))
        return n

    def complete(self, sock: socket.socket, tx: TxSocket) -> None:
        """Move the sendmsg calls whose bytes TCP has all acknowledged (SIOCOUTQ)
        to the completed range."""
        if not tx.pending:
            return
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # == SIOCOUTQ
        outq = struct.unpack("i", raw)[0]
        if outq > tx.sent - tx.pending[0][1] and \
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == abi.TCP_STATE_CLOSE:
            # reset by the peer: tcp_reset -> tcp_write_queue_purge frees every skb, and
            # freeing a zerocopy skb delivers its completion (msg_zerocopy_callback)
            outq = 0
        while tx.pending:
            seq, end = tx.pending[0]
            # every byte of this sendmsg is acked once the unacked tail fits after it
            if outq > tx.sent - end:
                break
            tx.pending.popleft()
            if tx.done_lo is None:
                tx.done_lo = seq
            tx.done_hi = seq

    def recv_errqueue(self, sock: socket.socket, control: memoryview) -> tuple[int, int]:
        """recvmsg(MSG_ERRQUEUE): one MSG_ZEROCOPY completion covering every
        sendmsg completed since the last read (ee_info = first, ee_data = last
        sequence number, ee_code 0: devmem is never copied). Returns
        ``(controllen, msg_flags)`` with MSG_ERRQUEUE set (MSG_CTRUNC if
        ``control`` is too small: the notification is consumed anyway, like
        put_cmsg); BlockingIOError when nothing completed."""
        if sock.fileno() < 0:
            raise oserror(errno.EBADF)
        tx = self.sockets.get(sock)
        if tx is None:
            raise oserror(errno.EAGAIN)
        self.complete(sock, tx)
        if tx.done_lo is None:
            raise oserror(errno.EAGAIN)
        data = codec.encode_zerocopy_completion(tx.done_lo, tx.done_hi, copied=False, family=tx.family)
        tx.done_lo = None
        mflags = abi.MSG_ERRQUEUE
        cap = len(control)
        hdr = abi.CMSGHDR_DTYPE.itemsize
        if cap < hdr:
            return 0, mflags | abi.MSG_CTRUNC
        clen = struct.unpack_from("<Q", data)[0]
        if cap < clen:
            mflags |= abi.MSG_CTRUNC
            out = bytearray(data[:cap])
            struct.pack_into("<Q", out, 0, cap)
            control[:cap] = out
            return cap, mflags
        n = min(len(data), cap)
        control[:n] = data[:n]
        return n, mflags

    def wait_errqueue(self, sock: socket.socket, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until a zerocopy completion of ``sock``
        can be read with :meth:`recv_errqueue`; True if one can. (The real
        socket's error queue stays empty, so poll(2) cannot tell: the
        acknowledged byte count is re-read with backoff from 20 us to 1 ms.)"""
        tx = self.sockets.get(sock)
        if tx is None:
            return False
        deadline = time.monotonic() + max(0.0, timeout)
        delay = 20e-6
        while True:
            if sock.fileno() < 0:
                return False
            self.complete(sock, tx)
            if tx.done_lo is not None:
                return True
            left = deadline - time.monotonic()
            if left <= 0 or not tx.pending:
                return False
            time.sleep(min(delay, left))
            delay = min(delay * 2, 1e-3)

    def pending_completions(self, sock: socket.socket) -> int:
        """sendmsg calls on ``sock`` not yet reported as completed."""
        tx = self.sockets.get(sock)
        if tx is None:
            return 0
        extra = 0 if tx.done_lo is None else (tx.done_hi - tx.done_lo) % (U32_MAX + 1) + 1
        return len(tx.pending) + extra


# ---------------------------------------------------------------------------
# devices of other namespaces (a netkit guest's packets leave the host namespace)
# ---------------------------------------------------------------------------
def _norm_peer(sock: socket.socket) -> str:
    peer = str(sock.getpeername()[0])
    return peer[7:] if peer.startswith("::ffff:") else peer


def _route_in(ns: int, peer: str) -> int | None:
    """ifindex of the route to ``peer`` in namespace ``ns`` (entered for the
    lookup by a short-lived thread), None without a route or a way in (the
    namespace has no /run/netns name, or the caller may not setns: then the
    forwarded skbs are not checked past the netkit device)."""
    import threading as _th

    path = nk._ns_path(ns)
    if path is None:
        return None
    box: list[int | None] = [None]

    def go() -> None:
        from devmemtcp.host import netns as nsmod

        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            nsmod._setns(fd, abi.CLONE_NEWNET)
        finally:
            os.close(fd)
        from devmemtcp.emulation.steering import _route_dev

        try:
            box[0] = _route_dev(peer)
        except OSError:
            box[0] = None

    t = _th.Thread(target=go, daemon=True)
    t.start()
    t.join(10)
    return box[0]


def _nic_by_index(directory: str | None, ns: int, ifindex: int) -> dict[str, Any] | None:
    """The saved state of the emulated NIC with ``ifindex`` in namespace ``ns``;
    a physical default when that namespace's interface has none saved."""
    d = directory or st.state_dir()
    prefix = f"{ns}-"
    with contextlib.suppress(OSError):
        for name in os.listdir(d):
            if name.startswith(prefix) and name.endswith(".json"):
                data = st.read_nic(name[len(prefix):-5], ns, d)
                if data is not None and int(data.get("ifindex", -1)) == int(ifindex):
                    return data
    return {"ifname": f"ifindex{ifindex}", "ifindex": ifindex, "netns": ns, "kind": "physical", "caps": {}}


def count_tx_drop(directory: str | None, ns: int, ifname: str, skbs: int) -> None:
    """Add ``skbs`` to the ``tx_dropped`` counter of the emulated NIC ``ifname``
    of namespace ``ns`` (the kernel's per-device tx_dropped, ``ip -s link``)."""
    with contextlib.suppress(OSError, DevmemError), st.locked(directory) as d:
        nic = st.read_nic(ifname, ns, d)
        if nic is None and ns == netns.cookie():
            nic = st.load_nic(ifname, directory=d, ns=ns)
        if nic is not None:
            nic["tx_dropped"] = int(nic.get("tx_dropped", 0)) + skbs
            st.save_nic(nic, d)
