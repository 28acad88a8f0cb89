"""receive_stream's clock and its progress callback start at the first byte, not at
accept (and an idle timeout covers the wait for it); a reset stream is a StreamError (exit
status 2), never complete; peer= makes the rule a 5-tuple; on_batch sees every batch."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import pytest

from devmemtcp import transfer
from devmemtcp.errors import StreamError

sys.path.insert(0, os.path.dirname(__file__))
from transfer_helpers import reference_pattern, wait_nic_free

pytestmark = pytest.mark.root  # the emulated NIC keeps its state under /run


@pytest.fixture(autouse=True)
def _nic_not_held_by_another_run() -> None:
    wait_nic_free("lo")


def _receiver(out: dict, **kw: object) -> tuple[threading.Thread, threading.Event]:
    ready = threading.Event()

    def on_ready(port: int) -> None:
        out["port"] = port
        ready.set()

    def go() -> None:
        try:
            out["result"] = transfer.receive_stream("127.0.0.1", 0, backend="emulated", accept_timeout=30,
                                                    on_ready=on_ready, **kw)  # type: ignore[arg-type]
        except BaseException as exc:
            out["error"] = exc
            ready.set()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    assert ready.wait(30)
    return t, ready


def test_seconds_and_progress_start_at_the_first_byte() -> None:
    """A sender that connects, then takes 0.8 s before its first byte: neither the
    summary's seconds nor the progress clock count that wait."""
    out: dict = {}
    calls: list[tuple[float, int]] = []
    t, _ = _receiver(out, on_progress=lambda n: calls.append((time.monotonic(), n)))
    with socket.create_connection(("127.0.0.1", out["port"])) as s:
        connected = time.monotonic()
        time.sleep(0.8)
        s.sendall(reference_pattern(7, 0, 4 << 20))
    t.join(60)
    res = out["result"]
    assert res.bytes == 4 << 20
    assert calls[0][1] == 0 and calls[0][0] - connected >= 0.75  # the clock starts with the data
    assert res.seconds < 0.7
    assert calls[-1][1] == 4 << 20


def test_reset_is_a_stream_error_and_on_batch_sees_the_stream_in_order() -> None:
    out: dict = {}
    seen: list[int] = []
    t, _ = _receiver(out, on_batch=lambda b: seen.append(b.nbytes + b.linear_bytes + len(b.readable)))
    s = socket.create_connection(("127.0.0.1", out["port"]))
    s.sendall(b"\x01" * 100_000)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()  # linger 0: RST, the stream ends without its FIN
    t.join(60)
    err = out.get("error")
    assert isinstance(err, StreamError) and err.exit_status == 2, out
    assert "connection reset by the peer" in err.message
    assert err.bytes_done == sum(seen)  # on_batch saw every byte received before the reset


def test_idle_timeout_covers_the_wait_for_the_first_byte() -> None:
    """A sender that connects and sends nothing: the idle timeout applies before the
    first byte too (the clock's wait for it is not a way around --timeout)."""
    out: dict = {}
    t, _ = _receiver(out, idle_timeout=0.5)
    with socket.create_connection(("127.0.0.1", out["port"])):
        t.join(30)
    err = out.get("error")
    assert isinstance(err, StreamError) and "no data from the peer" in err.message, out


def test_peer_makes_a_5_tuple_rule() -> None:
    """peer= (ncdevmem's -c): the rule matches the source address and, as ncdevmem's, source port PORT."""
    from devmemtcp.backend.emulated import EmulatedBackend

    out: dict = {}
    t, _ = _receiver(out, peer="127.0.0.2")
    be = EmulatedBackend()
    try:
        rules = [r for r in be.nic("lo").list_rules() if r.dst_port == out["port"]]
    finally:
        be.close()
    assert [(r.dst_ip, r.src_ip, r.src_port) for r in rules] == [("127.0.0.1", "127.0.0.2", out["port"])]
    with socket.socket() as s:
        s.bind(("127.0.0.2", out["port"]))
        s.connect(("127.0.0.1", out["port"]))
        s.sendall(reference_pattern(7, 0, 1 << 20))
    t.join(60)
    res = out["result"]
    assert res.bytes == 1 << 20 and res.flow_steering_errors == 0 and res.peer == f"127.0.0.2:{out['port']}"
