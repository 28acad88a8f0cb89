"""What ``devmemtcp info --backend emulated`` shows: the emulated NIC as the kernel shows a real one.

:func:`collect_emulated` answers queue-get (queues with their bound dma-buf
and lease nest, on both sides of a lease), page-pool-get (one page pool per
bound RX queue, with the dma-buf id, as a devmem queue's pool reports it) and
qstats-get (per-queue rx-packets / rx-bytes) for each interface, in the JSON
shape of :func:`devmemtcp.cli.info.collect`, with the ethtool view (rings,
channels) and what only the emulated NIC keeps: the RSS indirection table,
ntuple rules, the bindings on the device, its kind and netmem TX mode, and
its tx_dropped counter (validate_xmit_unreadable_skb's drops).

Counters come from the NIC state file, written by the receiving processes
(:meth:`devmemtcp.emulation.netdev.Netdev.flush_stats`).
"""

from __future__ import annotations

import socket
from typing import Any

from devmemtcp.emulation import netkit as nk
from devmemtcp.emulation import state as st
from devmemtcp.host import netns

#: the netdev ops the emulated NIC answers
OPS = ("bind-rx", "bind-tx", "dev-get", "page-pool-get", "page-pool-stats-get", "qstats-get",
       "queue-create", "queue-get")


def _is_up(ifname: str) -> bool:
    try:
        with open("/proc/self/net/dev", encoding="ascii") as f:
            present = any(line.split(":", 1)[0].strip() == ifname for line in f)
    except OSError:
        present = True
    if not present:
        return False
    import fcntl
    import struct

    from devmemtcp import abi

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        res = fcntl.ioctl(s.fileno(), abi.SIOCGIFFLAGS, struct.pack("16sH14x", ifname.encode(), 0))
    return bool(struct.unpack_from("16sH", res)[1] & abi.IFF_UP)


def _bindings(reg: dict[str, Any], ns: int, ifname: str) -> list[dict[str, Any]]:
    out = []
    for key, b in sorted(reg["live"].items(), key=lambda kv: int(kv[0])):
        on_dev = b["netns"] == ns and b["ifname"] == ifname
        phys = b.get("phys") or {}
        vdev = b.get("vdev") or {}
        via_phys = phys.get("netns") == ns and phys.get("ifname") == ifname
        via_vdev = vdev.get("netns") == ns and vdev.get("ifname") == ifname
        if on_dev or via_phys or via_vdev:
            out.append({"id": int(key), "kind": b["kind"], "pid": b["pid"],
                        "queues": list(phys["queues"]) if via_phys and not on_dev else list(b["queues"]),
                        "device": b["ifname"], "physical": phys.get("ifname"), "virtual": vdev.get("ifname")})
    return out


def device(ifindex: int, ifname: str, directory: str | None = None) -> dict[str, Any]:
    """One interface of the calling thread's namespace as ``info`` shows it."""
    ns = netns.inode()
    nic = st.load_nic(ifname, directory=directory, ns=ns)
    reg = st.load_registry(directory)
    bound = st.bound_queues(reg, ns, ifname)
    leases = nk.leases(nic)
    n = int(nic["channels"]["combined"])
    queues: list[dict[str, Any]] = []
    for q in range(n):
        ls = leases.get(q)
        queues.append({"type": "rx", "id": q, "napi_id": None, "dmabuf": bound.get(q),
                       "lease": nk.lease_nest(ls) if ls is not None else None, "xsk": q in nic.get("caps", {})
                       .get("xsk", []), "io_uring": False})
    queues += [{"type": "tx", "id": q, "napi_id": None, "dmabuf": None, "lease": None, "xsk": False,
                "io_uring": False} for q in range(n)]
    pools = [{k: v for k, v in p.items() if k != "ifindex"} for p in _pools(ifindex, nic, bound)]
    qstats = [{k: v for k, v in q.items() if k != "ifindex"} for q in _qstats(ifindex, nic)]
    r = nic["rings"]
    rings = {"rx": r["rx"], "rx_max": r["rx_max"], "tx": r["tx"], "tcp_data_split": r["tcp_data_split"],
             "hds_thresh": r["hds_thresh"], "hds_thresh_max": r["hds_thresh_max"]}
    c = nic["channels"]
    channels = {"rx": 0, "tx": 0, "combined": c["combined"], "rx_max": 0, "tx_max": 0,
                "combined_max": c["combined_max"]}
    return {
        "ifname": ifname, "ifindex": ifindex,
        "driver": "devmemtcp-emulated-netkit" if nk.is_virtual(nic) else "devmemtcp-emulated",
        "up": _is_up(ifname), "queues": queues, "page_pools": pools, "rings": rings, "channels": channels,
        "qstats": qstats,
        "kind": nk.kind(nic), "netmem_tx": nk.netmem_tx(nic), "tx_dropped": int(nic.get("tx_dropped", 0)),
        "rss": {"indir": list(nic["rss"]["indir"]), "configured": bool(nic["rss"]["configured"])},
        "rules": sorted(nic["rules"], key=lambda x: int(x["location"])),
        "bindings": _bindings(reg, ns, ifname),
    }


_STAT_KEYS = ("alloc_fast", "alloc_slow", "alloc_slow_high_order", "alloc_empty", "alloc_refill",
              "alloc_waive", "recycle_cached", "recycle_cache_full", "recycle_ring", "recycle_ring_full",
              "recycle_released_refcnt")


def _pool_id(binding: int, queue: int) -> int:
    return binding * 1000 + queue + 1


def _pools(ifindex: int, nic: dict[str, Any], bound: dict[int, int]) -> list[dict[str, Any]]:
    stats = nic.get("stats") or {}
    out = []
    for q, bid in sorted(bound.items()):
        qs = stats.get(str(q), {})
        if qs.get("binding", bid) != bid:
            qs = {}  # counters of an earlier binding of this queue
        inflight = qs.get("inflight")
        out.append({"id": _pool_id(bid, q), "ifindex": ifindex, "napi_id": None, "inflight": inflight,
                    "inflight_mem": None if inflight is None else inflight * 4096, "dmabuf": bid,
                    "detach_time": None, "queue": q,
                    "stats": {k: int(qs.get(k.replace("_", "-"), 0)) for k in _STAT_KEYS}})
    return out


def _qstats(ifindex: int, nic: dict[str, Any]) -> list[dict[str, Any]]:
    stats = nic.get("stats") or {}
    return [{"ifindex": ifindex, "queue_type": "rx", "queue_id": int(q), "rx_packets": v.get("rx-packets"),
             "rx_bytes": v.get("rx-bytes")} for q, v in sorted(stats.items(), key=lambda kv: int(kv[0]))]


def _each(ifindex: int | None, directory: str | None) -> list[tuple[int, dict[str, Any], dict[int, int]]]:
    ns = netns.inode()
    reg = st.load_registry(directory)
    out = []
    for idx, name in sorted(socket.if_nameindex()):
        if ifindex is not None and idx != ifindex:
            continue
        nic = st.load_nic(name, directory=directory, ns=ns)
        out.append((idx, nic, st.bound_queues(reg, ns, name)))
    return out


def page_pool_get(ifindex: int | None = None, directory: str | None = None) -> list[dict[str, Any]]:
    """page-pool-get (dump) for the emulated NICs of this namespace: one page
    pool per bound RX queue, the shape of
    :meth:`devmemtcp.netlink.netdev.NetdevClient.page_pool_get` (``id``,
    ``ifindex``, ``napi_id``, ``inflight`` (net_iovs, see
    :meth:`devmemtcp.emulation.pool.RxPool.kernel_inflight`; None before the
    receiver wrote its counters), ``inflight_mem`` (bytes), ``dmabuf``,
    ``detach_time``), plus ``queue`` and ``stats``."""
    return [p for idx, nic, bound in _each(ifindex, directory) for p in _pools(idx, nic, bound)]


def page_pool_stats_get(ifindex: int | None = None, directory: str | None = None) -> list[dict[str, Any]]:
    """page-pool-stats-get (dump): ``{"info": {"id", "ifindex"}, alloc_fast,
    alloc_slow, alloc_slow_high_order, alloc_empty, alloc_refill, alloc_waive,
    recycle_cached, recycle_cache_full, recycle_ring, recycle_ring_full,
    recycle_released_refcnt}`` per page pool, with the kernel's meanings
    (:class:`devmemtcp.emulation.pool.QueueStats`)."""
    return [{"info": {"id": p["id"], "ifindex": p["ifindex"]}, **p["stats"]}
            for p in page_pool_get(ifindex, directory)]


def qstats_get(ifindex: int | None = None, directory: str | None = None) -> list[dict[str, Any]]:
    """qstats-get (dump, queue scope): ``{"ifindex", "queue_type", "queue_id",
    "rx_packets", "rx_bytes"}`` per RX queue that received devmem traffic."""
    return [q for idx, nic, _b in _each(ifindex, directory) for q in _qstats(idx, nic)]


def collect_emulated(interfaces: list[tuple[int, str]], directory: str | None = None) -> dict[str, Any]:
    """``{"netns", "ops", "devices"}`` for ``[(ifindex, ifname), ...]`` of the
    calling thread's namespace (see the module docstring)."""
    return {"netns": None, "ops": list(OPS), "backend": "emulated",
            "devices": [device(i, n, directory) for i, n in interfaces]}
