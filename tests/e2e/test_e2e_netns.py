"""End to end across namespaces and for long transfers.

The receiver runs in one namespace on veth0 (192.0.2.1), the sender in the
other on veth1 (MTU 1500), each started with `ip netns exec NS ...`; the
emulated devmem NIC sits under the devmemtcp end only. The 4 GiB test
checks that the receiver's resident memory does not grow with the bytes it
receives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from transfer_helpers import plain_send, reference_pattern, wait_listening, wait_nic_free

HERE = os.path.dirname(os.path.abspath(__file__))
CLI = [sys.executable, "-m", "devmemtcp.cli.main"]


@pytest.fixture(autouse=True)
def _nic_not_held_by_another_run() -> None:
    """Other test runs on this machine may hold lo / veth0's set-up for a while: wait for them."""
    for name in ("lo", "veth0"):
        wait_nic_free(name)


def _in_ns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def _plain_sender(ns: str, addr: str, port: int, nbytes: int, corrupt_at: int | None = None) -> list[str]:
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {HERE!r})
        from transfer_helpers import plain_send
        try:
            plain_send({addr!r}, {port}, 7, {nbytes}, corrupt_at={corrupt_at!r})
        except OSError as exc:
            print("sender stopped:", exc, file=sys.stderr)
    """)
    return _in_ns(ns, [sys.executable, "-c", code])


def _recv_in(ns: str, addr: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(_in_ns(ns, [*CLI, "recv", "--listen", addr, "--port", "0", "--timeout", "60",
                                        *extra]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.root
@pytest.mark.netns
def test_plain_sender_to_recv_across_namespaces(netns_pair) -> None:  # type: ignore[no-untyped-def]
    n = 256 << 20
    proc = _recv_in(netns_pair.ns_a, netns_pair.addr_a, "--validate", "7", "--json")
    port, _early = wait_listening(proc)
    snd = subprocess.run(_plain_sender(netns_pair.ns_b, netns_pair.addr_a, port, n),
                         capture_output=True, text=True, timeout=300)
    assert snd.returncode == 0, snd.stderr
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    res = json.loads(out)
    assert res["validated"] is True and res["bytes"] == n
    assert res["ifname"] == netns_pair.veth_a and res["backend"] == "emulated"
    assert res["flow_steering_errors"] == 0
    print(f"veth plain->recv 256 MiB: {res['seconds']:.2f} s, {res['gbps']} Gbit/s, {res['frags']} frags")


@pytest.mark.root
@pytest.mark.netns
def test_corrupted_byte_across_namespaces_fails_with_its_offset(netns_pair) -> None:  # type: ignore[no-untyped-def]
    n, bad = 32 << 20, 20_000_001
    proc = _recv_in(netns_pair.ns_a, netns_pair.addr_a, "--validate", "7")
    port, _early = wait_listening(proc)
    subprocess.run(_plain_sender(netns_pair.ns_b, netns_pair.addr_a, port, n, corrupt_at=bad),
                   capture_output=True, text=True, timeout=300)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert f"offset {bad}" in err
    assert f"expected 0x{reference_pattern(7, bad, 1)[0]:02x}" in err


@pytest.mark.root
@pytest.mark.netns
def test_send_to_plain_receiver_across_namespaces(netns_pair) -> None:  # type: ignore[no-untyped-def]
    n = 48 << 20
    code = textwrap.dedent(f"""
        import sys, json; sys.path.insert(0, {HERE!r})
        from transfer_helpers import PlainReceiver
        r = PlainReceiver({netns_pair.addr_a!r}, period=7, keep=False)
        print(r.port, flush=True)
        r.join()
        print(json.dumps({{"total": r.total, "mismatch": r.mismatch}}), flush=True)
    """)
    rcv = subprocess.Popen(_in_ns(netns_pair.ns_a, [sys.executable, "-c", code]),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert rcv.stdout is not None
    port = int(rcv.stdout.readline())
    snd = subprocess.run(_in_ns(netns_pair.ns_b, [*CLI, "send", netns_pair.addr_a, "--port", str(port),
                                                  "--bytes", "48M", "--validate", "7", "--json"]),
                         capture_output=True, text=True, timeout=300)
    assert snd.returncode == 0, snd.stderr
    out, err = rcv.communicate(timeout=120)
    assert rcv.returncode == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    assert got == {"total": n, "mismatch": None}
    sent = json.loads(snd.stdout)
    assert sent["ifname"] == netns_pair.veth_b and sent["bytes"] == n


@pytest.mark.root
@pytest.mark.netns
def test_send_to_recv_across_namespaces(netns_pair) -> None:  # type: ignore[no-untyped-def]
    proc = _recv_in(netns_pair.ns_a, netns_pair.addr_a, "--validate", "7", "--json")
    port, _early = wait_listening(proc)
    snd = subprocess.run(_in_ns(netns_pair.ns_b, [*CLI, "send", netns_pair.addr_a, "--port", str(port),
                                                  "--bytes", "64M", "--validate", "7", "--json"]),
                         capture_output=True, text=True, timeout=300)
    assert snd.returncode == 0, snd.stderr
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    res = json.loads(out)
    assert res["validated"] is True and res["bytes"] == 64 << 20
    print(f"veth send->recv 64 MiB: {res['seconds']:.2f} s, {res['gbps']} Gbit/s")


@pytest.mark.root
@pytest.mark.slow
def test_receiver_rss_is_bounded_over_4gib() -> None:
    """Resident memory of the recv process after 4 GiB is within a few MiB of
    what it was after the first 512 MiB: nothing grows with bytes received."""
    n = 4 << 30
    proc = subprocess.Popen([*CLI, "recv", "--listen", "127.0.0.1", "--port", "0", "--timeout", "60",
                             "--validate", "7", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port, early = wait_listening(proc)
    ps = psutil.Process(proc.pid)
    samples: list[tuple[int, int]] = []
    import threading

    done = threading.Event()

    def sender() -> None:
        try:
            plain_send("127.0.0.1", port, 7, n)
        finally:
            done.set()

    t = threading.Thread(target=sender, daemon=True)
    t0 = time.monotonic()
    t.start()
    while not done.wait(0.02):  # 4 GiB takes about a second on loopback: sample often
        try:
            samples.append((int(time.monotonic() - t0), ps.memory_info().rss))
        except psutil.NoSuchProcess:
            break
    t.join()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    res = json.loads(out)
    assert res["validated"] is True and res["bytes"] == n
    assert len(samples) >= 5
    early = max(rss for _, rss in samples[: max(2, len(samples) // 8)])
    peak = max(rss for _, rss in samples)
    print(f"recv RSS: early {early / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB over 4 GiB "
          f"({res['seconds']:.1f} s, {res['gbps']} Gbit/s)")
    assert peak - early < 32 << 20, (early, peak)


def _journals() -> list[str]:
    jdir = os.environ["DEVMEMTCP_JOURNAL_DIR"]
    return sorted(p for p in os.listdir(jdir) if p.endswith(".json")) if os.path.isdir(jdir) else []


@pytest.mark.root
@pytest.mark.netns
def test_namespace_name_deleted_under_a_running_flow(netns_pair) -> None:  # type: ignore[no-untyped-def]
    """`ip netns del` of the receiver's namespace while its flow runs: the
    namespace lives on while the receiver is in it, so the stream completes,
    validated, and the receiver still undoes its NIC set-up on exit (the
    journal names the namespace by inode and cookie, not only by name)."""
    n = 256 << 20
    proc = _recv_in(netns_pair.ns_a, netns_pair.addr_a, "--validate", "7", "--bytes", str(n), "--json")
    port, _ = wait_listening(proc)
    assert _journals() == [f"{netns_pair.veth_a}@{netns_pair.ns_a}.json"]
    snd = subprocess.Popen(_plain_sender(netns_pair.ns_b, netns_pair.addr_a, port, n),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    subprocess.run(["ip", "netns", "del", netns_pair.ns_a], check=True, capture_output=True)
    assert snd.poll() is None and proc.poll() is None, "the flow ended before the namespace lost its name"
    out, err = proc.communicate(timeout=120)
    snd.communicate(timeout=30)
    assert proc.returncode == 0, err
    res = json.loads(out)
    assert res["bytes"] == n and res["validated"] is True and res["complete"] is True
    assert _journals() == []  # undone inside the namespace that had lost its name


@pytest.mark.root
@pytest.mark.netns
def test_restore_after_the_namespace_is_gone_sets_the_journal_aside(netns_pair) -> None:  # type: ignore[no-untyped-def]
    """A receiver killed (SIGKILL) inside a namespace that is then deleted
    leaves a journal whose namespace no longer exists (its veth and every
    setting went with it): restore says so, sets the journal aside (kept for
    a person to read) and exits 0; a second restore finds nothing."""
    proc = _recv_in(netns_pair.ns_a, netns_pair.addr_a, "--json")
    wait_listening(proc)
    # ip netns exec is the child; the CLI is its exec'd image (same pid)
    proc.kill()
    proc.communicate(timeout=30)
    assert _journals() == [f"{netns_pair.veth_a}@{netns_pair.ns_a}.json"]
    subprocess.run(["ip", "netns", "del", netns_pair.ns_a], check=True, capture_output=True)
    deadline = time.monotonic() + 10
    res = subprocess.run([*CLI, "restore", "--json"], capture_output=True, text=True)
    while "no longer exists" not in res.stdout + res.stderr and time.monotonic() < deadline:
        time.sleep(0.2)  # the kernel frees the namespace a moment after its last user
        res = subprocess.run([*CLI, "restore", "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "no longer exists" in res.stdout + res.stderr
    assert _journals() == []
    stale = os.listdir(os.path.join(os.environ["DEVMEMTCP_JOURNAL_DIR"], "stale"))
    assert len(stale) == 1 and stale[0].startswith(f"{netns_pair.veth_a}@{netns_pair.ns_a}.json")
    again = subprocess.run([*CLI, "restore"], capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to restore" in again.stdout + again.stderr
