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
``JOURNAL_DIR`` is ``$DEVMEMTCP_JOURNAL_DIR`` or /run/devmemtcp.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import fcntl
import json
import os
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from devmemtcp.errors import DevmemError
from devmemtcp.host import netns

if TYPE_CHECKING:
    from devmemtcp.backend.base import Binding, NicControl

DEFAULT_JOURNAL_DIR = Path("/run/devmemtcp")
JOURNAL_DIR_ENV = "DEVMEMTCP_JOURNAL_DIR"
#: The format this devmemtcp writes and reads (a journal without "version" is 1).
JOURNAL_VERSION = 1

E = TypeVar("E", bound="Entry")


def default_journal_dir() -> Path:
    """``$DEVMEMTCP_JOURNAL_DIR`` if set (read at each call), else /run/devmemtcp."""
    return Path(os.environ.get(JOURNAL_DIR_ENV) or DEFAULT_JOURNAL_DIR)


def journal_name(ifname: str, ns: int | None = None) -> str:
    """``IFNAME.json``, or ``IFNAME@NETNS.json`` inside a namespace ``ip netns``
    names (namespace inode ``ns``, default the calling thread's), so ``lo`` or
    ``veth0`` of different namespaces never share a journal."""
    name = netns.name_of(ns)
    return f"{ifname}.json" if name is None else f"{ifname}@{name}.json"


# ---------------------------------------------------------------------------
# Schema: field types, checked on load
# ---------------------------------------------------------------------------


class SchemaError(Exception):
    """A journal field is missing or of the wrong type (``field``: its path)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field!r} {problem}")
        self.field = field


def _words(tp: Any) -> str:
    """``tp`` as the JSON a reader expects: "an integer", "a list of integers", ..."""
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_words(a) for a in typing.get_args(tp))
    if origin is list or tp is list:
        args = typing.get_args(tp)
        return f"a list of {_words(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):
        return "an object"
    return str(tp)


def _json_type(value: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def check(value: Any, tp: Any, field: str) -> Any:
    """``value`` (parsed JSON) as type ``tp``: plain types, ``X | None``,
    ``list[X]``, ``dict[str, X]`` and dataclasses (built from an object).
    Raises SchemaError naming ``field`` when it does not fit."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return check(value, arg, field)
            except SchemaError:
                continue
        raise SchemaError(field, f"must be {_words(tp)}, not {_json_type(value)}")
    if tp is type(None):
        ok = value is None
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif origin is list or tp is list:
        if not isinstance(value, list):
            raise SchemaError(field, f"must be {_words(tp)}, not {_json_type(value)}")
        (item,) = typing.get_args(tp) or (Any,)
        return [check(v, item, f"{field}[{i}]") for i, v in enumerate(value)]
    elif origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SchemaError(field, f"must be {_words(tp)}, not {_json_type(value)}")
        _key, item = typing.get_args(tp) or (str, Any)
        return {str(k): check(v, item, f"{field}.{k}") for k, v in value.items()}
    elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise SchemaError(field, f"must be an object, not {_json_type(value)}")
        return tp(**check_fields(tp, value, field))
    else:
        raise TypeError(f"no journal schema for type {tp!r}")
    if not ok:
        raise SchemaError(field, f"must be {_words(tp)}, not {_json_type(value)}")
    return value


def check_fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """The keyword arguments of dataclass ``cls`` read from ``data``: each field
    checked against its annotation; a field with a default may be missing
    (older journals), one without is a SchemaError; unknown keys are ignored."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        name = f"{where}.{f.name}" if where else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SchemaError(name, "is missing")
            continue
        out[f.name] = check(data[f.name], hints[f.name], name)
    return out


# ---------------------------------------------------------------------------
# Entries
# ---------------------------------------------------------------------------

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
        binding of the setup undoing it, if any); returns what was done.
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
}
_MEMBER_SCHEMA: dict[str, Any] = {"pid": int, "start": int | None, "id": str | None}


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
        for key, tp in _MEMBER_SCHEMA.items():
            if key in m:
                check(m[key], tp, f"members[{i}].{key}")
        if "pid" not in m:
            raise SchemaError(f"members[{i}].pid", "is missing")
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
    def load(cls, path: Path) -> Journal:
        """Read and check a journal file.

        Raises DevmemError ("cannot read undo journal PATH: ...") when it is
        not JSON, when a field is missing or of the wrong type (the message
        names the field), or when its version is not one this devmemtcp reads.
        """
        fix = ("fix or remove that field if you edited the file; otherwise undo the NIC settings by hand "
               "(ethtool) and delete the file")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DevmemError(f"cannot read undo journal {path}: {exc}",
                              "inspect the file; delete it only if you restored the NIC by hand") from None
        try:
            _check_meta(data)
            version = data.get("version", 1)
            if version != JOURNAL_VERSION:
                raise DevmemError(
                    f"cannot read undo journal {path}: field 'version' is {version}, this devmemtcp reads "
                    f"version {JOURNAL_VERSION}",
                    "run `devmemtcp restore` with the devmemtcp that wrote it (a newer one), then upgrade")
            j = cls(data["ifname"], path.parent)
            j.path = path
            j.entries = [entry_from_dict(e, f"entries[{i}]") for i, e in enumerate(data["entries"])]
        except SchemaError as exc:
            raise DevmemError(f"cannot read undo journal {path}: {exc}", fix) from None
        j.meta = {k: v for k, v in data.items() if k not in ("entries", "version", "ifname")}
        return j

    def exists(self) -> bool:
        return self.path.exists()

    def save(self) -> None:
        """Write the journal atomically (temporary file, fsync, rename, fsync of the directory)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = dict(self.meta, version=JOURNAL_VERSION, ifname=self.ifname,
                    entries=[e.to_dict() for e in self.entries])
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
