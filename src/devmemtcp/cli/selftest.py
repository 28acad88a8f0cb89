"""``devmemtcp selftest``: qualify a NIC for devmem TCP (drv-net style cases).

Runs the cases of :mod:`devmemtcp.selftest` (bind refusals, bind success,
channel shrink below a bound queue, validated RX and TX streams, 3-byte TX
chunks, header-split sweep 1..8192 bytes, every token returned, NIC restored)
and prints one line per case: pass, fail with the reason, or skip with the
reason (on the kernel backend: doctor's finding that makes the case
impossible on this NIC).

Exit status: 0 no case failed, 1 a case failed, 2 bad input or environment.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from devmemtcp.cli import common
from devmemtcp.selftest import Selftest, run_selftest
from devmemtcp.selftest.catalogue import NETKIT_CASES
from devmemtcp.setup import DEFAULT_JOURNAL_DIR

EXAMPLES = """\
examples:
  devmemtcp selftest --ifname eth1                      the real NIC (kernel backend when doctor agrees)
  devmemtcp selftest --ifname lo --backend emulated --json
  devmemtcp selftest --ifname veth0 --netns ns-a --peer-netns ns-b --backend emulated
  devmemtcp selftest --container --backend emulated     netkit: lease, bind through it, nk_devmem cases
"""

STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("--ifname", type=common.ifname_arg, metavar="IF",
                        help="the NIC to qualify (not with --container)")
    parser.add_argument("--container", action="store_true",
                        help="the netkit container cases (nk_devmem.py): queue leasing, bind through a "
                        "leased queue, netmem TX modes, RX/TX/TX-chunks/hds sweep in a container namespace "
                        "(namespaces made and removed by the run; needs root)")
    parser.add_argument("--backend", choices=("auto", "kernel", "emulated"), default="auto",
                        help="auto (default): kernel when doctor finds devmem RX possible, else emulated")
    parser.add_argument("--netns", type=common.netns_arg, metavar="NAME",
                        help="run inside network namespace NAME")
    parser.add_argument("--peer-netns", type=common.netns_arg, metavar="NAME",
                        help="namespace of the traffic peer (the other end of a veth); not needed on lo")
    parser.add_argument("--memory", choices=("host", "udmabuf"),
                        help="dma-buf provider (default: udmabuf for kernel, host for emulated)")
    parser.add_argument("--bytes", type=common.positive_size, default=4 << 20, metavar="N",
                        help="bytes per stream case (default 4M)")
    parser.add_argument("--case", action="append", metavar="NAME",
                        choices=[name for name, _d, _m in Selftest.CASES] + [c.name for c in NETKIT_CASES],
                        help="run only this case (repeatable; nic-restored always runs)")
    parser.add_argument("--journal-dir", type=Path, default=None, metavar="DIR",
                        help="undo journal directory "
                        f"(default $DEVMEMTCP_JOURNAL_DIR or {DEFAULT_JOURNAL_DIR})")
    common.add_output_args(parser, verbose=True)


def run(args: argparse.Namespace) -> int:
    err = Console(file=sys.stderr)

    def progress(case: object) -> None:
        if not args.json:
            status = getattr(case, "status", "")
            err.print(f"  {getattr(case, 'name', '')}: [{STYLE.get(status, '')}]{status}[/]")

    if args.container:
        from devmemtcp.selftest.container import run_container_selftest

        report = run_container_selftest(backend=args.backend, nbytes=args.bytes, only=args.case,
                                        on_case=progress)
        args.ifname = "--container"
    elif not args.ifname:
        raise common.fail("the following arguments are required: --ifname (or --container)",
                          "name the NIC to qualify, e.g. --ifname eth1, or run the netkit cases with "
                          "--container")
    else:
        report = run_selftest(args.ifname, netns=args.netns, only=args.case, backend=args.backend,
                              peer_netns=args.peer_netns, memory=args.memory, nbytes=args.bytes,
                              journal_dir=args.journal_dir, on_case=progress)
    if args.json:
        common.print_json(report.to_json())
        return 0 if report.ok else 1
    table = Table(title=f"devmemtcp selftest {args.ifname} (backend {report.backend})", title_justify="left")
    table.add_column("case", style="bold")
    table.add_column("result")
    table.add_column("reason / details")
    for c in report.cases:
        detail = c.reason or ", ".join(f"{k}={v}" for k, v in c.details.items())
        table.add_row(c.name, f"[{STYLE[c.status]}]{c.status}[/]", detail)
    Console().print(table)
    counts = report.counts()
    print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    print(common.backend_line(report.backend, report.backend_reason, ifname=args.ifname,
                              verbose=args.verbose))
    return 0 if report.ok else 1
