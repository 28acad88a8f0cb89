"""The devmem torch backend with CUDA tensors on two ranks (DEVMEMTCP_MEMORY=cuda:0, both ranks on
GPU 0, the emulated NIC on lo): needs a GPU with dma-buf export, cuda-python, CuPy and torch with
CUDA (skipped with the reason otherwise)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from torch_job import run_job

pytestmark = [pytest.mark.root, pytest.mark.gpu]


def test_cuda_tensors_two_ranks() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("cupy")
    pytest.importorskip("cuda.bindings")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    r = run_job("cuda_p2p", 2, env={"DEVMEMTCP_MEMORY": "cuda:0", "DEVMEMTCP_BACKEND": "emulated"})
    assert r.ok(), r.describe()
    assert r.results[0]["cases"] == r.results[1]["cases"] == 15
