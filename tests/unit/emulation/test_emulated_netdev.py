"""emulation/netdev (through EmulatedBackend): bind-rx/bind-tx rules, ids, owners, stats;
emulation/nic while bound.

Every test gets its own state directory (``DEVMEMTCP_EMU_DIR`` is not
touched): the backend is built with ``directory=tmp_path``.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from devmemtcp import abi
from devmemtcp.backend.emulated import EmulatedBackend
from devmemtcp.errors import NetlinkError
from devmemtcp.memory.memfd import MemfdBuffer
from devmemtcp.types import NtupleRule

sys.path.insert(0, os.path.dirname(__file__))
from emu_helpers import LO, PS, FakeDmaBuf, nl_err, ready, recv_all, steer_to, tcp_pair

# ---------------------------------------------------------------------------
# bind-rx
# ---------------------------------------------------------------------------

def test_bind_rx_needs_queues(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    e = nl_err(emu.bind_rx, LO, buf, [])
    assert e.errno == errno.EINVAL and e.op == "bind-rx" and e.bad_attr == "queues (missing)"


def test_bind_rx_unknown_ifindex_is_enodev(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    bad = max(socket.if_nameindex())[0] + 1000
    assert nl_err(emu.bind_rx, bad, buf, [0]).errno == errno.ENODEV
    assert nl_err(emu.bind_tx, bad, buf).errno == errno.ENODEV


def test_bind_rx_queue_out_of_range_and_non_rx_type(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    ready(emu)
    n = emu.nic("lo").rx_queue_count()
    e = nl_err(emu.bind_rx, LO, buf, [n])
    # netdev_nl_read_rxq_bitmap (6.18): NL_SET_BAD_ATTR, EINVAL, no message
    assert e.errno == errno.EINVAL and e.extack is None and e.bad_attr == "queue-id.id"
    e = nl_err(emu.bind_rx, LO, buf, [(0, abi.NETDEV_QUEUE_TYPE_TX)])
    assert e.errno == errno.EINVAL and e.bad_attr == "queue-id.type"


def test_bind_rx_header_split_rules(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    e = nl_err(emu.bind_rx, LO, buf, [1])
    assert (e.errno, e.extack) == (errno.EINVAL, "tcp-data-split is disabled")
    emu.nic("lo").set_rings(tcp_data_split="enabled")
    e = nl_err(emu.bind_rx, LO, buf, [1])
    assert (e.errno, e.extack) == (errno.EINVAL, "hds-thresh is not zero")
    emu.nic("lo").set_rings(hds_thresh=0)
    with emu.bind_rx(LO, buf, [1]) as b:
        assert b.kind == "rx" and b.queues == (1,) and b.dmabuf is buf


def test_bind_rx_queue_already_bound_is_eexist(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    ready(emu)
    with MemfdBuffer(4 * PS) as other, emu.bind_rx(LO, buf, [2, 3]):
        e = nl_err(emu.bind_rx, LO, other, [0, 3])
        assert (e.errno, e.extack) == (errno.EEXIST, "designated queue already memory provider bound")
        # queue 0 was not left bound by the failed request
        with emu.bind_rx(LO, other, [0]) as b0:
            assert b0.queues == (0,)
    with emu.bind_rx(LO, buf, [3]) as b3:
        assert b3.queues == (3,)
    assert emu.nic("lo").bound_queues() == {}  # closing unbinds


def test_bind_dmabuf_checks(emu: EmulatedBackend) -> None:
    ready(emu)
    odd = FakeDmaBuf(PS + 100)
    huge = FakeDmaBuf((0xFFFFFFFF + 1) << 12)
    try:
        for fn, args in ((emu.bind_rx, (LO, odd, [0])), (emu.bind_tx, (LO, odd))):
            e = nl_err(fn, *args)
            msg = f"dmabuf size {PS + 100} not aligned to niov size {PS}"
            assert (e.errno, e.extack) == (errno.EINVAL, msg)
        for fn, args in ((emu.bind_rx, (LO, huge, [0])), (emu.bind_tx, (LO, huge))):
            e = nl_err(fn, *args)
            assert (e.errno, e.extack) == (errno.E2BIG, "dmabuf contains too many net_iovs")
        closed = FakeDmaBuf(PS)
        closed.close()
        closed.fd = 10**6
        assert nl_err(emu.bind_rx, LO, closed, [0]).errno == errno.EBADF
    finally:
        odd.close()
        huge.close()


def test_binding_ids_cyclic_shared_rx_tx(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    ready(emu)
    a = emu.bind_rx(LO, buf, [0])
    b = emu.bind_tx(LO, buf)
    assert (a.id, b.id) == (1, 2)
    a.close()
    # a failed queue open still consumes an id (allocated before the queues)
    with emu.bind_rx(LO, buf, [1]):
        nl_err(emu.bind_rx, LO, buf, [1])
    c = emu.bind_rx(LO, buf, [0])
    assert c.id == 5  # cyclic: 1 is free again but the cursor moved on
    b.close()
    c.close()


def test_binding_owner_death_frees_queue(tmp_path: Any, buf: MemfdBuffer) -> None:
    emu = EmulatedBackend(directory=str(tmp_path))
    ready(emu)
    code = (
        "import sys, time\n"
        "from devmemtcp.backend.emulated import EmulatedBackend\n"
        "from devmemtcp.memory.memfd import MemfdBuffer\n"
        f"be = EmulatedBackend(directory={str(tmp_path)!r})\n"
        "b = be.bind_rx(1, MemfdBuffer(4096), [2])\n"
        "print(b.id, flush=True)\n"
        "sys.stdin.readline()\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout is not None and p.stdin is not None
        other_id = int(p.stdout.readline())
        e = nl_err(emu.bind_rx, LO, buf, [2])
        assert e.errno == errno.EEXIST
        # while bound elsewhere, ethtool refuses to drop header split
        with pytest.raises(NetlinkError) as ei:
            emu.nic("lo").set_rings(tcp_data_split="disabled")
        assert ei.value.extack == "can't disable tcp-data-split while device has memory provider enabled"
        p.stdin.close()
        p.wait(timeout=30)
    finally:
        p.kill()
    with emu.bind_rx(LO, buf, [2]) as b:  # the dead owner's binding is gone
        assert b.id > other_id
    emu.close()


# ---------------------------------------------------------------------------
# ethtool side while bound
# ---------------------------------------------------------------------------
def test_channels_cannot_drop_below_bound_queue(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    ready(emu)
    nic = emu.nic("lo")
    with emu.bind_rx(LO, buf, [2]):
        with pytest.raises(NetlinkError) as ei:
            nic.set_channels(combined=2)
        assert ei.value.errno == errno.EINVAL
        msg = "requested channel counts are too low for existing memory provider setting (3)"
        assert ei.value.extack == msg
        with pytest.raises(NetlinkError) as ei:
            nic.set_rings(hds_thresh=128)
        assert ei.value.extack == "can't set non-zero hds_thresh while device is memory provider enabled"
        nic.set_channels(combined=8)
        assert nic.rx_queue_count() == 8
    nic.set_channels(combined=2)
    assert nic.get_rss_indir() == [i % 2 for i in range(128)]


def test_rules_locations_and_rss(emu: EmulatedBackend) -> None:
    nic = emu.nic("lo")
    r0 = nic.add_rule(NtupleRule(dst_ip="127.0.0.1", dst_port=1000, queue=3))
    r1 = nic.add_rule(NtupleRule(dst_ip="127.0.0.1", dst_port=1001, queue=2))
    assert (r0.location, r1.location) == (0, 1)
    nic.delete_rule(0)
    assert [r.location for r in nic.list_rules()] == [1]
    assert nic.add_rule(NtupleRule(dst_ip="127.0.0.1", dst_port=1002, queue=1)).location == 0
    with pytest.raises(OSError) as oe:
        nic.delete_rule(7)
    assert oe.value.errno == errno.ENOENT
    with pytest.raises(OSError) as oe:
        nic.add_rule(NtupleRule(dst_ip="127.0.0.1", dst_port=1003, queue=4))
    assert oe.value.errno == errno.EINVAL
    with pytest.raises(NetlinkError) as ei:
        nic.set_channels(combined=2)  # rule on queue 2 needs 3 channels
    assert ei.value.extack == "requested channel counts are too low for existing ntuple filter settings"
    nic.set_rss_indir([i % 2 for i in range(128)])
    assert nic.get_rss_indir()[:4] == [0, 1, 0, 1]
    with pytest.raises(NetlinkError):
        nic.set_rss_indir([5] * 128)
    nic.set_rss_indir([])
    assert nic.get_rss_indir()[:4] == [0, 1, 2, 3]


def test_state_shared_between_processes(tmp_path: Any) -> None:
    emu = EmulatedBackend(directory=str(tmp_path))
    emu.nic("lo").set_rings(tcp_data_split="enabled", hds_thresh=0)
    code = (
        "from devmemtcp.backend.emulated import EmulatedBackend\n"
        f"n = EmulatedBackend(directory={str(tmp_path)!r}).nic('lo').get_rings()\n"
        "print(n.tcp_data_split, n.hds_thresh)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["enabled", "0"]


def test_stats_reach_the_nic_state_file(tmp_path: Any) -> None:
    emu = EmulatedBackend(directory=str(tmp_path), stats_interval_s=0.0)
    ready(emu)
    srv, cli, conn = tcp_pair()
    with srv, cli, conn, MemfdBuffer(16 * PS) as small, emu.bind_rx(LO, small, [1]) as b:
        steer_to(emu, conn, 1)
        cli.sendall(b"q" * 5000)
        cli.shutdown(socket.SHUT_WR)
        recv_all(emu, conn, 5000, small)
        other = EmulatedBackend(directory=str(tmp_path)).nic("lo")  # another reader
        assert other.bound_queues() == {1: b.id}
        qs = other.stats()["1"]
        # a fresh page pool: its ring is empty, the provider serves each net_iov (alloc-empty)
        assert qs["rx-bytes"] == 5000 and qs["rx-packets"] == 2 and qs["alloc-empty"] >= 2
    assert EmulatedBackend(directory=str(tmp_path)).nic("lo").bound_queues() == {}
    emu.close()


def test_drivers_without_queue_api_or_netmem_tx(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    ready(emu)
    nic = emu.nic("lo")
    nic.set_capabilities(queue_mgmt=False, netmem_tx="none")
    e = nl_err(emu.bind_rx, LO, buf, [0])
    assert (e.errno, e.bad_attr) == (errno.EOPNOTSUPP, "ifindex")
    e = nl_err(emu.bind_tx, LO, buf)
    assert (e.errno, e.extack) == (errno.EOPNOTSUPP, "Driver does not support netmem TX")
    nic.set_capabilities(queue_mgmt=True, netmem_tx="dma")
    with emu.bind_rx(LO, buf, [0]) as rb, emu.bind_tx(LO, buf) as tb:
        assert (rb.kind, tb.kind) == ("rx", "tx") and rb.id != tb.id


# ---------------------------------------------------------------------------
# page pools go with their binding (issue 11, item 8)
# ---------------------------------------------------------------------------
def test_bind_close_cycles_leave_no_page_pool_behind(emu: EmulatedBackend) -> None:
    ready(emu)
    with MemfdBuffer(16000 * PS) as big:  # ncdevmem's dma-buf: a 16000-entry free map per pool
        for i in range(300):
            with emu.bind_rx(LO, big, [i % 4]) as b:
                assert b.id in emu.netdev.pools and len(emu.netdev.pools) == 1
            assert len(emu.netdev.pools) == 0, f"cycle {i}: a closed binding's pool stayed"
        assert emu.stats()["bindings"] == []


def test_closed_binding_keeps_its_pool_while_frags_are_held(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    ready(emu)
    srv, cli, conn = tcp_pair()
    with srv, cli, conn:
        b = emu.bind_rx(LO, buf, [1])
        steer_to(emu, conn, 1)
        cli.sendall(b"h" * (3 * PS))
        _data, batches = recv_all(emu, conn, 3 * PS, buf, release=False)
        held = [int(t) for fb in batches for t in fb.token]
        assert len(held) == 3
        b.close()
        # unbound, but the application still holds frags: the pool stays, listed as closed
        (entry,) = emu.stats()["bindings"]
        assert (entry["id"], entry["closed"], entry["inflight"]) == (b.id, True, 3)
        assert emu.dontneed(conn, np.array([(held[0], 1)], dtype=abi.DMABUF_TOKEN_DTYPE)) == 1
        assert b.id in emu.netdev.pools
        # the last frag back: the pool goes
        assert emu.release_socket(conn) == 2
        assert len(emu.netdev.pools) == 0 and emu.stats()["bindings"] == []


def test_closed_binding_stats_reach_the_nic_state_file(tmp_path: Any) -> None:
    # stats_interval_s=None: counters are written only when the binding closes
    emu = EmulatedBackend(directory=str(tmp_path), stats_interval_s=None)
    ready(emu)
    srv, cli, conn = tcp_pair()
    with srv, cli, conn, MemfdBuffer(16 * PS) as small:
        with emu.bind_rx(LO, small, [3]):
            steer_to(emu, conn, 3)
            cli.sendall(b"s" * 5000)
            recv_all(emu, conn, 5000, small)
            assert "3" not in emu.nic("lo").stats()
        assert emu.nic("lo").stats()["3"]["rx-bytes"] == 5000
    emu.close()
