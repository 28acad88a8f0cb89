"""Conformance: page pools and qstats of the emulated NIC as the kernel keeps them.

page-pool-get's inflight counts net_iovs posted to the RX ring (ring size
from the rings setting) besides those the application holds; the page-pool
stats have the kernel's meanings for a devmem pool (net/core/page_pool.c:
alloc_fast from the cache, alloc_refill from the ptr_ring, alloc_empty when
the ring is empty and the memory provider serves, alloc_slow never;
recycle_ring / recycle_ring_full for net_iovs whose last reference went).
The kernel variant needs a devmem NIC (page pools with a dma-buf); the
qstats row shape is compared with this kernel's own rows where it has some.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import numpy as np
import pytest

from devmemtcp import abi, codec
from devmemtcp.backend.emulated import EmulatedBackend
from devmemtcp.emulation import report
from devmemtcp.memory.memfd import MemfdBuffer
from devmemtcp.types import NtupleRule

PS = abi.PAGE_SIZE
LO = socket.if_nametoindex("lo")


def test_page_pool_inflight_stats_and_qstats(tmp_path: Any) -> None:
    d = str(tmp_path)
    be = EmulatedBackend(directory=d, stats_interval_s=0.0)
    nic = be.nic("lo")
    nic.set_rings(tcp_data_split="enabled", hds_thresh=0)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    ip, port = conn.getsockname()[:2]
    nic.add_rule(NtupleRule(dst_ip=ip, dst_port=port, queue=3))
    with srv, cli, conn, MemfdBuffer(4096 * PS) as buf, be.bind_rx(LO, buf, [3]) as b:
        cli.sendall(b"p" * (8 * PS))
        time.sleep(0.05)
        ctl = bytearray(40 * 16)
        n, clen, fl = be.recvmsg(conn, memoryview(bytearray(8 * PS)), memoryview(ctl), abi.MSG_SOCK_DEVMEM)
        fb = codec.parse_rx_control(ctl, clen, fl)
        assert n == 8 * PS and len(fb) == 8
        (pool,) = report.page_pool_get(LO, d)
        assert (pool["dmabuf"], pool["queue"]) == (b.id, 3)
        # 8 held by the application + a full RX ring (1024 entries) posted
        assert pool["inflight"] == 8 + 1024 and pool["inflight_mem"] == pool["inflight"] * PS
        (stats,) = report.page_pool_stats_get(LO, d)
        assert stats["info"] == {"id": pool["id"], "ifindex": LO}
        assert stats["alloc_empty"] == 8 and stats["alloc_slow"] == 0 and stats["alloc_fast"] == 0
        t = np.zeros(8, dtype=abi.DMABUF_TOKEN_DTYPE)
        t["token_start"], t["token_count"] = fb.token, 1
        assert be.dontneed(conn, t) == 8
        cli.sendall(b"q" * (4 * PS))
        time.sleep(0.05)
        be.recvmsg(conn, memoryview(bytearray(4 * PS)), memoryview(ctl), abi.MSG_SOCK_DEVMEM)
        (stats,) = report.page_pool_stats_get(LO, d)
        assert stats["recycle_ring"] == 8 and stats["recycle_ring_full"] == 0
        assert stats["alloc_refill"] == 1 and stats["alloc_fast"] == 3  # one refill of 8, then the cache
        (q,) = report.qstats_get(LO, d)
        assert (q["queue_type"], q["queue_id"], q["rx_packets"], q["rx_bytes"]) == ("rx", 3, 12, 12 * PS)
    be.close()


def test_qstats_rows_have_the_kernels_shape() -> None:
    from devmemtcp.netlink.netdev import NetdevClient

    with NetdevClient() as c:
        rows = c.qstats_get()
    rx = [r for r in rows if r.get("queue_type") == "rx"]
    if not rx:
        pytest.skip("this kernel reports no per-queue RX qstats here (no driver with the qstats API)")
    assert {"ifindex", "queue_type", "queue_id", "rx_packets", "rx_bytes"} <= set(rx[0])
