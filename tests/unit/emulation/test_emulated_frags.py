"""A real NIC's buffer placement (frags mode "driver"): MSS-sized frags packed in
4096-byte buffers, several per net_iov, a cut frag continued with a new token."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import numpy as np

from devmemtcp import abi, codec
from devmemtcp.backend.emulated import EmulatedBackend
from devmemtcp.memory.memfd import MemfdBuffer
from devmemtcp.validate import FragValidator

sys.path.insert(0, os.path.dirname(__file__))
from emu_helpers import LO, PS, pattern, ready, steer_to

MSS = 1448


def mss_pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    """(listener, client, accepted) over lo with the MSS of an MTU-1500 link."""
    srv = socket.socket()
    srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, MSS)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.socket()
    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, MSS)
    cli.connect(srv.getsockname())
    conn, _ = srv.accept()
    return srv, cli, conn


def recv_once(be: EmulatedBackend, conn: socket.socket, nbuf: int, ncmsg: int = 64) -> codec.FragBatch:
    ctl = bytearray(40 * ncmsg)
    n, clen, fl = be.recvmsg(conn, memoryview(bytearray(nbuf)), memoryview(ctl), abi.MSG_SOCK_DEVMEM)
    fb = codec.parse_rx_control(ctl, clen, fl)
    assert int(fb.size.sum()) == n
    return fb


def test_frags_are_mss_sized_unaligned_and_share_net_iovs(tmp_path: Any) -> None:
    be = EmulatedBackend(directory=str(tmp_path), frags="driver")
    ready(be)
    srv, cli, conn = mss_pair()
    mss = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    data = pattern(64 << 10)
    with srv, cli, conn, MemfdBuffer(64 * PS) as buf, be.bind_rx(LO, buf, [3]):
        steer_to(be, conn, 3)
        cli.sendall(data)
        cli.shutdown(socket.SHUT_WR)
        got = bytearray()
        offs, sizes = [], []
        while len(got) < len(data):
            fb = recv_once(be, conn, 1 << 20)
            got += buf.gather(fb).tobytes()
            offs += fb.offset.tolist()
            sizes += fb.size.tolist()
        assert bytes(got) == data
        sizes_a, offs_a = np.array(sizes), np.array(offs)
        assert sizes_a.max() == mss and (sizes_a[:-1] == mss).all()
        assert (offs_a % PS != 0).any()
        # several frags per net_iov, none crossing a 4096-byte buffer
        assert len({o // PS for o in offs}) < len(offs)
        assert ((offs_a % PS) + sizes_a <= PS).all()
        per_niov = PS // mss
        assert len({o // PS for o in offs}) == -(-len(offs) // per_niov)
    be.close()


def test_cut_frag_comes_back_with_a_new_token_for_the_same_net_iov(tmp_path: Any) -> None:
    be = EmulatedBackend(directory=str(tmp_path), frags="driver")
    ready(be)
    srv, cli, conn = mss_pair()
    mss = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    with srv, cli, conn, MemfdBuffer(64 * PS) as buf, be.bind_rx(LO, buf, [3]):
        steer_to(be, conn, 3)
        data = pattern(3 * mss)
        cli.sendall(data)
        import time

        time.sleep(0.1)
        first = recv_once(be, conn, 1000)
        second = recv_once(be, conn, mss)
        assert first.size.tolist() == [1000]
        assert second.size.tolist()[0] == mss - 1000
        assert int(second.offset[0]) == int(first.offset[0]) + 1000
        assert int(second.offset[0]) // PS == int(first.offset[0]) // PS  # the same net_iov
        assert int(second.token[0]) != int(first.token[0])
        assert buf.gather(first).tobytes() + buf.gather(second).tobytes()[: mss - 1000] == data[:mss]
    be.close()


def test_a_shared_net_iov_is_free_only_when_its_last_frag_comes_back(tmp_path: Any) -> None:
    be = EmulatedBackend(directory=str(tmp_path), frags="driver")
    ready(be)
    srv, cli, conn = mss_pair()
    with srv, cli, conn, MemfdBuffer(64 * PS) as buf, be.bind_rx(LO, buf, [3]) as b:
        steer_to(be, conn, 3)
        mss = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        cli.sendall(pattern(2 * mss))
        cli.shutdown(socket.SHUT_WR)
        import time

        time.sleep(0.1)
        fb = recv_once(be, conn, 2 * mss)
        assert len(fb) == 2 and int(fb.offset[0]) // PS == int(fb.offset[1]) // PS
        pool = be.netdev.pools.get(b.id)
        assert pool is not None
        niov = int(fb.offset[0]) // PS
        one = np.array([(int(fb.token[0]), 1)], dtype=abi.DMABUF_TOKEN_DTYPE)
        assert be.dontneed(conn, one) == 1
        assert not pool.free[niov]  # the other frag (and the NIC's buffer) still hold it
        two = np.array([(int(fb.token[1]), 1)], dtype=abi.DMABUF_TOKEN_DTYPE)
        assert be.dontneed(conn, two) == 1
        assert be.release_socket(conn) == 0  # the NIC lets its buffers go with the flow
        assert pool.free[niov] and pool.inflight == 0
    be.close()


def test_unaligned_frags_validate(tmp_path: Any) -> None:
    be = EmulatedBackend(directory=str(tmp_path), frags="driver")
    ready(be)
    srv, cli, conn = mss_pair()
    from devmemtcp.pattern import pattern_bytes

    data = pattern_bytes(7, 0, 256 << 10).tobytes()
    with srv, cli, conn, MemfdBuffer(128 * PS) as buf, be.bind_rx(LO, buf, [3]):
        steer_to(be, conn, 3)
        v = FragValidator(7, buf)
        cli.sendall(data)
        cli.shutdown(socket.SHUT_WR)
        seen = 0
        unaligned = 0
        while seen < len(data):
            fb = recv_once(be, conn, 1 << 20, ncmsg=256)
            v.check_batch(fb)
            unaligned += int((fb.offset % PS != 0).sum())
            seen += int(fb.size.sum())
            be.dontneed(conn, codec_tokens(fb))
        assert unaligned > 0 and v.checker.offset == len(data)
    be.close()


def codec_tokens(fb: codec.FragBatch) -> np.ndarray:
    out = np.zeros(len(fb), dtype=abi.DMABUF_TOKEN_DTYPE)
    out["token_start"] = fb.token
    out["token_count"] = 1
    return out[:128]
