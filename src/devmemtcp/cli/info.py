"""``devmemtcp info [IFNAME...] [--json] [--netns NAME]``.

Per device: ifname, ifindex, driver, state, RX/TX queues with their NAPI id,
bound dma-buf (binding id) and lease, page pools (id, NAPI, in-flight pages,
dma-buf), header split and hds-thresh, channels, per-queue qstats where the
driver reports them. Queues come from the kernel's queue-get; the kernel
lists queues only for devices that are up, so a down device's queues are
taken from its sysfs ``queues/`` directory (the same real_num_*_queues).

``--json`` prints one object::

    {"netns": NAME|null, "ops": [...netdev ops...],
     "devices": [{"ifname", "ifindex", "driver", "up",
                  "queues": [{"type": "rx"|"tx", "id", "napi_id", "dmabuf", "lease", "xsk", "io_uring"}],
                  "page_pools": [{"id", "napi_id", "inflight", "inflight_mem", "dmabuf", ...}],
                  "rings": {...}|null, "channels": {...}|null, "qstats": [...]}]}
"""

from __future__ import annotations

import argparse
import dataclasses
import errno as _errno
import fcntl
import json
import socket
import struct
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from devmemtcp import abi
from devmemtcp.cli import common
from devmemtcp.errors import NetlinkError
from devmemtcp.host import ifaces, netns
from devmemtcp.netlink import ethtool
from devmemtcp.netlink.netdev import NetdevClient

EXAMPLES = """\
examples:
  devmemtcp info                       every interface: queues, napi ids, bindings, page pools
  devmemtcp info eth1 --json           one interface as one JSON object
  devmemtcp info --netns ns-a veth0    an interface inside network namespace ns-a
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("ifnames", nargs="*", type=common.ifname_arg, metavar="IFNAME",
                        help="interfaces to show (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--netns", type=common.netns_arg, metavar="NAME",
                        help="look inside network namespace NAME (ip netns)")
    parser.add_argument("--backend", choices=("kernel", "emulated"), default="kernel",
                        help="kernel (default): what the kernel reports; emulated: the emulated devmem "
                        "NIC on each interface (same JSON, plus rss, rules, bindings, tx_dropped)")


def _interfaces(wanted: list[str]) -> list[tuple[int, str]]:
    present = sorted(socket.if_nameindex())
    if not wanted:
        return present
    by_name = {name: idx for idx, name in present}
    out = []
    for name in wanted:
        if name not in by_name:
            raise ifaces.unknown_interface(name)
        out.append((by_name[name], name))
    return out


def _optional(fn: Any, *args: Any) -> Any:
    """Run an ethtool read; None when the driver does not support it."""
    try:
        return fn(*args)
    except NetlinkError as exc:
        if exc.errno in (_errno.EOPNOTSUPP, _errno.ENODATA):
            return None
        raise


def _is_up(ifname: str) -> bool:
    """IFF_UP of ``ifname`` from SIOCGIFFLAGS (answers for the thread's namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        res = fcntl.ioctl(s.fileno(), abi.SIOCGIFFLAGS, struct.pack("16sH14x", ifname.encode(), 0))
    return bool(struct.unpack_from("16sH", res)[1] & abi.IFF_UP)


def collect(ifnames: list[str] | None = None) -> dict[str, Any]:
    """Gather what ``info`` shows for ``ifnames`` (default: every interface)
    in the current network namespace. Raises DevmemError for an unknown
    interface, NetlinkError for a kernel refusal other than "not supported"."""
    interfaces = _interfaces(list(ifnames or []))
    sysfs_counts: dict[str, dict[str, int]] | None = None
    devices = []
    with NetdevClient() as nl:
        ops = sorted(nl.ops())
        pools = nl.page_pool_get()
        try:
            qstats = nl.qstats_get(scope_queue=True)
        except NetlinkError as exc:
            if exc.errno != _errno.EOPNOTSUPP:
                raise
            qstats = []
        for ifindex, ifname in interfaces:
            up = _is_up(ifname)
            queues = nl.queue_get(ifindex) if up else []
            if not queues:
                if sysfs_counts is None:
                    sysfs_counts = netns.sysfs_queue_counts()
                counts = sysfs_counts.get(ifname, {"rx": 0, "tx": 0})
                queues = [{"id": i, "type": kind, "ifindex": ifindex, "napi_id": None, "dmabuf": None,
                           "lease": None, "io_uring": False, "xsk": False}
                          for kind in ("rx", "tx") for i in range(counts[kind])]
            rings = _optional(ethtool.get_rings, ifname)
            channels = _optional(ethtool.get_channels, ifname)
            devices.append({
                "ifname": ifname,
                "ifindex": ifindex,
                "driver": ethtool.driver_name(ifname),
                "up": up,
                "queues": [{k: q.get(k) for k in ("type", "id", "napi_id", "dmabuf", "lease", "xsk",
                                                   "io_uring")} for q in queues],
                "page_pools": [{k: v for k, v in p.items() if k != "ifindex"}
                               for p in pools if p.get("ifindex") == ifindex],
                "rings": dataclasses.asdict(rings) if rings is not None else None,
                "channels": dataclasses.asdict(channels) if channels is not None else None,
                "qstats": [{k: v for k, v in s.items() if k != "ifindex"}
                           for s in qstats if s.get("ifindex") == ifindex],
            })
    return {"netns": netns.current(), "ops": ops, "devices": devices}


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def render(info: dict[str, Any], console: Console) -> None:
    """Human output: one summary table, then one queue table per device."""
    where = f" (netns {info['netns']})" if info["netns"] else ""
    summary = Table(title=f"network devices{where}", title_justify="left")
    for col in ("ifname", "ifindex", "driver", "state", "rx/tx queues", "header split", "hds-thresh",
                "channels", "page pools", "bound dma-bufs"):
        summary.add_column(col)
    for dev in info["devices"]:
        rx = sum(q["type"] == "rx" for q in dev["queues"])
        tx = sum(q["type"] == "tx" for q in dev["queues"])
        rings, ch = dev["rings"], dev["channels"]
        if ch is None:
            chan = "-"
        else:
            chan = ", ".join(f"{k} {v}" for k, v in ch.items()
                             if v is not None and not k.endswith("_max")) or "-"
        bound = sorted({q["dmabuf"] for q in dev["queues"] if q["dmabuf"] is not None})
        state = "up" if dev["up"] else "down"
        split = rings["tcp_data_split"] if rings else "-"
        hds = _fmt(rings["hds_thresh"]) if rings else "-"
        summary.add_row(dev["ifname"], str(dev["ifindex"]), _fmt(dev["driver"]), state, f"{rx}/{tx}",
                        split, hds, chan, str(len(dev["page_pools"])), ", ".join(map(str, bound)) or "-")
    console.print(summary)
    console.print(f"netdev ops: {', '.join(info['ops'])}")
    for dev in info["devices"]:
        stats = {(s.get("queue_type"), s.get("queue_id")): s for s in dev["qstats"]}
        table = Table(title=f"{dev['ifname']} queues", title_justify="left")
        for col in ("type", "id", "napi id", "dma-buf", "lease", "in use by", "packets", "bytes"):
            table.add_column(col)
        for q in dev["queues"]:
            s = stats.get((q["type"], q["id"]), {})
            users = [n for n in ("xsk", "io_uring") if q.get(n)]
            lease = q.get("lease")
            lease_text = "-"
            if isinstance(lease, dict):
                lease_text = f"ifindex {lease.get('ifindex')} queue {lease.get('queue', {}).get('id')}"
            table.add_row(q["type"], str(q["id"]), _fmt(q["napi_id"]), _fmt(q["dmabuf"]), lease_text,
                          ", ".join(users) or "-", _fmt(s.get(f"{q['type']}_packets")),
                          _fmt(s.get(f"{q['type']}_bytes")))
        console.print(table)
        if dev["page_pools"]:
            pp = Table(title=f"{dev['ifname']} page pools", title_justify="left")
            for col in ("id", "napi id", "inflight", "inflight bytes", "dma-buf", "detached"):
                pp.add_column(col)
            for p in dev["page_pools"]:
                pp.add_row(str(p["id"]), _fmt(p.get("napi_id")), _fmt(p.get("inflight")),
                           _fmt(p.get("inflight_mem")), _fmt(p.get("dmabuf")), _fmt(p.get("detach_time")))
            console.print(pp)
        if "tx_dropped" in dev:
            extra = {"kind": dev.get("kind"), "netmem tx": dev.get("netmem_tx"),
                     "tx_dropped": dev.get("tx_dropped"),
                     "rules": "; ".join(f"{r['location']}: {r['dst_ip']}:{r['dst_port']} -> "
                                        f"queue {r['queue']}" for r in dev.get("rules") or []) or "-",
                     "bindings": ", ".join(f"{b['id']} {b['kind']} queues {b['queues']}"
                                           for b in dev.get("bindings") or []) or "-"}
            console.print(f"{dev['ifname']} (emulated): " + ", ".join(f"{k} {v}" for k, v in extra.items()))


def run(args: argparse.Namespace) -> int:
    with netns.maybe_enter(args.netns):
        if args.backend == "emulated":
            from devmemtcp.emulation.report import collect_emulated

            info = collect_emulated(_interfaces(list(args.ifnames or [])))
            info["netns"] = netns.current()
        else:
            info = collect(args.ifnames)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(info, Console() if sys.stdout.isatty() else Console(width=160))
    return 0
