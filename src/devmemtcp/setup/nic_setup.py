"""NicSetup: configure a NIC for one devmem flow, and always undo it.

The steps are the classes of :mod:`devmemtcp.setup.steps`, run in their
fixed order. Every change is recorded in an undo journal on disk
(:mod:`devmemtcp.setup.journal`, written atomically and fsync'ed) *before* it
is made, and undone in reverse order on exit, on SIGINT/SIGTERM (handlers are
installed while set up), or by ``devmemtcp restore IFNAME`` after a crash or
``kill -9``. Only what this tool changed is undone: a setting already at the
wanted value is not journaled, and a rule is deleted only if the rule found
at its location is the one this tool inserted.

Several flows may share a NIC: a NicSetup started while another live one
holds the journal joins it (same channel count, else it is refused), takes
devmem queues no other flow holds (picked, highest first, when ``queues`` is
None), adds its own rule, narrows the shared RSS spread to stay below every
flow's queues, and leaves the shared settings (channels, header split, RSS)
to the last one out. Each journal entry names its owner (pid,
process start time, setup id); the journal is read and changed under an
exclusive ``flock``; ``restore`` undoes only what setups that are gone left.

Both backends work: the NIC is reached through ``backend.nic(ifname)``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from devmemtcp.errors import DevmemError
from devmemtcp.host import netns, procs
from devmemtcp.setup import restore as _restore
from devmemtcp.setup.journal import Entry, Journal, journal_lock
from devmemtcp.setup.restore import UndoResult, entry_owner, live_members, owner_alive, undo_journal
from devmemtcp.setup.steps import DEFAULT_STEPS, STEPS, Flow, step_class
from devmemtcp.types import NtupleRule

if TYPE_CHECKING:
    from devmemtcp.backend.base import Backend, Binding, NicControl
    from devmemtcp.memory.base import DmaBuf

E = TypeVar("E", bound=Entry)


# ---------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM while a NicSetup is active (exit 143)."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _raise_signal(signum: int, frame: FrameType | None) -> None:
    del frame
    if signum == signal.SIGTERM:
        raise Terminated
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------
# NicSetup
# ---------------------------------------------------------------------------


class NicSetup:
    """Configure ``ifname`` for devmem RX of one flow; undo on exit.

    Args:
        backend: the Backend (kernel or emulated); the NIC is ``backend.nic(ifname)``.
        ifname: the interface (in the caller's network namespace).
        queues: ``(start, count)``: the devmem RX queues; ``start >= 1`` so
            RSS keeps queues ``0..start-1`` for other traffic. None: one
            queue, the highest that no other flow on this machine holds
            (a live setup's member or a live binding), picked under the
            journal lock; ``self.queues`` says which once applied.
        flow: a :class:`~devmemtcp.setup.steps.Flow` or ``(dst_ip, dst_port[,
            src_ip[, src_port]])``; needed for the ``rule`` step.
        journal_dir: where the undo journal lives (default $DEVMEMTCP_JOURNAL_DIR, else
            /run/devmemtcp).
        dmabuf: bound to the queues in the ``bind`` step (``self.binding``).
        channels: RX channel count to set in the ``channels`` step (None: leave).
        steps: which steps to run, in the fixed order of
            :data:`~devmemtcp.setup.steps.STEPS`; default all but ``channels``
            (``channels`` is added when ``channels`` is given); ``bind`` runs
            only with a dmabuf.
        handle_signals: install SIGINT/SIGTERM handlers (main thread only)
            that raise, so the undo runs; previous handlers come back on exit.
        on_step: ``on_step(stage, step)`` called with stage ``"journaled"``
            (recorded, not yet made) and ``"applied"``: for progress output
            and crash tests.
        lock_timeout: seconds to wait for the journal's lock (another
            devmemtcp may hold it; None: 30 s); a
            :class:`~devmemtcp.host.files.LockTimeout` names the holder.

    Use as a context manager, or call :meth:`apply` then :meth:`undo`
    (:meth:`keep` leaves the NIC configured with the journal on disk, for
    ``devmemtcp setup``). A refused step raises the backend's error (the
    kernel's errno and extack) after everything already done was undone.
    Raises DevmemError when a journal for ``ifname`` already exists.
    """

    def __init__(self, backend: Backend, ifname: str, *, queues: tuple[int, int] | None,
                 flow: Flow | tuple[Any, ...] | None = None,
                 journal_dir: Path | str | None = None, dmabuf: DmaBuf | None = None,
                 channels: int | None = None, steps: tuple[str, ...] | list[str] | None = None,
                 handle_signals: bool = True,
                 on_step: Callable[[str, str], None] | None = None,
                 lock_timeout: float | None = None) -> None:
        self.auto_queues = queues is None
        start, count = (1, 1) if queues is None else (int(queues[0]), int(queues[1]))
        if start < 0 or count < 1:
            raise DevmemError(f"bad queue range start {start} count {count}",
                              "give --queues START[:COUNT] with COUNT >= 1")
        self.backend = backend
        self.ifname = ifname
        self.queues = (start, count)
        self.flow = Flow.of(flow) if flow is not None else None
        self.dmabuf = dmabuf
        self.channels = channels
        if steps is None:
            steps = DEFAULT_STEPS + (("channels",) if channels is not None else ())
        unknown = set(steps) - set(STEPS)
        if unknown:
            raise DevmemError(f"unknown setup steps {sorted(unknown)}", f"choose from {', '.join(STEPS)}")
        self.steps = tuple(s for s in STEPS if s in steps)
        if "rule" in self.steps and self.flow is None:
            raise DevmemError("the rule step needs the flow (destination address and port)",
                              "pass flow=(dst_ip, dst_port) or leave out the rule step")
        if "channels" in self.steps and channels is None:
            raise DevmemError("the channels step needs a channel count", "pass channels=N")
        self.journal = Journal(ifname, journal_dir)
        self.handle_signals = handle_signals
        self.on_step = on_step
        self.lock_timeout = lock_timeout
        #: RSS spreads other traffic over queues 0..spread-1 (below every flow's devmem queues)
        self.spread = start
        #: {queue: pid} of devmem queues other flows held when this one picked its own
        self.held: dict[int, int | None] = {}
        self.binding: Binding | None = None
        self.rule: NtupleRule | None = None
        self.report: list[dict[str, Any]] = []
        self._nic: NicControl | None = None
        self._old_handlers: dict[int, Any] = {}
        self._applied = False
        self.id = uuid.uuid4().hex
        pid, start_time = procs.me()
        self.owner = {"pid": pid, "start": start_time, "id": self.id}
        self.joined: list[int] = []  # pids of the live setups this one joined

    # -- what the steps use (steps.StepContext) --------------------------------
    @property
    def nic(self) -> NicControl:
        if self._nic is None:
            self._nic = self.backend.nic(self.ifname)
        return self._nic

    def hook(self, stage: str, step: str) -> None:
        """Call ``on_step(stage, step)`` when given."""
        if self.on_step is not None:
            self.on_step(stage, step)

    def record(self, entry: E) -> E:
        """Journal ``entry`` as this setup's, before the change is made."""
        entry.owner = self.owner
        self.journal.append(entry)
        self.hook("journaled", entry.step)
        return entry

    def others(self) -> list[dict[str, Any]]:
        """The other live setups that share this NIC's journal."""
        return [m for m in live_members(self.journal) if m.get("id") != self.id]

    # -- signals ---------------------------------------------------------------
    def _install_signals(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, _raise_signal)

    def _restore_signals(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers = {}

    # -- apply ---------------------------------------------------------------
    def apply(self) -> NicSetup:
        """Run the steps; on any failure (or a signal) undo what was done and re-raise.

        A NIC already set up by another live NicSetup (another flow) is joined:
        the shared settings (channels, header split, RSS) are kept as they are,
        or DevmemError is raised when this flow would need them different; only
        the flow's own rule and binding are added. Shared settings are undone
        by the last of them to leave."""
        if self._applied:
            return self
        self._install_signals()
        try:
            with journal_lock(self.journal, self.lock_timeout):
                self._join_or_start()
                _restore.LIVE.add(self.id)
                try:
                    for step in self.steps:
                        step_class(step).apply(self)
                except BaseException as exc:
                    try:
                        self._undo_locked()
                    except DevmemError as undo_exc:
                        exc.add_note(f"undo after the failure: {undo_exc}")
                    raise
        except BaseException:
            self._restore_signals()
            raise
        self._applied = True
        return self

    def _join_or_start(self) -> None:
        """(under the lock) Adopt a live setup's journal, or start a new one."""
        if self.journal.exists():
            other = Journal.load(self.journal.path)
            live = live_members(other)
            dead = [e for e in other.entries if not owner_alive(entry_owner(e, other))]
            if other.meta.get("kept") or dead:
                pid = other.meta.get("pid")
                raise DevmemError(
                    f"{self.ifname} is already configured by an earlier run (or devmemtcp setup, pid {pid}): "
                    f"undo journal {self.journal.path}",
                    f"run 'devmemtcp restore {self.ifname}' first, or use --no-nic-config to keep that setup")
            if live:
                self._take_queues(other, live)
                spread = other.meta.get("spread")
                if not isinstance(spread, int):
                    spread = int((other.meta.get("queues") or [self.queues[0]])[0])
                self.spread = other.meta["spread"] = min(spread, self.queues[0])
                other.meta["members"] = [*live, self.owner]
                self.journal = other
                self.joined = sorted({int(m["pid"]) for m in live})
                self.journal.save()
                return
        self._take_queues(None, [])
        self.spread = self.queues[0]
        self.journal.entries = []
        self.journal.meta = {
            "pid": os.getpid(), "created": time.time(), "backend": self.backend.name,
            "netns": netns.inode(), "netns_cookie": netns.cookie(),
            "emu_dir": getattr(self.backend, "state_dir", None),
            "ifindex": getattr(self.nic, "ifindex", None),
            "queues": list(self.queues), "spread": self.spread,
            "flow": asdict(self.flow) if self.flow else None,
            "members": [self.owner],
        }
        self.journal.save()

    def _held_queues(self, journal: Journal | None, live: list[dict[str, Any]]) -> dict[int, int | None]:
        """``{queue: pid}`` of the devmem queues other flows hold: the live members
        of ``journal`` that bind (their recorded queues; the journal's for older
        members) and every live binding the NIC reports (the emulated NIC's
        registry, the kernel's queue-get), made with or without a NicSetup."""
        held: dict[int, int | None] = {}
        for m in live:
            if m.get("bind") is False:
                continue  # a setup without a binding holds no queue (its bindings show in bound_queues)
            qs = m.get("queues")
            if qs is None and journal is not None:
                first = journal.meta.get("queues") or []
                qs = list(range(int(first[0]), int(first[0]) + int(first[1]))) if len(first) == 2 else []
            for q in qs or []:
                held[int(q)] = int(m["pid"])
        bound = getattr(self.nic, "bound_queues", None)
        if callable(bound):
            for q in bound():
                held.setdefault(int(q), None)
        return held

    def _take_queues(self, journal: Journal | None, live: list[dict[str, Any]]) -> None:
        """(under the lock) Pick this flow's devmem queue when none was given
        (the highest one no other flow holds), or check the given ones are free."""
        held = self._held_queues(journal, live)
        self.held = held
        if self.auto_queues:
            n = self.nic.rx_queue_count()
            free = [q for q in range(n - 1, 0, -1) if q not in held]
            if n < 2:
                raise DevmemError(
                    f"{self.ifname} has {n} RX queue(s): devmem needs one for the flow and one for other "
                    "traffic",
                    f"raise the channel count (ethtool -L {self.ifname} combined 2), or give --queues "
                    "START:COUNT with --no-nic-config")
            if not free:
                who = ", ".join(f"{q} (pid {p})" if p else str(q) for q, p in sorted(held.items()))
                raise DevmemError(
                    f"no free devmem queue on {self.ifname}: queues 1..{n - 1} are held by other flows: "
                    f"{who}",
                    f"raise the channel count (ethtool -L {self.ifname} combined {n + 1}), "
                    "or wait for one of those flows to end")
            self.queues = (free[0], 1)
        else:
            start, count = self.queues
            binds = self.dmabuf is not None and "bind" in self.steps
            clash = sorted(q for q in range(start, start + count) if q in held) if binds else []
            if clash:
                p = held[clash[0]]
                raise DevmemError(
                    f"{self.ifname} queue {clash[0]} is held by another devmem flow"
                    + (f" (pid {p})" if p else ""),
                    "leave out --queues to get a free queue, or give queues no other flow holds")
        self.owner["queues"] = list(range(self.queues[0], self.queues[0] + self.queues[1]))
        self.owner["bind"] = self.dmabuf is not None and "bind" in self.steps

    # -- undo / keep ---------------------------------------------------------
    def undo(self) -> UndoResult:
        """Undo this setup in reverse order (signals are held off meanwhile): its
        rule and binding, and the shared settings it changed unless another live
        setup still uses them (those are handed over to it). Raises DevmemError
        listing what could not be undone (those entries stay in the journal for
        ``devmemtcp restore``)."""
        pending: list[int] = []

        def hold(signum: int, frame: FrameType | None) -> None:
            del frame
            pending.append(signum)

        for sig in self._old_handlers:
            signal.signal(sig, hold)
        try:
            with journal_lock(self.journal, self.lock_timeout):
                result = self._undo_locked()
        finally:
            self._restore_signals()
        if result.failed:
            raise DevmemError(
                f"could not undo everything on {self.ifname}: "
                + "; ".join(f"{s}: {d}" for s, d in result.failed),
                f"fix the cause, then run 'devmemtcp restore {self.ifname}' (journal {self.journal.path})")
        if pending:
            _raise_signal(pending[0], None)
        return result

    def _mine(self, entry: Entry) -> bool:
        return entry_owner(entry, self.journal).get("id") == self.id

    def _undo_locked(self) -> UndoResult:
        """(under the lock) Undo this setup's entries, reloading the journal first
        (other setups may have changed it)."""
        try:
            if self.journal.exists():
                self.journal = Journal.load(self.journal.path)
            others = self.others()
            for e in self.journal.entries:
                if self._mine(e) and e.shared and others:
                    e.owner = others[0]  # still needed by another flow: hand it over
            self.journal.meta["members"] = [m for m in self.journal.meta.get("members", [])
                                            if m.get("id") != self.id]
            # the last live setup also undoes what setups that died left (a flow killed
            # with -9): their rule would otherwise keep the shared settings from coming back
            last = not others

            def select(e: Entry) -> bool:
                return self._mine(e) or (last and not owner_alive(entry_owner(e, self.journal)))

            result = undo_journal(self.journal, self.nic, self.binding, select=select)
            if self.binding is not None and not any(s == "bind" for s, _ in result.done):
                self.binding.close()
            self.binding = None
        finally:
            self._applied = False
            _restore.LIVE.discard(self.id)
        return result

    def keep(self) -> Path | None:
        """Leave the NIC configured (for ``devmemtcp setup``): the journal stays on
        disk, marked as kept, for a later ``devmemtcp restore``. Returns its path
        (None when nothing was changed)."""
        self._restore_signals()
        self._applied = False
        _restore.LIVE.discard(self.id)
        with journal_lock(self.journal, self.lock_timeout):
            if self.journal.exists():
                self.journal = Journal.load(self.journal.path)
            self.journal.meta["members"] = [m for m in live_members(self.journal) if m.get("id") != self.id]
            if not self.journal.entries:
                if self.journal.meta["members"]:
                    self.journal.save()
                else:
                    self.journal.remove()
                return None
            self.journal.meta["kept"] = True
            self.journal.save()
        return self.journal.path

    def __enter__(self) -> NicSetup:
        return self.apply()

    def __exit__(self, *exc: object) -> None:
        if self._applied or self.binding is not None:
            self.undo()
