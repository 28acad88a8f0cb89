"""The emulated NIC on a connection the peer reset, as the kernel answers.

* A socket reset before its first recvmsg: the kernel's tcp_recvmsg gives
  the socket's error (ECONNRESET) once, then 0; getpeername's ENOTCONN (the
  emulated NIC steers by the peer address) must not leak out instead.
* A reset with sends not yet acknowledged: tcp_reset purges the write queue
  (tcp_write_queue_purge), and freeing a zerocopy skb delivers its MSG_ZEROCOPY
  completion, so every pending sendmsg completes at once, never "waits for
  an ack" that cannot come.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from devmemtcp import abi, codec
from devmemtcp.backend.emulated import EmulatedBackend
from devmemtcp.memory.memfd import MemfdBuffer

PS = abi.PAGE_SIZE
LO = socket.if_nametoindex("lo")


@pytest.fixture
def emu(tmp_path: Any) -> Iterator[EmulatedBackend]:
    be = EmulatedBackend(directory=str(tmp_path))
    yield be
    be.close()


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _pair(rcvbuf: int = 0) -> tuple[socket.socket, socket.socket, socket.socket]:
    srv = socket.socket()
    if rcvbuf:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    return srv, cli, conn


def test_reset_before_the_first_recvmsg_is_econnreset_then_eof(emu: EmulatedBackend) -> None:
    srv, cli, conn = _pair()
    with srv, conn:
        _reset(cli)
        time.sleep(0.05)
        with pytest.raises(OSError) as ei:
            conn.getpeername()
        assert ei.value.errno == errno.ENOTCONN  # what the emulated NIC's steering would have hit
        buf, ctl = bytearray(1 << 16), bytearray(40 * 64)
        with pytest.raises(ConnectionResetError):
            emu.recvmsg(conn, memoryview(buf), memoryview(ctl), abi.MSG_SOCK_DEVMEM)
        assert emu.recvmsg(conn, memoryview(buf), memoryview(ctl), abi.MSG_SOCK_DEVMEM) == (0, 0, 0)


def test_bytes_queued_before_a_reset_are_still_read(emu: EmulatedBackend) -> None:
    srv, cli, conn = _pair()
    with srv, conn:
        cli.sendall(b"x" * 1000)
        time.sleep(0.05)
        _reset(cli)
        time.sleep(0.05)
        buf, ctl = bytearray(1 << 16), bytearray(40 * 64)
        n, clen, _fl = emu.recvmsg(conn, memoryview(buf), memoryview(ctl), abi.MSG_SOCK_DEVMEM)
        assert (n, clen) == (1000, 0) and bytes(buf[:n]) == b"x" * 1000
        with pytest.raises(ConnectionResetError):
            emu.recvmsg(conn, memoryview(buf), memoryview(ctl), abi.MSG_SOCK_DEVMEM)


def test_a_reset_completes_every_pending_send(emu: EmulatedBackend) -> None:
    srv, cli, conn = _pair(rcvbuf=4096)
    with MemfdBuffer(16 * PS) as txbuf, srv, cli, emu.bind_tx(LO, txbuf) as tb:
        cli.setsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
        cli.setblocking(False)
        ctl = codec.build_tx_cmsg(tb.id)
        iov = np.array([[0, 16 * PS]], dtype=np.uint64)
        calls = 0
        for _ in range(64):  # fill the peer's window: the last sends stay unacknowledged
            try:
                emu.sendmsg(cli, iov, ctl, abi.MSG_ZEROCOPY | abi.MSG_DONTWAIT)
                calls += 1
            except BlockingIOError:
                break
        time.sleep(0.05)
        assert calls and emu.pending_completions(cli) >= 1
        _reset(conn)  # the peer goes away with the bytes unread
        time.sleep(0.05)
        c = bytearray(128)
        deadline = time.monotonic() + 2
        done: list[tuple[int, int]] = []
        while emu.pending_completions(cli) and time.monotonic() < deadline:
            try:
                clen, _ = emu.recv_errqueue(cli, memoryview(c))
                done += codec.parse_zerocopy_completions(c, clen)
            except BlockingIOError:
                time.sleep(0.005)
        assert emu.pending_completions(cli) == 0
        assert done and done[-1][1] == calls - 1
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            emu.sendmsg(cli, iov, ctl, abi.MSG_ZEROCOPY)
