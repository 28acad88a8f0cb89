"""Conformance: the kernel's other answers (issue 14, item 6).

Against the real kernel where this machine can ask it (socket-level checks,
the CAP_NET_ADMIN check of the netdev family), else against the emulated NIC
with the kernel variant skipped with the reason (a devmem NIC and a traffic
peer are needed).
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from devmemtcp import abi, codec
from devmemtcp.backend.emulated import EmulatedBackend
from devmemtcp.errors import NetlinkError
from devmemtcp.memory.memfd import MemfdBuffer
from devmemtcp.types import NtupleRule

PS = abi.PAGE_SIZE
LO = socket.if_nametoindex("lo")


def raw_dontneed(backend: Any, sock: socket.socket, raw: bytes) -> int:
    if backend.name == "kernel":
        from devmemtcp.backend.kernel import libc_setsockopt

        return int(libc_setsockopt(sock.fileno(), abi.SOL_SOCKET, abi.SO_DEVMEM_DONTNEED, raw))
    return int(backend.dontneed(sock, raw))


@pytest.mark.parametrize(("optlen", "want"), [(0, errno.EINVAL), (4, errno.EBADF), (8, errno.EBADF)])
def test_dontneed_on_udp_checks_optlen_before_the_socket_type(sock_backend: Any, optlen: int,
                                                               want: int) -> None:
    """sk_setsockopt refuses optlen < sizeof(int) (EINVAL) before
    sock_devmem_dontneed refuses a non-TCP socket (EBADF); the live 6.18 answers so."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(OSError) as oe:
        raw_dontneed(sock_backend, udp, b"\0" * optlen)
    assert oe.value.errno == want


_NO_ADMIN = """
import socket, sys
from devmemtcp.errors import NetlinkError
from devmemtcp.memory.memfd import MemfdBuffer
kind = sys.argv[1]
if kind == "kernel":
    from devmemtcp.backend.kernel import KernelBackend
    be = KernelBackend()
else:
    from devmemtcp.backend.emulated import EmulatedBackend
    be = EmulatedBackend(directory=sys.argv[2])
lo = socket.if_nametoindex("lo")
with MemfdBuffer(16 * 4096) as buf:
    for op in ("bind-rx", "bind-tx"):
        try:
            be.bind_rx(lo, buf, [0]) if op == "bind-rx" else be.bind_tx(lo, buf)
        except NetlinkError as exc:
            print(op, exc.errno)
        except PermissionError as exc:
            print(op, exc.errno)
        else:
            print(op, "bound")
"""


@pytest.mark.root
@pytest.mark.parametrize("kind", ["emulated", "kernel"])
def test_bind_rx_without_cap_net_admin_is_eperm(kind: str, tmp_path: Any) -> None:
    """bind-rx is an admin-perm op of the netdev family: EPERM before the
    request is looked at (CAP_NET_ADMIN dropped from the bounding set).
    bind-tx is not: it is answered on its merits (lo: the kernel's EOPNOTSUPP,
    no netmem TX; the emulated lo binds)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin",
                           sys.executable, "-c", _NO_ADMIN, kind, str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split()
    assert out[:2] == ["bind-rx", str(errno.EPERM)]
    assert out[2] == "bind-tx" and out[3] != str(errno.EPERM)


# ---------------------------------------------------------------------------
# flows on the emulated NIC (the kernel variant needs a devmem NIC and a peer)
# ---------------------------------------------------------------------------
@pytest.fixture(params=["emulated", pytest.param("kernel", marks=pytest.mark.devmem_nic)])
def flow_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[EmulatedBackend]:
    if request.param == "kernel":
        pytest.skip("the flow cases need a devmem NIC with a traffic peer on another host; "
                    "this runner has none (the emulated NIC answers here)")
    be = EmulatedBackend(directory=str(tmp_path))
    be.nic("lo").set_rings(tcp_data_split="enabled", hds_thresh=0)
    yield be
    be.close()


def _flow(be: EmulatedBackend, queue: int = 3) -> tuple[socket.socket, socket.socket, socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    ip, port = conn.getsockname()[:2]
    be.nic("lo").add_rule(NtupleRule(dst_ip=ip, dst_port=port, queue=queue))
    return srv, cli, conn


def _recv(be: EmulatedBackend, conn: socket.socket, nbuf: int, flags: int = 0,
          ncmsg: int = 16) -> codec.FragBatch:
    ctl = bytearray(40 * ncmsg)
    n, clen, fl = be.recvmsg(conn, memoryview(bytearray(nbuf)), memoryview(ctl), abi.MSG_SOCK_DEVMEM | flags)
    fb = codec.parse_rx_control(ctl, clen, fl)
    assert int(fb.size.sum()) == n
    return fb


@pytest.mark.parametrize(("kernel", "want"), [("6.18", abi.ETOOSMALL), ("6.17", errno.EFAULT)])
def test_control_too_small_for_one_cmsg(flow_backend: EmulatedBackend, kernel: str, want: int) -> None:
    be = flow_backend
    be.nic("lo").set_capabilities(kernel=kernel)
    srv, cli, conn = _flow(be)
    with srv, cli, conn, MemfdBuffer(16 * PS) as buf, be.bind_rx(LO, buf, [3]):
        cli.sendall(b"z" * 3000)
        with pytest.raises(OSError) as oe:
            be.recvmsg(conn, memoryview(bytearray(PS)), memoryview(bytearray(39)), abi.MSG_SOCK_DEVMEM)
        assert oe.value.errno == want
        fb = _recv(be, conn, PS)  # nothing was consumed
        assert int(fb.size.sum()) == 3000


def test_msg_peek_hands_out_new_tokens_for_the_same_frags(flow_backend: EmulatedBackend) -> None:
    be = flow_backend
    srv, cli, conn = _flow(be)
    with srv, cli, conn, MemfdBuffer(16 * PS) as buf, be.bind_rx(LO, buf, [3]):
        data = bytes(range(256)) * 40
        cli.sendall(data)
        time.sleep(0.05)
        p1 = _recv(be, conn, 1 << 16, abi.MSG_PEEK)
        p2 = _recv(be, conn, 1 << 16, abi.MSG_PEEK)
        r = _recv(be, conn, 1 << 16)
        assert p1.offset.tolist() == p2.offset.tolist() == r.offset.tolist()
        assert p1.size.tolist() == p2.size.tolist() == r.size.tolist()
        toks = set(p1.token.tolist()) | set(p2.token.tolist()) | set(r.token.tolist())
        assert len(toks) == 3 * len(r)
        assert buf.gather(r).tobytes() == data
        # every reference must come back before the net_iovs are free
        assert be.outstanding(conn) == 3 * len(r)
        for fb in (p1, p2, r):
            t = np.zeros(len(fb), dtype=abi.DMABUF_TOKEN_DTYPE)
            t["token_start"], t["token_count"] = fb.token, 1
            assert be.dontneed(conn, t) == len(fb)
        assert be.stats()["bindings"][0]["inflight"] == 0


def test_non_dmabuf_file_is_einval(flow_backend: EmulatedBackend) -> None:
    """dma_buf_get on a file that is not a dma-buf: EINVAL (a memfd stands in
    for host memory on the emulated NIC and is accepted)."""
    class RegularFile:
        kind = "file"
        page_size = PS

        def __init__(self, f: Any) -> None:
            self.fd = f.fileno()
            self.size = 16 * PS

        def host_view(self) -> Any:
            raise AssertionError

        def close(self) -> None:
            pass

    with tempfile.TemporaryFile() as f:
        f.truncate(16 * PS)
        with pytest.raises(NetlinkError) as ei:
            flow_backend.bind_rx(LO, RegularFile(f), [3])  # type: ignore[arg-type]
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(NetlinkError) as ei:
            flow_backend.bind_tx(LO, RegularFile(f))  # type: ignore[arg-type]
        assert ei.value.errno == errno.EINVAL
    with MemfdBuffer(16 * PS) as buf, flow_backend.bind_rx(LO, buf, [3]) as b:
        assert b.id >= 1


def test_dma_device_mismatch_between_queues(flow_backend: EmulatedBackend) -> None:
    flow_backend.nic("lo").set_capabilities(dma_devs=[0, 0, 1, 1])
    with MemfdBuffer(16 * PS) as buf:
        with pytest.raises(NetlinkError) as ei:
            flow_backend.bind_rx(LO, buf, [1, 2])
        assert (ei.value.errno, ei.value.extack) == (
            errno.EOPNOTSUPP, "DMA device mismatch between queue 2 and 1 (multi-PF device?)")
        with flow_backend.bind_rx(LO, buf, [2, 3]) as b:
            assert b.queues == (2, 3)


def test_xdp_and_af_xdp_refuse_bind_rx(flow_backend: EmulatedBackend) -> None:
    nic = flow_backend.nic("lo")
    with MemfdBuffer(16 * PS) as buf:
        nic.set_capabilities(xdp=True)
        with pytest.raises(NetlinkError) as ei:
            flow_backend.bind_rx(LO, buf, [3])
        assert (ei.value.errno, ei.value.extack) == (
            errno.EEXIST, "unable to custom memory provider to device with XDP program attached")
        nic.set_capabilities(xdp=False, xsk=[3])
        with pytest.raises(NetlinkError) as ei:
            flow_backend.bind_rx(LO, buf, [3])
        assert (ei.value.errno, ei.value.extack) == (errno.EBUSY, "designated queue already in use by AF_XDP")


def test_data_queued_when_the_binding_closes_stays_devmem(flow_backend: EmulatedBackend) -> None:
    be = flow_backend
    srv, cli, conn = _flow(be)
    with srv, cli, conn, MemfdBuffer(16 * PS) as buf:
        b = be.bind_rx(LO, buf, [3])
        assert be.flow_info(conn)["mode"] == "devmem"
        cli.sendall(b"d" * 5000)
        time.sleep(0.05)
        b.close()
        fb = _recv(be, conn, 1 << 16)
        assert int(fb.size.sum()) == 5000 and (fb.dmabuf_id == b.id).all()
        cli.sendall(b"r" * 100)  # after the unbind: an ordinary page pool, readable
        time.sleep(0.05)
        out = bytearray(256)
        n, clen, _ = be.recvmsg(conn, memoryview(out), memoryview(bytearray(400)), abi.MSG_SOCK_DEVMEM)
        assert (bytes(out[:n]), clen) == (b"r" * 100, 0)
        t = np.zeros(len(fb), dtype=abi.DMABUF_TOKEN_DTYPE)
        t["token_start"], t["token_count"] = fb.token, 1
        assert be.dontneed(conn, t) == len(fb)


def test_a_full_socket_token_table_is_ebusy(flow_backend: EmulatedBackend) -> None:
    be = flow_backend
    srv, cli, conn = _flow(be)
    with srv, cli, conn, MemfdBuffer(16 * PS) as buf, be.bind_rx(LO, buf, [3]) as b:
        cli.sendall(b"a" * 100)
        _recv(be, conn, PS)
        table = be.rx.sockets[conn].tokens
        table.alloc_runs([(1 << 40, abi.TOKEN_LIMIT - 1)], b.id, 3)
        cli.sendall(b"b" * 100)
        with pytest.raises(OSError) as oe:
            _recv(be, conn, PS)
        assert oe.value.errno == errno.EBUSY
        table.erase_range_runs(2, abi.TOKEN_LIMIT - 1)


