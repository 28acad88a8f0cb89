"""``devmemtcp setup``: configure a NIC for a devmem flow and leave it configured.

The same steps as ``recv`` runs for itself (header split on, hds-thresh 0,
RSS spread over the queues below the devmem queues, an ntuple rule steering
the flow to the first devmem queue, optionally a channel count), recorded in
the undo journal ``/run/devmemtcp/IFNAME.json`` and kept there: run the
workload with ``--no-nic-config``, then ``devmemtcp restore IFNAME``. The
dma-buf binding is not part of setup: a binding lives as long as the process
that made it, so each ``recv`` binds its own.

Exit status: 0 configured, 2 a step was refused (everything already done is
undone first, and the journal removed).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from devmemtcp.backend import open_backend
from devmemtcp.cli import common
from devmemtcp.errors import DevmemError
from devmemtcp.host import netns
from devmemtcp.setup import STEPS, NicSetup

EXAMPLES = """\
examples:
  devmemtcp setup eth1 --listen 192.0.2.1 --port 5201 --queues 15:1
  devmemtcp setup eth1 --listen 2001:db8::1 --port 5201 --peer 2001:db8::2 --queues 8:2 --json
  devmemtcp recv --listen 192.0.2.1 --port 5201 --ifname eth1 --queues 15:1 --no-nic-config
  devmemtcp restore eth1
"""



def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("ifname", type=common.ifname_arg, metavar="IFNAME", help="the devmem NIC")
    parser.add_argument("--listen", required=True, type=common.ip_arg, metavar="ADDR",
                        help="local address the flow is sent to (the rule's destination IP)")
    parser.add_argument("--port", required=True, type=common.peer_port_arg, metavar="PORT",
                        help="local TCP port of the flow (1-65535)")
    parser.add_argument("--peer", type=common.ip_arg, metavar="ADDR",
                        help="the sender's address (5-tuple rule; default 3-tuple)")
    parser.add_argument("--peer-port", type=common.peer_port_arg, metavar="PORT",
                        help="the sender's source port")
    parser.add_argument("--queues", type=common.parse_queues, metavar="START:COUNT",
                        help="devmem RX queues (default: the last RX queue)")
    parser.add_argument("--channels", type=common.positive_int, metavar="N",
                        help="set the RX (or combined) channel count first")
    parser.add_argument("--skip", action="append", default=[], choices=("rings", "rss", "rule"),
                        help="leave out a step (repeatable)")
    parser.add_argument("--backend", choices=("kernel", "emulated"), default="kernel",
                        help="kernel (default): the real NIC; emulated: the software devmem NIC")
    common.add_journal_args(parser)


def setup_nic(args: argparse.Namespace) -> dict[str, Any]:
    """Run the steps and keep them; returns the JSON-able report."""
    backend, _reason = open_backend(args.backend)
    queues = args.queues
    if queues is None:
        n = backend.nic(args.ifname).rx_queue_count() if args.channels is None else args.channels
        queues = (n - 1, 1)
    steps = [s for s in STEPS if s != "bind" and s not in args.skip and (s != "channels" or args.channels)]
    flow = (args.listen, args.port, args.peer, args.peer_port)
    setup = NicSetup(backend, args.ifname, queues=queues, flow=flow, journal_dir=args.journal_dir,
                     channels=args.channels, steps=steps, lock_timeout=args.lock_timeout)
    setup.apply()
    journal = setup.keep()
    return {"ifname": args.ifname, "backend": backend.name, "queues": list(queues),
            "netns": args.netns, "journal": str(journal) if journal else None,
            "changed": any(r.get("changed") for r in setup.report), "steps": setup.report}


def run(args: argparse.Namespace) -> int:
    if args.peer_port is not None and args.peer is None:
        raise DevmemError("--peer-port needs --peer", "give the sender's address with --peer ADDR")
    report = netns.run_in(args.netns, setup_nic, args) if args.netns else setup_nic(args)
    if args.json:
        common.print_json(report)
        return 0
    rows: dict[str, Any] = {"interface": args.ifname, "backend": report["backend"],
                            "queues": f"{report['queues'][0]}..{sum(report['queues']) - 1}"}
    for step in report["steps"]:
        detail = "changed" if step.get("changed") else "already set"
        if step["step"] == "rule" and step.get("location") is not None:
            detail += f" (location {step['location']})"
        rows[step["step"]] = detail
    rows["journal"] = report["journal"] or "- (nothing changed)"
    common.print_summary(f"devmemtcp setup {args.ifname}", rows)
    if report["journal"]:
        print(f"undo with: devmemtcp restore {args.ifname}"
              + (f" --netns {args.netns}" if args.netns else "")
              + (f" --journal-dir {args.journal_dir}" if args.journal_dir else ""),
              file=sys.stderr)
    return 0
