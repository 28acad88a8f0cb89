"""``devmemtcp doctor [IFNAME] [--json] [--netns NAME]``: can this NIC do devmem TCP?

Runs :func:`devmemtcp.doctor.diagnose` and prints each prerequisite as
pass / fail / unknown with what was found and how to fix it. ``--json``
prints {"ifname", "rx_supported", "tx_supported", "checks": [{"name",
"status", "detail", "fix"}]}. Exit status: 0 when devmem RX is possible on
the interface, 1 when it is not, 2 for bad input (unknown interface or
namespace, no permission).
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from devmemtcp.cli import common
from devmemtcp.doctor import DoctorReport, default_ifname, diagnose
from devmemtcp.host import netns

_STYLE = {"pass": "green", "fail": "red", "unknown": "yellow"}


EXAMPLES = """\
examples:
  devmemtcp doctor                     the interface of the default route
  devmemtcp doctor eth1                every devmem RX/TX prerequisite of eth1, with the fix for each
  devmemtcp doctor lo --json           why lo cannot do devmem, as JSON
  devmemtcp doctor veth0 --netns ns-a  an interface inside network namespace ns-a
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("ifname", nargs="?", type=common.ifname_arg, metavar="IFNAME",
                        help="interface to check (default: the one with the default route)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--netns", type=common.netns_arg, metavar="NAME",
                        help="check an interface inside network namespace NAME")


def render(report: DoctorReport, console: Console) -> None:
    table = Table(title=f"devmem prerequisites of {report.ifname}", title_justify="left", show_lines=True)
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    for c in report.checks:
        table.add_row(c.name, f"[{_STYLE[c.status]}]{c.status}[/]", c.detail, c.fix or "")
    console.print(table)
    rx = "[green]possible[/]" if report.rx_supported else "[red]not possible[/]"
    tx = "[green]possible[/]" if report.tx_supported else "[red]not possible[/]"
    console.print(f"devmem RX on {report.ifname}: {rx}; devmem TX: {tx}")
    if not report.rx_supported:
        blocking = [c for c in report.checks if c.status == "fail"
                    and c.name in ("queue-management-api", "kernel-bind-rx")]
        for c in blocking:
            console.print(f"why: {c.detail}", markup=False)


def run(args: argparse.Namespace) -> int:
    with netns.maybe_enter(args.netns):
        report = diagnose(args.ifname or default_ifname())
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(report, Console() if sys.stdout.isatty() else Console(width=160))
    return 0 if report.rx_supported else 1
