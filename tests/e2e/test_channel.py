"""The data API (devmemtcp.listen / connect / Channel) on the emulated NIC over lo.

Both ends run in this process (the listener's accept in a thread), sharing
the process's emulated backend, each end with its own RX queues, rules and
dma-bufs on lo. Peers killed mid-message run in a subprocess.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import devmemtcp
from devmemtcp.channel.header import FrameType, encode_frame, encode_json
from devmemtcp.errors import ChannelClosed, ChannelError
from e2e.channel_helpers import HOST, Bg, nic_clean, pair, roundtrip

pytestmark = pytest.mark.root  # the emulated NIC and NIC set-up keep state under /run (per test here)

SRC = str(Path(__file__).resolve().parents[2] / "src")


DTYPES = ["?", "i1", "<i2", ">i4", "<i8", "u1", "<u2", "<u4", "<u8", "<f2", "<f4", ">f8", "<c8", "<c16",
          np.longdouble, np.clongdouble, "S5", "<U3", "<M8[ns]", "<m8[s]", "V7",
          [("a", "<i4"), ("b", ">f8", (2,))]]


def _sample(dtype: np.dtype[Any], shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    raw = np.random.default_rng(seed).integers(0, 256, int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    arr = raw.view(dtype).reshape(shape)
    if dtype.kind in "fc":  # no NaN payloads: compare by value
        arr = np.asarray(np.arange(arr.size).reshape(shape) / 3).astype(dtype)
    if dtype.kind == "b":
        arr = (raw[: arr.size] & 1).astype(bool).reshape(shape)
    return arr


def test_every_numpy_dtype_zero_d_and_empty() -> None:
    with pair() as (srv, cli):
        for i, dt in enumerate(DTYPES):
            dtype = np.dtype(dt)  # type: ignore[call-overload]
            for shape in ((3, 5), (), (0,), (2, 0, 3)):
                arr = _sample(dtype, shape, i)
                got = roundtrip(cli, srv, arr)
                assert got.dtype == dtype and got.shape == shape
                assert got.tobytes() == arr.tobytes()
        # and the other way
        back = roundtrip(srv, cli, np.arange(7, dtype=np.int16))
        assert back.tolist() == list(range(7))


def test_non_contiguous_and_fortran_sources_arrive_contiguous() -> None:
    base = np.arange(6 * 8 * 10, dtype=np.float64).reshape(6, 8, 10)
    with pair() as (srv, cli):
        for src in (base[::2, :, 1::3], base.T, np.asfortranarray(base), base[:, 3]):
            got = roundtrip(cli, srv, src)
            assert got.flags.c_contiguous and got.shape == src.shape
            assert np.array_equal(got, src)
        assert cli.stats["tx"]["host_copy_bytes"] > 0


def test_buffer_protocol_and_dlpack_objects() -> None:
    with pair() as (srv, cli):
        assert roundtrip(cli, srv, b"hello world").tobytes() == b"hello world"
        assert roundtrip(cli, srv, bytearray(b"\x01\x02")).tolist() == [1, 2]
        mv = memoryview(np.arange(4, dtype=np.int32))
        assert roundtrip(cli, srv, mv).tolist() == [0, 1, 2, 3]

        class Dl:
            def __init__(self) -> None:
                self.a = np.arange(3, dtype=np.uint16)

            def __dlpack__(self, **kw: Any) -> Any:
                return self.a.__dlpack__(**kw)

            def __dlpack_device__(self) -> Any:
                return self.a.__dlpack_device__()

        assert roundtrip(cli, srv, Dl()).tolist() == [0, 1, 2]
        with pytest.raises(ChannelError, match="not an array, tensor or buffer"):
            cli.send(object())
        with pytest.raises(ChannelError, match="Python objects"):
            cli.send(np.array([None, 1], dtype=object))


@pytest.mark.parametrize("streams", [1, 4])
def test_large_messages_stripe_and_tags_arrive_in_order(streams: int) -> None:
    with pair(streams=streams, dmabuf_size=16 << 20) as (srv, cli):
        big = np.random.default_rng(streams).integers(0, 2**63, (20 << 20) // 8, dtype=np.int64)
        got = roundtrip(cli, srv, big)
        assert np.array_equal(got, big)
        st = srv.stats
        assert st["rx"]["bytes"] == big.nbytes and st["streams_rx"] == streams
        if streams > 1:  # striped: every flow carried part of it
            assert all(r.stats.bytes > 0 for r in srv._receivers)
        # back the other way, through the connector's own flows
        got2 = roundtrip(srv, cli, big[::-1])
        assert np.array_equal(got2, big[::-1])


def test_ipv6_loopback_and_uneven_streams() -> None:
    with pair(streams=2, lstreams=3, host="::1") as (srv, cli):
        arr = np.arange(3 << 20, dtype=np.int32)
        assert np.array_equal(roundtrip(cli, srv, arr), arr)  # over the listener's 3 flows
        assert np.array_equal(roundtrip(srv, cli, arr), arr)  # over the connector's 2
        assert srv.stats["streams_rx"] == 3 and cli.stats["streams_rx"] == 2
        assert srv.stats["rx"]["flow_steering_errors"] == 0 and all(r.stats.bytes for r in srv._receivers)


def test_small_tx_dmabuf_bounds_the_stripe_unit() -> None:
    with pair(streams=2, tx_dmabuf_size=64 << 10) as (srv, cli):
        arr = np.random.default_rng(5).integers(0, 255, 3 << 20, dtype=np.uint8)
        assert np.array_equal(roundtrip(cli, srv, arr), arr)  # through a 32 KiB staging ring
        assert cli.stats["stripe_unit"] <= 32 << 10
        with pytest.raises(ChannelError, match="no room"):
            cli.empty(1 << 20)


def test_300_mib_message_through_a_64_mib_dmabuf() -> None:
    n = 300 << 20
    src = np.arange(n // 8, dtype=np.uint64)
    with pair(dmabuf_size=64 << 20) as (srv, cli):
        got = roundtrip(cli, srv, src)
        assert got.nbytes == n and np.array_equal(got, src)
        st = cli.stats
        assert st["credit_waits"] > 0  # the message streamed through the smaller dma-buf
        del got


def test_a_stream_returns_credit_in_few_frames() -> None:
    n, size = 96, 1 << 20
    msg = np.ones(size, np.uint8)
    with pair(dmabuf_size=64 << 20) as (srv, cli):
        snd = Bg(lambda: [cli.send(msg) for _ in range(n)])
        out = np.empty(size, np.uint8)
        for _ in range(n):
            srv.recv_into(out)
        snd.result()
        # a receiver that catches up with the sender holds owed credit back for
        # CREDIT_LINGER_S (the next header comes first): about one frame per
        # window // FLUSH_SHARE pages (8 MiB here), not one per wait
        frames = srv.stats["credit_frames"]
        assert frames <= n * size // (8 << 20) + 4, frames


def test_large_messages_are_gathered_with_streaming_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message of STREAM_GATHER_BYTES or more goes into its destination with
    non-temporal stores, a smaller one with plain ones; both arrive intact."""
    from devmemtcp.channel import core

    seen: list[tuple[int, bool]] = []
    real = core.gather_batch

    def spy(base: Any, batch: Any, dst: Any, stream: bool = False, base_addr: int | None = None) -> int:
        assert base_addr == base.__array_interface__["data"][0]  # the Channel's own view's address
        n = real(base, batch, dst, stream, base_addr)
        seen.append((n, stream))
        return n

    monkeypatch.setattr(core, "gather_batch", spy)
    big = np.random.default_rng(5).integers(0, 256, core.STREAM_GATHER_BYTES + 12345, dtype=np.uint8)
    small = big[: 1 << 20].copy()
    with pair(dmabuf_size=32 << 20) as (srv, cli):
        for arr in (big, small):
            snd = Bg(lambda a=arr: cli.send(a))
            out = np.empty_like(arr)
            srv.recv_into(out)
            snd.result()
            assert np.array_equal(out, arr)
    streamed = sum(n for n, s in seen if s)
    plain = sum(n for n, s in seen if not s)
    assert (streamed, plain) == (big.shape[0], small.shape[0]), seen


def test_ten_thousand_small_messages() -> None:
    count = 10_000
    with pair() as (srv, cli):

        def sender() -> None:
            for i in range(count):
                cli.send(np.array([i, i * 7], dtype=np.int64), tag=i % 3)

        snd = Bg(sender)
        out = np.empty(2, np.int64)
        for i in range(count):
            assert srv.recv_into(out) == 16
            assert out[0] == i and out[1] == 7 * i
        snd.result()
        st = srv.stats["rx"]
        assert st["messages"] == count
        # tokens go back in batches, not one syscall per message
        assert st["release_syscalls"] < count // 10


def test_both_directions_at_once_from_two_threads_each() -> None:
    """Bulk traffic both ways at the same time: each end sends from one thread
    and receives in another (a send waiting for credit does not receive)."""
    msgs = [np.full((3 << 20) // 8, i, dtype=np.int64) for i in range(8)]  # 24 MiB each way, 8 MiB dma-bufs
    with pair(streams=2, dmabuf_size=8 << 20) as (srv, cli):

        def sender(ch: devmemtcp.Channel) -> None:
            for i, m in enumerate(msgs):
                ch.send(m, tag=i % 2)

        def receiver(ch: devmemtcp.Channel) -> list[bool]:
            return [bool(np.array_equal(ch.recv(tag=i % 2), m)) for i, m in enumerate(msgs)]

        jobs = [Bg(lambda: sender(srv)), Bg(lambda: sender(cli)), Bg(lambda: receiver(srv)),
                Bg(lambda: receiver(cli))]
        results = [j.result() for j in jobs]
        assert results[2] == [True] * 8 and results[3] == [True] * 8
        assert srv.stats["credit_waits"] > 0 and cli.stats["credit_waits"] > 0


def test_tags_out_of_order_fifo_per_tag() -> None:
    with pair() as (srv, cli):
        for tag, val in ((1, 10), (2, 20), (3, 30), (1, 11), (2, 21)):
            cli.send(np.full(1000, val, dtype=np.int32), tag=tag)
        assert srv.recv(tag=3)[0] == 30
        assert srv.pending == 2  # the two before it are held (frags in the dma-buf); the rest not read yet
        assert srv.stats["parked"] == 2 and srv.stats["spilled"] == 0
        assert srv.recv(tag=2)[0] == 20
        assert srv.recv(tag=2)[0] == 21
        assert srv.recv()[0] == 10  # any tag: the oldest
        assert srv.recv(tag=1)[0] == 11
        assert srv.pending == 0


def test_unmatched_messages_are_copied_out_when_the_window_fills() -> None:
    with pair(dmabuf_size=4 << 20) as (srv, cli):
        parts = [np.full((1 << 20) // 4, i, dtype=np.int32) for i in range(6)]

        def sender() -> None:
            for i, p in enumerate(parts):
                cli.send(p, tag=100 + i)
            cli.send(np.array([42]), tag=7)

        snd = Bg(sender)
        assert srv.recv(tag=7)[0] == 42  # behind 6 MiB of others on a 4 MiB dma-buf
        snd.result()
        assert srv.stats["spilled"] > 0
        for i in range(6):
            assert np.array_equal(srv.recv(tag=100 + i), parts[i])


def test_recv_frags_zero_copy_and_empty_sends_without_copy() -> None:
    with pair() as (srv, cli):
        buf = cli.empty((256, 1024), np.float32)
        buf[:] = np.arange(buf.size, dtype=np.float32).reshape(buf.shape)
        cli.send(buf, tag=5)
        assert cli.stats["tx"]["host_copy_bytes"] == 0
        with srv.recv_frags(tag=5) as msg:
            assert msg.nbytes == buf.nbytes and msg.shape == (256, 1024) and msg.dtype == np.float32
            assert msg.frags.nbytes == buf.nbytes and len(msg.frags) >= buf.nbytes // 4096
            held = sum(r.held for r in srv._receivers)
            assert held == len(msg.frags)
            out = msg.gather()
            assert np.array_equal(out, buf)
        assert sum(r.held for r in srv._receivers) == 0
        cli.flush()
        del buf
        cli.empty(1 << 20)  # the dropped array's region came back


def test_bad_out_raises_before_consuming_and_the_message_stays() -> None:
    with pair() as (srv, cli):
        arr = np.arange(100, dtype=np.int64)
        cli.send(arr, tag=1)
        too_small = r"out holds 400 bytes, too small: the message \(tag 1\) has 800"
        with pytest.raises(ChannelError, match=too_small):
            srv.recv_into(np.empty(50, np.int64))
        ro = np.empty(100, np.int64)
        ro.flags.writeable = False
        with pytest.raises(ChannelError, match="not writable"):
            srv.recv(out=ro)
        with pytest.raises(ChannelError, match="not C-contiguous"):
            srv.recv_into(np.empty((100, 2), np.int64)[:, 0])
        with pytest.raises(ChannelError, match="read-only buffer"):
            srv.recv_into(bytes(800))
        assert srv.stats["rx"]["bytes"] == 0  # nothing consumed
        out = bytearray(800)
        assert srv.recv_into(out) == 800
        assert np.array_equal(np.frombuffer(out, np.int64), arr)
        # a held message too: out checked before its frags are touched
        cli.send(arr, tag=2)
        cli.send(np.array([1]), tag=3)
        srv.recv(tag=3)
        with pytest.raises(ChannelError, match="too small"):
            srv.recv(tag=2, out=np.empty(1, np.int64))
        assert np.array_equal(srv.recv(tag=2), arr)


def test_torch_tensors() -> None:
    torch = pytest.importorskip("torch", reason="torch is an optional extra (pip install torch==2.13.0)")
    with pair() as (srv, cli):
        for t in (torch.arange(12, dtype=torch.float32).reshape(3, 4), torch.tensor([True, False]),
                  torch.arange(6, dtype=torch.int64).reshape(2, 3).t(),
                  torch.randn(5, 3).to(torch.bfloat16), torch.tensor(3.5, dtype=torch.float16)):
            got = roundtrip(cli, srv, t, like="torch")
            assert isinstance(got, torch.Tensor) and got.dtype == t.dtype and got.shape == t.shape
            assert torch.equal(got, t.contiguous())
        out = torch.empty(3, 4)
        res = roundtrip(cli, srv, np.ones((3, 4), np.float32), out=out)
        assert res is out and bool((out == 1).all())
        got = roundtrip(cli, srv, torch.ones(2, requires_grad=True))
        assert isinstance(got, np.ndarray) and got.tolist() == [1.0, 1.0]
        cli.send(torch.zeros(2, dtype=torch.bfloat16))
        with pytest.raises(ChannelError, match="bfloat16 has no numpy equivalent"):
            srv.recv()
        assert srv.recv(like="torch").dtype == torch.bfloat16


def test_messages_sent_right_after_the_handshake() -> None:
    # the connector's first MSG can share a segment with FLOWS (and the listener's with its
    # HELLO): the decoder holds it when the Channel is made, and it must not wait for a later read
    for _ in range(5):
        lis = devmemtcp.listen(HOST, 0, backend="emulated")
        with lis:
            acc = Bg(lambda lis=lis: lis.accept(timeout=30))
            cli = devmemtcp.connect(HOST, lis.port, backend="emulated")
            with cli:
                cli.send(np.array([1]))
                srv = acc.result()
                with srv:
                    assert srv.recv(timeout=10).tolist() == [1]
                    srv.send(np.array([2]))
                    assert cli.recv(timeout=10).tolist() == [2]
    nic_clean()


def test_several_channels_at_once_on_lo() -> None:
    # each channel end binds queues of its own: the first set-up on lo takes all its channels
    with contextlib.ExitStack() as stack:
        ends = []
        for i in range(5):
            srv, cli = stack.enter_context(pair(dmabuf_size=8 << 20, clean=False))
            ends.append((srv, cli))
            assert roundtrip(cli, srv, np.array([i])).tolist() == [i]
        queues = [q for srv, cli in ends for q in (*srv._rx.queues, *cli._rx.queues)]
        assert len(set(queues)) == 10 and 0 not in queues
        for i, (srv, cli) in enumerate(ends):  # all still usable, both ways
            assert roundtrip(srv, cli, np.array([i, i])).tolist() == [i, i]
    nic_clean()


def test_recv_out_chosen_from_the_header() -> None:
    with pair() as (srv, cli):
        cli.send(np.arange(6, dtype=np.int16).reshape(2, 3), tag=11)
        seen = []

        def choose(h: Any) -> np.ndarray:
            seen.append((h.tag, h.nbytes, h.shape, h.dtype.numpy()))
            return np.empty(h.shape, h.dtype.numpy())

        got = srv.recv(out=choose)
        assert seen == [(11, 12, (2, 3), np.dtype("<i2"))] and got.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_recv_timeout_consumes_nothing() -> None:
    with pair() as (srv, cli):
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no message of tag 4 arrived within 0\.2 s"):
            srv.recv(tag=4, timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 5
        cli.send(np.array([9]), tag=3)
        with pytest.raises(TimeoutError):
            srv.recv_into(np.empty(1, np.int64), tag=4, timeout=0.2)  # tag 3 is held meanwhile
        cli.send(np.array([8]), tag=4)
        assert srv.recv(tag=4, timeout=10).tolist() == [8]
        with srv.recv_frags(timeout=10) as msg:
            assert msg.tag == 3 and msg.gather().tolist() == [9]


def test_recv_with_a_timeout_reads_queued_frames_without_select(monkeypatch: pytest.MonkeyPatch) -> None:
    from devmemtcp.channel import core

    with pair() as (srv, cli):
        cli.send(np.array([5, 6]), tag=1)
        cli.flush()
        assert _ctl_readable(srv)  # the header is queued on the control connection, not yet read
        calls: list[float] = []
        real = core.select.select

        def counting(r: Any, w: Any, x: Any, timeout: float | None = None) -> Any:
            if srv._ctl in r:
                calls.append(-1.0 if timeout is None else timeout)
            return real(r, w, x, timeout)

        monkeypatch.setattr(core.select, "select", counting)
        assert srv.recv(tag=1, timeout=10).tolist() == [5, 6]
        assert calls == []
        # nothing queued: the receive waits in select and times out, consuming nothing
        with pytest.raises(TimeoutError):
            srv.recv(timeout=0.2)
        assert calls and 0 < calls[0] <= 0.2
        cli.send(np.array([7]), tag=2)
        assert srv.recv(tag=2, timeout=10).tolist() == [7]


def _ctl_readable(ch: devmemtcp.Channel, wait: float = 10.0) -> bool:
    import select

    return bool(select.select([ch._ctl], [], [], wait)[0])


def test_peer_closing_ends_recv_cleanly() -> None:
    with pair() as (srv, cli):
        cli.send(np.array([1, 2]))
        cli.close()
        assert srv.recv().tolist() == [1, 2]  # sent before the close: still delivered
        with pytest.raises(ChannelClosed, match="peer closed the channel"):
            srv.recv()


def test_header_version_mismatch_names_both_versions() -> None:
    with socket.socket() as ls:
        ls.bind((HOST, 0))
        ls.listen(1)

        def fake() -> None:
            conn, _ = ls.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(encode_frame(FrameType.HELLO, encode_json({"protocol": 99}), version=99))
                conn.recv(1)

        bg = Bg(fake)
        with pytest.raises(ChannelError, match="the peer speaks version 99, this end version 1"):
            devmemtcp.connect(HOST, ls.getsockname()[1], backend="emulated")
        bg.result()
    nic_clean()


def test_listener_refuses_a_peer_of_another_version() -> None:
    with devmemtcp.listen(HOST, 0, backend="emulated") as lis:

        def fake() -> bytes:
            with socket.create_connection((HOST, lis.port)) as s:
                s.sendall(encode_frame(FrameType.HELLO, encode_json({"protocol": 2}), version=1))
                return s.recv(65536)

        bg = Bg(fake)
        with pytest.raises(ChannelError, match="speaks version 2, this end version 1"):
            lis.accept(timeout=10)
        assert b"version" in bg.result()
    nic_clean()


def test_flow_steering_error_names_the_rule() -> None:
    from devmemtcp.backend.emulated import EmulatedBackend

    with pair() as (srv, cli):
        rule = srv._rx.rules[0]
        EmulatedBackend().nic("lo").delete_rule(rule.location)
        time.sleep(0.3)  # the emulated NIC re-reads steering every 0.1 s
        cli.send(np.arange(1000, dtype=np.int32))
        with pytest.raises(ChannelError, match=f"ntuple rule {rule.location} \\(TCP to 127.0.0.1:"
                                               f"{rule.dst_port} -> queue {rule.queue}\\)"):
            srv.recv()
        assert srv.stats["rx"]["flow_steering_errors"] > 0


def test_flow_steering_errors_copied_when_asked() -> None:
    from devmemtcp.backend.emulated import EmulatedBackend

    with pair(steering_errors="copy") as (srv, cli):
        EmulatedBackend().nic("lo").delete_rule(srv._rx.rules[0].location)
        time.sleep(0.3)  # the emulated NIC re-reads steering every 0.1 s
        arr = np.arange(300_000, dtype=np.int32)
        for tag in (1, 2):
            cli.send(arr, tag=tag)
        assert np.array_equal(srv.recv(tag=2), arr)  # tag 1 held meanwhile: copied out, readable bytes
        assert np.array_equal(srv.recv(tag=1), arr)
        assert srv.stats["rx"]["flow_steering_errors"] >= 2 * arr.nbytes
    with pytest.raises(ChannelError, match="steering_errors='drop'"):
        devmemtcp.connect(HOST, 1, backend="emulated", steering_errors="drop")


def test_slow_consumer_holds_the_sender_back() -> None:
    msg = np.ones(4 << 20, np.uint8)
    count = 12  # 48 MiB against a 8 MiB dma-buf
    with pair(dmabuf_size=8 << 20) as (srv, cli):
        sent: list[float] = []

        def sender() -> None:
            for i in range(count):
                msg[0] = i
                cli.send(msg)
                sent.append(time.monotonic())

        snd = Bg(sender)
        time.sleep(1.0)
        early = len(sent)
        assert early < count  # held back by credits, not buffered without limit
        out = np.empty_like(msg)
        for i in range(count):
            srv.recv_into(out)
            assert out[0] == i
        snd.result()
        assert cli.stats["credit_waits"] > 0
        window_bytes = cli._credit.window * 4096
        assert early * msg.nbytes <= window_bytes + msg.nbytes


_PEER = textwrap.dedent("""
    import sys, numpy as np, devmemtcp
    role, port = sys.argv[1], int(sys.argv[2])
    ch = devmemtcp.connect("127.0.0.1", port, backend="emulated", dmabuf_size=8 << 20)
    print("connected", flush=True)
    if role == "send":
        msg = np.ones(64 << 20, np.uint8)
        while True:  # killed while one of these is under way
            ch.send(msg, tag=77)
    else:
        sys.stdin.readline()  # never receives: killed with the message in flight
""")


def _peer(role: str, port: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.Popen([sys.executable, "-c", _PEER, role, str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc


def test_sender_killed_mid_message() -> None:
    with devmemtcp.listen(HOST, 0, backend="emulated", dmabuf_size=8 << 20) as lis:
        proc = _peer("send", lis.port)
        try:
            with lis.accept(timeout=30) as ch:
                ch._wait(lambda: bool(ch._headers), ch._lost_rx(None))
                killer = threading.Timer(0.3, lambda: proc.send_signal(signal.SIGKILL))
                killer.start()
                out = np.empty(64 << 20, np.uint8)
                with pytest.raises(ChannelError) as ei:
                    for _ in range(10_000):
                        ch.recv_into(out)
                killer.join()
                e = ei.value
                assert e.tag == 77 and e.expected == 64 << 20 and 0 <= (e.received or 0) < 64 << 20
                assert f"tag 77: {e.received} of {64 << 20} bytes received" in e.message
                with pytest.raises(ChannelError, match="after the channel's receive side failed") as again:
                    ch.recv()  # never a message parsed out of the middle of the cut one
                assert again.value.tag == 77
        finally:
            proc.kill()
            proc.communicate()
    nic_clean(peer_killed=True)


def test_receiver_killed_mid_message() -> None:
    with devmemtcp.listen(HOST, 0, backend="emulated", dmabuf_size=8 << 20) as lis:
        proc = _peer("recv", lis.port)
        try:
            with lis.accept(timeout=30) as ch:
                killer = threading.Timer(0.5, lambda: proc.send_signal(signal.SIGKILL))
                killer.start()
                with pytest.raises(ChannelError) as ei:
                    ch.send(np.ones(100 << 20, np.uint8), tag=5)
                killer.join()
                e = ei.value
                assert e.tag == 5 and e.expected == 100 << 20
                assert f"{e.received} of {100 << 20} bytes sent" in e.message
                with pytest.raises(ChannelError, match="after the channel's send side failed"):
                    ch.send(np.zeros(1))
        finally:
            proc.kill()
            proc.communicate()
    nic_clean(peer_killed=True)


def test_sigterm_while_listening_undoes_the_nic_setup() -> None:
    code = textwrap.dedent("""
        import devmemtcp
        with devmemtcp.listen("127.0.0.1", 0, backend="emulated", streams=2) as lis:
            print(lis.queues, flush=True)
            lis.accept()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=SRC))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("["), proc.stderr.read() if proc.stderr else ""
        from devmemtcp.backend.emulated import EmulatedBackend

        assert len(EmulatedBackend().nic("lo").list_rules()) == 2  # one per data flow, while it listens
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    nic_clean()  # rules, RSS/header split journal and binding all undone by the signal


def test_accept_refuses_a_second_channel_while_one_is_open() -> None:
    with devmemtcp.listen(HOST, 0, backend="emulated") as lis:
        for round_ in range(2):
            acc = Bg(lambda: lis.accept(timeout=30))
            cli = devmemtcp.connect(HOST, lis.port, backend="emulated")
            srv = acc.result()
            with cli, srv:
                if round_ == 0:
                    with pytest.raises(ChannelError, match="still open"):
                        lis.accept(timeout=1)
                assert roundtrip(cli, srv, np.array([round_])).tolist() == [round_]
    nic_clean()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_fd_left_after_channels_and_an_unclosed_one_is_finalized() -> None:
    import gc

    with pair(streams=2) as (srv, cli):  # warm: the shared backend, the gather helper
        roundtrip(cli, srv, np.arange(10))
    gc.collect()
    before = _fds()
    for _ in range(3):
        with pair(streams=2) as (srv, cli):
            roundtrip(cli, srv, np.arange(1 << 20))
            roundtrip(srv, cli, np.arange(1 << 20))
    gc.collect()
    assert _fds() == before

    def use_and_drop() -> None:  # no close(): the finalizers give back tokens, bindings, NIC settings
        lis = devmemtcp.listen(HOST, 0, backend="emulated")
        acc = Bg(lambda: lis.accept(timeout=30))
        cli = devmemtcp.connect(HOST, lis.port, backend="emulated")
        roundtrip(cli, acc.result(), np.arange(1000))

    use_and_drop()
    gc.collect()
    nic_clean()
    assert _fds() == before


def test_package_exports_are_lazy_and_documented() -> None:
    code = ("import sys, devmemtcp; assert 'numpy' not in sys.modules and 'torch' not in sys.modules; "
            "assert callable(devmemtcp.listen) and devmemtcp.Receiver and devmemtcp.Sender; "
            "assert devmemtcp.open_dmabuf and devmemtcp.open_backend and devmemtcp.ChannelError; "
            "assert 'torch' not in sys.modules; print(devmemtcp.__doc__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=SRC), check=True).stdout
    assert "listen" in out and "connect" in out and "recv" in out
    assert issubclass(devmemtcp.ChannelError, devmemtcp.DevmemError)
