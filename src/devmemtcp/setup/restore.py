"""Undoing a journal: who owns an entry, which setups are still alive, the
undo pass shared by NicSetup and ``devmemtcp restore``, and restore itself.

A journal entry's owner is a NicSetup: ``{pid, start, id}``. It is alive
while that process runs (:func:`devmemtcp.host.procs.alive`, pid plus start
time) and, in this process, while that NicSetup is set up. ``restore``
undoes only what owners that are gone left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devmemtcp.backend import open_backend
from devmemtcp.errors import DevmemError
from devmemtcp.host import netns, procs
from devmemtcp.setup.journal import Entry, Journal, default_journal_dir, journal_lock

if TYPE_CHECKING:
    from devmemtcp.backend.base import Backend, Binding, NicControl

#: ids of this process's NicSetups that are set up (see :func:`owner_alive`)
LIVE: set[str] = set()


@dataclass
class UndoResult:
    """What an undo pass did: ``done`` and ``failed`` hold ``(step, detail)``."""

    done: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def owner_alive(owner: dict[str, Any] | None) -> bool:
    """Whether the NicSetup ``owner`` (``{pid, start, id}``) is still set up: its
    process runs (same start time when recorded) and, for one of this
    process's, it has not been undone."""
    if not owner:
        return False
    pid = owner.get("pid")
    start = owner.get("start")
    if not isinstance(pid, int) or not procs.alive(pid, start if isinstance(start, int) else None):
        return False
    if pid == procs.me()[0] and owner.get("id") is not None:
        return owner["id"] in LIVE
    return True


def entry_owner(entry: Entry, journal: Journal) -> dict[str, Any]:
    """The owner of a journal entry (journals without owners: the writing process)."""
    return entry.owner if entry.owner is not None else {"pid": journal.meta.get("pid")}


def live_members(journal: Journal) -> list[dict[str, Any]]:
    """The journal's members (NicSetups relying on it) still alive; prunes the others."""
    members = [m for m in journal.meta.get("members", []) if owner_alive(m)]
    journal.meta["members"] = members
    return members


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, DevmemError) else f"{type(exc).__name__}: {exc}"


def undo_journal(journal: Journal, nic: NicControl, binding: Binding | None = None,
                 select: Callable[[Entry], bool] | None = None) -> UndoResult:
    """Undo ``journal``'s entries (those ``select`` picks, default all) in reverse
    order, saving after each one.

    An entry whose undo fails stays in the journal (so ``devmemtcp restore``
    can retry) and the others are still undone. The file is removed when no
    entry and no live member is left."""
    result = UndoResult()
    for entry in reversed(list(journal.entries)):
        if select is not None and not select(entry):
            continue
        try:
            result.done.append((entry.step, entry.undo(nic, binding)))
            journal.entries = [e for e in journal.entries if e is not entry]
        except Exception as exc:
            result.failed.append((entry.step, _describe(exc)))
        if journal.entries:
            journal.save()
    if journal.entries or live_members(journal):
        journal.save()
    else:
        journal.remove()
    return result


def journals(journal_dir: Path | str | None = None, ifname: str | None = None) -> list[Path]:
    """The undo journals in ``journal_dir`` (of ``ifname`` only, in any
    namespace, when given), sorted by name."""
    d = Path(journal_dir) if journal_dir is not None else default_journal_dir()
    if not d.is_dir():
        return []
    found = [p for p in d.glob("*.json") if not p.name.startswith(".")]
    if ifname is not None:
        found = [p for p in found if p.stem == ifname or p.stem.startswith(f"{ifname}@")]
    return sorted(found)


def restore(ifname: str, *, journal_dir: Path | str | None = None, backend: Backend | None = None,
            force: bool = False) -> UndoResult:
    """Replay ``ifname``'s undo journal (``devmemtcp restore``).

    Undoes what setups that are gone (crashed, killed, or ``devmemtcp setup``)
    left: their rules, and the shared settings unless a live setup still uses
    them (they are handed over to it). Refuses (DevmemError) when every entry
    belongs to a live setup (it restores on exit) unless ``force``, and when
    the journal belongs to another network namespace. Returns the UndoResult;
    entries that failed stay in the journal. No journal: an empty result."""
    j = Journal(ifname, journal_dir)
    if not j.exists():
        return UndoResult()
    with journal_lock(j):
        if not j.exists():
            return UndoResult()
        j = Journal.load(j.path)
        ns = j.meta.get("netns")
        if ns is not None and ns != netns.inode():
            raise DevmemError(
                f"the journal for {ifname} was written in another network namespace (net:[{ns}])",
                f"run restore inside that namespace: ip netns exec NS devmemtcp restore {ifname}")
        live = [] if force else live_members(j)

        def gone(e: Entry) -> bool:
            return force or not owner_alive(entry_owner(e, j))

        if j.entries and not any(gone(e) for e in j.entries):
            pids: list[Any] = sorted({int(m["pid"]) for m in live}) or [j.meta.get("pid")]
            raise DevmemError(f"{ifname} is being used by a running devmemtcp (pid {pids[0]})",
                              f"stop it (kill {pids[0]}: it restores the NIC itself) or pass --force")
        for e in j.entries:
            if gone(e) and e.shared and live:
                e.owner = live[0]
        if force:
            j.meta["members"] = []
        name = str(j.meta.get("backend", "kernel"))
        if name not in ("kernel", "emulated"):
            raise DevmemError(f"unknown backend {name!r} in the journal", "use kernel or emulated")
        be = backend or open_backend(name)[0]
        return undo_journal(j, be.nic(ifname), select=gone)
