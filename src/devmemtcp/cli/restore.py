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
from pathlib import Path
from typing import Any

from devmemtcp.cli import common
from devmemtcp.cli.setup import add_common
from devmemtcp.errors import DevmemError
from devmemtcp.host import netns as host_netns
from devmemtcp.setup import Journal, default_journal_dir, journal_name, journals, restore

EXAMPLES = """\
examples:
  devmemtcp restore eth1             undo setup, or what a killed recv left behind
  devmemtcp restore                  replay every journal in /run/devmemtcp
  devmemtcp restore eth1 --json
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("ifname", nargs="?", type=common.ifname_arg, metavar="IFNAME",
                        help="interface (default: every journal)")
    parser.add_argument("--force", action="store_true",
                        help="replay even though the process that wrote the journal is still running")
    add_common(parser)


def restore_one(path: Path, netns: str | None, force: bool) -> dict[str, Any]:
    """Replay the journal at ``path`` in its namespace; returns ``{ifname, netns,
    journal, done, failed, restored}``."""
    j = Journal.load(path)
    ifname = j.ifname
    if netns is None:
        ns = j.meta.get("netns")
        if isinstance(ns, int) and ns != host_netns.inode():
            netns = host_netns.name_of(ns)
            if netns is None:
                raise DevmemError(
                    f"the journal {path} belongs to network namespace net:[{ns}], which has no "
                    "ip-netns name (or is gone)",
                    f"run restore inside it (nsenter --net=/proc/PID/ns/net devmemtcp restore {ifname}); "
                    "if the namespace is gone its interfaces are too: delete the journal")
    if netns:
        result = host_netns.run_in(netns, restore, ifname, journal_dir=path.parent, force=force)
    else:
        result = restore(ifname, journal_dir=path.parent, force=force)
    return {"ifname": ifname, "netns": netns, "journal": str(path), "done": [list(x) for x in result.done],
            "failed": [list(x) for x in result.failed], "restored": result.ok}


def run(args: argparse.Namespace) -> int:
    paths = journals(args.journal_dir, args.ifname)
    if args.netns:  # only the journals written in that namespace
        inode = host_netns.run_in(args.netns, host_netns.inode)
        paths = [p for p in paths if p.name == journal_name(p.stem.split("@")[0], inode)]
    reports = [restore_one(p, args.netns, args.force) for p in paths]
    ok = all(r["restored"] for r in reports)
    if args.json:
        common.print_json({"restored": ok, "interfaces": reports})
    elif not reports:
        what = f"for {args.ifname} " if args.ifname else ""
        common.note(f"nothing to restore: no journals {what}in {args.journal_dir or default_journal_dir()}")
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
