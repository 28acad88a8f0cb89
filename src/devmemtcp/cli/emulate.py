"""``devmemtcp emulate``: shape the emulated devmem NIC (no kernel equivalent).

On a machine without a devmem NIC or netkit, the emulated NIC stands in for
both. This command sets what a driver would decide:

* ``emulate netkit --primary P --guest G [--guest-netns NS]``: mark a veth
  pair as an emulated netkit pair (primary in this namespace, guest in NS;
  both virtual, netmem TX NO_DMA; the guest starts with 1 of
  ``--numrxqueues`` RX queues). ``--delete`` ends the guest's leases, as
  deleting a netkit device does (``netdev_rx_queue_unlease``).
* ``emulate nic IF [--netmem-tx dma|no_dma|none] [--queue-mgmt on|off]
  [--xdp on|off] [--xsk Q,...] [--frags driver|page] [--rx-buf-len N]``: the
  driver's capabilities (netmem TX mode, queue management API, an attached
  XDP program, AF_XDP sockets on queues, RX buffer placement and size).
  Without options it prints them.

``--netns NAME`` runs the command inside that namespace (``ip netns``).
Exit status: 0 done, 2 bad input (unknown interface or namespace).
"""

from __future__ import annotations

import argparse
from typing import Any

from devmemtcp.cli import common
from devmemtcp.host import netns

EXAMPLES = """\
examples:
  devmemtcp emulate netkit --netns host --primary nk-host --guest nk-ctr --guest-netns ctr
  devmemtcp emulate nic eth-none --netns host --netmem-tx none
  devmemtcp emulate nic eth-phys --netns host --json
  devmemtcp emulate netkit --netns host --guest nk-ctr --guest-netns ctr --delete
"""


def _onoff(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"{text!r}: use on or off")
    return text == "on"


def _queues(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use queue ids separated by commas, e.g. 2,3") from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    nkp = sub.add_parser("netkit", help="mark a veth pair as an emulated netkit pair (or delete its leases)")
    nkp.add_argument("--primary", metavar="IF", help="the primary end (this namespace)")
    nkp.add_argument("--guest", required=True, metavar="IF", help="the guest end")
    nkp.add_argument("--guest-netns", metavar="NAME", help="namespace of the guest (default: this one)")
    nkp.add_argument("--numrxqueues", type=common.positive_int, default=2, metavar="N",
                     help="RX queues the guest can have (1 real + leases; default 2, as nk_devmem.py)")
    nkp.add_argument("--delete", action="store_true",
                     help="end every lease of the guest (what deleting the netkit device does)")
    nic = sub.add_parser("nic", help="set or show the emulated driver's capabilities")
    nic.add_argument("ifname", metavar="IF")
    nic.add_argument("--netmem-tx", choices=("dma", "no_dma", "none"), help="netmem TX mode")
    nic.add_argument("--queue-mgmt", type=_onoff, metavar="on|off", help="queue management API")
    nic.add_argument("--xdp", type=_onoff, metavar="on|off", help="an XDP program is attached")
    nic.add_argument("--xsk", type=_queues, metavar="Q,...",
                     help="RX queues with AF_XDP sockets ('' for none)")
    nic.add_argument("--frags", choices=("driver", "page"),
                     help="RX buffer placement: driver (a real NIC's: MSS-sized frags packed in rx-buf-len "
                     "buffers; default off lo) or page (whole 4096-byte frags; lo's default)")
    nic.add_argument("--rx-buf-len", type=common.positive_int, metavar="BYTES",
                     help="the driver's RX buffer size (a divisor of 4096; default 4096)")
    nic.add_argument("--kernel", metavar="MAJOR.MINOR",
                     help="the kernel version the NIC presents (default 6.18; 6.17: EFAULT for a too-small "
                     "control buffer)")
    nic.add_argument("--dma-devs", type=_queues, metavar="D,...",
                     help="DMA device of each RX queue (a multi-PF NIC), e.g. 0,0,1,1")
    for p in (nkp, nic):
        p.add_argument("--netns", metavar="NAME", help="run inside network namespace NAME")
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _netkit(args: argparse.Namespace) -> dict[str, Any]:
    from devmemtcp.emulation import netkit

    if args.delete:
        done = netkit.unlease(args.guest, guest_netns=args.guest_netns)
        return {"guest": args.guest, "guest_netns": args.guest_netns, "unleased": done}
    if not args.primary:
        raise common.fail("emulate netkit needs --primary IF (or --delete)",
                          "name both ends of the veth pair: --primary IF --guest IF")
    return netkit.make_netkit(args.primary, args.guest, guest_netns=args.guest_netns,
                              numrxqueues=args.numrxqueues)


def _nic(args: argparse.Namespace) -> dict[str, Any]:
    from devmemtcp.emulation.nic import EmulatedNicControl

    nic = EmulatedNicControl(args.ifname)
    knobs = {"netmem_tx": args.netmem_tx, "queue_mgmt": args.queue_mgmt, "xdp": args.xdp, "xsk": args.xsk,
             "frags": args.frags, "rx_buf_len": args.rx_buf_len, "kernel": args.kernel,
             "dma_devs": args.dma_devs}
    if any(v is not None for v in knobs.values()):
        try:
            nic.set_capabilities(**knobs)
        except ValueError as exc:
            raise common.fail(str(exc), "see devmemtcp emulate nic --help") from None
    return {"ifname": args.ifname, **nic.capabilities()}


def run(args: argparse.Namespace) -> int:
    fn = _netkit if args.what == "netkit" else _nic
    with netns.maybe_enter(args.netns):
        report = fn(args)
    if args.json:
        common.print_json(report)
    else:
        rows = {k: (", ".join(map(str, v)) if isinstance(v, list) and not (v and isinstance(v[0], dict))
                    else v) for k, v in report.items()}
        common.print_summary(f"devmemtcp emulate {args.what}", rows)
    return 0
