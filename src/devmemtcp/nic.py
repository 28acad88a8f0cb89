"""NicSetup: configure a NIC for one devmem flow, and always undo it.

The steps (Documentation/networking/devmem.rst, "NIC configuration";
tools/testing/selftests/drivers/net/hw/ncdevmem.c ``configure_*``):

1. ``channels`` (optional): set the RX (or combined) channel count so the
   devmem queues exist.
2. ``rings``: header split on (tcp-data-split enabled) and hds-thresh 0;
   bind-rx refuses otherwise (net/core/devmem.c).
3. ``rss``: spread the RSS indirection table over the queues *below* the
   devmem queues (``ethtool -X IF equal START``), so other traffic stays off
   them.
4. ``rule``: an ntuple rule steering the flow (TCP to dst ip:port, from src
   ip:port when known) to the first devmem queue. RX_CLS_LOC_ANY for drivers
   that assign slots (bnxt), the lowest free slot for the others (mlx5).
5. ``bind`` (when a dma-buf is given): bind-rx of the dma-buf to the queues.

Every change is recorded in an undo journal on disk
(``JOURNAL_DIR/IFNAME.json``, written atomically and fsync'ed) *before* it is
made, and undone in reverse order on exit, on SIGINT/SIGTERM (handlers are
installed while set up), or by ``devmemtcp restore IFNAME`` after a crash or
``kill -9``. Only what this tool changed is undone: a setting already at the
wanted value is not journaled, and a rule is deleted only if the rule found
at its location is the one this tool inserted.

Several flows may share a NIC: a NicSetup started while another live one
holds the journal joins it (same devmem queues and channel count, else it is
refused), adds its own rule, and leaves the shared settings (channels, header
split, RSS) to the last one out. Each journal entry names its owner (pid,
process start time, setup id); the journal is read and changed under an
exclusive ``flock``; ``restore`` undoes only what setups that are gone left.
``JOURNAL_DIR`` is ``$DEVMEMTCP_JOURNAL_DIR`` or /run/devmemtcp; inside a
namespace ``ip netns`` names, the file is ``IFNAME@NETNS.json``.

Both backends work: the NIC is reached through ``backend.nic(ifname)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from devmemtcp.backend import open_backend
from devmemtcp.errors import DevmemError
from devmemtcp.types import NtupleRule

if TYPE_CHECKING:
    from devmemtcp.backend.base import Backend, Binding, NicControl
    from devmemtcp.memory.base import DmaBuf

T = TypeVar("T")

DEFAULT_JOURNAL_DIR = Path("/run/devmemtcp")
JOURNAL_DIR_ENV = "DEVMEMTCP_JOURNAL_DIR"


def default_journal_dir() -> Path:
    """``$DEVMEMTCP_JOURNAL_DIR`` if set (read at each call), else /run/devmemtcp."""
    return Path(os.environ.get(JOURNAL_DIR_ENV) or DEFAULT_JOURNAL_DIR)
JOURNAL_VERSION = 1
STEPS: tuple[str, ...] = ("channels", "rings", "rss", "rule", "bind")
DEFAULT_STEPS: tuple[str, ...] = ("rings", "rss", "rule", "bind")


# ---------------------------------------------------------------------------
# Flow
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    """The TCP flow to steer: to ``dst_ip:dst_port`` (this host's address and
    port), optionally from ``src_ip``/``src_port`` (the peer). IPv4 or IPv6."""

    dst_ip: str
    dst_port: int
    src_ip: str | None = None
    src_port: int | None = None

    def __post_init__(self) -> None:
        dst = ipaddress.ip_address(self.dst_ip)
        if self.src_ip is not None and ipaddress.ip_address(self.src_ip).version != dst.version:
            raise DevmemError(f"flow source {self.src_ip} and destination {self.dst_ip} differ in IP "
                              "version", "give both as IPv4 or both as IPv6")
        for port in (self.dst_port, self.src_port):
            if port is not None and not 0 < port <= 0xFFFF:
                raise DevmemError(f"port {port} is out of range", "use a TCP port in 1..65535")

    @classmethod
    def of(cls, flow: Flow | tuple[Any, ...]) -> Flow:
        """A Flow from a Flow or a tuple ``(dst_ip, dst_port[, src_ip[, src_port]])``."""
        if isinstance(flow, Flow):
            return flow
        return cls(*flow)

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ipaddress.ip_address(self.dst_ip).version == 6 else socket.AF_INET

    def rule(self, queue: int) -> NtupleRule:
        """The ntuple rule steering this flow to ``queue`` (5-tuple when the
        peer is known, 3-tuple otherwise)."""
        return NtupleRule(dst_ip=self.dst_ip, dst_port=self.dst_port, queue=queue, src_ip=self.src_ip,
                          src_port=self.src_port, family=self.family)


def _same_rule(a: NtupleRule, b: NtupleRule) -> bool:
    def key(r: NtupleRule) -> tuple[Any, ...]:
        def ip(x: str | None) -> str | None:
            return str(ipaddress.ip_address(x)) if x else None
        return (ip(r.dst_ip), r.dst_port, r.queue, ip(r.src_ip), r.src_port)
    return key(a) == key(b)


def _rule_dict(rule: NtupleRule) -> dict[str, Any]:
    return asdict(rule)


def _rule_from(d: dict[str, Any]) -> NtupleRule:
    def opt_int(v: Any) -> int | None:
        return None if v is None else int(v)

    return NtupleRule(dst_ip=str(d["dst_ip"]), dst_port=int(d["dst_port"]), queue=int(d["queue"]),
                      src_ip=d.get("src_ip"), src_port=opt_int(d.get("src_port")),
                      location=opt_int(d.get("location")), family=int(d.get("family", socket.AF_INET)))


# ---------------------------------------------------------------------------
# The journal
# ---------------------------------------------------------------------------


def netns_id() -> int:
    """Inode of the calling thread's network namespace (``/proc/thread-self/ns/net``)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def netns_name(ns: int | None = None) -> str | None:
    """The ``ip netns`` name (an entry of /run/netns) of the namespace with inode
    ``ns`` (default: the calling thread's), or None when it has none."""
    ns = netns_id() if ns is None else ns
    base = Path("/run/netns")
    if not base.is_dir():
        return None
    for entry in sorted(base.iterdir()):
        try:
            if os.stat(entry).st_ino == ns:
                return entry.name
        except OSError:
            continue
    return None


def journal_name(ifname: str, ns: int | None = None) -> str:
    """``IFNAME.json``, or ``IFNAME@NETNS.json`` inside a namespace ``ip netns``
    names (so ``lo`` or ``veth0`` of different namespaces never share a journal)."""
    name = netns_name(ns)
    return f"{ifname}.json" if name is None else f"{ifname}@{name}.json"


class Journal:
    """The undo journal of one interface: ``DIR/IFNAME.json`` (``IFNAME@NETNS.json``
    outside the initial network namespace, see :func:`journal_name`).

    ``entries`` is a list of dicts, in the order the changes were made, each
    with ``step`` and what is needed to undo it. Every :meth:`save` writes a
    temporary file, fsyncs it, renames it over the journal and fsyncs the
    directory, so a crash leaves either the old or the new journal. The file
    is removed once every entry is undone.
    """

    def __init__(self, ifname: str, journal_dir: Path | str | None = None) -> None:
        if not ifname or "/" in ifname or ifname.startswith("."):
            raise DevmemError(f"bad interface name {ifname!r}", "give the interface name, e.g. eth0")
        self.ifname = ifname
        self.dir = Path(journal_dir) if journal_dir is not None else default_journal_dir()
        self.path = self.dir / journal_name(ifname)
        self.meta: dict[str, Any] = {}
        self.entries: list[dict[str, Any]] = []

    @classmethod
    def load(cls, path: Path) -> Journal:
        """Read a journal file; DevmemError if it is not one of ours."""
        try:
            data = json.loads(path.read_text())
            j = cls(str(data["ifname"]), path.parent)
            j.path = path
            j.entries = list(data["entries"])
            j.meta = {k: v for k, v in data.items() if k not in ("entries",)}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DevmemError(f"cannot read undo journal {path}: {exc}",
                              "inspect the file; delete it only if you restored the NIC by hand") from None
        return j

    def exists(self) -> bool:
        return self.path.exists()

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = dict(self.meta, version=JOURNAL_VERSION, ifname=self.ifname, entries=self.entries)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(data, indent=1).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        self.entries.append(entry)
        self.save()
        return entry

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.entries = []


# ---------------------------------------------------------------------------
# Undo (shared by NicSetup and restore)
# ---------------------------------------------------------------------------


@dataclass
class UndoResult:
    """What an undo pass did: ``done`` and ``failed`` hold ``(step, detail)``."""

    done: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


# Steps whose setting every flow on the NIC depends on; a flow's own steps are
# "rule" and "bind". Shared settings stay while any live NicSetup uses them.
SHARED_STEPS = frozenset({"channels", "rings", "rss"})
_LIVE: set[str] = set()  # ids of this process's NicSetups that are set up


def _proc_start(pid: int) -> int | None:
    """Start time of ``pid`` (/proc/PID/stat field 22), to tell a reused pid apart."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def owner_alive(owner: dict[str, Any] | None) -> bool:
    """Whether the NicSetup ``owner`` (``{pid, start, id}``) is still set up."""
    if not owner:
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return False
    start = owner.get("start")
    if start is not None and _proc_start(pid) not in (None, start):
        return False  # the pid was reused
    if pid == os.getpid() and owner.get("id") is not None:
        return owner["id"] in _LIVE
    return True


def entry_owner(entry: dict[str, Any], journal: Journal) -> dict[str, Any]:
    """The owner of a journal entry (journals without owners: the writing process)."""
    owner = entry.get("owner")
    return owner if isinstance(owner, dict) else {"pid": journal.meta.get("pid")}


def live_members(journal: Journal) -> list[dict[str, Any]]:
    """The journal's members (NicSetups relying on it) still alive; prunes the others."""
    members = [m for m in journal.meta.get("members", []) if owner_alive(m)]
    journal.meta["members"] = members
    return members


@contextlib.contextmanager
def journal_lock(journal: Journal) -> Iterator[None]:
    """Exclusive ``flock`` on ``DIR/.NAME.lock``: one process at a time reads and
    changes an interface's journal (and the settings it records)."""
    journal.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(journal.dir / f".{journal.path.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _undo_entry(nic: NicControl, entry: dict[str, Any], binding: Binding | None) -> str:
    """Undo one journal entry; returns what was done. Raises on failure."""
    step = entry["step"]
    if step == "bind":
        if binding is not None:
            binding.close()
            return f"closed binding {binding.id} (unbinds queues {list(binding.queues)})"
        return "nothing to do: a binding ends with the process that made it"
    if step == "rule":
        rule = _rule_from(entry["rule"])
        loc = entry.get("location")
        rules = nic.list_rules()
        if loc is not None:
            at = [r for r in rules if r.location == loc]
            if at and _same_rule(at[0], rule):
                nic.delete_rule(int(loc))
                return f"deleted rule {loc}"
            return f"rule {loc} is gone or is not ours any more: left alone"
        pre = set(entry.get("pre_locations", []))
        ours = [r for r in rules if r.location is not None and r.location not in pre and _same_rule(r, rule)]
        for r in ours:
            assert r.location is not None
            nic.delete_rule(r.location)
        if ours:
            return f"deleted rule {ours[0].location} (insert was not confirmed before the crash)"
        return "the rule was never inserted"
    if step == "rss":
        before = [int(x) for x in entry["before"]]
        if nic.get_rss_indir() == before:
            return "RSS indirection table already as before"
        if entry.get("default"):
            nic.set_rss_indir([])  # back to the driver's default spread (not "user configured")
            return "RSS indirection table reset to the driver default"
        nic.set_rss_indir(before)
        return "RSS indirection table restored"
    if step == "rings":
        b = entry["before"]
        now = nic.get_rings()
        split = b.get("tcp_data_split")
        hds = b.get("hds_thresh")
        want_split = split if split is not None and now.tcp_data_split != split else None
        want_hds = hds if hds is not None and now.hds_thresh != hds else None
        if want_split is None and want_hds is None:
            return "header split already as before"
        nic.set_rings(tcp_data_split=want_split, hds_thresh=want_hds)
        return f"rings restored (tcp-data-split {split}, hds-thresh {hds})"
    if step == "channels":
        b = entry["before"]
        chan = nic.get_channels()
        kw = {k: b[k] for k in ("rx", "tx", "combined")
              if b.get(k) is not None and getattr(chan, k) != b[k]}
        if not kw:
            return "channels already as before"
        nic.set_channels(**kw)
        return "channels restored (" + ", ".join(f"{k} {v}" for k, v in kw.items()) + ")"
    raise DevmemError(f"unknown journal step {step!r}", "the journal was written by a newer devmemtcp")


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, DevmemError) else f"{type(exc).__name__}: {exc}"


def undo_journal(journal: Journal, nic: NicControl, binding: Binding | None = None,
                 select: Callable[[dict[str, Any]], bool] | None = None) -> UndoResult:
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
            result.done.append((entry["step"], _undo_entry(nic, entry, binding)))
            journal.entries = [e for e in journal.entries if e is not entry]
        except Exception as exc:
            result.failed.append((entry["step"], _describe(exc)))
        if journal.entries:
            journal.save()
    if journal.entries or live_members(journal):
        journal.save()
    else:
        journal.remove()
    return result


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
            RSS keeps queues ``0..start-1`` for other traffic.
        flow: a :class:`Flow` or ``(dst_ip, dst_port[, src_ip[, src_port]])``;
            needed for the ``rule`` step.
        journal_dir: where the undo journal lives (default $DEVMEMTCP_JOURNAL_DIR, else
            /run/devmemtcp).
        dmabuf: bound to the queues in the ``bind`` step (``self.binding``).
        channels: RX channel count to set in the ``channels`` step (None: leave).
        steps: which steps to run, in the fixed order of :data:`STEPS`;
            default all but ``channels`` (``channels`` is added when
            ``channels`` is given); ``bind`` runs only with a dmabuf.
        handle_signals: install SIGINT/SIGTERM handlers (main thread only)
            that raise, so the undo runs; previous handlers come back on exit.
        on_step: ``on_step(stage, step)`` called with stage ``"journaled"``
            (recorded, not yet made) and ``"applied"``: for progress output
            and crash tests.

    Use as a context manager, or call :meth:`apply` then :meth:`undo`
    (:meth:`keep` leaves the NIC configured with the journal on disk, for
    ``devmemtcp setup``). A refused step raises the backend's error (the
    kernel's errno and extack) after everything already done was undone.
    Raises DevmemError when a journal for ``ifname`` already exists.
    """

    def __init__(self, backend: Backend, ifname: str, *, queues: tuple[int, int],
                 flow: Flow | tuple[Any, ...] | None = None,
                 journal_dir: Path | str | None = None, dmabuf: DmaBuf | None = None,
                 channels: int | None = None, steps: tuple[str, ...] | list[str] | None = None,
                 handle_signals: bool = True,
                 on_step: Callable[[str, str], None] | None = None) -> None:
        start, count = int(queues[0]), int(queues[1])
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
        self.binding: Binding | None = None
        self.rule: NtupleRule | None = None
        self.report: list[dict[str, Any]] = []
        self._nic: NicControl | None = None
        self._old_handlers: dict[int, Any] = {}
        self._applied = False
        self.id = uuid.uuid4().hex
        self.owner = {"pid": os.getpid(), "start": _proc_start(os.getpid()), "id": self.id}
        self.joined: list[int] = []  # pids of the live setups this one joined

    # -- helpers -------------------------------------------------------------
    @property
    def nic(self) -> NicControl:
        if self._nic is None:
            self._nic = self.backend.nic(self.ifname)
        return self._nic

    def _hook(self, stage: str, step: str) -> None:
        if self.on_step is not None:
            self.on_step(stage, step)

    def _record(self, entry: dict[str, Any]) -> dict[str, Any]:
        entry["owner"] = self.owner
        self.journal.append(entry)
        self._hook("journaled", entry["step"])
        return entry

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
            with journal_lock(self.journal):
                self._join_or_start()
                _LIVE.add(self.id)
                try:
                    for step in self.steps:
                        getattr(self, f"_step_{step}")()
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
                other.meta["members"] = [*live, self.owner]
                self.journal = other
                self.joined = sorted({int(m["pid"]) for m in live})
                self.journal.save()
                return
        self.journal.entries = []
        self.journal.meta = {
            "pid": os.getpid(), "created": time.time(), "backend": self.backend.name,
            "netns": netns_id(), "ifindex": getattr(self.nic, "ifindex", None),
            "queues": list(self.queues), "flow": asdict(self.flow) if self.flow else None,
            "members": [self.owner],
        }
        self.journal.save()

    def _others(self) -> list[dict[str, Any]]:
        return [m for m in live_members(self.journal) if m.get("id") != self.id]

    def _conflict(self, what: str) -> DevmemError:
        pids = sorted({int(m["pid"]) for m in self._others()})
        return DevmemError(
            f"{self.ifname} is set up for another devmem flow (pid {', '.join(map(str, pids))}) with "
            f"a different {what}",
            "use the same --queues (and channel count) as that flow, or stop it first")

    def _step_channels(self) -> None:
        assert self.channels is not None
        ch = self.nic.get_channels()
        field_name = "combined" if ch.combined else "rx"
        if getattr(ch, field_name) == self.channels:
            self.report.append({"step": "channels", "changed": False, field_name: self.channels})
            return
        if self._others():
            raise self._conflict("channel count")
        self._record({"step": "channels", "before": {"rx": ch.rx, "tx": ch.tx, "combined": ch.combined}})
        self.nic.set_channels(**{field_name: self.channels})
        self._hook("applied", "channels")
        self.report.append({"step": "channels", "changed": True, "before": getattr(ch, field_name),
                            "after": self.channels, "field": field_name})

    def _check_queues(self) -> None:
        start, count = self.queues
        n = self.nic.rx_queue_count()
        if start + count > n:
            raise DevmemError(
                f"{self.ifname} has {n} RX queue(s); queues {start}..{start + count - 1} do not exist",
                f"pick queues below {n}, or raise the channel count (ethtool -L {self.ifname} ...)")

    def _step_rings(self) -> None:
        rings = self.nic.get_rings()
        if rings.tcp_data_split == "enabled" and rings.hds_thresh in (0, None):
            self.report.append({"step": "rings", "changed": False})
            return
        self._record({"step": "rings", "before": {"tcp_data_split": rings.tcp_data_split,
                                                  "hds_thresh": rings.hds_thresh}})
        split = "enabled" if rings.tcp_data_split != "enabled" else None
        hds = 0 if rings.hds_thresh not in (0, None) else None
        self.nic.set_rings(tcp_data_split=split, hds_thresh=hds)
        self._hook("applied", "rings")
        before = {"tcp_data_split": rings.tcp_data_split, "hds_thresh": rings.hds_thresh}
        self.report.append({"step": "rings", "changed": True, "before": before,
                            "after": {"tcp_data_split": "enabled", "hds_thresh": 0}})

    def _step_rss(self) -> None:
        start, _count = self.queues
        if start < 1:
            raise DevmemError("devmem queues start at 0: RSS has no ordinary queue left for other traffic",
                              "use devmem queues above 0 (e.g. --queues 1 on a 2-queue NIC)")
        self._check_queues()
        table = self.nic.get_rss_indir()
        if not table:
            raise DevmemError(f"{self.ifname} reports no RSS indirection table",
                              "this driver cannot keep other traffic off the devmem queues; "
                              "leave out the rss step only if nothing else receives on this NIC")
        want = [i % start for i in range(len(table))]
        if table == want:
            self.report.append({"step": "rss", "changed": False, "queues": start})
            return
        if self._others():
            raise self._conflict("RSS spread (devmem queues)")
        nq = self.nic.rx_queue_count()
        default = table == [i % nq for i in range(len(table))]
        self._record({"step": "rss", "before": table, "default": default})
        self.nic.set_rss_indir(want)
        self._hook("applied", "rss")
        self.report.append({"step": "rss", "changed": True, "spread_over": start, "table_size": len(table)})

    def _step_rule(self) -> None:
        assert self.flow is not None
        self._check_queues()
        rule = self.flow.rule(self.queues[0])
        existing = self.nic.list_rules()
        for r in existing:
            if _same_rule(r, rule):
                self.rule = r
                self.report.append({"step": "rule", "changed": False, "location": r.location})
                return
        entry = self._record({"step": "rule", "rule": _rule_dict(rule), "location": None,
                              "pre_locations": [r.location for r in existing if r.location is not None]})
        placed = self.nic.add_rule(rule)
        entry["location"] = placed.location
        self.journal.save()
        self.rule = placed
        self._hook("applied", "rule")
        self.report.append({"step": "rule", "changed": True, "location": placed.location,
                            "rule": _rule_dict(placed)})

    def _step_bind(self) -> None:
        if self.dmabuf is None:
            return
        ifindex = getattr(self.nic, "ifindex", None) or socket.if_nametoindex(self.ifname)
        start, count = self.queues
        self._record({"step": "bind", "queues": list(range(start, start + count))})
        self.binding = self.backend.bind_rx(ifindex, self.dmabuf, list(range(start, start + count)))
        self._hook("applied", "bind")
        self.report.append({"step": "bind", "changed": True, "binding_id": self.binding.id,
                            "queues": list(self.binding.queues)})

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
            with journal_lock(self.journal):
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

    def _undo_locked(self) -> UndoResult:
        """(under the lock) Undo this setup's entries, reloading the journal first
        (other setups may have changed it)."""
        try:
            if self.journal.exists():
                self.journal = Journal.load(self.journal.path)
            others = self._others()
            mine = [e for e in self.journal.entries if entry_owner(e, self.journal).get("id") == self.id]
            for e in mine:
                if e["step"] in SHARED_STEPS and others:
                    e["owner"] = others[0]  # still needed by another flow: hand it over
            self.journal.meta["members"] = [m for m in self.journal.meta.get("members", [])
                                            if m.get("id") != self.id]
            result = undo_journal(self.journal, self.nic, self.binding,
                                  select=lambda e: entry_owner(e, self.journal).get("id") == self.id)
            if self.binding is not None and not any(s == "bind" for s, _ in result.done):
                self.binding.close()
            self.binding = None
        finally:
            self._applied = False
            _LIVE.discard(self.id)
        return result

    def keep(self) -> Path | None:
        """Leave the NIC configured (for ``devmemtcp setup``): the journal stays on
        disk, marked as kept, for a later ``devmemtcp restore``. Returns its path
        (None when nothing was changed)."""
        self._restore_signals()
        self._applied = False
        _LIVE.discard(self.id)
        with journal_lock(self.journal):
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------


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
        if ns is not None and ns != netns_id():
            raise DevmemError(
                f"the journal for {ifname} was written in another network namespace (net:[{ns}])",
                f"run restore inside that namespace: ip netns exec NS devmemtcp restore {ifname}")
        live = [] if force else live_members(j)

        def gone(e: dict[str, Any]) -> bool:
            return force or not owner_alive(entry_owner(e, j))

        if j.entries and not any(gone(e) for e in j.entries):
            pids: list[Any] = sorted({int(m["pid"]) for m in live}) or [j.meta.get("pid")]
            raise DevmemError(f"{ifname} is being used by a running devmemtcp (pid {pids[0]})",
                              f"stop it (kill {pids[0]}: it restores the NIC itself) or pass --force")
        for e in j.entries:
            if gone(e) and e["step"] in SHARED_STEPS and live:
                e["owner"] = live[0]
        if force:
            j.meta["members"] = []
        name = str(j.meta.get("backend", "kernel"))
        if name not in ("kernel", "emulated"):
            raise DevmemError(f"unknown backend {name!r} in the journal", "use kernel or emulated")
        be = backend or open_backend(name)[0]
        return undo_journal(j, be.nic(ifname), select=gone)


# ---------------------------------------------------------------------------
# Network namespaces
# ---------------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000


def call_in_netns(netns: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a fresh thread moved into the named
    network namespace (``/var/run/netns/NAME``, as ``ip netns add`` makes).

    Sockets, netlink and ioctls made by ``fn`` act in that namespace; the
    caller's thread is untouched. Needs CAP_SYS_ADMIN. Exceptions propagate."""
    libc = ctypes.CDLL(None, use_errno=True)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            path = netns if "/" in netns else f"/var/run/netns/{netns}"
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise DevmemError(f"no network namespace named {netns!r}",
                                  "list them with 'ip netns list'") from None
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, name=f"netns-{netns}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


__all__ = [
    "DEFAULT_JOURNAL_DIR",
    "STEPS",
    "Flow",
    "Journal",
    "NicSetup",
    "UndoResult",
    "call_in_netns",
    "default_journal_dir",
    "journals",
    "restore",
    "undo_journal",
]
