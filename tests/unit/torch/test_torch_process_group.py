"""DevmemProcessGroup's own logic, two ranks in one process (threads), over the
plain-socket test transport: matching, tags, any-source, Work, errors, timeouts.
The devmem Channel under it is covered by tests/e2e/test_torch_backend.py."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is an optional extra: pip install 'devmemtcp[torch]'")
import torch.distributed as dist  # noqa: E402

from devmemtcp.torch import DevmemProcessGroup, DevmemTorchError, DevmemWork  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "e2e"))
from torch_tcp_transport import TcpTransport  # noqa: E402

TIMEOUT = 4.0


def _pair(timeout: float = TIMEOUT) -> list[DevmemProcessGroup]:
    store = dist.HashStore()
    pgs: list[DevmemProcessGroup | None] = [None, None]
    errs: list[BaseException] = []

    def make(r: int) -> None:
        try:
            pgs[r] = DevmemProcessGroup(store, r, 2, timedelta(seconds=timeout), transport=TcpTransport())
        except BaseException as exc:
            errs.append(exc)

    ts = [threading.Thread(target=make, args=(r,)) for r in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errs, errs
    return [p for p in pgs if p is not None]


@pytest.fixture
def pair() -> Iterator[list[DevmemProcessGroup]]:
    pgs = _pair()
    yield pgs
    for p in pgs:
        p.shutdown()


def test_send_recv_returns_at_once_and_completes(pair: list[DevmemProcessGroup]) -> None:
    a, b = pair
    out = torch.empty(1000, dtype=torch.float64)
    w = b.recv([out], 0, 0)
    assert isinstance(w, DevmemWork) and not w.is_completed()
    fut = w.get_future()
    assert isinstance(fut, torch.futures.Future)
    src = torch.arange(1000, dtype=torch.float64)
    s = a.send([src], 1, 0)
    assert s.wait() is True and w.wait() is True
    assert torch.equal(out, src) and torch.equal(fut.wait()[0], src)
    assert w.is_success() and w.exception() is None


def test_tags_complete_out_of_order_and_any_source(pair: list[DevmemProcessGroup]) -> None:
    a, b = pair
    x, y, z = torch.empty(3), torch.empty(3), torch.empty(3)
    a.send([torch.full((3,), 1.0)], 1, 1).wait()
    a.send([torch.full((3,), 2.0)], 1, 2).wait()
    b.recv([y], 0, 2).wait()  # arrived second, received first (kept aside meanwhile)
    b.recv([x], 0, 1).wait()
    assert x.tolist() == [1.0] * 3 and y.tolist() == [2.0] * 3
    w = b.recv_anysource([z], 5)
    a.send([torch.full((3,), 5.0)], 1, 5)
    w.wait()
    assert w.source_rank() == 0 and z.tolist() == [5.0] * 3


def test_messages_of_one_tag_keep_their_order(pair: list[DevmemProcessGroup]) -> None:
    a, b = pair
    outs = [torch.empty(1, dtype=torch.int64) for _ in range(50)]
    ws = [b.recv([o], 0, 3) for o in outs]
    for i in range(50):
        a.send([torch.tensor([i])], 1, 3)
    for w in ws:
        w.wait()
    assert [int(o) for o in outs] == list(range(50))


def test_early_messages_of_many_tags_leave_no_keys_behind(pair: list[DevmemProcessGroup]) -> None:
    a, b = pair
    for tag in range(40):
        a.send([torch.tensor([tag])], 1, tag).wait()
    deadline = time.monotonic() + 10
    while sum(len(q) for q in list(b._unexpected.values())) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(b._unexpected) == 40  # all arrived before their receives: kept aside, one key each
    out = torch.empty(1, dtype=torch.int64)
    for tag in reversed(range(40)):
        b.recv([out], 0, tag).wait()
        assert int(out) == tag
    assert b._unexpected == {}  # a drained key is dropped (posting scanned them all before)


def test_mismatched_dtype_and_size_name_the_sender_and_the_link_survives(
        pair: list[DevmemProcessGroup]) -> None:
    a, b = pair
    a.send([torch.ones(4, dtype=torch.int32)], 1, 0)
    with pytest.raises(DevmemTorchError) as ei:
        b.recv([torch.empty(4)], 0, 0).wait()
    assert ei.value.op == "recv" and ei.value.peer == 0
    assert "rank 0 sent a int32 tensor of 16 bytes, the receiving tensor is float32" in str(ei.value)
    a.send([torch.ones(5)], 1, 0)
    with pytest.raises(DevmemTorchError, match=r"rank 0 sent 20 bytes .* holds 16 bytes"):
        b.recv([torch.empty(4)], 0, 0).wait()
    out = torch.empty(2)
    a.send([torch.ones(2)], 1, 0)
    b.recv([out], 0, 0).wait()
    assert out.tolist() == [1.0, 1.0]


def test_bad_tensors_are_refused_before_anything_moves(pair: list[DevmemProcessGroup]) -> None:
    a, _ = pair
    with pytest.raises(DevmemTorchError, match="outside the group"):
        a.send([torch.ones(1)], 5, 0)
    with pytest.raises(DevmemTorchError, match="cannot send to itself"):
        a.send([torch.ones(1)], 0, 0)
    with pytest.raises(DevmemTorchError, match="layout"):
        a.send([torch.ones(2, 2).to_sparse()], 1, 0)
    with pytest.raises(DevmemTorchError, match="tensor is on meta; the devmem backend moves CPU tensors"):
        a.recv([torch.empty(4, device="meta")], 1, 0)  # any device but the CPU (cuda too)


def test_wait_with_a_short_timeout_raises_and_the_operation_goes_on(pair: list[DevmemProcessGroup]) -> None:
    a, b = pair
    out = torch.empty(2)
    w = b.recv([out], 0, 7)
    with pytest.raises(DevmemTorchError, match="not completed within wait"):
        w.wait(timeout=timedelta(milliseconds=100))
    a.send([torch.ones(1)], 1, 0).wait()  # the link is up: a wait now reads it itself
    b.recv([torch.empty(1)], 0, 0).wait()
    t0 = time.monotonic()
    with pytest.raises(DevmemTorchError, match="not completed within wait"):
        w.wait(timeout=timedelta(milliseconds=500))
    assert time.monotonic() - t0 < 0.9  # the time spent reading counts against the timeout
    a.send([torch.ones(2)], 1, 7)
    assert w.wait() and out.tolist() == [1.0, 1.0]


def test_wait_with_a_timeout_counts_the_wait_for_the_link_against_it(pair: list[DevmemProcessGroup]) -> None:
    # the link's reader thread may be in the middle of its own read when a waiter comes
    a, b = pair
    a.send([torch.ones(1)], 1, 0).wait()
    b.recv([torch.empty(1)], 0, 0).wait()
    w = b.recv([torch.empty(2)], 0, 7)
    peer = b._peers[0]
    held = threading.Event()

    def reader_busy() -> None:
        with peer.rmutex:
            held.set()
            time.sleep(0.4)

    threading.Thread(target=reader_busy).start()
    assert held.wait(5)
    t0 = time.monotonic()
    with pytest.raises(DevmemTorchError, match="not completed within wait"):
        w.wait(timeout=timedelta(milliseconds=500))
    # 0.4 s for the link, then only the rest of the 0.5 s reading it (not another 0.5 s)
    assert time.monotonic() - t0 < 0.75
    a.send([torch.ones(2)], 1, 7)
    assert w.wait()


def test_unanswered_receive_fails_at_the_group_timeout_naming_the_peer() -> None:
    a, b = _pair(timeout=1.0)
    try:
        a.send([torch.ones(1)], 1, 0).wait()  # link up
        b.recv([torch.empty(1)], 0, 0).wait()
        t0 = time.monotonic()
        with pytest.raises(DevmemTorchError) as ei:
            b.recv([torch.empty(1)], 0, 9).wait()
        dt = time.monotonic() - t0
        assert 0.8 < dt < 3.0
        assert ei.value.peer == 0 and "timed out after 1s waiting for rank 0" in str(ei.value)
    finally:
        a.shutdown()
        b.shutdown()


def test_peer_gone_fails_pending_work_at_once_naming_it(pair: list[DevmemProcessGroup]) -> None:
    a, b = pair
    a.send([torch.ones(1)], 1, 0).wait()
    b.recv([torch.empty(1)], 0, 0).wait()
    w = b.recv([torch.empty(8)], 0, 4)
    t0 = time.monotonic()
    a.shutdown()
    with pytest.raises(DevmemTorchError) as ei:
        w.wait()
    assert time.monotonic() - t0 < TIMEOUT / 2
    assert ei.value.peer == 0 and "rank 0" in str(ei.value)
    with pytest.raises(DevmemTorchError, match="rank 0"):  # later work with that peer fails at once
        b.send([torch.ones(1)], 0, 0).wait()


def test_byte_moving_collectives_and_gloo_ones(pair: list[DevmemProcessGroup]) -> None:
    results: dict[int, dict[str, list[float]]] = {}

    def run(pg: DevmemProcessGroup) -> None:
        r = pg.rank()
        t = torch.full((3,), float(r + 1))
        opts = dist.BroadcastOptions()
        opts.rootRank = 1
        pg.broadcast([t], opts).wait()
        big = torch.empty(4)
        pg.all_gather_single(big, torch.full((2,), float(r))).wait()
        a2a = torch.empty(2)
        pg.all_to_all_single(a2a, torch.tensor([10.0 * r, 10.0 * r + 1]), [], []).wait()
        red = torch.full((2,), float(r + 1))
        pg.allreduce([red]).wait()
        pg.barrier().wait()
        results[r] = {"bcast": t.tolist(), "gather": big.tolist(), "a2a": a2a.tolist(), "sum": red.tolist()}

    ts = [threading.Thread(target=run, args=(pg,)) for pg in pair]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert results[0]["bcast"] == results[1]["bcast"] == [2.0] * 3
    assert results[0]["gather"] == results[1]["gather"] == [0.0, 0.0, 1.0, 1.0]
    assert results[0]["a2a"] == [0.0, 10.0] and results[1]["a2a"] == [1.0, 11.0]
    assert results[0]["sum"] == results[1]["sum"] == [3.0, 3.0]


def test_link_stats_and_shutdown_is_idempotent(pair: list[DevmemProcessGroup]) -> None:
    a, b = pair
    a.send([torch.ones(1)], 1, 0).wait()
    b.recv([torch.empty(1)], 0, 0).wait()
    assert a.link_stats() == {1: {"transport": "tcp"}}
    assert a.name() == "devmem"
    a.shutdown()
    a.shutdown()
    with pytest.raises(DevmemTorchError, match="destroyed"):
        a.send([torch.ones(1)], 1, 0)


# -- who does the work: eager sends, a waiting receiver reading its link ------------------

@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The names of the threads that call the links' send and recv_next."""
    import torch_tcp_transport as tt

    seen: dict[str, list[str]] = {"send": [], "recv": []}
    send, recv_next = tt.TcpLink.send, tt.TcpLink.recv_next

    def rec_send(self: tt.TcpLink, payload: torch.Tensor, tag: int) -> None:
        seen["send"].append(threading.current_thread().name)
        send(self, payload, tag)

    def rec_recv(self: tt.TcpLink, choose: object, timeout: float) -> bool:
        def pick(tag: int, nbytes: int) -> torch.Tensor:
            seen["recv"].append(threading.current_thread().name)
            return choose(tag, nbytes)  # type: ignore[operator]
        return recv_next(self, pick, timeout)

    monkeypatch.setattr(tt.TcpLink, "send", rec_send)
    monkeypatch.setattr(tt.TcpLink, "recv_next", rec_recv)
    return seen


def test_small_sends_go_out_in_the_calling_thread_large_ones_in_the_sender(
        pair: list[DevmemProcessGroup], recorded: dict[str, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch_tcp_transport as tt

    from devmemtcp.torch import process_group as pgmod

    gate = threading.Event()
    send = tt.TcpLink.send

    def held(self: tt.TcpLink, payload: torch.Tensor, tag: int) -> None:
        if payload.numel() > pgmod.EAGER_BYTES:
            gate.wait(10)  # the large send is in progress while the small one is posted
        send(self, payload, tag)

    monkeypatch.setattr(tt.TcpLink, "send", held)
    a, b = pair
    me = threading.current_thread().name
    a.send([torch.ones(1)], 1, 0).wait()  # the first send opens the link (in the sender thread)
    b.recv([torch.empty(1)], 0, 0).wait()
    recorded["send"].clear()
    a.send([torch.ones(1000)], 1, 0).wait()
    assert recorded["send"][-1] == me  # eager: the link was idle and nothing queued
    big = torch.ones(pgmod.EAGER_BYTES // 4 + 1)
    out_big, out_small = torch.empty_like(big), torch.empty(3)
    rb, rs = b.recv([out_big], 0, 1), b.recv([out_small], 0, 1)
    wb = a.send([big], 1, 1)
    ws = a.send([torch.full((3,), 2.0)], 1, 1)  # queued behind the large one: same tag, same order
    gate.set()
    wb.wait(), ws.wait(), rb.wait(), rs.wait()
    assert recorded["send"][-2:] == ["devmem-send-0->1"] * 2
    assert torch.equal(out_big, big) and out_small.tolist() == [2.0] * 3


def test_a_waiting_receiver_reads_its_link_itself(
        pair: list[DevmemProcessGroup], recorded: dict[str, list[str]]) -> None:
    a, b = pair
    me = threading.current_thread().name
    a.send([torch.ones(1)], 1, 0).wait()
    b.recv([torch.empty(1)], 0, 0).wait()

    def later() -> None:
        time.sleep(0.8)  # past the reader thread's poll: the waiter holds the link by then
        a.send([torch.arange(4.0)], 1, 2)

    threading.Thread(target=later).start()
    out = torch.empty(4)
    recorded["recv"].clear()
    b.recv([out], 0, 2).wait()
    assert out.tolist() == [0.0, 1.0, 2.0, 3.0] and recorded["recv"] == [me]
    # back to back, the next receives are read by the waiting thread as well
    for i in range(20):
        a.send([torch.full((4,), float(i))], 1, 3)
        b.recv([out], 0, 3).wait()
        assert out.tolist() == [float(i)] * 4
    assert recorded["recv"].count(me) >= 15


def test_an_interrupted_receive_cuts_the_link_and_says_so(
        pair: list[DevmemProcessGroup], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch_tcp_transport as tt

    a, b = pair
    a.send([torch.ones(1)], 1, 0).wait()
    b.recv([torch.empty(1)], 0, 0).wait()
    recv_next = tt.TcpLink.recv_next

    def interrupted(self: tt.TcpLink, choose: object, timeout: float) -> bool:
        def pick(tag: int, nbytes: int) -> torch.Tensor:
            if threading.current_thread() is threading.main_thread():
                raise KeyboardInterrupt  # Ctrl-C with the header taken, the payload not
            return choose(tag, nbytes)  # type: ignore[operator]
        return recv_next(self, pick, timeout)

    monkeypatch.setattr(tt.TcpLink, "recv_next", interrupted)
    w = b.recv([torch.empty(2)], 0, 5)

    def later() -> None:
        time.sleep(0.8)
        a.send([torch.ones(2)], 1, 5)

    threading.Thread(target=later).start()
    with pytest.raises(KeyboardInterrupt):
        w.wait()
    with pytest.raises(DevmemTorchError, match="rank 0: a receive was interrupted halfway"):
        b.recv([torch.empty(2)], 0, 6).wait()


def test_work_future_made_late_and_many_waiters(pair: list[DevmemProcessGroup]) -> None:
    a, b = pair
    out = torch.empty(3)
    w = b.recv([out], 0, 8)
    got: list[bool] = []
    waiters = [threading.Thread(target=lambda: got.append(w.wait())) for _ in range(3)]
    for t in waiters:
        t.start()
    a.send([torch.ones(3)], 1, 8).wait()
    for t in waiters:
        t.join(5)
    assert got == [True] * 3 and w.is_completed() and w.is_success()
    fut = w.get_future()  # asked for after completion: already done, same value
    assert fut.done() and fut.wait()[0].tolist() == [1.0] * 3 and w.get_future() is fut
    bad = b.recv([torch.empty(3)], 0, 9)
    pending = bad.get_future()
    a.send([torch.ones(3, dtype=torch.int64)], 1, 9)
    with pytest.raises(DevmemTorchError):
        bad.wait()
    with pytest.raises(RuntimeError, match="int64"):
        pending.wait()
