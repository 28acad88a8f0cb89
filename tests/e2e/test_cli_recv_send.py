"""`devmemtcp recv`, `send` and `demo` as processes, against plain TCP peers.

The receiver is started with --port 0 and says on stderr which port it got.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from transfer_helpers import PlainReceiver, plain_send, reference_pattern, wait_listening, wait_nic_free

pytestmark = pytest.mark.root  # the emulated NIC keeps its state under /run


@pytest.fixture(autouse=True)
def _nic_not_held_by_another_run() -> None:
    """Other test runs on this machine may hold lo's set-up for a while: wait for them."""
    for name in ("lo",):
        wait_nic_free(name)

CLI = [sys.executable, "-m", "devmemtcp.cli.main"]


def _recv(*extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, "recv", "--listen", "127.0.0.1", "--port", "0", "--timeout", "60",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_recv_validates_256mib_from_a_plain_sender() -> None:
    n = 256 << 20
    proc = _recv("--validate", "7", "--json")
    port, early = wait_listening(proc)
    plain_send("127.0.0.1", port, 7, n)
    rc, out, err = _finish(proc)
    assert rc == 0, err
    res = json.loads(out)
    assert res["validated"] is True
    assert res["bytes"] == n
    assert res["backend"] == "emulated"
    assert res["flow_steering_errors"] == 0
    assert res["tokens_released"] == res["frags"] >= n // 4096
    assert res["release_syscalls"] <= res["frags"] // 1024 + 64
    assert res["gbps"] > 0 and res["seconds"] > 0
    # auto says which backend it picked, and why, in one short line (the full reason is in the JSON)
    assert "backend: emulated — lo has no devmem queue API; `devmemtcp doctor lo` says why" in early
    assert res["backend_reason"].startswith("doctor: no devmem RX on lo (queue-management-api: ")


def test_recv_names_the_offset_of_one_corrupted_byte() -> None:
    n, bad = 256 << 20, 123_456_789
    proc = _recv("--validate", "7")
    port, _early = wait_listening(proc)
    with contextlib.suppress(OSError):  # the receiver stops reading at the mismatch
        plain_send("127.0.0.1", port, 7, n, corrupt_at=bad)
    rc, out, err = _finish(proc)
    assert rc == 1, (out, err)
    expected = reference_pattern(7, bad, 1)[0]
    assert f"offset {bad}" in err
    assert f"expected 0x{expected:02x}" in err and f"received 0x{expected ^ 0xFF:02x}" in err
    assert "Traceback" not in err


def test_send_validate_7_gives_a_plain_receiver_exactly_the_pattern() -> None:
    n = 64 << 20
    peer = PlainReceiver(period=7, keep=False)
    res = subprocess.run([*CLI, "send", "127.0.0.1", "--port", str(peer.port), "--bytes", "64M",
                          "--validate", "7", "--json"], capture_output=True, text=True, timeout=120)
    peer.join()
    assert res.returncode == 0, res.stderr
    assert peer.total == n and peer.mismatch is None
    out = json.loads(res.stdout)
    assert out["bytes"] == n and out["backend"] == "emulated" and out["role"] == "send"


def test_send_to_devmemtcp_recv() -> None:
    proc = _recv("--validate", "13", "--json")
    port, _early = wait_listening(proc)
    snd = subprocess.run([*CLI, "send", "127.0.0.1", "--port", str(port), "--bytes", "40M",
                          "--validate", "13", "--chunk", "4K", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert snd.returncode == 0, snd.stderr
    rc, out, err = _finish(proc)
    assert rc == 0, err
    assert json.loads(out)["validated"] is True and json.loads(out)["bytes"] == 40 << 20


@pytest.mark.skipif(not shutil.which("socat"), reason="needs socat (apt-get install socat)")
def test_recv_from_socat_is_validated(tmp_path: object) -> None:
    proc = _recv("--validate", "7", "--json")
    port, _early = wait_listening(proc)
    gen = subprocess.Popen(["bash", "-c", "yes $(echo -e '\\x01\\x02\\x03\\x04\\x05\\x06') | head -c 32M | "
                            f"socat -u - TCP:127.0.0.1:{port}"])
    assert gen.wait(60) == 0
    rc, out, err = _finish(proc)
    assert rc == 0, err
    assert json.loads(out)["validated"] is True and json.loads(out)["bytes"] == 32 << 20


def test_demo_small_json() -> None:
    res = subprocess.run([*CLI, "demo", "--bytes", "64M", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["validated"] is True and out["bytes"] == 64 << 20 and out["backend"] == "emulated"
    assert out["recv"]["validated"] is True and out["send"]["bytes"] == 64 << 20


def test_demo_validates_1gib() -> None:
    """The README's main job: `devmemtcp demo` (1 GiB, validated). About 2 s
    on the 2-core development VM, so it runs always (not marked slow)."""
    t0 = time.monotonic()
    res = subprocess.run([*CLI, "demo", "--json"], capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["validated"] is True and out["bytes"] == 1 << 30
    print(f"demo 1 GiB: {took:.1f} s wall, {out['gbps']} Gbit/s")


def test_demo_table_output() -> None:
    res = subprocess.run([*CLI, "demo", "--bytes", "8M"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "validated" in res.stdout and "8.00 MiB" in res.stdout


@pytest.mark.parametrize(("argv", "needle"), [
    (["recv", "--listen", "127.0.0.1", "--port", "1", "--size", "1000"], "multiple of 4096"),
    (["recv", "--listen", "127.0.0.1", "--port", "0", "--ifname", "nosuch0"], "no interface named"),
    (["recv", "--listen", "0.0.0.0", "--port", "0"], "wildcard"),
    (["send", "127.0.0.1", "--port", "1", "--bytes", "1M"], "cannot connect"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], needle: str) -> None:
    res = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr and "hint:" in res.stderr and "Traceback" not in res.stderr


def test_argument_errors_exit_2() -> None:
    res = subprocess.run([*CLI, "recv", "--listen", "127.0.0.1", "--port", "1", "--validate", "1"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "between 2 and 256" in res.stderr
    res = subprocess.run([*CLI, "send", "127.0.0.1", "--port", "1", "--bytes", "1X"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "invalid size unit" in res.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _recv_on_a_setup_nic(nbytes: int, *setup_args: str) -> tuple[int, str, str]:
    """`devmemtcp setup` lo (queue 3, emulated) with ``setup_args``, then `recv
    --no-nic-config --validate 7 --json` of ``nbytes`` from a plain sender, then
    `devmemtcp restore lo` (checked). Returns the receiver's (rc, stdout, stderr)."""
    port = _free_port()
    setup = subprocess.run([*CLI, "setup", "lo", "--listen", "127.0.0.1", "--port", str(port),
                            "--queues", "3:1", "--backend", "emulated", *setup_args],
                           capture_output=True, text=True, timeout=60)
    assert setup.returncode == 0, setup.stderr
    try:
        proc = subprocess.Popen([*CLI, "recv", "--listen", "127.0.0.1", "--port", str(port), "--timeout",
                                 "60", "--queues", "3:1", "--no-nic-config", "--backend", "emulated",
                                 "--validate", "7", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(proc)
        plain_send("127.0.0.1", port, 7, nbytes)
        result = _finish(proc)
    finally:
        restore = subprocess.run([*CLI, "restore", "lo"], capture_output=True, text=True, timeout=60)
    assert restore.returncode == 0, restore.stderr
    return result


def test_recv_no_nic_config_uses_a_setup_made_by_devmemtcp_setup() -> None:
    rc, out, err = _recv_on_a_setup_nic(16 << 20)
    assert rc == 0, err
    res = json.loads(out)
    assert res["validated"] is True and res["flow_steering_errors"] == 0
    assert res["frags"] >= (16 << 20) // 4096


def test_recv_without_steering_counts_flow_steering_errors() -> None:
    """Header split and RSS set up but no ntuple rule (setup --skip rule): RSS
    keeps the flow off devmem queue 3, so it arrives as readable data: still
    validated, but every byte is counted as a flow-steering error."""
    n = 4 << 20
    rc, out, err = _recv_on_a_setup_nic(n, "--skip", "rule")
    assert rc == 0, err
    res = json.loads(out)
    assert res["validated"] is True and res["bytes"] == n
    assert res["flow_steering_errors"] == n and res["frags"] == 0


def _lo_journal() -> str:
    """lo's undo journal in this test's private journal directory (conftest)."""
    return os.path.join(os.environ["DEVMEMTCP_JOURNAL_DIR"], "lo.json")


def test_sigint_while_waiting_restores_the_nic() -> None:
    import signal

    proc = _recv("--validate", "7")
    port, _early = wait_listening(proc)
    assert os.path.exists(_lo_journal())  # the undo journal while set up
    proc.send_signal(signal.SIGINT)
    rc, _out, err = _finish(proc, timeout=60)
    assert rc == 130, err
    assert not os.path.exists(_lo_journal())
    # and the next receiver sets up and binds the same queue again
    proc = _recv("--validate", "7", "--json")
    port, _early = wait_listening(proc)
    plain_send("127.0.0.1", port, 7, 1 << 20)
    rc, out, err = _finish(proc)
    assert rc == 0 and json.loads(out)["validated"] is True, err


def test_sigterm_mid_transfer_restores_the_nic() -> None:
    import signal
    import threading

    proc = _recv("--validate", "7")
    port, _early = wait_listening(proc)
    t = threading.Thread(target=_quiet_send, args=(port, 8 << 30), daemon=True)
    t.start()
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rc, _out, err = _finish(proc, timeout=60)
    assert rc != 0 and "Traceback" not in err, err
    assert not os.path.exists(_lo_journal())
    t.join(30)


def _quiet_send(port: int, n: int) -> None:
    with contextlib.suppress(OSError):
        plain_send("127.0.0.1", port, 7, n)


def test_recv_over_ipv6_loopback() -> None:
    proc = subprocess.Popen([*CLI, "recv", "--listen", "::1", "--port", "0", "--timeout", "60", "--validate",
                             "7", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port, _early = wait_listening(proc)
    import socket

    plain_send("::1", port, 7, 8 << 20, family=socket.AF_INET6)
    rc, out, err = _finish(proc)
    assert rc == 0, err
    res = json.loads(out)
    assert res["validated"] is True and res["ifname"] == "lo" and res["flow_steering_errors"] == 0


def test_kernel_backend_on_lo_fails_with_the_kernels_reason() -> None:
    res = subprocess.run([*CLI, "recv", "--listen", "127.0.0.1", "--port", "0", "--backend", "kernel",
                          "--timeout", "5"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "hint:" in res.stderr and "Traceback" not in res.stderr
    assert not os.path.exists(_lo_journal())


@pytest.mark.skipif(not shutil.which("nc"), reason="needs OpenBSD netcat (apt-get install netcat-openbsd)")
def test_recv_from_yes_pipe_nc_as_in_ncdevmem_docs() -> None:
    """ncdevmem.c's own recipe: yes $(echo -e \\x01..\\x06) | head -c N | nc ADDR PORT."""
    proc = _recv("--validate", "7", "--json")
    port, _early = wait_listening(proc)
    gen = subprocess.run(["bash", "-c", "yes $(echo -e '\\x01\\x02\\x03\\x04\\x05\\x06') | head -c 64M | "
                          f"nc -N 127.0.0.1 {port}"], timeout=60)
    assert gen.returncode == 0
    rc, out, err = _finish(proc)
    assert rc == 0, err
    res = json.loads(out)
    assert res["validated"] is True and res["bytes"] == 64 << 20


@pytest.mark.skipif(not shutil.which("socat"), reason="needs socat (apt-get install socat)")
def test_send_to_socat_writing_a_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out_file = tmp_path / "received.bin"
    port = _free_port()
    rcv = subprocess.Popen(["socat", "-u", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
                            f"OPEN:{out_file},creat,trunc"])
    try:
        for _ in range(100):  # wait until socat listens
            if subprocess.run(["ss", "-Htln", f"sport = :{port}"], capture_output=True,
                              text=True).stdout.strip():
                break
            time.sleep(0.05)
        n = 3 * (1 << 20) + 5
        snd = subprocess.run([*CLI, "send", "127.0.0.1", "--port", str(port), "--bytes", str(n),
                              "--validate", "11", "--chunk", "4K"], capture_output=True, text=True,
                             timeout=60)
        assert snd.returncode == 0, snd.stderr
        assert rcv.wait(30) == 0
    finally:
        if rcv.poll() is None:
            rcv.kill()
            rcv.wait()
    assert out_file.read_bytes() == reference_pattern(11, 0, n)


def test_send_with_the_kernel_backend_reports_the_kernels_refusal() -> None:
    peer = PlainReceiver()
    res = subprocess.run([*CLI, "send", "127.0.0.1", "--port", str(peer.port), "--bytes", "1M",
                          "--backend", "kernel"], capture_output=True, text=True, timeout=60)
    # unblock the plain receiver (the sender never connected)
    import socket

    with contextlib.suppress(OSError):
        socket.create_connection(("127.0.0.1", peer.port), timeout=2).close()
    peer.join()
    assert res.returncode == 2, res.stderr
    # errno 95: Python's errno.errorcode names it ENOTSUP, the kernel EOPNOTSUPP
    assert re.search(r"bind-tx failed: (EOPNOTSUPP|ENOTSUP)\b", res.stderr), res.stderr
    assert "Driver does not support netmem TX" in res.stderr
    assert "hint:" in res.stderr


def _sigint_default() -> None:
    """(preexec_fn) SIGINT at its default in the child: a job started in the background
    by a non-interactive shell inherits SIGINT ignored, and Python then keeps it ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupted_demo(poll: float, settle: float) -> tuple[int, str, float]:
    """A 64 GiB demo sent SIGINT ``settle`` seconds after lo's journal appears
    (looked for every ``poll`` seconds): (exit status, stderr, seconds to exit)."""
    import signal

    # the demo's sender installs its SIGINT handler only after the receiver's journal
    # exists: without Python's own handler a SIGINT in between would be lost
    proc = subprocess.Popen([*CLI, "demo", "--bytes", "64G"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
    deadline = time.monotonic() + 30
    while not os.path.exists(_lo_journal()) and time.monotonic() < deadline:
        time.sleep(poll)
    time.sleep(settle)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    return proc.returncode, err, time.monotonic() - t0


def test_sigint_during_demo_restores_the_nic() -> None:
    rc, err, _took = _interrupted_demo(0.05, 0.5)
    assert rc == 130, err
    assert "Traceback" not in err
    assert not os.path.exists(_lo_journal())


def test_sigint_while_the_demo_sets_up_exits_at_once() -> None:
    # SIGINT as soon as the receiver's set-up is journaled, before it listens: the demo
    # lets it listen and unblocks it, rather than wait out its 30 s accept timeout
    rc, err, took = _interrupted_demo(0.002, 0.0)
    assert rc == 130, err
    assert took < 15, "the demo waited out its receiver's accept timeout"
    assert not os.path.exists(_lo_journal())


@pytest.mark.skipif(os.path.exists("/dev/udmabuf"), reason="checks the error when /dev/udmabuf is absent")
def test_memory_udmabuf_without_the_module_says_modprobe() -> None:
    res = subprocess.run([*CLI, "recv", "--listen", "127.0.0.1", "--port", "0", "--memory", "udmabuf",
                          "--timeout", "2"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "modprobe udmabuf" in res.stderr and "Traceback" not in res.stderr
    assert not os.path.exists(_lo_journal())


def test_validation_failure_json_names_offset_expected_received() -> None:
    n, bad = 2 << 20, 777_777
    proc = _recv("--validate", "9", "--json")
    port, _early = wait_listening(proc)
    with contextlib.suppress(OSError):
        plain_send("127.0.0.1", port, 9, n, corrupt_at=bad)
    rc, out, _err = _finish(proc)
    assert rc == 1
    exp = reference_pattern(9, bad, 1)[0]
    assert json.loads(out) == {"validated": False, "offset": bad, "expected": exp, "received": exp ^ 0xFF,
                               "error": f"validation failed at stream offset {bad}: expected 0x{exp:02x}, "
                                        f"received 0x{exp ^ 0xFF:02x}",
                               "hint": "check the sender uses the same --validate N, or look for "
                                       "corruption on the path",
                               "errno": None, "exit_status": 1}


def test_progress_line_appears_on_a_terminal() -> None:
    """stderr on a pty: recv draws its progress line (and erases it at the end)."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([*CLI, "recv", "--listen", "127.0.0.1", "--port", "0", "--timeout", "60",
                                 "--json"], stdout=subprocess.PIPE, stderr=slave, text=True)
        os.close(slave)
        slave = -1
        buf = b""
        while b"port " not in buf or not re.search(rb"port (\d+)", buf):
            buf += os.read(master, 4096)
        m = re.search(rb"port (\d+)", buf)
        assert m is not None
        plain_send("127.0.0.1", int(m.group(1)), 7, 1 << 30)
        out, _ = proc.communicate(timeout=120)
        with contextlib.suppress(OSError):
            while True:
                chunk = os.read(master, 65536)
                if not chunk:
                    break
                buf += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0
    assert json.loads(out)["bytes"] == 1 << 30
    text = buf.decode(errors="replace")
    # rich.progress: label, bytes, rate; transient, so erased at the end
    assert "recv" in text and "GiB" in text and "Gbit/s" in text and "\x1b[2K" in text


def test_mismatched_periods_fail_on_both_ends_without_tracebacks() -> None:
    """send --validate 5 into recv --validate 7: the receiver stops at the first
    byte (offset 4: expected 0x05, received 0x0a) and exits 1; the sender
    loses its connection and says so (exit 2)."""
    proc = _recv("--validate", "7")
    port, _early = wait_listening(proc)
    snd = subprocess.run([*CLI, "send", "127.0.0.1", "--port", str(port), "--bytes", "512M",
                          "--validate", "5"], capture_output=True, text=True, timeout=120)
    rc, _out, err = _finish(proc)
    assert rc == 1, err
    assert "offset 4: expected 0x05, received 0x0a" in err
    assert snd.returncode in (0, 2), snd.stderr  # 0 only if everything fit in socket buffers
    assert "Traceback" not in snd.stderr and "Traceback" not in err
    if snd.returncode == 2:
        assert re.search(r"connection (reset|closed) by the peer 127\.0\.0\.1:\d+ after \d+ bytes",
                         snd.stderr), snd.stderr


# ---------------------------------------------------------------------------
# recv --bytes N (issue 11 item 1), data-path errors (item 4), exit statuses
# ---------------------------------------------------------------------------
def test_recv_bytes_short_stream_exits_1_incomplete() -> None:
    n = 8 << 20
    proc = _recv("--validate", "7", "--bytes", "8M", "--json")
    port, _early = wait_listening(proc)
    plain_send("127.0.0.1", port, 7, 5 * (1 << 20) + 3)  # a clean close, mid-period
    rc, out, err = _finish(proc)
    assert rc == 1, err
    assert f"stream ended after {5 * (1 << 20) + 3} of {n} bytes" in err and "Traceback" not in err
    res = json.loads(out)
    assert res["validated"] is False and res["complete"] is False
    assert res["bytes"] == 5 * (1 << 20) + 3 and res["tokens_released"] == res["frags"]


def test_recv_bytes_zero_byte_stream_is_incomplete() -> None:
    proc = _recv("--validate", "7", "--bytes", "1M")
    port, _early = wait_listening(proc)
    plain_send("127.0.0.1", port, 7, 0)
    rc, out, err = _finish(proc)
    assert rc == 1, err
    assert "stream ended after 0 of 1048576 bytes" in err
    assert re.search(r"complete\s*│\s*no", out) and re.search(r"validated\s*│\s*no", out), out


def test_recv_bytes_overrun_exits_1_naming_the_offset() -> None:
    proc = _recv("--validate", "7", "--bytes", "1000", "--json")
    port, _early = wait_listening(proc)
    with contextlib.suppress(OSError):
        plain_send("127.0.0.1", port, 7, 1 << 20)
    rc, out, err = _finish(proc)
    assert rc == 1, err
    assert "byte at stream offset 1000 is past the 1000 bytes expected" in err and "Traceback" not in err
    res = json.loads(out)
    assert res["complete"] is False and res["validated"] is False


def test_recv_bytes_exact_is_complete_and_without_it_the_table_says_not_checked() -> None:
    proc = _recv("--validate", "7", "--bytes", "1003", "--json")
    port, _early = wait_listening(proc)
    plain_send("127.0.0.1", port, 7, 1003)
    rc, out, err = _finish(proc)
    assert rc == 0, err
    res = json.loads(out)
    assert res["complete"] is True and res["validated"] is True
    proc = _recv("--validate", "7", "--json")
    port, _early = wait_listening(proc)
    plain_send("127.0.0.1", port, 7, 1003)
    rc, out, err = _finish(proc)
    assert rc == 0, err
    res = json.loads(out)
    assert res["validated"] is True and res["complete"] is None
    proc = _recv("--validate", "7")
    port, _early = wait_listening(proc)
    plain_send("127.0.0.1", port, 7, 1003)
    rc, out, err = _finish(proc)
    assert rc == 0, err
    assert "length not checked" in out


def _unacked(sock: object) -> int:
    import fcntl
    import struct
    import termios

    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # type: ignore[attr-defined]
    return int(struct.unpack("i", raw)[0])


@pytest.mark.parametrize("before", [0, 2 << 20])
def test_recv_reset_by_the_peer_is_one_line_and_exit_2(before: int) -> None:
    import socket
    import struct

    proc = _recv("--validate", "7", "--bytes", "64M", "--rcvlowat", "0")
    port, _early = wait_listening(proc)
    s = socket.create_connection(("127.0.0.1", port))
    if before:
        s.sendall(reference_pattern(7, 0, before))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _unacked(s):
            time.sleep(0.01)  # every byte acked (so not dropped by the reset) before the reset
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    rc, out, err = _finish(proc)
    assert rc == 2, err
    assert re.search(rf"error: connection reset by the peer 127\.0\.0\.1:\d+ after {before} bytes\n",
                     err), err
    assert "Traceback" not in err and out == ""


def test_send_and_demo_summaries_say_complete() -> None:
    peer = PlainReceiver(period=7, keep=False)
    res = subprocess.run([*CLI, "send", "127.0.0.1", "--port", str(peer.port), "--bytes", "1M",
                          "--validate", "7", "--json"], capture_output=True, text=True, timeout=120)
    peer.join()
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["complete"] is True
    res = subprocess.run([*CLI, "demo", "--bytes", "4M", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["complete"] is True and out["recv"]["complete"] is True and out["send"]["complete"] is True


@pytest.mark.parametrize("command", ["recv", "send", "demo"])
def test_help_documents_the_exit_statuses(command: str) -> None:
    res = subprocess.run([*CLI, command, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for line in ("0 ok", "1 the data did not validate, or the stream was incomplete", "2 error",
                 "130 interrupted"):
        assert line in text, (line, res.stdout)
