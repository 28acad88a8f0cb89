"""The emulated NIC with a dma-buf that has no host view (CUDA memory): it
receives into a host staging buffer and moves the bytes with one write_at
per batch (read_at per sendmsg for TX), as a NIC's DMA engine would.

The dma-buf here is a CudaBuffer over a test double of the driver API
(tests/unit/memory/fake_cuda.py), so the staged path runs on a machine
without a GPU; the same path with a real GPU is in tests/unit/memory/test_cuda_gpu.py.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from devmemtcp import abi, codec
from devmemtcp.backend.emulated import EmulatedBackend
from devmemtcp.memory.cuda import CudaBuffer
from devmemtcp.types import NtupleRule
from unit.memory.fake_cuda import FakeDriver

PS = abi.PAGE_SIZE
LO = socket.if_nametoindex("lo")


@pytest.fixture
def emu(tmp_path: str) -> Iterator[EmulatedBackend]:
    be = EmulatedBackend(directory=str(tmp_path))
    be.nic("lo").set_rings(tcp_data_split="enabled", hds_thresh=0)
    yield be
    be.close()


def tcp_pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    return srv, cli, conn


def test_rx_into_device_memory_is_staged(emu: EmulatedBackend) -> None:
    drv = FakeDriver()
    data = np.random.default_rng(5).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    srv, cli, conn = tcp_pair()
    with CudaBuffer(64 * PS, drv=drv) as buf, srv, cli, conn, emu.bind_rx(LO, buf, [2]) as b:
        ip, port = conn.getsockname()[:2]
        emu.nic("lo").add_rule(NtupleRule(dst_ip=ip, dst_port=port, queue=2))
        assert emu.flow_info(conn)["mode"] == "devmem"
        t = threading.Thread(target=lambda: (cli.sendall(data), cli.shutdown(socket.SHUT_WR)))
        t.start()
        ctl = bytearray(40 * 64)
        ibuf = bytearray(1 << 16)
        got = bytearray()
        recvs = 0
        drv.log.clear()
        while True:
            n, clen, fl = emu.recvmsg(conn, memoryview(ibuf), memoryview(ctl), abi.MSG_SOCK_DEVMEM)
            if n == 0:
                break
            recvs += 1
            fb = codec.parse_rx_control(ctl, clen, fl)
            assert len(fb) and (fb.dmabuf_id == b.id).all()
            out = np.empty(fb.nbytes, np.uint8)
            buf.read_at(fb.offset, fb.size, out)  # what the frags say is in device memory
            got += out.tobytes()
            for ch in codec.plan_dontneed(np.sort(fb.token))[1]:
                emu.dontneed(conn, ch)
        t.join()
        assert bytes(got) == data
        kinds = [e[0] for e in drv.log]
        # each receive: one synchronisation after its host-to-device copies
        assert kinds.count("sync") == 2 * recvs  # write_at by the NIC, read_at by the test
        assert sum(e[2] for e in drv.log if e[0] == "htod") == len(data)
        assert b.staged is True
        assert emu.outstanding(conn) == 0
    assert not drv.device_mem and not drv.host_mem


def test_tx_from_device_memory_is_staged(emu: EmulatedBackend) -> None:
    drv = FakeDriver()
    src = np.random.default_rng(6).integers(0, 256, 16 * PS, dtype=np.uint8)
    srv, cli, conn = tcp_pair()
    with CudaBuffer(16 * PS, drv=drv) as buf, srv, cli, conn, emu.bind_tx(LO, buf) as tb:
        buf.copy_in(0, src)
        cli.setsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
        ctl = codec.build_tx_cmsg(tb.id)
        pairs = np.array([(PS, 100), (PS + 100, 3 * PS), (10 * PS, 50)], dtype=np.uint64)
        drv.log.clear()
        n = emu.sendmsg(cli, pairs, ctl, abi.MSG_ZEROCOPY)
        want = src[PS:PS + 100 + 3 * PS].tobytes() + src[10 * PS:10 * PS + 50].tobytes()
        assert n == len(want)
        # adjacent iovecs merged: two ranges read back with one synchronisation
        assert [e[0] for e in drv.log] == ["dtoh", "dtoh", "sync"]
        got = b""
        while len(got) < len(want):
            got += conn.recv(1 << 16)
        assert got == want


def test_closing_the_buffer_while_bound_is_an_error_not_a_crash(emu: EmulatedBackend) -> None:
    from devmemtcp.errors import DevmemError

    drv = FakeDriver()
    srv, cli, conn = tcp_pair()
    buf = CudaBuffer(16 * PS, drv=drv)
    with srv, cli, conn, emu.bind_rx(LO, buf, [1]) as b:
        ip, port = conn.getsockname()[:2]
        emu.nic("lo").add_rule(NtupleRule(dst_ip=ip, dst_port=port, queue=1))
        cli.sendall(b"x" * 10000)
        ctl, ibuf = bytearray(40 * 64), bytearray(1 << 16)
        assert emu.recvmsg(conn, memoryview(ibuf), memoryview(ctl), abi.MSG_SOCK_DEVMEM)[0] > 0
        assert b.staged is True
        buf.close()  # the pinned staging memory is gone with it
        cli.sendall(b"y" * 10000)
        with pytest.raises(DevmemError, match="closed while bound"):
            emu.recvmsg(conn, memoryview(ibuf), memoryview(ctl), abi.MSG_SOCK_DEVMEM)
