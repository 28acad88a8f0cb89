"""ntuple rules and SIOCETHTOOL fallbacks: struct layouts against the C compiler,
rule encoding round trips, and the real kernel's answers on a veth."""

from __future__ import annotations

import ctypes
import errno
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devmemtcp import abi
from devmemtcp.netlink import ntuple
from devmemtcp.types import NtupleRule

T = TypeVar("T")

C_SOURCE = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/ethtool.h>
#include <linux/sockios.h>
#include <net/if.h>
#define F(s, f) printf(#s " " #f " %zu\n", offsetof(struct s, f))
#define S(s) printf(#s " sizeof %zu\n", sizeof(struct s))
int main(void) {
  S(ethtool_rxnfc); F(ethtool_rxnfc, cmd); F(ethtool_rxnfc, flow_type); F(ethtool_rxnfc, data);
  F(ethtool_rxnfc, fs); F(ethtool_rxnfc, rule_cnt); F(ethtool_rxnfc, rule_locs);
  S(ethtool_rx_flow_spec); F(ethtool_rx_flow_spec, h_u); F(ethtool_rx_flow_spec, h_ext);
  F(ethtool_rx_flow_spec, m_u); F(ethtool_rx_flow_spec, m_ext);
  F(ethtool_rx_flow_spec, ring_cookie); F(ethtool_rx_flow_spec, location);
  S(ethtool_tcpip4_spec); F(ethtool_tcpip4_spec, ip4src); F(ethtool_tcpip4_spec, ip4dst);
  F(ethtool_tcpip4_spec, psrc); F(ethtool_tcpip4_spec, pdst); F(ethtool_tcpip4_spec, tos);
  S(ethtool_tcpip6_spec); F(ethtool_tcpip6_spec, ip6src); F(ethtool_tcpip6_spec, ip6dst);
  F(ethtool_tcpip6_spec, psrc); F(ethtool_tcpip6_spec, pdst); F(ethtool_tcpip6_spec, tclass);
  S(ethtool_flow_ext); F(ethtool_flow_ext, h_dest); F(ethtool_flow_ext, vlan_etype);
  F(ethtool_flow_ext, vlan_tci); F(ethtool_flow_ext, data);
  S(ethtool_rxfh_indir); F(ethtool_rxfh_indir, ring_index);
  S(ethtool_channels); F(ethtool_channels, max_combined); F(ethtool_channels, combined_count);
  S(ethtool_drvinfo); F(ethtool_drvinfo, driver); F(ethtool_drvinfo, bus_info);
  F(ethtool_drvinfo, n_priv_flags); F(ethtool_drvinfo, regdump_len);
  S(ifreq); printf("ifreq ifr_data %zu\n", offsetof(struct ifreq, ifr_data));
  printf("const SIOCETHTOOL %d\nconst ETHTOOL_GRXCLSRLINS %d\n", SIOCETHTOOL, ETHTOOL_SRXCLSRLINS);
  printf("const ETHTOOL_GRXFHINDIR %d\nconst ETHTOOL_SCHANNELS %d\n", ETHTOOL_GRXFHINDIR, ETHTOOL_SCHANNELS);
  printf("const RX_CLS_LOC_ANY %u\nconst TCP_V6_FLOW %d\n", RX_CLS_LOC_ANY, TCP_V6_FLOW);
  return 0;
}
"""


def _compiled_layout(tmp_path: Path) -> dict[tuple[str, str], int]:
    if not shutil.which("gcc"):
        pytest.skip("needs gcc (apt-get install gcc)")
    if not Path("/usr/include/linux/ethtool.h").exists():
        pytest.skip("needs the kernel uapi headers (apt-get install linux-libc-dev)")
    src = tmp_path / "layout.c"
    src.write_text(C_SOURCE)
    subprocess.run(["gcc", "-o", str(tmp_path / "layout"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "layout")], check=True, capture_output=True, text=True).stdout
    result = {}
    for line in out.splitlines():
        a, b, c = line.split()
        result[(a, b)] = int(c)
    return result


def test_layouts_match_the_c_compiler(tmp_path: Path) -> None:
    c = _compiled_layout(tmp_path)
    rxnfc = abi.ETHTOOL_RXNFC_DTYPE
    assert c[("ethtool_rxnfc", "sizeof")] == rxnfc.itemsize
    for name in ("cmd", "flow_type", "data", "fs", "rule_cnt"):
        assert c[("ethtool_rxnfc", name)] == rxnfc.fields[name][1], name
    assert c[("ethtool_rxnfc", "rule_locs")] == abi.ETHTOOL_RXNFC_RULE_LOCS_OFFSET
    fs = abi.ETHTOOL_RX_FLOW_SPEC_DTYPE
    assert c[("ethtool_rx_flow_spec", "sizeof")] == fs.itemsize
    for cname, ours in (("h_u", "h_tcp4"), ("h_u", "h_tcp6"), ("h_ext", "h_ext"), ("m_u", "m_tcp4"),
                        ("m_u", "m_tcp6"), ("m_ext", "m_ext"), ("ring_cookie", "ring_cookie"),
                        ("location", "location")):
        assert c[("ethtool_rx_flow_spec", cname)] == fs.fields[ours][1], ours
    for struct_name, dt in (("ethtool_tcpip4_spec", abi.ETHTOOL_TCPIP4_SPEC_DTYPE),
                            ("ethtool_tcpip6_spec", abi.ETHTOOL_TCPIP6_SPEC_DTYPE),
                            ("ethtool_flow_ext", abi.ETHTOOL_FLOW_EXT_DTYPE),
                            ("ethtool_channels", abi.ETHTOOL_CHANNELS_DTYPE),
                            ("ethtool_drvinfo", abi.ETHTOOL_DRVINFO_DTYPE)):
        assert c[(struct_name, "sizeof")] == dt.itemsize, struct_name
        for (s, f), off in c.items():
            if s == struct_name and f != "sizeof":
                assert dt.fields[f][1] == off, (s, f)
    assert c[("ethtool_rxfh_indir", "sizeof")] == abi.ETHTOOL_RXFH_INDIR_DTYPE.itemsize
    assert c[("ethtool_rxfh_indir", "ring_index")] == 8
    assert c[("ifreq", "sizeof")] == abi.IFREQ_SIZE
    assert c[("ifreq", "ifr_data")] == abi.IFREQ_DATA_OFFSET
    assert c[("const", "SIOCETHTOOL")] == abi.SIOCETHTOOL
    assert c[("const", "ETHTOOL_GRXCLSRLINS")] == abi.ETHTOOL_SRXCLSRLINS
    assert c[("const", "ETHTOOL_GRXFHINDIR")] == abi.ETHTOOL_GRXFHINDIR
    assert c[("const", "ETHTOOL_SCHANNELS")] == abi.ETHTOOL_SCHANNELS
    assert c[("const", "RX_CLS_LOC_ANY")] == abi.RX_CLS_LOC_ANY
    assert c[("const", "TCP_V6_FLOW")] == abi.TCP_V6_FLOW


ports = st.integers(min_value=0, max_value=0xFFFF)


@st.composite
def rules(draw: st.DrawFn) -> NtupleRule:
    v6 = draw(st.booleans())
    addr = st.ip_addresses(v=6 if v6 else 4).map(str)
    src = draw(st.none() | addr)
    return NtupleRule(dst_ip=draw(addr), dst_port=draw(ports), queue=draw(st.integers(0, 1023)),
                      src_ip=src, src_port=draw(st.none() | ports),
                      location=draw(st.integers(0, 4095)),
                      family=socket.AF_INET6 if v6 else socket.AF_INET)


@given(rules())
def test_encode_decode_round_trip(rule: NtupleRule) -> None:
    assert rule.location is not None
    fs = ntuple.encode_rule(rule, rule.location)
    assert ntuple.decode_rule(fs) == rule


def test_encoding_is_the_kernel_byte_layout() -> None:
    rule = NtupleRule("192.0.2.1", 5201, 3, src_ip="192.0.2.2", src_port=40000)
    raw = ntuple.encode_rule(rule, 7).tobytes()
    assert int.from_bytes(raw[0:4], "little") == abi.TCP_V4_FLOW
    assert raw[4:8] == socket.inet_aton("192.0.2.2")  # h_u.tcp_ip4_spec.ip4src
    assert raw[8:12] == socket.inet_aton("192.0.2.1")  # ip4dst
    assert raw[12:14] == (40000).to_bytes(2, "big") and raw[14:16] == (5201).to_bytes(2, "big")
    assert raw[76:92] == b"\xff" * 12 + b"\0" * 4  # m_u: addresses and ports compared, tos not
    assert int.from_bytes(raw[152:160], "little") == 3
    assert int.from_bytes(raw[160:164], "little") == 7


def test_three_tuple_masks_leave_source_open() -> None:
    rule = NtupleRule("2001:db8::1", 443, 1)
    fs = ntuple.encode_rule(rule, abi.RX_CLS_LOC_ANY)
    assert int(fs[0]["flow_type"]) == abi.TCP_V6_FLOW
    assert not fs[0]["m_tcp6"]["ip6src"].any() and int(fs[0]["m_tcp6"]["psrc"]) == 0
    decoded = ntuple.decode_rule(fs)
    assert decoded is not None and decoded.src_ip is None and decoded.src_port is None


def test_decode_skips_rules_it_does_not_model() -> None:
    fs = ntuple.encode_rule(NtupleRule("192.0.2.1", 80, 1), 0)
    drop = fs.copy()
    drop[0]["ring_cookie"] = abi.RX_CLS_FLOW_DISC
    assert ntuple.decode_rule(drop) is None
    udp = fs.copy()
    udp[0]["flow_type"] = 0x02  # UDP_V4_FLOW
    assert ntuple.decode_rule(udp) is None
    partial = fs.copy()
    partial[0]["m_tcp4"]["ip4dst"] = [255, 255, 255, 0]
    assert ntuple.decode_rule(partial) is None


def test_encode_rejects_mixed_families_and_bad_ports() -> None:
    with pytest.raises(ValueError, match="IP version"):
        ntuple.encode_rule(NtupleRule("192.0.2.1", 80, 1, src_ip="2001:db8::1"), 0)
    with pytest.raises(ValueError, match="ports"):
        ntuple.encode_rule(NtupleRule("192.0.2.1", 70000, 1), 0)


def test_spread_table() -> None:
    assert ntuple.spread_table(8, 3) == [0, 1, 2, 0, 1, 2, 0, 1]
    with pytest.raises(ValueError):
        ntuple.spread_table(8, 0)


def test_location_policy() -> None:
    assert ntuple.location_policy("bnxt_en") == "any"
    assert ntuple.location_policy("mlx5_core") == "slot"
    assert ntuple.location_policy("veth") == "auto"


# -- the real kernel ------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_netns(ns: str, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` in a fresh thread moved into network namespace ``ns``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with open(f"/var/run/netns/{ns}") as f:
                if _libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            box["value"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def test_unknown_interface_is_enodev() -> None:
    with pytest.raises(ntuple.EthtoolIoctlError) as exc:
        ntuple.get_channels("nosuchdev0")
    assert exc.value.errno == errno.ENODEV and "ETHTOOL_GCHANNELS on nosuchdev0" in str(exc.value)


def test_loopback_has_no_driver_name_nor_channels() -> None:
    assert ntuple.driver_name("lo") == ""
    with pytest.raises(ntuple.EthtoolIoctlError) as exc:
        ntuple.get_channels("lo")
    assert exc.value.errno == errno.EOPNOTSUPP


@pytest.mark.root
@pytest.mark.netns
def test_veth_real_kernel_answers(netns_pair: Any) -> None:
    ns, dev = netns_pair.ns_a, netns_pair.veth_a
    assert in_netns(ns, ntuple.driver_name, dev) == "veth"
    before = in_netns(ns, ntuple.get_channels, dev)
    assert (before.rx, before.tx, before.rx_max, before.tx_max) == (1, 1, 2, 2)
    in_netns(ns, lambda: ntuple.set_channels(dev, rx=2))
    assert in_netns(ns, ntuple.get_channels, dev).rx == 2
    in_netns(ns, lambda: ntuple.set_channels(dev, rx=1))
    assert in_netns(ns, ntuple.get_channels, dev) == before
    rule = NtupleRule(netns_pair.addr_a, 5201, 1)
    calls: list[Callable[[], object]] = [
        lambda: ntuple.rx_rings(dev),
        lambda: ntuple.get_rss_indir(dev),
        lambda: ntuple.set_rss_indir(dev, [0, 0]),
        lambda: ntuple.rule_locations(dev),
        lambda: ntuple.add_rule(dev, rule),
        lambda: ntuple.add_rule(dev, rule, "any"),
        lambda: ntuple.add_rule(dev, rule, 0),
        lambda: ntuple.delete_rule(dev, 0),
    ]
    for call in calls:
        with pytest.raises(ntuple.EthtoolIoctlError) as exc:
            in_netns(ns, call)
        assert exc.value.errno == errno.EOPNOTSUPP, exc.value
    with pytest.raises(ntuple.EthtoolIoctlError) as exc:
        in_netns(ns, lambda: ntuple.set_channels(dev, rx=3))  # above rx_max
    assert exc.value.errno == errno.EINVAL
    assert in_netns(ns, ntuple.get_channels, dev) == before


def test_ioctl_data_buffer_is_used_in_place() -> None:
    info = np.zeros(1, dtype=abi.ETHTOOL_DRVINFO_DTYPE)
    info[0]["cmd"] = abi.ETHTOOL_GDRVINFO
    with pytest.raises(ntuple.EthtoolIoctlError) as exc:
        ntuple._ioctl("x" * 16, info.view(np.uint8))
    assert exc.value.errno == errno.ENODEV
