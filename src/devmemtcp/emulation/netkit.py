"""Emulated netkit devices and RX queue leasing (queue-create).

The netkit series gives a container a devmem data path: a physical NIC's RX
queue is *leased* to the netkit guest inside the container's namespace
(``queue-create``), bind-rx on the guest binds the leased physical queue, and
bind-tx on the guest (a NETMEM_TX_NO_DMA device) binds the physical device
behind the lease. This machine's kernel has neither netkit nor queue-create,
so the emulated NIC models them on ordinary veth pairs:

* an **emulated netkit pair** is a veth pair whose two ends are marked in
  their NIC state (:func:`make_netkit`): the *primary* in the host namespace
  and the *guest* in the container namespace, both virtual devices (no
  ``dev.parent``) with netmem TX mode NO_DMA and the queue management API
  (``netkit_queue_mgmt_ops``). The guest starts with one real RX queue out of
  ``numrxqueues`` (netkit's IFLA_NETKIT_NUM_RX_QUEUES), like
  ``NetDrvContEnv(rxqueues=2)`` of the drv-net nk_devmem.py selftest. The
  packets move over the veth; traffic for the container is routed from the
  physical device through the primary to the guest by plain forwarding.
* every other interface is an **emulated physical devmem NIC** (it has a
  ``dev.parent``), netmem TX mode DMA unless set otherwise.

:func:`queue_create` is ``netdev_nl_queue_create_doit`` (net/core/netdev-genl.c,
netkit series v5 "net: Implement netdev_nl_queue_create_doit") with its
checks in the kernel's order, errno values and extack texts:
``netdev_can_create_queue``, ``netdev_can_lease_queue``, the ERANGE queue id
check, ``netdev_queue_busy`` (net/core/netdev_queues.c), the
different-devices check, and netkit's ``netkit_queue_create``
(drivers/net/netkit.c: EOPNOTSUPP on the primary of a pair, EINVAL from
``netif_set_real_num_rx_queues`` past ``numrxqueues``). A lease is recorded on
both devices (``netdev_rx_queue_lease``: ``rxq_src->lease`` and
``rxq_dst->lease``) and shows in queue-get's lease nest on both sides.

Namespaces: the kernel looks both devices up in the requester's namespace;
here the request is made from the physical device's namespace and the guest
may live in another one (``guest_netns``), the layout a container has after
its guest was moved in. A lease ends when the netkit device goes
(``netdev_rx_queue_unlease`` runs only while the virtual device
unregisters): :func:`unlease` / :func:`delete_netkit`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator
from typing import Any

from devmemtcp import abi
from devmemtcp.emulation import state as st
from devmemtcp.errors import DevmemError, NetlinkError
from devmemtcp.host import netns

NETMEM_TX_MODES = ("none", "dma", "no_dma")  # enum netmem_tx_mode: NONE, DMA, NO_DMA
KINDS = ("physical", "netkit-primary", "netkit-guest")
DEFAULT_NUM_RX_QUEUES = 2
_OP = "queue-create"


# ---------------------------------------------------------------------------
# what a NIC state says
# ---------------------------------------------------------------------------
def kind(nic: dict[str, Any]) -> str:
    """"physical" (an emulated devmem NIC) or "netkit-primary" / "netkit-guest"."""
    return str(nic.get("kind", "physical"))


def is_virtual(nic: dict[str, Any]) -> bool:
    """True for a netkit device (the kernel's test: no ``dev->dev.parent``)."""
    return kind(nic) != "physical"


def netmem_tx(nic: dict[str, Any]) -> str:
    """The device's netmem TX mode: "dma", "no_dma" or "none"."""
    default = "no_dma" if is_virtual(nic) else "dma"
    return str(nic.get("caps", {}).get("netmem_tx", default))


def leases(nic: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """``{rx queue: lease}`` of a NIC state; a lease names the other side:
    ``{"ifname", "ifindex", "netns", "queue"}``."""
    return {int(q): dict(v) for q, v in (nic.get("leases") or {}).items()}


def phys_of(guest: dict[str, Any], queue: int) -> dict[str, Any] | None:
    """The physical queue behind ``queue`` of a netkit guest, or None."""
    return leases(guest).get(int(queue)) if is_virtual(guest) else None


def any_phys(guest: dict[str, Any]) -> dict[str, Any] | None:
    """The physical device behind a netkit guest's leases (all leases of one
    guest come from one device: queue-create refuses mixing), or None."""
    for q in sorted(leases(guest)):
        return leases(guest)[q]
    return None


# ---------------------------------------------------------------------------
# namespaces
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def _in(name: str | None) -> Iterator[None]:
    if name is None:
        yield
        return
    with netns.enter(name):
        yield


def _ns_path(ns: int) -> str | None:
    """A path opening the namespace with inode ``ns``: /run/netns/NAME
    (:func:`devmemtcp.host.netns.name_of`), else the init process's namespace
    when it is that one."""
    name = netns.name_of(ns)
    if name is not None:
        return os.path.join(abi.NETNS_RUN_DIR, name)
    with contextlib.suppress(OSError):
        if os.stat("/proc/1/ns/net").st_ino == ns:
            return "/proc/1/ns/net"
    return None


def peer_nsid(ns: int) -> int | None:
    """The netns id that the calling thread's namespace gives namespace ``ns``
    (what queue-get's lease nest reports as netns-id), None when it is this
    namespace or has no id."""
    if ns == netns.inode():
        return None
    path = _ns_path(ns)
    if path is None:
        return None
    try:
        from pyroute2 import IPRoute

        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with IPRoute() as ipr:
                reply = ipr.get_netnsid(fd=fd)
        finally:
            os.close(fd)
    except Exception:  # an id is informative only
        return None
    nsid = reply.get("nsid") if isinstance(reply, dict) else None
    if nsid is None or int(nsid) in (-1, (1 << 32) - 1):
        return None
    return int(nsid)


def lease_nest(lease: dict[str, Any]) -> dict[str, Any]:
    """queue-get's lease nest for a lease record: ``{"ifindex", "queue": {"id",
    "type"}, "netns_id"}`` (netns_id None when both devices share a namespace)."""
    return {"ifindex": int(lease["ifindex"]), "queue": {"id": int(lease["queue"]), "type": "rx"},
            "netns_id": peer_nsid(int(lease["netns"]))}


# ---------------------------------------------------------------------------
# making netkit devices
# ---------------------------------------------------------------------------
def _mark(ifname: str, directory: str | None, apply: Any) -> dict[str, Any]:
    ns = netns.inode()
    with st.locked(directory) as d:
        nic = st.load_nic(ifname, directory=d, ns=ns)
        apply(nic)
        st.save_nic(nic, d)
    return nic


def make_netkit(primary: str, guest: str, *, guest_netns: str | None = None,
                numrxqueues: int = DEFAULT_NUM_RX_QUEUES, directory: str | None = None) -> dict[str, Any]:
    """Mark the veth pair ``primary`` (calling thread's namespace) / ``guest``
    (namespace ``guest_netns``, default the same) as an emulated netkit pair.

    Both ends become virtual devices with netmem TX NO_DMA; the guest has one
    real RX queue of ``numrxqueues`` (1..16). Returns ``{"primary", "guest",
    "guest_netns", "numrxqueues"}``. DevmemError for an unknown interface."""
    if not 1 <= numrxqueues <= st.DEFAULT_MAX_QUEUES:
        raise DevmemError(f"numrxqueues {numrxqueues} is not in 1..{st.DEFAULT_MAX_QUEUES}",
                          "give the guest between 1 and 16 RX queues")

    def as_primary(nic: dict[str, Any]) -> None:
        nic["kind"] = "netkit-primary"
        nic["channels"] = {"combined": 1, "combined_max": 1}
        nic["rss"] = {"indir": [0] * st.RSS_TABLE_SIZE, "configured": False}
        nic.setdefault("caps", {})["netmem_tx"] = "no_dma"
        nic["caps"]["queue_mgmt"] = True
        nic["leases"] = {}

    def as_guest(nic: dict[str, Any]) -> None:
        nic["kind"] = "netkit-guest"
        nic["channels"] = {"combined": 1, "combined_max": int(numrxqueues)}
        nic["rss"] = {"indir": [0] * st.RSS_TABLE_SIZE, "configured": False}
        nic.setdefault("caps", {})["netmem_tx"] = "no_dma"
        nic["caps"]["queue_mgmt"] = True
        nic["leases"] = {}

    _mark(primary, directory, as_primary)
    with _in(guest_netns):
        _mark(guest, directory, as_guest)
    return {"primary": primary, "guest": guest, "guest_netns": guest_netns, "numrxqueues": numrxqueues}


# ---------------------------------------------------------------------------
# queue-create
# ---------------------------------------------------------------------------
def _ifname(ifindex: int) -> str | None:
    try:
        return socket.if_indextoname(int(ifindex))
    except OSError:
        return None


def _bound(reg: dict[str, Any], ns: int, ifname: str) -> dict[int, int]:
    return st.bound_queues(reg, ns, ifname)


def queue_create(guest_ifindex: int, phys_ifindex: int, phys_queue: int, *,
                 guest_netns: str | None = None, directory: str | None = None) -> int:
    """queue-create: lease RX queue ``phys_queue`` of the device ``phys_ifindex``
    (calling thread's namespace) to the netkit device ``guest_ifindex`` (in
    namespace ``guest_netns``, default the same); returns the new queue id on
    the guest.

    Raises NetlinkError (op "queue-create") as netdev_nl_queue_create_doit:
    EINVAL "Lease ifindex cannot be the same as queue creation ifindex";
    ENODEV for an unknown device; EINVAL "Device is not a virtual device" /
    "Device does not support queue creation" / "Device must have at least one
    real queue"; EINVAL "Lease device is a virtual device" / "Lease device does
    not support queue management operations"; ERANGE for a queue id at or past
    the physical device's RX queue count (bad attribute lease.queue.id);
    EBUSY "Lease device queue is already leased" / "Lease device queue in use
    by AF_XDP" / "Lease device queue in use by memory provider"; EOPNOTSUPP
    "Leasing multiple queues from different devices not supported"; the
    driver's error with "Device is unable to create a new queue" (EOPNOTSUPP
    on a netkit primary, EINVAL once every RX queue of the guest is real)."""
    phys_ns = netns.inode()
    with _in(guest_netns):
        guest_ns = netns.inode()
        guest_name = _ifname(guest_ifindex)
    if guest_ns == phys_ns and int(guest_ifindex) == int(phys_ifindex):
        raise NetlinkError(errno.EINVAL, _OP, "Lease ifindex cannot be the same as queue creation ifindex",
                           hint="name the netkit guest with --guest and the physical NIC with --phys")
    if guest_name is None:
        raise NetlinkError(errno.ENODEV, _OP, bad_attr="ifindex",
                           hint="the guest device is not in "
                                + (f"namespace {guest_netns}" if guest_netns else "this namespace"))
    with st.locked(directory) as d:
        with _in(guest_netns):
            guest = st.load_nic(guest_name, directory=d, ns=guest_ns)
        if not is_virtual(guest):
            raise NetlinkError(errno.EINVAL, _OP, "Device is not a virtual device",
                               hint=f"{guest_name} is a physical NIC: lease to a netkit guest "
                                    "(devmemtcp emulate netkit makes one on the emulated NIC)")
        if not guest.get("caps", {}).get("queue_mgmt", True):
            raise NetlinkError(errno.EINVAL, _OP, "Device does not support queue creation")
        if int(guest["channels"]["combined"]) < 1:
            raise NetlinkError(errno.EINVAL, _OP, "Device must have at least one real queue")
        phys_name = _ifname(phys_ifindex)
        if phys_name is None:
            raise NetlinkError(errno.ENODEV, _OP, bad_attr="lease.ifindex",
                               hint="the physical NIC is named in the namespace lease runs in")
        phys = st.load_nic(phys_name, directory=d, ns=phys_ns)
        if is_virtual(phys):
            raise NetlinkError(errno.EINVAL, _OP, "Lease device is a virtual device",
                               hint=f"{phys_name} is a netkit device: lease a queue of the physical NIC")
        if not phys.get("caps", {}).get("queue_mgmt", True):
            raise NetlinkError(errno.EINVAL, _OP, "Lease device does not support queue management operations",
                               hint=f"{phys_name}'s driver cannot restart queues (no queue_mgmt_ops)")
        nrx = int(phys["channels"]["combined"])
        if not 0 <= int(phys_queue) < nrx:
            raise NetlinkError(errno.ERANGE, _OP, bad_attr="lease.queue.id",
                               hint=f"{phys_name} has RX queues 0..{nrx - 1}")
        reg = st.load_registry(d)
        if int(phys_queue) in leases(phys):
            raise NetlinkError(errno.EBUSY, _OP, "Lease device queue is already leased",
                               hint="lease another queue; a lease ends when its netkit device is deleted")
        if int(phys_queue) in [int(q) for q in phys.get("caps", {}).get("xsk", [])]:
            raise NetlinkError(errno.EBUSY, _OP, "Lease device queue in use by AF_XDP",
                               hint="close the AF_XDP socket on that queue, or lease another queue")
        if int(phys_queue) in _bound(reg, phys_ns, phys_name):
            raise NetlinkError(errno.EBUSY, _OP, "Lease device queue in use by memory provider",
                               hint="close the devmem binding of that queue first")
        last = int(guest["channels"]["combined"]) - 1
        prev = leases(guest).get(last)
        if prev is not None and (int(prev["netns"]), str(prev["ifname"])) != (phys_ns, phys_name):
            raise NetlinkError(errno.EOPNOTSUPP, _OP,
                               "Leasing multiple queues from different devices not supported",
                               hint=f"{guest_name} already has a queue of {prev['ifname']}: "
                                    "lease from that device, or use another netkit guest")
        # netkit_queue_create (drivers/net/netkit.c)
        if kind(guest) == "netkit-primary":
            raise NetlinkError(errno.EOPNOTSUPP, _OP, "Device is unable to create a new queue",
                               hint="lease to the guest end of the netkit pair, not its primary")
        new_q = int(guest["channels"]["combined"])
        if new_q + 1 > int(guest["channels"]["combined_max"]):
            raise NetlinkError(errno.EINVAL, _OP, "Device is unable to create a new queue",
                               hint=f"{guest_name} has all of its {new_q} RX queues "
                                    "(create the netkit pair with more numrxqueues)")
        guest["channels"]["combined"] = new_q + 1
        guest.setdefault("leases", {})[str(new_q)] = {
            "ifname": phys_name, "ifindex": int(phys_ifindex), "netns": phys_ns, "queue": int(phys_queue)}
        phys.setdefault("leases", {})[str(int(phys_queue))] = {
            "ifname": guest_name, "ifindex": int(guest_ifindex), "netns": guest_ns, "queue": new_q}
        st.save_nic(phys, d)
        with _in(guest_netns):
            st.save_nic(guest, d)
    return new_q


def unlease(guest: str, *, guest_netns: str | None = None,
            directory: str | None = None) -> list[dict[str, Any]]:
    """Undo every lease of the netkit guest ``guest`` (``netdev_rx_queue_unlease``,
    run when the netkit device unregisters): the physical queues are free
    again and the guest is back to one real RX queue. Returns the leases
    undone (``{"guest_queue", "phys", "phys_queue"}``). A physical device
    whose state is gone (it was deleted) is skipped."""
    done: list[dict[str, Any]] = []
    with st.locked(directory) as d:
        with _in(guest_netns):
            g = st.load_nic(guest, directory=d)
        for gq, ls in sorted(leases(g).items()):
            p = st.read_nic(ls["ifname"], int(ls["netns"]), d)
            if p is not None:
                p.get("leases", {}).pop(str(int(ls["queue"])), None)
                st.save_nic(p, d)
            done.append({"guest_queue": gq, "phys": ls["ifname"], "phys_queue": int(ls["queue"])})
        if done:
            g["leases"] = {}
            g["channels"]["combined"] = 1
            with _in(guest_netns):
                st.save_nic(g, d)
    return done


def unlease_queue(phys: str, phys_queue: int, *, directory: str | None = None) -> dict[str, Any] | None:
    """End the lease of RX queue ``phys_queue`` of ``phys`` (calling thread's
    namespace); returns the guest side (``{"ifname", "ifindex", "netns",
    "queue"}``) or None when the queue is not leased. The guest's queue goes
    (its real RX queue count drops) when it was its last one."""
    with st.locked(directory) as d:
        p = st.load_nic(phys, directory=d, ns=netns.inode())
        ls = p.get("leases", {}).pop(str(int(phys_queue)), None)
        if ls is None:
            return None
        st.save_nic(p, d)
        g = st.read_nic(str(ls["ifname"]), int(ls["netns"]), d)
        if g is not None:
            g.get("leases", {}).pop(str(int(ls["queue"])), None)
            while int(g["channels"]["combined"]) > 1 and \
                    str(int(g["channels"]["combined"]) - 1) not in g.get("leases", {}):
                g["channels"]["combined"] = int(g["channels"]["combined"]) - 1
            st.save_nic(g, d)
    return dict(ls)
