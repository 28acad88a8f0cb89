"""A test double of the part of CuPy that memory/cuda_ops.py uses, for the
"device memory" of fake_cuda.FakeDriver (which is host memory).

Arrays are numpy arrays with CuPy's ``.get()``; RawModule's two kernels are
replaced by numpy code written from their specification (gather: copy each
(src, len, dst) triplet; validate: the smallest stream offset whose byte
differs from ncdevmem's pattern). It checks the Python side of cuda_ops (the
plan handed over, the launch arguments, the mismatch bookkeeping) and the
code above it on a machine without a GPU; the CUDA C itself is compiled by
test_cuda_kernels.py and run by test_cuda_gpu.py on a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from types import ModuleType, SimpleNamespace
from typing import Any, ClassVar

import numpy as np


class FakeArray(np.ndarray):
    def get(self, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return np.array(self)
        assert out.shape == self.shape and type(out) is np.ndarray, "get(out=): a host array of the shape"
        out[...] = self
        return out

    def set(self, arr: np.ndarray) -> None:
        assert type(arr) is np.ndarray and arr.shape == self.shape, "set() takes a host array of the shape"
        self[...] = arr

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"data": (self.ctypes.data, False)}


def _fa(a: Any) -> FakeArray:
    return np.asarray(a).view(FakeArray)


class UnownedMemory:
    def __init__(self, ptr: int, size: int, owner: object, device_id: int = -1) -> None:
        self.ptr, self.size, self.owner, self.device_id = ptr, size, owner, device_id


class MemoryPointer:
    def __init__(self, mem: UnownedMemory, offset: int) -> None:
        self.mem, self.ptr = mem, mem.ptr + offset


def ndarray(shape: tuple[int, ...], dtype: Any, memptr: MemoryPointer) -> FakeArray:
    n = int(np.prod(shape))
    raw = (ctypes.c_uint8 * (n * np.dtype(dtype).itemsize)).from_address(memptr.ptr)
    arr = _fa(np.ctypeslib.as_array(raw).view(dtype).reshape(shape))
    arr._memptr = memptr  # type: ignore[attr-defined]  # as CuPy: the array keeps its memory's owner
    return arr


def _gather(grid: tuple[int], block: tuple[int], args: tuple[Any, ...]) -> None:
    pool, out, trip, n = args
    for src, ln, dst in np.asarray(trip).reshape(-1, 3)[: int(n)].tolist():
        out[dst:dst + ln] = pool[src:src + ln]


def _gather_pages(grid: tuple[int], block: tuple[int], args: tuple[Any, ...]) -> None:
    pool, out, pages, n, words = args
    ps = int(words) * 16
    assert out.ctypes.data % 16 == 0 and pool.ctypes.data % 16 == 0
    for i, p in enumerate(np.asarray(pages)[: int(n)].tolist()):
        out[i * ps:(i + 1) * ps] = pool[p * ps:(p + 1) * ps]


def _validate(grid: tuple[int], block: tuple[int], args: tuple[Any, ...]) -> None:
    pool, trip, n, base, period, bad = args
    period = int(period)
    for src, ln, dst in np.asarray(trip).reshape(-1, 3)[: int(n)].tolist():
        pos = int(base) + dst + np.arange(ln)
        phase = pos % period
        want = np.where(phase == period - 1, 10, phase + 1).astype(np.uint8)
        wrong = np.flatnonzero(np.asarray(pool[src:src + ln]) != want)
        if wrong.size:
            bad[0] = min(int(bad[0]), int(pos[wrong[0]]))


class Event:
    def __init__(self) -> None:
        self.t = 0.0

    def record(self, stream: object = None) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass


def _elapsed_ms(a: Event, b: Event) -> float:
    return (b.t - a.t) * 1e3 + 1e-6  # never 0: the bench divides by it


class RawModule:
    launches: ClassVar[list[str]] = []

    def __init__(self, code: str, options: tuple[str, ...] = ()) -> None:
        assert all(f"void {k}(" in code for k in ("devmemtcp_gather", "devmemtcp_gather_pages",
                                                   "devmemtcp_validate"))

    def get_function(self, name: str) -> Any:
        fn = {"devmemtcp_gather": _gather, "devmemtcp_gather_pages": _gather_pages,
              "devmemtcp_validate": _validate}[name]

        def launch(grid: tuple[int], block: tuple[int], args: tuple[Any, ...]) -> None:
            RawModule.launches.append(name)
            fn(grid, block, args)
        return launch


class _Stream:
    ptr = 0
    syncs = 0

    def synchronize(self) -> None:
        _Stream.syncs += 1


_STREAM = _Stream()


def make_module() -> ModuleType:
    cp = ModuleType("cupy")
    cp.uint8 = np.uint8  # type: ignore[attr-defined]
    cp.uint64 = np.uint64  # type: ignore[attr-defined]
    cp.ndarray = ndarray  # type: ignore[attr-defined]
    cp.asarray = _fa  # type: ignore[attr-defined]
    cp.asnumpy = np.asarray  # type: ignore[attr-defined]
    cp.ascontiguousarray = lambda a: _fa(np.ascontiguousarray(a))  # type: ignore[attr-defined]
    cp.from_dlpack = lambda a: _fa(np.from_dlpack(a))  # type: ignore[attr-defined]
    cp.empty = lambda n, dtype=np.uint8: _fa(np.empty(n, dtype))  # type: ignore[attr-defined]
    cp.zeros = lambda n, dtype=np.uint8: _fa(np.zeros(n, dtype))  # type: ignore[attr-defined]
    cp.full = lambda n, v, dtype=np.uint8: _fa(np.full(n, v, dtype))  # type: ignore[attr-defined]
    cp.RawModule = RawModule  # type: ignore[attr-defined]
    cp.cuda = SimpleNamespace(  # type: ignore[attr-defined]
        Device=lambda device=0: contextlib.nullcontext(), UnownedMemory=UnownedMemory,
        MemoryPointer=MemoryPointer, Event=Event, get_elapsed_time=_elapsed_ms,
        get_current_stream=lambda: _STREAM)
    rng = np.random.default_rng(0)
    cp.random = SimpleNamespace(  # type: ignore[attr-defined]
        randint=lambda lo, hi, n, dtype=np.uint8: _fa(rng.integers(lo, hi, n, dtype=dtype)))
    return cp
