"""emulation/tx (through EmulatedBackend): sendmsg checks, iovec bytes, zerocopy completions.

Every test gets its own state directory (``DEVMEMTCP_EMU_DIR`` is not
touched): the backend is built with ``directory=tmp_path``.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from devmemtcp import abi, codec
from devmemtcp.backend.emulated import EmulatedBackend
from devmemtcp.memory.memfd import MemfdBuffer

sys.path.insert(0, os.path.dirname(__file__))
from emu_helpers import LO, PS, pattern, ready, tcp_pair


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
        assert last == emu.tx.sockets[cli].zckey - 1
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
