"""ntuple flow-steering rules, and the SIOCETHTOOL ioctl fallbacks.

ntuple rules have no ethtool-netlink op: they are inserted, listed and
deleted with the ``SIOCETHTOOL`` ioctl (net/ethtool/ioctl.c,
``ethtool_set_rxnfc`` / ``ethtool_get_rxnfc``), exactly as ``ethtool -N``
does. The same ioctl serves as the fallback for channel counts
(ETHTOOL_GCHANNELS/SCHANNELS) and the RSS indirection table
(ETHTOOL_GRXFHINDIR/SRXFHINDIR) where ethtool netlink lacks them.

All calls act on the network namespace of the calling thread. Refusals raise
:class:`EthtoolIoctlError` (a :class:`~devmemtcp.errors.NetlinkError`, so it
carries ``.errno``) naming the ioctl, the interface and the kernel's errno.

Encoding and decoding of rules (:func:`encode_rule`, :func:`decode_rule`) are
pure functions over ``abi.ETHTOOL_RX_FLOW_SPEC_DTYPE`` records.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import socket
import struct
from typing import Literal

import numpy as np

from devmemtcp import abi
from devmemtcp.errors import NetlinkError
from devmemtcp.types import Channels, NtupleRule

LocationPolicy = Literal["any", "slot", "auto"]

# Drivers whose rule placement is known (ethtool's rmgr logic decides the rest):
# bnxt_en assigns slots itself (RX_CLS_LOC_ANY), mlx5 needs an explicit free slot.
_DRIVER_POLICY: dict[str, LocationPolicy] = {
    "bnxt_en": "any",
    "mlx5_core": "slot",
    "fbnic": "any",
    "gve": "any",
}

_HINTS = {
    errno.EOPNOTSUPP: "the driver does not implement this ethtool operation; "
    "devmem RX needs a NIC with ntuple filters and RSS (gve, mlx5, bnxt, fbnic)",
    errno.EPERM: "run as root or grant CAP_NET_ADMIN",
    errno.ENODEV: "check the interface name and namespace with 'ip link'",
    errno.EINVAL: "the driver rejected the values; compare with 'ethtool -n/-x/-l IFNAME'",
    errno.EBUSY: "the setting is in use (a bound devmem queue, XDP or AF_XDP); release it first",
}


class EthtoolIoctlError(NetlinkError):
    """A SIOCETHTOOL ioctl the kernel refused: ``.errno`` is the kernel's errno,
    ``.op`` e.g. ``"ETHTOOL_SRXCLSRLINS on eth0"``."""

    def __init__(self, err: int, cmd: int, ifname: str) -> None:
        name = abi.ETHTOOL_IOCTL_NAMES.get(cmd, hex(cmd))
        super().__init__(err, f"{name} on {ifname}", None, None, _HINTS.get(err))
        self.cmd = cmd
        self.ifname = ifname


def location_policy(driver: str) -> LocationPolicy:
    """How to choose a rule location for ``driver``: ``"any"`` (RX_CLS_LOC_ANY,
    the driver assigns), ``"slot"`` (the lowest free slot) or ``"auto"``
    (ask the driver with ETHTOOL_GRXCLSRLCNT whether it sets RX_CLS_LOC_SPECIAL)."""
    return _DRIVER_POLICY.get(driver, "auto")


# -- the ioctl ----------------------------------------------------------------

def _ioctl(ifname: str, data: np.ndarray) -> None:
    """SIOCETHTOOL on ``ifname`` with ``data`` (a C-contiguous array whose first
    u32 is the ETHTOOL_* command); the kernel reads and writes ``data`` in place."""
    name = ifname.encode()
    if not 0 < len(name) < abi.IFNAMSIZ:
        raise EthtoolIoctlError(errno.ENODEV, int(data.view("<u4")[0]), ifname)
    if not data.flags.c_contiguous:
        raise ValueError("ioctl data must be C-contiguous")
    ifr = bytearray(abi.IFREQ_SIZE)
    ifr[: len(name)] = name
    struct.pack_into("=Q", ifr, abi.IFREQ_DATA_OFFSET, data.ctypes.data)
    cmd = int(data.view("<u4")[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), abi.SIOCETHTOOL, ifr, True)
        except OSError as exc:
            raise EthtoolIoctlError(exc.errno or errno.EIO, cmd, ifname) from None


def _rxnfc(cmd: int, extra_u32: int = 0) -> np.ndarray:
    """A zeroed ``struct ethtool_rxnfc`` followed by ``extra_u32`` rule_locs slots."""
    size = max(abi.ETHTOOL_RXNFC_DTYPE.itemsize, abi.ETHTOOL_RXNFC_RULE_LOCS_OFFSET + 4 * extra_u32)
    size = (size + 7) & ~7
    raw = np.zeros(size, dtype=np.uint8)
    raw[: abi.ETHTOOL_RXNFC_DTYPE.itemsize].view(abi.ETHTOOL_RXNFC_DTYPE)[0]["cmd"] = cmd
    return raw


def _rxnfc_view(raw: np.ndarray) -> np.void:
    return raw[: abi.ETHTOOL_RXNFC_DTYPE.itemsize].view(abi.ETHTOOL_RXNFC_DTYPE)[0]


# -- driver and rings ------------------------------------------------------------

def driver_name(ifname: str) -> str:
    """The driver's name (ETHTOOL_GDRVINFO), e.g. ``"mlx5_core"``, ``"veth"``;
    ``""`` when the device reports none (loopback)."""
    info = np.zeros(1, dtype=abi.ETHTOOL_DRVINFO_DTYPE)
    info[0]["cmd"] = abi.ETHTOOL_GDRVINFO
    try:
        _ioctl(ifname, info.view(np.uint8))
    except EthtoolIoctlError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            return ""
        raise
    return bytes(info[0]["driver"]).split(b"\0", 1)[0].decode(errors="replace")


def rx_rings(ifname: str) -> int:
    """Number of RX rings available to flow steering and RSS (ETHTOOL_GRXRINGS)."""
    raw = _rxnfc(abi.ETHTOOL_GRXRINGS)
    _ioctl(ifname, raw)
    return int(_rxnfc_view(raw)["data"])


# -- channels -------------------------------------------------------------------

def _channels_raw(ifname: str) -> np.ndarray:
    ch = np.zeros(1, dtype=abi.ETHTOOL_CHANNELS_DTYPE)
    ch[0]["cmd"] = abi.ETHTOOL_GCHANNELS
    _ioctl(ifname, ch.view(np.uint8))
    return ch


def get_channels(ifname: str) -> Channels:
    """Channel counts and maxima (ETHTOOL_GCHANNELS); a zero maximum is reported as ``None``."""
    c = _channels_raw(ifname)[0]

    def opt(v: np.integer) -> int | None:
        return int(v) if int(v) else None

    return Channels(rx=int(c["rx_count"]), tx=int(c["tx_count"]), combined=int(c["combined_count"]),
                    rx_max=opt(c["max_rx"]), tx_max=opt(c["max_tx"]), combined_max=opt(c["max_combined"]))


def set_channels(ifname: str, *, rx: int | None = None, tx: int | None = None,
                 combined: int | None = None) -> None:
    """Set channel counts (ETHTOOL_SCHANNELS); counts left ``None`` keep their value."""
    ch = _channels_raw(ifname)
    for field, value in (("rx_count", rx), ("tx_count", tx), ("combined_count", combined)):
        if value is not None:
            ch[0][field] = value
    ch[0]["cmd"] = abi.ETHTOOL_SCHANNELS
    _ioctl(ifname, ch.view(np.uint8))


# -- RSS indirection table ------------------------------------------------------

def get_rss_indir(ifname: str) -> list[int]:
    """The RSS indirection table (ETHTOOL_GRXFHINDIR): entry i = RX queue of hash bucket i."""
    hdr = np.zeros(1, dtype=abi.ETHTOOL_RXFH_INDIR_DTYPE)
    hdr[0]["cmd"] = abi.ETHTOOL_GRXFHINDIR
    _ioctl(ifname, hdr.view(np.uint8))
    n = int(hdr[0]["size"])
    raw = np.zeros(2 + n, dtype="<u4")
    raw[0] = abi.ETHTOOL_GRXFHINDIR
    raw[1] = n
    _ioctl(ifname, raw)
    return [int(x) for x in raw[2:]]


def set_rss_indir(ifname: str, table: list[int]) -> None:
    """Write the RSS indirection table (ETHTOOL_SRXFHINDIR). An empty ``table``
    resets it to the driver's default spread (and clears "user configured")."""
    raw = np.zeros(2 + len(table), dtype="<u4")
    raw[0] = abi.ETHTOOL_SRXFHINDIR
    raw[1] = len(table)
    raw[2:] = table
    _ioctl(ifname, raw)


def spread_table(size: int, queues: int) -> list[int]:
    """``ethtool -X equal N``: bucket i -> queue i mod N (the kernel's
    ethtool_rxfh_indir_default), for a table of ``size`` entries."""
    if queues < 1:
        raise ValueError("need at least one queue for RSS")
    return [i % queues for i in range(size)]


# -- rules ------------------------------------------------------------------------

def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def encode_rule(rule: NtupleRule, location: int) -> np.ndarray:
    """``struct ethtool_rx_flow_spec`` (one ``ETHTOOL_RX_FLOW_SPEC_DTYPE`` record)
    matching TCP to ``rule.dst_ip:dst_port`` (and ``src_ip``/``src_port`` when
    given) exactly, delivering to RX ring ``rule.queue``. Masks are all-ones
    over the matched fields (in the uapi a set mask bit means "compare")."""
    fs = np.zeros(1, dtype=abi.ETHTOOL_RX_FLOW_SPEC_DTYPE)
    dst = _ip(rule.dst_ip)
    src = _ip(rule.src_ip) if rule.src_ip else None
    v6 = dst.version == 6
    if src is not None and src.version != dst.version:
        raise ValueError(f"source {rule.src_ip} and destination {rule.dst_ip} differ in IP version")
    if not 0 <= rule.dst_port <= 0xFFFF or not 0 <= (rule.src_port or 0) <= 0xFFFF:
        raise ValueError("ports must be in 0..65535")
    if rule.queue < 0:
        raise ValueError("queue must be >= 0")
    rec = fs[0]
    rec["flow_type"] = abi.TCP_V6_FLOW if v6 else abi.TCP_V4_FLOW
    h, m = ("h_tcp6", "m_tcp6") if v6 else ("h_tcp4", "m_tcp4")
    ipdst, ipsrc = ("ip6dst", "ip6src") if v6 else ("ip4dst", "ip4src")
    rec[h][ipdst] = np.frombuffer(dst.packed, np.uint8)
    rec[m][ipdst] = 0xFF
    rec[h]["pdst"] = rule.dst_port
    rec[m]["pdst"] = 0xFFFF
    if src is not None:
        rec[h][ipsrc] = np.frombuffer(src.packed, np.uint8)
        rec[m][ipsrc] = 0xFF
    if rule.src_port is not None:
        rec[h]["psrc"] = rule.src_port
        rec[m]["psrc"] = 0xFFFF
    rec["ring_cookie"] = rule.queue
    rec["location"] = location
    return fs


def decode_rule(fs: np.ndarray | np.void) -> NtupleRule | None:
    """The :class:`NtupleRule` of a ``struct ethtool_rx_flow_spec`` record, or
    ``None`` for rules this tool does not model (not TCP, a drop/wake action,
    an RSS-context or VF target, partially masked fields)."""
    rec = fs[0] if isinstance(fs, np.ndarray) else fs
    ftype = int(rec["flow_type"]) & ~abi.FLOW_TYPE_FLAGS
    cookie = int(rec["ring_cookie"])
    if ftype not in (abi.TCP_V4_FLOW, abi.TCP_V6_FLOW) or int(rec["flow_type"]) & abi.FLOW_RSS:
        return None
    if cookie in (abi.RX_CLS_FLOW_DISC, abi.RX_CLS_FLOW_WAKE) or cookie & abi.ETHTOOL_RX_FLOW_SPEC_RING_VF:
        return None
    v6 = ftype == abi.TCP_V6_FLOW
    h, m = (rec["h_tcp6"], rec["m_tcp6"]) if v6 else (rec["h_tcp4"], rec["m_tcp4"])
    ipdst, ipsrc = ("ip6dst", "ip6src") if v6 else ("ip4dst", "ip4src")
    family = socket.AF_INET6 if v6 else socket.AF_INET

    def addr(field: str) -> str | None:
        mask = bytes(m[field])
        if not any(mask):
            return None
        if mask != b"\xff" * len(mask):
            raise _Partial
        return str(ipaddress.ip_address(bytes(h[field])))

    def port(field: str) -> int | None:
        mask = int(m[field])
        if mask == 0:
            return None
        if mask != 0xFFFF:
            raise _Partial
        return int(h[field])

    try:
        dst_ip, src_ip = addr(ipdst), addr(ipsrc)
        dst_port, src_port = port("pdst"), port("psrc")
    except _Partial:
        return None
    if dst_ip is None or dst_port is None:
        return None
    return NtupleRule(dst_ip=dst_ip, dst_port=dst_port, queue=cookie & abi.ETHTOOL_RX_FLOW_SPEC_RING,
                      src_ip=src_ip, src_port=src_port, location=int(rec["location"]), family=family)


class _Partial(Exception):
    pass


def rule_table(ifname: str) -> tuple[int, int, bool]:
    """``(rule_count, table_size, driver_assigns_locations)`` from
    ETHTOOL_GRXCLSRLCNT (``data`` = table size, plus RX_CLS_LOC_SPECIAL when
    the driver accepts RX_CLS_LOC_ANY)."""
    raw = _rxnfc(abi.ETHTOOL_GRXCLSRLCNT)
    _ioctl(ifname, raw)
    v = _rxnfc_view(raw)
    data = int(v["data"])
    return int(v["rule_cnt"]), data & ~abi.RX_CLS_LOC_SPECIAL, bool(data & abi.RX_CLS_LOC_SPECIAL)


def rule_locations(ifname: str) -> list[int]:
    """Locations of every installed rule (ETHTOOL_GRXCLSRLALL), whatever its type."""
    count, _size, _special = rule_table(ifname)
    raw = _rxnfc(abi.ETHTOOL_GRXCLSRLALL, count)
    _rxnfc_view(raw)["rule_cnt"] = count
    _ioctl(ifname, raw)
    n = int(_rxnfc_view(raw)["rule_cnt"])
    off = abi.ETHTOOL_RXNFC_RULE_LOCS_OFFSET
    return [int(x) for x in raw[off: off + 4 * n].view("<u4")]


def get_rule(ifname: str, location: int) -> np.ndarray:
    """The raw ``struct ethtool_rx_flow_spec`` at ``location`` (ETHTOOL_GRXCLSRULE)."""
    raw = _rxnfc(abi.ETHTOOL_GRXCLSRULE)
    _rxnfc_view(raw)["fs"]["location"] = location
    _ioctl(ifname, raw)
    return np.array([_rxnfc_view(raw)["fs"]], dtype=abi.ETHTOOL_RX_FLOW_SPEC_DTYPE)


def list_rules(ifname: str) -> list[NtupleRule]:
    """Every TCP steering rule on ``ifname`` (rules of other shapes are left out;
    :func:`rule_locations` lists all locations)."""
    rules = []
    for loc in rule_locations(ifname):
        rule = decode_rule(get_rule(ifname, loc))
        if rule is not None:
            rules.append(rule)
    return rules


def add_rule(ifname: str, rule: NtupleRule, location: int | LocationPolicy | None = None) -> NtupleRule:
    """Insert ``rule`` (ETHTOOL_SRXCLSRLINS) and return it with the location the
    driver used.

    ``location``: an explicit slot, ``"any"`` (RX_CLS_LOC_ANY: bnxt and other
    drivers that assign slots), ``"slot"`` (the lowest free slot: mlx5), or
    ``"auto"``/``None`` (RX_CLS_LOC_ANY when GRXCLSRLCNT reports
    RX_CLS_LOC_SPECIAL, else the lowest free slot, as ``ethtool -N`` does).
    Raises EthtoolIoctlError (EOPNOTSUPP on drivers without ntuple filters,
    ENOSPC when the table is full)."""
    if location is None or location == "auto" or location == "slot":
        _count, size, special = rule_table(ifname)
        if special and location != "slot":
            loc = abi.RX_CLS_LOC_ANY
        else:
            used = set(rule_locations(ifname))
            free = [i for i in range(size) if i not in used]
            if not free:
                raise EthtoolIoctlError(errno.ENOSPC, abi.ETHTOOL_SRXCLSRLINS, ifname)
            loc = free[0]
    elif location == "any":
        loc = abi.RX_CLS_LOC_ANY
    else:
        loc = int(location)
    raw = _rxnfc(abi.ETHTOOL_SRXCLSRLINS)
    v = _rxnfc_view(raw)
    fs = encode_rule(rule, loc)
    v["fs"] = fs[0]
    v["flow_type"] = int(fs[0]["flow_type"])
    _ioctl(ifname, raw)
    placed = int(_rxnfc_view(raw)["fs"]["location"])
    return NtupleRule(dst_ip=rule.dst_ip, dst_port=rule.dst_port, queue=rule.queue, src_ip=rule.src_ip,
                      src_port=rule.src_port, location=placed,
                      family=socket.AF_INET6 if _ip(rule.dst_ip).version == 6 else socket.AF_INET)


def delete_rule(ifname: str, location: int) -> None:
    """Delete the rule at ``location`` (ETHTOOL_SRXCLSRLDEL); ENOENT if none is there."""
    raw = _rxnfc(abi.ETHTOOL_SRXCLSRLDEL)
    _rxnfc_view(raw)["fs"]["location"] = location
    _ioctl(ifname, raw)
