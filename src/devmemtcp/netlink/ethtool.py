"""The ethtool pieces devmem RX needs, over the ethtool generic-netlink family.

- rings (ETHTOOL_MSG_RINGS_GET/SET): ``tcp-data-split`` and ``hds-thresh``
  (header split must be on and the threshold 0 for devmem RX,
  net/core/devmem.c / netdev_rx_queue.c);
- channels (ETHTOOL_MSG_CHANNELS_GET/SET);
- the RSS indirection table (ETHTOOL_MSG_RSS_GET; ETHTOOL_MSG_RSS_SET where
  the kernel lists the op, 6.17+);
- the ``rx-ntuple-filter`` feature (ETHTOOL_MSG_FEATURES_GET);
- the driver name (SIOCETHTOOL ETHTOOL_GDRVINFO) and the RX queue count
  (``/sys/class/net/IF/queues/rx-*``).

Messages reuse pyroute2's ethtool declarations (``ethtool_rings_msg``,
``ethtoolheader``, ``ethtoolbitset``); this module is the one place that
extends them with what pyroute2 lacks (HDS_THRESH, HDS_THRESH_MAX, channels,
features, RSS). Numbers come from include/uapi/linux/ethtool_netlink_generated.h
via :mod:`devmemtcp.abi`.

Refusals raise :class:`~devmemtcp.errors.NetlinkError` carrying the kernel's
errno and extack text; an unknown interface raises it with ENODEV.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import socket
import struct
from typing import Any

import numpy as np
from pyroute2.netlink import genlmsg
from pyroute2.netlink.generic.ethtool import ethtool_rings_msg, ethtoolbitset, ethtoolheader

from devmemtcp import abi
from devmemtcp.errors import NetlinkError
from devmemtcp.host import ifaces, netns
from devmemtcp.netlink.genl import GenlSocket
from devmemtcp.types import Channels, Rings


# --------------------------------------------------------------------------
# Message declarations (pyroute2 classes, extended here)
# --------------------------------------------------------------------------
class RingsMsg(ethtool_rings_msg):
    """pyroute2's rings message plus HDS_THRESH / HDS_THRESH_MAX (Linux 6.13+)."""

    prefix = "ETHTOOL_A_RINGS_"
    nla_map = (
        *ethtool_rings_msg.nla_map,
        ("ETHTOOL_A_RINGS_HDS_THRESH", "uint32"),
        ("ETHTOOL_A_RINGS_HDS_THRESH_MAX", "uint32"),
    )
    ethtoolheader = ethtoolheader


class ChannelsMsg(genlmsg):
    prefix = "ETHTOOL_A_CHANNELS_"
    nla_map = (
        (abi.ETHTOOL_A_CHANNELS_HEADER, "ETHTOOL_A_CHANNELS_HEADER", "ethtoolheader"),
        (abi.ETHTOOL_A_CHANNELS_RX_MAX, "ETHTOOL_A_CHANNELS_RX_MAX", "uint32"),
        (abi.ETHTOOL_A_CHANNELS_TX_MAX, "ETHTOOL_A_CHANNELS_TX_MAX", "uint32"),
        (abi.ETHTOOL_A_CHANNELS_OTHER_MAX, "ETHTOOL_A_CHANNELS_OTHER_MAX", "uint32"),
        (abi.ETHTOOL_A_CHANNELS_COMBINED_MAX, "ETHTOOL_A_CHANNELS_COMBINED_MAX", "uint32"),
        (abi.ETHTOOL_A_CHANNELS_RX_COUNT, "ETHTOOL_A_CHANNELS_RX_COUNT", "uint32"),
        (abi.ETHTOOL_A_CHANNELS_TX_COUNT, "ETHTOOL_A_CHANNELS_TX_COUNT", "uint32"),
        (abi.ETHTOOL_A_CHANNELS_OTHER_COUNT, "ETHTOOL_A_CHANNELS_OTHER_COUNT", "uint32"),
        (abi.ETHTOOL_A_CHANNELS_COMBINED_COUNT, "ETHTOOL_A_CHANNELS_COMBINED_COUNT", "uint32"),
    )
    ethtoolheader = ethtoolheader


class FeaturesMsg(genlmsg):
    prefix = "ETHTOOL_A_FEATURES_"
    nla_map = (
        (abi.ETHTOOL_A_FEATURES_HEADER, "ETHTOOL_A_FEATURES_HEADER", "ethtoolheader"),
        (abi.ETHTOOL_A_FEATURES_HW, "ETHTOOL_A_FEATURES_HW", "ethtoolbitset"),
        (abi.ETHTOOL_A_FEATURES_WANTED, "ETHTOOL_A_FEATURES_WANTED", "ethtoolbitset"),
        (abi.ETHTOOL_A_FEATURES_ACTIVE, "ETHTOOL_A_FEATURES_ACTIVE", "ethtoolbitset"),
        (abi.ETHTOOL_A_FEATURES_NOCHANGE, "ETHTOOL_A_FEATURES_NOCHANGE", "ethtoolbitset"),
    )
    ethtoolheader = ethtoolheader
    ethtoolbitset = ethtoolbitset


class RssMsg(genlmsg):
    prefix = "ETHTOOL_A_RSS_"
    nla_map = (
        (abi.ETHTOOL_A_RSS_HEADER, "ETHTOOL_A_RSS_HEADER", "ethtoolheader"),
        (abi.ETHTOOL_A_RSS_CONTEXT, "ETHTOOL_A_RSS_CONTEXT", "uint32"),
        (abi.ETHTOOL_A_RSS_HFUNC, "ETHTOOL_A_RSS_HFUNC", "uint32"),
        (abi.ETHTOOL_A_RSS_INDIR, "ETHTOOL_A_RSS_INDIR", "cdata"),
        (abi.ETHTOOL_A_RSS_HKEY, "ETHTOOL_A_RSS_HKEY", "cdata"),
        (abi.ETHTOOL_A_RSS_INPUT_XFRM, "ETHTOOL_A_RSS_INPUT_XFRM", "uint32"),
        (abi.ETHTOOL_A_RSS_START_CONTEXT, "ETHTOOL_A_RSS_START_CONTEXT", "uint32"),
    )
    ethtoolheader = ethtoolheader


# --------------------------------------------------------------------------
# Pure encoders / decoders
# --------------------------------------------------------------------------
_SPLIT_VALUES = {
    "unknown": abi.ETHTOOL_TCP_DATA_SPLIT_UNKNOWN, "auto": abi.ETHTOOL_TCP_DATA_SPLIT_UNKNOWN,
    "disabled": abi.ETHTOOL_TCP_DATA_SPLIT_DISABLED, "off": abi.ETHTOOL_TCP_DATA_SPLIT_DISABLED,
    "enabled": abi.ETHTOOL_TCP_DATA_SPLIT_ENABLED, "on": abi.ETHTOOL_TCP_DATA_SPLIT_ENABLED,
}


def tcp_data_split_value(state: str | int) -> int:
    """``"enabled"``/``"on"`` -> 2, ``"disabled"``/``"off"`` -> 1, ``"unknown"``/``"auto"`` -> 0
    (enum ethtool_tcp_data_split). Raises ValueError for anything else."""
    if isinstance(state, int):
        if state not in abi.TCP_DATA_SPLIT_NAMES:
            raise ValueError(f"tcp-data-split must be 0, 1 or 2, not {state}")
        return state
    try:
        return _SPLIT_VALUES[state.lower()]
    except KeyError:
        raise ValueError(f"tcp-data-split must be on/enabled, off/disabled or auto, not {state!r}") from None


def encode_indir(table: list[int] | np.ndarray) -> bytes:
    """RSS indirection table -> ETHTOOL_A_RSS_INDIR payload (host-order u32 array)."""
    arr = np.asarray(table, dtype=np.int64)
    if arr.ndim != 1 or (arr.size and (arr.min() < 0 or arr.max() >= 1 << 32)):
        raise ValueError("RSS indirection table entries must be queue ids in [0, 2**32)")
    return arr.astype(np.dtype("=u4")).tobytes()


def decode_indir(payload: bytes) -> list[int]:
    """ETHTOOL_A_RSS_INDIR payload -> list of RX queue ids (one per table slot)."""
    if len(payload) % 4:
        raise ValueError(f"RSS indirection payload of {len(payload)} bytes is not a u32 array")
    return np.frombuffer(payload, dtype=np.dtype("=u4")).astype(int).tolist()


def bitset_bits(bitset: Any) -> dict[str, bool]:
    """Verbose ethtool bitset (pyroute2 ``ethtoolbitset``) -> {bit name: value}.

    With ETHTOOL_A_BITSET_NOMASK the listed bits are the set ones; with a
    mask, each listed bit carries ETHTOOL_A_BITSET_BIT_VALUE when set
    (net/ethtool/bitset.c)."""
    nomask = bool(bitset.get_attr("ETHTOOL_A_BITSET_NOMASK"))
    out: dict[str, bool] = {}
    bits = bitset.get_attr("ETHTOOL_A_BITSET_BITS")
    if bits is None:
        return out
    for bit in bits.get_attrs("ETHTOOL_A_BITSET_BITS_BIT"):
        name = bit.get_attr("ETHTOOL_A_BITSET_BIT_NAME")
        if name is None:
            name = str(bit.get_attr("ETHTOOL_A_BITSET_BIT_INDEX"))
        out[str(name)] = nomask or bool(bit.get_attr("ETHTOOL_A_BITSET_BIT_VALUE"))
    return out


def _header(ifname: str, flags: int = 0) -> tuple[str, dict[str, Any]]:
    attrs: list[Any] = [("ETHTOOL_A_HEADER_DEV_NAME", ifname)]
    if flags:
        attrs.append(("ETHTOOL_A_HEADER_FLAGS", flags))
    return ("HEADER", {"attrs": attrs})


def _hint(op: str, ifname: str) -> Any:
    def fn(err: int, extack: str | None, bad_attr: str | int | None) -> str | None:
        if err == _errno.ENODEV:
            return f"no interface {ifname!r} here: check `ip link` (or pass --netns NAME)"
        if err in (_errno.EPERM, _errno.EACCES):
            return "changing NIC settings needs root or CAP_NET_ADMIN"
        if err == _errno.EOPNOTSUPP:
            return f"the driver of {ifname} does not support this ({op}); see devmemtcp doctor {ifname}"
        return None
    return fn


def _req(ifname: str, op: str, cmd: int, cls: type[genlmsg], attrs: list[Any]) -> genlmsg | None:
    with GenlSocket(abi.ETHTOOL_FAMILY_NAME, hint=_hint(op, ifname)) as sock:
        prefix = cls.prefix or ""
        attrs = [(prefix + name, value) for name, value in attrs]
        replies = sock.request(cmd, attrs, cls, op=op)
    return replies[0] if replies else None


# --------------------------------------------------------------------------
# Rings
# --------------------------------------------------------------------------
def get_rings(ifname: str) -> Rings:
    """Ring sizes and header-split state of ``ifname`` (ETHTOOL_MSG_RINGS_GET).

    ``tcp_data_split`` is "unknown" when the driver does not report it;
    ``hds_thresh``/``hds_thresh_max`` (bytes) are None when not reported.
    Raises NetlinkError (ENODEV for an unknown interface, EOPNOTSUPP when the
    driver has no get_ringparam)."""
    reply = _req(ifname, "rings-get", abi.ETHTOOL_MSG_RINGS_GET, RingsMsg, [_header(ifname)])
    if reply is None:
        return Rings()
    split = reply.get_attr("ETHTOOL_A_RINGS_TCP_DATA_SPLIT")
    return Rings(
        rx=reply.get_attr("ETHTOOL_A_RINGS_RX"),
        rx_max=reply.get_attr("ETHTOOL_A_RINGS_RX_MAX"),
        tx=reply.get_attr("ETHTOOL_A_RINGS_TX"),
        tcp_data_split=abi.TCP_DATA_SPLIT_NAMES.get(split, "unknown") if split is not None else "unknown",
        hds_thresh=reply.get_attr("ETHTOOL_A_RINGS_HDS_THRESH"),
        hds_thresh_max=reply.get_attr("ETHTOOL_A_RINGS_HDS_THRESH_MAX"),
    )


def set_rings(ifname: str, tcp_data_split: str | int | None = None, hds_thresh: int | None = None) -> None:
    """Set header split (``"enabled"``/``"disabled"``/``"auto"``) and/or the
    header-split threshold in bytes (ETHTOOL_MSG_RINGS_SET, CAP_NET_ADMIN).

    Raises NetlinkError with the kernel's extack (e.g. a driver without
    header split, or hds-thresh above hds-thresh-max); ValueError for a bad
    ``tcp_data_split`` name. Nothing is sent when both are None."""
    attrs: list[Any] = [_header(ifname)]
    if tcp_data_split is not None:
        attrs.append(("TCP_DATA_SPLIT", tcp_data_split_value(tcp_data_split)))
    if hds_thresh is not None:
        attrs.append(("HDS_THRESH", int(hds_thresh)))
    if len(attrs) == 1:
        return
    _req(ifname, "rings-set", abi.ETHTOOL_MSG_RINGS_SET, RingsMsg, attrs)


# --------------------------------------------------------------------------
# Channels
# --------------------------------------------------------------------------
def get_channels(ifname: str) -> Channels:
    """Channel counts and maxima (ETHTOOL_MSG_CHANNELS_GET); None = not reported.
    Raises NetlinkError (EOPNOTSUPP when the driver has no get_channels)."""
    reply = _req(ifname, "channels-get", abi.ETHTOOL_MSG_CHANNELS_GET, ChannelsMsg, [_header(ifname)])
    if reply is None:
        return Channels()
    g = reply.get_attr
    return Channels(
        rx=g("ETHTOOL_A_CHANNELS_RX_COUNT"), tx=g("ETHTOOL_A_CHANNELS_TX_COUNT"),
        combined=g("ETHTOOL_A_CHANNELS_COMBINED_COUNT"), rx_max=g("ETHTOOL_A_CHANNELS_RX_MAX"),
        tx_max=g("ETHTOOL_A_CHANNELS_TX_MAX"), combined_max=g("ETHTOOL_A_CHANNELS_COMBINED_MAX"),
    )


def set_channels(ifname: str, rx: int | None = None, tx: int | None = None,
                 combined: int | None = None) -> None:
    """Set channel counts (ETHTOOL_MSG_CHANNELS_SET, CAP_NET_ADMIN). The kernel
    refuses to drop below a queue that has a memory provider bound (extack).
    Nothing is sent when all are None."""
    attrs: list[Any] = [_header(ifname)]
    for name, value in (("RX_COUNT", rx), ("TX_COUNT", tx), ("COMBINED_COUNT", combined)):
        if value is not None:
            attrs.append((name, int(value)))
    if len(attrs) == 1:
        return
    _req(ifname, "channels-set", abi.ETHTOOL_MSG_CHANNELS_SET, ChannelsMsg, attrs)


# --------------------------------------------------------------------------
# RSS
# --------------------------------------------------------------------------
def get_rss_indir(ifname: str) -> list[int]:
    """The RSS indirection table of the default context: one RX queue id per
    slot (ETHTOOL_MSG_RSS_GET). Empty when the driver has no RSS table;
    NetlinkError EOPNOTSUPP when it has no get_rxfh."""
    reply = _req(ifname, "rss-get", abi.ETHTOOL_MSG_RSS_GET, RssMsg, [_header(ifname)])
    if reply is None:
        return []
    payload = reply.get_attr("ETHTOOL_A_RSS_INDIR")
    return decode_indir(bytes(payload)) if payload else []


def rss_set_supported() -> bool:
    """Whether this kernel's ethtool family lists ETHTOOL_MSG_RSS_SET (6.17+)."""
    with GenlSocket(abi.ETHTOOL_FAMILY_NAME) as sock:
        return abi.ETHTOOL_MSG_RSS_SET in sock.op_ids


def set_rss_indir(ifname: str, table: list[int]) -> None:
    """Replace the default context's RSS indirection table (ETHTOOL_MSG_RSS_SET,
    CAP_NET_ADMIN). ``table`` has one queue id per slot (the driver's table
    size, see :func:`get_rss_indir`). NetlinkError EOPNOTSUPP, with a hint,
    when the kernel lacks RSS_SET; otherwise the kernel's errno/extack."""
    with GenlSocket(abi.ETHTOOL_FAMILY_NAME, hint=_hint("rss-set", ifname)) as sock:
        if abi.ETHTOOL_MSG_RSS_SET not in sock.op_ids:
            raise NetlinkError(_errno.EOPNOTSUPP, "rss-set",
                               hint="this kernel has no ETHTOOL_MSG_RSS_SET (6.17+): use `ethtool -X`")
        attrs = [("ETHTOOL_A_RSS_HEADER", {"attrs": [("ETHTOOL_A_HEADER_DEV_NAME", ifname)]}),
                 ("ETHTOOL_A_RSS_INDIR", encode_indir(table))]
        sock.request(abi.ETHTOOL_MSG_RSS_SET, attrs, RssMsg, op="rss-set")


# --------------------------------------------------------------------------
# Features, driver, queues
# --------------------------------------------------------------------------
def features(ifname: str) -> tuple[dict[str, bool], dict[str, bool]]:
    """(hw, active) feature maps {name: on} (ETHTOOL_MSG_FEATURES_GET, verbose bitsets)."""
    reply = _req(ifname, "features-get", abi.ETHTOOL_MSG_FEATURES_GET, FeaturesMsg, [_header(ifname)])
    if reply is None:
        return {}, {}
    hw = reply.get_attr("ETHTOOL_A_FEATURES_HW")
    active = reply.get_attr("ETHTOOL_A_FEATURES_ACTIVE")
    return (bitset_bits(hw) if hw is not None else {}, bitset_bits(active) if active is not None else {})


def ntuple_enabled(ifname: str) -> bool | None:
    """``rx-ntuple-filter`` (ethtool -K IF ntuple on): True when active, False
    when the driver supports it but it is off, None when the driver cannot
    do ntuple flow steering at all."""
    hw, active = features(ifname)
    if not hw.get(abi.NTUPLE_FEATURE_NAME, False):
        return None
    return bool(active.get(abi.NTUPLE_FEATURE_NAME, False))


def driver_name(ifname: str) -> str | None:
    """The driver behind ``ifname`` (SIOCETHTOOL ETHTOOL_GDRVINFO, the name
    ``ethtool -i`` shows), falling back to the sysfs device driver link;
    None when neither names one (loopback). Raises DevmemError for an
    unknown interface."""
    ifaces.ifindex(ifname)
    buf = np.zeros(1, dtype=abi.ETHTOOL_DRVINFO_DTYPE)
    buf["cmd"] = abi.ETHTOOL_GDRVINFO
    data = bytearray(buf.tobytes())
    arg = memoryview(data)
    addr = np.frombuffer(data, dtype=np.uint8).ctypes.data
    ifreq = struct.pack(f"{abi.IFNAMSIZ}sP", ifname.encode(), addr) + bytes(16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), abi.SIOCETHTOOL, ifreq)
            info = np.frombuffer(bytes(arg), dtype=abi.ETHTOOL_DRVINFO_DTYPE)[0]
            name = info["driver"].split(b"\0", 1)[0].decode(errors="replace")
            if name:
                return name
        except OSError:
            pass
    link = f"/sys/class/net/{ifname}/device/driver"
    if netns.current() is None and os.path.islink(link):  # /sys shows the root namespace only
        return os.path.basename(os.readlink(link))
    return None


def _queue_count(ifname: str, kind: str) -> int:
    ifaces.ifindex(ifname)
    if netns.current() is not None:
        counts = netns.sysfs_queue_counts()
        if ifname not in counts:
            raise ifaces.unknown_interface(ifname)
        return counts[ifname][kind]
    return sum(1 for n in os.listdir(f"/sys/class/net/{ifname}/queues") if n.startswith(kind + "-"))


def rx_queue_count(ifname: str) -> int:
    """Number of RX queues the stack uses (real_num_rx_queues): the
    ``queues/rx-*`` entries of ``/sys/class/net/IF``. Inside a namespace
    entered with :func:`devmemtcp.host.netns.enter` it reads that namespace's own
    sysfs (:func:`devmemtcp.host.netns.sysfs_queue_counts`). Raises DevmemError
    for an unknown interface."""
    return _queue_count(ifname, "rx")


def tx_queue_count(ifname: str) -> int:
    """Number of TX queues: ``/sys/class/net/IF/queues/tx-*`` (see :func:`rx_queue_count`)."""
    return _queue_count(ifname, "tx")
