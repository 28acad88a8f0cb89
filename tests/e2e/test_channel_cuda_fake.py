"""The data API with ``memory="cuda"`` on the emulated NIC, over the CUDA
driver double (tests/unit/memory/fake_cuda.py) and CuPy's double
(tests/unit/memory/fake_cupy.py), whose "device memory" is host memory.

What this shows without a GPU: the channel's CUDA paths are chosen (device
gather through the dma-buf's own gather, one kernel launch per batch; TX
staging device to device for device sources and host to device for host
sources; empty() inside the TX dma-buf with no copy; a host destination
gathered on the device and copied back once), the bytes arrive intact, the
host-copy counters say which copies the host made, and nothing is left on the
driver after close. Real CUDA tensors are in test_channel_cuda_gpu.py.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np
import pytest

import devmemtcp
from devmemtcp.channel.device import is_device_array
from devmemtcp.errors import ChannelError
from devmemtcp.memory import cuda as mcuda
from e2e.channel_helpers import HOST, Bg
from e2e.channel_helpers import pair as channel_pair
from unit.memory import fake_cupy
from unit.memory.fake_cuda import FakeDriver

pytestmark = pytest.mark.root  # the emulated NIC's state and NIC set-up

#: a connected pair of CUDA memory channels (memory= overrides)
pair = functools.partial(channel_pair, memory="cuda")


def test_host_source_to_device_destination(fakes: FakeDriver) -> None:
    arr = np.random.default_rng(1).integers(0, 1 << 30, (512, 300), dtype=np.int64)
    with pair() as (srv, cli):
        assert srv._dev is not None and cli._dev is not None
        done = Bg(lambda: cli.send(arr, tag=3))
        got = srv.recv(tag=3, like="cupy")
        done.result()
        assert is_device_array(got) and got.shape == arr.shape and got.dtype == arr.dtype
        assert np.array_equal(got.get(), arr)
        assert srv.stats["rx"]["host_copy_bytes"] == 0  # gathered on the device, into the device
        assert cli.stats["tx"]["host_copy_bytes"] == arr.nbytes  # host to device into the TX dma-buf
        launches = fake_cupy.RawModule.launches
        assert launches and set(launches) <= {"devmemtcp_gather", "devmemtcp_gather_pages"}
        assert len(launches) <= srv.stats["rx"]["frags"]  # per batch, never per frag
    assert not fakes.device_mem and not fakes.host_mem  # every allocation freed on close


def test_device_source_to_host_destination(fakes: FakeDriver) -> None:
    cp = sys.modules["cupy"]
    src = cp.asarray(np.arange(3 << 18, dtype=np.float32))
    with pair() as (srv, cli):
        done = Bg(lambda: cli.send(src))
        got = srv.recv()  # like="numpy": device gather, then one copy to the host
        done.result()
        assert type(got) is np.ndarray and np.array_equal(got, np.asarray(src))
        assert cli.stats["tx"]["host_copy_bytes"] == 0  # device to device
        assert srv.stats["rx"]["host_copy_bytes"] == src.nbytes


def test_recv_into_device_and_host_out_and_bad_out_keeps_the_message(fakes: FakeDriver) -> None:
    cp = sys.modules["cupy"]
    a = np.arange(10000, dtype=np.int32)
    with pair() as (srv, cli):
        cli.send(a, tag=1)
        cli.send(a * 2, tag=1)
        with pytest.raises(ChannelError, match="too small"):
            srv.recv_into(cp.empty(100, dtype=np.int32), tag=1)
        dev_out = cp.zeros(10000, dtype=np.int32)
        assert srv.recv_into(dev_out, tag=1) == a.nbytes  # the first message, still there
        assert np.array_equal(dev_out.get(), a)
        host_out = np.zeros(10000, np.int32)
        assert srv.recv_into(host_out, tag=1) == a.nbytes
        assert np.array_equal(host_out, a * 2)
        assert srv.stats["rx"]["host_copy_bytes"] == a.nbytes  # only the host destination


def test_empty_lives_in_the_tx_dmabuf_and_sends_without_a_copy(fakes: FakeDriver) -> None:
    with pair() as (srv, cli):
        buf = cli.empty((64, 1024), np.float32)
        assert is_device_array(buf)
        assert cli._dev is not None and cli._dev.tx_offset(buf.reshape(-1).view(np.uint8)) is not None
        buf[...] = np.arange(buf.size, dtype=np.float32).reshape(buf.shape)
        want = np.asarray(buf).copy()
        done = Bg(lambda b=buf: cli.send(b, tag=9))
        with srv.recv_frags(tag=9) as msg:
            out = msg.gather(like="cupy")
        done.result()
        assert np.array_equal(out.get(), want)
        st = cli.stats["tx"]
        assert st["host_copy_bytes"] == 0 and st["bytes"] == want.nbytes
        cli.flush()
        del buf
        cli.empty(1 << 20)  # the dropped array's region came back


def test_held_and_spilled_messages_on_the_device(fakes: FakeDriver) -> None:
    parts = [np.full((1 << 20) // 4, i, dtype=np.int32) for i in range(6)]
    with pair(dmabuf_size=4 << 20) as (srv, cli):
        def sender() -> None:
            for i, p in enumerate(parts):
                cli.send(p, tag=100 + i)
            cli.send(np.array([42]), tag=7)

        done = Bg(sender)
        assert srv.recv(tag=7, like="cupy").get()[0] == 42  # behind 6 MiB on a 4 MiB dma-buf
        done.result()
        assert srv.stats["spilled"] > 0 and srv.stats["parked"] > 0
        for i in range(6):
            assert np.array_equal(srv.recv(tag=100 + i, like="cupy").get(), parts[i])
        assert srv.stats["rx"]["host_copy_bytes"] == 0  # spills went to device memory


def test_like_torch_without_cuda_torch_is_a_clear_error(fakes: FakeDriver) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("torch has CUDA here: test_channel_cuda_gpu.py covers it")
    with pair() as (srv, cli):
        cli.send(np.arange(10))
        with pytest.raises(ChannelError, match="torch with CUDA"):
            srv.recv(like="torch")
        assert np.array_equal(srv.recv(like="cupy").get(), np.arange(10))  # still receivable
        with pytest.raises(ChannelError, match="torch with CUDA"):
            cli.empty(10, like="torch")
        with pytest.raises(ChannelError, match="no host view"):
            cli.empty(10, like="numpy")
        whole = cli._tx_dmabuf.size - cli._ring
        assert cli.empty(whole).nbytes == whole  # the refused calls took no room


def test_host_channel_refuses_device_likes() -> None:
    with pair(memory="host") as (srv, cli):
        assert srv._dev is None
        with pytest.raises(ChannelError, match="host memory channel"):
            cli.empty(10, like="cupy")
        cli.send(np.arange(5))
        with pytest.raises(ChannelError, match="needs a CUDA channel"):
            srv.recv(like="cupy")
        assert np.array_equal(srv.recv(), np.arange(5))


def test_is_device_array_dispatch() -> None:
    class Cai:
        @property
        def __cuda_array_interface__(self) -> dict[str, Any]:
            return {"data": (0, False)}

    class Dl:
        def __init__(self, dev: int) -> None:
            self.dev = dev

        def __dlpack_device__(self) -> tuple[int, int]:
            return (self.dev, 0)

    assert is_device_array(Cai())
    assert is_device_array(Dl(2)) and is_device_array(Dl(13))
    assert not is_device_array(Dl(1))  # kDLCPU
    assert not is_device_array(np.zeros(3)) and not is_device_array(bytearray(3))
    torch = pytest.importorskip("torch")
    assert not is_device_array(torch.zeros(3))


def test_cuda_provider_usable_follows_cuda_python(monkeypatch: pytest.MonkeyPatch) -> None:
    from devmemtcp.channel.device import cuda_provider_usable
    from devmemtcp.errors import DevmemError

    monkeypatch.setattr(mcuda, "driver", lambda: FakeDriver())
    assert cuda_provider_usable()

    def missing() -> Any:
        raise DevmemError("cuda-python is not installed", "pip install 'devmemtcp[cuda]'")

    monkeypatch.setattr(mcuda, "driver", missing)
    assert not cuda_provider_usable()


def test_device_array_on_a_host_channel_is_a_clear_error(fakes: FakeDriver) -> None:
    class OnGpu:
        def __dlpack__(self, **kw: Any) -> Any:
            raise AssertionError("not to be exported to the host")

        def __dlpack_device__(self) -> tuple[int, int]:
            return (2, 0)

    with pair(memory="host") as (_srv, cli), pytest.raises(ChannelError, match="cannot be sent from host"):
        cli.send(OnGpu())


def test_driver_shaped_frags_gather_on_the_device(fakes: FakeDriver) -> None:
    from devmemtcp.backend.emulated import EmulatedBackend

    EmulatedBackend().nic("lo").set_capabilities(frags="driver")  # frags as a real NIC's driver places them
    arr = np.random.default_rng(7).integers(0, 256, (5 << 20) + 123, dtype=np.uint8)
    with pair(streams=2) as (srv, cli):
        done = Bg(lambda: cli.send(arr))
        got = srv.recv(like="cupy")
        done.result()
        assert np.array_equal(got.get(), arr)
        assert srv.stats["rx"]["host_copy_bytes"] == 0
        assert "devmemtcp_gather" in fake_cupy.RawModule.launches  # irregular frags: the triplet kernel


def test_cuda_channel_without_cupy_is_one_clear_error_and_frees_everything(
        monkeypatch: pytest.MonkeyPatch) -> None:
    drv = FakeDriver()
    monkeypatch.setattr(mcuda, "driver", lambda: drv)
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    with devmemtcp.listen(HOST, 0, backend="emulated", memory="cuda") as lis:
        acc = Bg(lambda: lis.accept(timeout=10))
        with pytest.raises(ChannelError, match="CuPy is not installed") as ei:
            devmemtcp.connect(HOST, lis.port, backend="emulated", memory="cuda")
        assert "devmemtcp[gpu]" in (ei.value.hint or "")
        with pytest.raises(ChannelError, match="CuPy is not installed"):
            acc.result()
    assert not drv.device_mem and not drv.host_mem and drv.ctx_refs == 0
