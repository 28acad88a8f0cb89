"""EmulatedBackend across a veth pair: receiver in one namespace, sender in the other.

The emulated NIC sits on veth0 inside namespace a; the peer in namespace b
is a plain TCP socket. Threads enter the namespaces with setns
(``devmemtcp.host.netns.enter``), so sockets, routes and NIC state are the
namespace's own.
"""

from __future__ import annotations

import errno
import socket
import threading
from typing import Any

import numpy as np
import pytest

from devmemtcp import abi, codec
from devmemtcp.backend.emulated import EmulatedBackend
from devmemtcp.host import netns
from devmemtcp.memory.memfd import MemfdBuffer
from devmemtcp.types import NtupleRule
from unit.codec.oracles import coalesce_tokens, dontneed_chunks

pytestmark = [pytest.mark.root, pytest.mark.netns]

PS = abi.PAGE_SIZE


def _pattern(n: int) -> bytes:
    return np.random.default_rng(3).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_stream_over_veth_lands_in_dmabuf(netns_pair: Any, tmp_path: Any) -> None:
    data = _pattern(8 << 20)
    ready = threading.Event()
    port: list[int] = []
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            ready.wait(10)
            with netns.enter(netns_pair.ns_b), socket.create_connection((netns_pair.addr_a, port[0])) as c:
                c.sendall(data)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    t = threading.Thread(target=sender)
    t.start()
    try:
        with netns.enter(netns_pair.ns_a):
            be = EmulatedBackend(directory=str(tmp_path))
            nic = be.nic(netns_pair.veth_a)
            nic.set_rings(tcp_data_split="enabled", hds_thresh=0)
            nic.set_rss_indir([i % 2 for i in range(128)])  # RSS off queues 2, 3
            with socket.socket() as srv, MemfdBuffer(256 * PS) as buf, \
                    be.bind_rx(socket.if_nametoindex(netns_pair.veth_a), buf, [3]) as b:
                srv.bind((netns_pair.addr_a, 0))
                srv.listen()
                port.append(srv.getsockname()[1])
                nic.add_rule(NtupleRule(dst_ip=netns_pair.addr_a, dst_port=port[0], queue=3))
                ready.set()
                conn, _ = srv.accept()
                with conn:
                    info = be.flow_info(conn)
                    assert (info["mode"], info["ifname"], info["queue"]) == ("devmem", netns_pair.veth_a, 3)
                    ctl = bytearray(40 * 64)
                    out = bytearray()
                    while True:
                        n, clen, fl = be.recvmsg(conn, memoryview(bytearray(1 << 18)), memoryview(ctl),
                                                 abi.MSG_SOCK_DEVMEM)
                        if n == 0:
                            break
                        fb = codec.parse_rx_control(ctl, clen, fl)
                        assert (fb.dmabuf_id == b.id).all() and int(fb.size.sum()) == n
                        out += buf.gather(fb).tobytes()
                        for ch in dontneed_chunks(coalesce_tokens(fb.token)):
                            be.dontneed(conn, ch)
                    assert bytes(out) == data
                    assert be.outstanding(conn) == 0
            # the lo NIC of this namespace is another emulated NIC, untouched
            assert be.nic("lo").get_rings().tcp_data_split == "unknown"
            be.close()
    finally:
        ready.set()
        t.join(30)
    assert not errors


def test_tx_route_must_leave_through_the_bound_device(netns_pair: Any, tmp_path: Any) -> None:
    received = bytearray()
    with netns.enter(netns_pair.ns_b):
        srv = socket.socket()
        srv.bind((netns_pair.addr_b, 0))
        srv.listen()
    addr = srv.getsockname()

    def reader() -> None:
        conn, _ = srv.accept()
        with conn:
            while chunk := conn.recv(1 << 16):
                received.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    try:
        with netns.enter(netns_pair.ns_a), MemfdBuffer(4 * PS) as buf:
            buf.copy_in(0, _pattern(4 * PS))
            be = EmulatedBackend(directory=str(tmp_path))
            with socket.create_connection(addr) as c, be.bind_tx(socket.if_nametoindex("lo"), buf) as on_lo, \
                    be.bind_tx(socket.if_nametoindex(netns_pair.veth_a), buf) as on_veth:
                c.setsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
                iov = np.array([[0, 4 * PS]], dtype=np.uint64)
                with pytest.raises(OSError) as oe:
                    be.sendmsg(c, iov, codec.build_tx_cmsg(on_lo.id), abi.MSG_ZEROCOPY)
                assert oe.value.errno == errno.ENODEV
                assert be.sendmsg(c, iov, codec.build_tx_cmsg(on_veth.id), abi.MSG_ZEROCOPY) == 4 * PS
            be.close()
    finally:
        t.join(30)
        srv.close()
    assert bytes(received) == buf_bytes(4 * PS)


def buf_bytes(n: int) -> bytes:
    return _pattern(4 * PS)[:n]
