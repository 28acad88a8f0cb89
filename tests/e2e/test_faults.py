"""Fault injection: `devmemtcp recv`, `send`, `setup` and `restore` killed,
stopped and reset at random points, as processes, over lo on the emulated NIC.

Every trial checks the same invariants:

* the exit status says what happened (0 only for a complete, validated
  stream; 1 a stream that did not validate or was incomplete; 2 an error);
* at most one clear message (``devmemtcp CMD: ...`` and its ``hint:``),
  never a traceback;
* nothing is left: no undo journal, no ntuple rule, header split, hds-thresh,
  RSS or channel change, no bound queue on the emulated NIC (after
  ``devmemtcp restore`` where the receiver itself was killed); in-process,
  no fd and no held token;
* a new ``recv`` on the same port works at once (the next trial's, and a
  last one after every test).

Seeded (``DEVMEMTCP_FAULT_SEED``, default 11). ``DEVMEMTCP_FAULT_TRIALS``
trials per kind of kill and reset (default 8, about two minutes on the
2-core development VM; the issue's full count is 20:
``DEVMEMTCP_FAULT_TRIALS=20``), a tenth of that (at least 1) per SIGSTOP
case. Each CLI process costs about a second to start there, so a trial is
a few seconds. ``DEVMEMTCP_FAULT_REPORT=PATH`` appends each test's
figures (faults survived / tried, outcomes) there as JSON lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from transfer_helpers import plain_send, reference_pattern, wait_listening

pytestmark = [pytest.mark.root, pytest.mark.faults]

CLI = [sys.executable, "-m", "devmemtcp.cli.main"]
TRIALS = max(1, int(os.environ.get("DEVMEMTCP_FAULT_TRIALS", "8")))
SEED = int(os.environ.get("DEVMEMTCP_FAULT_SEED", "11"))
STOP_TRIALS = max(1, TRIALS // 10)
PERIOD = 7
#: bytes of one killed transfer (a fraction of a second over lo, emulated)
KILL_BYTES = 256 << 20
#: recv --timeout in the kill trials: a sender killed before it connected costs this much
RECV_TIMEOUT = 5.0


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
class Tally:
    """Survived / tried of one test, with every failure's story."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tried = 0
        self.failures: list[str] = []
        self.outcomes: Counter[str] = Counter()

    def trial(self, label: str, outcome: str, problems: list[str]) -> None:
        self.tried += 1
        self.outcomes[outcome] += 1
        if problems:
            self.failures.append(f"{label} ({outcome}): " + "; ".join(problems))

    def finish(self) -> None:
        survived = self.tried - len(self.failures)
        figures = {"test": self.name, "survived": survived, "tried": self.tried, "seed": SEED,
                   "outcomes": dict(sorted(self.outcomes.items()))}
        print(f"\n{self.name}: faults survived {survived}/{self.tried} {figures['outcomes']}")
        path = os.environ.get("DEVMEMTCP_FAULT_REPORT")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(figures) + "\n")
        assert not self.failures, "\n".join(self.failures)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nic_snapshot() -> dict[str, Any]:
    """What the emulated NIC on lo holds that a flow may change."""
    from devmemtcp.emulation.nic import EmulatedNicControl

    nic = EmulatedNicControl("lo")
    return {"rings": nic.get_rings(), "channels": nic.get_channels(), "rss": nic.get_rss_indir(),
            "rules": nic.list_rules(), "bound": nic.bound_queues()}


def leftovers(baseline: dict[str, Any]) -> list[str]:
    """Everything a flow left behind: NIC settings differing from ``baseline``,
    bound queues, undo journals."""
    problems = []
    now = nic_snapshot()
    for key, value in now.items():
        if value != baseline[key]:
            problems.append(f"{key} left changed: {value!r} (was {baseline[key]!r})")
    jdir = os.environ["DEVMEMTCP_JOURNAL_DIR"]
    if os.path.isdir(jdir):
        left = sorted(n for n in os.listdir(jdir) if not n.startswith("."))
        if left:
            problems.append(f"journal left: {left}")
    return problems


def message_problems(err: str, rc: int, command: str) -> list[str]:
    """One clear message: nothing on rc 0; else ``devmemtcp CMD: ...``
    optionally followed by ``hint: ...`` (notes ``devmemtcp: ...`` and the ``backend: ...``
    line aside)."""
    if "Traceback" in err:
        return [f"traceback: {err[-800:]!r}"]
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("devmemtcp: ", "backend: "))]
    if rc == 0:
        return [f"rc 0 with a message: {lines!r}"] if lines else []
    if not lines or not lines[0].startswith(f"devmemtcp {command}:") or len(lines) > 2 or (
            len(lines) == 2 and not lines[1].startswith("hint: ")):
        return [f"not one clear message: {lines!r}"]
    return []


def _read_until(proc: subprocess.Popen[str], needle: str, timeout: float = 30) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"never saw {needle!r} on stderr: {''.join(seen)!r} rc={proc.poll()}")


def start_recv(port: int, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([*CLI, "recv", "--listen", "127.0.0.1", "--port", str(port), "--backend",
                             "emulated", "--validate", str(PERIOD), "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    got, early = wait_listening(proc)
    assert got == port
    return proc, early


def start_send(port: int, nbytes: int, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """A `devmemtcp send` (8 MiB dma-buf: quick to fill), returned once it
    has picked its backend (it connects right after)."""
    proc = subprocess.Popen([*CLI, "send", "127.0.0.1", "--port", str(port), "--bytes", str(nbytes),
                             "--validate", str(PERIOD), "--size", "8M", "--backend", "emulated", "--json",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, _read_until(proc, "backend: emulated")


def finish(proc: subprocess.Popen[str], early: str = "", timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return -999, out, early + err + "\n[the test killed it: it hung]"
    return proc.returncode, out, early + err


def restore_lo() -> list[str]:
    res = subprocess.run([*CLI, "restore", "lo"], capture_output=True, text=True, timeout=60)
    problems = message_problems(res.stderr, res.returncode, "restore")
    if res.returncode != 0:
        problems.append(f"restore exit {res.returncode}: {res.stderr.strip()[-300:]!r}")
    return problems


def transfer_time(port: int) -> float:
    """Seconds from the sender's backend note to its exit for a whole
    KILL_BYTES transfer here and now: the span the kill trials draw from."""
    recv, early = start_recv(port, "--timeout", "30", "--bytes", str(KILL_BYTES))
    send, _ = start_send(port, KILL_BYTES)
    t0 = time.monotonic()
    send.communicate(timeout=120)
    took = time.monotonic() - t0
    rc, _out, err = finish(recv, early)
    assert rc == 0 and send.returncode == 0, err
    return took


def new_recv_works(port: int) -> list[str]:
    """A new validated, length-checked recv on ``port`` at once."""
    try:
        proc, early = start_recv(port, "--timeout", "20", "--bytes", "1M")
    except AssertionError as exc:
        return [f"a new recv on port {port} did not start: {exc}"]
    try:
        plain_send("127.0.0.1", port, PERIOD, 1 << 20)
    except OSError as exc:
        proc.kill()
        return [f"a new recv on port {port} took no connection: {exc}"]
    rc, out, err = finish(proc, early)
    if rc != 0:
        return [f"a new recv on port {port} failed: rc {rc} {err.strip()[-300:]!r}"]
    res = json.loads(out)
    if not (res["complete"] is True and res["validated"] is True):
        return [f"a new recv on port {port}: {res}"]
    return []


def _json(out: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(out)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


@pytest.fixture
def baseline() -> dict[str, Any]:
    return nic_snapshot()


def wait_established(port: int, timeout: float = 30) -> bool:
    """Wait until a TCP connection to local ``port`` is established (the
    kernel's /proc/net/tcp, state 01): the sender has connected, and from
    then on it holds no lock of the emulated NIC (bind-tx took and dropped it)."""
    deadline = time.monotonic() + timeout
    want = f":{port:04X} "
    while time.monotonic() < deadline:
        with open("/proc/net/tcp", encoding="ascii") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if (fields[1] + " ").endswith(want) and fields[3] == "01":
                    return True
        time.sleep(0.005)
    return False


def _unacked(sock: socket.socket) -> int:
    import fcntl
    import termios

    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])


def _send_then_reset(port: int, nbytes: int, data: bytes) -> None:
    """Connect, send ``nbytes`` of the pattern, wait until the peer acked them
    all (so the reset drops none of them), then close with SO_LINGER 0 (RST)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        if nbytes:
            s.sendall(memoryview(data)[:nbytes])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _unacked(s):
                time.sleep(0.005)
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


# ---------------------------------------------------------------------------
# SIGKILL of either end of a validated transfer
# ---------------------------------------------------------------------------
def test_sigkill_of_the_sender_never_passes_a_cut_stream(baseline: dict[str, Any]) -> None:
    rng = random.Random(SEED)
    tally = Tally("sigkill-sender")
    port = _free_port()
    span = transfer_time(port)
    for i in range(TRIALS):
        delay = rng.uniform(0.0, 0.8 * span)  # the span ends with the sender's exit
        recv, early = start_recv(port, "--timeout", str(RECV_TIMEOUT), "--bytes", str(KILL_BYTES))
        send, _ = start_send(port, KILL_BYTES)
        time.sleep(delay)
        send.kill()
        send.communicate(timeout=30)
        rc, out, err = finish(recv, early)
        problems = message_problems(err, rc, "recv")
        res = _json(out)
        outcome = f"rc{rc}"
        if rc == 0:
            outcome = "completed before the kill"
            if not (res and res["complete"] is True and res["validated"] is True
                    and res["bytes"] == KILL_BYTES):
                problems.append(f"rc 0 but not a complete stream: {res}")
        elif rc == 1:
            outcome = "incomplete"
            m = re.search(r"stream ended after (\d+) of (\d+) bytes", err)
            if not m or int(m.group(2)) != KILL_BYTES or int(m.group(1)) >= KILL_BYTES:
                problems.append(f"rc 1 without 'stream ended after K of N bytes': {err[-300:]!r}")
            if not (res and res["complete"] is False and res["validated"] is False
                    and m and res["bytes"] == int(m.group(1)) and res["tokens_released"] == res["frags"]):
                problems.append(f"rc 1 summary: {res}")
        elif rc == 2 and "no connection on 127.0.0.1" in err:
            outcome = "killed before it connected"
        elif rc == 2 and "connection reset by the peer" in err:
            outcome = "reset"
        else:
            problems.append(f"unexpected exit {rc}: {err[-300:]!r}")
        problems += leftovers(baseline)
        tally.trial(f"trial {i} (kill after {delay:.3f} s of {span:.3f})", outcome, problems)
    tally.trial("a new recv on the same port", "new recv", new_recv_works(port))
    tally.finish()


def test_sigkill_of_the_receiver_then_restore(baseline: dict[str, Any]) -> None:
    rng = random.Random(SEED + 1)
    tally = Tally("sigkill-receiver")
    port = _free_port()
    span = transfer_time(port)
    for i in range(TRIALS):
        delay = rng.uniform(0.0, 0.8 * span)  # the span ends with the sender's exit
        recv, _ = start_recv(port, "--timeout", "30", "--bytes", str(KILL_BYTES))
        send, early = start_send(port, KILL_BYTES, "--timeout", "10")
        time.sleep(delay)
        recv.kill()
        recv.communicate(timeout=30)
        rc, out, err = finish(send, early)
        problems = message_problems(err, rc, "send")
        res = _json(out)
        outcome = f"rc{rc}"
        if rc == 0:
            outcome = "sent before the kill"
            if not (res and res["complete"] is True and res["bytes"] == KILL_BYTES):
                problems.append(f"rc 0 but not all sent: {res}")
        elif rc == 2 and re.search(r"connection (reset|closed) by the peer 127\.0\.0\.1:\d+ after \d+ bytes",
                                   err):
            outcome = "reset" if "reset" in err else "broken pipe"
        elif rc == 2 and "cannot connect" in err:
            outcome = "killed before it accepted"
        else:
            problems.append(f"unexpected exit {rc}: {err[-300:]!r}")
        problems += restore_lo()
        problems += leftovers(baseline)
        tally.trial(f"trial {i} (kill after {delay:.3f} s of {span:.3f})", outcome, problems)
    tally.trial("a new recv on the same port", "new recv", new_recv_works(port))
    tally.finish()


def test_sigkill_of_the_receiver_while_it_sets_up_then_restore(baseline: dict[str, Any]) -> None:
    """Killed between its backend note and 'listening': inside the NIC set-up
    (header split, RSS, rule, bind), whose journal must let restore undo
    every step already made."""
    rng = random.Random(SEED + 8)
    tally = Tally("sigkill-receiver-setup")
    port = _free_port()
    cmd = [*CLI, "recv", "--listen", "127.0.0.1", "--port", str(port), "--backend", "emulated",
           "--validate", str(PERIOD), "--timeout", "30"]

    def started() -> subprocess.Popen[str]:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _read_until(proc, "backend: emulated")  # the set-up starts right after this note
        return proc

    proc = started()
    t0 = time.monotonic()
    _read_until(proc, "listening on")
    span = time.monotonic() - t0  # the set-up, here and now
    proc.kill()
    proc.communicate(timeout=30)
    problems = restore_lo() + leftovers(baseline)
    assert not problems, problems
    for i in range(TRIALS):
        delay = rng.uniform(0.0, span)
        proc = started()
        time.sleep(delay)
        proc.kill()
        proc.communicate(timeout=30)
        changed = leftovers(baseline)  # what the killed receiver left, before restore
        outcome = "killed with the NIC set up (in part)" if changed else "killed before any change"
        problems = restore_lo() + leftovers(baseline)
        tally.trial(f"trial {i} (kill after {delay:.3f} s of {span:.3f})", outcome, problems)
    tally.trial("a new recv on the same port", "new recv", new_recv_works(port))
    tally.finish()


# ---------------------------------------------------------------------------
# Peer reset (SO_LINGER 0) at random offsets, the first before any byte
# ---------------------------------------------------------------------------
def test_peer_reset_at_random_offsets_is_exit_2_naming_the_bytes(baseline: dict[str, Any]) -> None:
    rng = random.Random(SEED + 2)
    tally = Tally("reset")
    port = _free_port()
    total = 32 << 20
    data = reference_pattern(PERIOD, 0, total)
    offsets = [0, 1] + [rng.randrange(1, total) for _ in range(max(0, TRIALS - 2))]
    for i, off in enumerate(offsets[:TRIALS]):
        recv, early = start_recv(port, "--timeout", "20", "--bytes", str(total))
        _send_then_reset(port, off, data)
        rc, out, err = finish(recv, early)
        problems = message_problems(err, rc, "recv")
        m = re.search(r"error: connection reset by the peer 127\.0\.0\.1:\d+ after (\d+) bytes", err)
        if rc != 2 or not m:
            problems.append(f"rc {rc}, not 'connection reset by the peer after K bytes': {err[-300:]!r}")
        elif int(m.group(1)) != off:
            problems.append(f"reset after {off} bytes reported after {m.group(1)}")
        # with --json: only the error object {error, hint, errno, exit_status}, never a summary
        obj = json.loads(out) if out.strip() else None
        if obj is None or set(obj) != {"error", "hint", "errno", "exit_status"} or obj["exit_status"] != 2:
            problems.append(f"not the JSON error object on stdout for a reset: {out[:200]!r}")
        problems += leftovers(baseline)
        tally.trial(f"trial {i} (reset after {off} bytes)", "reset", problems)
    tally.trial("a new recv on the same port", "new recv", new_recv_works(port))
    tally.finish()


def _receive_into(box: dict[str, Any], ready: threading.Event, port: int, be: Any, total: int) -> None:
    from devmemtcp.transfer import receive_stream

    try:
        box["result"] = receive_stream("127.0.0.1", port, validate=PERIOD, backend=be, size=4 << 20,
                                       accept_timeout=20, expect_bytes=total,
                                       on_ready=lambda _p: ready.set())
    except BaseException as exc:
        box["error"] = exc
    finally:
        ready.set()


def test_peer_reset_in_process_leaves_no_fd_and_no_token(baseline: dict[str, Any]) -> None:
    """receive_stream in this process: after each reset the process has the
    fds it had, and the backend holds no frag of any binding."""
    from devmemtcp.backend.emulated import EmulatedBackend
    from devmemtcp.errors import StreamError

    rng = random.Random(SEED + 3)
    tally = Tally("reset-in-process")
    total = 16 << 20
    data = reference_pattern(PERIOD, 0, total)
    port = _free_port()
    with EmulatedBackend() as be:
        fds_before = len(os.listdir("/proc/self/fd"))
        for i in range(max(2, TRIALS // 4)):
            off = 0 if i == 0 else rng.randrange(1, total)
            box: dict[str, Any] = {}
            ready = threading.Event()
            t = threading.Thread(target=_receive_into, args=(box, ready, port, be, total), daemon=True)
            t.start()
            assert ready.wait(30)
            _send_then_reset(port, off, data)
            t.join(60)
            problems = []
            err = box.get("error")
            if not isinstance(err, StreamError) or err.bytes_done != off:
                problems.append(f"reset after {off} bytes gave {box}")
            held = [b for b in be.stats()["bindings"] if b.get("inflight")]
            if held:
                problems.append(f"frags still held: {held}")
            open_rx = [b for b in be.stats()["bindings"] if b["kind"] == "rx" and not b["closed"]]
            if open_rx:
                problems.append(f"RX binding still open: {open_rx}")
            fds = len(os.listdir("/proc/self/fd"))
            if fds != fds_before:
                problems.append(f"{fds - fds_before:+d} fds")
            problems += leftovers(baseline)
            tally.trial(f"trial {i} (reset after {off} bytes)", "reset", problems)
    tally.finish()


# ---------------------------------------------------------------------------
# SIGSTOP of either end for longer than the other's --timeout
#
# Stopped once connected: a sender stopped inside bind-tx holds the emulated
# NIC's state lock, and the receiver's clean-up then waits for it with no
# limit (issue 11 item 2, the lock's own fix), not a data-path case.
# ---------------------------------------------------------------------------
def test_sigstop_of_the_sender_past_the_receivers_timeout(baseline: dict[str, Any]) -> None:
    rng = random.Random(SEED + 4)
    tally = Tally("sigstop-sender")
    port = _free_port()
    for i in range(STOP_TRIALS):
        delay = rng.uniform(0.05, 0.3)
        recv, early = start_recv(port, "--timeout", "2", "--bytes", "8G")
        send, send_early = start_send(port, 8 << 30)
        assert wait_established(port)
        time.sleep(delay)
        send.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            rc, _out, err = finish(recv, early, timeout=30)
            took = time.monotonic() - t0
        finally:
            send.send_signal(signal.SIGCONT)
        problems = message_problems(err, rc, "recv")
        if rc != 2 or not re.search(r"no data from the peer 127\.0\.0\.1:\d+ for 2 s after \d+ bytes", err):
            problems.append(f"receiver: rc {rc} {err[-300:]!r}")
        if took > 15:
            problems.append(f"the receiver took {took:.1f} s to give up on a 2 s timeout")
        src, _sout, serr = finish(send, send_early)
        problems += message_problems(serr, src, "send")
        if src != 2 or not re.search(r"connection (reset|closed) by the peer", serr):
            problems.append(f"sender after SIGCONT: rc {src} {serr[-300:]!r}")
        problems += leftovers(baseline)
        tally.trial(f"trial {i} (stop after {delay:.3f} s)", "receiver timed out", problems)
    tally.trial("a new recv on the same port", "new recv", new_recv_works(port))
    tally.finish()


def test_sigstop_of_the_receiver_past_the_senders_timeout(baseline: dict[str, Any]) -> None:
    rng = random.Random(SEED + 5)
    tally = Tally("sigstop-receiver")
    port = _free_port()
    for i in range(STOP_TRIALS):
        delay = rng.uniform(0.05, 0.3)
        recv, early = start_recv(port, "--timeout", "30", "--bytes", "8G")
        send, send_early = start_send(port, 8 << 30, "--timeout", "2")
        assert wait_established(port)
        time.sleep(delay)
        recv.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            src, _sout, serr = finish(send, send_early, timeout=30)
            took = time.monotonic() - t0
        finally:
            recv.send_signal(signal.SIGCONT)
        problems = message_problems(serr, src, "send")
        if src != 2 or not re.search(r"took no data for 2 s after \d+ bytes|not completed after 2 s", serr):
            problems.append(f"sender: rc {src} {serr[-300:]!r}")
        if took > 15:
            problems.append(f"the sender took {took:.1f} s to give up on a 2 s timeout")
        rc, out, err = finish(recv, early)
        problems += message_problems(err, rc, "recv")
        res = _json(out)
        if rc == 1:
            if not (res and res["complete"] is False and "stream ended after" in err):
                problems.append(f"receiver after SIGCONT: rc 1 {err[-300:]!r} {res}")
        elif not (rc == 2 and "connection reset by the peer" in err):
            problems.append(f"receiver after SIGCONT: rc {rc} {err[-300:]!r}")
        problems += leftovers(baseline)
        tally.trial(f"trial {i} (stop after {delay:.3f} s)", f"sender timed out, receiver rc{rc}", problems)
    tally.trial("a new recv on the same port", "new recv", new_recv_works(port))
    tally.finish()


# ---------------------------------------------------------------------------
# SIGKILL during `devmemtcp setup` and during `devmemtcp restore`
# ---------------------------------------------------------------------------
def _setup_cmd(port: int) -> list[str]:
    return [*CLI, "setup", "lo", "--listen", "127.0.0.1", "--port", str(port), "--queues", "3:1",
            "--backend", "emulated"]


def _timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return time.monotonic() - t0


def _kill_after(cmd: list[str], delay: float) -> int:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=delay)
    proc.kill()
    return proc.wait(timeout=30)


def test_sigkill_during_setup_then_restore(baseline: dict[str, Any]) -> None:
    rng = random.Random(SEED + 6)
    tally = Tally("sigkill-setup")
    port = _free_port()
    took = _timed(_setup_cmd(port))  # how long a whole setup takes here
    problems = restore_lo() + leftovers(baseline)
    assert not problems, problems
    for i in range(TRIALS):
        delay = rng.uniform(0.0, took * 1.1)
        rc = _kill_after(_setup_cmd(port), delay)
        outcome = "setup finished" if rc == 0 else "setup killed"
        problems = restore_lo() + leftovers(baseline)
        tally.trial(f"trial {i} (kill after {delay:.3f} s of {took:.3f})", outcome, problems)
    tally.trial("a new recv on the same port", "new recv", new_recv_works(port))
    tally.finish()


def test_sigkill_during_restore_then_restore_again(baseline: dict[str, Any]) -> None:
    rng = random.Random(SEED + 7)
    tally = Tally("sigkill-restore")
    port = _free_port()
    _timed(_setup_cmd(port))
    took = _timed([*CLI, "restore", "lo"])
    assert not leftovers(baseline)
    for i in range(TRIALS):
        setup = subprocess.run(_setup_cmd(port), capture_output=True, text=True, timeout=60)
        assert setup.returncode == 0, setup.stderr
        delay = rng.uniform(0.0, took * 1.1)
        rc = _kill_after([*CLI, "restore", "lo"], delay)
        outcome = "restore finished" if rc == 0 else "restore killed"
        problems = restore_lo() + leftovers(baseline)
        tally.trial(f"trial {i} (kill after {delay:.3f} s of {took:.3f})", outcome, problems)
    tally.trial("a new recv on the same port", "new recv", new_recv_works(port))
    tally.finish()
