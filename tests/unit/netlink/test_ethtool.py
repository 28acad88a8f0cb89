"""ethtool netlink reads and writes against the running kernel: eth0
(virtio_net), lo, and a veth pair in namespaces (veth implements channels,
so the write path is exercised for real, and restored)."""

from __future__ import annotations

import errno
import os
import socket
import subprocess

import pytest

from devmemtcp.errors import DevmemError, NetlinkError
from devmemtcp.host import netns
from devmemtcp.netlink import ethtool
from devmemtcp.types import Channels


def _has(ifname: str) -> bool:
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


needs_eth0 = pytest.mark.skipif(not _has("eth0"), reason="needs an eth0 (this VM's virtio_net NIC)")


def _sysfs(ifname: str, kind: str) -> int:
    return sum(n.startswith(kind + "-") for n in os.listdir(f"/sys/class/net/{ifname}/queues"))


@needs_eth0
def test_eth0_reads():
    assert ethtool.driver_name("eth0") == os.path.basename(os.readlink("/sys/class/net/eth0/device/driver"))
    rings = ethtool.get_rings("eth0")
    assert rings.rx is not None and rings.rx_max is not None and rings.rx <= rings.rx_max
    assert rings.tcp_data_split in ("unknown", "disabled", "enabled")
    ch = ethtool.get_channels("eth0")
    assert ethtool.rx_queue_count("eth0") == _sysfs("eth0", "rx")
    assert ethtool.tx_queue_count("eth0") == _sysfs("eth0", "tx")
    if ch.combined is not None:
        assert ch.combined == ethtool.rx_queue_count("eth0")
    assert ethtool.ntuple_enabled("eth0") in (None, True, False)
    table = ethtool.get_rss_indir("eth0")
    assert all(0 <= q < ethtool.rx_queue_count("eth0") for q in table)


def test_lo_has_no_ring_or_channel_ops():
    for fn, op in ((ethtool.get_rings, "rings-get"), (ethtool.get_channels, "channels-get"),
                   (ethtool.get_rss_indir, "rss-get")):
        with pytest.raises(NetlinkError) as ei:
            fn("lo")
        assert (ei.value.errno, ei.value.op) == (errno.EOPNOTSUPP, op)
    assert ethtool.driver_name("lo") is None
    assert ethtool.ntuple_enabled("lo") is None
    assert ethtool.rx_queue_count("lo") == _sysfs("lo", "rx")


def test_unknown_interface_quotes_the_kernel():
    with pytest.raises(NetlinkError) as ei:
        ethtool.get_rings("nosuchdev0")
    exc = ei.value
    assert exc.errno == errno.ENODEV
    assert exc.extack == "no device matches name"
    assert exc.bad_attr == "header.header_dev_name"
    assert "ip link" in (exc.hint or "")
    for fn in (ethtool.driver_name, ethtool.rx_queue_count):
        with pytest.raises(DevmemError, match="nosuchdev0"):
            fn("nosuchdev0")


def test_no_op_writes_send_nothing():
    # nothing to change: no request, so even an unknown interface is not an error
    ethtool.set_rings("nosuchdev0")
    ethtool.set_channels("nosuchdev0")


@pytest.mark.root
@pytest.mark.netns
def test_veth_reads_and_writes_in_netns(netns_pair):
    dev = netns_pair.veth_a
    with netns.enter(netns_pair.ns_a):
        assert ethtool.driver_name(dev) == "veth"
        before = ethtool.get_channels(dev)
        assert before.rx == ethtool.rx_queue_count(dev)
        assert before.rx_max is not None and before.rx_max >= 1
        # header split cannot be set on veth: the kernel says so and points at the attribute
        with pytest.raises(NetlinkError) as ei:
            ethtool.set_rings(dev, tcp_data_split="on")
        assert (ei.value.errno, ei.value.extack, ei.value.bad_attr) == (
            errno.EOPNOTSUPP, "setting TCP data split is not supported", "tcp_data_split")
        with pytest.raises(NetlinkError) as ei:
            ethtool.set_rings(dev, hds_thresh=0)
        assert (ei.value.errno, ei.value.extack, ei.value.bad_attr) == (
            errno.EOPNOTSUPP, "setting hds-thresh is not supported", "hds_thresh")
        with pytest.raises(NetlinkError) as ei:
            ethtool.set_channels(dev, rx=before.rx_max + 1)
        assert (ei.value.errno, ei.value.extack, ei.value.bad_attr) == (
            errno.EINVAL, "requested channel count exceeds maximum", "rx_count")
        try:
            ethtool.set_channels(dev, rx=before.rx_max, tx=before.tx_max)
            now = ethtool.get_channels(dev)
            assert (now.rx, now.tx) == (before.rx_max, before.tx_max)
            assert ethtool.rx_queue_count(dev) == before.rx_max
            out = subprocess.run(["ip", "netns", "exec", netns_pair.ns_a, "ls",
                                  f"/sys/class/net/{dev}/queues"], capture_output=True, text=True, check=True)
            assert sum(n.startswith("rx-") for n in out.stdout.split()) == before.rx_max
        finally:
            ethtool.set_channels(dev, rx=before.rx, tx=before.tx)
        assert ethtool.get_channels(dev) == Channels(rx=before.rx, tx=before.tx, rx_max=before.rx_max,
                                                     tx_max=before.tx_max)
        with pytest.raises(NetlinkError) as ei:
            ethtool.set_rss_indir(dev, [0, 0])
        assert ei.value.errno == errno.EOPNOTSUPP
    with pytest.raises(DevmemError):
        ethtool.rx_queue_count(dev)  # not in the root namespace
