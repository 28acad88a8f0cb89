"""EmulatedBackend: a software devmem NIC under real TCP sockets.

The emulated NIC sits under the receiver: sockets are ordinary kernel TCP
sockets (on ``lo``, or a veth inside a namespace) and any plain TCP peer
talks to them. What the kernel does for a devmem NIC is reproduced on top,
with the kernel's bytes, errno values, extack texts and limits:

* **bind-rx / bind-tx** (net/core/netdev-genl.c, net/core/devmem.c,
  net/core/netdev_rx_queue.c), checked in the kernel's order; see
  :meth:`EmulatedBackend.bind_rx`.
* **Steering** (:mod:`devmemtcp.emulation.steering`): a socket's flow lands on
  the queue an ntuple rule names, else on the RSS indirection table entry of
  its Toeplitz hash. A flow on a queue bound by this process is *devmem*; any
  other flow is *readable*. The decision is re-read from the NIC state at most
  every ``recheck_s`` seconds, so rules and bindings made by another process
  take effect like they would on a NIC.
* **RX** (net/ipv4/tcp.c ``tcp_recvmsg_dmabuf``): a devmem flow's payload is
  received straight into the dma-buf's memory at the offsets of free
  net_iovs (one ``recv_into`` per contiguous run, no extra copy), cut into
  frags of at most PAGE_SIZE, each given a token from the socket's table
  (from 1, lowest free first); the control buffer gets one
  SCM_DEVMEM_DMABUF cmsg per frag (``devmemtcp.cmsg.encode_rx_control``).
  Header split is always on with hds-thresh 0 for a bound queue (bind-rx
  requires it, and ethtool refuses to change it while bound), so all payload
  goes to frags: the emulated NIC never produces SCM_DEVMEM_LINEAR.
  A dma-buf without a host view (CUDA memory) is filled the way a NIC's DMA
  engine would: the payload is received into a host staging buffer (the
  dma-buf's pinned one) and placed at the net_iov offsets with one
  ``write_at`` per receive; TX reads with one ``read_at`` per sendmsg.
* **SO_DEVMEM_DONTNEED** (net/core/sock.c ``sock_devmem_dontneed``).
* **TX** (net/ipv4/tcp.c ``tcp_sendmsg_locked``, net/core/devmem.c
  ``net_devmem_get_binding``, net/core/datagram.c
  ``zerocopy_fill_skb_from_devmem``) and MSG_ZEROCOPY completions
  (net/core/skbuff.c): a sendmsg's sequence number completes once TCP has
  acknowledged all of its bytes (SIOCOUTQ), and consecutive completions are
  merged into one ``[lo, hi]`` notification as the kernel merges them.

Limits of the emulation, each reported with a clear error: a flow steered to
a queue bound by *another* process cannot be received here (the dma-buf
memory lives in that process) and a TX binding is usable only by the process
that created it.

Timeouts follow CPython's socket timeout (``TimeoutError`` carrying EAGAIN,
like :class:`~devmemtcp.backend.kernel.KernelBackend`); on a blocking socket
with SO_RCVTIMEO a stalled flow gives BlockingIOError(EAGAIN) after that
time; a non-blocking call (timeout 0 or MSG_DONTWAIT) gives BlockingIOError.
SO_RCVLOWAT: on a blocking socket the real socket's own recv does the waiting
(tcp_recvmsg_locked and tcp_data_ready, the devmem path's code); with a
Python timeout, the wait is a poll (tcp_poll honours the low-water mark) and
the receive returns what is there when the timeout expires.
"""

from __future__ import annotations

import array
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
from typing import Any, Literal

import numpy as np

from devmemtcp import abi, cmsg
from devmemtcp.emulation import state as st
from devmemtcp.emulation.nic import EmulatedNicControl
from devmemtcp.emulation.pool import RxPool
from devmemtcp.emulation.steering import flow_of, ifname_of, ingress_ifindex, steer
from devmemtcp.emulation.tokens import PageRun, TokenTable, expand_runs
from devmemtcp.errors import DevmemError, NetlinkError
from devmemtcp.memory.base import DmaBuf

PAGE_SIZE = abi.PAGE_SIZE
_REC = abi.DMABUF_CMSG_SPACE  # 40 control bytes per frag
_SO_PROTOCOL = getattr(socket, "SO_PROTOCOL", 38)
_SO_RCVTIMEO = getattr(socket, "SO_RCVTIMEO", 20)
_RECV_PASS_FLAGS = abi.MSG_DONTWAIT | abi.MSG_WAITALL
_SEND_PASS_FLAGS = abi.MSG_DONTWAIT | abi.MSG_NOSIGNAL | 0x8000  # MSG_MORE
U32_MAX = 0xFFFFFFFF
UIO_MAXIOV = 1024  # include/uapi/linux/uio.h: more iovecs per sendmsg is EMSGSIZE


def _err(code: int, what: str | None = None) -> OSError:
    msg = os.strerror(code) if what is None else f"{os.strerror(code)}: {what}"
    if code == errno.EAGAIN:
        return BlockingIOError(code, msg)
    return OSError(code, msg)


_KEY_DMABUF = np.uint64(abi.SOL_SOCKET | (abi.SCM_DEVMEM_DMABUF << 32))
_REC_WORDS = _REC // 8
_PAGE_SHIFT = abi.PAGE_SIZE.bit_length() - 1


#: records with the fields that do not change within a binding filled in
#: (cmsg_len, level, type, frag_size = PAGE_SIZE, dmabuf_id), by binding id
_templates: dict[int, np.ndarray] = {}


def _template(binding_id: int, n: int) -> np.ndarray:
    t = _templates.get(binding_id)
    if t is None or t.shape[0] < n:
        t = np.zeros((max(n, 2048), _REC_WORDS), dtype=np.uint64)
        t[:, 0] = _REC
        t[:, 1] = _KEY_DMABUF
        t[:, 3] = PAGE_SIZE  # frag_size in the low half; the token goes in the high half
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
    :func:`devmemtcp.cmsg.encode_rx_control` (which it falls back to for a
    misaligned buffer) with a few numpy calls per run: it runs once per
    recvmsg. A record is 5 little-endian u64 words: cmsg_len,
    level | type << 32, frag_offset, frag_size | frag_token << 32,
    dmabuf_id | flags << 32."""
    n = pages[0][1] if len(pages) == 1 else sum(c for _, c in pages)
    need = n * _REC
    if len(control) < need:
        raise _err(errno.EFAULT, "control buffer too small")
    w = np.frombuffer(control, dtype=np.uint8, count=need).view(np.uint64)
    if not w.flags.aligned:  # (.ctypes.data costs more than the whole encode)
        sizes = np.full(n, PAGE_SIZE, dtype=np.uint32)
        sizes[-1] = total - (n - 1) * PAGE_SIZE
        return cmsg.encode_rx_control(control, expand_runs(pages, np.uint64) * PAGE_SIZE, sizes,
                                      expand_runs(tokens, np.uint32), binding_id)
    w = w.reshape(n, _REC_WORDS)
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


# ---------------------------------------------------------------------------
# bindings
# ---------------------------------------------------------------------------
class EmulatedBinding:
    """A dma-buf bound to the emulated NIC (bind-rx or bind-tx).

    Lives until :meth:`close` (or garbage collection, or its process's
    death), like a kernel binding lives as long as its netlink socket.
    Closing an RX binding gives its queues back to ordinary page pools:
    flows steered there become readable. Frags the application still holds
    stay valid and can be given back with SO_DEVMEM_DONTNEED."""

    def __init__(self, backend: EmulatedBackend, binding_id: int, ifindex: int, ifname: str, ns: int,
                 kind: Literal["rx", "tx"], queues: tuple[int, ...], dmabuf: DmaBuf) -> None:
        self.id = binding_id
        self.ifindex = ifindex
        self.ifname = ifname
        self.netns = ns
        self.kind: Literal["rx", "tx"] = kind
        self.queues = queues
        self.dmabuf = dmabuf
        self.size = int(dmabuf.size)
        self.pool: RxPool | None = RxPool(binding_id, self.size // PAGE_SIZE) if kind == "rx" else None
        self._view: memoryview | None = None
        self.staged: bool | None = None  # None: not yet known; True: device memory, no host view
        self._stages = threading.local()
        self.closed = False
        self._finalizer = weakref.finalize(self, _unregister, backend._directory, binding_id)
        self._backend = weakref.ref(backend)

    @property
    def view(self) -> memoryview | None:
        """Writable byte view of the dma-buf's host memory (cached), or None
        when the dma-buf has none (device memory): the emulated NIC then
        stages payload in host memory and moves it with the dma-buf's
        ``write_at`` / ``read_at``, as a NIC's DMA engine would."""
        if self._view is None and not self.staged:
            try:
                arr = self.dmabuf.host_view()
            except DevmemError:
                if getattr(self.dmabuf, "closed", False):
                    raise
                self.staged = True
                return None
            self.staged = False
            self._view = memoryview(arr).cast("B")  # type: ignore[arg-type]
        return self._view

    def stage(self, nbytes: int) -> np.ndarray:
        """This thread's host staging buffer of at least ``nbytes`` bytes (the
        dma-buf's pinned ``staging`` buffer where it offers one), reused."""
        cur: np.ndarray | None = getattr(self._stages, "buf", None)
        if cur is None or cur.shape[0] < nbytes:
            make = getattr(self.dmabuf, "staging", None)
            cur = make(nbytes) if callable(make) else np.empty(max(nbytes, PAGE_SIZE), np.uint8)
            self._stages.buf = cur
        return cur

    def close(self) -> None:
        """Unbind (idempotent)."""
        if self.closed:
            return
        self.closed = True
        be = self._backend()
        if be is not None:
            be._forget_binding(self)
        self._finalizer()

    def __enter__(self) -> EmulatedBinding:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        q = f" queues={list(self.queues)}" if self.queues else ""
        tail = " closed" if self.closed else ""
        return f"<EmulatedBinding id={self.id} {self.kind} {self.ifname}{q}{tail}>"


def _unregister(directory: str | None, binding_id: int) -> None:
    try:
        with st.locked(directory) as d:
            reg = st.load_registry(d)
            if reg["live"].pop(str(binding_id), None) is not None:
                st.save_registry(reg, d)
    except (OSError, DevmemError):
        pass


# ---------------------------------------------------------------------------
# per-socket state
# ---------------------------------------------------------------------------
@dataclass
class _TxState:
    zckey: int = 0  # next sendmsg sequence number (sk->sk_zckey)
    sent: int = 0  # payload bytes sent through the emulated devmem path
    pending: deque[tuple[int, int]] = field(default_factory=deque)  # (seq, cumulative end byte)
    done_lo: int | None = None  # completed, not yet reported range
    done_hi: int = 0
    routes: dict[int, tuple[int, int]] = field(default_factory=dict)  # binding id -> (ifindex, netns)
    ctl: bytes = b""  # last control buffer parsed, and its binding id
    ctl_id: int = 0


@dataclass
class _SockState:
    tokens: TokenTable = field(default_factory=TokenTable)
    family: int = socket.AF_INET
    ifindex: int | None = None
    mode: str = ""  # "devmem" | "readable" | "" (undecided)
    binding: EmulatedBinding | None = None
    queue: int = -1
    how: str = ""
    checked: float = -1e9
    tcp: bool = False
    fionread: array.array[int] = field(default_factory=lambda: array.array("i", [0]))
    tx: _TxState = field(default_factory=_TxState)


def _release_tokens(tokens: TokenTable, pools: dict[int, RxPool]) -> None:
    _return_pages(tokens.erase_all_runs(), pools)


def _return_pages(runs: list[PageRun], pools: dict[int, RxPool]) -> None:
    """Give erased tokens' net_iovs back to their bindings' pools."""
    if not runs:
        return
    first = runs[0][2]
    if all(r[2] == first for r in runs):
        pool = pools.get(first)
        if pool is not None:
            pool.release_runs(runs)
        return
    for bid in sorted({r[2] for r in runs}):
        pool = pools.get(bid)
        if pool is not None:
            pool.release_runs([r for r in runs if r[2] == bid])


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
# the backend
# ---------------------------------------------------------------------------
class EmulatedBackend:
    """The devmem boundary over the emulated NIC (see the module docstring).

    ``directory``: state directory (default :func:`devmemtcp.emulation.state.state_dir`);
    ``queues``: RX queue count of NICs that have no state yet (default 4);
    ``recheck_s``: how often a socket's steering is re-read from the NIC state;
    ``stats_interval_s``: how often receiving writes the per-queue counters to
    the NIC state file (None: only when a binding closes). Thread-safe. Use as
    a context manager (or call :meth:`close`) to unbind this backend's bindings
    and return every socket's tokens."""

    name: str = "emulated"

    def __init__(self, directory: str | None = None, queues: int | None = None,
                 recheck_s: float = 0.1, stats_interval_s: float | None = 1.0) -> None:
        self._directory = directory
        self._queues = queues
        self.recheck_s = recheck_s
        self.stats_interval_s = stats_interval_s
        self._lock = threading.Lock()
        self._bindings: dict[int, EmulatedBinding] = {}
        self._rx_by_queue: dict[tuple[int, str, int], EmulatedBinding] = {}
        self._pools: dict[int, RxPool] = {}  # outlive their binding while frags are held
        self._socks: weakref.WeakKeyDictionary[socket.socket, _SockState] = weakref.WeakKeyDictionary()
        self._stats_flushed = time.monotonic()

    # -- lifetime ------------------------------------------------------------
    def close(self) -> None:
        """Return every tracked socket's tokens and close this backend's bindings."""
        for sock in list(self._socks.keys()):
            self.release_socket(sock)
        for b in list(self._bindings.values()):
            b.close()

    def __enter__(self) -> EmulatedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- netlink ---------------------------------------------------------------
    def nic(self, ifname: str) -> EmulatedNicControl:
        """ethtool control of the emulated NIC on ``ifname`` (DevmemError if no such interface)."""
        return EmulatedNicControl(ifname, directory=self._directory, queues=self._queues)

    def _check_dmabuf(self, op: str, dmabuf: DmaBuf) -> None:
        """net_devmem_bind_dmabuf's checks of the dma-buf itself."""
        try:
            os.fstat(int(dmabuf.fd))
        except (OSError, ValueError, TypeError):
            # dma_buf_get() on a bad fd
            raise NetlinkError(errno.EBADF, op, hint="pass the fd of an open dma-buf") from None
        size = int(dmabuf.size)
        if size % PAGE_SIZE:
            raise NetlinkError(errno.EINVAL, op, f"dmabuf size {size} not aligned to niov size {PAGE_SIZE}",
                               hint=f"allocate the dma-buf in multiples of {PAGE_SIZE} bytes")
        if size >> 12 > U32_MAX:
            raise NetlinkError(errno.E2BIG, op, "dmabuf contains too many net_iovs",
                               hint="use a dma-buf below 16 TiB")

    def _nic_of(self, op: str, ifindex: int) -> tuple[int, str, dict[str, Any]]:
        """(netns id, ifname, NIC state) of ``ifindex``; ENODEV as the kernel's
        netdev_get_by_index when no interface has it in this namespace."""
        ns = st.netns_id()
        try:
            ifname = socket.if_indextoname(int(ifindex))
        except OSError:
            raise NetlinkError(errno.ENODEV, op,
                               hint="pass the ifindex of an interface in this network namespace") from None
        return ns, ifname, st.load_nic(ifname, directory=self._directory, ns=ns, queues=self._queues)

    def bind_rx(self, ifindex: int, dmabuf: DmaBuf, queues: list[Any]) -> EmulatedBinding:
        """bind-rx ``dmabuf`` to RX ``queues`` of the emulated NIC on ``ifindex``.

        ``queues``: queue ids, or ``(id, type)`` pairs to send another queue
        type. Checks, in netdev_nl_bind_rx_doit's order (errno, extack):
        no queues (EINVAL, missing attribute "queues"); unknown ifindex
        (ENODEV); a driver without the queue management API (EOPNOTSUPP, see
        ``EmulatedNicControl.set_capabilities``); a queue type other than rx
        or an id >= the RX queue count
        (EINVAL, bad attribute; netdev_nl_read_rxq_bitmap, 6.18+: the later
        ERANGE "rx queue index out of range" of __net_mp_open_rxq is then
        unreachable); the dma-buf: bad fd (EBADF), "dmabuf size N not
        aligned to niov size 4096" (EINVAL), "dmabuf contains too many
        net_iovs" (E2BIG); then an id is allocated (cyclically, machine-wide)
        and each queue, ascending, is opened: "tcp-data-split is disabled"
        (EINVAL), "hds-thresh is not zero" (EINVAL), "designated queue
        already memory provider bound" (EEXIST). A failed queue undoes the
        binding, but its id stays consumed, as in the kernel."""
        op = "bind-rx"
        if not queues:
            raise NetlinkError(errno.EINVAL, op, bad_attr="queues (missing)",
                               hint="name at least one RX queue to bind")
        ns, ifname, nic = self._nic_of(op, ifindex)
        if not nic.get("caps", {}).get("queue_mgmt", True):
            # netdev_need_ops_lock() false: a driver without the queue management API
            raise NetlinkError(errno.EOPNOTSUPP, op, bad_attr="ifindex",
                               hint=f"{ifname}'s driver cannot restart queues with a memory provider")
        nrx = int(nic["channels"]["combined"])
        wanted: set[int] = set()
        for q in queues:
            qid, qtype = (int(q[0]), int(q[1])) if isinstance(q, (tuple, list)) else (int(q), 0)
            if qtype != abi.NETDEV_QUEUE_TYPE_RX:
                raise NetlinkError(errno.EINVAL, op, bad_attr="queue-id.type",
                                   hint="bind-rx binds RX queues (type rx)")
            if not 0 <= qid < nrx:
                raise NetlinkError(errno.EINVAL, op, bad_attr="queue-id.id",
                                   hint=f"{ifname} has RX queues 0..{nrx - 1}")
            wanted.add(qid)
        self._check_dmabuf(op, dmabuf)
        pid, start = st.self_owner()
        with st.locked(self._directory) as d:
            reg = st.load_registry(d)
            bid = st.alloc_binding_id(reg)
            nic = st.load_nic(ifname, directory=d, ns=ns, queues=self._queues)
            bound = st.bound_queues(reg, ns, ifname)
            rings = nic["rings"]
            failure: NetlinkError | None = None
            for qid in sorted(wanted):
                if rings["tcp_data_split"] != "enabled":
                    failure = NetlinkError(errno.EINVAL, op, "tcp-data-split is disabled",
                                           hint=f"enable header split: ethtool -G {ifname} tcp-data-split on "
                                                "(or devmemtcp setup)")
                elif rings["hds_thresh"]:
                    failure = NetlinkError(errno.EINVAL, op, "hds-thresh is not zero",
                                           hint=f"ethtool -G {ifname} hds-thresh 0 (or devmemtcp setup)")
                elif qid in bound:
                    failure = NetlinkError(errno.EEXIST, op, "designated queue already memory provider bound",
                                           hint=f"queue {qid} is bound by binding {bound[qid]}; "
                                                "pick another queue or close that binding")
                if failure is not None:
                    break
            if failure is None:
                reg["live"][str(bid)] = {"pid": pid, "start": start, "kind": "rx", "ifindex": int(ifindex),
                                         "ifname": ifname, "netns": ns, "queues": sorted(wanted)}
            st.save_registry(reg, d)  # the cyclic cursor moved even on failure
            if not os.path.exists(st.nic_path(ifname, ns, d)):
                st.save_nic(nic, d)
        if failure is not None:
            raise failure
        b = EmulatedBinding(self, bid, int(ifindex), ifname, ns, "rx", tuple(sorted(wanted)), dmabuf)
        with self._lock:
            self._bindings[bid] = b
            assert b.pool is not None
            self._pools[bid] = b.pool
            for qid in b.queues:
                self._rx_by_queue[(ns, ifname, qid)] = b
        return b

    def bind_tx(self, ifindex: int, dmabuf: DmaBuf) -> EmulatedBinding:
        """bind-tx ``dmabuf`` to the emulated NIC on ``ifindex`` (netmem TX
        mode DMA). Errors (netdev_nl_bind_tx_doit): unknown ifindex (ENODEV);
        netmem TX mode "none" (EOPNOTSUPP "Driver does not support netmem
        TX"); then the dma-buf checks of :meth:`bind_rx` (EBADF, EINVAL, E2BIG)."""
        op = "bind-tx"
        ns, ifname, nic = self._nic_of(op, ifindex)
        if nic.get("caps", {}).get("netmem_tx", "dma") == "none":
            raise NetlinkError(errno.EOPNOTSUPP, op, "Driver does not support netmem TX",
                               hint="devmem TX needs a NIC with netmem TX (gve, mlx5, bnxt, fbnic)")
        self._check_dmabuf(op, dmabuf)
        pid, start = st.self_owner()
        with st.locked(self._directory) as d:
            reg = st.load_registry(d)
            bid = st.alloc_binding_id(reg)
            reg["live"][str(bid)] = {"pid": pid, "start": start, "kind": "tx", "ifindex": int(ifindex),
                                     "ifname": ifname, "netns": ns, "queues": []}
            st.save_registry(reg, d)
        b = EmulatedBinding(self, bid, int(ifindex), ifname, ns, "tx", (), dmabuf)
        with self._lock:
            self._bindings[bid] = b
        return b

    def _forget_binding(self, b: EmulatedBinding) -> None:
        with self._lock:
            self._bindings.pop(b.id, None)
            for qid in b.queues:
                if self._rx_by_queue.get((b.netns, b.ifname, qid)) is b:
                    del self._rx_by_queue[(b.netns, b.ifname, qid)]
        if b.kind == "rx":
            self.flush_stats()

    # -- steering ------------------------------------------------------------
    def _state(self, sock: socket.socket) -> _SockState:
        s = self._socks.get(sock)
        if s is None:
            s = _SockState(family=sock.family)
            with self._lock:
                self._socks[sock] = s
                # the kernel releases a socket's frags when it is destroyed
                weakref.finalize(sock, _release_tokens, s.tokens, self._pools)
        return s

    def _decide(self, sock: socket.socket, s: _SockState) -> None:
        now = time.monotonic()
        if s.mode and now - s.checked < self.recheck_s and (s.binding is None or not s.binding.closed):
            return
        if s.ifindex is None:
            s.ifindex = ingress_ifindex(sock)
        ns = st.netns_id()
        ifname = ifname_of(s.ifindex)
        nic = st.load_nic(ifname, directory=self._directory, ns=ns, queues=self._queues)
        q, how = steer(nic, flow_of(sock))
        b = self._rx_by_queue.get((ns, ifname, q))
        if b is not None and not b.closed:
            s.mode, s.binding = "devmem", b
        else:
            reg = st.load_registry(self._directory)
            other = st.bound_queues(reg, ns, ifname).get(q)
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

    def flow_info(self, sock: socket.socket) -> dict[str, Any]:
        """How the emulated NIC steers ``sock``'s flow: ``{"mode": "devmem" |
        "readable", "queue": int, "how": "rule@LOC" | "rss", "binding": id | None,
        "ifname": str}`` (decided now)."""
        s = self._state(sock)
        s.checked = -1e9
        self._decide(sock, s)
        return {"mode": s.mode, "queue": s.queue, "how": s.how,
                "binding": s.binding.id if s.binding is not None else None,
                "ifname": ifname_of(s.ifindex) if s.ifindex is not None else None}

    # -- RX ------------------------------------------------------------------
    def _deadline(self, sock: socket.socket, s: _SockState, flags: int) -> tuple[float | None, bool]:
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

    def _wait_lowat(self, sock: socket.socket, s: _SockState, flags: int, target: int, avail: int) -> int:
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
        devmem flow without MSG_SOCK_DEVMEM or with a control buffer too
        small for one cmsg (once data is there; 0 at EOF); EINVAL for
        MSG_PEEK on a devmem flow; EAGAIN / TimeoutError as described in the
        module docstring; ENOTCONN for an unconnected socket."""
        if sock.fileno() < 0:
            raise _err(errno.EBADF)
        s = self._state(sock)
        self._decide(sock, s)
        nbuf = len(buf)
        if s.mode != "devmem":
            n = sock.recv_into(buf, nbuf, flags & (_RECV_PASS_FLAGS | abi.MSG_PEEK))
            return n, 0, 0
        if not flags & abi.MSG_SOCK_DEVMEM:
            # unreadable skbs without MSG_SOCK_DEVMEM: EFAULT (tcp_recvmsg_locked)
            if self._wait_data(sock, flags) == 0:
                return 0, 0, 0
            raise _err(errno.EFAULT, "devmem data needs MSG_SOCK_DEVMEM")
        if flags & abi.MSG_PEEK:
            raise _err(errno.EINVAL, "MSG_PEEK is not supported on devmem flows by the emulated NIC")
        if nbuf == 0:
            return 0, 0, 0
        room = len(control) // _REC
        if room == 0:
            if self._wait_data(sock, flags) == 0:
                return 0, 0, 0
            raise _err(errno.EFAULT, "control buffer too small for one devmem cmsg (40 bytes)")
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
        want_pages = min(room, -(-min(avail, nbuf) // PAGE_SIZE))
        runs = pool.alloc_runs(want_pages, s.queue, time.monotonic())
        if not runs:
            deadline, py_timeout = self._deadline(sock, s, flags)
            runs = pool.alloc_runs(want_pages, s.queue, deadline)
            if not runs:
                if py_timeout:
                    raise TimeoutError(errno.EAGAIN, "timed out (devmem flow stalled: every buffer is held)")
                raise _err(errno.EAGAIN, "devmem flow stalled: every buffer of the binding is held")
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
            pool.give_back_runs(got, s.queue)  # ENOMEM (2**31 tokens held): no net_iov stays taken
            raise
        clen = encode_frags(control, got, total, tokens, b.id)
        qs = pool.queue_stats(s.queue)
        qs.rx_packets += used
        qs.rx_bytes += total
        if self.stats_interval_s is not None:
            now = time.monotonic()
            if now - self._stats_flushed >= self.stats_interval_s:
                self._stats_flushed = now
                self.flush_stats()
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
        to exercise optlen checks). Non-TCP socket: EBADF; optlen below
        sizeof(int), not a multiple of 8 or above 128 ranges: EINVAL. Walks
        the ranges in order and stops after 1024 frags (unknown tokens
        count toward that limit and are skipped). Returns the number of frags
        freed; their net_iovs go back to the binding's free list."""
        if sock.fileno() < 0:
            raise _err(errno.EBADF)
        s = self._socks.get(sock)
        if s is None or not s.tcp:
            if not _is_tcp(sock):
                raise _err(errno.EBADF, "SO_DEVMEM_DONTNEED needs a TCP socket")
            if s is not None:
                s.tcp = True
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
        if optlen < 4 or optlen % isz or optlen > isz * abi.MAX_DONTNEED_TOKENS:
            raise _err(errno.EINVAL, f"optlen {optlen}")
        if s is None or s.tokens.outstanding == 0:
            return 0
        runs = s.tokens.dontneed_runs(raw.view(abi.DMABUF_TOKEN_DTYPE) if ranges is None else ranges)
        _return_pages(runs, self._pools)
        return sum(r[1] for r in runs)

    def release_socket(self, sock: socket.socket) -> int:
        """Give back every frag ``sock`` still holds (what the kernel does when
        the socket is destroyed) and forget the socket; returns frags freed.
        Also happens automatically when the socket object is garbage collected."""
        s = self._socks.pop(sock, None)
        if s is None:
            return 0
        n = s.tokens.outstanding
        _release_tokens(s.tokens, self._pools)
        return n

    def outstanding(self, sock: socket.socket) -> int:
        """Frags ``sock`` holds (tokens not given back)."""
        s = self._socks.get(sock)
        return 0 if s is None else s.tokens.outstanding

    # -- stats -----------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters of this process's bindings: ``{"bindings": [{"id", "kind",
        "ifname", "queues", "pages", "free", "inflight", "queue_stats": {q:
        {alloc-fast, alloc-slow, alloc-empty, recycle-released-refcnt,
        rx-packets, rx-bytes}}}]}``; closed RX bindings whose frags are still
        held are included with ``"closed": true``."""
        out = []
        with self._lock:
            items = list(self._pools.items())
            live = dict(self._bindings)
        for bid, pool in items:
            b = live.get(bid)
            out.append({"id": bid, "kind": "rx", "closed": b is None,
                        "ifname": b.ifname if b else None, "queues": list(b.queues) if b else [],
                        "pages": pool.pages, "free": pool.nfree, "inflight": pool.inflight,
                        "queue_stats": {q: qs.as_dict() for q, qs in sorted(pool.stats.items())}})
        for bid, b in live.items():
            if b.kind == "tx":
                out.append({"id": bid, "kind": "tx", "closed": False, "ifname": b.ifname, "queues": [],
                            "pages": b.size // PAGE_SIZE})
        return {"bindings": sorted(out, key=lambda x: x["id"])}

    def flush_stats(self) -> None:
        """Add this process's per-queue counters to each NIC's state file
        (``stats`` key: ``{queue: {counter: value}}``), for ``info`` in
        another process."""
        snap = self.stats()["bindings"]
        per_nic: dict[tuple[int, str], dict[str, dict[str, int]]] = {}
        with self._lock:
            ids = {bid: (b.netns, b.ifname) for bid, b in self._bindings.items()}
        for entry in snap:
            key = ids.get(entry["id"])
            if key is None or entry["kind"] != "rx":
                continue
            nic_stats = per_nic.setdefault(key, {})
            for q, counters in entry["queue_stats"].items():
                nic_stats[str(q)] = counters
        if not per_nic:
            return
        try:
            with st.locked(self._directory) as d:
                for (ns, ifname), qstats in per_nic.items():
                    try:
                        nic = st.load_nic(ifname, directory=d, ns=ns, queues=self._queues)
                    except DevmemError:
                        continue
                    nic.setdefault("stats", {}).update(qstats)
                    st.save_nic(nic, d)
        except OSError:
            pass

    # -- TX ------------------------------------------------------------------
    def _tx_binding(self, sock: socket.socket, s: _SockState, bid: int) -> EmulatedBinding:
        """net_devmem_get_binding: EINVAL unless ``bid`` is a live TX binding,
        EHOSTUNREACH without a route, ENODEV when the route's device is not
        the binding's."""
        b = self._bindings.get(bid)
        if b is None or b.kind != "tx" or b.closed:
            if b is None and str(bid) in st.load_registry(self._directory)["live"]:
                raise DevmemError(
                    f"binding {bid} belongs to another process: the emulated NIC cannot read its dma-buf",
                    "bind-tx in the process that sends")
            raise _err(errno.EINVAL, f"binding {bid} is not a TX binding")
        route = s.tx.routes.get(bid)
        if route is None:
            route = s.tx.routes[bid] = (ingress_ifindex(sock), st.netns_id())
        if route != (b.ifindex, b.netns):
            raise _err(errno.ENODEV, f"route to the peer leaves through ifindex {route[0]}, binding {bid} is "
                                     f"on {b.ifname} (ifindex {b.ifindex})")
        return b

    def sendmsg(self, sock: socket.socket, iov: np.ndarray, control: bytes, flags: int) -> int:
        """Devmem sendmsg: ``iov`` an ``(n, 2)`` uint64 array of (dma-buf offset,
        length), ``control`` the SCM_DEVMEM_DMABUF cmsg. Returns bytes sent.

        Order of checks (tcp_sendmsg_locked): the cmsg is parsed
        (``cmsg.parse_tx_cmsg``; its EINVAL is reported last); with
        MSG_ZEROCOPY, SO_ZEROCOPY and a non-empty iov the binding is looked up
        (EINVAL unknown/RX id, EHOSTUNREACH, ENODEV wrong device); a binding
        id without MSG_ZEROCOPY or SO_ZEROCOPY is EINVAL. Without a binding
        the offsets would be user pointers: EFAULT. An offset at or past the
        dma-buf's end is EFAULT (or a short count once bytes went out);
        bytes past the end of the dma-buf are not sent. Each successful call
        takes the next zerocopy sequence number."""
        if sock.fileno() < 0:
            raise _err(errno.EBADF)
        arr = np.ascontiguousarray(iov, dtype=np.uint64).reshape(-1, 2)
        if arr.shape[0] > UIO_MAXIOV:
            raise _err(errno.EMSGSIZE, f"{arr.shape[0]} iovecs (at most {UIO_MAXIOV})")
        size = int(arr[:, 1].sum()) if arr.shape[0] else 0
        s = self._state(sock)
        sockc_err: OSError | None = None
        bid = 0
        tx = s.tx
        if control and control == tx.ctl:
            bid = tx.ctl_id
        else:
            try:
                bid = cmsg.parse_tx_cmsg(control) if control else 0
                tx.ctl, tx.ctl_id = bytes(control), bid
            except OSError as exc:
                sockc_err = exc
        zc = bool(flags & abi.MSG_ZEROCOPY) and bool(
            sock.getsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY))
        binding: EmulatedBinding | None = None
        if zc and size and sockc_err is None and bid:
            binding = self._tx_binding(sock, s, bid)
        if sockc_err is None and bid and not zc:
            raise _err(errno.EINVAL, "a devmem sendmsg needs SO_ZEROCOPY on the socket and MSG_ZEROCOPY")
        if sockc_err is not None:
            raise sockc_err
        if size == 0:
            return 0
        if binding is None:
            raise _err(errno.EFAULT, "iov_base values are dma-buf offsets only with SCM_DEVMEM_DMABUF")
        view = binding.view
        bsize = binding.size
        # the byte ranges to send, adjacent iovecs merged: the copy is the emulated
        # NIC's DMA, and one long iovec is copied faster than many short ones
        spans: list[list[int]] = []
        offs, lens = arr[:, 0], arr[:, 1]
        first, end = int(offs[0]), int(offs[-1]) + int(lens[-1])
        # (lengths within the dma-buf, at most UIO_MAXIOV of them: the sums cannot wrap)
        if first < end <= bsize and int(lens.max()) <= bsize and bool((lens != 0).all()) \
                and bool((offs[1:] == offs[:-1] + lens[:-1]).all()):
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
            raise _err(errno.EFAULT, f"dma-buf offset past the end of binding {bid} ({bsize} bytes)")
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

    def _complete(self, sock: socket.socket, tx: _TxState) -> None:
        if not tx.pending:
            return
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # == SIOCOUTQ
        outq = struct.unpack("i", raw)[0]
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
            raise _err(errno.EBADF)
        s = self._socks.get(sock)
        if s is None:
            raise _err(errno.EAGAIN)
        tx = s.tx
        self._complete(sock, tx)
        if tx.done_lo is None:
            raise _err(errno.EAGAIN)
        data = cmsg.encode_zerocopy_completion(tx.done_lo, tx.done_hi, copied=False, family=s.family)
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
        s = self._socks.get(sock)
        if s is None:
            return False
        tx = s.tx
        deadline = time.monotonic() + max(0.0, timeout)
        delay = 20e-6
        while True:
            if sock.fileno() < 0:
                return False
            self._complete(sock, tx)
            if tx.done_lo is not None:
                return True
            left = deadline - time.monotonic()
            if left <= 0 or not tx.pending:
                return False
            time.sleep(min(delay, left))
            delay = min(delay * 2, 1e-3)

    def pending_completions(self, sock: socket.socket) -> int:
        """sendmsg calls on ``sock`` not yet reported as completed."""
        s = self._socks.get(sock)
        if s is None:
            return 0
        extra = 0 if s.tx.done_lo is None else (s.tx.done_hi - s.tx.done_lo) % (U32_MAX + 1) + 1
        return len(s.tx.pending) + extra
