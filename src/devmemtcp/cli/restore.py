"""``devmemtcp restore`` / ``teardown``: undo what setup (or a crashed run) changed.

Replays the undo journal ``/run/devmemtcp/IFNAME.json`` in reverse order:
the ntuple rule this tool inserted is deleted (only if the rule at its
location is still ours), the RSS table, header split, hds-thresh and the
channel count go back to their recorded values. Without IFNAME every journal
in the directory is replayed. A journal written in another network namespace
is replayed inside that namespace when ``ip netns`` knows it (or with
``--netns NAME``).

Each journal is replayed on its own: one that does not load is set aside
into ``corrupt/``, one whose network namespace is gone (told by netns
cookie) into ``stale/``, and the others are still replayed. "restored" is
true only for journals whose changes were actually put back.

Exit status: 0 restored (or nothing to restore), 1 something could not be
undone (it stays in the journal; fix the cause and run restore again), 2 a
journal could not be replayed (corrupt, another namespace, its owner still
running: the error names it and the fix).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from devmemtcp.cli import common
from devmemtcp.errors import DevmemError
from devmemtcp.host import netns as host_netns
from devmemtcp.setup import Journal, default_journal_dir, journal_name, journals, restore
from devmemtcp.setup.journal import STALE_DIR, JournalError, set_aside

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
    common.add_journal_args(parser)


def _report(path: Path, ifname: str, netns: str | None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"ifname": ifname, "netns": netns, "journal": str(path), "done": [],
                           "unchanged": [], "failed": [], "restored": False}
    out.update(extra)
    return out


def restore_one(path: Path, netns: str | None, force: bool,
                lock_timeout: float | None = None) -> dict[str, Any]:
    """Replay the journal at ``path`` in its namespace; returns ``{ifname, netns,
    journal, done, unchanged, failed, restored}`` (plus ``error``, ``hint`` and
    ``moved_to`` when it could not be replayed, ``stale`` when its namespace
    is gone). Never raises DevmemError: one journal's trouble is reported and
    the others still replay. A journal that does not load is set aside into
    ``corrupt/``; one whose namespace no longer exists (by netns cookie) into
    ``stale/``: nothing it records can be undone any more."""
    stem = path.name.removesuffix(".json").split("@")[0]
    try:
        j = Journal.load(path)
    except JournalError as exc:
        return _report(path, stem, netns, error=exc.message, hint=exc.hint,
                       moved_to=str(exc.moved_to) if exc.moved_to else None)
    ifname = j.ifname
    try:
        if netns is None:
            netns = _namespace_of(j)
        if netns:
            result = host_netns.run_in(netns, restore, ifname, journal_dir=path.parent, force=force,
                                       lock_timeout=lock_timeout)
        else:
            result = restore(ifname, journal_dir=path.parent, force=force, lock_timeout=lock_timeout)
    except _Stale as stale:
        moved = None
        with contextlib.suppress(OSError, DevmemError):
            moved = set_aside(path, STALE_DIR)
        return _report(path, ifname, None, stale=True, moved_to=str(moved) if moved else None,
                       note=f"{stale.message}: nothing is left to undo; journal set aside to {moved}")
    except DevmemError as exc:
        return _report(path, ifname, netns, error=exc.message, hint=exc.hint)
    return _report(path, ifname, netns, done=[list(x) for x in result.done],
                   unchanged=[list(x) for x in result.unchanged], failed=[list(x) for x in result.failed],
                   restored=result.restored)


class _Stale(DevmemError):
    """The journal's namespace no longer exists."""


def _namespace_of(j: Journal) -> str | None:
    """The ``ip netns`` name to replay ``j`` in (None: here). Raises _Stale when
    its namespace is gone, DevmemError when it lives but cannot be entered by name."""
    cookie = j.meta.get("netns_cookie")
    ino = j.meta.get("netns")
    ino = ino if isinstance(ino, int) else None
    if isinstance(cookie, int):
        if cookie == host_netns.cookie():
            return None
        alive = host_netns.exists(cookie, ino)
        if alive is False:
            raise _Stale(f"its network namespace (cookie {cookie}, net:[{ino}]) no longer exists",
                         "its interfaces went with it")
    elif ino is None or ino == host_netns.inode():
        return None
    name = host_netns.name_of(ino) if ino is not None else None
    if name is None or (isinstance(cookie, int) and host_netns.run_in(name, host_netns.cookie) != cookie):
        raise DevmemError(
            f"the journal {j.path} belongs to network namespace net:[{ino}], which has no "
            "ip-netns name (or is gone)",
            f"run restore inside it (nsenter --net=/proc/PID/ns/net devmemtcp restore {j.ifname}); "
            "if the namespace is gone its interfaces are too: delete the journal")
    return name


def run(args: argparse.Namespace) -> int:
    paths = journals(args.journal_dir, args.ifname)
    if args.netns:  # only the journals written in that namespace
        inode = host_netns.run_in(args.netns, host_netns.inode)
        paths = [p for p in paths if p.name == journal_name(p.stem.split("@")[0], inode)]
    reports = [restore_one(p, args.netns, args.force, args.lock_timeout) for p in paths]
    errors = [r for r in reports if "error" in r]
    ok = not errors and all(not r["failed"] for r in reports)
    if args.json:
        common.print_json({"restored": ok and any(r["restored"] for r in reports), "ok": ok,
                           "interfaces": reports})
    elif not reports or len(errors) == len(reports):
        if not reports:
            what = f"for {args.ifname} " if args.ifname else ""
            where = args.journal_dir or default_journal_dir()
            common.note(f"nothing to restore: no journals {what}in {where}")
    else:
        for r in reports:
            if "error" in r:
                continue
            rows: dict[str, Any] = {}
            for step, detail in r["done"]:
                rows[step] = detail
            for step, detail in r["unchanged"]:
                rows[f"{step} (nothing to undo)"] = detail
            for step, detail in r["failed"]:
                rows[f"{step} (FAILED)"] = detail
            if r.get("moved_to"):
                rows["journal set aside"] = r["moved_to"]
            if r.get("note"):
                rows["note"] = r["note"]
            elif not r["done"] and not r["failed"]:
                rows["note"] = "nothing needed undoing: the NIC was already as before"
            common.print_summary(f"devmemtcp restore {r['ifname']}"
                                 + (f" (netns {r['netns']})" if r["netns"] else ""), rows)
    for r in reports:
        if r.get("stale"):
            common.note(f"{r['journal']}: {r['note']}")
    for r in errors:  # one journal's trouble does not stop the others; each is told here
        print(f"devmemtcp restore: error: {r['error']}", file=sys.stderr)
        if r.get("hint"):
            print(f"hint: {r['hint']}", file=sys.stderr)
    return 2 if errors else 0 if ok else 1
