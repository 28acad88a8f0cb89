"""doctor.diagnose against the running kernel: eth0 (virtio_net), lo and a
veth in a namespace all lack the queue management API, and the report says so
in the kernel's words; the probe never leaves a binding or an fd behind."""

from __future__ import annotations

import errno
import json
import os
import socket

import pytest

from devmemtcp import doctor
from devmemtcp.errors import DevmemError, NetlinkError
from devmemtcp.host import netns

NAMES = ["kernel-bind-rx", "kernel-bind-tx", "kernel-queue-create", "cap-net-admin", "queue-management-api",
         "netmem-tx", "header-split", "hds-thresh", "ntuple", "rss", "rx-queues", "udmabuf",
         "cuda-driver", "cuda-dmabuf", "kernel-dmabuf", "iommu"]


def _has(ifname: str) -> bool:
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


def _check_shape(report: doctor.DoctorReport) -> None:
    assert [c.name for c in report.checks] == NAMES
    for c in report.checks:
        assert c.status in ("pass", "fail", "unknown")
        assert c.detail
        assert (c.fix is None) == (c.status == "pass")


@pytest.mark.root
@pytest.mark.skipif(not _has("eth0"), reason="needs this VM's eth0 (virtio_net)")
def test_eth0_cannot_do_devmem_and_says_why():
    before = len(os.listdir("/proc/self/fd"))
    report = doctor.diagnose("eth0")
    assert len(os.listdir("/proc/self/fd")) == before
    _check_shape(report)
    assert report.ifname == "eth0"
    assert report.rx_supported is False and report.tx_supported is False
    q = report.check("queue-management-api")
    assert q.status == "fail"
    assert "virtio_net" in q.detail
    assert "EOPNOTSUPP (Operation not supported), pointing at attribute 'ifindex'" in q.detail
    tx = report.check("netmem-tx")
    assert tx.status == "fail"
    assert '"Driver does not support netmem TX"' in tx.detail
    assert report.check("kernel-bind-rx").status == "pass"
    assert report.check("kernel-bind-tx").status == "pass"
    assert report.check("cap-net-admin").status == "pass"
    rx_queues = report.check("rx-queues")
    n = sum(x.startswith("rx-") for x in os.listdir("/sys/class/net/eth0/queues"))
    assert rx_queues.status == ("pass" if n >= 2 else "fail")
    assert str(n) in rx_queues.detail
    assert report.check("udmabuf").status == ("pass" if os.path.exists("/dev/udmabuf") else "fail")
    data = report.to_json()
    assert set(data) == {"ifname", "rx_supported", "tx_supported", "checks"}
    assert json.loads(json.dumps(data)) == data
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in data["checks"])


@pytest.mark.root
def test_lo():
    report = doctor.diagnose("lo")
    _check_shape(report)
    assert not report.rx_supported
    assert report.check("queue-management-api").status == "fail"
    # lo has no ethtool ring ops: header split is reported as missing, in the kernel's words
    assert report.check("header-split").status == "fail"
    assert "EOPNOTSUPP" in report.check("header-split").detail
    assert report.check("ntuple").status == "fail"


@pytest.mark.root
@pytest.mark.netns
def test_veth_in_netns(netns_pair):
    with netns.enter(netns_pair.ns_b):
        report = doctor.diagnose(netns_pair.veth_b)
    _check_shape(report)
    assert not report.rx_supported and not report.tx_supported
    assert "driver veth has no queue management API" in report.check("queue-management-api").detail
    assert report.check("rx-queues").status == "fail"  # a fresh veth has one RX queue


def test_unknown_interface():
    with pytest.raises(DevmemError, match="no interface named 'nosuchdev0'") as ei:
        doctor.diagnose("nosuchdev0")
    assert "ip link" in (ei.value.hint or "")


def test_kernel_words_and_errno_names():
    exc = NetlinkError(errno.EOPNOTSUPP, "bind-tx", extack="Driver does not support netmem TX", bad_attr="fd")
    assert doctor.kernel_words(exc) == ('EOPNOTSUPP (Operation not supported) '
                                        '"Driver does not support netmem TX", pointing at attribute \'fd\'')
    assert doctor.errno_name(errno.EINVAL) == "EINVAL"


def test_default_ifname_exists():
    assert _has(doctor.default_ifname())


def test_report_lookup():
    report = doctor.DoctorReport("x", False, False, [doctor.Check("a", "pass", "ok")])
    assert report.check("a").detail == "ok"
    with pytest.raises(KeyError):
        report.check("b")
