"""emulation/rx (through EmulatedBackend): steering, RX into the dma-buf, tokens, DONTNEED, cmsgs.

Every test gets its own state directory (``DEVMEMTCP_EMU_DIR`` is not
touched): the backend is built with ``directory=tmp_path``.
"""

from __future__ import annotations

import errno
import gc
import os
import socket
import struct
import sys
import threading
import time

import numpy as np
import pytest

from devmemtcp import abi, codec
from devmemtcp.backend.emulated import EmulatedBackend
from devmemtcp.memory.memfd import MemfdBuffer
from unit.codec.oracles import coalesce_tokens

sys.path.insert(0, os.path.dirname(__file__))
from emu_helpers import LO, PS, pattern, ready, recv_all, steer_to, tcp_pair


# ---------------------------------------------------------------------------
# RX
# ---------------------------------------------------------------------------
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


@pytest.mark.parametrize("kernel", ["6.18", "6.17"])
def test_devmem_without_flag_is_efault_small_control_etoosmall(emu: EmulatedBackend, buf: MemfdBuffer,
                                                                 kernel: str) -> None:
    """A too-small control buffer: ETOOSMALL (525) since 6.18, EFAULT before."""
    ready(emu)
    srv, cli, conn = tcp_pair()
    with srv, cli, conn, emu.bind_rx(LO, buf, [1]):
        steer_to(emu, conn, 1)
        emu.nic("lo").set_capabilities(kernel=kernel)
        cli.sendall(b"x" * 100)
        ibuf = memoryview(bytearray(4096))
        with pytest.raises(OSError) as oe:
            emu.recvmsg(conn, ibuf, memoryview(bytearray(400)), 0)
        assert oe.value.errno == errno.EFAULT
        with pytest.raises(OSError) as oe:
            emu.recvmsg(conn, ibuf, memoryview(bytearray(39)), abi.MSG_SOCK_DEVMEM)
        assert oe.value.errno == (abi.ETOOSMALL if kernel == "6.18" else errno.EFAULT)
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


def test_token_space_exhausted_is_ebusy_and_takes_no_net_iov(emu: EmulatedBackend, buf: MemfdBuffer) -> None:
    """xa_alloc past xa_limit_31b fails: recvmsg is EBUSY and the net_iovs it
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
        table = emu.rx.sockets[conn].tokens
        # tokens 2 .. 2**31-1 held (net_iov numbers past the dma-buf: erased below, never given back)
        table.alloc_runs([(1 << 40, abi.TOKEN_LIMIT - 1)], b.id, 1)
        free_before = emu.stats()["bindings"][0]["free"]
        cli.sendall(b"b" * PS)
        with pytest.raises(OSError) as oe:
            emu.recvmsg(conn, memoryview(bytearray(PS)), memoryview(ctl), abi.MSG_SOCK_DEVMEM)
        assert oe.value.errno == errno.EBUSY
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


@pytest.mark.parametrize("n,total,shift", [(1, 1, 0), (1, PS, 0), (5, 4 * PS + 7, 0), (300, 300 * PS, 0),
                                           (3000, 3000 * PS - 5, 0), (3, 2 * PS + 1, 4)])
def test_encode_frags_matches_the_codec(n: int, total: int, shift: int) -> None:
    from devmemtcp.emulation.rx import encode_frags
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


@pytest.mark.parametrize("n,total,first,token", [(1, 100, 0, 1), (2, PS + 1, 7, 1), (256, 256 * PS, 1000, 77),
                                                 (256, 256 * PS - 100, 3, 0xFFFFFFFF - 255),
                                                 (4000, 4000 * PS - 1, (1 << 20) - 4000, 5)])
def test_encode_frags_one_run_matches_the_codec(n: int, total: int, first: int, token: int) -> None:
    """One run of net_iovs and one of tokens (a recvmsg's usual shape) takes the
    one-add path; the records must be the codec's, up to the last token u32."""
    from devmemtcp.emulation.rx import encode_frags

    a = bytearray(b"\xff" * (40 * n))
    b = bytearray(b"\xff" * (40 * n))
    la = encode_frags(memoryview(a), [(first, n)], total, [(token, n)], 11)
    sizes = np.full(n, PS, np.uint32)
    sizes[-1] = total - (n - 1) * PS
    offsets = (np.arange(n, dtype=np.uint64) + first) * PS
    tokens = (np.arange(n, dtype=np.uint64) + token).astype(np.uint32)
    lb = codec.encode_rx_control(memoryview(b), offsets, sizes, tokens, 11)
    assert (la, bytes(a)) == (lb, bytes(b))
