"""Helpers of the emulated-NIC tests: sockets, steering, receiving through a backend."""

from __future__ import annotations

import os
import socket
from typing import Any

import numpy as np
import pytest

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



def nl_err(fn: Any, *args: Any) -> NetlinkError:
    with pytest.raises(NetlinkError) as ei:
        fn(*args)
    return ei.value


def pattern(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
