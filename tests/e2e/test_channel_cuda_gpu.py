"""The data API with real CUDA memory and tensors (``memory="cuda"``) on the
emulated NIC: needs a GPU with dma-buf export, cuda-python, CuPy and torch
with CUDA (skipped with the reason otherwise). The same paths over the
driver and CuPy doubles run everywhere in test_channel_cuda_fake.py."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import devmemtcp

pytestmark = [pytest.mark.root, pytest.mark.gpu]

HOST = "127.0.0.1"


@pytest.fixture
def torch() -> Any:
    t = pytest.importorskip("torch")
    pytest.importorskip("cupy")
    pytest.importorskip("cuda.bindings")
    if not t.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    return t


def _bg(fn: Callable[[], Any]) -> Callable[[], Any]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["v"] = fn()
        except BaseException as exc:
            box["e"] = exc

    th = threading.Thread(target=run, daemon=True)
    th.start()

    def result() -> Any:
        th.join(120)
        assert not th.is_alive()
        if "e" in box:
            raise box["e"]
        return box.get("v")

    return result


@contextlib.contextmanager
def pair(**kw: Any) -> Iterator[tuple[devmemtcp.Channel, devmemtcp.Channel]]:
    with devmemtcp.listen(HOST, 0, backend="emulated", memory="cuda", **kw) as lis:
        acc = _bg(lambda: lis.accept(timeout=30))
        with devmemtcp.connect(HOST, lis.port, backend="emulated", memory="cuda", **kw) as cli, acc() as srv:
            yield srv, cli


def _free_bytes() -> int:
    """Free device memory of GPU 0 (cuMemGetInfo in the primary context)."""
    from devmemtcp.memory.cuda import driver

    drv = driver()
    drv.cuInit(0)
    _, dev = drv.cuDeviceGet(0)
    _, ctx = drv.cuDevicePrimaryCtxRetain(dev)
    drv.cuCtxPushCurrent(ctx)
    try:
        err, free, _total = drv.cuMemGetInfo()
        assert int(err) == 0
        return int(free)
    finally:
        drv.cuCtxPopCurrent()
        drv.cuDevicePrimaryCtxRelease(dev)


def test_cuda_tensor_round_trips(torch: Any) -> None:
    free0 = _free_bytes()
    with pair(dmabuf_size=64 << 20) as (srv, cli):
        for dt in (torch.float32, torch.bfloat16, torch.int64, torch.uint8):
            src = (torch.arange(3 << 20, device="cuda:0") % 251).to(dt).reshape(3, -1)
            done = _bg(lambda s=src: cli.send(s, tag=1))
            got = srv.recv(tag=1, like="torch")
            done()
            assert got.is_cuda and got.dtype == dt and got.shape == src.shape
            assert torch.equal(got, src)
        assert srv.stats["rx"]["host_copy_bytes"] == 0 and cli.stats["tx"]["host_copy_bytes"] == 0
        # 300 MiB through a 64 MiB dma-buf, into a preallocated CUDA tensor
        big = torch.randint(0, 255, (300 << 20,), dtype=torch.uint8, device="cuda:0")
        out = torch.empty_like(big)
        done = _bg(lambda b=big: cli.send(b))
        assert srv.recv_into(out) == big.numel()
        done()
        assert torch.equal(out, big)
        # host destination: one device-to-host copy
        done = _bg(lambda b=big: cli.send(b[: 1 << 20]))
        host = srv.recv()
        done()
        assert isinstance(host, np.ndarray) and np.array_equal(host, big[: 1 << 20].cpu().numpy())
        assert srv.stats["rx"]["host_copy_bytes"] == 1 << 20
    torch.cuda.synchronize()
    del big, out
    torch.cuda.empty_cache()
    assert _free_bytes() >= free0 - (8 << 20)  # the channels' dma-bufs were freed


def test_empty_is_a_cuda_tensor_in_the_tx_dmabuf(torch: Any) -> None:
    with pair() as (srv, cli):
        buf = cli.empty((1024, 1024), np.float32, like="torch")
        assert buf.is_cuda
        buf.copy_(torch.arange(buf.numel(), device="cuda:0", dtype=torch.float32).reshape(buf.shape))
        done = _bg(lambda: cli.send(buf))
        got = srv.recv(like="cupy")
        done()
        assert cli.stats["tx"]["host_copy_bytes"] == 0
        assert torch.equal(torch.from_dlpack(got), buf)
