"""The CUDA provider without a GPU: kind parsing, the errors when cuda-python,
the driver or dma-buf export is missing, and CudaBuffer's bookkeeping over a
test double of the driver API (tests/unit/memory/fake_cuda.py): alignment,
export arguments, copies, staging, the order of frees, nothing left behind."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import pytest

from devmemtcp.errors import DevmemError
from devmemtcp.memory import cuda as mcuda
from devmemtcp.memory import is_memory_kind, open_dmabuf
from devmemtcp.memory.cuda import CudaBuffer, parse_device
from unit.memory.fake_cuda import CUresult, FakeDriver

PS = 4096


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_parse_device_and_kinds() -> None:
    assert parse_device("cuda") == 0
    assert parse_device("cuda:3") == 3
    for bad in ("cuda:", "cuda:x", "gpu", "cuda:-1", "cuda0"):
        with pytest.raises(DevmemError, match="is not cuda or cuda:N") as ei:
            parse_device(bad)
        assert "--memory cuda:N" in (ei.value.hint or "")
    assert all(is_memory_kind(k) for k in ("host", "udmabuf", "cuda", "cuda:0", "cuda:12"))
    assert not any(is_memory_kind(k) for k in ("gpu", "cuda:", "cuda:a", "host:1"))


def test_unknown_kind_lists_cuda() -> None:
    with pytest.raises(DevmemError, match="unknown memory kind") as ei:
        open_dmabuf("cuda:x", PS)
    assert "cuda:N" in (ei.value.hint or "")


def test_missing_cuda_python_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail as if the package were absent
    for name in ("cuda", "cuda.bindings", "cuda.bindings.driver", "cuda.cuda"):
        monkeypatch.setitem(sys.modules, name, None)
    before = open_fds()
    with pytest.raises(DevmemError, match="cuda-python is not installed") as ei:
        open_dmabuf("cuda", PS)
    assert "pip install 'devmemtcp[cuda]'" in (ei.value.hint or "")
    assert open_fds() == before


@pytest.mark.skipif(os.path.exists("/dev/nvidia0"), reason="this machine has an NVIDIA GPU")
def test_no_driver_or_gpu_is_a_clear_error() -> None:
    pytest.importorskip("cuda.bindings.driver", reason="needs cuda-python installed (the [cuda] extra)")
    before = open_fds()
    with pytest.raises(DevmemError) as ei:
        open_dmabuf("cuda:0", 1 << 20)
    msg = str(ei.value)
    assert "no NVIDIA driver" in msg or "cuInit failed" in msg
    assert "--memory host" in (ei.value.hint or "")
    assert open_fds() == before


def test_size_checked_before_the_driver() -> None:
    with pytest.raises(DevmemError, match="not a positive multiple of the page size"):
        CudaBuffer(1000, drv=FakeDriver())


def test_export_is_page_aligned_and_close_order() -> None:
    drv = FakeDriver(misalign=256)
    before = open_fds()
    buf = CudaBuffer(4 * PS, device=0, drv=drv)
    assert buf.kind == "cuda" and buf.fd >= 0 and buf.size == 4 * PS and buf.device == 0
    assert buf.ptr % PS == 0
    alloc = next(e for e in drv.log if e[0] == "alloc")
    assert alloc[2] == 5 * PS and alloc[1] <= buf.ptr < alloc[1] + PS
    export = next(e for e in drv.log if e[0] == "export")
    assert export[1:] == (buf.ptr, 4 * PS, 1, 0)  # DMA_BUF_FD, flags 0
    fd = buf.fd
    with buf:
        pass
    assert buf.closed and buf.fd == -1
    free = next(e for e in drv.log if e[0] == "free")
    assert free[2] is False, "the dma-buf fd is closed before the memory is freed"
    assert fd >= 0
    assert drv.log[-1] == ("ctx_release",)
    assert not drv.device_mem and not drv.host_mem and drv.ctx_refs == 0 and drv.streams == 0
    assert drv.ctx_stack == 0
    assert open_fds() == before
    buf.close()  # idempotent


def test_host_view_refused_and_copies_round_trip() -> None:
    drv = FakeDriver()
    with CudaBuffer(8 * PS, drv=drv) as buf:
        with pytest.raises(DevmemError, match="no host view") as ei:
            buf.host_view()
        assert "copy_out" in (ei.value.hint or "")
        data = np.random.default_rng(1).integers(0, 256, 3 * PS + 17, dtype=np.uint8)
        buf.copy_in(PS - 5, data)
        assert buf.copy_out(PS - 5, data.size).tobytes() == data.tobytes()
        buf.copy_in(0, b"abc")
        assert buf.copy_out(0, 3).tobytes() == b"abc"
        with pytest.raises(DevmemError, match="outside the"):
            buf.copy_out(8 * PS - 1, 2)
        with pytest.raises(DevmemError, match="outside the"):
            buf.copy_in(8 * PS, b"x")


def test_write_at_read_at_one_sync_per_call() -> None:
    drv = FakeDriver()
    with CudaBuffer(16 * PS, drv=drv) as buf:
        stage = buf.staging(5 * PS)
        assert stage.shape[0] >= 5 * PS and stage.dtype == np.uint8
        assert buf.staging(PS) is stage  # reused on the same thread
        src = np.random.default_rng(2).integers(0, 256, 5 * PS, dtype=np.uint8)
        stage[: src.size] = src
        offs, lens = np.array([3 * PS, 10 * PS]), np.array([2 * PS, 3 * PS])
        drv.log.clear()
        buf.write_at(offs, lens, stage)
        assert [e[0] for e in drv.log] == ["htod", "htod", "sync"]
        assert buf.copy_out(3 * PS, 2 * PS).tobytes() == src[: 2 * PS].tobytes()
        assert buf.copy_out(10 * PS, 3 * PS).tobytes() == src[2 * PS:].tobytes()
        out = np.zeros(5 * PS, np.uint8)
        drv.log.clear()
        buf.read_at(offs, lens, out)
        assert [e[0] for e in drv.log] == ["dtoh", "dtoh", "sync"]
        assert out.tobytes() == src.tobytes()
        with pytest.raises(DevmemError, match="outside the"):
            buf.write_at(np.array([15 * PS]), np.array([2 * PS]), stage)
        with pytest.raises(DevmemError, match="source has"):
            buf.write_at(np.array([0]), np.array([PS]), np.zeros(10, np.uint8))
    assert not drv.host_mem, "pinned staging freed at close"


def test_dmabuf_unsupported_names_attribute_driver_and_fix() -> None:
    drv = FakeDriver(dmabuf_supported=0, version=12020)
    before = open_fds()
    with pytest.raises(DevmemError) as ei:
        CudaBuffer(PS, drv=drv)
    msg = str(ei.value.message)
    assert "CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 0" in msg and "CUDA 12.2" in msg
    assert "open kernel modules" in (ei.value.hint or "")
    assert not drv.device_mem and drv.ctx_refs == 0 and open_fds() == before


def test_refused_export_names_driver_and_frees_everything() -> None:
    drv = FakeDriver(export_error=CUresult.CUDA_ERROR_NOT_SUPPORTED, version=12040)
    before = open_fds()
    with pytest.raises(DevmemError) as ei:
        CudaBuffer(2 * PS, drv=drv)
    msg = ei.value.message
    assert "CUDA 12.4" in msg and "CUDA_ERROR_NOT_SUPPORTED" in msg
    assert "CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED" in msg and "cuMemGetHandleForAddressRange" in msg
    assert "nvidia-open" in (ei.value.hint or "")
    assert not drv.device_mem and drv.ctx_refs == 0 and drv.streams == 0 and open_fds() == before


def test_no_such_device() -> None:
    with pytest.raises(DevmemError, match="no CUDA device 2: the driver sees 1") as ei:
        CudaBuffer(PS, device=2, drv=FakeDriver())
    assert "below 1" in (ei.value.hint or "")


def test_out_of_memory_hint() -> None:
    drv = FakeDriver()

    def oom(n: int) -> tuple[Any, int]:
        return CUresult.CUDA_ERROR_OUT_OF_MEMORY, 0

    drv.cuMemAlloc = oom  # type: ignore[method-assign]
    with pytest.raises(DevmemError, match="CUDA_ERROR_OUT_OF_MEMORY") as ei:
        CudaBuffer(PS, drv=drv)
    assert "smaller --size" in (ei.value.hint or "")
    assert drv.ctx_refs == 0


def test_open_dmabuf_cuda_uses_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    drv = FakeDriver(devices=2)
    monkeypatch.setattr(mcuda, "driver", lambda: drv)
    with open_dmabuf("cuda:1", 2 * PS) as buf:
        assert isinstance(buf, CudaBuffer) and buf.device == 1
    assert drv.ctx_refs == 0


def test_probe_reports_facts() -> None:
    info = mcuda.probe(0, FakeDriver(version=12080))
    assert info == {"driver": "12.8", "device": 0, "name": "Fake GPU", "count": 1, "dmabuf_supported": True}
    assert mcuda.probe(0, FakeDriver(dmabuf_supported=None))["dmabuf_supported"] is None
