"""The device kernels of memory/cuda_ops.py compile (NVRTC, no GPU needed):
the CUDA C that CuPy builds at the first gather is valid for the GPU
generations devmem TCP machines have (Ampere, Hopper). Running them needs a
GPU: tests/unit/memory/test_cuda_gpu.py."""

from __future__ import annotations

from typing import Any

import pytest

from devmemtcp.memory.cuda_ops import _KERNELS


def _nvrtc() -> Any:
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="needs cuda-python (the [cuda] extra)")
    try:
        nvrtc.nvrtcVersion()
    except Exception as exc:  # the library is found at first use
        pytest.skip(f"needs NVRTC to compile without a GPU (pip install nvidia-cuda-nvrtc-cu12): {exc}")
    return nvrtc


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_kernels_compile(arch: str) -> None:
    n = _nvrtc()
    err, prog = n.nvrtcCreateProgram(_KERNELS.encode(), b"devmemtcp.cu", 0, [], [])
    assert int(err) == 0
    opts = [b"--std=c++14", f"--gpu-architecture={arch}".encode()]
    (err,) = n.nvrtcCompileProgram(prog, len(opts), opts)
    _, size = n.nvrtcGetProgramLogSize(prog)
    log = bytearray(size)  # NVRTC writes into it: never an (interned) bytes object
    n.nvrtcGetProgramLog(prog, log)
    assert int(err) == 0, bytes(log).decode(errors="replace")
    _, size = n.nvrtcGetPTXSize(prog)
    ptx = bytearray(size)
    n.nvrtcGetPTX(prog, ptx)
    entries = [ln.split()[-1] for ln in bytes(ptx).rstrip(b"\0").decode().splitlines() if ".entry" in ln]
    assert entries == ["devmemtcp_gather(", "devmemtcp_gather_pages(", "devmemtcp_validate("]
    n.nvrtcDestroyProgram(prog)
