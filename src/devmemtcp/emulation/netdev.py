"""The netdev side of the emulated NIC: bind-rx, bind-tx and the binding registry.

bind-rx and bind-tx are checked in the kernel's order with its errno and
extack texts (net/core/netdev-genl.c ``netdev_nl_bind_rx_doit`` /
``netdev_nl_bind_tx_doit``, net/core/devmem.c ``net_devmem_bind_dmabuf``,
net/core/netdev_rx_queue.c ``__net_mp_open_rxq``). Binding ids come from the
machine-wide registry of :mod:`devmemtcp.emulation.state` (one cyclic id
space for RX and TX, as the kernel's ``net_devmem_dmabuf_bindings`` xarray).

:class:`Netdev` is one process's view: its live bindings, which of them owns
each bound RX queue, and the page pools of its RX bindings
(:class:`~devmemtcp.emulation.pool.PoolRegistry`). The RX and TX paths
(:mod:`devmemtcp.emulation.rx`, :mod:`devmemtcp.emulation.tx`) look bindings
up here.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import weakref
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from devmemtcp import abi
from devmemtcp.emulation import netkit as nk
from devmemtcp.emulation import state as st
from devmemtcp.emulation.nic import EmulatedNicControl
from devmemtcp.emulation.pool import PoolRegistry, RxPool
from devmemtcp.errors import DevmemError, NetlinkError
from devmemtcp.host import netns, procs

if TYPE_CHECKING:
    from devmemtcp.memory.base import DmaBuf

PAGE_SIZE = abi.PAGE_SIZE
U32_MAX = 0xFFFFFFFF


def oserror(code: int, what: str | None = None) -> OSError:
    """The ``OSError`` a syscall failing with ``code`` raises (BlockingIOError
    for EAGAIN), its message the errno text plus ``what``."""
    msg = os.strerror(code) if what is None else f"{os.strerror(code)}: {what}"
    if code == errno.EAGAIN:
        return BlockingIOError(code, msg)
    return OSError(code, msg)


class EmulatedBinding:
    """A dma-buf bound to the emulated NIC (bind-rx or bind-tx).

    Lives until :meth:`close` (or garbage collection, or its process's
    death), like a kernel binding lives as long as its netlink socket.
    Closing an RX binding gives its queues back to ordinary page pools:
    flows steered there become readable. Frags the application still holds
    stay valid and can be given back with SO_DEVMEM_DONTNEED; the binding's
    page pool goes when the last of them comes back."""

    def __init__(self, netdev: Netdev, binding_id: int, ifindex: int, ifname: str, ns: int,
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
        #: (netns, ifname, queue) of each physical RX queue it holds (a guest's
        #: leased queues are the physical device's)
        self.rx_keys: tuple[tuple[int, str, int], ...] = tuple((ns, ifname, q) for q in queues)
        #: bind-tx on a NETMEM_TX_NO_DMA device: (netns, ifindex, ifname) of that
        #: virtual device (binding->vdev); the binding itself is on the DMA device
        self.vdev: tuple[int, int, str] | None = None
        self._view: memoryview | None = None
        self.staged: bool | None = None  # None: not yet known; True: device memory, no host view
        self._stages = threading.local()
        self.closed = False
        self._finalizer = weakref.finalize(self, _unregister, netdev.directory, binding_id)
        self._netdev = weakref.ref(netdev)

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
        dma-buf's pinned ``staging`` buffer where it offers one), reused.
        DevmemError once the dma-buf is closed (its staging memory is freed)."""
        if getattr(self.dmabuf, "closed", False):
            raise DevmemError(f"the dma-buf of binding {self.id} was closed while bound",
                              "close the binding (or the Channel) before its dma-buf")
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
        # the view would keep the dma-buf mapped (and its fd open) while anything,
        # e.g. a traceback, still references this binding; data lands here no more
        self._view = None
        nd = self._netdev()
        if nd is not None:
            nd.forget(self)
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


class Netdev:
    """One process's bindings on the emulated NIC (see the module docstring).

    ``directory``: state directory (default :func:`devmemtcp.emulation.state.state_dir`);
    ``queues``: RX queue count of NICs that have no state yet. Thread-safe."""

    def __init__(self, directory: str | None = None, queues: int | None = None) -> None:
        self.directory = directory
        self.queues = queues
        self.pools = PoolRegistry()
        self._lock = threading.Lock()
        self._bindings: dict[int, EmulatedBinding] = {}
        self._rx_by_queue: dict[tuple[int, str, int], EmulatedBinding] = {}
        #: called with each binding this process closes (the RX path keeps its queued data devmem)
        self.on_close: list[Any] = []

    def close(self) -> None:
        """Close every binding of this process."""
        for b in list(self._bindings.values()):
            b.close()

    def nic(self, ifname: str) -> EmulatedNicControl:
        """ethtool control of the emulated NIC on ``ifname`` (DevmemError if no such interface)."""
        return EmulatedNicControl(ifname, directory=self.directory, queues=self.queues)

    # -- lookups -------------------------------------------------------------
    def rx_binding(self, ns: int, ifname: str, queue: int) -> EmulatedBinding | None:
        """This process's live RX binding of ``queue`` on ``(ns, ifname)``."""
        b = self._rx_by_queue.get((ns, ifname, queue))
        return None if b is None or b.closed else b

    def foreign_rx_binding(self, ns: int, ifname: str, queue: int) -> int | None:
        """The id of another process's live RX binding of ``queue``, if any."""
        return st.bound_queues(st.load_registry(self.directory), ns, ifname).get(queue)

    def tx_binding(self, bid: int) -> EmulatedBinding:
        """net_devmem_get_binding's first check: EINVAL unless ``bid`` is a live
        TX binding; DevmemError when another process owns it (its dma-buf is
        out of reach of the emulated NIC)."""
        b = self._bindings.get(bid)
        if b is None or b.kind != "tx" or b.closed:
            if b is None and str(bid) in st.load_registry(self.directory)["live"]:
                raise DevmemError(
                    f"binding {bid} belongs to another process: the emulated NIC cannot read its dma-buf",
                    "bind-tx in the process that sends")
            raise oserror(errno.EINVAL, f"binding {bid} is not a TX binding")
        return b

    # -- bind ----------------------------------------------------------------
    def _check_dmabuf(self, op: str, dmabuf: DmaBuf) -> None:
        """net_devmem_bind_dmabuf's checks of the dma-buf itself.

        ``dma_buf_get`` (drivers/dma-buf/dma-buf.c) gives EBADF for a bad fd
        and EINVAL for a file that is not a dma-buf (``is_dma_buf_file``). The
        emulated NIC accepts a memfd as the stand-in for host memory wrapped
        as a dma-buf (the kernel needs udmabuf for that), and real dma-bufs."""
        try:
            os.fstat(int(dmabuf.fd))
        except (OSError, ValueError, TypeError):
            # dma_buf_get() on a bad fd
            raise NetlinkError(errno.EBADF, op, hint="pass the fd of an open dma-buf") from None
        if not is_dmabuf_or_memfd(int(dmabuf.fd)):
            raise NetlinkError(errno.EINVAL, op, bad_attr="fd",
                               hint="pass a dma-buf fd (udmabuf, a GPU allocation), or a memfd "
                                    "for the emulated NIC; a regular file or socket is not one")
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
        ns = netns.inode()
        try:
            ifname = socket.if_indextoname(int(ifindex))
        except OSError:
            raise NetlinkError(errno.ENODEV, op,
                               hint="pass the ifindex of an interface in this network namespace") from None
        return ns, ifname, st.load_nic(ifname, directory=self.directory, ns=ns, queues=self.queues)

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
        require_net_admin(op)
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
        _check_dma_devs(op, nic, sorted(wanted))
        self._check_dmabuf(op, dmabuf)
        pid, start = procs.me()
        with st.locked(self.directory) as d:
            reg = st.load_registry(d)
            bid = st.alloc_binding_id(reg)
            nic = st.load_nic(ifname, directory=d, ns=ns, queues=self.queues)
            failure: NetlinkError | None = None
            keys: list[tuple[int, str, int]] = []
            for qid in sorted(wanted):
                failure, key = _open_rxq(op, reg, d, ns, ifname, nic, qid)
                if failure is not None:
                    break
                assert key is not None
                keys.append(key)
            if failure is None:
                entry: dict[str, Any] = {"pid": pid, "start": start, "kind": "rx", "ifindex": int(ifindex),
                                         "ifname": ifname, "netns": ns, "queues": sorted(wanted)}
                if nk.is_virtual(nic):
                    entry["phys"] = {"netns": keys[0][0], "ifname": keys[0][1],
                                     "queues": [k[2] for k in keys]}
                reg["live"][str(bid)] = entry
            st.save_registry(reg, d)  # the cyclic cursor moved even on failure
            if not os.path.exists(st.nic_path(ifname, ns, d)):
                st.save_nic(nic, d)
        if failure is not None:
            raise failure
        b = EmulatedBinding(self, bid, int(ifindex), ifname, ns, "rx", tuple(sorted(wanted)), dmabuf)
        b.rx_keys = tuple(keys)
        assert b.pool is not None
        target = nic if not keys or (keys[0][0], keys[0][1]) == (ns, ifname) else \
            (st.read_nic(keys[0][1], keys[0][0], self.directory) or nic)
        b.pool.ring_size = int(target["rings"]["rx"])
        self.pools.add(b.pool)
        with self._lock:
            self._bindings[bid] = b
            for key in b.rx_keys:
                self._rx_by_queue[key] = b
        return b

    def _netmem_tx_dev(self, nic: dict[str, Any]) -> tuple[int, int, str] | None:
        """netdev_find_netmem_tx_dev (net/core/netdev-genl.c, netkit TX series):
        for a NETMEM_TX_NO_DMA device, the first physical device behind its
        leased RX queues (ascending) that is present and has netmem TX DMA."""
        for _q, ls in sorted(nk.leases(nic).items()):
            phys = st.read_nic(ls["ifname"], int(ls["netns"]), self.directory)
            if phys is not None and nk.netmem_tx(phys) == "dma":
                return int(ls["netns"]), int(ls["ifindex"]), str(ls["ifname"])
        return None

    def bind_tx(self, ifindex: int, dmabuf: DmaBuf) -> EmulatedBinding:
        """bind-tx ``dmabuf`` to the emulated NIC on ``ifindex``.

        Errors (netdev_nl_bind_tx_doit; bind-tx has no admin-perm flag, so no
        EPERM without CAP_NET_ADMIN, as the live kernel answers): unknown
        ifindex (ENODEV); netmem TX mode "none" (EOPNOTSUPP "Driver does not
        support netmem TX"); mode "no_dma" (a netkit device) with no leased
        queue of a DMA-capable device (EOPNOTSUPP "No DMA-capable device found
        for netmem TX"); then the dma-buf checks of :meth:`bind_rx` (EBADF,
        EINVAL, E2BIG). On a NO_DMA device the binding is made on the physical
        device behind the lease (``binding->dev``, its ``ifindex``/``ifname``)
        and remembers the virtual device (``binding->vdev``, :attr:`EmulatedBinding.vdev`):
        sendmsg accepts a route through either."""
        op = "bind-tx"
        ns, ifname, nic = self._nic_of(op, ifindex)
        mode = nk.netmem_tx(nic)
        if mode == "none":
            raise NetlinkError(errno.EOPNOTSUPP, op, "Driver does not support netmem TX",
                               hint="devmem TX needs a NIC with netmem TX (gve, mlx5, bnxt, fbnic)")
        dev = (ns, int(ifindex), ifname) if mode == "dma" else self._netmem_tx_dev(nic)
        if dev is None:
            raise NetlinkError(errno.EOPNOTSUPP, op, "No DMA-capable device found for netmem TX",
                               hint=f"{ifname} has netmem TX NO_DMA: lease it a queue of a physical "
                                    "devmem NIC first (devmemtcp lease)")
        self._check_dmabuf(op, dmabuf)
        pid, start = procs.me()
        vdev = None if dev[1:] == (int(ifindex), ifname) and dev[0] == ns else (ns, int(ifindex), ifname)
        with st.locked(self.directory) as d:
            reg = st.load_registry(d)
            bid = st.alloc_binding_id(reg)
            entry: dict[str, Any] = {"pid": pid, "start": start, "kind": "tx", "ifindex": dev[1],
                                     "ifname": dev[2], "netns": dev[0], "queues": []}
            if vdev is not None:
                entry["vdev"] = {"netns": vdev[0], "ifindex": vdev[1], "ifname": vdev[2]}
            reg["live"][str(bid)] = entry
            st.save_registry(reg, d)
        b = EmulatedBinding(self, bid, dev[1], dev[2], dev[0], "tx", (), dmabuf)
        b.vdev = vdev
        with self._lock:
            self._bindings[bid] = b
        return b

    def forget(self, b: EmulatedBinding) -> None:
        """``b`` was closed: its queues are free, its counters go to the NIC
        state file, its page pool goes once no frag of it is held."""
        if b.kind == "rx":
            self.flush_stats(only=b.id)
            for hook in list(self.on_close):
                hook(b)
        with self._lock:
            self._bindings.pop(b.id, None)
            for key in b.rx_keys:
                if self._rx_by_queue.get(key) is b:
                    del self._rx_by_queue[key]
        if b.kind == "rx":
            self.pools.retire(b.id)

    # -- stats -----------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters of this process's bindings: ``{"bindings": [{"id", "kind",
        "ifname", "queues", "pages", "free", "inflight", "queue_stats": {q:
        {alloc-fast, alloc-slow, alloc-empty, recycle-released-refcnt,
        rx-packets, rx-bytes}}}]}``; closed RX bindings whose frags are still
        held are included with ``"closed": true``."""
        out = []
        items = self.pools.items()
        with self._lock:
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

    def flush_stats(self, only: int | None = None) -> None:
        """Add this process's per-queue counters (of binding ``only``, else of
        every live RX binding) to each NIC's state file (``stats`` key:
        ``{queue: {counter: value}}``), for ``info`` in another process."""
        per_nic: dict[tuple[int, str], dict[str, dict[str, int]]] = {}
        with self._lock:
            live = [b for b in self._bindings.values() if b.kind == "rx" and (only is None or b.id == only)]
        for b in live:
            assert b.pool is not None
            if b.pool.stats:
                # the counters belong to the physical queues (a guest's are its leases')
                target = (b.rx_keys[0][0], b.rx_keys[0][1]) if b.rx_keys else (b.netns, b.ifname)
                nic_stats = per_nic.setdefault(target, {})
                nq = max(1, len(b.rx_keys))
                for q, qs in sorted(b.pool.stats.items()):
                    row = qs.as_dict()
                    row["inflight"] = b.pool.kernel_inflight(q, nq)
                    row["inflight-mem"] = row["inflight"] * PAGE_SIZE
                    row["binding"] = b.id
                    nic_stats[str(q)] = row
        if not per_nic:
            return
        try:
            with st.locked(self.directory) as d:
                for (ns, ifname), qstats in per_nic.items():
                    try:
                        nic = (st.load_nic(ifname, directory=d, ns=ns, queues=self.queues)
                               if ns == netns.inode() else st.read_nic(ifname, ns, d))
                    except DevmemError:
                        continue
                    if nic is None:
                        continue
                    nic.setdefault("stats", {}).update(qstats)
                    st.save_nic(nic, d)
        except OSError:
            pass


# ---------------------------------------------------------------------------
# checks shared by the binds
# ---------------------------------------------------------------------------
_CAP_NET_ADMIN = 12


def has_net_admin() -> bool:
    """CAP_NET_ADMIN in the calling thread's effective set (/proc/thread-self/status)."""
    try:
        with open("/proc/thread-self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def require_net_admin(op: str) -> None:
    """EPERM without CAP_NET_ADMIN: bind-rx and queue-create are
    GENL_ADMIN_PERM ops of the netdev family (Documentation/netlink/specs/netdev.yaml
    ``flags: [admin-perm]``; genetlink checks it before the doit runs). bind-tx
    is not (the live 6.18 binds or refuses it on its merits)."""
    if not has_net_admin():
        raise NetlinkError(errno.EPERM, op, hint="run as root or grant CAP_NET_ADMIN")


def is_dmabuf_or_memfd(fd: int) -> bool:
    """True for a dma-buf fd (``anon_inode:dmabuf`` / ``/dmabuf:``) or a memfd
    (``/memfd:``), by the target of /proc/self/fd/FD."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return target.startswith(("/memfd:", "/dmabuf:", "anon_inode:dmabuf")) or "dmabuf" in target


def _open_rxq(op: str, reg: dict[str, Any], directory: str, ns: int, ifname: str, nic: dict[str, Any],
              qid: int) -> tuple[NetlinkError | None, tuple[int, str, int] | None]:
    """__net_mp_open_rxq (net/core/netdev_rx_queue.c) for one queue, lease
    resolution of the netkit series included: a guest queue stands for the
    physical queue it leases (netif_get_rx_queue_lease_locked), checks run on
    the physical NIC. Returns (refusal, None) or (None, (netns, ifname, queue)
    of the physical queue). In the kernel's order: EBUSY "rx queue peered to a
    virtual netdev" (a leased queue bound on the physical device), EBUSY "rx
    queue is mapped to a virtual netdev" (a virtual device's queue with no
    lease), EINVAL "tcp-data-split is disabled", EINVAL "hds-thresh is not
    zero", EEXIST "unable to custom memory provider to device with XDP program
    attached", EEXIST "designated queue already memory provider bound", EBUSY
    "designated queue already in use by AF_XDP"."""
    target, tns, tname, tq = nic, ns, ifname, qid
    if nk.is_virtual(nic):
        ls = nk.phys_of(nic, qid)
        phys = st.read_nic(ls["ifname"], int(ls["netns"]), directory) if ls is not None else None
        if ls is None or phys is None:
            return NetlinkError(errno.EBUSY, op, "rx queue is mapped to a virtual netdev",
                                hint=f"queue {qid} of {ifname} has no lease: bind a queue leased from the "
                                     "physical NIC (devmemtcp lease; devmemtcp info shows leases)"), None
        target, tns, tname, tq = phys, int(ls["netns"]), str(ls["ifname"]), int(ls["queue"])
    elif qid in nk.leases(nic):
        guest = nk.leases(nic)[qid]
        return NetlinkError(errno.EBUSY, op, "rx queue peered to a virtual netdev",
                            hint=f"queue {qid} is leased to {guest['ifname']}: bind it there "
                                 "(inside the container), or pick another queue"), None
    rings = target["rings"]
    setup = f"devmemtcp setup {tname} --backend emulated"
    if rings["tcp_data_split"] != "enabled":
        return NetlinkError(errno.EINVAL, op, "tcp-data-split is disabled",
                            hint=f"enable header split on {tname}: {setup} --listen ADDR --port PORT "
                                 "(the emulated NIC's settings change through devmemtcp)"), None
    if rings["hds_thresh"]:
        return NetlinkError(errno.EINVAL, op, "hds-thresh is not zero",
                            hint=f"set hds-thresh 0 on {tname}: {setup} --listen ADDR --port PORT"), None
    caps = target.get("caps", {})
    if caps.get("xdp"):
        return NetlinkError(errno.EEXIST, op,
                            "unable to custom memory provider to device with XDP program attached",
                            hint=f"detach the XDP program from {tname}"), None
    bound = st.bound_queues(reg, tns, tname)
    if tq in bound:
        return NetlinkError(errno.EEXIST, op, "designated queue already memory provider bound",
                            hint=f"queue {tq} of {tname} is bound by binding {bound[tq]}; "
                                 "pick another queue or close that binding"), None
    if tq in [int(q) for q in caps.get("xsk", [])]:
        return NetlinkError(errno.EBUSY, op, "designated queue already in use by AF_XDP",
                            hint=f"close the AF_XDP socket on queue {tq} of {tname}"), None
    return None, (tns, tname, tq)


def _check_dma_devs(op: str, nic: dict[str, Any], queues: list[int]) -> None:
    """netdev_nl_get_dma_dev (net/core/netdev-genl.c, 6.18): every bound queue
    must have the same DMA device (a multi-PF NIC may have two), else
    EOPNOTSUPP "DMA device mismatch between queue A and B (multi-PF device?)"
    naming the first queue on another device and the one before it."""
    devs = [int(x) for x in nic.get("caps", {}).get("dma_devs", [])]
    if not devs:
        return
    prev: int | None = None
    for q in queues:
        dev = devs[q] if q < len(devs) else devs[-1]
        if prev is not None and dev != (devs[prev] if prev < len(devs) else devs[-1]):
            raise NetlinkError(errno.EOPNOTSUPP, op,
                               f"DMA device mismatch between queue {q} and {prev} (multi-PF device?)",
                               hint="bind queues of one PF (one DMA device) per binding")
        prev = q
