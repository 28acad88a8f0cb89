"""ethtool side of the emulated devmem NIC (the NicControl protocol).

Each change is a locked read-modify-write of the NIC's state file
(:mod:`devmemtcp.emulation.state`), refused with the kernel's errno and
extack text where the kernel refuses it:

* rings (net/ethtool/rings.c ``ethnl_set_rings``): hds-thresh above its
  maximum is ERANGE; while a queue has a memory provider (a live RX
  binding), "can't disable tcp-data-split while device has memory provider
  enabled" and "can't set non-zero hds_thresh while device is memory provider
  enabled" (EINVAL);
* channels (net/ethtool/channels.c ``ethnl_set_channels`` and
  net/ethtool/common.c ``ethtool_check_max_channel``): counts above the
  maximum, no RX channel left, fewer channels than a user-set RSS
  indirection table, an ntuple rule or a bound queue needs (EINVAL);
* RSS (``ethtool_set_rxfh``): a table of the wrong size or naming a queue
  that does not exist is EINVAL; an empty table restores the default spread;
* ntuple rules (ioctl ETHTOOL_SRXCLSRLINS / SRXCLSRLDEL, so ``OSError``): a
  queue that does not exist or a location out of range is EINVAL, no free
  slot ENOSPC, deleting an empty slot ENOENT. A rule without a location gets
  the lowest free one (RX_CLS_LOC_ANY); a given location is replaced.

The emulated NIC has combined channels only (rx/tx maxima 0), 4 by default.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from devmemtcp.emulation import netkit as nk
from devmemtcp.emulation import state as st
from devmemtcp.errors import NetlinkError
from devmemtcp.host import ifaces, netns
from devmemtcp.types import Channels, NtupleRule, Rings

_SPLIT_VALUES = ("unknown", "disabled", "enabled")


def _oserror(err: int, what: str) -> OSError:
    return OSError(err, f"{os.strerror(err)}: {what}")


class EmulatedNicControl:
    """ethtool control of the emulated NIC on ``ifname`` (calling thread's namespace).

    ``directory`` overrides the state directory; ``queues`` is the RX queue
    count used when the NIC has no state yet."""

    def __init__(self, ifname: str, *, directory: str | None = None, queues: int | None = None) -> None:
        self.ifindex = ifaces.ifindex(ifname)
        self.ifname = ifname
        self._dir = directory
        self._queues = queues
        self._ns = netns.inode()

    @property
    def directory(self) -> str | None:
        """The state directory this control reads and writes (None: the default)."""
        return self._dir

    # -- helpers -------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """A copy of the NIC's current state dict."""
        return st.load_nic(self.ifname, directory=self._dir, ns=self._ns, queues=self._queues)

    def _bound(self) -> dict[int, int]:
        return st.bound_queues(st.load_registry(self._dir), self._ns, self.ifname)

    def _update(self, fn: Any, op: str | None = None) -> Any:
        with st.locked(self._dir) as d:
            s = st.load_nic(self.ifname, directory=d, ns=self._ns, queues=self._queues)
            if op is not None and nk.is_virtual(s):
                # netkit_ethtool_ops has get_drvinfo and get_channels only
                if op.startswith("ioctl"):
                    raise _oserror(errno.EOPNOTSUPP, f"{self.ifname} is a netkit device: no ntuple rules")
                raise NetlinkError(errno.EOPNOTSUPP, op,
                                   hint=f"{self.ifname} is a netkit device: configure the physical NIC "
                                        "that leased it a queue")
            result = fn(s, st.bound_queues(st.load_registry(d), self._ns, self.ifname))
            st.save_nic(s, d)
            return result

    def stats(self) -> dict[str, dict[str, int]]:
        """Per-queue counters the receiving processes last wrote (``{queue:
        {"alloc-fast", "alloc-slow", "alloc-empty", "recycle-released-refcnt",
        "rx-packets", "rx-bytes"}}``, queue as a string key; see
        :class:`devmemtcp.emulation.pool.QueueStats`)."""
        return dict(self.state().get("stats") or {})

    def set_capabilities(self, *, queue_mgmt: bool | None = None, netmem_tx: str | None = None,
                         xdp: bool | None = None, xsk: list[int] | None = None, frags: str | None = None,
                         rx_buf_len: int | None = None, kernel: str | None = None,
                         dma_devs: list[int] | None = None) -> None:
        """Emulation knob (no ethtool equivalent): make the emulated driver lack
        the queue management API (bind-rx then fails with EOPNOTSUPP, as on a
        NIC without ``queue_mgmt_ops``); set its netmem TX mode (enum
        netmem_tx_mode: "dma", "no_dma" as netkit, or "none": bind-tx fails
        with "Driver does not support netmem TX"); attach an XDP program
        (``xdp``: bind-rx refused with EEXIST); or mark RX queues as used by
        AF_XDP sockets (``xsk``: bind-rx EBUSY, queue-create EBUSY); choose
        the RX buffer placement (``frags``: "driver", a real NIC's, or "page",
        whole page-aligned PAGE_SIZE frags; see :mod:`devmemtcp.emulation.rx`)
        and the driver's buffer size (``rx_buf_len``, bytes: a divisor of
        PAGE_SIZE, 4096 by default; larger buffers need large net_iovs, which
        the kernels modelled here do not have); the kernel version the NIC
        presents (``kernel``, "6.18" by default: "6.17" answers a too-small
        control buffer with EFAULT instead of ETOOSMALL); the DMA device of
        each RX queue (``dma_devs``, a multi-PF NIC: bind-rx of queues on
        different DMA devices is EOPNOTSUPP)."""
        if kernel is not None:
            parts = kernel.split(".")
            if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
                raise ValueError(f"kernel {kernel!r}: give MAJOR.MINOR, e.g. 6.17")
        if frags is not None and frags not in ("driver", "page"):
            raise ValueError(f"frags must be 'driver' or 'page', not {frags!r}")
        if rx_buf_len is not None and (rx_buf_len < 256 or 4096 % rx_buf_len):
            raise ValueError(f"rx_buf_len {rx_buf_len}: use a divisor of 4096 of at least 256 "
                             "(e.g. 2048, 4096)")
        if netmem_tx is not None and netmem_tx not in nk.NETMEM_TX_MODES:
            raise ValueError(f"netmem_tx must be one of {', '.join(nk.NETMEM_TX_MODES)}, not {netmem_tx!r}")

        def apply(s: dict[str, Any], bound: dict[int, int]) -> None:
            caps = s.setdefault("caps", {"queue_mgmt": True, "netmem_tx": "dma"})
            if queue_mgmt is not None:
                caps["queue_mgmt"] = bool(queue_mgmt)
            if netmem_tx is not None:
                caps["netmem_tx"] = netmem_tx
            if xdp is not None:
                caps["xdp"] = bool(xdp)
            if xsk is not None:
                caps["xsk"] = sorted({int(q) for q in xsk})
            if frags is not None:
                caps["frags"] = frags
            if rx_buf_len is not None:
                s["rings"]["rx_buf_len"] = int(rx_buf_len)
            if kernel is not None:
                caps["kernel"] = kernel
            if dma_devs is not None:
                caps["dma_devs"] = [int(x) for x in dma_devs]

        self._update(apply)

    def capabilities(self) -> dict[str, Any]:
        """``{"kind", "queue_mgmt", "netmem_tx", "xdp", "xsk", "frags", "rx_buf_len", "kernel", "dma_devs"}``
        of this emulated NIC."""
        s = self.state()
        caps = s.get("caps", {})
        frags = caps.get("frags") or ("page" if self.ifname == "lo" else "driver")
        return {"kind": nk.kind(s), "queue_mgmt": bool(caps.get("queue_mgmt", True)),
                "netmem_tx": nk.netmem_tx(s), "xdp": bool(caps.get("xdp", False)),
                "xsk": [int(q) for q in caps.get("xsk", [])], "frags": frags,
                "rx_buf_len": int(s["rings"].get("rx_buf_len", 4096)),
                "kernel": str(caps.get("kernel", "6.18")),
                "dma_devs": [int(x) for x in caps.get("dma_devs", [])]}

    def bound_queues(self) -> dict[int, int]:
        """``{rx queue: binding id}`` of the live bindings on this NIC (any process)."""
        return self._bound()

    # -- NicControl ----------------------------------------------------------
    def driver(self) -> str:
        return "devmemtcp-emulated-netkit" if nk.is_virtual(self.state()) else "devmemtcp-emulated"

    def rx_queue_count(self) -> int:
        return int(self.state()["channels"]["combined"])

    def get_rings(self) -> Rings:
        r = self.state()["rings"]
        return Rings(rx=r["rx"], rx_max=r["rx_max"], tx=r["tx"], tcp_data_split=r["tcp_data_split"],
                     hds_thresh=r["hds_thresh"], hds_thresh_max=r["hds_thresh_max"])

    def set_rings(self, *, tcp_data_split: str | None = None, hds_thresh: int | None = None) -> None:
        """ETHTOOL_MSG_RINGS_SET. Raises NetlinkError (op "rings-set")."""
        if tcp_data_split is not None and tcp_data_split not in _SPLIT_VALUES:
            raise NetlinkError(errno.EINVAL, "rings-set", bad_attr="tcp-data-split",
                               hint=f"tcp-data-split is one of {', '.join(_SPLIT_VALUES)}")

        def apply(s: dict[str, Any], bound: dict[int, int]) -> None:
            r = s["rings"]
            split = r["tcp_data_split"] if tcp_data_split is None else tcp_data_split
            thresh = r["hds_thresh"] if hds_thresh is None else int(hds_thresh)
            if hds_thresh is not None and not 0 <= thresh <= r["hds_thresh_max"]:
                raise NetlinkError(errno.ERANGE, "rings-set", bad_attr="hds-thresh",
                                   hint=f"hds-thresh must be at most {r['hds_thresh_max']}")
            if bound:
                if split != "enabled":
                    raise NetlinkError(
                        errno.EINVAL, "rings-set",
                        "can't disable tcp-data-split while device has memory provider enabled",
                        hint="close the devmem bindings on this interface first")
                if thresh:
                    raise NetlinkError(
                        errno.EINVAL, "rings-set",
                        "can't set non-zero hds_thresh while device is memory provider enabled",
                        hint="close the devmem bindings on this interface first")
            r["tcp_data_split"] = split
            r["hds_thresh"] = thresh

        self._update(apply, "rings-set")

    def get_channels(self) -> Channels:
        c = self.state()["channels"]
        return Channels(rx=0, tx=0, combined=c["combined"], rx_max=0, tx_max=0,
                        combined_max=c["combined_max"])

    def set_channels(self, *, rx: int | None = None, tx: int | None = None,
                     combined: int | None = None) -> None:
        """ETHTOOL_MSG_CHANNELS_SET. Raises NetlinkError (op "channels-set")."""

        def apply(s: dict[str, Any], bound: dict[int, int]) -> None:
            c = s["channels"]
            new_rx = 0 if rx is None else int(rx)
            new_tx = 0 if tx is None else int(tx)
            new_comb = c["combined"] if combined is None else int(combined)
            for name, val, mx in (("rx-count", new_rx, 0), ("tx-count", new_tx, 0),
                                  ("combined-count", new_comb, c["combined_max"])):
                if val > mx or val < 0:
                    raise NetlinkError(errno.EINVAL, "channels-set",
                                       "requested channel count exceeds maximum", bad_attr=name)
            if not new_comb and (not new_rx or not new_tx):
                raise NetlinkError(
                    errno.EINVAL, "channels-set",
                    "requested channel counts would result in no RX or TX channel being configured",
                    bad_attr="combined-count")
            total = new_comb + new_rx
            if s["rss"]["configured"]:
                max_rxfh = max(s["rss"]["indir"]) if s["rss"]["indir"] else 0
                if total <= max_rxfh:
                    raise NetlinkError(
                        errno.EINVAL, "channels-set",
                        f"requested channel counts are too low for existing indirection table ({max_rxfh})")
            if s["rules"]:
                max_rule = max(int(r["queue"]) for r in s["rules"])
                if total <= max_rule:
                    raise NetlinkError(
                        errno.EINVAL, "channels-set",
                        "requested channel counts are too low for existing ntuple filter settings")
            if bound:
                # dev_get_min_mp_channel_count(): highest bound queue + 1,
                # compared with <= in ethtool_check_max_channel()
                mp = max(bound) + 1
                if total <= mp:
                    raise NetlinkError(
                        errno.EINVAL, "channels-set",
                        f"requested channel counts are too low for existing memory provider setting ({mp})")
            c["combined"] = new_comb
            if not s["rss"]["configured"]:
                s["rss"]["indir"] = [i % total for i in range(st.RSS_TABLE_SIZE)]

        self._update(apply, "channels-set")

    def get_rss_indir(self) -> list[int]:
        return [int(q) for q in self.state()["rss"]["indir"]]

    def set_rss_indir(self, table: list[int]) -> None:
        """Set the RSS indirection table (ethtool -X); an empty list restores
        the default equal spread. Raises NetlinkError (op "rss-set")."""

        def apply(s: dict[str, Any], bound: dict[int, int]) -> None:
            n = int(s["channels"]["combined"])
            if not table:
                s["rss"] = {"indir": [i % n for i in range(st.RSS_TABLE_SIZE)], "configured": False}
                return
            if len(table) != st.RSS_TABLE_SIZE:
                raise NetlinkError(errno.EINVAL, "rss-set", bad_attr="indir",
                                   hint=f"the indirection table has {st.RSS_TABLE_SIZE} entries")
            if any(not 0 <= int(q) < n for q in table):
                raise NetlinkError(errno.EINVAL, "rss-set", bad_attr="indir",
                                   hint=f"queues are numbered 0..{n - 1}")
            s["rss"] = {"indir": [int(q) for q in table], "configured": True}

        self._update(apply, "rss-set")

    def list_rules(self) -> list[NtupleRule]:
        return [_to_rule(r) for r in sorted(self.state()["rules"], key=lambda r: int(r["location"]))]

    def add_rule(self, rule: NtupleRule) -> NtupleRule:
        """ETHTOOL_SRXCLSRLINS; returns the rule with its location."""

        def apply(s: dict[str, Any], bound: dict[int, int]) -> NtupleRule:
            n = int(s["channels"]["combined"])
            if not 0 <= rule.queue < n:
                raise _oserror(errno.EINVAL, f"rx queue {rule.queue} does not exist ({n} queues)")
            if rule.family not in (socket.AF_INET, socket.AF_INET6):
                raise _oserror(errno.EINVAL, f"flow type for address family {rule.family}")
            used = {int(r["location"]) for r in s["rules"]}
            if rule.location is None:
                free = next((i for i in range(st.MAX_RULES) if i not in used), None)
                if free is None:
                    raise _oserror(errno.ENOSPC, "no free ntuple rule slot")
                loc = free
            else:
                loc = int(rule.location)
                if not 0 <= loc < st.MAX_RULES:
                    raise _oserror(errno.EINVAL, f"rule location {loc} out of range 0..{st.MAX_RULES - 1}")
                s["rules"] = [r for r in s["rules"] if int(r["location"]) != loc]
            entry = {"location": loc, "dst_ip": rule.dst_ip, "dst_port": int(rule.dst_port),
                     "queue": int(rule.queue), "src_ip": rule.src_ip,
                     "src_port": None if rule.src_port is None else int(rule.src_port),
                     "family": int(rule.family)}
            s["rules"].append(entry)
            return _to_rule(entry)

        result: NtupleRule = self._update(apply, "ioctl")
        return result

    def delete_rule(self, location: int) -> None:
        """ETHTOOL_SRXCLSRLDEL; OSError(ENOENT) for an empty slot."""

        def apply(s: dict[str, Any], bound: dict[int, int]) -> None:
            keep = [r for r in s["rules"] if int(r["location"]) != int(location)]
            if len(keep) == len(s["rules"]):
                raise _oserror(errno.ENOENT, f"no ntuple rule at location {location}")
            s["rules"] = keep

        self._update(apply, "ioctl")


def _to_rule(r: dict[str, Any]) -> NtupleRule:
    return NtupleRule(dst_ip=r["dst_ip"], dst_port=int(r["dst_port"]), queue=int(r["queue"]),
                      src_ip=r.get("src_ip"), src_port=r.get("src_port"), location=int(r["location"]),
                      family=int(r.get("family", socket.AF_INET)))
