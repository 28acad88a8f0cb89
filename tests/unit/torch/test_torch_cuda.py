"""The devmem backend and CUDA: device "cuda" is registered only where the
CUDA provider can be used (cuda-python imports), and CUDA memory is a valid
``memory`` option. No GPU is needed here; CUDA tensors on two ranks are in
tests/e2e/test_torch_cuda_gpu.py."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

import devmemtcp.torch as dtorch  # noqa: E402
from devmemtcp.channel import device  # noqa: E402
from devmemtcp.errors import DevmemError  # noqa: E402
from devmemtcp.torch.config import Options, resolve  # noqa: E402


@pytest.mark.parametrize(("usable", "devices"), [(True, ["cpu", "cuda"]), (False, ["cpu"])])
def test_cuda_device_registered_only_with_the_provider(monkeypatch: pytest.MonkeyPatch, usable: bool,
                                                        devices: list[str]) -> None:
    name = f"devmem_cuda_test_{int(usable)}"
    monkeypatch.setattr(device, "cuda_provider_usable", lambda: usable)
    monkeypatch.setattr(dist.Backend, "_plugins", dict(dist.Backend._plugins))
    monkeypatch.setattr(dist.Backend, "backend_capability", dict(dist.Backend.backend_capability))
    dtorch.register(name)
    assert list(dist.Backend.backend_capability[name]) == devices


@pytest.mark.parametrize("memory", ["cuda", "cuda:1"])
def test_cuda_memory_is_an_option(memory: str) -> None:
    env: dict[str, Any] = {"MASTER_ADDR": "127.0.0.1", "DEVMEMTCP_IFNAME": "lo"}
    assert resolve(Options(memory=memory), env).memory == memory
    with pytest.raises(DevmemError, match="unknown memory"):
        resolve(None, {**env, "DEVMEMTCP_MEMORY": "cuda:x"})
