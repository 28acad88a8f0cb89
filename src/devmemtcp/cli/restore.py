"""``devmemtcp restore`` / ``teardown``: undo what setup (or a crashed run) changed.

Replays the undo journal ``/run/devmemtcp/IFNAME.json`` in reverse order:
the ntuple rule this tool inserted is deleted (only if the rule at its
location is still ours), the RSS table, header split, hds-thresh and the
channel count go back to their recorded values. Without IFNAME every journal
in the directory is replayed. A journal written in another network namespace
is replayed inside that namespace when ``ip netns`` knows it (or with
``--netns NAME``).

Exit status: 0 restored (or nothing to restore), 1 something could not be
undone (it stays in the journal; fix the cause and run restore again), 2 bad
input (e.g. the owning process is still running: it restores on exit).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from devmemtcp.cli import common
from devmemtcp.cli.setup import add_common
from devmemtcp.errors import DevmemError
from devmemtcp.nic import Journal, call_in_netns, journals, netns_id, restore

EXAMPLES = """\
examples:
  devmemtcp restore eth1             undo setup, or what a killed recv left behind
  devmemtcp restore                  replay every journal in /run/devmemtcp
  devmemtcp restore eth1 --json
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("ifname", nargs="?", metavar="IFNAME", help="interface (default: every journal)")
    parser.add_argument("--force", action="store_true",
                        help="replay even though the process that wrote the journal is still running")
    add_common(parser)


def _netns_named(inode: int) -> str | None:
    """The ``ip netns`` name whose namespace has inode ``inode``, if any."""
    base = Path("/run/netns")
    if not base.is_dir():
        return None
    for entry in sorted(base.iterdir()):
        try:
            if os.stat(entry).st_ino == inode:
                return entry.name
        except OSError:
            continue
    return None


def restore_one(ifname: str, journal_dir: Path, netns: str | None, force: bool) -> dict[str, Any]:
    """Replay one journal; returns ``{ifname, netns, done, failed, restored}``."""
    j = Journal(ifname, journal_dir)
    if not j.exists():
        return {"ifname": ifname, "netns": netns, "done": [], "failed": [], "restored": True,
                "note": "no journal: nothing to restore"}
    if netns is None:
        ns = Journal.load(j.path).meta.get("netns")
        here = netns_id()
        if isinstance(ns, int) and ns != here:
            netns = _netns_named(ns)
            if netns is None:
                raise DevmemError(
                    f"the journal for {ifname} belongs to network namespace net:[{ns}], which has no "
                    "ip-netns name (or is gone)",
                    f"run restore inside it (nsenter --net=/proc/PID/ns/net devmemtcp restore {ifname}); "
                    "if the namespace is gone its interfaces are too: delete the journal")
    if netns:
        result = call_in_netns(netns, restore, ifname, journal_dir=journal_dir, force=force)
    else:
        result = restore(ifname, journal_dir=journal_dir, force=force)
    return {"ifname": ifname, "netns": netns, "done": [list(x) for x in result.done],
            "failed": [list(x) for x in result.failed], "restored": result.ok}


def run(args: argparse.Namespace) -> int:
    names = [args.ifname] if args.ifname else [p.stem for p in journals(args.journal_dir)]
    reports = [restore_one(name, args.journal_dir, args.netns, args.force) for name in names]
    ok = all(r["restored"] for r in reports)
    if args.json:
        common.print_json({"restored": ok, "interfaces": reports})
    elif not reports:
        common.note(f"nothing to restore: no journals in {args.journal_dir}")
    else:
        for r in reports:
            rows: dict[str, Any] = {}
            for step, detail in r["done"]:
                rows[step] = detail
            for step, detail in r["failed"]:
                rows[f"{step} (FAILED)"] = detail
            if r.get("note"):
                rows["note"] = r["note"]
            common.print_summary(f"devmemtcp restore {r['ifname']}"
                                 + (f" (netns {r['netns']})" if r["netns"] else ""), rows)
    return 0 if ok else 1
