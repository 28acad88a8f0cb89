"""The emulated NIC's persistent state: one small JSON file per interface.

Two processes must see the same emulated NIC (``devmemtcp setup`` in one,
``devmemtcp recv --no-nic-config`` in another), so everything ethtool would
keep in the driver lives on disk:

* ``<dir>/<netns cookie>-<ifname>.json``: RX channel count, rings
  (tcp-data-split, hds-thresh), the RSS indirection table, ntuple rules, and a
  snapshot of the NIC's stats. A namespace is named by its netns cookie
  (``SO_NETNS_COOKIE``, unique for the boot; :func:`devmemtcp.host.netns.cookie`),
  not its inode, which the kernel hands to the next namespace once one is
  deleted: a new namespace never inherits a deleted one's header split, RSS
  or rules. The file also records the namespace's inode (to find out
  whether it still exists, :func:`collect`) and the state directory;
* ``<dir>/bindings.json``: the machine-wide binding registry. The kernel keeps
  every dmabuf binding in one global xarray (``net_devmem_dmabuf_bindings``
  in net/core/devmem.c, ``XA_FLAGS_ALLOC1``, ``xa_alloc_cyclic``), so RX and
  TX bindings of every interface and namespace share one id space allocated
  cyclically from 1; the registry keeps the cyclic cursor and the live
  bindings with their owner process.

A binding lives as long as the netlink socket that created it; the emulated
binding lives as long as its owner process (pid plus start time, so a reused
pid does not resurrect it) or until it is closed. Entries of dead owners are
ignored and pruned on the next write.

Both files carry ``"version": STATE_VERSION`` and are checked field by field
on load (:data:`NIC_SCHEMA`, :data:`REGISTRY_SCHEMA`): a file that does not
fit is moved aside into ``<dir>/corrupt/`` (never deleted, never half
applied) and reported in one line naming the file, the field and the fix;
the NIC then starts from its defaults.

The directory is ``$DEVMEMTCP_EMU_DIR`` if set, else ``emu`` under the
user's private state root (:func:`devmemtcp.host.files.state_root`:
``/run/devmemtcp/emu`` for root). It must be owned by the user and not
writable by others (:func:`devmemtcp.host.files.private_dir`, else a clear
error). Files are 0600, opened without following symlinks, replaced
atomically (a fresh ``O_EXCL`` file renamed over the old one); every
read-modify-write holds an exclusive ``flock`` on ``<dir>/.lock`` that gives
up after a timeout (default :data:`LOCK_TIMEOUT_S`) naming the holder pid.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from devmemtcp.errors import DevmemError
from devmemtcp.host import files, ifaces, netns, procs
from devmemtcp.host.schema import SchemaError, check_object, json_type

# Defaults of a freshly attached emulated NIC (modelled on a bnxt-like NIC):
# 4 combined channels out of 16, header split left to the driver ("unknown",
# which bind-rx treats as not enabled), hds-thresh 256 of at most 1023, an
# RSS indirection table of 128 entries spread equally over the channels.
DEFAULT_RX_QUEUES = 4
DEFAULT_MAX_QUEUES = 16
DEFAULT_RING = 1024
DEFAULT_RING_MAX = 4096
DEFAULT_HDS_THRESH = 256
DEFAULT_HDS_THRESH_MAX = 1023
RSS_TABLE_SIZE = 128
MAX_RULES = 1024  # ntuple rule slots (locations 0..1023)
#: Format of the state files; 2 names namespaces by netns cookie (1 used the inode).
STATE_VERSION = 2
#: Default seconds to wait for the state lock before giving up (naming the holder).
LOCK_TIMEOUT_S = 30.0

_ENV_DIR = "DEVMEMTCP_EMU_DIR"
_ENV_QUEUES = "DEVMEMTCP_EMU_QUEUES"


def state_dir() -> str:
    """The directory holding the emulated NICs' state (created 0700 if missing):
    ``$DEVMEMTCP_EMU_DIR``, else ``emu`` under :func:`devmemtcp.host.files.state_root`.

    Raises DevmemError naming the directory and the fix when it (or the
    state root above it) is a symlink, owned by another user, or writable by
    group or others."""
    env = os.environ.get(_ENV_DIR)
    if env:
        return str(files.private_dir(os.path.abspath(env)))
    root = files.private_dir(files.state_root())
    files.tighten(root)
    emu = files.private_dir(root / "emu")
    files.tighten(emu)
    return str(emu)


def _dir(directory: str | None) -> str:
    """``directory`` checked (and created) as a private directory, else :func:`state_dir`."""
    return str(files.private_dir(directory)) if directory else state_dir()


def default_rx_queues() -> int:
    """RX queue count of a newly attached emulated NIC (``$DEVMEMTCP_EMU_QUEUES`` or 4)."""
    raw = os.environ.get(_ENV_QUEUES)
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if not 1 <= n <= DEFAULT_MAX_QUEUES:
            raise DevmemError(
                f"{_ENV_QUEUES}={raw!r} is not a queue count in 1..{DEFAULT_MAX_QUEUES}",
                f"set {_ENV_QUEUES} to an integer between 1 and {DEFAULT_MAX_QUEUES}",
            )
        return n
    return DEFAULT_RX_QUEUES


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def locked(directory: str | None = None, timeout: float | None = None) -> Iterator[str]:
    """Hold the state directory's exclusive lock; yields the directory.

    ``timeout``: seconds to wait (None: :data:`LOCK_TIMEOUT_S`). Raises
    :class:`devmemtcp.host.files.LockTimeout` naming the holder's pid when
    it is not granted in time, DevmemError when the directory is not private."""
    d = _dir(directory)
    wait = LOCK_TIMEOUT_S if timeout is None else timeout
    with files.lock_file(os.path.join(d, ".lock"), timeout=wait, what="the emulated NIC state"):
        yield d


class StateFileError(DevmemError):
    """A state file that does not fit its schema (moved aside to ``moved_to``)."""

    def __init__(self, message: str, hint: str, moved_to: str | None) -> None:
        super().__init__(message, hint)
        self.moved_to = moved_to


def set_aside(path: str, subdir: str = "corrupt") -> str | None:
    """Move ``path`` into ``<its dir>/<subdir>/`` (0700) under a unique name;
    returns the new path (None when it was gone already)."""
    p = Path(path)
    dest_dir = files.private_dir(p.parent / subdir)
    dest = dest_dir / f"{p.name}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}.{time.monotonic_ns()}"
    try:
        os.rename(p, dest)
    except FileNotFoundError:
        return None
    return str(dest)


def _corrupt(path: str, why: str, fix: str) -> StateFileError:
    moved = None
    with contextlib.suppress(OSError, DevmemError):
        moved = set_aside(path)
    where = f"it was moved to {moved}; " if moved else ""
    return StateFileError(f"emulated NIC state file {path}: {why}", where + fix, moved)


def _read_json(path: str, schema: dict[str, Any] | None = None,
               check: Any = None, upgrade: Any = None) -> dict[str, Any] | None:
    """The checked contents of ``path`` (None when missing). A file that is not
    JSON, not an object, of another version, or has a field of the wrong type
    is moved aside and StateFileError raised (one line: file, field, fix)."""
    try:
        raw = files.read_private(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DevmemError(f"cannot read emulated NIC state file {path}: {exc.strerror}",
                          "check the file's owner and mode (it must be yours, 0600)") from None
    fix = ("the emulated NIC starts again from its defaults; run `devmemtcp restore` for "
           "journals that recorded changes on it")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(path, f"not JSON ({exc})", fix) from None
    try:
        if not isinstance(data, dict):
            raise SchemaError("(top level)", f"must be an object, not {json_type(data)}")
        version = data.get("version")
        if version is None and upgrade is not None and "version" not in data:
            data = upgrade(path, data)  # the unversioned format of devmemtcp 0.1
            version = data.get("version")
        if type(version) is not int or version != STATE_VERSION:
            raise SchemaError("version", f"is {version!r}, this devmemtcp reads version {STATE_VERSION}")
        if schema is not None:
            check_object(data, schema)
        if check is not None:
            check(data)
    except SchemaError as exc:
        raise _corrupt(path, str(exc), fix) from None
    return data


def _write_json(path: str, data: dict[str, Any]) -> None:
    files.atomic_write(path, json.dumps(data, indent=1, sort_keys=True).encode())


def nic_path(ifname: str, ns: int | None = None, directory: str | None = None) -> str:
    """Path of the state file of the emulated NIC on ``ifname``."""
    return os.path.join(directory or state_dir(), f"{ns if ns is not None else netns.cookie()}-{ifname}.json")


def registry_path(directory: str | None = None) -> str:
    """Path of the machine-wide binding registry."""
    return os.path.join(directory or state_dir(), "bindings.json")


def default_nic(ifname: str, ifindex: int, ns: int, queues: int | None = None,
                directory: str | None = None) -> dict[str, Any]:
    """The state of a freshly attached emulated NIC (``ns``: the netns cookie)."""
    n = queues if queues is not None else default_rx_queues()
    return {
        "version": STATE_VERSION,
        "ifname": ifname,
        "ifindex": ifindex,
        "netns": ns,
        "netns_inode": netns.inode() if ns == netns.cookie() else None,
        "state_dir": directory,
        "channels": {"combined": n, "combined_max": DEFAULT_MAX_QUEUES},
        "rings": {
            "rx": DEFAULT_RING,
            "rx_max": DEFAULT_RING_MAX,
            "tx": DEFAULT_RING,
            "tcp_data_split": "unknown",
            "hds_thresh": DEFAULT_HDS_THRESH,
            "hds_thresh_max": DEFAULT_HDS_THRESH_MAX,
        },
        "rss": {"indir": [i % n for i in range(RSS_TABLE_SIZE)], "configured": False},
        "rules": [],
        "stats": {},
        # driver capabilities: the queue management API (bind-rx) and netmem TX mode (bind-tx)
        "caps": {"queue_mgmt": True, "netmem_tx": "dma"},
        # emulation.netkit: "physical" or a netkit end; RX queue leases; TX drops
        "kind": "physical",
        "leases": {},
        "tx_dropped": 0,
    }


#: Types of the NIC state file's fields (checked on load; unknown keys are left alone).
NIC_SCHEMA: dict[str, Any] = {
    "version": int, "ifname": str, "ifindex": int, "netns": int, "netns_inode": int | None,
    "state_dir": str | None,
    "channels": dict[str, int], "rings": dict[str, Any], "rss": dict[str, Any],
    "rules": list[dict[str, Any]], "stats": dict[str, dict[str, int]], "caps": dict[str, Any],
}
_RINGS_SCHEMA: dict[str, Any] = {
    "rx": int, "rx_max": int, "tx": int, "tcp_data_split": Literal["unknown", "disabled", "enabled"],
    "hds_thresh": int, "hds_thresh_max": int,
}
_RSS_SCHEMA: dict[str, Any] = {"indir": list[int], "configured": bool}
_RULE_SCHEMA: dict[str, Any] = {
    "location": int, "dst_ip": str, "dst_port": int, "queue": int, "src_ip": str | None,
    "src_port": int | None, "family": int,
}
_CAPS_SCHEMA: dict[str, Any] = {"queue_mgmt": bool, "netmem_tx": Literal["dma", "none", "no_dma"]}
#: Types of the binding registry's fields.
REGISTRY_SCHEMA: dict[str, Any] = {"version": int, "next": int, "live": dict[str, dict[str, Any]]}
_BINDING_SCHEMA: dict[str, Any] = {
    "pid": int, "start": int | None, "kind": Literal["rx", "tx"], "ifindex": int, "ifname": str,
    "netns": int, "queues": list[int],
}


def _check_nic(ifname: str, ns: int) -> Any:
    def check(data: dict[str, Any]) -> None:
        check_object(data["channels"], {"combined": int, "combined_max": int}, "channels")
        check_object(data["rings"], _RINGS_SCHEMA, "rings")
        check_object(data["rss"], _RSS_SCHEMA, "rss")
        for i, rule in enumerate(data["rules"]):
            check_object(rule, _RULE_SCHEMA, f"rules[{i}]", required=("location", "dst_ip", "dst_port",
                                                                       "queue"))
        check_object(data["caps"], _CAPS_SCHEMA, "caps", required=())
        if data["channels"]["combined"] < 0:
            raise SchemaError("channels.combined", f"is {data['channels']['combined']}, not a channel count")
        if data["ifname"] != ifname:
            raise SchemaError("ifname", f"is {data['ifname']!r}, but the file is for {ifname!r}")
        if data["netns"] != ns:
            raise SchemaError("netns", f"is {data['netns']}, but the file is for namespace cookie {ns}")
    return check


def _check_registry(data: dict[str, Any]) -> None:
    for key, b in data["live"].items():
        if not key.isdigit():
            raise SchemaError(f"live.{key}", "is not a binding id")
        check_object(b, _BINDING_SCHEMA, f"live.{key}", required=("pid", "kind", "ifname", "netns"))


def load_nic(ifname: str, *, directory: str | None = None, ns: int | None = None,
             queues: int | None = None) -> dict[str, Any]:
    """Current state of the emulated NIC on ``ifname`` in the namespace with
    cookie ``ns`` (default: the calling thread's); a fresh default when none
    was saved, or when the interface was re-created with a new ifindex.

    Does not take the lock: files are replaced atomically. Raises
    StateFileError (the file moved aside) when the saved state does not fit
    :data:`NIC_SCHEMA`."""
    ns = netns.cookie() if ns is None else ns
    ifindex = ifaces.ifindex(ifname)
    d = directory or state_dir()
    data = _read_json(nic_path(ifname, ns, d), NIC_SCHEMA, _check_nic(ifname, ns))
    if data is None or data.get("ifindex") != ifindex:
        return default_nic(ifname, ifindex, ns, queues, d)
    return data


def read_nic(ifname: str, ns: int, directory: str | None = None) -> dict[str, Any] | None:
    """The saved state of the emulated NIC ``ifname`` of namespace ``ns`` as
    written, without resolving the interface here (it may live in another
    namespace); None when none was saved."""
    data = _read_json(nic_path(ifname, ns, directory), NIC_SCHEMA, _check_nic(ifname, ns))
    return data if data is not None and data.get("version") == STATE_VERSION else None


def save_nic(state: dict[str, Any], directory: str | None = None) -> None:
    """Write ``state`` (caller holds :func:`locked`). The first file of a
    namespace also collects the files of namespaces that are gone."""
    d = directory or state_dir()
    path = nic_path(state["ifname"], state["netns"], d)
    state["state_dir"] = d
    if state.get("netns_inode") is None and state["netns"] == netns.cookie():
        state["netns_inode"] = netns.inode()
    fresh = not os.path.lexists(path)
    _write_json(path, state)
    if fresh:
        collect(d)


def collect(directory: str | None = None) -> list[str]:
    """Delete the NIC state files of namespaces that no longer exist (their
    interfaces, and what the files record, went with them); returns the
    paths removed. Only files of this format that record their namespace's
    inode are considered; a namespace that may exist but cannot be checked
    (this process may not enter it) keeps its files. Caller holds :func:`locked`."""
    d = directory or state_dir()
    here = netns.cookie()
    removed: list[str] = []
    verdict: dict[int, bool | None] = {}
    for name in sorted(os.listdir(d)):
        head, sep, _rest = name.partition("-")
        if not sep or not name.endswith(".json") or not head.isdigit() or int(head) == here:
            continue
        path = os.path.join(d, name)
        cookie = int(head)
        try:
            data = json.loads(files.read_private(path))
        except (OSError, ValueError, DevmemError):
            continue
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            continue
        ino = data.get("netns_inode")
        if type(ino) is not int:
            continue
        if cookie not in verdict:
            verdict[cookie] = netns.exists(cookie, ino)
        if verdict[cookie] is False:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
    return removed


def load_registry(directory: str | None = None) -> dict[str, Any]:
    """The binding registry with dead owners' bindings dropped. Raises
    StateFileError (the file moved aside) when it does not fit :data:`REGISTRY_SCHEMA`."""
    data = _read_json(registry_path(directory), REGISTRY_SCHEMA, _check_registry, _upgrade_registry) or {}
    live = {}
    for key, b in (data.get("live") or {}).items():
        if procs.alive(int(b["pid"]), b.get("start")):
            live[key] = b
    return {"version": STATE_VERSION, "next": int(data.get("next", 1)), "live": live}


def _upgrade_registry(path: str, data: dict[str, Any]) -> dict[str, Any]:
    """devmemtcp 0.1's registry (no version; namespaces by inode): its id cursor
    is kept so binding ids stay cyclic; its bindings are dropped when their
    processes are gone. One still running is an older devmemtcp using the
    emulated NIC now: a clear error, the file left as it is."""
    live = data.get("live")
    for b in (live.values() if isinstance(live, dict) else []):
        pid = b.get("pid") if isinstance(b, dict) else None
        if type(pid) is int and procs.alive(pid, b.get("start")):
            raise DevmemError(f"an older devmemtcp (pid {pid}) is using the emulated NIC state in {path}",
                              "let it finish (or stop it), then run this one again")
    nxt = data.get("next")
    return {"version": STATE_VERSION, "next": nxt if type(nxt) is int and nxt >= 1 else 1, "live": {}}


def save_registry(reg: dict[str, Any], directory: str | None = None) -> None:
    """Write the registry (caller holds :func:`locked`)."""
    _write_json(registry_path(directory), dict(reg, version=STATE_VERSION))


U32_MAX = 0xFFFFFFFF


def alloc_binding_id(reg: dict[str, Any]) -> int:
    """Allocate the next binding id like ``xa_alloc_cyclic`` over
    ``[1, U32_MAX]`` (XA_FLAGS_ALLOC1, xa_limit_32b): the first free id at or
    after the cursor, wrapping to 1; the cursor moves past it. Mutates
    ``reg``; raises OSError(EBUSY) when every id is taken (as xa_alloc does)."""
    used = {int(k) for k in reg["live"]}
    nxt = max(1, int(reg["next"]))
    for _ in range(len(used) + 1):
        if nxt > U32_MAX:
            nxt = 1
        if nxt not in used:
            reg["next"] = nxt + 1 if nxt < U32_MAX else 1
            return nxt
        nxt += 1
    raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))


def bound_queues(reg: dict[str, Any], ns: int, ifname: str) -> dict[int, int]:
    """``{rx queue: binding id}`` of live RX bindings on the NIC ``(ns, ifname)``."""
    out: dict[int, int] = {}
    for key, b in reg["live"].items():
        if b["kind"] == "rx" and b["netns"] == ns and b["ifname"] == ifname:
            for q in b["queues"]:
                out[int(q)] = int(key)
        # a bind-rx on a netkit guest binds the leased physical queues
        phys = b.get("phys")
        if b["kind"] == "rx" and phys and phys["netns"] == ns and phys["ifname"] == ifname:
            for q in phys["queues"]:
                out[int(q)] = int(key)
    return out


def clone(state: dict[str, Any]) -> dict[str, Any]:
    """Deep copy of a state dict (callers mutate copies, never cached originals)."""
    return copy.deepcopy(state)
