"""cuda_ops and the code above it (validate.CudaFragValidator, transfer's
demo with --memory cuda) on a machine without a GPU: CudaBuffer over the
driver double (fake_cuda.py) and CuPy's double (fake_cupy.py), whose kernels
are numpy code written from the kernels' specification. What this shows: the
plan, the launches (one per batch), the destination checks, the stream
offset of a mismatch and the received byte, and that a validated demo over
"CUDA memory" moves every byte through the staged emulated NIC and the
device-side validator. The CUDA C itself runs only in test_cuda_gpu.py."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import pytest

from devmemtcp.codec import FragBatch
from devmemtcp.errors import DevmemError, ValidationError
from devmemtcp.memory import MemfdBuffer, cuda_ops
from devmemtcp.memory.cuda import CudaBuffer
from devmemtcp.pattern import pattern_bytes
from devmemtcp.validate import CudaFragValidator, FragValidator, frag_validator
from unit.memory import fake_cupy
from unit.memory.fake_cuda import FakeDriver

PS = 4096


def batch(offs: np.ndarray, sizes: np.ndarray) -> FragBatch:
    n = offs.shape[0]
    return FragBatch(offs.astype(np.uint64), sizes.astype(np.uint32), np.arange(1, n + 1, dtype=np.uint32),
                     np.ones(n, np.uint32))


def test_gather_one_launch_per_batch_equals_host(fakes: FakeDriver) -> None:
    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, 64 * PS, dtype=np.uint8)
    with CudaBuffer(64 * PS, drv=fakes) as dev, MemfdBuffer(64 * PS) as host:
        dev.copy_in(0, data)
        host.copy_in(0, data)
        fb = batch(rng.permutation(64)[:40] * PS + rng.integers(0, 100, 40), rng.integers(1, PS - 100, 40))
        got = dev.gather(fb)
        assert fake_cupy.RawModule.launches == ["devmemtcp_gather"]
        assert np.asarray(got).tobytes() == host.gather(fb).tobytes()
        out = sys.modules["cupy"].zeros(fb.nbytes + 10)
        assert np.asarray(dev.gather(fb, out)).tobytes() == host.gather(fb).tobytes()
        with pytest.raises(DevmemError, match="at least"):
            dev.gather(fb, sys.modules["cupy"].zeros(fb.nbytes - 1))
        with pytest.raises(DevmemError, match="outside the dma-buf"):
            dev.gather(batch(np.array([64 * PS - 10]), np.array([20])))


def test_whole_pages_upload_page_numbers(fakes: FakeDriver) -> None:
    cp = sys.modules["cupy"]
    rng = np.random.default_rng(8)
    data = rng.integers(0, 256, 64 * PS, dtype=np.uint8)
    with CudaBuffer(64 * PS, drv=fakes) as dev, MemfdBuffer(64 * PS) as host:
        dev.copy_in(0, data)
        host.copy_in(0, data)
        fb = batch(rng.permutation(64)[:30] * PS, np.full(30, PS))
        plan = cuda_ops.plan_gather(fb.offset, fb.size)
        assert plan.pages is not None and plan.pages.dtype == np.uint32
        assert cuda_ops.upload_plan(plan).kind == "pages"
        assert np.asarray(dev.gather(fb)).tobytes() == host.gather(fb).tobytes()
        assert fake_cupy.RawModule.launches == ["devmemtcp_gather_pages"]
        # a destination that is not 16-byte aligned takes the triplets
        out = cp.zeros(fb.nbytes + 1)[1:]
        assert np.asarray(dev.gather(fb, out)).tobytes() == host.gather(fb).tobytes()
        assert fake_cupy.RawModule.launches[-1] == "devmemtcp_gather"
        assert cuda_ops.plan_gather(fb.offset[:3] + 1, fb.size[:3]).pages is None


def test_device_validator_offsets_and_first_mismatch(fakes: FakeDriver) -> None:
    with CudaBuffer(32 * PS, drv=fakes) as buf:
        buf.copy_in(0, pattern_bytes(7, 0, 32 * PS))
        v = frag_validator(7, buf)
        assert isinstance(v, CudaFragValidator)
        v.check_frags(np.arange(8, dtype=np.uint64) * PS, np.full(8, PS, np.uint32))
        assert v.checker.offset == 8 * PS
        # host bytes (linear / readable) continue the same stream
        v.check_bytes(pattern_bytes(7, 8 * PS, 5))
        assert v.checker.offset == 8 * PS + 5
        buf.copy_in(0, pattern_bytes(7, 8 * PS + 5, 16 * PS))  # the next frags: pages 0..15 again
        buf.copy_in(9 * PS + 77, b"\x00")
        fake_cupy.RawModule.launches.clear()
        # pages out of order: the bad byte is in the 10th frag of the batch
        order = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], dtype=np.uint64)
        with pytest.raises(ValidationError) as ei:
            v.check_frags(order * PS, np.full(12, PS, np.uint32))
        assert fake_cupy.RawModule.launches == ["devmemtcp_validate"]
        want_at = 8 * PS + 5 + 9 * PS + 77
        assert ei.value.offset == want_at and ei.value.received == 0
        assert ei.value.expected == pattern_bytes(7, want_at, 1)[0]
        assert v.checker.offset == want_at


def test_validator_dispatch(fakes: FakeDriver) -> None:
    with MemfdBuffer(PS) as host:
        assert type(frag_validator(7, host)) is FragValidator


def test_no_cupy_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    drv = FakeDriver()
    with CudaBuffer(PS, drv=drv) as buf:
        with pytest.raises(DevmemError, match="CuPy is not installed") as ei:
            buf.gather(batch(np.array([0]), np.array([10])))
        assert "devmemtcp[gpu]" in (ei.value.hint or "")
        with pytest.raises(DevmemError, match="CuPy is not installed"):
            frag_validator(7, buf)


def test_validated_demo_over_cuda_memory(fakes: FakeDriver) -> None:
    from devmemtcp.transfer import run_demo

    before = len(os.listdir("/proc/self/fd"))
    demo = run_demo(nbytes=8 << 20, validate=7, backend="emulated", memory="cuda", size=256 * PS)
    assert demo["validated"] is True and demo["bytes"] == 8 << 20
    assert "devmemtcp_validate" in fake_cupy.RawModule.launches
    # both dma-bufs freed: the fd first, then the memory; no context or staging left
    assert not fakes.device_mem and not fakes.host_mem and fakes.ctx_refs == 0
    frees = [e for e in fakes.log if e[0] == "free"]
    assert len(frees) == 2 and not any(e[2] for e in frees)
    assert len(os.listdir("/proc/self/fd")) == before


def test_demo_over_cuda_memory_catches_corruption(fakes: FakeDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    from devmemtcp.transfer import run_demo

    real = CudaBuffer.write_at
    calls = {"n": 0}

    def corrupt(self: CudaBuffer, offsets: Any, sizes: Any, src: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            src[100] ^= 0xFF  # the NIC's DMA of the third batch goes wrong at its byte 100
        real(self, offsets, sizes, src)

    monkeypatch.setattr(CudaBuffer, "write_at", corrupt)
    with pytest.raises(ValidationError) as ei:
        run_demo(nbytes=8 << 20, validate=7, backend="emulated", memory="cuda", size=256 * PS)
    assert ei.value.offset > 0 and ei.value.received != ei.value.expected
    assert not fakes.device_mem and fakes.ctx_refs == 0


def test_bench_gather_cuda_report(fakes: FakeDriver) -> None:
    """bench gather's CUDA run end to end over the doubles: its correctness check
    passes, the report has the fields gpu_check.sh reads, and it renders."""
    import io

    from rich.console import Console

    from devmemtcp.bench.gather import run_gather
    from devmemtcp.cli.bench import print_gather

    r = run_gather("cuda", frags=64, repeat=2)
    assert r["memory"] == "cuda" and r["device"] == "Fake GPU" and r["driver"] == "12.4"
    kinds = {c["frag_size"]: c["frag_list"] for c in r["cases"]}
    assert kinds == {4096: "pages", 1448: "triplets"}
    for c in r["cases"]:
        assert c["bytes"] == 64 * c["frag_size"] and c["rows"] == 64
        for k in ("gather_gbps", "copy_gbps", "ratio", "ratio_with_upload", "upload_us", "plan_ms"):
            assert c[k] > 0
    assert set(r["targets"]) == {"gather/copy, 4096-byte frags", "gather/copy, 1448-byte frags"}
    assert {t["target"] for t in r["targets"].values()} == {">= 0.8", ">= 0.5"}
    assert any(e[0] == "dtod" for e in fakes.log)
    out = io.StringIO()
    print_gather(Console(file=out, width=200), r)
    assert "Fake GPU" in out.getvalue() and "targets" in out.getvalue()
    assert not fakes.device_mem and fakes.ctx_refs == 0
