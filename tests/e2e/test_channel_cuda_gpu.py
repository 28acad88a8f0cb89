"""The data API with real CUDA memory and tensors (``memory="cuda"``) on the
emulated NIC: needs a GPU with dma-buf export, cuda-python, CuPy and torch
with CUDA (skipped with the reason otherwise). The same paths over the
driver and CuPy doubles run everywhere in test_channel_cuda_fake.py."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

from e2e.channel_helpers import Bg
from e2e.channel_helpers import pair as channel_pair
from unit.memory.gpu import device_free_bytes

pytestmark = [pytest.mark.root, pytest.mark.gpu]

@pytest.fixture
def torch() -> Any:
    t = pytest.importorskip("torch")
    pytest.importorskip("cupy")
    pytest.importorskip("cuda.bindings")
    if not t.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    return t


#: a connected pair of CUDA memory channels (memory= overrides)
pair = functools.partial(channel_pair, memory="cuda")


def test_cuda_tensor_round_trips(torch: Any) -> None:
    free0 = device_free_bytes()
    with pair(dmabuf_size=64 << 20) as (srv, cli):
        for dt in (torch.float32, torch.bfloat16, torch.int64, torch.uint8):
            src = (torch.arange(3 << 20, device="cuda:0") % 251).to(dt).reshape(3, -1)
            done = Bg(lambda s=src: cli.send(s, tag=1))
            got = srv.recv(tag=1, like="torch")
            done.result()
            assert got.is_cuda and got.dtype == dt and got.shape == src.shape
            assert torch.equal(got, src)
        assert srv.stats["rx"]["host_copy_bytes"] == 0 and cli.stats["tx"]["host_copy_bytes"] == 0
        # 300 MiB through a 64 MiB dma-buf, into a preallocated CUDA tensor
        big = torch.randint(0, 255, (300 << 20,), dtype=torch.uint8, device="cuda:0")
        out = torch.empty_like(big)
        done = Bg(lambda b=big: cli.send(b))
        assert srv.recv_into(out) == big.numel()
        done.result()
        assert torch.equal(out, big)
        # host destination: one device-to-host copy
        done = Bg(lambda b=big: cli.send(b[: 1 << 20]))
        host = srv.recv()
        done.result()
        assert isinstance(host, np.ndarray) and np.array_equal(host, big[: 1 << 20].cpu().numpy())
        assert srv.stats["rx"]["host_copy_bytes"] == 1 << 20
    torch.cuda.synchronize()
    del big, out
    torch.cuda.empty_cache()
    assert device_free_bytes() >= free0 - (8 << 20)  # the channels' dma-bufs were freed


def test_empty_is_a_cuda_tensor_in_the_tx_dmabuf(torch: Any) -> None:
    with pair() as (srv, cli):
        buf = cli.empty((1024, 1024), np.float32, like="torch")
        assert buf.is_cuda
        buf.copy_(torch.arange(buf.numel(), device="cuda:0", dtype=torch.float32).reshape(buf.shape))
        done = Bg(lambda: cli.send(buf))
        got = srv.recv(like="cupy")
        done.result()
        assert cli.stats["tx"]["host_copy_bytes"] == 0
        assert torch.equal(torch.from_dlpack(got), buf)
