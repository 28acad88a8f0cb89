"""``devmemtcp lease``: lease a physical RX queue to a netkit guest (queue-create).

Container mode: the host owns the devmem NIC, configures it (``devmemtcp
setup``) and leases one of its RX queues to the netkit device of a container;
inside the container ``devmemtcp recv --no-nic-config`` binds the leased queue
(bind-rx on the guest binds the physical queue). queue-create is a netdev
generic-netlink op of Linux 7.1 (Documentation/netlink/specs/netdev.yaml);
older kernels do not list it, and this command says so.

The physical device is looked up in the current network namespace; with
``--netns NAME`` the guest device is looked up in namespace NAME and the request
is sent from there, with the lease's netns-id naming the current namespace as
NAME sees it (an id ``ip netns`` assigns when a device moves between them).

With ``--backend emulated`` the emulated NIC answers (the physical NIC an
emulated devmem NIC, the guest an emulated netkit guest made with
``devmemtcp emulate netkit``): queue-create with the kernel's checks, errno
values and extack texts (:func:`devmemtcp.emulation.netkit.queue_create`),
the guest looked up in ``--netns NAME``. The lease is journaled in the
physical NIC's undo journal: ``devmemtcp restore PHYS`` ends it, and so does
deleting the netkit device (``devmemtcp emulate netkit --delete``).

Exit status: 0 leased, 2 refused (the kernel's errno and message) or no such op.
"""

from __future__ import annotations

import argparse
import os
import platform
from typing import Any

from devmemtcp.cli import common
from devmemtcp.errors import DevmemError
from devmemtcp.host import ifaces
from devmemtcp.host import netns as host_netns

QUEUE_CREATE = "queue-create"
UNASSIGNED_NSID = (1 << 32) - 1  # NETNSA_NSID_NOT_ASSIGNED (-1) as pyroute2 reports it

EXAMPLES = """\
examples:
  devmemtcp lease --guest nk0 --phys eth1 --queue 15
  devmemtcp lease --guest nk-guest --phys eth1 --queue 15 --netns ctr1 --json
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("--guest", required=True, type=common.ifname_arg, metavar="IF",
                        help="the netkit guest device")
    parser.add_argument("--phys", required=True, type=common.ifname_arg, metavar="IF",
                        help="the physical devmem NIC")
    parser.add_argument("--queue", required=True, type=common.nonneg_int, metavar="N",
                        help="the physical RX queue to lease (>= 0)")
    parser.add_argument("--netns", type=common.netns_arg, metavar="NAME",
                        help="network namespace of the guest device")
    parser.add_argument("--backend", choices=("kernel", "emulated"), default="kernel",
                        help="kernel (default): the kernel's queue-create (Linux 7.1); emulated: the "
                        "emulated NIC and netkit pair")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def check_queue_create() -> None:
    """DevmemError unless this kernel's netdev family lists queue-create (Linux 7.1+)."""
    from devmemtcp.netlink.netdev import NetdevClient

    with NetdevClient() as client:
        ops = client.ops()
    if QUEUE_CREATE not in ops:
        raise DevmemError(
            f"this kernel ({platform.release()}) has no netdev {QUEUE_CREATE} op: "
            "queue leasing to netkit needs Linux 7.1",
            "upgrade the host kernel to 7.1 or newer; until then run the devmem workload in the host "
            "namespace (devmemtcp recv --ifname PHYS)")


def _peer_nsid(host_ns_fd: int) -> int:
    """The id, in the calling thread's namespace, of the namespace behind ``host_ns_fd``."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        reply = ipr.get_netnsid(fd=host_ns_fd)
    nsid = reply.get("nsid") if isinstance(reply, dict) else None
    if nsid is None or int(nsid) in (UNASSIGNED_NSID, -1):
        raise DevmemError("the guest's namespace has no id for the host namespace",
                          "assign one: ip -n GUESTNS netns set HOSTNS_NAME auto "
                          "(or move a device between them)")
    return int(nsid)


def lease(guest: str, phys: str, queue: int, netns: str | None = None) -> dict[str, Any]:
    """queue-create: lease RX queue ``queue`` of ``phys`` to ``guest``; returns the report
    (``guest_queue`` is the new queue id on the guest). Raises DevmemError/NetlinkError."""
    from devmemtcp.netlink.netdev import NetdevClient

    phys_ifindex = ifaces.ifindex(phys)  # a misspelt name first: it is the user's to fix
    check_queue_create()
    if netns is None:
        guest_ifindex = ifaces.ifindex(guest)
        with NetdevClient() as client:
            qid = client.queue_create(guest_ifindex, phys_ifindex, queue)
        return {"guest": guest, "guest_ifindex": guest_ifindex, "guest_queue": qid, "phys": phys,
                "phys_ifindex": phys_ifindex, "phys_queue": queue, "netns": None}
    host_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        def in_guest() -> dict[str, Any]:
            guest_ifindex = ifaces.ifindex(guest)
            nsid = _peer_nsid(host_fd)
            with NetdevClient() as client:
                qid = client.queue_create(guest_ifindex, phys_ifindex, queue, netns_id=nsid)
            return {"guest": guest, "guest_ifindex": guest_ifindex, "guest_queue": qid, "phys": phys,
                    "phys_ifindex": phys_ifindex, "phys_queue": queue, "netns": netns, "netns_id": nsid}
        return host_netns.run_in(netns, in_guest)
    finally:
        os.close(host_fd)


def lease_emulated(guest: str, phys: str, queue: int, netns: str | None = None) -> dict[str, Any]:
    """queue-create on the emulated NIC (see the module docstring); the same
    report as :func:`lease`. Raises DevmemError/NetlinkError."""
    from devmemtcp.backend.emulated import EmulatedBackend
    phys_ifindex = ifaces.ifindex(phys)
    with host_netns.maybe_enter(netns):
        guest_ifindex = ifaces.ifindex(guest)
    from devmemtcp.setup.lease import LeaseEntry, journal_lease

    with EmulatedBackend() as be:
        qid = be.queue_create(guest_ifindex, phys_ifindex, queue, guest_netns=netns)
    path = journal_lease(phys, phys_ifindex, LeaseEntry(guest=guest, guest_queue=qid, phys_queue=queue,
                                                       guest_netns=netns), "emulated")
    return {"guest": guest, "guest_ifindex": guest_ifindex, "guest_queue": qid, "phys": phys,
            "phys_ifindex": phys_ifindex, "phys_queue": queue, "netns": netns, "backend": "emulated",
            "journal": str(path)}


def run(args: argparse.Namespace) -> int:
    if args.queue < 0:
        raise DevmemError(f"bad queue {args.queue}", "give a physical RX queue id >= 0")
    if args.backend == "emulated":
        report = lease_emulated(args.guest, args.phys, args.queue, args.netns)
    else:
        report = lease(args.guest, args.phys, args.queue, args.netns)
    if args.json:
        common.print_json(report)
    else:
        common.print_summary("devmemtcp lease", {
            "guest": f"{args.guest} (queue {report['guest_queue']})",
            "physical": f"{args.phys} (queue {args.queue})",
            "netns": args.netns or "-"})
    return 0
