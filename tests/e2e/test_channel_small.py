"""Small messages on the Channel: the send cork and the receiver's read-ahead.

The read-ahead takes the bytes of several small messages with one recvmsg and
hands each message its byte range (a frag may straddle two messages); the
cork writes several headers in one control write and several payloads in one
sendmsg. Both ends run in this process, as in test_channel.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

import devmemtcp
from devmemtcp.channel import core
from devmemtcp.channel.header import DType, encode_msg_frame
from devmemtcp.errors import ChannelClosed, ChannelError
from e2e.channel_helpers import pair as channel_pair

pytestmark = pytest.mark.root



@contextlib.contextmanager
def pair(dmabuf_size: int | None = None, frags: str | None = None,
         streams: int = 1) -> Iterator[tuple[devmemtcp.Channel, devmemtcp.Channel]]:
    """The shared channel pair, with the emulated NIC's frag shape set first."""
    if frags is not None:
        from devmemtcp.backend.emulated import EmulatedBackend

        EmulatedBackend().nic("lo").set_capabilities(frags=frags)
    with channel_pair(streams=streams, dmabuf_size=dmabuf_size, clean=False) as chans:
        yield chans


def _tokens_settled(ch: devmemtcp.Channel) -> None:
    """Every frag received was given back exactly once: none held, none
    asked for twice or unknown to the NIC (release_shortfall)."""
    for r in ch._receivers:
        r.flush()
        assert r.held == 0
        assert r.stats.release_shortfall == 0
        assert r.stats.tokens_released == r.stats.frags


def _wait_bytes(ch: devmemtcp.Channel, nmsgs: int, timeout: float = 10.0) -> None:
    """Until ``nmsgs`` headers are decoded on ``ch`` (their payload sent before them is there too)."""
    ch._wait(lambda: len(ch._headers) >= nmsgs, ch._lost_rx(None), time.monotonic() + timeout)


@pytest.mark.parametrize("frags", ["page", "driver"])
def test_frags_straddling_messages_are_split_and_given_back_once(frags: str) -> None:
    """3000-byte messages: one recvmsg takes many, frags straddle two
    messages. Each message gets exactly its bytes; a batch's tokens stay
    held while a message still needs its bytes (a 1 MiB dma-buf reuses its
    pages at once, so an early release would corrupt a later message)."""
    count = 400
    msgs = [np.full(3000, i % 251, dtype=np.uint8) for i in range(count)]
    with pair(dmabuf_size=1 << 20, frags=frags) as (srv, cli):
        done = threading.Event()

        def sender() -> None:
            for m in msgs:
                cli.send(m)
            done.set()

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        out = np.empty(3000, np.uint8)
        seen_held_with_queue = False
        for i in range(count):
            assert srv.recv_into(out) == 3000
            assert (out == i % 251).all(), f"message {i} has another message's bytes"
            if srv._ra[0]:  # bytes read ahead wait: their batch's tokens are still held
                assert sum(r.held for r in srv._receivers) > 0
                seen_held_with_queue = True
        t.join(30)
        assert done.is_set()
        assert seen_held_with_queue  # the read-ahead did take several messages per recvmsg
        rs = srv._receivers[0].stats
        assert rs.recv_calls < count // 2
        assert not srv._ra[0]
        _tokens_settled(srv)
        assert srv.stats["rx"]["messages"] == count


def test_a_message_cut_short_mid_batch_names_tag_and_bytes() -> None:
    """The peer's header says 8000 bytes, 3000 come, then the flow ends: the
    read-ahead had taken those 3000 with the message before; the receive of
    the cut message names its tag and 3000 of 8000 bytes, and no token leaks."""
    with pair() as (srv, cli):
        cli.send(np.full(2000, 7, np.uint8), tag=1)
        with cli._tx_lock:
            cli._flush_cork()
            off = cli._stage(np.full(3000, 9, np.uint8), 0)
            spec = DType.of_numpy(np.dtype(np.uint8))
            cli._write(encode_msg_frame(9, 8000, cli._tx_seq, cli._unit, 0, 1, spec, (8000,)))
            cli._tx_seq += 1
            cli._senders[0].send(np.array([[off, 3000]], np.uint64))
        cli.flush()
        cli._tx_socks[0].shutdown(socket.SHUT_WR)
        _wait_bytes(srv, 2)
        time.sleep(0.2)  # the 5000 bytes and the FIN are in the socket
        out = np.empty(2000, np.uint8)
        assert srv.recv_into(out, tag=1) == 2000 and (out == 7).all()
        assert srv._ra[0] and srv._ra[0][0].left == 3000  # read ahead with message 1
        with pytest.raises(ChannelError) as ei:
            srv.recv_into(np.empty(8000, np.uint8))
        e = ei.value
        assert e.tag == 9 and e.received == 3000 and e.expected == 8000
        assert "3000 of 8000" in str(e)
        with pytest.raises(ChannelError, match="receive side failed"):
            srv.recv(timeout=0.1)
    for r in srv._receivers:
        assert r.held == 0


def test_a_lone_corked_message_goes_out_within_the_bound() -> None:
    """A message sent right after another waits in the cork; with no further
    call on the sending end the timer writes it within CORK_DELAY_S (plus
    scheduling); the first, after idle, goes out at once."""
    with pair() as (srv, cli):
        time.sleep(2 * core.CORK_DELAY_S)
        cli.send(np.arange(100, dtype=np.int32), tag=1)
        assert cli._cork_n == 0  # idle: written at once
        cli.send(np.arange(200, dtype=np.int32), tag=2)
        assert cli._cork_n == 1  # corked
        t0 = time.monotonic()
        assert np.array_equal(srv.recv(tag=2, timeout=5), np.arange(200))
        waited = time.monotonic() - t0
        assert cli._cork_n == 0 and cli.cork_timer_flushes >= 1
        assert waited < 1.0  # the bound is CORK_DELAY_S; a missing timer would hang until the timeout
        assert np.array_equal(srv.recv(tag=1, timeout=5), np.arange(100))


def test_cork_flushes_on_count_recv_flush_and_close(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "CORK_DELAY_S", 30.0)  # no timer flush here: the other rules only
    with pair() as (srv, cli):
        cli.send(np.array([0]))
        assert cli._cork_n == 0  # the first, after idle: at once
        for i in range(1, core.CORK_MSGS):
            cli.send(np.array([i]))
        assert cli._cork_n == core.CORK_MSGS - 1
        cli.send(np.array([core.CORK_MSGS]))
        assert cli._cork_n == 0  # CORK_MSGS reached: written
        for i in range(core.CORK_MSGS + 1):
            assert srv.recv()[0] == i
        cli.send(np.array([1]))
        cli.send(np.array([2]))
        with pytest.raises(TimeoutError):
            cli.recv(timeout=0)  # a receive writes the cork first
        assert cli._cork_n == 0
        cli.send(np.array([3]))
        cli.flush()
        assert cli._cork_n == 0
        big = np.arange(1 << 18, dtype=np.int64)  # 2 MiB: the general path writes the cork first
        cli.send(np.array([4]))
        done = threading.Thread(target=lambda: cli.send(big), daemon=True)
        done.start()
        assert [int(srv.recv()[0]) for _ in range(4)] == [1, 2, 3, 4]
        assert np.array_equal(srv.recv(), big)
        done.join(30)
        cli.send(np.array([5]))
        cli.send(np.array([6]))
        cli.close()  # writes the cork, then CLOSE
        assert srv.recv()[0] == 5 and srv.recv()[0] == 6
        with pytest.raises(ChannelClosed):
            srv.recv(timeout=5)


def test_interleaved_tags_stay_fifo_per_tag_with_read_ahead() -> None:
    """Small messages of three tags in one burst, received tag by tag: those
    read ahead with another message are copied out when held, every tag's
    messages come in send order, and every token goes back once."""
    count = 600
    with pair(dmabuf_size=4 << 20) as (srv, cli):
        def sender() -> None:  # 3 credit pages a message: more than the window, so in a thread
            for i in range(count):
                cli.send(np.array([i, i % 3], dtype=np.int64), tag=i % 3)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        got: dict[int, list[int]] = {0: [], 1: [], 2: []}
        out = np.empty(2, np.int64)
        for _ in range(count // 3):  # tag 2 first: everything before each is held
            srv.recv_into(out, tag=2)
            got[2].append(int(out[0]))
        for tag in (0, 1):
            for _ in range(count // 3):
                srv.recv_into(out, tag=tag)
                assert out[1] == tag
                got[tag].append(int(out[0]))
        t.join(30)
        for tag in range(3):
            assert got[tag] == list(range(tag, count, 3))
        assert srv.pending == 0 and srv.stats["spilled"] > 0
        _tokens_settled(srv)


def test_recv_frags_of_a_read_ahead_message_gives_its_bytes() -> None:
    with pair() as (srv, cli):
        for i in range(10):
            cli.send(np.full(1000, i, np.int16))
        cli.flush()
        _wait_bytes(srv, 10)
        assert srv.recv()[0] == 0  # reads ahead
        with srv.recv_frags() as msg:
            assert msg.nbytes == 2000
            assert np.array_equal(msg.gather(), np.full(1000, 1, np.int16))
        for i in range(2, 10):
            assert srv.recv()[0] == i
        _tokens_settled(srv)


def test_many_small_messages_both_streams() -> None:
    """Small messages round robin over 2 flows, sender and receiver in two threads."""
    count = 3000
    with pair(streams=2) as (srv, cli):
        def sender() -> None:
            for i in range(count):
                cli.send(np.array([i] * 16, dtype=np.int32), tag=i & 7)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        out = np.empty(16, np.int32)
        for i in range(count):
            srv.recv_into(out)
            assert out[0] == i and out[15] == i
        t.join(30)
        assert srv._receivers[0].stats.recv_calls + srv._receivers[1].stats.recv_calls < count
        _tokens_settled(srv)


def test_small_messages_both_ways_from_two_threads_each() -> None:
    """Each end sends small messages from one thread and receives in another:
    the cork and the read-ahead with a control reader that may be a sending
    thread waiting for credit (headers appended while the receiver reads ahead)."""
    count = 3000
    errors: list[BaseException] = []
    with pair(dmabuf_size=2 << 20) as (srv, cli):
        def sender(ch: devmemtcp.Channel) -> None:
            try:
                for i in range(count):
                    ch.send(np.full(512, i, dtype=np.int32), tag=i % 5)
            except BaseException as exc:  # reported below
                errors.append(exc)

        def receiver(ch: devmemtcp.Channel, got: list[int]) -> None:
            out = np.empty(512, np.int32)
            try:
                for _ in range(count):
                    ch.recv_into(out)
                    assert (out == out[0]).all()
                    got.append(int(out[0]))
            except BaseException as exc:
                errors.append(exc)

        got_s: list[int] = []
        got_c: list[int] = []
        ts = [threading.Thread(target=sender, args=(srv,), daemon=True),
              threading.Thread(target=sender, args=(cli,), daemon=True),
              threading.Thread(target=receiver, args=(srv, got_s), daemon=True),
              threading.Thread(target=receiver, args=(cli, got_c), daemon=True)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        assert not errors, errors
        assert got_s == list(range(count)) and got_c == list(range(count))
        _tokens_settled(srv)
        _tokens_settled(cli)
