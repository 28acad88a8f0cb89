"""Client of the ``netdev`` generic-netlink family (Documentation/netlink/specs/netdev.yaml).

Reads: dev-get, queue-get, napi-get, page-pool-get, page-pool-stats-get,
qstats-get (do and dump). Writes: bind-rx, bind-tx (each on its own socket,
owned by the returned :class:`KernelBinding`), queue-create (Linux 7.1+).

Every reply is returned as plain dicts whose keys are the spec's attribute
names with ``_`` for ``-`` (``napi_id``, ``dmabuf``...); queue and qstats
``type`` are ``"rx"``/``"tx"``. Every refusal raises
:class:`~devmemtcp.errors.NetlinkError` with the kernel's errno, its extack
message, the attribute it pointed at, and a hint.

Capabilities come from the family's op list (CTRL_CMD_GETFAMILY), never from
the kernel version: :meth:`NetdevClient.ops`.
"""

from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING, Any, Literal

from pyroute2.netlink import genlmsg, nla

from devmemtcp import abi
from devmemtcp.errors import NetlinkError
from devmemtcp.netlink.genl import GenlSocket, attrs_to_dict, nla_uint

if TYPE_CHECKING:
    from devmemtcp.memory.base import DmaBuf

_NESTED = abi.NLA_F_NESTED


# --------------------------------------------------------------------------
# Message declarations (pyroute2 nla_map tables, numbered as in netdev.h)
# --------------------------------------------------------------------------
class _queue_id(nla):
    """attribute-set queue-id: one queue of a bind-rx ``queues`` list or a lease."""

    prefix = "NETDEV_A_QUEUE_"
    nla_flags = _NESTED
    nla_map = (
        (abi.NETDEV_A_QUEUE_ID_ID, "NETDEV_A_QUEUE_ID", "uint32"),
        (abi.NETDEV_A_QUEUE_ID_TYPE, "NETDEV_A_QUEUE_TYPE", "uint32"),
    )


class _lease(nla):
    """attribute-set lease (Linux 7.1+): the physical queue behind a netkit queue."""

    prefix = "NETDEV_A_LEASE_"
    nla_flags = _NESTED
    nla_map = (
        (abi.NETDEV_A_LEASE_IFINDEX, "NETDEV_A_LEASE_IFINDEX", "uint32"),
        (abi.NETDEV_A_LEASE_QUEUE, "NETDEV_A_LEASE_QUEUE", "queue_id"),
        (abi.NETDEV_A_LEASE_NETNS_ID, "NETDEV_A_LEASE_NETNS_ID", "int32"),
    )
    queue_id = _queue_id


class _page_pool_info(nla):
    """attribute-set page-pool, as nested in page-pool-stats ``info``."""

    prefix = "NETDEV_A_PAGE_POOL_"
    nla_flags = _NESTED
    nla_map = (
        (abi.NETDEV_A_PAGE_POOL_ID, "NETDEV_A_PAGE_POOL_ID", "uint"),
        (abi.NETDEV_A_PAGE_POOL_IFINDEX, "NETDEV_A_PAGE_POOL_IFINDEX", "uint32"),
    )
    uint = nla_uint


class DevMsg(genlmsg):
    """attribute-set dev (dev-get)."""

    prefix = "NETDEV_A_DEV_"
    nla_map = (
        (abi.NETDEV_A_DEV_IFINDEX, "NETDEV_A_DEV_IFINDEX", "uint32"),
        (abi.NETDEV_A_DEV_PAD, "NETDEV_A_DEV_PAD", "hex"),
        (abi.NETDEV_A_DEV_XDP_FEATURES, "NETDEV_A_DEV_XDP_FEATURES", "uint64"),
        (abi.NETDEV_A_DEV_XDP_ZC_MAX_SEGS, "NETDEV_A_DEV_XDP_ZC_MAX_SEGS", "uint32"),
        (abi.NETDEV_A_DEV_XDP_RX_METADATA_FEATURES, "NETDEV_A_DEV_XDP_RX_METADATA_FEATURES", "uint64"),
        (abi.NETDEV_A_DEV_XSK_FEATURES, "NETDEV_A_DEV_XSK_FEATURES", "uint64"),
    )


class QueueMsg(genlmsg):
    """attribute-set queue (queue-get, queue-create)."""

    prefix = "NETDEV_A_QUEUE_"
    nla_map = (
        (abi.NETDEV_A_QUEUE_ID, "NETDEV_A_QUEUE_ID", "uint32"),
        (abi.NETDEV_A_QUEUE_IFINDEX, "NETDEV_A_QUEUE_IFINDEX", "uint32"),
        (abi.NETDEV_A_QUEUE_TYPE, "NETDEV_A_QUEUE_TYPE", "uint32"),
        (abi.NETDEV_A_QUEUE_NAPI_ID, "NETDEV_A_QUEUE_NAPI_ID", "uint32"),
        (abi.NETDEV_A_QUEUE_DMABUF, "NETDEV_A_QUEUE_DMABUF", "uint32"),
        (abi.NETDEV_A_QUEUE_IO_URING, "NETDEV_A_QUEUE_IO_URING", "flag"),
        (abi.NETDEV_A_QUEUE_XSK, "NETDEV_A_QUEUE_XSK", "flag"),
        (abi.NETDEV_A_QUEUE_LEASE, "NETDEV_A_QUEUE_LEASE", "lease"),
    )
    lease = _lease


class NapiMsg(genlmsg):
    """attribute-set napi (napi-get)."""

    prefix = "NETDEV_A_NAPI_"
    nla_map = (
        (abi.NETDEV_A_NAPI_IFINDEX, "NETDEV_A_NAPI_IFINDEX", "uint32"),
        (abi.NETDEV_A_NAPI_ID, "NETDEV_A_NAPI_ID", "uint32"),
        (abi.NETDEV_A_NAPI_IRQ, "NETDEV_A_NAPI_IRQ", "uint32"),
        (abi.NETDEV_A_NAPI_PID, "NETDEV_A_NAPI_PID", "uint32"),
        (abi.NETDEV_A_NAPI_DEFER_HARD_IRQS, "NETDEV_A_NAPI_DEFER_HARD_IRQS", "uint32"),
        (abi.NETDEV_A_NAPI_GRO_FLUSH_TIMEOUT, "NETDEV_A_NAPI_GRO_FLUSH_TIMEOUT", "uint"),
        (abi.NETDEV_A_NAPI_IRQ_SUSPEND_TIMEOUT, "NETDEV_A_NAPI_IRQ_SUSPEND_TIMEOUT", "uint"),
        (abi.NETDEV_A_NAPI_THREADED, "NETDEV_A_NAPI_THREADED", "uint32"),
    )
    uint = nla_uint


class PagePoolMsg(genlmsg):
    """attribute-set page-pool (page-pool-get)."""

    prefix = "NETDEV_A_PAGE_POOL_"
    nla_map = (
        (abi.NETDEV_A_PAGE_POOL_ID, "NETDEV_A_PAGE_POOL_ID", "uint"),
        (abi.NETDEV_A_PAGE_POOL_IFINDEX, "NETDEV_A_PAGE_POOL_IFINDEX", "uint32"),
        (abi.NETDEV_A_PAGE_POOL_NAPI_ID, "NETDEV_A_PAGE_POOL_NAPI_ID", "uint"),
        (abi.NETDEV_A_PAGE_POOL_INFLIGHT, "NETDEV_A_PAGE_POOL_INFLIGHT", "uint"),
        (abi.NETDEV_A_PAGE_POOL_INFLIGHT_MEM, "NETDEV_A_PAGE_POOL_INFLIGHT_MEM", "uint"),
        (abi.NETDEV_A_PAGE_POOL_DETACH_TIME, "NETDEV_A_PAGE_POOL_DETACH_TIME", "uint"),
        (abi.NETDEV_A_PAGE_POOL_DMABUF, "NETDEV_A_PAGE_POOL_DMABUF", "uint32"),
        (abi.NETDEV_A_PAGE_POOL_IO_URING, "NETDEV_A_PAGE_POOL_IO_URING", "flag"),
    )
    uint = nla_uint


class PagePoolStatsMsg(genlmsg):
    """attribute-set page-pool-stats (page-pool-stats-get)."""

    prefix = "NETDEV_A_PAGE_POOL_STATS_"
    nla_map = (
        (abi.NETDEV_A_PAGE_POOL_STATS_INFO, "NETDEV_A_PAGE_POOL_STATS_INFO", "info"),
        (abi.NETDEV_A_PAGE_POOL_STATS_ALLOC_FAST, "NETDEV_A_PAGE_POOL_STATS_ALLOC_FAST", "uint"),
        (abi.NETDEV_A_PAGE_POOL_STATS_ALLOC_SLOW, "NETDEV_A_PAGE_POOL_STATS_ALLOC_SLOW", "uint"),
        (abi.NETDEV_A_PAGE_POOL_STATS_ALLOC_SLOW_HIGH_ORDER,
         "NETDEV_A_PAGE_POOL_STATS_ALLOC_SLOW_HIGH_ORDER", "uint"),
        (abi.NETDEV_A_PAGE_POOL_STATS_ALLOC_EMPTY, "NETDEV_A_PAGE_POOL_STATS_ALLOC_EMPTY", "uint"),
        (abi.NETDEV_A_PAGE_POOL_STATS_ALLOC_REFILL, "NETDEV_A_PAGE_POOL_STATS_ALLOC_REFILL", "uint"),
        (abi.NETDEV_A_PAGE_POOL_STATS_ALLOC_WAIVE, "NETDEV_A_PAGE_POOL_STATS_ALLOC_WAIVE", "uint"),
        (abi.NETDEV_A_PAGE_POOL_STATS_RECYCLE_CACHED, "NETDEV_A_PAGE_POOL_STATS_RECYCLE_CACHED", "uint"),
        (abi.NETDEV_A_PAGE_POOL_STATS_RECYCLE_CACHE_FULL,
         "NETDEV_A_PAGE_POOL_STATS_RECYCLE_CACHE_FULL", "uint"),
        (abi.NETDEV_A_PAGE_POOL_STATS_RECYCLE_RING, "NETDEV_A_PAGE_POOL_STATS_RECYCLE_RING", "uint"),
        (abi.NETDEV_A_PAGE_POOL_STATS_RECYCLE_RING_FULL,
         "NETDEV_A_PAGE_POOL_STATS_RECYCLE_RING_FULL", "uint"),
        (abi.NETDEV_A_PAGE_POOL_STATS_RECYCLE_RELEASED_REFCNT,
         "NETDEV_A_PAGE_POOL_STATS_RECYCLE_RELEASED_REFCNT", "uint"),
    )
    info = _page_pool_info
    uint = nla_uint


class QstatsMsg(genlmsg):
    """attribute-set qstats (qstats-get); counters are "uint"."""

    prefix = "NETDEV_A_QSTATS_"
    nla_map = (
        (abi.NETDEV_A_QSTATS_IFINDEX, "NETDEV_A_QSTATS_IFINDEX", "uint32"),
        (abi.NETDEV_A_QSTATS_QUEUE_TYPE, "NETDEV_A_QSTATS_QUEUE_TYPE", "uint32"),
        (abi.NETDEV_A_QSTATS_QUEUE_ID, "NETDEV_A_QSTATS_QUEUE_ID", "uint32"),
        (abi.NETDEV_A_QSTATS_SCOPE, "NETDEV_A_QSTATS_SCOPE", "uint"),
        *(
            (num, "NETDEV_A_QSTATS_" + name.upper().replace("-", "_"), "uint")
            for num, name in abi.NETDEV_A_QSTATS_COUNTERS.items()
        ),
    )
    uint = nla_uint


class DmabufMsg(genlmsg):
    """attribute-set dmabuf (bind-rx, bind-tx)."""

    prefix = "NETDEV_A_DMABUF_"
    nla_map = (
        (abi.NETDEV_A_DMABUF_IFINDEX, "NETDEV_A_DMABUF_IFINDEX", "uint32"),
        (abi.NETDEV_A_DMABUF_QUEUES, "NETDEV_A_DMABUF_QUEUES", "queue_id"),
        (abi.NETDEV_A_DMABUF_FD, "NETDEV_A_DMABUF_FD", "uint32"),
        (abi.NETDEV_A_DMABUF_ID, "NETDEV_A_DMABUF_ID", "uint32"),
        (abi.NETDEV_A_DMABUF_RX_PAGE_SIZE, "NETDEV_A_DMABUF_RX_PAGE_SIZE", "uint32"),
    )
    queue_id = _queue_id


# --------------------------------------------------------------------------
# Hints: what to do about each refusal
# --------------------------------------------------------------------------
def hint_for(op: str, err: int, extack: str | None, bad_attr: str | int | None = None) -> str | None:
    """One sentence telling the user how to fix the cause of a refused ``op``
    (errno, the kernel's extack text and the attribute it pointed at)."""
    text = (extack or "").lower()
    bad = str(bad_attr) if bad_attr is not None else ""
    if err in (_errno.EPERM, _errno.EACCES):
        return "run as root or grant CAP_NET_ADMIN (e.g. sudo)"
    if err == _errno.ENODEV:
        return "check the interface exists in this network namespace (ip link; --netns NAME)"
    if "tcp-data-split" in text:
        return "turn header split on: ethtool -G IFNAME tcp-data-split on (or devmemtcp setup)"
    if "hds-thresh" in text:
        return "set the header-split threshold to 0: ethtool -G IFNAME hds-thresh 0 (or devmemtcp setup)"
    if "netmem tx" in text or (op == "bind-tx" and err == _errno.EOPNOTSUPP):
        return ("this driver cannot send from device memory; devmem TX needs gve (DQO-RDA), mlx5, "
                "bnxt or fbnic, or a netkit device with a leased queue")
    if err == _errno.EOPNOTSUPP and op == "bind-rx":
        return ("this driver has no queue management API, so it cannot bind device memory; devmem RX "
                "needs gve, mlx5, bnxt or fbnic (devmemtcp doctor IFNAME), or use the emulated backend")
    if err == _errno.ERANGE or "out of range" in text:
        return "pick RX queue ids below the device's RX queue count (devmemtcp info IFNAME)"
    if "already" in text and "bound" in text:
        return "another binding (or io_uring zero-copy) holds that queue: close it or pick another queue"
    if err == _errno.EBUSY:
        return "the queue is in use (AF_XDP, a lease): free it or pick another queue"
    if err == _errno.EEXIST:
        return "detach the XDP program or free the queue, then retry"
    if "not aligned" in text or "too many net_iovs" in text:
        return "use a dma-buf whose size is a multiple of PAGE_SIZE (4096) and not too large"
    if err == _errno.EBADF:
        return "pass the fd of a dma-buf (udmabuf, CUDA export), not of an ordinary file"
    if err == _errno.EINVAL and bad.endswith("(missing)"):
        return (f"the request lacks '{bad.split()[0]}': give an ifindex, a dma-buf fd and at least one "
                "RX queue id")
    if err == _errno.EINVAL and op in ("bind-rx", "bind-tx"):
        return ("pass the fd of a dma-buf (udmabuf, CUDA export) whose size is a multiple of PAGE_SIZE, "
                "and RX queue ids of the device")
    return None


# --------------------------------------------------------------------------
# Decoding helpers
# --------------------------------------------------------------------------
def _queue_dict(msg: genlmsg) -> dict[str, Any]:
    d = attrs_to_dict(msg)
    d["type"] = abi.NETDEV_QUEUE_TYPE_NAMES.get(d.get("type", -1), str(d.get("type")))
    d.setdefault("napi_id", None)
    d.setdefault("dmabuf", None)
    d.setdefault("lease", None)
    d["io_uring"] = bool(d.get("io_uring", False))
    d["xsk"] = bool(d.get("xsk", False))
    lease = d.get("lease")
    if isinstance(lease, dict) and isinstance(lease.get("queue"), dict):
        q = lease["queue"]
        q["type"] = abi.NETDEV_QUEUE_TYPE_NAMES.get(q.get("type", -1), str(q.get("type")))
    return d


def _qstats_dict(msg: genlmsg) -> dict[str, Any]:
    d = attrs_to_dict(msg)
    if "queue_type" in d:
        d["queue_type"] = abi.NETDEV_QUEUE_TYPE_NAMES.get(d["queue_type"], str(d["queue_type"]))
    d.pop("scope", None)
    return d


def _pp_dict(msg: genlmsg) -> dict[str, Any]:
    d = attrs_to_dict(msg)
    for key in ("ifindex", "napi_id", "inflight", "inflight_mem", "detach_time", "dmabuf"):
        d.setdefault(key, None)
    d["io_uring"] = bool(d.get("io_uring", False))
    return d


def _qtype_num(qtype: str | int) -> int:
    if isinstance(qtype, int):
        return qtype
    try:
        return {"rx": abi.NETDEV_QUEUE_TYPE_RX, "tx": abi.NETDEV_QUEUE_TYPE_TX}[qtype]
    except KeyError:
        raise ValueError(f"queue type must be 'rx' or 'tx', not {qtype!r}") from None


def _open(op: str) -> GenlSocket:
    return GenlSocket(abi.NETDEV_FAMILY_NAME, hint=lambda err, extack, bad: hint_for(op, err, extack, bad))


# --------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------
class NetdevClient:
    """Reads of the netdev family over one socket (``NETLINK_EXT_ACK`` on).

    Context manager; raises :class:`NetlinkError` on every refusal (``ENOENT``
    with a hint when the kernel has no netdev family: before Linux 6.5).
    The socket lives in the network namespace current when it was opened.
    """

    def __init__(self) -> None:
        self._hint_op = "netdev"
        self._sock = GenlSocket(abi.NETDEV_FAMILY_NAME,
                                hint=lambda err, extack, bad: hint_for(self._hint_op, err, extack, bad))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NetdevClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _req(self, cmd: int, attrs: list[Any], cls: type[genlmsg], *, dump: bool) -> list[genlmsg]:
        op = abi.NETDEV_OP_NAMES.get(cmd, str(cmd))
        self._hint_op = op
        return self._sock.request(cmd, attrs, cls, op=op, dump=dump)

    # -- capabilities -----------------------------------------------------
    def op_ids(self) -> set[int]:
        """Command numbers of the family's ops, as the controller lists them."""
        return set(self._sock.op_ids)

    def ops(self) -> set[str]:
        """Names of the family's ops, e.g. {"dev-get", ..., "bind-rx", "bind-tx"}.

        From the controller's CTRL_ATTR_OPS for "netdev" (net/netlink/genetlink.c);
        numbers this module does not know appear as ``"op-N"``."""
        return {abi.NETDEV_OP_NAMES.get(i, f"op-{i}") for i in self._sock.op_ids}

    # -- reads --------------------------------------------------------------
    def dev_get(self, ifindex: int | None = None) -> list[dict[str, Any]]:
        """dev-get: do for ``ifindex`` (ENODEV if unknown), else dump all devices.

        Keys: ifindex, xdp_features, xdp_zc_max_segs, xdp_rx_metadata_features, xsk_features."""
        if ifindex is not None:
            msgs = self._req(abi.NETDEV_CMD_DEV_GET, [("NETDEV_A_DEV_IFINDEX", ifindex)], DevMsg, dump=False)
        else:
            msgs = self._req(abi.NETDEV_CMD_DEV_GET, [], DevMsg, dump=True)
        return [attrs_to_dict(m) for m in msgs]

    def queue_get(self, ifindex: int, qtype: str | int | None = None,
                  qid: int | None = None) -> list[dict[str, Any]]:
        """queue-get: one queue (do, when ``qtype`` and ``qid`` are given) or all
        queues of ``ifindex`` (dump with the ifindex filter), RX first as the
        kernel orders them (net/core/netdev-genl.c netdev_nl_queue_dump_one).

        Each dict: id, ifindex, type ("rx"/"tx"), napi_id (None when the
        driver has no NAPI), dmabuf (bound binding id or None), lease (nest or
        None), io_uring, xsk (bools). ENODEV for an unknown ifindex, EINVAL for
        a queue id beyond the device's count."""
        if qtype is not None and qid is not None:
            attrs = [("NETDEV_A_QUEUE_IFINDEX", ifindex), ("NETDEV_A_QUEUE_TYPE", _qtype_num(qtype)),
                     ("NETDEV_A_QUEUE_ID", qid)]
            msgs = self._req(abi.NETDEV_CMD_QUEUE_GET, attrs, QueueMsg, dump=False)
        else:
            msgs = self._req(abi.NETDEV_CMD_QUEUE_GET, [("NETDEV_A_QUEUE_IFINDEX", ifindex)], QueueMsg,
                             dump=True)
        queues = [_queue_dict(m) for m in msgs]
        if qtype is not None and qid is None:
            name = abi.NETDEV_QUEUE_TYPE_NAMES[_qtype_num(qtype)]
            queues = [q for q in queues if q["type"] == name]
        return queues

    def napi_get(self, ifindex: int | None = None, napi_id: int | None = None) -> list[dict[str, Any]]:
        """napi-get: one NAPI instance by id (do) or all (dump, optional ifindex filter).

        Keys: id, ifindex, irq, pid, defer_hard_irqs, gro_flush_timeout (ns),
        irq_suspend_timeout (ns), threaded."""
        if napi_id is not None:
            msgs = self._req(abi.NETDEV_CMD_NAPI_GET, [("NETDEV_A_NAPI_ID", napi_id)], NapiMsg, dump=False)
        else:
            attrs = [("NETDEV_A_NAPI_IFINDEX", ifindex)] if ifindex is not None else []
            msgs = self._req(abi.NETDEV_CMD_NAPI_GET, attrs, NapiMsg, dump=True)
        return [attrs_to_dict(m) for m in msgs]

    def page_pool_get(self, pp_id: int | None = None, ifindex: int | None = None) -> list[dict[str, Any]]:
        """page-pool-get: one pool by id (do) or all pools (dump), filtered to
        ``ifindex`` here (the dump has no filter). Pools of devices in other
        namespaces and of loopback are not listed (the kernel hides them).

        Keys: id, ifindex, napi_id, inflight (pages), inflight_mem (bytes),
        detach_time (s, pools kept alive by in-flight pages), dmabuf (binding
        id when the pool draws from a dma-buf), io_uring."""
        if pp_id is not None:
            msgs = self._req(abi.NETDEV_CMD_PAGE_POOL_GET, [("NETDEV_A_PAGE_POOL_ID", pp_id)], PagePoolMsg,
                             dump=False)
        else:
            msgs = self._req(abi.NETDEV_CMD_PAGE_POOL_GET, [], PagePoolMsg, dump=True)
        pools = [_pp_dict(m) for m in msgs]
        if ifindex is not None:
            pools = [p for p in pools if p.get("ifindex") == ifindex]
        return pools

    def page_pool_stats_get(self, pp_id: int | None = None,
                            ifindex: int | None = None) -> list[dict[str, Any]]:
        """page-pool-stats-get (CONFIG_PAGE_POOL_STATS): counters of one pool
        (do by id) or of all pools (dump), filtered to ``ifindex`` here.

        Keys: info {id, ifindex}, alloc_fast, alloc_slow, ..., recycle_released_refcnt.
        EOPNOTSUPP (with a hint) when the kernel lists no such op
        (built without CONFIG_PAGE_POOL_STATS)."""
        if abi.NETDEV_CMD_PAGE_POOL_STATS_GET not in self._sock.op_ids:
            raise NetlinkError(_errno.EOPNOTSUPP, "page-pool-stats-get",
                               hint="this kernel was built without CONFIG_PAGE_POOL_STATS")
        if pp_id is not None:
            attrs = [("NETDEV_A_PAGE_POOL_STATS_INFO", {"attrs": [("NETDEV_A_PAGE_POOL_ID", pp_id)]})]
            msgs = self._req(abi.NETDEV_CMD_PAGE_POOL_STATS_GET, attrs, PagePoolStatsMsg, dump=False)
        else:
            msgs = self._req(abi.NETDEV_CMD_PAGE_POOL_STATS_GET, [], PagePoolStatsMsg, dump=True)
        stats = [attrs_to_dict(m) for m in msgs]
        if ifindex is not None:
            stats = [s for s in stats if s.get("info", {}).get("ifindex") == ifindex]
        return stats

    def qstats_get(self, ifindex: int | None = None, scope_queue: bool = True) -> list[dict[str, Any]]:
        """qstats-get (dump): per-queue counters (``scope_queue``) or per-device
        sums, for ``ifindex`` or every device with qstats. Devices whose driver
        has no queue stats API are left out of the full dump; asking for one by
        ``ifindex`` gives EOPNOTSUPP (pointing at ``ifindex``), an unknown
        ifindex ENODEV (net/core/netdev-genl.c netdev_nl_qstats_get_dumpit).

        Keys: ifindex, queue_type ("rx"/"tx", per-queue only), queue_id, and the
        counters the driver reports (rx_packets, rx_bytes, ...)."""
        attrs: list[Any] = []
        if ifindex is not None:
            attrs.append(("NETDEV_A_QSTATS_IFINDEX", ifindex))
        if scope_queue:
            attrs.append(("NETDEV_A_QSTATS_SCOPE", abi.NETDEV_QSTATS_SCOPE_QUEUE))
        msgs = self._req(abi.NETDEV_CMD_QSTATS_GET, attrs, QstatsMsg, dump=True)
        return [_qstats_dict(m) for m in msgs]

    # -- writes ----------------------------------------------------------------
    def queue_create(self, guest_ifindex: int, phys_ifindex: int, phys_queue: int,
                     netns_id: int | None = None) -> int:
        """queue-create (Linux 7.1+): lease RX queue ``phys_queue`` of
        ``phys_ifindex`` to the netkit guest ``guest_ifindex``; returns the new
        queue id on the guest. EOPNOTSUPP (with a hint) when the kernel lacks
        the op; otherwise the kernel's errors (NetlinkError)."""
        if abi.NETDEV_CMD_QUEUE_CREATE not in self._sock.op_ids:
            raise NetlinkError(
                _errno.EOPNOTSUPP, "queue-create",
                hint="this kernel has no queue-create op (queue leasing to netkit arrived in Linux 7.1)",
            )
        lease: list[Any] = [
            ("NETDEV_A_LEASE_IFINDEX", phys_ifindex),
            ("NETDEV_A_LEASE_QUEUE", {"attrs": [("NETDEV_A_QUEUE_ID", phys_queue),
                                                ("NETDEV_A_QUEUE_TYPE", abi.NETDEV_QUEUE_TYPE_RX)]}),
        ]
        if netns_id is not None:
            lease.append(("NETDEV_A_LEASE_NETNS_ID", netns_id))
        attrs = [("NETDEV_A_QUEUE_IFINDEX", guest_ifindex), ("NETDEV_A_QUEUE_TYPE", abi.NETDEV_QUEUE_TYPE_RX),
                 ("NETDEV_A_QUEUE_LEASE", {"attrs": lease})]
        (reply,) = self._req(abi.NETDEV_CMD_QUEUE_CREATE, attrs, QueueMsg, dump=False)
        return int(reply.get_attr("NETDEV_A_QUEUE_ID"))


class KernelBinding:
    """A dma-buf bound by bind-rx or bind-tx; owns the netlink socket that made it.

    Attributes: ``id`` (binding id, shared RX/TX id space, from 1),
    ``ifindex``, ``kind`` ("rx"/"tx"), ``queues`` (RX queue ids), ``dmabuf``
    (the provider object when the caller gave one). ``close()`` closes the
    socket, which makes the kernel unbind (netdev_nl_sock_priv_destroy); the
    memory is released when the last in-flight fragment comes back.
    """

    def __init__(self, sock: GenlSocket, binding_id: int, ifindex: int, kind: Literal["rx", "tx"],
                 queues: tuple[int, ...], dmabuf: DmaBuf | None = None) -> None:
        self._sock = sock
        self.id = binding_id
        self.ifindex = ifindex
        self.kind = kind
        self.queues = queues
        self.dmabuf = dmabuf

    @property
    def closed(self) -> bool:
        return self._sock.closed

    def fileno(self) -> int:
        """The owning netlink socket's fd (-1 once closed)."""
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> KernelBinding:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "bound"
        return (f"KernelBinding(id={self.id}, ifindex={self.ifindex}, kind={self.kind!r}, "
                f"queues={self.queues}, {state})")


def _bind(op: str, cmd: int, attrs: list[Any]) -> tuple[GenlSocket, int]:
    sock = _open(op)
    try:
        (reply,) = sock.request(cmd, attrs, DmabufMsg, op=op)
        binding_id = int(reply.get_attr("NETDEV_A_DMABUF_ID"))
    except BaseException:
        sock.close()
        raise
    return sock, binding_id


def bind_rx_attrs(ifindex: int, fd: int, queues: list[int],
                  rx_page_size: int | None = None) -> list[Any]:
    """The bind-rx request attributes: ifindex, fd, one ``queues`` nest
    (NLA_F_NESTED, multi-attr) per queue with {id, type rx}."""
    attrs: list[Any] = [("NETDEV_A_DMABUF_IFINDEX", ifindex), ("NETDEV_A_DMABUF_FD", fd)]
    for q in queues:
        nest = [("NETDEV_A_QUEUE_ID", q), ("NETDEV_A_QUEUE_TYPE", abi.NETDEV_QUEUE_TYPE_RX)]
        attrs.append(("NETDEV_A_DMABUF_QUEUES", {"attrs": nest}))
    if rx_page_size is not None:
        attrs.append(("NETDEV_A_DMABUF_RX_PAGE_SIZE", rx_page_size))
    return attrs


def bind_rx(ifindex: int, fd: int, queues: list[int], *, dmabuf: DmaBuf | None = None,
            rx_page_size: int | None = None) -> KernelBinding:
    """bind-rx: bind the dma-buf ``fd`` to RX ``queues`` of ``ifindex``.

    Opens its own netlink socket, owned by the returned :class:`KernelBinding`
    (closing it unbinds). Needs CAP_NET_ADMIN. Raises NetlinkError with the
    kernel's errno/extack (net/core/netdev-genl.c netdev_nl_bind_rx_doit,
    net/core/devmem.c); the socket is closed on failure.
    """
    qs = [int(q) for q in queues]
    sock, bid = _bind("bind-rx", abi.NETDEV_CMD_BIND_RX, bind_rx_attrs(ifindex, fd, qs, rx_page_size))
    return KernelBinding(sock, bid, ifindex, "rx", tuple(qs), dmabuf)


def bind_tx(ifindex: int, fd: int, *, dmabuf: DmaBuf | None = None) -> KernelBinding:
    """bind-tx (Linux 6.16+): bind the dma-buf ``fd`` for transmit on ``ifindex``.

    Same ownership and error rules as :func:`bind_rx`; a device without netmem
    TX gives EOPNOTSUPP "Driver does not support netmem TX"."""
    attrs = [("NETDEV_A_DMABUF_IFINDEX", ifindex), ("NETDEV_A_DMABUF_FD", fd)]
    sock, bid = _bind("bind-tx", abi.NETDEV_CMD_BIND_TX, attrs)
    return KernelBinding(sock, bid, ifindex, "tx", (), dmabuf)
