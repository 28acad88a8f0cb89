"""The undo journal of one interface: the file, its lock and its format.

``JOURNAL_DIR/IFNAME.json`` (``IFNAME@NETNS.json`` inside a namespace ``ip
netns`` names) is one JSON object::

    {"version": 1, "ifname": "eth1", "pid": 4242, "created": 1.7e9,
     "backend": "kernel", "netns": 4026531840, "ifindex": 3, "queues": [15, 1],
     "flow": {...}, "members": [{"pid": 4242, "start": 123, "id": "..."}],
     "kept": false,
     "entries": [{"step": "rings", "before": {...}, "owner": {...}}, ...]}

``entries`` are the changes in the order they were made; each is a typed
:class:`Entry` (one class per step, in :mod:`devmemtcp.setup.steps`) named by
its ``step``. :meth:`Journal.load` checks every field it knows against its
type (a journal without ``version`` is version 1) and raises DevmemError
naming the file, the field and the fix when one is missing or of the wrong
type, so a hand-edited or foreign file is refused before anything is undone.
``JOURNAL_DIR`` is ``$DEVMEMTCP_JOURNAL_DIR`` or the user's private state
root (/run/devmemtcp for root): 0700, owned by the user (else refused);
journals and locks are 0600 and opened without following symlinks.

Every journal records its namespace by inode (``netns``) and netns cookie
(``netns_cookie``, unique for the boot: the inode is reused) and, for the
emulated backend, the emulated NIC's state directory (``emu_dir``). A
journal that does not load is set aside into ``corrupt/``; one whose
namespace is gone into ``stale/`` (:mod:`devmemtcp.setup.restore`).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from devmemtcp.errors import DevmemError
from devmemtcp.host import files, netns
from devmemtcp.host.schema import SchemaError, check, check_fields, check_object
from devmemtcp.host.schema import json_type as _json_type

if TYPE_CHECKING:
    from devmemtcp.backend.base import Binding, NicControl

#: root's journal directory; other users' is their private state root (host.files.state_root)
DEFAULT_JOURNAL_DIR = Path("/run/devmemtcp")
JOURNAL_DIR_ENV = "DEVMEMTCP_JOURNAL_DIR"
#: The format this devmemtcp writes and reads (a journal without "version" is 1).
JOURNAL_VERSION = 1

E = TypeVar("E", bound="Entry")


#: seconds to wait for a journal's lock before giving up (naming the holder)
LOCK_TIMEOUT_S = 30.0
#: subdirectories of the journal directory for journals set aside
CORRUPT_DIR = "corrupt"
STALE_DIR = "stale"


def default_journal_dir() -> Path:
    """``$DEVMEMTCP_JOURNAL_DIR`` if set (read at each call), else the user's
    private state root (:func:`devmemtcp.host.files.state_root`:
    /run/devmemtcp for root). Not created here; :meth:`Journal.save` and
    :func:`journal_lock` create and check it (0700, owned by the user)."""
    env = os.environ.get(JOURNAL_DIR_ENV)
    return Path(os.path.abspath(env)) if env else files.state_root()


def _private(d: Path) -> None:
    """Create/check journal directory ``d``; the default one (devmemtcp's own)
    is made 0700 again if an older version left it readable by others."""
    files.private_dir(d)
    if d == files.state_root():
        files.tighten(d)


class JournalError(DevmemError):
    """A journal that cannot be used: unreadable, or a field that does not fit.
    ``moved_to``: where it was set aside (None: left in place)."""

    def __init__(self, message: str, hint: str, moved_to: Path | None = None) -> None:
        super().__init__(message, hint)
        self.moved_to = moved_to


def set_aside(path: Path, subdir: str) -> Path | None:
    """Move journal ``path`` into ``<its dir>/<subdir>/`` (0700) under a unique
    name, never over another one; returns the new path (None: it was gone)."""
    dest_dir = files.private_dir(path.parent / subdir)
    dest = dest_dir / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}.{time.monotonic_ns()}"
    try:
        os.rename(path, dest)
    except FileNotFoundError:
        return None
    return dest


def journal_name(ifname: str, ns: int | None = None) -> str:
    """``IFNAME.json``, or ``IFNAME@NETNS.json`` inside a namespace ``ip netns``
    names (namespace inode ``ns``, default the calling thread's), so ``lo`` or
    ``veth0`` of different namespaces never share a journal."""
    name = netns.name_of(ns)
    return f"{ifname}.json" if name is None else f"{ifname}@{name}.json"


# The schema checker (check, check_fields, SchemaError) lives in devmemtcp.host.schema.


# ---------------------------------------------------------------------------
# Entries
# ---------------------------------------------------------------------------

class Unchanged(str):
    """What :meth:`Entry.undo` returns when it found nothing to put back (the
    setting was already as before, the rule is gone or is not ours): the
    entry is done with, but nothing was restored."""


#: Entry classes by step name, in the fixed order the steps run (registration order).
ENTRY_TYPES: dict[str, type[Entry]] = {}


@dataclasses.dataclass(kw_only=True)
class Entry(abc.ABC):
    """One journaled change: what is needed to undo it, and who made it.

    Subclasses (one per step, see :mod:`devmemtcp.setup.steps`) are
    dataclasses whose fields are the JSON keys of the entry besides ``step``
    and ``owner``; :func:`register` makes them known to :meth:`Journal.load`.
    """

    #: The step's name: the entry's "step" key.
    step: ClassVar[str]
    #: A setting every flow on the NIC depends on (kept while a live setup uses it).
    shared: ClassVar[bool] = False
    #: ``{pid, start, id}`` of the NicSetup that made the change (None in old journals:
    #: the journal's writing process, see :func:`devmemtcp.setup.restore.entry_owner`).
    owner: dict[str, Any] | None = None

    @abc.abstractmethod
    def undo(self, nic: NicControl, binding: Binding | None) -> str:
        """Put back what this entry changed on ``nic`` (``binding``: the live
        binding of the setup undoing it, if any); returns what was done
        (an :class:`Unchanged` when nothing needed putting back).
        Raises the backend's error on failure (the entry then stays)."""

    def to_dict(self) -> dict[str, Any]:
        """The entry as stored: ``{"step": ..., fields..., "owner": ...}``."""
        d: dict[str, Any] = {"step": self.step}
        for f in dataclasses.fields(self):
            if f.name != "owner":
                d[f.name] = _plain(getattr(self, f.name))
        d["owner"] = self.owner
        return d

    @classmethod
    def from_dict(cls: type[E], data: dict[str, Any], where: str = "") -> E:
        """The entry ``data`` describes (its "step" not checked here: see
        :func:`entry_from_dict`). Raises SchemaError naming the field."""
        return cls(**check_fields(cls, data, where))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def register(cls: type[E]) -> type[E]:
    """Class decorator: make entry class ``cls`` known by its ``step`` name."""
    if cls.step in ENTRY_TYPES:
        raise ValueError(f"journal step {cls.step!r} registered twice")
    ENTRY_TYPES[cls.step] = cls
    return cls


def entry_from_dict(data: Any, where: str = "entry") -> Entry:
    """The typed entry of a stored one; SchemaError naming the field when
    ``step`` is unknown or a field does not fit."""
    if not isinstance(data, dict):
        raise SchemaError(where, f"must be an object, not {_json_type(data)}")
    step = data.get("step")
    if step is None:
        raise SchemaError(f"{where}.step", "is missing")
    cls = ENTRY_TYPES.get(step) if isinstance(step, str) else None
    if cls is None:
        raise SchemaError(f"{where}.step",
                          f"names an unknown step {step!r} (known: {', '.join(ENTRY_TYPES)}; "
                          "a newer devmemtcp may have written it)")
    return cls.from_dict(data, where)


# The journal's own keys and their types (the entries are checked by their classes).
META_SCHEMA: dict[str, Any] = {
    "version": int, "ifname": str, "pid": int | None, "created": float, "backend": str,
    "netns": int | None, "ifindex": int | None, "queues": list[int], "flow": dict[str, Any] | None,
    "members": list[dict[str, Any]], "kept": bool, "selftest": bool,
    "netns_cookie": int | None, "emu_dir": str | None, "spread": int | None,
}
_MEMBER_SCHEMA: dict[str, Any] = {"pid": int, "start": int | None, "id": str | None,
                                  "queues": list[int] | None, "bind": bool | None}


def _check_meta(data: Any) -> None:
    if not isinstance(data, dict):
        raise SchemaError("(top level)", f"must be an object, not {_json_type(data)}")
    for key in ("ifname", "entries"):
        if key not in data:
            raise SchemaError(key, "is missing")
    for key, tp in META_SCHEMA.items():
        if key in data:
            check(data[key], tp, key)
    for i, m in enumerate(data.get("members") or []):
        check_object(m, _MEMBER_SCHEMA, f"members[{i}]", required=("pid",))
    if not isinstance(data["entries"], list):
        raise SchemaError("entries", f"must be a list of objects, not {_json_type(data['entries'])}")


# ---------------------------------------------------------------------------
# The journal file
# ---------------------------------------------------------------------------


class Journal:
    """The undo journal of one interface: ``DIR/IFNAME.json`` (``IFNAME@NETNS.json``
    outside the initial network namespace, see :func:`journal_name`).

    ``entries`` are typed :class:`Entry` objects in the order the changes
    were made; ``meta`` the journal's other keys (pid, backend, netns,
    members, ...). Every :meth:`save` writes a temporary file, fsyncs it,
    renames it over the journal and fsyncs the directory, so a crash leaves
    either the old or the new journal. The file is removed once every entry
    is undone.
    """

    def __init__(self, ifname: str, journal_dir: Path | str | None = None) -> None:
        if not ifname or "/" in ifname or ifname.startswith("."):
            raise DevmemError(f"bad interface name {ifname!r}", "give the interface name, e.g. eth0")
        self.ifname = ifname
        self.dir = Path(journal_dir) if journal_dir is not None else default_journal_dir()
        self.path = self.dir / journal_name(ifname)
        self.meta: dict[str, Any] = {}
        self.entries: list[Entry] = []

    @classmethod
    def load(cls, path: Path, *, set_aside_bad: bool = True) -> Journal:
        """Read and check a journal file (opened without following symlinks;
        it must be the user's own).

        Raises JournalError ("cannot read undo journal PATH: ...", one line) when it is
        not JSON, when a field is missing or of the wrong type, when its
        ``ifname`` is not the one its file name says (the message names the
        field), or when its version is not one this devmemtcp reads. A bad
        journal is moved into ``corrupt/`` beside it (``set_aside_bad``), so
        it is never half applied, never deleted, and the others still
        replay; a journal of a *newer* version stays where it is for the
        devmemtcp that wrote it.
        """
        path = Path(path)
        fix = ("nothing it records was undone: fix or remove that field if you edited the file and move it "
               "back, otherwise undo the NIC settings by hand (ethtool) and delete the file")
        try:
            data = json.loads(files.read_private(path))
        except (ValueError, UnicodeDecodeError) as exc:
            raise cls._bad(path, f"not JSON ({exc})", fix, set_aside_bad) from None
        except OSError as exc:
            raise JournalError(f"cannot read undo journal {path}: {exc.strerror or exc}",
                               "check the file's owner and mode (it must be yours, 0600)") from None
        version = data.get("version", 1) if isinstance(data, dict) else None
        if isinstance(version, int) and not isinstance(version, bool) and version > JOURNAL_VERSION:
            raise JournalError(
                f"cannot read undo journal {path}: field 'version' is {version}, this devmemtcp reads "
                f"version {JOURNAL_VERSION}",
                "run `devmemtcp restore` with the devmemtcp that wrote it (a newer one), then upgrade")
        try:
            _check_meta(data)
            if version != JOURNAL_VERSION:
                raise SchemaError("version", f"is {version!r}, this devmemtcp reads {JOURNAL_VERSION}")
            ifname = data["ifname"]
            if not ifname or "/" in ifname or ifname.startswith(".") or not (
                    path.name == f"{ifname}.json" or path.name.startswith(f"{ifname}@")):
                raise SchemaError("ifname", f"is {ifname!r}, but the file {path.name} is another interface's")
            j = cls(ifname, path.parent)
            j.path = path
            j.entries = [entry_from_dict(e, f"entries[{i}]") for i, e in enumerate(data["entries"])]
        except SchemaError as exc:
            raise cls._bad(path, str(exc), fix, set_aside_bad) from None
        j.meta = {k: v for k, v in data.items() if k not in ("entries", "version", "ifname")}
        return j

    @staticmethod
    def _bad(path: Path, why: str, fix: str, move: bool) -> JournalError:
        moved = None
        if move:
            with contextlib.suppress(OSError, DevmemError):
                moved = set_aside(path, CORRUPT_DIR)
        where = f"it was moved to {moved}; " if moved else ""
        return JournalError(f"cannot read undo journal {path}: {why}", where + fix, moved)

    def exists(self) -> bool:
        return self.path.exists()

    def save(self) -> None:
        """Write the journal atomically (temporary file, fsync, rename, fsync of the directory)."""
        _private(self.dir)
        data = dict(self.meta, version=JOURNAL_VERSION, ifname=self.ifname,
                    entries=[e.to_dict() for e in self.entries])
        files.atomic_write(self.path, json.dumps(data, indent=1).encode())

    def append(self, entry: E) -> E:
        """Add ``entry`` and save (before the change it records is made)."""
        self.entries.append(entry)
        self.save()
        return entry

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.entries = []


@contextlib.contextmanager
def journal_lock(journal: Journal, timeout: float | None = None) -> Iterator[None]:
    """Exclusive ``flock`` on ``DIR/.NAME.lock`` (0600, in a 0700 directory of
    the user's): one process at a time reads and changes an interface's
    journal (and the settings it records).

    ``timeout``: seconds to wait (None: :data:`LOCK_TIMEOUT_S`). Raises
    :class:`devmemtcp.host.files.LockTimeout` naming the holder's pid when
    not granted in time; DevmemError when the directory is not private."""
    _private(journal.dir)
    wait = LOCK_TIMEOUT_S if timeout is None else timeout
    with files.lock_file(journal.dir / f".{journal.path.name}.lock", timeout=wait,
                         what=f"the undo journal of {journal.ifname}"):
        yield
