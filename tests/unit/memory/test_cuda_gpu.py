"""CUDA memory on a real GPU: export and bind on the emulated NIC, the device
gather against the host gather, validation on the device, a validated 1 GiB
demo with --memory cuda on both ends, and nothing left behind (device memory
by cuMemGetInfo, fds by /proc/self/fd).

Marked ``gpu``: conftest skips them where /dev/nvidia0 is absent. Run them
with bench/gpu_check.sh on a GPU machine (needs cuda-python and CuPy).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from devmemtcp import abi, codec
from devmemtcp.errors import ValidationError
from devmemtcp.memory import MemfdBuffer, open_dmabuf
from devmemtcp.memory.cuda import CudaBuffer
from unit.memory.gpu import device_free_bytes

pytestmark = pytest.mark.gpu

PS = abi.PAGE_SIZE
LO = socket.if_nametoindex("lo")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def cp() -> Any:
    return pytest.importorskip("cupy", reason="the device gather and validation need CuPy")


@pytest.fixture
def emu(tmp_path: str) -> Iterator[Any]:
    from devmemtcp.backend.emulated import EmulatedBackend

    be = EmulatedBackend(directory=str(tmp_path))
    be.nic("lo").set_rings(tcp_data_split="enabled", hds_thresh=0)
    yield be
    be.close()


def test_export_is_a_dmabuf_and_round_trips() -> None:
    with open_dmabuf("cuda", 1 << 20) as buf:
        assert isinstance(buf, CudaBuffer) and buf.kind == "cuda"
        assert "dmabuf" in os.readlink(f"/proc/self/fd/{buf.fd}")  # the dma-buf pseudo file system
        data = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8)
        buf.copy_in(0, data)
        assert np.array_equal(buf.copy_out(0, 1 << 20), data)


def test_pool_is_a_dlpack_device_array(cp: Any) -> None:
    from devmemtcp.memory.cuda_ops import pool_array

    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this torch has no CUDA")
    with CudaBuffer(4 * PS) as buf:
        pool = pool_array(buf)
        assert pool.shape == (4 * PS,) and pool.data.ptr == buf.ptr
        t = torch.from_dlpack(pool)
        assert t.is_cuda and t.data_ptr() == buf.ptr
        t[PS:PS + 10] = 7
        torch.cuda.synchronize()
        assert buf.copy_out(PS, 10).tolist() == [7] * 10


def test_device_gather_equals_host_gather(cp: Any) -> None:
    rng = np.random.default_rng(3)
    npages = 512
    data = rng.integers(0, 256, npages * PS, dtype=np.uint8)
    cases = [
        (rng.permutation(npages)[:300] * PS, np.full(300, PS)),                  # shuffled pages
        (np.arange(100, 200) * PS, np.full(100, PS)),                            # one long run
        (rng.permutation(npages)[:300] * PS + rng.integers(0, 2000, 300), np.full(300, 1448)),  # irregular
        (rng.integers(0, npages * PS - PS, 200), rng.integers(0, PS, 200)),      # anything
    ]
    with CudaBuffer(npages * PS) as dev, MemfdBuffer(npages * PS) as host:
        dev.copy_in(0, data)
        host.copy_in(0, data)
        for offs, sizes in cases:
            fb = codec.FragBatch(offs.astype(np.uint64), sizes.astype(np.uint32),
                                np.arange(1, len(offs) + 1, dtype=np.uint32), np.ones(len(offs), np.uint32))
            got = dev.gather(fb)
            assert cp.asnumpy(got).tobytes() == host.gather(fb).tobytes()
            out = cp.zeros(fb.nbytes + 100, dtype=cp.uint8)
            assert cp.asnumpy(dev.gather(fb, out)).tobytes() == host.gather(fb).tobytes()


def test_device_validation_reports_the_first_mismatch(cp: Any) -> None:
    from devmemtcp.pattern import pattern_bytes
    from devmemtcp.validate import CudaFragValidator, frag_validator

    with CudaBuffer(64 * PS) as buf:
        buf.copy_in(0, pattern_bytes(7, 0, 64 * PS))
        v = frag_validator(7, buf)
        assert isinstance(v, CudaFragValidator)
        offs = np.arange(0, 32, dtype=np.uint64) * PS
        v.check_frags(offs, np.full(32, PS, np.uint32))
        assert v.checker.offset == 32 * PS
        buf.copy_in(40 * PS + 123, b"\xff")
        with pytest.raises(ValidationError) as ei:
            v.check_frags(np.arange(32, 64, dtype=np.uint64) * PS, np.full(32, PS, np.uint32))
        assert ei.value.offset == 40 * PS + 123 and ei.value.received == 0xFF
        assert ei.value.expected == pattern_bytes(7, 40 * PS + 123, 1)[0]


def test_bind_and_receive_on_the_emulated_nic(emu: Any, cp: Any) -> None:
    from devmemtcp.types import NtupleRule

    data = np.random.default_rng(5).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    with CudaBuffer(256 * PS) as buf, srv, cli, conn, emu.bind_rx(LO, buf, [2]):
        ip, port = conn.getsockname()[:2]
        emu.nic("lo").add_rule(NtupleRule(dst_ip=ip, dst_port=port, queue=2))
        t = threading.Thread(target=lambda: (cli.sendall(data), cli.shutdown(socket.SHUT_WR)))
        t.start()
        ctl, ibuf, got = bytearray(40 * 64), bytearray(1 << 16), bytearray()
        while True:
            n, clen, fl = emu.recvmsg(conn, memoryview(ibuf), memoryview(ctl), abi.MSG_SOCK_DEVMEM)
            if n == 0:
                break
            fb = codec.parse_rx_control(ctl, clen, fl)
            got += cp.asnumpy(buf.gather(fb)).tobytes()
            for ch in codec.plan_dontneed(np.sort(fb.token))[1]:
                emu.dontneed(conn, ch)
        t.join()
        assert bytes(got) == data


def test_nothing_left_after_close() -> None:
    free0, fds0 = device_free_bytes(), open_fds()
    for _ in range(3):
        with CudaBuffer(256 << 20) as buf:
            buf.staging(1 << 20)
            assert device_free_bytes() <= free0 - (256 << 20)
    assert open_fds() == fds0
    assert device_free_bytes() >= free0 - (2 << 20)  # allocator granularity aside, all of it came back


@pytest.mark.slow
def test_demo_1gib_cuda_both_ends(cp: Any) -> None:
    from devmemtcp.transfer import run_demo

    cp.get_default_memory_pool().free_all_blocks()
    free0, fds0 = device_free_bytes(), open_fds()
    demo = run_demo(nbytes=1 << 30, validate=7, backend="emulated", memory="cuda")
    assert demo["validated"] is True and demo["bytes"] == 1 << 30
    assert demo["recv"]["bytes"] == 1 << 30
    assert open_fds() == fds0
    cp.get_default_memory_pool().free_all_blocks()  # the frag lists CuPy's pool keeps for reuse
    assert device_free_bytes() >= free0 - (2 << 20)
