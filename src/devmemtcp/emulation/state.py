"""The emulated NIC's persistent state: one small JSON file per interface.

Two processes must see the same emulated NIC (``devmemtcp setup`` in one,
``devmemtcp recv --no-nic-config`` in another), so everything ethtool would
keep in the driver lives on disk:

* ``<dir>/<netns inode>-<ifname>.json``: RX channel count, rings
  (tcp-data-split, hds-thresh), the RSS indirection table, ntuple rules, and a
  snapshot of the NIC's stats;
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

The directory is ``$DEVMEMTCP_EMU_DIR`` if set, else ``/run/devmemtcp/emu``
when writable, else ``$XDG_RUNTIME_DIR/devmemtcp/emu`` or
``/tmp/devmemtcp-<uid>/emu``. Every read-modify-write holds an exclusive
``flock`` on ``<dir>/.lock``; files are replaced atomically (write + rename),
so readers never see a torn file.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from devmemtcp.errors import DevmemError
from devmemtcp.host import ifaces, netns, procs

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
STATE_VERSION = 1

_ENV_DIR = "DEVMEMTCP_EMU_DIR"
_ENV_QUEUES = "DEVMEMTCP_EMU_QUEUES"


def state_dir() -> str:
    """The directory holding the emulated NICs' state (created if missing)."""
    env = os.environ.get(_ENV_DIR)
    candidates = [env] if env else []
    candidates.append("/run/devmemtcp/emu")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        candidates.append(os.path.join(xdg, "devmemtcp", "emu"))
    candidates.append(os.path.join(tempfile.gettempdir(), f"devmemtcp-{os.getuid()}", "emu"))
    last: OSError | None = None
    for path in candidates:
        try:
            os.makedirs(path, mode=0o755, exist_ok=True)
            if os.access(path, os.W_OK):
                return path
        except OSError as exc:
            last = exc
        if env:
            break
    raise DevmemError(
        f"no writable directory for the emulated NIC state (tried {', '.join(candidates)}): {last}",
        f"set {_ENV_DIR} to a writable directory",
    )


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
def locked(directory: str | None = None) -> Iterator[str]:
    """Hold the state directory's exclusive lock; yields the directory."""
    d = directory or state_dir()
    if directory:
        os.makedirs(d, exist_ok=True)
    fd = os.open(os.path.join(d, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield d
    finally:
        os.close(fd)  # closing drops the flock


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DevmemError(
            f"emulated NIC state file {path} is unreadable: {exc}",
            "delete the file to reset the emulated NIC",
        ) from exc
    return data if isinstance(data, dict) else None


def _write_json(path: str, data: dict[str, Any]) -> None:
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def nic_path(ifname: str, ns: int | None = None, directory: str | None = None) -> str:
    """Path of the state file of the emulated NIC on ``ifname``."""
    return os.path.join(directory or state_dir(), f"{ns if ns is not None else netns.inode()}-{ifname}.json")


def registry_path(directory: str | None = None) -> str:
    """Path of the machine-wide binding registry."""
    return os.path.join(directory or state_dir(), "bindings.json")


def default_nic(ifname: str, ifindex: int, ns: int, queues: int | None = None) -> dict[str, Any]:
    """The state of a freshly attached emulated NIC."""
    n = queues if queues is not None else default_rx_queues()
    return {
        "version": STATE_VERSION,
        "ifname": ifname,
        "ifindex": ifindex,
        "netns": ns,
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


def load_nic(ifname: str, *, directory: str | None = None, ns: int | None = None,
             queues: int | None = None) -> dict[str, Any]:
    """Current state of the emulated NIC on ``ifname`` (a fresh default when
    none was saved, or when the interface was re-created with a new ifindex).

    Does not take the lock: files are replaced atomically."""
    ns = netns.inode() if ns is None else ns
    ifindex = ifaces.ifindex(ifname)
    data = _read_json(nic_path(ifname, ns, directory))
    if data is None or data.get("version") != STATE_VERSION or data.get("ifindex") != ifindex:
        return default_nic(ifname, ifindex, ns, queues)
    return data


def read_nic(ifname: str, ns: int, directory: str | None = None) -> dict[str, Any] | None:
    """The saved state of the emulated NIC ``ifname`` of namespace ``ns`` as
    written, without resolving the interface here (it may live in another
    namespace); None when none was saved."""
    data = _read_json(nic_path(ifname, ns, directory))
    return data if data is not None and data.get("version") == STATE_VERSION else None


def save_nic(state: dict[str, Any], directory: str | None = None) -> None:
    """Write ``state`` (caller holds :func:`locked`)."""
    _write_json(nic_path(state["ifname"], state["netns"], directory), state)


def load_registry(directory: str | None = None) -> dict[str, Any]:
    """The binding registry with dead owners' bindings dropped."""
    data = _read_json(registry_path(directory)) or {}
    live = {}
    for key, b in (data.get("live") or {}).items():
        if procs.alive(int(b["pid"]), int(b["start"])):
            live[key] = b
    return {"next": int(data.get("next", 1)), "live": live}


def save_registry(reg: dict[str, Any], directory: str | None = None) -> None:
    """Write the registry (caller holds :func:`locked`)."""
    _write_json(registry_path(directory), reg)


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
