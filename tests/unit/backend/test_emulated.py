"""EmulatedBackend: bind-rx/bind-tx rules, RX through the emulated NIC, DONTNEED, TX.

Every test gets its own state directory (``DEVMEMTCP_EMU_DIR`` is not
touched): the backend is built with ``directory=tmp_path``.
"""

from __future__ import annotations

import errno
import gc
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from devmemtcp import abi, codec
from devmemtcp.backend.emulated import EmulatedBackend
from devmemtcp.errors import NetlinkError
from devmemtcp.memory.memfd import MemfdBuffer
from devmemtcp.types import NtupleRule
from unit.codec.oracles import coalesce_tokens, dontneed_chunks

PS = abi.PAGE_SIZE
LO = socket.if_nametoindex("lo")


class FakeDmaBuf:
    """A DmaBuf-protocol object with an arbitrary ``size`` over a real fd
    (for the size checks of bind-rx/bind-tx; never mapped)."""

    kind = "memfd"
    page_size = PS

    def __init__(self, size: int, fd: int | None = None) -> None:
        self.size = size
        self._own = fd is None
        self.fd = os.memfd_create("fake") if fd is None else fd

    def host_view(self) -> np.ndarray:
        raise AssertionError("never mapped")

    def close(self) -> None:
        if self._own and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@pytest.fixture
def emu(tmp_path: Any) -> Iterator[EmulatedBackend]:
    be = EmulatedBackend(directory=str(tmp_path))
    yield be
    be.close()


@pytest.fixture
def buf() -> Iterator[MemfdBuffer]:
    with MemfdBuffer(64 * PS) as b:
        yield b


def ready(be: EmulatedBackend, ifname: str = "lo") -> None:
    be.nic(ifname).set_rings(tcp_data_split="enabled", hds_thresh=0)


def tcp_pair(addr: str = "127.0.0.1", rcvbuf: int = 0) -> tuple[socket.socket, socket.socket, socket.socket]:
    """(listener, client, accepted) over ``addr``; ``rcvbuf``: SO_RCVBUF of the
    accepted socket, set on the listener so the window scale fits it."""
    srv = socket.socket()
    if rcvbuf:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    srv.bind((addr, 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    return srv, cli, conn


def steer_to(be: EmulatedBackend, conn: socket.socket, queue: int) -> NtupleRule:
    ip, port = conn.getsockname()[:2]
    return be.nic("lo").add_rule(NtupleRule(dst_ip=ip, dst_port=port, queue=queue))


def recv_all(be: EmulatedBackend, conn: socket.socket, nbytes: int, dmabuf: MemfdBuffer,
             release: bool = True, iov: int = 1 << 16) -> tuple[bytes, list[codec.FragBatch]]:
    """Receive ``nbytes`` through the backend, gathering devmem frags; returns
    (stream bytes, batches)."""
    ctl = bytearray(40 * 64)
    ibuf = bytearray(iov)
    out = bytearray()
    batches = []
    while len(out) < nbytes:
        n, clen, fl = be.recvmsg(conn, memoryview(ibuf), memoryview(ctl), abi.MSG_SOCK_DEVMEM)
        if n == 0:
            break
        fb = codec.parse_rx_control(ctl, clen, fl)
        if len(fb):
            out += dmabuf.gather(fb).tobytes()
            batches.append(fb)
            if release:
                for ch in dontneed_chunks(coalesce_tokens(fb.token)):
                    be.dontneed(conn, ch)
        else:
            out += ibuf[:n]
    return bytes(out), batches


# ---------------------------------------------------------------------------
# bind-rx
# ---------------------------------------------------------------------------
def nl_err(fn: Any, *args: Any) -> NetlinkError:
    with pytest.raises(NetlinkError) as ei:
        fn(*args)
    return ei.value


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


# ---------------------------------------------------------------------------
# RX
# ---------------------------------------------------------------------------
def pattern(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_devmem_stream_lands_in_dmabuf(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    ready(emu)
    srv, cli, conn = tcp_pair()
    with srv, cli, conn, emu.bind_rx(LO, buf, [3]) as b:
        steer_to(emu, conn, 3)
        assert emu.flow_info(conn)["mode"] == "devmem"
        data = pattern(3 << 20)
        t = threading.Thread(target=lambda: (cli.sendall(data), cli.shutdown(socket.SHUT_WR)))
        t.start()
        got, batches = recv_all(emu, conn, len(data), buf)
        t.join()
        assert got == data
        allf = np.concatenate([fb.size for fb in batches])
        assert allf.max() <= PS and int(allf.sum()) == len(data)
        assert all((fb.dmabuf_id == b.id).all() for fb in batches)
        assert all((fb.offset % PS == 0).all() for fb in batches)
        st = emu.stats()["bindings"][0]
        assert st["inflight"] == 0 and st["queue_stats"][3]["rx-bytes"] == len(data)
        assert emu.outstanding(conn) == 0


def test_devmem_recv_waits_for_rcvlowat(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    """SO_RCVLOWAT as tcp_recvmsg applies it: a blocking receive sleeps until
    that many unread bytes are queued (tcp_data_ready wakes it no sooner), a
    receive with a timeout returns what is there when it expires, EOF ends
    the wait."""
    ready(emu)
    srv, cli, conn = tcp_pair()
    ctl = bytearray(40 * 64)
    ibuf = memoryview(bytearray(64 * PS))
    with srv, cli, conn, emu.bind_rx(LO, buf, [3]):
        steer_to(emu, conn, 3)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 3 * PS)
        first = threading.Timer(0.1, lambda: cli.sendall(b"a" * PS))
        later = threading.Timer(0.3, lambda: cli.sendall(b"b" * (2 * PS)))
        first.start()
        later.start()
        t0 = time.monotonic()
        n, clen, _ = emu.recvmsg(conn, ibuf, memoryview(ctl), abi.MSG_SOCK_DEVMEM)
        later.join()
        assert time.monotonic() - t0 >= 0.25 and n == 3 * PS
        assert emu.dontneed(conn, coalesce_tokens(codec.parse_rx_control(ctl, clen, 0).token)) == 3
        # timeout: the bytes that are there
        cli.sendall(b"c" * PS)
        conn.settimeout(0.2)
        t0 = time.monotonic()
        n, _, _ = emu.recvmsg(conn, ibuf, memoryview(ctl), abi.MSG_SOCK_DEVMEM)
        assert n == PS and time.monotonic() - t0 >= 0.15
        # EOF ends the wait
        conn.settimeout(None)
        cli.sendall(b"d" * 100)
        cli.shutdown(socket.SHUT_WR)
        assert emu.recvmsg(conn, ibuf, memoryview(ctl), abi.MSG_SOCK_DEVMEM)[0] == 100
        assert emu.recvmsg(conn, ibuf, memoryview(ctl), abi.MSG_SOCK_DEVMEM)[:2] == (0, 0)


def test_unsteered_flow_is_readable(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    ready(emu)
    nic = emu.nic("lo")
    nic.set_rss_indir([0] * 128)  # RSS keeps everything on queue 0
    srv, cli, conn = tcp_pair()
    with srv, cli, conn, emu.bind_rx(LO, buf, [3]):
        info = emu.flow_info(conn)
        assert (info["mode"], info["queue"], info["how"]) == ("readable", 0, "rss")
        cli.sendall(b"hello world")
        ibuf = bytearray(64)
        ctl = bytearray(400)
        n, clen, fl = emu.recvmsg(conn, memoryview(ibuf), memoryview(ctl), abi.MSG_SOCK_DEVMEM)
        assert (bytes(ibuf[:n]), clen, fl) == (b"hello world", 0, 0)


def test_devmem_without_flag_and_small_control_are_efault(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    ready(emu)
    srv, cli, conn = tcp_pair()
    with srv, cli, conn, emu.bind_rx(LO, buf, [1]):
        steer_to(emu, conn, 1)
        cli.sendall(b"x" * 100)
        ibuf = memoryview(bytearray(4096))
        with pytest.raises(OSError) as oe:
            emu.recvmsg(conn, ibuf, memoryview(bytearray(400)), 0)
        assert oe.value.errno == errno.EFAULT
        with pytest.raises(OSError) as oe:
            emu.recvmsg(conn, ibuf, memoryview(bytearray(39)), abi.MSG_SOCK_DEVMEM)
        assert oe.value.errno == errno.EFAULT
        # the data is still there for a proper call
        ctl = bytearray(40)
        n, clen, _ = emu.recvmsg(conn, ibuf, memoryview(ctl), abi.MSG_SOCK_DEVMEM)
        fb = codec.parse_rx_control(ctl, clen)
        assert (n, clen, fb.token.tolist(), fb.size.tolist()) == (100, 40, [1], [100])


def test_tokens_lowest_free_from_one(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    ready(emu)
    srv, cli, conn = tcp_pair()
    with srv, cli, conn, emu.bind_rx(LO, buf, [1]):
        steer_to(emu, conn, 1)
        ctl = bytearray(40 * 4)

        def one_page() -> codec.FragBatch:
            cli.sendall(b"a" * PS)
            n, clen, _ = emu.recvmsg(conn, memoryview(bytearray(PS)), memoryview(ctl), abi.MSG_SOCK_DEVMEM)
            assert n == PS
            return codec.parse_rx_control(ctl, clen)

        toks = [int(one_page().token[0]) for _ in range(4)]
        assert toks == [1, 2, 3, 4]
        ranges = np.array([(2, 2)], dtype=abi.DMABUF_TOKEN_DTYPE)
        assert emu.dontneed(conn, ranges) == 2
        assert int(one_page().token[0]) == 2
        assert int(one_page().token[0]) == 3
        assert int(one_page().token[0]) == 5


def test_token_space_exhausted_is_enomem_and_takes_no_net_iov(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    """xa_alloc past xa_limit_31b fails: recvmsg is ENOMEM and the net_iovs it
    had taken go back to the pool (the token table holds 2**31 - 1 tokens as
    one segment, so the test is cheap)."""
    ready(emu)
    srv, cli, conn = tcp_pair()
    with srv, cli, conn, emu.bind_rx(LO, buf, [1]) as b:
        steer_to(emu, conn, 1)
        ctl = bytearray(40 * 4)
        cli.sendall(b"a" * PS)
        n, clen, _ = emu.recvmsg(conn, memoryview(bytearray(PS)), memoryview(ctl), abi.MSG_SOCK_DEVMEM)
        assert (n, codec.parse_rx_control(ctl, clen).token.tolist()) == (PS, [1])
        table = emu._socks[conn].tokens
        # tokens 2 .. 2**31-1 held (net_iov numbers past the dma-buf: erased below, never given back)
        table.alloc_runs([(1 << 40, abi.TOKEN_LIMIT - 1)], b.id, 1)
        free_before = emu.stats()["bindings"][0]["free"]
        cli.sendall(b"b" * PS)
        with pytest.raises(OSError) as oe:
            emu.recvmsg(conn, memoryview(bytearray(PS)), memoryview(ctl), abi.MSG_SOCK_DEVMEM)
        assert oe.value.errno == errno.ENOMEM
        assert emu.stats()["bindings"][0]["free"] == free_before
        # forget the fake tokens, then the real one goes back as usual
        table.erase_range_runs(2, abi.TOKEN_LIMIT - 1)
        assert emu.dontneed(conn, np.array([(1, 1)], dtype=abi.DMABUF_TOKEN_DTYPE)) == 1


def queued(sock: socket.socket) -> int:
    """Bytes waiting in ``sock``'s receive queue (FIONREAD)."""
    import fcntl
    import struct
    import termios

    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0])


def hold_everything(emu: EmulatedBackend, conn: socket.socket, cli: socket.socket, pages: int) -> list[int]:
    """Fill every net_iov of a ``pages``-page binding with whole pages and keep
    the tokens (waits until whole pages are queued before each receive)."""
    ctl = bytearray(40 * pages)
    toks: list[int] = []
    t = threading.Thread(target=cli.sendall, args=(b"z" * (pages * PS),))
    t.start()
    left = pages * PS
    while left:
        deadline = time.monotonic() + 10
        while queued(conn) < min(left, PS) and time.monotonic() < deadline:
            time.sleep(0.001)
        nbuf = min(left, queued(conn) // PS * PS)
        # only whole pages are taken: the receive buffer must hold a page past any remainder
        assert nbuf, f"no whole page queued within 10 s ({queued(conn)} bytes): use a larger rcvbuf"
        n, clen, _ = emu.recvmsg(conn, memoryview(bytearray(nbuf)), memoryview(ctl), abi.MSG_SOCK_DEVMEM)
        assert n == nbuf
        left -= n
        toks += codec.parse_rx_control(ctl, clen).token.tolist()
    t.join()
    return toks


def test_pool_exhaustion_stalls_and_recovers(emu: EmulatedBackend) -> None:
    ready(emu)
    srv, cli, conn = tcp_pair()
    with srv, cli, conn, MemfdBuffer(4 * PS) as small, emu.bind_rx(LO, small, [2]) as b:
        steer_to(emu, conn, 2)
        toks = hold_everything(emu, conn, cli, 4)
        assert sorted(toks) == [1, 2, 3, 4]
        cli.sendall(b"more")
        conn.settimeout(0.2)
        ctl = memoryview(bytearray(400))
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            emu.recvmsg(conn, memoryview(bytearray(PS)), ctl, abi.MSG_SOCK_DEVMEM)
        assert time.monotonic() - t0 >= 0.19
        with pytest.raises(BlockingIOError):
            emu.recvmsg(conn, memoryview(bytearray(PS)), ctl, abi.MSG_SOCK_DEVMEM | abi.MSG_DONTWAIT)
        # a blocking socket with SO_RCVTIMEO: EAGAIN once that time has passed
        conn.settimeout(None)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("qq", 0, 100_000))
        t0 = time.monotonic()
        with pytest.raises(BlockingIOError):
            emu.recvmsg(conn, memoryview(bytearray(PS)), ctl, abi.MSG_SOCK_DEVMEM)
        assert time.monotonic() - t0 >= 0.09
        qs = emu.stats()["bindings"][0]["queue_stats"][2]
        assert qs["alloc-empty"] >= 3
        assert emu.stats()["bindings"][0]["inflight"] == 4

        # a release from another thread wakes the stalled receiver
        conn.settimeout(5)
        threading.Timer(0.1, lambda: emu.dontneed(
            conn, np.array([(1, 1)], dtype=abi.DMABUF_TOKEN_DTYPE))).start()
        n, clen, _ = emu.recvmsg(conn, memoryview(bytearray(PS)), ctl, abi.MSG_SOCK_DEVMEM)
        fb = codec.parse_rx_control(ctl, clen)
        assert (n, fb.token.tolist(), fb.dmabuf_id.tolist()) == (4, [1], [b.id])
        assert small.copy_out(int(fb.offset[0]), 4).tobytes() == b"more"


def test_tokens_returned_when_socket_closes(emu: EmulatedBackend) -> None:
    ready(emu)
    srv, cli, conn = tcp_pair()
    with srv, cli, MemfdBuffer(8 * PS) as small, emu.bind_rx(LO, small, [2]):
        steer_to(emu, conn, 2)
        hold_everything(emu, conn, cli, 8)
        assert emu.stats()["bindings"][0]["free"] == 0
        assert emu.release_socket(conn) == 8
        assert emu.stats()["bindings"][0]["free"] == 8
        conn.close()
        # garbage collection of a socket object releases too
        srv2, cli2, conn2 = tcp_pair()
        with srv2, cli2:
            steer_to(emu, conn2, 2)
            hold_everything(emu, conn2, cli2, 8)
            assert emu.stats()["bindings"][0]["free"] == 0
            conn2.close()
            del conn2
            gc.collect()
            assert emu.stats()["bindings"][0]["free"] == 8


# ---------------------------------------------------------------------------
# SO_DEVMEM_DONTNEED
# ---------------------------------------------------------------------------
def test_dontneed_limits(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    srv, cli, conn = tcp_pair()
    with srv, cli, conn, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        one = np.array([(1, 1)], dtype=abi.DMABUF_TOKEN_DTYPE)
        with pytest.raises(OSError) as oe:
            emu.dontneed(udp, one)
        assert oe.value.errno == errno.EBADF
        for bad in (b"", b"\0" * 4, b"\0" * 12, b"\0" * (8 * 129)):
            with pytest.raises(OSError) as oe:
                emu.dontneed(conn, bad)
            assert oe.value.errno == errno.EINVAL, len(bad)
        assert emu.dontneed(conn, one) == 0  # unknown tokens are skipped
        assert emu.dontneed(conn, b"\0" * (8 * 128)) == 0


def test_dontneed_stops_after_1024_frags(emu: EmulatedBackend) -> None:
    ready(emu)
    srv, cli, conn = tcp_pair(rcvbuf=8 << 20)
    with srv, cli, conn, MemfdBuffer(1100 * PS) as big, emu.bind_rx(LO, big, [2]):
        steer_to(emu, conn, 2)
        toks = hold_everything(emu, conn, cli, 1100)
        assert sorted(toks) == list(range(1, 1101))
        # unknown token 5000 counts toward the 1024 limit
        arr = np.array([(5000, 1), (1, 1100)], dtype=abi.DMABUF_TOKEN_DTYPE)
        assert emu.dontneed(conn, arr) == 1023
        assert emu.outstanding(conn) == 1100 - 1023
        # duplicates are freed once
        assert emu.dontneed(conn, np.array([(1024, 2), (1024, 2)], dtype=abi.DMABUF_TOKEN_DTYPE)) == 2
        # a huge count walks 1..1024 (all free by now) and stops
        assert emu.dontneed(conn, np.array([(1, 0xFFFFFFFF)], dtype=abi.DMABUF_TOKEN_DTYPE)) == 0
        rest = np.array([(1026, 75)], dtype=abi.DMABUF_TOKEN_DTYPE)
        assert emu.dontneed(conn, rest) == 75
        assert emu.outstanding(conn) == 0


# ---------------------------------------------------------------------------
# TX
# ---------------------------------------------------------------------------
@pytest.fixture
def txbuf() -> Iterator[MemfdBuffer]:
    with MemfdBuffer(16 * PS) as b:
        b.copy_in(0, pattern(16 * PS, seed=7))
        yield b


def tx_call(emu: EmulatedBackend, sock: socket.socket, pairs: list[tuple[int, int]], ctl: bytes,
            flags: int = abi.MSG_ZEROCOPY) -> int:
    return emu.sendmsg(sock, np.array(pairs, dtype=np.uint64).reshape(-1, 2), ctl, flags)


def os_err(fn: Any, *args: Any, **kw: Any) -> int:
    with pytest.raises(OSError) as oe:
        fn(*args, **kw)
    assert oe.value.errno is not None
    return int(oe.value.errno)


def test_tx_needs_zerocopy_and_a_tx_binding(emu: EmulatedBackend, txbuf: MemfdBuffer,
                                            buf: MemfdBuffer) -> None:
    ready(emu)
    srv, cli, conn = tcp_pair()
    with srv, cli, conn, emu.bind_tx(LO, txbuf) as tb, emu.bind_rx(LO, buf, [0]) as rb:
        ctl = codec.build_tx_cmsg(tb.id)
        # binding id without SO_ZEROCOPY, or without MSG_ZEROCOPY: EINVAL
        assert os_err(tx_call, emu, cli, [(0, 100)], ctl) == errno.EINVAL
        cli.setsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
        assert os_err(tx_call, emu, cli, [(0, 100)], ctl, 0) == errno.EINVAL
        # an RX binding's id, an unknown id: EINVAL
        assert os_err(tx_call, emu, cli, [(0, 100)], codec.build_tx_cmsg(rb.id)) == errno.EINVAL
        assert os_err(tx_call, emu, cli, [(0, 100)], codec.build_tx_cmsg(999)) == errno.EINVAL
        # cmsg_len must be CMSG_LEN(4): EINVAL
        bad = bytearray(ctl)
        bad[0] = 24
        assert os_err(tx_call, emu, cli, [(0, 100)], bytes(bad)) == errno.EINVAL
        # no devmem cmsg: the offsets would be user pointers
        assert os_err(tx_call, emu, cli, [(0, 100)], b"") == errno.EFAULT
        assert tx_call(emu, cli, [(0, 100)], ctl) == 100
        assert conn.recv(200) == txbuf.copy_out(0, 100).tobytes()


def test_tx_offsets_past_the_end(emu: EmulatedBackend, txbuf: MemfdBuffer) -> None:
    srv, cli, conn = tcp_pair()
    with srv, cli, conn, emu.bind_tx(LO, txbuf) as tb:
        cli.setsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
        ctl = codec.build_tx_cmsg(tb.id)
        size = txbuf.size
        assert os_err(tx_call, emu, cli, [(size, 10)], ctl) == errno.EFAULT
        assert os_err(tx_call, emu, cli, [(size + PS, 10)], ctl) == errno.EFAULT
        # bytes up to the end go out, then the walk faults: a short count
        assert tx_call(emu, cli, [(size - 10, 100)], ctl) == 10
        assert tx_call(emu, cli, [(0, 5), (size - 3, 1), (size, 50)], ctl) == 6
        want = txbuf.copy_out(size - 10, 10).tobytes() + txbuf.copy_out(0, 5).tobytes() + \
            txbuf.copy_out(size - 3, 1).tobytes()
        got = b""
        while len(got) < len(want):
            got += conn.recv(100)
        assert got == want


def _expected_tx_bytes(data: bytes, pairs: list[tuple[int, int]]) -> bytes | None:
    """What tcp_sendmsg sends for ``pairs`` over a dma-buf holding ``data``
    (None: EFAULT before any byte; nothing asked: nothing sent)."""
    if not any(ln for _, ln in pairs):
        return b""
    out = b""
    for off, ln in pairs:
        if ln == 0:
            continue
        if off >= len(data):
            break
        out += data[off:off + ln]
        if off + ln > len(data):
            break
    return out or None


@settings(max_examples=60, deadline=None)
@given(hst.lists(hst.tuples(hst.integers(0, 16 * PS + 100), hst.integers(0, 3 * PS)),
                 min_size=1, max_size=12), hst.booleans())
def test_tx_sends_exactly_the_iovec_bytes(pairs: list[tuple[int, int]], chain: bool) -> None:
    if chain:  # contiguous iovecs (the Sender's usual shape), from the first offset
        pos, chained = pairs[0][0], []
        for _, ln in pairs:
            chained.append((pos, ln))
            pos += ln
        pairs = chained
    with EmulatedBackend() as emu, MemfdBuffer(16 * PS) as txbuf:
        data = pattern(16 * PS, seed=3)
        txbuf.copy_in(0, data)
        srv, cli, conn = tcp_pair()
        with srv, cli, conn, emu.bind_tx(LO, txbuf) as tb:
            cli.setsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
            want = _expected_tx_bytes(data, pairs)
            if want is None:
                assert os_err(tx_call, emu, cli, pairs, codec.build_tx_cmsg(tb.id)) == errno.EFAULT
                return
            assert tx_call(emu, cli, pairs, codec.build_tx_cmsg(tb.id)) == len(want)
            assert want or not any(ln for _, ln in pairs)
            cli.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := conn.recv(1 << 16):
                got += chunk
            assert got == want


def errqueue(emu: EmulatedBackend, sock: socket.socket, timeout: float = 5.0) -> list[tuple[int, int]]:
    c = bytearray(128)
    deadline = time.monotonic() + timeout
    while True:
        try:
            clen, fl = emu.recv_errqueue(sock, memoryview(c))
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
            continue
        assert fl & abi.MSG_ERRQUEUE
        return codec.parse_zerocopy_completions(c, clen)


def test_tx_completions_ranges(emu: EmulatedBackend, txbuf: MemfdBuffer) -> None:
    srv, cli, conn = tcp_pair()
    with srv, cli, conn, emu.bind_tx(LO, txbuf) as tb:
        cli.setsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
        ctl = codec.build_tx_cmsg(tb.id)
        with pytest.raises(BlockingIOError):
            emu.recv_errqueue(cli, memoryview(bytearray(128)))
        pairs = [(i * PS, PS) for i in range(16)]
        for _ in range(5):
            assert tx_call(emu, cli, pairs, ctl) == 16 * PS
        got = b""
        while len(got) < 5 * 16 * PS:
            got += conn.recv(1 << 20)
        assert got == txbuf.copy_out(0, 16 * PS).tobytes() * 5
        assert errqueue(emu, cli) == [(0, 4)]  # merged into one notification
        assert tx_call(emu, cli, [(0, 10)], ctl) == 10
        conn.recv(10)
        assert errqueue(emu, cli) == [(5, 5)]
        assert emu.pending_completions(cli) == 0
        # a too-small control buffer: MSG_CTRUNC, the notification is consumed
        assert tx_call(emu, cli, [(0, 10)], ctl) == 10
        conn.recv(10)
        time.sleep(0.05)
        clen, fl = emu.recv_errqueue(cli, memoryview(bytearray(20)))
        assert clen == 20 and fl & abi.MSG_CTRUNC
        with pytest.raises(BlockingIOError):
            emu.recv_errqueue(cli, memoryview(bytearray(128)))


def test_tx_completion_waits_for_ack(emu: EmulatedBackend, txbuf: MemfdBuffer) -> None:
    """Bytes the peer has not acknowledged keep their sendmsg incomplete."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    with srv, cli, conn, emu.bind_tx(LO, txbuf) as tb:
        cli.setsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
        cli.setblocking(False)
        ctl = codec.build_tx_cmsg(tb.id)
        sent = 0
        for _ in range(64):  # fill the receiver's window
            try:
                sent += tx_call(emu, cli, [(0, 16 * PS)], ctl, abi.MSG_ZEROCOPY | abi.MSG_DONTWAIT)
            except BlockingIOError:
                break
        time.sleep(0.05)
        c = bytearray(128)
        done: list[tuple[int, int]]
        try:
            clen, _ = emu.recv_errqueue(cli, memoryview(c))
            done = codec.parse_zerocopy_completions(c, clen)
        except BlockingIOError:
            done = []  # nothing acked yet
        assert emu.pending_completions(cli) >= 1  # the last sendmsg is not acked yet
        got = 0
        conn.setblocking(True)
        while got < sent:
            got += len(conn.recv(1 << 20))
        rest = errqueue(emu, cli)
        last = rest[-1][1]
        assert last == emu._socks[cli].tx.zckey - 1
        assert not done or done[-1][1] + 1 == rest[0][0]


def test_tx_too_many_iovecs_and_wait_errqueue(emu: EmulatedBackend, txbuf: MemfdBuffer) -> None:
    srv, cli, conn = tcp_pair()
    with srv, cli, conn, emu.bind_tx(LO, txbuf) as tb:
        cli.setsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
        ctl = codec.build_tx_cmsg(tb.id)
        # copy_msghdr_from_user: more than UIO_MAXIOV iovecs is EMSGSIZE
        assert os_err(tx_call, emu, cli, [(0, 1)] * 1025, ctl) == errno.EMSGSIZE
        assert tx_call(emu, cli, [(0, 1)] * 1024, ctl) == 1024
        assert not emu.wait_errqueue(conn, 0.01)  # nothing sent on that socket
        got = 0
        while got < 1024:
            got += len(conn.recv(4096))
        assert emu.wait_errqueue(cli, 5.0)
        assert errqueue(emu, cli, 0) == [(0, 0)]


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
        assert qs["rx-bytes"] == 5000 and qs["rx-packets"] == 2 and qs["alloc-fast"] >= 2
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


@pytest.mark.parametrize("n,total,shift", [(1, 1, 0), (1, PS, 0), (5, 4 * PS + 7, 0), (300, 300 * PS, 0),
                                           (3000, 3000 * PS - 5, 0), (3, 2 * PS + 1, 4)])
def test_encode_frags_matches_the_codec(n: int, total: int, shift: int) -> None:
    from devmemtcp.backend.emulated import encode_frags
    from devmemtcp.emulation.tokens import page_runs

    rng = np.random.default_rng(n)
    # net_iovs in runs of random length, tokens in two runs (a hole in the token space)
    pages = np.sort(rng.choice(1 << 20, n, replace=False)).astype(np.int64)
    pages[: n // 2] = np.arange(n // 2) + 12345
    half = n // 3
    tok = np.concatenate((np.arange(7, 7 + half), np.arange(90000, 90000 + n - half))).astype(np.uint32)
    a = bytearray(b"\xff" * (40 * n + 16))  # stale bytes everywhere: every field is written
    b = bytearray(b"\xff" * (40 * n + 16))
    # shift != 0: a misaligned control buffer takes the codec's own path
    la = encode_frags(memoryview(a)[shift:], page_runs(pages), total, page_runs(tok.astype(np.int64)), 9)
    sizes = np.full(n, PS, np.uint32)
    sizes[-1] = total - (n - 1) * PS
    lb = codec.encode_rx_control(memoryview(b)[shift:], pages.astype(np.uint64) * PS, sizes, tok, 9)
    assert (la, bytes(a)) == (lb, bytes(b))
    fb = codec.parse_rx_control(bytes(a)[shift:], la)
    assert fb.nbytes == total and fb.token.tolist() == tok.tolist()
