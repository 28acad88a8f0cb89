"""Attribute encoders/decoders of the netlink layer (no sockets): round trips
(hypothesis) and the byte layout the kernel expects."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devmemtcp import abi
from devmemtcp.netlink import ethtool as eth
from devmemtcp.netlink.genl import (
    attr_name_at,
    attrs_to_dict,
    decode_uint,
    encode_uint,
    parse_extack,
)
from devmemtcp.netlink.netdev import (
    DmabufMsg,
    PagePoolMsg,
    QstatsMsg,
    QueueMsg,
    bind_rx_attrs,
)

u32 = st.integers(min_value=0, max_value=(1 << 32) - 1)
u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


def _encode(cls, cmd, attrs):
    msg = cls()
    msg["cmd"] = cmd
    msg["version"] = 1
    msg["attrs"] = attrs
    msg["header"]["type"] = 0x20
    msg["header"]["flags"] = abi.NLM_F_REQUEST
    msg.encode()
    return bytes(msg.data)


def _decode(cls, data):
    msg = cls(data)
    msg.decode()
    return msg


def _walk(buf: bytes, start: int, end: int):
    """(offset, length, type) of each attribute between start and end."""
    out = []
    pos = start
    while pos + 4 <= end:
        length, atype = struct.unpack_from("=HH", buf, pos)
        out.append((pos, length, atype))
        pos += (length + 3) & ~3
    return out


@given(u64)
def test_uint_round_trip_and_width(value):
    payload = encode_uint(value)
    assert len(payload) == (4 if value < 1 << 32 else 8)
    assert decode_uint(payload) == value


@pytest.mark.parametrize("bad", [-1, 1 << 64])
def test_uint_out_of_range(bad):
    with pytest.raises(ValueError):
        encode_uint(bad)


def test_uint_rejects_odd_widths():
    with pytest.raises(ValueError):
        decode_uint(b"\x01\x02\x03")


@given(ifindex=u32, fd=u32, queues=st.lists(st.integers(0, 4095), max_size=64))
def test_bind_rx_request_round_trip(ifindex, fd, queues):
    data = _encode(DmabufMsg, abi.NETDEV_CMD_BIND_RX, bind_rx_attrs(ifindex, fd, queues))
    decoded = attrs_to_dict(_decode(DmabufMsg, data), multi={"queues"})
    assert decoded["ifindex"] == ifindex
    assert decoded["fd"] == fd
    assert [q["id"] for q in decoded.get("queues", [])] == queues
    assert all(q["type"] == abi.NETDEV_QUEUE_TYPE_RX for q in decoded.get("queues", []))


@given(queues=st.lists(st.integers(0, 255), min_size=1, max_size=8))
def test_bind_rx_queue_nests_carry_nla_f_nested(queues):
    data = _encode(DmabufMsg, abi.NETDEV_CMD_BIND_RX, bind_rx_attrs(7, 3, queues))
    attrs = _walk(data, 20, len(data))
    nests = [a for a in attrs if a[2] & ~abi.NLA_F_NESTED == abi.NETDEV_A_DMABUF_QUEUES]
    assert len(nests) == len(queues)  # multi-attr: one top-level attribute per queue
    assert all(a[2] & abi.NLA_F_NESTED for a in nests)
    for (pos, length, _), q in zip(nests, queues, strict=True):
        inner = {t: struct.unpack_from("=I", data, p + 4)[0]
                 for p, _, t in _walk(data, pos + 4, pos + length)}
        assert inner == {abi.NETDEV_A_QUEUE_ID_ID: q, abi.NETDEV_A_QUEUE_ID_TYPE: abi.NETDEV_QUEUE_TYPE_RX}


@given(ifindex=u32, fd=u32, queues=st.lists(st.integers(0, 255), max_size=6))
def test_attr_name_at_maps_every_offset_back(ifindex, fd, queues):
    data = _encode(DmabufMsg, abi.NETDEV_CMD_BIND_RX, bind_rx_attrs(ifindex, fd, queues))
    names = {abi.NETDEV_A_DMABUF_IFINDEX: "ifindex", abi.NETDEV_A_DMABUF_FD: "fd",
             abi.NETDEV_A_DMABUF_QUEUES: "queues"}
    for pos, length, atype in _walk(data, 20, len(data)):
        assert attr_name_at(data, pos, DmabufMsg) == names[atype & ~abi.NLA_F_NESTED]
        if atype & abi.NLA_F_NESTED:
            inner = _walk(data, pos + 4, pos + length)
            assert [attr_name_at(data, p, DmabufMsg) for p, _, _ in inner] == ["queues.id", "queues.type"]
    assert attr_name_at(data, 21, DmabufMsg) == "ifindex"  # inside a leaf: that attribute
    assert attr_name_at(data, len(data) + 4, DmabufMsg) is None  # beyond the request


def _nlmsgerr(err: int, tlvs: list[tuple[int, bytes]], echoed: bytes = b"", flags: int = 0) -> bytes:
    orig = struct.pack("=IHHII", 16 + len(echoed), 0x20, flags, 1, 0) + echoed
    body = struct.pack("=i", -err) + orig
    for t, payload in tlvs:
        body += struct.pack("=HH", 4 + len(payload), t) + payload + b"\0" * (-len(payload) % 4)
    return body


@given(err=st.integers(1, 133), text=st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1,
                                               max_size=80), offs=st.one_of(st.none(), u32),
       miss=st.one_of(st.none(), st.integers(0, 100)))
def test_parse_extack_round_trip(err, text, offs, miss):
    tlvs = [(abi.NLMSGERR_ATTR_MSG, text.encode() + b"\0")]
    if offs is not None:
        tlvs.append((abi.NLMSGERR_ATTR_OFFS, struct.pack("=I", offs)))
    if miss is not None:
        tlvs.append((abi.NLMSGERR_ATTR_MISS_TYPE, struct.pack("=I", miss)))
    assert parse_extack(_nlmsgerr(err, tlvs)) == (err, text, offs, miss)


@given(echo=st.binary(min_size=4, max_size=64).map(lambda b: b[: len(b) - len(b) % 4]))
def test_parse_extack_skips_an_echoed_request(echo):
    payload = _nlmsgerr(22, [(abi.NLMSGERR_ATTR_MSG, b"bad\0")], echoed=echo)
    assert parse_extack(payload, capped=False) == (22, "bad", None, None)


@given(err=st.integers(1, 133), offs=u32)
def test_parse_extack_of_a_failed_dump(err, offs):
    # NLMSG_DONE of a failed dump: the error code, then the TLVs (no echoed header)
    payload = struct.pack("=i", -err) + struct.pack("=HHI", 8, abi.NLMSGERR_ATTR_OFFS, offs)
    assert parse_extack(payload, done=True) == (err, None, offs, None)


def test_parse_extack_plain_ack():
    assert parse_extack(_nlmsgerr(0, [])) == (0, None, None, None)


@given(qid=u32, ifindex=u32, napi=u32, dmabuf=u32, qtype=st.sampled_from([0, 1]))
def test_queue_reply_decodes(qid, ifindex, napi, dmabuf, qtype):
    attrs = [("NETDEV_A_QUEUE_ID", qid), ("NETDEV_A_QUEUE_IFINDEX", ifindex), ("NETDEV_A_QUEUE_TYPE", qtype),
             ("NETDEV_A_QUEUE_NAPI_ID", napi), ("NETDEV_A_QUEUE_DMABUF", dmabuf)]
    d = attrs_to_dict(_decode(QueueMsg, _encode(QueueMsg, abi.NETDEV_CMD_QUEUE_GET, attrs)))
    assert d == {"id": qid, "ifindex": ifindex, "type": qtype, "napi_id": napi, "dmabuf": dmabuf}


@given(pp_id=u64, inflight=u64, mem=u64, napi=u64, dmabuf=u32)
def test_page_pool_uint_attributes_round_trip(pp_id, inflight, mem, napi, dmabuf):
    attrs = [("NETDEV_A_PAGE_POOL_ID", pp_id), ("NETDEV_A_PAGE_POOL_NAPI_ID", napi),
             ("NETDEV_A_PAGE_POOL_INFLIGHT", inflight), ("NETDEV_A_PAGE_POOL_INFLIGHT_MEM", mem),
             ("NETDEV_A_PAGE_POOL_DMABUF", dmabuf)]
    d = attrs_to_dict(_decode(PagePoolMsg, _encode(PagePoolMsg, abi.NETDEV_CMD_PAGE_POOL_GET, attrs)))
    assert d == {"id": pp_id, "napi_id": napi, "inflight": inflight, "inflight_mem": mem, "dmabuf": dmabuf}


@given(st.dictionaries(st.sampled_from(sorted(abi.NETDEV_A_QSTATS_COUNTERS.values())), u64, min_size=1))
def test_qstats_counters_round_trip(counters):
    attrs = [("NETDEV_A_QSTATS_" + k.upper().replace("-", "_"), v) for k, v in counters.items()]
    d = attrs_to_dict(_decode(QstatsMsg, _encode(QstatsMsg, abi.NETDEV_CMD_QSTATS_GET, attrs)))
    assert d == {k.replace("-", "_"): v for k, v in counters.items()}


@given(st.lists(u32, max_size=512))
def test_rss_indir_round_trip(table):
    payload = eth.encode_indir(table)
    assert len(payload) == 4 * len(table)
    assert eth.decode_indir(payload) == table


def test_rss_indir_rejects_bad_input():
    with pytest.raises(ValueError):
        eth.encode_indir([-1])
    with pytest.raises(ValueError):
        eth.decode_indir(b"\x00\x01\x02")


@given(st.lists(u32, max_size=64))
def test_rss_message_carries_indir_bytes(table):
    attrs = [("ETHTOOL_A_RSS_HEADER", {"attrs": [("ETHTOOL_A_HEADER_DEV_NAME", "eth9")]}),
             ("ETHTOOL_A_RSS_INDIR", eth.encode_indir(table))]
    msg = _decode(eth.RssMsg, _encode(eth.RssMsg, abi.ETHTOOL_MSG_RSS_SET, attrs))
    assert eth.decode_indir(bytes(msg.get_attr("ETHTOOL_A_RSS_INDIR"))) == table
    assert msg.get_attr("ETHTOOL_A_RSS_HEADER").get_attr("ETHTOOL_A_HEADER_DEV_NAME") == "eth9"


@given(split=st.sampled_from(["on", "off", "auto", "enabled", "disabled", "unknown"]),
       thresh=u32)
def test_rings_set_round_trip(split, thresh):
    attrs = [("ETHTOOL_A_RINGS_HEADER", {"attrs": [("ETHTOOL_A_HEADER_DEV_NAME", "eth0")]}),
             ("ETHTOOL_A_RINGS_TCP_DATA_SPLIT", eth.tcp_data_split_value(split)),
             ("ETHTOOL_A_RINGS_HDS_THRESH", thresh)]
    data = _encode(eth.RingsMsg, abi.ETHTOOL_MSG_RINGS_SET, attrs)
    types = {t & ~abi.NLA_F_NESTED for _, _, t in _walk(data, 20, len(data))}
    assert types == {abi.ETHTOOL_A_RINGS_HEADER, abi.ETHTOOL_A_RINGS_TCP_DATA_SPLIT,
                     abi.ETHTOOL_A_RINGS_HDS_THRESH}
    msg = _decode(eth.RingsMsg, data)
    assert abi.TCP_DATA_SPLIT_NAMES[msg.get_attr("ETHTOOL_A_RINGS_TCP_DATA_SPLIT")] == {
        "on": "enabled", "off": "disabled", "auto": "unknown"}.get(split, split)
    assert msg.get_attr("ETHTOOL_A_RINGS_HDS_THRESH") == thresh


@pytest.mark.parametrize("bad", ["maybe", 3, -1])
def test_tcp_data_split_rejects_unknown(bad):
    with pytest.raises(ValueError):
        eth.tcp_data_split_value(bad)


@given(st.dictionaries(st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20), st.booleans(),
                       max_size=20), st.booleans())
def test_bitset_decoding(bits, nomask):
    entries = [("ETHTOOL_A_BITSET_BITS_BIT", {"attrs": [("ETHTOOL_A_BITSET_BIT_INDEX", i),
                                                         ("ETHTOOL_A_BITSET_BIT_NAME", name),
                                                         *([("ETHTOOL_A_BITSET_BIT_VALUE", True)]
                                                           if on else [])]})
               for i, (name, on) in enumerate(bits.items()) if on or not nomask]
    bitset = {"attrs": [*([("ETHTOOL_A_BITSET_NOMASK", True)] if nomask else []),
                        ("ETHTOOL_A_BITSET_BITS", {"attrs": entries})]}
    msg = _decode(eth.FeaturesMsg, _encode(eth.FeaturesMsg, abi.ETHTOOL_MSG_FEATURES_GET,
                                           [("ETHTOOL_A_FEATURES_ACTIVE", bitset)]))
    got = eth.bitset_bits(msg.get_attr("ETHTOOL_A_FEATURES_ACTIVE"))
    assert got == ({k: True for k, v in bits.items() if v} if nomask else bits)


@given(guest=u32, phys=u32, queue=u32, nsid=st.integers(-(1 << 31), (1 << 31) - 1))
def test_queue_create_lease_nest_round_trip(guest, phys, queue, nsid):
    lease = [("NETDEV_A_LEASE_IFINDEX", phys),
             ("NETDEV_A_LEASE_QUEUE", {"attrs": [("NETDEV_A_QUEUE_ID", queue),
                                                 ("NETDEV_A_QUEUE_TYPE", abi.NETDEV_QUEUE_TYPE_RX)]}),
             ("NETDEV_A_LEASE_NETNS_ID", nsid)]
    attrs = [("NETDEV_A_QUEUE_IFINDEX", guest), ("NETDEV_A_QUEUE_TYPE", abi.NETDEV_QUEUE_TYPE_RX),
             ("NETDEV_A_QUEUE_LEASE", {"attrs": lease})]
    data = _encode(QueueMsg, abi.NETDEV_CMD_QUEUE_CREATE, attrs)
    (lease_attr,) = [a for a in _walk(data, 20, len(data))
                     if a[2] & ~abi.NLA_F_NESTED == abi.NETDEV_A_QUEUE_LEASE]
    assert lease_attr[2] & abi.NLA_F_NESTED
    inner = _walk(data, lease_attr[0] + 4, lease_attr[0] + lease_attr[1])
    assert [t & abi.NLA_F_NESTED for _, _, t in inner] == [0, abi.NLA_F_NESTED, 0]
    d = attrs_to_dict(_decode(QueueMsg, data))
    assert d == {"ifindex": guest, "type": abi.NETDEV_QUEUE_TYPE_RX,
                 "lease": {"ifindex": phys, "queue": {"id": queue, "type": abi.NETDEV_QUEUE_TYPE_RX},
                           "netns_id": nsid}}
