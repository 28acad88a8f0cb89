"""The RX path of the emulated NIC: steering decision, buffer fill, cmsgs, DONTNEED.

Follows net/ipv4/tcp.c ``tcp_recvmsg_dmabuf`` for one connected TCP socket:

* **Steering** (:mod:`devmemtcp.emulation.steering`): the flow lands on the
  queue an ntuple rule names, else on the RSS indirection table entry of its
  Toeplitz hash. A flow on a queue bound by this process is *devmem*; any
  other flow is *readable*. The decision is re-read from the NIC state at
  most every ``recheck_s`` seconds, so rules and bindings made by another
  process take effect like they would on a NIC.
* **Fill**: a devmem flow's payload is received straight into the dma-buf's
  memory at the offsets of free net_iovs (one ``recv_into`` per contiguous
  run, no extra copy), cut into frags of at most PAGE_SIZE, each given a
  token from the socket's table (from 1, lowest free first). A dma-buf
  without a host view (CUDA memory) is filled as a NIC's DMA engine would:
  the payload is received into a host staging buffer (the dma-buf's pinned
  one) and placed at the net_iov offsets with one ``write_at`` per receive.
* **cmsgs**: one SCM_DEVMEM_DMABUF cmsg per frag in the control buffer
  (:func:`encode_frags`, the bytes of ``devmemtcp.codec.encode_rx_control``).
  Header split is always on with hds-thresh 0 for a bound queue (bind-rx
  requires it, and ethtool refuses to change it while bound), so all payload
  goes to frags: the emulated NIC never produces SCM_DEVMEM_LINEAR.
* **SO_DEVMEM_DONTNEED** (net/core/sock.c ``sock_devmem_dontneed``): tokens
  go back, their net_iovs to the binding's page pool.

Timeouts follow CPython's socket timeout (``TimeoutError`` carrying EAGAIN,
like the kernel backend); on a blocking socket with SO_RCVTIMEO a stalled
flow gives BlockingIOError(EAGAIN) after that time; a non-blocking call
(timeout 0 or MSG_DONTWAIT) gives BlockingIOError. SO_RCVLOWAT: on a
blocking socket the real socket's own recv does the waiting
(tcp_recvmsg_locked and tcp_data_ready, the devmem path's code); with a
Python timeout, the wait is a poll (tcp_poll honours the low-water mark) and
the receive returns what is there when the timeout expires.

A flow steered to a queue bound by *another* process cannot be received
here (the dma-buf memory lives in that process): that is a clear
DevmemError.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import select
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
from devmemtcp.emulation.pool import PoolRegistry, RxPool
from devmemtcp.emulation.steering import flow_of, ifname_of, ingress_ifindex, steer
from devmemtcp.emulation.tokens import TokenTable, expand_runs
from devmemtcp.errors import DevmemError
from devmemtcp.host import netns

PAGE_SIZE = abi.PAGE_SIZE
_REC = abi.DMABUF_CMSG_SPACE  # 40 control bytes per frag
_SO_PROTOCOL = socket.SO_PROTOCOL
_SO_RCVTIMEO = socket.SO_RCVTIMEO
_RECV_PASS_FLAGS = abi.MSG_DONTWAIT | abi.MSG_WAITALL
_KEY_DMABUF = np.uint64(abi.SOL_SOCKET | (abi.SCM_DEVMEM_DMABUF << 32))
_REC_WORDS = _REC // 8
_PAGE_SHIFT = abi.PAGE_SIZE.bit_length() - 1


#: records of frags 0, 1, 2, ... of a binding, by binding id: the fields that do
#: not change within it (cmsg_len, level, type, frag_size = PAGE_SIZE, dmabuf_id)
#: and, as ramps, frag_offset = i * PAGE_SIZE and frag_token = i. A run of k
#: frags from page p with tokens from t is then one add of the row
#: (0, 0, p * PAGE_SIZE, t << 32, 0) to the first k records (mod 2**64: the
#: token half wraps like the u32 it is, the frag_size half is untouched).
_templates: dict[int, np.ndarray] = {}


def _template(binding_id: int, n: int) -> np.ndarray:
    t = _templates.get(binding_id)
    if t is None or t.shape[0] < n:
        k = max(n, 2048)
        t = np.zeros((k, _REC_WORDS), dtype=np.uint64)
        ramp = np.arange(k, dtype=np.uint64)
        t[:, 0] = _REC
        t[:, 1] = _KEY_DMABUF
        t[:, 2] = ramp << _PAGE_SHIFT
        t[:, 3] = (ramp << 32) | PAGE_SIZE  # frag_size in the low half, the token in the high half
        t[:, 4] = binding_id
        if len(_templates) > 64:
            _templates.clear()
        _templates[binding_id] = t
    return t


#: k * PAGE_SIZE (u64) and k (u32) for k = 0, 1, 2, ...: a run of frag offsets or
#: tokens is one numpy add of its first value to a prefix of these
_offset_ramp = np.arange(4096, dtype=np.uint64) << _PAGE_SHIFT
_token_ramp = np.arange(4096, dtype=np.uint32)


def _ramps(n: int) -> tuple[np.ndarray, np.ndarray]:
    global _offset_ramp, _token_ramp
    if _token_ramp.shape[0] < n:
        _token_ramp = np.arange(max(n, 2 * _token_ramp.shape[0]), dtype=np.uint32)
        _offset_ramp = _token_ramp.astype(np.uint64) << _PAGE_SHIFT
    return _offset_ramp, _token_ramp


def encode_frags(control: memoryview, pages: list[tuple[int, int]], total: int,
                 tokens: list[tuple[int, int]], binding_id: int) -> int:
    """The SCM_DEVMEM_DMABUF cmsgs of ``total`` bytes received into the
    net_iovs of ``pages`` (runs ``[(first, count), ...]`` in frag order; whole
    PAGE_SIZE frags, the last one partial), tokens ``tokens`` (runs, in frag
    order); returns the control length. The same bytes as
    :func:`devmemtcp.codec.encode_rx_control` (which it falls back to for a
    misaligned buffer) with a few numpy calls per run: it runs once per
    recvmsg. A record is 5 little-endian u64 words: cmsg_len,
    level | type << 32, frag_offset, frag_size | frag_token << 32,
    dmabuf_id | flags << 32."""
    n = pages[0][1] if len(pages) == 1 else sum(c for _, c in pages)
    need = n * _REC
    if len(control) < need:
        raise oserror(errno.EFAULT, "control buffer too small")
    w = np.frombuffer(control, dtype=np.uint8, count=need).view(np.uint64)
    if not w.flags.aligned:  # (.ctypes.data costs more than the whole encode)
        sizes = np.full(n, PAGE_SIZE, dtype=np.uint32)
        sizes[-1] = total - (n - 1) * PAGE_SIZE
        return codec.encode_rx_control(control, expand_runs(pages, np.uint64) * PAGE_SIZE, sizes,
                                      expand_runs(tokens, np.uint32), binding_id)
    w = w.reshape(n, _REC_WORDS)
    if len(pages) == 1 and len(tokens) == 1:  # the usual case: one call writes every record
        delta = np.array((0, 0, pages[0][0] << _PAGE_SHIFT, tokens[0][0] << 32, 0), dtype=np.uint64)
        np.add(_template(binding_id, n)[:n], delta, out=w)
        w[-1, 3] = (tokens[0][0] + n - 1) << 32 | (total - (n - 1) * PAGE_SIZE)
        return need
    w[:] = _template(binding_id, n)[:n]
    offsets, ramp = _ramps(n)
    i = 0
    for first, c in pages:
        np.add(offsets[:c], first << _PAGE_SHIFT, out=w[i : i + c, 2])
        i += c
    tok_col = w.view(np.uint32)[:, 7]
    i = 0
    for first, c in tokens:
        np.add(ramp[:c], first, out=tok_col[i : i + c])
        i += c
    w[-1, 3] = (int(tok_col[-1]) << 32) | (total - (n - 1) * PAGE_SIZE)
    return need


def _split_runs(runs: list[tuple[int, int]], used: int, pool: RxPool, queue: int) -> list[tuple[int, int]]:
    """The first ``used`` net_iovs of ``runs``; the rest go back to ``pool``."""
    if len(runs) == 1:
        first, cnt = runs[0]
        if cnt > used:
            pool.give_back_runs([(first + used, cnt - used)], queue)
            return [(first, used)]
        return runs
    got: list[tuple[int, int]] = []
    rest: list[tuple[int, int]] = []
    left = used
    for first, cnt in runs:
        take = min(cnt, left)
        if take:
            got.append((first, take))
        if cnt > take:
            rest.append((first + take, cnt - take))
        left -= take
    if rest:
        pool.give_back_runs(rest, queue)
    return got


def _is_tcp(sock: socket.socket) -> bool:
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        return sock.getsockopt(socket.SOL_SOCKET, _SO_PROTOCOL) == socket.IPPROTO_TCP
    except OSError:
        return False

# ---------------------------------------------------------------------------
# per-socket state
# ---------------------------------------------------------------------------
@dataclass
class RxSocket:
    """What the emulated NIC keeps for one receiving socket: its token table
    (sk_user_frags) and its steering decision."""

    tokens: TokenTable = field(default_factory=TokenTable)
    ifindex: int | None = None
    mode: str = ""  # "devmem" | "readable" | "" (undecided)
    binding: EmulatedBinding | None = None
    queue: int = -1
    how: str = ""
    checked: float = -1e9
    tcp: bool = False
    fionread: array.array[int] = field(default_factory=lambda: array.array("i", [0]))
    frags: str = "page"  # buffer placement: "driver" (a real NIC's) or "page" (whole pages)
    kernel: tuple[int, int] = abi.ETOOSMALL_SINCE  # the kernel version the NIC presents
    tail_left: int = 0  # bytes the NIC received while the (now closed) binding was bound
    buf_len: int = PAGE_SIZE
    fill: ShapedFill | None = None


@dataclass
class ShapedFill:
    """A real NIC's buffer placement for one flow (``frags`` mode "driver").

    The driver posts page-pool buffers of ``buf_len`` bytes (rx-buf-len; a
    net_iov holds ``PAGE_SIZE // buf_len`` of them) and DMAs each TCP
    segment's payload (``mss`` bytes: TCP_MAXSEG of the connection, 1448 at
    MTU 1500 with timestamps) at the next free offset of the current buffer;
    a segment that does not fit the rest of the buffer goes to the next one
    (a segment longer than a buffer spans several, a frag in each). So frags
    are not page aligned and several share a net_iov, each frag holding a
    reference (the page pool's pp_ref_count), and the NIC holds the buffer
    it is filling. ``pending``: reserved pieces already placed but not yet
    handed to the application: the rest of a frag cut by the end of a
    recvmsg comes back in the next one with a new token for the same net_iov
    (tcp_recvmsg_dmabuf continues inside the frag).

    Limit: the emulated NIC sees the byte stream, not the sender's packets,
    so segments are MSS-sized cuts of what is queued: small writes that queue
    up together (TCP_NODELAY bursts) come out as full-MSS frags, where a real
    NIC gives one frag per packet."""

    mss: int
    buf_len: int
    cur: int = -1  # net_iov being filled (-1: none)
    slot: int = 0  # buffer of ``cur`` being filled
    used: int = 0  # bytes used in that buffer
    pending: deque[tuple[int, int, int]] = field(default_factory=deque)  # (net_iov, offset in it, length)
    held: set[int] = field(default_factory=set)  # net_iovs the NIC holds a reference on

    def settle(self, pool: RxPool, queue: int) -> None:
        """Drop the NIC's reference on buffers it no longer fills and holds no
        reservation in (after the frags handed out took theirs)."""
        need = {p[0] for p in self.pending}
        if self.cur >= 0:
            need.add(self.cur)
        for niov in sorted(self.held - need):
            self.held.discard(niov)
            pool.release_runs([(niov, 1, pool.binding_id, queue)])

    def drop_all(self, pool: RxPool, queue: int) -> None:
        """The flow is gone: the NIC's references go (its buffers and reservations)."""
        self.pending.clear()
        self.cur = -1
        self.settle(pool, queue)


def kernel_version(nic: dict[str, Any]) -> tuple[int, int]:
    """The kernel version the emulated NIC presents (``caps.kernel``, "6.18" by default)."""
    raw = str(nic.get("caps", {}).get("kernel", "6.18"))
    try:
        major, minor = (int(x) for x in raw.split(".")[:2])
    except ValueError:
        return abi.ETOOSMALL_SINCE
    return major, minor


def frag_mode(nic: dict[str, Any]) -> str:
    """The NIC's buffer placement: its "frags" capability, else "driver" (a
    real NIC's, :class:`ShapedFill`) for every interface but ``lo``, which
    has no NIC (MTU 65536: 64 KiB segments) and keeps whole-page frags."""
    mode = nic.get("caps", {}).get("frags")
    if mode in ("driver", "page"):
        return str(mode)
    return "page" if nic.get("ifname") == "lo" else "driver"


def _release_socket_tokens(tokens: TokenTable, pools: PoolRegistry) -> None:
    pools.return_pages(tokens.erase_all_runs())


# ---------------------------------------------------------------------------
# the RX path
# ---------------------------------------------------------------------------
class EmulatedRx:
    """recvmsg and SO_DEVMEM_DONTNEED of the emulated NIC over ``netdev``'s
    bindings (see the module docstring). ``recheck_s``: how often a socket's
    steering is re-read from the NIC state; ``stats_interval_s``: how often
    receiving writes the per-queue counters to the NIC state file (None:
    only when a binding closes). Thread-safe."""

    def __init__(self, netdev: Netdev, recheck_s: float = 0.1, stats_interval_s: float | None = 1.0,
                 frags: str | None = None) -> None:
        if frags not in (None, "driver", "page"):
            raise ValueError(f"frags must be 'driver' or 'page', not {frags!r}")
        self.frags = frags  # None: each NIC's own setting
        self.netdev = netdev
        self.recheck_s = recheck_s
        self.stats_interval_s = stats_interval_s
        self.sockets: weakref.WeakKeyDictionary[socket.socket, RxSocket] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._stats_flushed = time.monotonic()
        netdev.on_close.append(self.binding_closed)

    def close(self) -> None:
        """Give back every tracked socket's frags."""
        for sock in list(self.sockets.keys()):
            self.release_socket(sock)

    def state(self, sock: socket.socket) -> RxSocket:
        """``sock``'s state, created on first use."""
        s = self.sockets.get(sock)
        if s is None:
            s = RxSocket()
            with self._lock:
                self.sockets[sock] = s
                # the kernel releases a socket's frags when it is destroyed
                weakref.finalize(sock, _release_socket_tokens, s.tokens, self.netdev.pools)
        return s

    def decide(self, sock: socket.socket, s: RxSocket) -> None:
        """Steer ``sock``'s flow (at most every ``recheck_s`` seconds, and at
        once when its binding closed): devmem when it lands on a queue this
        process bound, readable on any other queue; DevmemError when another
        process's binding holds that queue."""
        now = time.monotonic()
        if s.mode and now - s.checked < self.recheck_s and (s.binding is None or not s.binding.closed):
            return
        if s.tail_left > 0 and s.binding is not None:
            return  # data the NIC placed before the binding closed stays devmem
        try:
            if s.ifindex is None:
                s.ifindex = ingress_ifindex(sock)
            flow = flow_of(sock)
        except OSError as exc:
            # ENOTCONN: the peer reset the connection (getpeername of a TCP_CLOSE
            # socket); a flow already steered stays where it was
            if exc.errno == errno.ENOTCONN and s.mode:
                s.checked = now
                return
            raise
        ns = netns.cookie()
        ifname = ifname_of(s.ifindex)
        nic = st.load_nic(ifname, directory=self.netdev.directory, ns=ns, queues=self.netdev.queues)
        if nk.is_virtual(nic):
            # a netkit guest: the packets came in on the physical NIC behind its
            # lease and were forwarded; that NIC's rules and RSS chose the queue
            ls = nk.any_phys(nic)
            phys = st.read_nic(ls["ifname"], int(ls["netns"]), self.netdev.directory) if ls else None
            if ls is None or phys is None:
                s.mode, s.binding, s.queue, s.how, s.checked = "readable", None, 0, "netkit", now
                return
            ns, ifname, nic = int(ls["netns"]), str(ls["ifname"]), phys
        q, how = steer(nic, flow)
        s.frags = self.frags or frag_mode(nic)
        s.kernel = kernel_version(nic)
        s.buf_len = int(nic["rings"].get("rx_buf_len", PAGE_SIZE))
        b = self.netdev.rx_binding(ns, ifname, q)
        if b is not None:
            s.mode, s.binding = "devmem", b
        else:
            other = self.netdev.foreign_rx_binding(ns, ifname, q)
            if other is not None:
                raise DevmemError(
                    f"the flow of this socket lands on {ifname} queue {q} ({how}), which binding {other} "
                    "of another process holds: the emulated NIC cannot place its data in that process's "
                    "dma-buf",
                    "receive in the process that bound the queue, or steer the flow to a queue this "
                    "process bound",
                )
            s.mode, s.binding = "readable", None
        s.queue, s.how, s.checked = q, how, now

    def _tail_used(self, s: RxSocket, n: int, flags: int) -> None:
        if s.tail_left and not flags & abi.MSG_PEEK:
            s.tail_left = max(0, s.tail_left - n)
            if s.tail_left == 0:
                s.checked = -1e9  # what comes next arrived after the unbind: steer again

    def binding_closed(self, b: EmulatedBinding) -> None:
        """``b`` was unbound: the bytes its sockets have queued were placed by
        the NIC while it was bound and stay devmem (unreadable skbs keep their
        net_iovs, and the binding, alive); bytes that arrive later land on the
        queue's ordinary page pool and are readable."""
        for sock, s in list(self.sockets.items()):
            if s.binding is b and sock.fileno() >= 0:
                with contextlib.suppress(OSError):
                    fcntl.ioctl(sock.fileno(), termios.FIONREAD, s.fionread, True)
                    s.tail_left = int(s.fionread[0])

    def flow_info(self, sock: socket.socket) -> dict[str, Any]:
        """How the emulated NIC steers ``sock``'s flow: ``{"mode": "devmem" |
        "readable", "queue": int, "how": "rule@LOC" | "rss", "binding": id | None,
        "ifname": str}`` (decided now)."""
        s = self.state(sock)
        s.checked = -1e9
        self.decide(sock, s)
        return {"mode": s.mode, "queue": s.queue, "how": s.how,
                "binding": s.binding.id if s.binding is not None else None,
                "ifname": ifname_of(s.ifindex) if s.ifindex is not None else None}

    # -- RX ------------------------------------------------------------------
    def _deadline(self, sock: socket.socket, s: RxSocket, flags: int) -> tuple[float | None, bool]:
        """(deadline for a stalled flow, whether expiry is a Python timeout)."""
        timeout = sock.gettimeout()
        if flags & abi.MSG_DONTWAIT or timeout == 0:
            return time.monotonic(), False
        if timeout is not None:
            return time.monotonic() + timeout, True
        # only a stalled flow gets here: read SO_RCVTIMEO now (struct timeval)
        sec, usec = struct.unpack("qq", sock.getsockopt(socket.SOL_SOCKET, _SO_RCVTIMEO, 16))
        rcvtimeo = sec + usec / 1e6
        return (time.monotonic() + rcvtimeo if rcvtimeo > 0 else None), False

    def _wait_lowat(self, sock: socket.socket, s: RxSocket, flags: int, target: int, avail: int) -> int:
        """Wait until ``target`` bytes are queued, EOF or the receive timeout
        (tcp_poll reports readable exactly then: ``tcp_stream_is_readable``
        with the socket's SO_RCVLOWAT); returns the bytes queued, at least
        ``avail``. Like tcp_recvmsg, a timeout returns what is there."""
        deadline, _ = self._deadline(sock, s, flags)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        while True:
            wait_ms = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            ready = poller.poll(wait_ms)
            fcntl.ioctl(sock.fileno(), termios.FIONREAD, s.fionread, True)
            avail = max(avail, s.fionread[0])
            if ready or avail >= target or wait_ms == 0:
                return avail

    def _wait_data(self, sock: socket.socket, flags: int) -> int:
        """Block like recvmsg until data or EOF is there; 0 at EOF, else 1."""
        return len(sock.recv(1, socket.MSG_PEEK | (flags & abi.MSG_DONTWAIT)))

    def recvmsg(self, sock: socket.socket, buf: memoryview, control: memoryview,
                flags: int) -> tuple[int, int, int]:
        """recvmsg(2) through the emulated NIC: ``(nbytes, controllen, msg_flags)``.

        Readable flow: bytes copied into ``buf``, no cmsg. Devmem flow with
        MSG_SOCK_DEVMEM: payload placed in the dma-buf, one 40-byte cmsg per
        frag in ``control``, ``nbytes <= len(buf)``. Errors: EFAULT for a
        devmem flow without MSG_SOCK_DEVMEM; a control buffer too small for
        one cmsg (once data is there; 0 at EOF): ETOOSMALL (525) on the 6.18
        the emulated NIC presents by default, EFAULT when it presents 6.17 or
        older (``caps.kernel``); EBUSY when the socket's tokens run out
        (xa_alloc, xa_limit_31b); EAGAIN / TimeoutError as described in the
        module docstring; ENOTCONN for a socket never connected. A socket
        the peer reset before its first recvmsg gives the kernel's
        ECONNRESET (the reset socket's own error), not getpeername's ENOTCONN.
        MSG_PEEK on a devmem flow hands out new tokens (references) for the
        same frags, which stay queued. Bytes queued when the binding closes
        stay devmem (:meth:`binding_closed`)."""
        if sock.fileno() < 0:
            raise oserror(errno.EBADF)
        s = self.state(sock)
        try:
            self.decide(sock, s)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise
            # reset before the flow was ever steered: nothing tells the queue any
            # more, so the real socket answers as tcp_recvmsg does (ECONNRESET
            # once, bytes queued before the reset as readable data, then 0)
            return sock.recv_into(buf, len(buf), flags & (_RECV_PASS_FLAGS | abi.MSG_PEEK)), 0, 0
        nbuf = len(buf)
        if s.mode != "devmem":
            n = sock.recv_into(buf, nbuf, flags & (_RECV_PASS_FLAGS | abi.MSG_PEEK))
            return n, 0, 0
        if not flags & abi.MSG_SOCK_DEVMEM:
            # unreadable skbs without MSG_SOCK_DEVMEM: EFAULT (tcp_recvmsg_locked)
            if self._wait_data(sock, flags) == 0:
                return 0, 0, 0
            raise oserror(errno.EFAULT, "devmem data needs MSG_SOCK_DEVMEM")
        if nbuf == 0:
            return 0, 0, 0
        if s.tail_left:
            nbuf = min(nbuf, s.tail_left)
        room = len(control) // _REC
        if room == 0:
            if self._wait_data(sock, flags) == 0:
                return 0, 0, 0
            # tcp_recvmsg_dmabuf: put_cmsg could not place one cmsg and nothing was consumed
            code = abi.ETOOSMALL if s.kernel >= abi.ETOOSMALL_SINCE else errno.EFAULT
            raise oserror(code, "control buffer too small for one devmem cmsg (40 bytes)")
        b = s.binding
        assert b is not None and b.pool is not None
        pool = b.pool
        # size the buffers by what is queued (FIONREAD), so no net_iov is taken in vain
        fionread = s.fionread
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, fionread, True)
        avail = fionread[0]
        if avail == 0:
            # nothing queued: wait like recvmsg (timeout, SO_RCVTIMEO, MSG_DONTWAIT)
            # before taking any net_iov, so a waiting socket holds no buffers
            try:
                if self._wait_data(sock, flags) == 0:
                    return 0, 0, 0
            except TimeoutError:
                raise TimeoutError(errno.EAGAIN, "timed out") from None
            fcntl.ioctl(sock.fileno(), termios.FIONREAD, fionread, True)
            avail = max(1, fionread[0])
        if avail < nbuf and not flags & abi.MSG_DONTWAIT:
            # SO_RCVLOWAT: tcp_recvmsg returns once min(sk_rcvlowat, len) bytes are there
            target = min(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT), nbuf)
            if avail < target:
                if sock.gettimeout() is None:
                    # the real socket has the same SO_RCVLOWAT: its recv_into waits for it
                    avail = target
                else:
                    avail = self._wait_lowat(sock, s, flags, target, avail)
        if s.frags == "driver" or flags & abi.MSG_PEEK or (s.fill is not None and s.fill.pending):
            n, clen, mfl = self._recv_shaped(sock, s, b, pool, control, nbuf, room, avail, flags)
            self._tail_used(s, n, flags)
            return n, clen, mfl
        want_pages = min(room, -(-min(avail, nbuf) // PAGE_SIZE))
        runs = pool.alloc_runs(want_pages, s.queue, time.monotonic())
        if not runs:
            deadline, py_timeout = self._deadline(sock, s, flags)
            runs = pool.alloc_runs(want_pages, s.queue, deadline)
            if not runs:
                if py_timeout:
                    raise TimeoutError(errno.EAGAIN, "timed out (devmem flow stalled: every buffer is held)")
                raise oserror(errno.EAGAIN, "devmem flow stalled: every buffer of the binding is held")
        view = b.view
        if view is not None:
            total = self._fill(sock, view, runs, nbuf, flags, pool, s.queue)
        else:
            total = self._fill_staged(sock, b, runs, nbuf, flags, pool, s.queue)
        if total == 0:
            return 0, 0, 0
        used = -(-total // PAGE_SIZE)
        got = _split_runs(runs, used, pool, s.queue)
        try:
            tokens = s.tokens.alloc_runs(got, b.id, s.queue)
        except OSError:
            pool.give_back_runs(got, s.queue)  # EBUSY (2**31 tokens held): no net_iov stays taken
            raise
        clen = encode_frags(control, got, total, tokens, b.id)
        self._tail_used(s, total, flags)
        qs = pool.queue_stats(s.queue)
        qs.rx_packets += used
        qs.rx_bytes += total
        if self.stats_interval_s is not None:
            now = time.monotonic()
            if now - self._stats_flushed >= self.stats_interval_s:
                self._stats_flushed = now
                self.netdev.flush_stats()
        return total, clen, 0

    @classmethod
    def _fill_staged(cls, sock: socket.socket, b: EmulatedBinding, runs: list[tuple[int, int]], nbuf: int,
                     flags: int, pool: RxPool, queue: int) -> int:
        """:meth:`_fill` for a dma-buf without a host view: receive the runs'
        bytes back to back into the staging buffer, then one ``write_at``
        (for CUDA memory: a host-to-device copy per contiguous run, one
        synchronisation) puts them at the net_iov offsets."""
        room = min(sum(cnt for _, cnt in runs) * PAGE_SIZE, nbuf)
        stage = b.stage(room)
        total = cls._fill(sock, memoryview(stage.data)[:room], runs, nbuf, flags, pool, queue, packed=True)
        if total:
            starts = np.array([p0 for p0, _ in runs], np.int64) * PAGE_SIZE
            lens = np.array([cnt for _, cnt in runs], np.int64) * PAGE_SIZE
            ends = np.minimum(np.cumsum(lens), total)
            lens = np.diff(ends, prepend=0)
            try:
                b.dmabuf.write_at(starts[lens > 0], lens[lens > 0], stage)
            except BaseException:
                pool.give_back_runs(runs, queue)
                raise
        return total

    def _recv_shaped(self, sock: socket.socket, s: RxSocket, b: EmulatedBinding, pool: RxPool,
                     control: memoryview, nbuf: int, room: int, avail: int,
                     flags: int) -> tuple[int, int, int]:
        """recvmsg's devmem part with a real NIC's buffer placement (see
        :class:`ShapedFill`): up to ``room`` frags, ``min(avail, nbuf)`` bytes."""
        f = s.fill
        page = s.frags != "driver"
        buf_len = PAGE_SIZE if page else max(1, min(s.buf_len, PAGE_SIZE))
        if f is None or f.buf_len != buf_len:
            # whole-page frags are this placement with page-sized segments and buffers
            mss = PAGE_SIZE if page else int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)) or 1448
            if f is not None:
                f.drop_all(pool, s.queue)
            f = s.fill = ShapedFill(mss=mss, buf_len=buf_len)
        q = s.queue
        want = min(avail, nbuf)
        frags: list[tuple[int, int, int]] = []  # (net_iov, offset in it, length)
        left = want
        # 1. the rest of frags placed before (cut by the end of the last recvmsg)
        pend_total = sum(p[2] for p in f.pending)
        while f.pending and left and len(frags) < room:
            niov, off, ln = f.pending[0]
            take = min(ln, left)
            frags.append((niov, off, take))
            left -= take
            if take == ln:
                f.pending.popleft()
            else:
                f.pending[0] = (niov, off + take, ln - take)
        fresh = max(0, avail - pend_total)
        # 2. new segments, placed in the current buffer or the next one
        slots = max(1, PAGE_SIZE // f.buf_len)
        stalled = False
        while left and fresh and len(frags) < room:
            seg = min(f.mss, fresh)
            fresh -= seg
            pieces: list[tuple[int, int, int]] = []
            rest = seg
            while rest:
                if f.cur >= 0 and f.used and rest == seg and rest > f.buf_len - f.used:
                    f.slot, f.used = f.slot + 1, 0  # a segment starts in a buffer it fits, or a fresh one
                if f.cur >= 0 and f.used == f.buf_len:
                    f.slot, f.used = f.slot + 1, 0
                if f.cur < 0 or f.slot >= slots:
                    got = pool.alloc_runs(1, q, time.monotonic())
                    if not got and not frags and not pieces:
                        got = pool.alloc_runs(1, q, self._deadline(sock, s, flags)[0])
                    if not got:
                        stalled = True
                        break
                    f.cur, f.slot, f.used = got[0][0], 0, 0
                    f.held.add(f.cur)
                take = min(rest, f.buf_len - f.used)
                pieces.append((f.cur, f.slot * f.buf_len + f.used, take))
                f.used += take
                rest -= take
            for piece in pieces:
                if left and len(frags) < room:
                    take = min(piece[2], left)
                    frags.append((piece[0], piece[1], take))
                    left -= take
                    if take < piece[2]:
                        f.pending.append((piece[0], piece[1] + take, piece[2] - take))
                else:
                    f.pending.append(piece)
            if stalled:
                break
        if not frags:
            f.settle(pool, q)
            if stalled:
                if sock.gettimeout():
                    raise TimeoutError(errno.EAGAIN, "timed out (devmem flow stalled: every buffer is held)")
                raise oserror(errno.EAGAIN, "devmem flow stalled: every buffer of the binding is held")
            return 0, 0, 0
        # 3. the bytes go where the NIC placed them (one recvmsg_into per 1024 frags)
        view = b.view
        planned = sum(ln for _, _, ln in frags)
        # no host view (device memory): the bytes land back to back in staging, then one
        # write_at puts them at the frags' offsets (the NIC's DMA, as in _fill_staged)
        stage = b.stage(planned) if view is None else None
        total = 0
        direct = (sock.gettimeout() or 0) > 0 and not flags & abi.MSG_WAITALL
        fl = flags & (_RECV_PASS_FLAGS | abi.MSG_PEEK)
        peek = bool(flags & abi.MSG_PEEK)
        direct = direct and not peek
        staged_at = 0
        try:
            for i in range(0, len(frags), abi.UIO_MAXIOV):
                chunk = frags[i:i + abi.UIO_MAXIOV]
                if view is not None:
                    bufs = [view[n * PAGE_SIZE + o: n * PAGE_SIZE + o + ln] for n, o, ln in chunk]
                else:
                    assert stage is not None
                    ln_here = sum(ln for _, _, ln in chunk)
                    bufs = [memoryview(stage.data)[staged_at: staged_at + ln_here]]
                    staged_at += ln_here
                want_here = sum(len(x) for x in bufs)
                if peek and i:
                    break  # one MSG_PEEK call: later chunks would peek the same bytes again
                got_here = (os.readv(sock.fileno(), bufs) if direct
                            else sock.recvmsg_into(bufs, 0, fl if i == 0 else abi.MSG_DONTWAIT)[0])
                total += got_here
                if got_here < want_here:
                    break
        except (BlockingIOError, InterruptedError):
            if total == 0:
                self._unplace(f, frags, 0)
                f.settle(pool, q)
                raise
        except TimeoutError:
            self._unplace(f, frags, 0)
            f.settle(pool, q)
            raise TimeoutError(errno.EAGAIN, "timed out") from None
        except BaseException:
            self._unplace(f, frags, 0)
            f.settle(pool, q)
            raise
        if total < planned:
            frags = self._unplace(f, frags, total)
        if total == 0:
            f.settle(pool, q)
            return 0, 0, 0
        if stage is not None:
            try:
                b.dmabuf.write_at(np.array([n * PAGE_SIZE + o for n, o, _ in frags], np.int64),
                                  np.array([ln for _, _, ln in frags], np.int64), stage)
            except BaseException:
                self._unplace(f, frags, 0)
                f.settle(pool, q)
                raise
        if peek:
            # MSG_PEEK: the same frags stay queued; this call's tokens are extra
            # references to them (tcp_recvmsg_dmabuf has no peek special case)
            self._unplace(f, frags, 0)
        # 4. a token and a net_iov reference per frag, one cmsg each
        idx = [n for n, _, _ in frags]
        pool.add_refs(idx)
        try:
            tokens = s.tokens.alloc_runs([(n, 1) for n in idx], b.id, q)
        except OSError:
            pool.release_runs([(n, 1, b.id, q) for n in idx])
            self._unplace(f, frags, 0)
            f.settle(pool, q)
            raise
        if page and not f.pending:
            f.cur = -1  # back to whole pages: the NIC fills no buffer of its own
        f.settle(pool, q)
        offsets = np.array([n * PAGE_SIZE + o for n, o, _ in frags], dtype=np.uint64)
        sizes = np.array([ln for _, _, ln in frags], dtype=np.uint32)
        if len(control) < len(frags) * _REC:
            raise oserror(errno.EFAULT, "control buffer too small")
        clen = codec.encode_rx_control(control, offsets, sizes, expand_runs(tokens, np.uint32), b.id)
        qs = pool.queue_stats(q)
        qs.rx_packets += len(frags)
        qs.rx_bytes += total
        self._maybe_flush()
        return total, clen, 0

    def _maybe_flush(self) -> None:
        if self.stats_interval_s is not None:
            now = time.monotonic()
            if now - self._stats_flushed >= self.stats_interval_s:
                self._stats_flushed = now
                self.netdev.flush_stats()

    @staticmethod
    def _unplace(f: ShapedFill, frags: list[tuple[int, int, int]], got: int) -> list[tuple[int, int, int]]:
        """Only ``got`` bytes of the planned ``frags`` arrived: what did not is
        reserved again, ahead of what was pending (stream order); returns the
        frags that got bytes."""
        kept: list[tuple[int, int, int]] = []
        back: list[tuple[int, int, int]] = []
        left = got
        for n, o, ln in frags:
            take = min(ln, left)
            left -= take
            if take:
                kept.append((n, o, take))
            if take < ln:
                back.append((n, o + take, ln - take))
        # pieces already reserved stay reserved: merge a piece with the
        # pending one that continues it, else reserve it anew
        for piece in reversed(back):
            if f.pending and f.pending[0][0] == piece[0] and f.pending[0][1] == piece[1] + piece[2]:
                n, o, ln = f.pending.popleft()
                f.pending.appendleft((piece[0], piece[1], piece[2] + ln))
            else:
                f.pending.appendleft(piece)
        return kept

    @staticmethod
    def _fill(sock: socket.socket, view: memoryview, runs: list[tuple[int, int]], nbuf: int, flags: int,
              pool: RxPool, queue: int, packed: bool = False) -> int:
        """recv_into the dma-buf at the net_iov ``runs``, one call per run;
        returns bytes received (0 at EOF). Gives every net_iov back on error.
        ``packed``: ``view`` is a staging buffer and the runs' bytes go to it
        back to back (each run but the last is filled before the next starts)."""
        total = 0
        left = nbuf
        first_flags = flags & _RECV_PASS_FLAGS
        # Bytes are queued (the caller saw FIONREAD > 0). A socket with a Python
        # timeout is O_NONBLOCK, and CPython polls it before recv_into: that poll
        # honours SO_RCVLOWAT and could wait for bytes the caller does not want,
        # so such a socket is read with readv(2), which does not poll.
        timeout = sock.gettimeout()
        direct = timeout is not None and timeout > 0 and not flags & abi.MSG_WAITALL
        fd = sock.fileno()
        for i, (p0, cnt) in enumerate(runs):
            want = min(cnt * PAGE_SIZE, left)
            off = total if packed else p0 * PAGE_SIZE
            try:
                if direct:
                    got = os.readv(fd, [view[off : off + want]])
                else:
                    fl = first_flags if i == 0 else abi.MSG_DONTWAIT
                    got = sock.recv_into(view[off : off + want], want, fl)
            except (BlockingIOError, InterruptedError):
                if i == 0:
                    pool.give_back_runs(runs, queue)
                    raise
                break
            except TimeoutError:
                pool.give_back_runs(runs, queue)
                raise TimeoutError(errno.EAGAIN, "timed out") from None
            except BaseException:
                pool.give_back_runs(runs, queue)
                raise
            total += got
            left -= got
            if got < want or left == 0:
                break
        if total == 0:
            pool.give_back_runs(runs, queue)
        return total

    # -- SO_DEVMEM_DONTNEED ----------------------------------------------------
    def dontneed(self, sock: socket.socket, tokens: np.ndarray | bytes | bytearray | memoryview) -> int:
        """setsockopt(SO_DEVMEM_DONTNEED) as net/core/sock.c does it.

        ``tokens``: a ``DMABUF_TOKEN_DTYPE`` array, or raw bytes (any length,
        to exercise optlen checks). In net/core/sock.c's order: optlen below
        sizeof(int) EINVAL (sk_setsockopt, for any socket: a UDP socket with
        optlen 0 gets EINVAL), then a non-TCP socket EBADF, then optlen not
        a multiple of 8 or above 128 ranges EINVAL (sock_devmem_dontneed). Walks
        the ranges in order and stops after 1024 frags (unknown tokens
        count toward that limit and are skipped). Returns the number of frags
        freed; their net_iovs go back to the binding's free list."""
        if sock.fileno() < 0:
            raise oserror(errno.EBADF)
        s = self.sockets.get(sock)
        if isinstance(tokens, np.ndarray) and tokens.dtype == abi.DMABUF_TOKEN_DTYPE and tokens.ndim == 1:
            ranges = tokens  # the Receiver's chunks: no byte view needed
            optlen = tokens.nbytes
        else:
            if isinstance(tokens, np.ndarray):
                raw = np.ascontiguousarray(tokens).view(np.uint8).reshape(-1)
            else:
                raw = np.frombuffer(bytes(tokens), dtype=np.uint8)
            optlen = int(raw.shape[0])
            ranges = None
        isz = abi.DMABUF_TOKEN_DTYPE.itemsize
        if optlen < 4:
            # sk_setsockopt's optlen < sizeof(int) check comes before any option's own
            raise oserror(errno.EINVAL, f"optlen {optlen}")
        if s is None or not s.tcp:
            if not _is_tcp(sock):
                raise oserror(errno.EBADF, "SO_DEVMEM_DONTNEED needs a TCP socket")
            if s is not None:
                s.tcp = True
        if optlen % isz or optlen > isz * abi.MAX_DONTNEED_TOKENS:
            raise oserror(errno.EINVAL, f"optlen {optlen}")
        if s is None or s.tokens.outstanding == 0:
            return 0
        runs = s.tokens.dontneed_runs(raw.view(abi.DMABUF_TOKEN_DTYPE) if ranges is None else ranges)
        self.netdev.pools.return_pages(runs)
        return sum(r[1] for r in runs)

    def release_socket(self, sock: socket.socket) -> int:
        """Give back every frag ``sock`` still holds (what the kernel does when
        the socket is destroyed) and forget the socket; returns frags freed.
        Also happens automatically when the socket object is garbage collected."""
        s = self.sockets.pop(sock, None)
        if s is None:
            return 0
        if s.fill is not None and s.binding is not None and s.binding.pool is not None:
            s.fill.drop_all(s.binding.pool, s.queue)
        n = s.tokens.outstanding
        self.netdev.pools.return_pages(s.tokens.erase_all_runs())
        return n

    def outstanding(self, sock: socket.socket) -> int:
        """Frags ``sock`` holds (tokens not given back)."""
        s = self.sockets.get(sock)
        return 0 if s is None else s.tokens.outstanding

