"""A plain-socket transport with the shape of devmemtcp.torch.transport, for tests.

It lets the process group's own logic (matching, tags, timeouts, a peer
that dies) be tested without any NIC set-up, and gives the backend tests a
second transport to compare against. Framing: u64 tag, u64 nbytes, payload.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
from collections.abc import Callable
from typing import Any

import torch

_HDR = struct.Struct("<QQ")


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    while view.nbytes:
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("peer closed the connection")
        view = view[n:]


class TcpLink:
    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock

    def send(self, payload: torch.Tensor, tag: int) -> None:
        self.sock.sendall(_HDR.pack(tag, payload.numel()))
        if payload.numel():
            self.sock.sendall(memoryview(payload.numpy()).cast("B"))

    def ready_to_send(self, nbytes: int) -> bool:
        # a plain socket has no credit: the peer's reader always drains it
        return True

    def recv_next(self, choose: Callable[[int, int], torch.Tensor], timeout: float) -> bool:
        if not select.select([self.sock], [], [], timeout)[0]:
            return False
        hdr = bytearray(_HDR.size)
        _recv_exact(self.sock, memoryview(hdr))
        tag, nbytes = _HDR.unpack(hdr)
        out = choose(tag, nbytes)
        assert out.dtype == torch.uint8 and out.is_contiguous() and out.numel() == nbytes
        if nbytes:
            _recv_exact(self.sock, memoryview(out.numpy()).cast("B"))
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


_LINK = b"DMTLINK\0"
_WANT = b"DMTWANT\0"


class TcpAcceptor:
    def __init__(self, addr: str) -> None:
        self.sock = socket.create_server((addr, 0))
        self.address: dict[str, Any] = {"addr": addr, "port": self.sock.getsockname()[1], "ifname": None}

    def accept(self, timeout: float) -> TcpLink | int | None:
        self.sock.settimeout(timeout)
        try:
            s, _ = self.sock.accept()
        except TimeoutError:
            return None
        s.settimeout(None)
        pre = bytearray(16)
        _recv_exact(s, memoryview(pre))
        if bytes(pre[:8]) == _WANT:
            s.close()
            return int.from_bytes(pre[8:], "little")
        return TcpLink(s)

    def close(self) -> None:
        self.sock.close()


class TcpTransport:
    name = "tcp"

    def __init__(self, addr: str = "127.0.0.1") -> None:
        self.addr = addr

    def listen(self) -> TcpAcceptor:
        return TcpAcceptor(self.addr)

    def connect(self, address: dict[str, Any], timeout: float) -> TcpLink:
        s = socket.create_connection((address["addr"], address["port"]), timeout=timeout)
        s.settimeout(None)
        s.sendall(_LINK + bytes(8))
        return TcpLink(s)

    def ask(self, address: dict[str, Any], rank: int, timeout: float) -> None:
        with socket.create_connection((address["addr"], address["port"]), timeout=timeout) as s:
            s.sendall(_WANT + rank.to_bytes(8, "little"))
