"""The netdev family client against the running kernel (Linux 6.18 here, no
devmem-capable NIC): reads of lo, eth0 and a veth pair in namespaces, and
bind-rx/bind-tx refusals with the kernel's own errno and extack.

The expected answers were observed on this kernel first, then asserted
exactly (net/core/netdev-genl.c): bind-rx on a driver without the queue
management API is EOPNOTSUPP with the bad-attribute offset on ``ifindex`` and
no message; the device check comes before the queue checks, so an
out-of-range queue id on such a device is the same EOPNOTSUPP; an empty
queue list fails the required-attribute check (EINVAL, missing ``queues``);
bind-tx is EOPNOTSUPP "Driver does not support netmem TX".
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator

import pytest

from devmemtcp import abi
from devmemtcp.errors import NetlinkError
from devmemtcp.host import netns
from devmemtcp.netlink.netdev import KernelBinding, NetdevClient, bind_rx, bind_tx

NO_NETMEM_TX = "Driver does not support netmem TX"


def _has(ifname: str) -> bool:
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


needs_eth0 = pytest.mark.skipif(not _has("eth0"), reason="needs an eth0 (this VM's virtio_net NIC)")


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = os.memfd_create("devmemtcp-test", abi.MFD_CLOEXEC)
    os.ftruncate(fd, 1 << 20)
    yield fd
    os.close(fd)


@pytest.fixture
def client() -> Iterator[NetdevClient]:
    with NetdevClient() as c:
        yield c


def _sysfs_queues(ifname: str) -> dict[str, int]:
    names = os.listdir(f"/sys/class/net/{ifname}/queues")
    return {"rx": sum(n.startswith("rx-") for n in names), "tx": sum(n.startswith("tx-") for n in names)}


# -- capability probing ---------------------------------------------------------
def test_ops_come_from_the_controller(client):
    ops = client.ops()
    # every read this client uses, and the 6.18 writes; queue-create is 7.1+
    assert {"dev-get", "queue-get", "napi-get", "page-pool-get", "qstats-get", "bind-rx", "bind-tx"} <= ops
    assert all(not o.startswith("op-") for o in ops)
    assert client.op_ids() == {n for n, name in abi.NETDEV_OP_NAMES.items() if name in ops}


def test_queue_create_absent_is_reported_not_guessed(client):
    if "queue-create" in client.ops():
        pytest.skip("this kernel has queue-create")
    with pytest.raises(NetlinkError) as ei:
        client.queue_create(1, 1, 0)
    assert ei.value.errno == errno.EOPNOTSUPP
    assert "7.1" in (ei.value.hint or "")


def test_page_pool_stats_follows_the_op_list(client):
    if "page-pool-stats-get" in client.ops():
        stats = client.page_pool_stats_get()
        assert all("info" in s for s in stats)
    else:
        with pytest.raises(NetlinkError) as ei:
            client.page_pool_stats_get()
        assert ei.value.errno == errno.EOPNOTSUPP
        assert "CONFIG_PAGE_POOL_STATS" in (ei.value.hint or "")


# -- reads -------------------------------------------------------------------
def test_dev_get_dump_lists_every_interface(client):
    dumped = {d["ifindex"] for d in client.dev_get()}
    assert dumped == {idx for idx, _ in socket.if_nameindex()}
    (lo,) = client.dev_get(socket.if_nametoindex("lo"))
    assert lo["ifindex"] == 1
    assert lo["xdp_features"] == 0


def test_dev_get_unknown_ifindex(client):
    with pytest.raises(NetlinkError) as ei:
        client.dev_get(0x7FFFFFF0)
    assert ei.value.errno == errno.ENODEV
    assert ei.value.op == "dev-get"


@pytest.mark.parametrize("ifname", ["lo", pytest.param("eth0", marks=needs_eth0)])
def test_queue_get_agrees_with_sysfs(client, ifname):
    ifindex = socket.if_nametoindex(ifname)
    queues = client.queue_get(ifindex)
    counts = _sysfs_queues(ifname)
    for kind in ("rx", "tx"):
        ids = [q["id"] for q in queues if q["type"] == kind]
        assert ids == list(range(counts[kind]))
    assert all(q["ifindex"] == ifindex and q["dmabuf"] is None and q["lease"] is None for q in queues)
    assert client.queue_get(ifindex, "rx") == [q for q in queues if q["type"] == "rx"]


@needs_eth0
def test_queue_do_and_napi(client):
    ifindex = socket.if_nametoindex("eth0")
    (rx0,) = client.queue_get(ifindex, "rx", 0)
    assert rx0["type"] == "rx" and rx0["id"] == 0
    assert rx0["napi_id"] is not None  # virtio_net polls its RX queue with NAPI
    (napi,) = client.napi_get(napi_id=rx0["napi_id"])
    assert napi["ifindex"] == ifindex
    assert rx0["napi_id"] in {n["id"] for n in client.napi_get(ifindex=ifindex)}


@needs_eth0
def test_queue_do_out_of_range(client):
    ifindex = socket.if_nametoindex("eth0")
    with pytest.raises(NetlinkError) as ei:
        client.queue_get(ifindex, "rx", _sysfs_queues("eth0")["rx"])
    assert ei.value.errno == errno.EINVAL


def test_queue_get_down_device_lists_nothing(client):
    # The kernel's queue dump skips devices that are down (netdev_nl_queue_dump_one).
    from pathlib import Path

    down = [name for _, name in socket.if_nameindex()
            if not int(Path(f"/sys/class/net/{name}/flags").read_text(), 16) & 1]
    if not down:
        pytest.skip("no interface is down here")
    assert client.queue_get(socket.if_nametoindex(down[0])) == []


def test_queue_get_unknown_ifindex(client):
    with pytest.raises(NetlinkError) as ei:
        client.queue_get(0x7FFFFFF0)
    assert ei.value.errno == errno.ENODEV
    assert "namespace" in (ei.value.hint or "")


def test_page_pools_and_qstats(client):
    for pool in client.page_pool_get():
        assert isinstance(pool["id"], int) and pool["id"] > 0
        assert pool["dmabuf"] is None  # nothing is bound on this machine
    for row in client.qstats_get(scope_queue=True):
        assert row["queue_type"] in ("rx", "tx")
        assert isinstance(row["queue_id"], int)
    for row in client.qstats_get(scope_queue=False):
        assert "queue_id" not in row


def test_qstats_dump_errors_carry_the_bad_attribute(client):
    # A failing dump ends with NLMSG_DONE carrying the error and its extack TLVs.
    with pytest.raises(NetlinkError) as ei:
        client.qstats_get(0x7FFFFFF0)
    assert (ei.value.errno, ei.value.bad_attr) == (errno.ENODEV, "ifindex")
    with pytest.raises(NetlinkError) as ei:
        client.qstats_get(socket.if_nametoindex("lo"))  # loopback has no queue stats API
    assert (ei.value.errno, ei.value.bad_attr, ei.value.op) == (errno.EOPNOTSUPP, "ifindex", "qstats-get")


@needs_eth0
def test_qstats_of_eth0_per_queue(client):
    ifindex = socket.if_nametoindex("eth0")
    rows = client.qstats_get(ifindex)
    if not rows:
        pytest.skip("driver reports no queue stats")
    assert {(r["queue_type"], r["queue_id"]) for r in rows} <= {
        (q["type"], q["id"]) for q in client.queue_get(ifindex)}
    rx = [r for r in rows if r["queue_type"] == "rx"]
    assert all(r["rx_packets"] >= 0 and r["rx_bytes"] >= r["rx_packets"] for r in rx)


# -- bind-rx / bind-tx refusals -------------------------------------------------
def _assert_no_queue_api(exc: NetlinkError) -> None:
    assert exc.errno == errno.EOPNOTSUPP
    assert exc.op == "bind-rx"
    assert exc.extack is None  # the kernel sets only the bad attribute here
    assert exc.bad_attr == "ifindex"
    assert "queue management API" in (exc.hint or "")


@pytest.mark.root
@pytest.mark.parametrize("ifname", ["lo", pytest.param("eth0", marks=needs_eth0)])
def test_bind_rx_without_queue_api(memfd, ifname):
    before = _fd_count()
    with pytest.raises(NetlinkError) as ei:
        bind_rx(socket.if_nametoindex(ifname), memfd, [0])
    _assert_no_queue_api(ei.value)
    assert _fd_count() == before  # the binding's socket was closed


@pytest.mark.root
@needs_eth0
def test_bind_rx_queue_out_of_range_hits_the_device_check_first(memfd):
    ifindex = socket.if_nametoindex("eth0")
    with pytest.raises(NetlinkError) as ei:
        bind_rx(ifindex, memfd, [_sysfs_queues("eth0")["rx"] + 100])
    _assert_no_queue_api(ei.value)


@pytest.mark.root
@pytest.mark.parametrize("ifname", ["lo", pytest.param("eth0", marks=needs_eth0)])
def test_bind_rx_empty_queue_list(memfd, ifname):
    before = _fd_count()
    with pytest.raises(NetlinkError) as ei:
        bind_rx(socket.if_nametoindex(ifname), memfd, [])
    exc = ei.value
    assert exc.errno == errno.EINVAL
    assert exc.extack is None
    assert exc.bad_attr == "queues (missing)"  # NLMSGERR_ATTR_MISS_TYPE
    assert "lacks 'queues'" in (exc.hint or "")
    assert _fd_count() == before


@pytest.mark.root
def test_bind_rx_unknown_ifindex(memfd):
    with pytest.raises(NetlinkError) as ei:
        bind_rx(0x7FFFFFF0, memfd, [0])
    assert ei.value.errno == errno.ENODEV


@pytest.mark.parametrize("ifname", ["lo", pytest.param("eth0", marks=needs_eth0)])
def test_bind_tx_without_netmem_tx(memfd, ifname):
    before = _fd_count()
    with pytest.raises(NetlinkError) as ei:
        bind_tx(socket.if_nametoindex(ifname), memfd)
    exc = ei.value
    assert exc.errno == errno.EOPNOTSUPP
    assert exc.op == "bind-tx"
    assert exc.extack == NO_NETMEM_TX
    assert NO_NETMEM_TX in str(exc)
    assert "netkit" in (exc.hint or "")
    assert _fd_count() == before


def test_bind_without_cap_net_admin_is_eperm(memfd, tmp_path):
    """bind-rx is an admin op (GENL_ADMIN_PERM): run it with CAP_NET_ADMIN dropped."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop CAP_NET_ADMIN")
    code = (
        "import os, sys\n"
        "from devmemtcp.netlink.netdev import bind_rx\n"
        "fd = os.memfd_create('t'); os.ftruncate(fd, 1 << 20)\n"
        "try:\n    bind_rx(1, fd, [0])\nexcept Exception as e:\n"
        "    print(e.errno, e.extack, e.hint, sep='|')\n"
    )
    out = subprocess.run(["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", sys.executable,
                          "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    err, extack, hint = out.split("|")
    assert int(err) == errno.EPERM
    assert extack == "None"
    assert "CAP_NET_ADMIN" in hint


# -- KernelBinding ownership -------------------------------------------------------
def test_kernel_binding_owns_and_closes_its_socket():
    from devmemtcp.netlink.genl import GenlSocket

    sock = GenlSocket(abi.NETDEV_FAMILY_NAME)
    fd = sock.fileno()
    with KernelBinding(sock, 5, 1, "rx", (0,)) as b:
        assert b.fileno() == fd and not b.closed
        assert "bound" in repr(b)
    assert b.closed and b.fileno() == -1
    b.close()  # idempotent
    with pytest.raises(OSError):
        os.fstat(fd)


# -- a veth pair in namespaces ------------------------------------------------------
@pytest.mark.root
@pytest.mark.netns
def test_veth_in_netns(netns_pair, memfd):
    with netns.enter(netns_pair.ns_a):
        ifindex = socket.if_nametoindex(netns_pair.veth_a)
        with NetdevClient() as c:
            assert {d["ifindex"] for d in c.dev_get()} == {i for i, _ in socket.if_nameindex()}
            queues = c.queue_get(ifindex)
            counts = netns.sysfs_queue_counts()[netns_pair.veth_a]
            assert [q["id"] for q in queues if q["type"] == "rx"] == list(range(counts["rx"]))
            assert [q["id"] for q in queues if q["type"] == "tx"] == list(range(counts["tx"]))
            assert all(q["napi_id"] is None for q in queues)  # veth without GRO/XDP has no NAPI
        with pytest.raises(NetlinkError) as ei:
            bind_rx(ifindex, memfd, [0])
        _assert_no_queue_api(ei.value)
        with pytest.raises(NetlinkError) as ei:
            bind_tx(ifindex, memfd)
        assert (ei.value.errno, ei.value.extack) == (errno.EOPNOTSUPP, NO_NETMEM_TX)
    assert netns.current() is None


@pytest.mark.root
@pytest.mark.netns
def test_veth_gro_napi_in_netns(netns_pair):
    """veth with GRO on polls with a NAPI instance: napi-get (do and filtered dump) finds it."""
    import shutil
    import subprocess

    if not shutil.which("ethtool"):
        pytest.skip("needs the ethtool command to turn GRO on")
    subprocess.run(["ip", "netns", "exec", netns_pair.ns_a, "ethtool", "-K", netns_pair.veth_a, "gro", "on"],
                   check=True, capture_output=True)
    with netns.enter(netns_pair.ns_a), NetdevClient() as c:
        ifindex = socket.if_nametoindex(netns_pair.veth_a)
        napis = c.napi_get(ifindex=ifindex)
        assert len(napis) == len(c.queue_get(ifindex, "rx"))  # one NAPI per RX queue
        for n in napis:
            assert n["ifindex"] == ifindex
            assert c.napi_get(napi_id=n["id"]) == [n]
        assert all(p.get("ifindex") != ifindex or p["dmabuf"] is None for p in c.page_pool_get())
