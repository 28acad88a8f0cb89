"""The transfer API (devmemtcp.transfer) over the emulated NIC on loopback.

Plain-TCP peers on the other end: the emulated devmem NIC sits under the
devmemtcp socket only, so any TCP sender/receiver interoperates.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import struct
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmemtcp import transfer
from devmemtcp.backend import open_backend
from devmemtcp.errors import DevmemError, IncompleteStreamError, StreamError, ValidationError
from devmemtcp.host import ifaces
from devmemtcp.validate import FragValidator

sys.path.insert(0, os.path.dirname(__file__))
from transfer_helpers import PlainReceiver, plain_send, reference_pattern, wait_nic_free

pytestmark = pytest.mark.root  # the emulated NIC keeps its state under /run


@pytest.fixture(autouse=True)
def _nic_not_held_by_another_run() -> None:
    """Other test runs on this machine may hold lo's set-up for a while: wait for them."""
    for name in ("lo",):
        wait_nic_free(name)


def test_result_json_has_the_documented_fields() -> None:
    r = transfer.TransferResult(role="recv", backend="emulated", bytes=1 << 30, seconds=2.0, frags=262144,
                                validated=True)
    d = r.as_dict()
    assert list(d)[:11] == ["backend", "bytes", "seconds", "gbps", "frags", "linear_bytes",
                            "tokens_released", "release_syscalls", "flow_steering_errors", "validated",
                            "complete"]
    assert d["complete"] is None  # no length given
    assert d["gbps"] == pytest.approx((1 << 30) * 8 / 2.0 / 1e9, rel=1e-4)
    assert transfer.TransferResult(role="send", backend="kernel").gbps == 0.0


def test_auto_backend_on_lo_is_emulated_and_says_why() -> None:
    backend, reason = open_backend("auto", "lo")
    assert backend.name == "emulated"
    assert "lo" in reason and reason  # doctor's verdict, not a silent default


def test_fill_pattern_matches_ncdevmem_and_wraps_on_a_period() -> None:
    from devmemtcp.memory import open_dmabuf

    with open_dmabuf("host", 64 * 4096) as buf:
        usable = transfer._fill_pattern(buf, 7)
        assert usable % 7 == 0 and buf.size - usable < 7
        assert buf.host_view()[:usable].tobytes() == reference_pattern(7, 0, usable)


def _recv_in_thread(**kwargs: object) -> tuple[threading.Thread, dict[str, object], threading.Event]:
    box: dict[str, object] = {}
    ready = threading.Event()

    def on_ready(port: int) -> None:
        box["port"] = port
        ready.set()

    def body() -> None:
        try:
            box["result"] = transfer.receive_stream("127.0.0.1", 0, accept_timeout=30, on_ready=on_ready,
                                                    backend="emulated", **kwargs)  # type: ignore[arg-type]
        except BaseException as exc:
            box["error"] = exc
            ready.set()

    t = threading.Thread(target=body, daemon=True)
    t.start()
    assert ready.wait(30)
    return t, box, ready


def test_receive_plain_sender_validated() -> None:
    n = 24 << 20
    t, box, _ = _recv_in_thread(validate=7, size=4 << 20)
    assert "error" not in box, box.get("error")
    plain_send("127.0.0.1", int(box["port"]), 7, n)  # type: ignore[call-overload]
    t.join(60)
    assert "error" not in box, box.get("error")
    r = box["result"]
    assert isinstance(r, transfer.TransferResult)
    assert r.validated is True and r.bytes == n and r.backend == "emulated"
    assert r.frags >= n // 4096 and r.tokens_released == r.frags
    assert r.flow_steering_errors == 0
    assert r.release_syscalls is not None and r.release_syscalls > 0
    assert r.ifname == "lo" and r.queues
    assert r.rcvlowat == transfer.auto_rcvlowat(4 << 20) == 512 << 10


def test_auto_rcvlowat_is_an_eighth_of_the_dmabuf_capped_at_8m() -> None:
    assert transfer.auto_rcvlowat(16000 * 4096) == 2000 * 4096
    assert transfer.auto_rcvlowat(1 << 30) == 8 << 20
    assert transfer.auto_rcvlowat(9 * 4096) == 4096
    assert transfer.auto_rcvlowat(7 * 4096) == 0


def test_receive_with_rcvlowat_off_and_a_short_stream() -> None:
    # 1000 bytes and EOF: under any SO_RCVLOWAT the receiver still ends at EOF
    for low in (0, 1 << 20):
        t, box, _ = _recv_in_thread(validate=7, size=4 << 20, rcvlowat=low)
        plain_send("127.0.0.1", int(box["port"]), 7, 1000)  # type: ignore[call-overload]
        t.join(60)
        assert "error" not in box, box.get("error")
        r = box["result"]
        assert isinstance(r, transfer.TransferResult)
        assert r.bytes == 1000 and r.validated is True
        assert r.rcvlowat == (None if low == 0 else low)


def test_receive_reports_the_corrupted_offset() -> None:
    n, bad = 8 << 20, 5_000_003
    t, box, _ = _recv_in_thread(validate=7, size=4 << 20)
    with contextlib.suppress(OSError):  # the receiver may stop reading at the mismatch
        plain_send("127.0.0.1", int(box["port"]), 7, n, corrupt_at=bad)  # type: ignore[call-overload]
    t.join(60)
    err = box.get("error")
    assert isinstance(err, ValidationError)
    assert err.offset == bad
    assert err.expected == reference_pattern(7, bad, 1)[0]
    assert err.received == reference_pattern(7, bad, 1)[0] ^ 0xFF


def test_send_to_plain_receiver_is_exactly_the_pattern() -> None:
    n = 5 * (1 << 20) + 12345  # not a multiple of the chunk, the region or the period
    peer = PlainReceiver()
    r = transfer.send_stream("127.0.0.1", peer.port, nbytes=n, validate=7, backend="emulated",
                             size=1 << 20, chunk=16 << 10)
    peer.join()
    assert r.bytes == n and r.role == "send" and r.backend == "emulated"
    assert bytes(peer.data) == reference_pattern(7, 0, n)
    assert r.completions is not None and r.completions > 0


def test_demo_small_is_validated() -> None:
    demo = transfer.run_demo(nbytes=32 << 20, validate=7, backend="emulated")
    assert demo["validated"] is True
    assert demo["bytes"] == 32 << 20
    assert demo["recv"]["bytes"] == demo["send"]["bytes"] == 32 << 20
    assert demo["recv"]["tokens_released"] == demo["recv"]["frags"]


def test_receive_without_connection_times_out_and_cleans_up() -> None:
    with pytest.raises(TimeoutError):
        transfer.receive_stream("127.0.0.1", 0, accept_timeout=0.2, backend="emulated", size=1 << 20)
    # the NIC is restored: a second run binds the same queue again
    t, box, _ = _recv_in_thread(size=1 << 20)
    assert "error" not in box, box.get("error")
    plain_send("127.0.0.1", int(box["port"]), 7, 1 << 20)  # type: ignore[call-overload]
    t.join(30)
    assert "error" not in box, box.get("error")


def test_bad_inputs_say_what_to_do() -> None:
    with pytest.raises(DevmemError, match="multiple of 4096"):
        transfer.receive_stream("127.0.0.1", 0, backend="emulated", size=1000)
    with pytest.raises(DevmemError, match="no interface named"):
        transfer.receive_stream("127.0.0.1", 0, ifname="nosuch0", backend="emulated")
    with pytest.raises(DevmemError, match="cannot connect"):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        transfer.send_stream("127.0.0.1", port, nbytes=10, backend="emulated", size=1 << 20)


def test_validator_interleaves_linear_pieces_in_stream_order() -> None:
    """A batch with SCM_DEVMEM_LINEAR pieces between frags is checked in
    stream order (linear_at tells how many frags precede each piece)."""
    from devmemtcp.codec import FragBatch
    from devmemtcp.memory import open_dmabuf

    period = 7
    stream = np.frombuffer(reference_pattern(period, 0, 3 * 4096 + 100), dtype=np.uint8)
    with open_dmabuf("host", 8 * 4096) as buf:
        view = buf.host_view()
        # stream: linear[0:100], frag A (4096 at dmabuf page 5), frag B (page 2), frag C (page 3)
        view[5 * 4096:6 * 4096] = stream[100:4196]
        view[2 * 4096:3 * 4096] = stream[4196:8292]
        view[3 * 4096:4 * 4096] = stream[8292:12388]
        batch = FragBatch(
            offset=np.array([5 * 4096, 2 * 4096, 3 * 4096], dtype=np.uint64),
            size=np.full(3, 4096, dtype=np.uint32), token=np.array([1, 2, 3], dtype=np.uint32),
            dmabuf_id=np.ones(3, dtype=np.uint32), linear_bytes=100,
            linear_sizes=np.array([100], dtype=np.uint32), linear_at=np.array([0], dtype=np.int64),
            linear=stream[:100].copy())
        v = FragValidator(period, buf)
        v.check_batch(batch)
        # a corrupted byte in frag C is reported at its stream offset
        view[3 * 4096 + 10] ^= 0xFF
        v2 = FragValidator(period, buf)
        with pytest.raises(ValidationError) as info:
            v2.check_batch(batch)
        assert info.value.offset == 8292 + 10


def test_validator_refuses_frags_outside_the_dmabuf() -> None:
    from devmemtcp.codec import FragBatch
    from devmemtcp.memory import open_dmabuf

    with open_dmabuf("host", 2 * 4096) as buf:
        buf.host_view()[:] = np.frombuffer(reference_pattern(7, 0, 2 * 4096), dtype=np.uint8)
        v = FragValidator(7, buf)
        batch = FragBatch(offset=np.array([0, 4096], dtype=np.uint64), size=np.full(2, 4096, dtype=np.uint32),
                          token=np.array([1, 2], dtype=np.uint32), dmabuf_id=np.ones(2, dtype=np.uint32))
        v.check_batch(batch)  # the whole dma-buf, one run
        beyond = FragBatch(offset=np.array([4096, 8192], dtype=np.uint64),
                           size=np.full(2, 4096, dtype=np.uint32), token=np.array([3, 4], dtype=np.uint32),
                           dmabuf_id=np.ones(2, dtype=np.uint32))
        with pytest.raises(DevmemError, match="outside the 8192-byte dma-buf"):
            FragValidator(7, buf).check_batch(beyond)
        # scattered frags (many runs) are range-checked too
        n = 40
        offs = np.zeros(n, dtype=np.uint64)  # the same page over and over: every frag is a run
        offs[-1] = 3 * 4096
        scattered = FragBatch(offset=offs, size=np.full(n, 4096, dtype=np.uint32),
                              token=np.arange(1, n + 1, dtype=np.uint32),
                              dmabuf_id=np.ones(n, dtype=np.uint32))
        with pytest.raises(DevmemError, match="outside the 8192-byte dma-buf"):
            FragValidator(7, buf).check_batch(scattered)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_validator_property_any_frag_layout(data: st.DataObject) -> None:
    """Frags scattered over the dma-buf in any order (whole pages, partial
    pages, contiguous runs or not) validate when they hold the stream, and a
    single flipped byte is reported at its exact stream offset."""
    from devmemtcp.codec import FragBatch
    from devmemtcp.memory import open_dmabuf

    period = data.draw(st.integers(2, 256), label="period")
    npages = 48
    nfrags = data.draw(st.integers(1, npages), label="nfrags")
    pages = data.draw(st.permutations(range(npages)), label="pages")[:nfrags]
    if data.draw(st.booleans(), label="sorted"):
        pages = sorted(pages)  # contiguous runs
    if data.draw(st.booleans(), label="whole_pages"):  # the np.take path when scattered
        sizes = [4096] * len(pages)
    else:
        sizes = [data.draw(st.sampled_from([4096, 4096, 4096, 1, 100, 4095]), label="size") for _ in pages]
    start = data.draw(st.integers(0, 10_000), label="stream_start")
    stream = np.frombuffer(reference_pattern(period, start, sum(sizes)), dtype=np.uint8)
    with open_dmabuf("host", npages * 4096) as buf:
        view = buf.host_view()
        pos = 0
        for p, n in zip(pages, sizes, strict=True):
            view[p * 4096:p * 4096 + n] = stream[pos:pos + n]
            pos += n
        batch = FragBatch(offset=np.array(pages, dtype=np.uint64) * 4096,
                          size=np.array(sizes, dtype=np.uint32),
                          token=np.arange(1, nfrags + 1, dtype=np.uint32),
                          dmabuf_id=np.ones(nfrags, dtype=np.uint32))
        v = FragValidator(period, buf)
        v.checker.check(np.frombuffer(reference_pattern(period, 0, start), dtype=np.uint8))
        v.check_batch(batch)
        bad = data.draw(st.integers(0, sum(sizes) - 1), label="bad")
        pos = 0
        for p, n in zip(pages, sizes, strict=True):
            if pos <= bad < pos + n:
                view[p * 4096 + bad - pos] ^= 0x80
            pos += n
        v2 = FragValidator(period, buf)
        v2.checker.check(np.frombuffer(reference_pattern(period, 0, start), dtype=np.uint8))
        with pytest.raises(ValidationError) as info:
            v2.check_batch(batch)
        assert info.value.offset == start + bad


def test_wildcard_listener_is_steered_by_the_interfaces_address() -> None:
    """--listen 0.0.0.0 --ifname lo: the ntuple rule takes lo's own address
    (127.0.0.1), so a connection to 127.0.0.1 still lands on the devmem queue."""
    assert ifaces.address_of_interface("lo") == "127.0.0.1"
    box: dict[str, object] = {}
    ready = threading.Event()

    def body() -> None:
        try:
            box["result"] = transfer.receive_stream(
                "0.0.0.0", 0, ifname="lo", validate=7, backend="emulated", size=1 << 20, accept_timeout=30,
                on_ready=lambda port: (box.__setitem__("port", port), ready.set()))
        except BaseException as exc:
            box["error"] = exc
            ready.set()

    t = threading.Thread(target=body, daemon=True)
    t.start()
    assert ready.wait(30) and "error" not in box, box.get("error")
    plain_send("127.0.0.1", int(box["port"]), 7, 4 << 20)  # type: ignore[call-overload]
    t.join(30)
    assert "error" not in box, box.get("error")
    r = box["result"]
    assert isinstance(r, transfer.TransferResult)
    assert r.validated is True and r.flow_steering_errors == 0 and r.frags >= (4 << 20) // 4096


# ---------------------------------------------------------------------------
# A stream's length (issue 11 item 1) and data-path socket errors (item 4)
# ---------------------------------------------------------------------------
def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("sent", [0, 1000, 3 * (1 << 20) + 5])
def test_a_stream_cut_short_is_incomplete_never_validated(sent: int) -> None:
    """A pattern prefix (even mid-period, or nothing at all) is not the stream."""
    n = 4 << 20
    t, box, _ = _recv_in_thread(validate=7, size=4 << 20, expect_bytes=n)
    plain_send("127.0.0.1", int(box["port"]), 7, sent)  # type: ignore[call-overload]
    t.join(60)
    err = box.get("error")
    assert isinstance(err, IncompleteStreamError), box
    assert err.message == f"stream ended after {sent} of {n} bytes"
    assert err.expected == n and err.received == sent and err.overrun_at is None
    r = err.result
    assert isinstance(r, transfer.TransferResult)
    assert r.complete is False and r.validated is False and r.bytes == sent
    assert r.tokens_released == r.frags  # every token given back on this path too


def test_a_stream_past_its_length_names_the_overrun_offset() -> None:
    n = 1 << 20
    t, box, _ = _recv_in_thread(validate=7, size=4 << 20, expect_bytes=n)
    with contextlib.suppress(OSError):  # the receiver stops reading at the overrun
        plain_send("127.0.0.1", int(box["port"]), 7, n + 1)  # type: ignore[call-overload]
    t.join(60)
    err = box.get("error")
    assert isinstance(err, IncompleteStreamError), box
    assert err.overrun_at == n and f"stream offset {n}" in err.message and err.received > n
    assert isinstance(err.result, transfer.TransferResult) and err.result.complete is False


def test_a_mismatch_before_the_end_beats_the_overrun() -> None:
    n, bad = 1 << 20, 1000
    t, box, _ = _recv_in_thread(validate=7, size=4 << 20, expect_bytes=n)
    with contextlib.suppress(OSError):
        plain_send("127.0.0.1", int(box["port"]), 7, 2 * n, corrupt_at=bad)  # type: ignore[call-overload]
    t.join(60)
    err = box.get("error")
    assert isinstance(err, ValidationError) and err.offset == bad, box


def test_exact_length_is_complete_and_no_length_is_not_checked() -> None:
    n = 2 * (1 << 20) + 3  # mid-period end
    t, box, _ = _recv_in_thread(validate=7, size=4 << 20, expect_bytes=n)
    plain_send("127.0.0.1", int(box["port"]), 7, n)  # type: ignore[call-overload]
    t.join(60)
    r = box.get("result")
    assert isinstance(r, transfer.TransferResult), box
    assert r.complete is True and r.validated is True and r.as_dict()["complete"] is True
    t, box, _ = _recv_in_thread(validate=7, size=4 << 20)
    plain_send("127.0.0.1", int(box["port"]), 7, n)  # type: ignore[call-overload]
    t.join(60)
    r = box.get("result")
    assert isinstance(r, transfer.TransferResult), box
    assert r.complete is None and r.validated is True


def test_a_length_without_validation_is_still_checked() -> None:
    t, box, _ = _recv_in_thread(size=4 << 20, expect_bytes=5000)
    plain_send("127.0.0.1", int(box["port"]), 7, 4999)  # type: ignore[call-overload]
    t.join(60)
    err = box.get("error")
    assert isinstance(err, IncompleteStreamError) and err.received == 4999, box
    assert isinstance(err.result, transfer.TransferResult) and err.result.validated is None


@pytest.mark.parametrize("before", [0, 3 << 20])
def test_a_reset_is_a_stream_error_naming_the_bytes(before: int) -> None:
    t, box, _ = _recv_in_thread(validate=7, size=4 << 20, expect_bytes=64 << 20, rcvlowat=0)
    s = socket.create_connection(("127.0.0.1", int(box["port"])))  # type: ignore[call-overload]
    if before:
        s.sendall(reference_pattern(7, 0, before))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _queued(s):
            time.sleep(0.01)  # let the receiver read it all before the reset
    _reset(s)
    t.join(60)
    err = box.get("error")
    assert isinstance(err, StreamError), box
    assert err.message.startswith("connection reset by the peer 127.0.0.1:")
    assert err.message.endswith(f" after {before} bytes") and err.bytes_done == before


def _queued(s: socket.socket) -> int:
    import fcntl
    import termios

    return int(struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])


def test_a_silent_sender_past_idle_timeout_is_a_stream_error() -> None:
    t, box, _ = _recv_in_thread(validate=7, size=4 << 20, idle_timeout=0.5, rcvlowat=0)
    with socket.create_connection(("127.0.0.1", int(box["port"]))) as s:  # type: ignore[call-overload]
        s.sendall(reference_pattern(7, 0, 10000))
        t.join(30)
    err = box.get("error")
    assert isinstance(err, StreamError), box
    assert "no data from the peer" in err.message and "for 0.5 s after 10000 bytes" in err.message


def test_send_to_a_receiver_that_resets_is_a_stream_error() -> None:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)

    def reset_after_a_little() -> None:
        conn, _ = ls.accept()
        conn.recv(1 << 16)
        _reset(conn)

    th = threading.Thread(target=reset_after_a_little, daemon=True)
    th.start()
    with pytest.raises(StreamError) as ei:
        transfer.send_stream("127.0.0.1", ls.getsockname()[1], nbytes=1 << 30, validate=7,
                             backend="emulated", size=1 << 20)
    th.join(10)
    ls.close()
    assert ei.value.errno in (errno.ECONNRESET, errno.EPIPE)
    assert re.match(r"connection (reset|closed) by the peer 127\.0\.0\.1:\d+ after \d+ bytes",
                    ei.value.message), ei.value.message


def test_send_to_a_receiver_that_takes_nothing_times_out() -> None:
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    t0 = time.monotonic()
    # a 64 MiB dma-buf: the socket buffer (at most 4 MiB) fills before the regions run out
    # (sendmsg blocks); a 64 KiB one is one region, reused only once acked (the Sender waits)
    for size, needle in ((64 << 20, "took no data for 0.5 s after"), (64 << 10, "not completed after 0.5 s")):
        with pytest.raises(DevmemError) as ei:
            transfer.send_stream("127.0.0.1", ls.getsockname()[1], nbytes=1 << 30, validate=7,
                                 backend="emulated", size=size, idle_timeout=0.5)
        assert needle in ei.value.message, ei.value.message
    took = time.monotonic() - t0
    ls.close()
    assert took < 30


def test_a_reset_after_the_last_sendmsg_is_not_a_complete_send() -> None:
    """Every byte handed to the kernel, none read, then the peer resets: the
    sends complete (the purged skbs are freed) but the stream is not complete."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)

    def reset_unread() -> None:
        conn, _ = ls.accept()
        time.sleep(0.5)  # the sender is waiting for its completions by now
        _reset(conn)

    th = threading.Thread(target=reset_unread, daemon=True)
    th.start()
    t0 = time.monotonic()
    with pytest.raises(StreamError) as ei:
        transfer.send_stream("127.0.0.1", ls.getsockname()[1], nbytes=8 << 10, validate=7,
                             backend="emulated", size=1 << 20)
    took = time.monotonic() - t0
    th.join(10)
    ls.close()
    assert ei.value.errno == errno.ECONNRESET, ei.value.message
    assert re.match(r"connection reset by the peer 127\.0\.0\.1:\d+ after 8192 bytes", ei.value.message)
    assert took < 5  # not the 10 s completion timeout


def test_idle_timeout_counts_silence_not_recvmsg_calls() -> None:
    """1000 bytes (under the default SO_RCVLOWAT) then silence: the receiver
    gives up after about idle_timeout, not after a wait for the low-water
    mark plus another full timeout."""
    t, box, _ = _recv_in_thread(validate=7, size=4 << 20, idle_timeout=2.0)
    with socket.create_connection(("127.0.0.1", int(box["port"]))) as s:  # type: ignore[call-overload]
        s.sendall(reference_pattern(7, 0, 1000))
        t0 = time.monotonic()
        t.join(30)
        took = time.monotonic() - t0
    err = box.get("error")
    assert isinstance(err, StreamError) and "for 2 s after 1000 bytes" in err.message, box
    assert 2.0 <= took < 3.5, took
