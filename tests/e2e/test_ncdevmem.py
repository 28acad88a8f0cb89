"""The ``ncdevmem`` script driven the way the kernel's drv-net devmem tests drive ncdevmem.

tools/testing/selftests/drivers/net/hw/devmem.py and devmem_lib.py build these
command lines (check_rx, check_tx, check_tx_chunks, require_devmem's probe)
and check only what a script can see: the exit status, and the bytes that
reach the other end. The two hosts are two network namespaces joined by a
veth pair (the emulated devmem NIC under the ncdevmem end); socat is the
plain peer, as in the kernel's tests. check_txrx's pipe into sha256sum is
here too: the server without -v writes the stream to stdout.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from transfer_helpers import plain_send, reference_pattern, wait_nic_free

pytestmark = [pytest.mark.root, pytest.mark.skipif(not shutil.which("socat"),
                                                  reason="needs socat (apt-get install socat)")]

NCDEVMEM = f"{shlex.quote(sys.executable)} -m devmemtcp.cli.ncdevmem"
PATTERN_1K = "yes $(echo -e \\\\x01\\\\x02\\\\x03\\\\x04\\\\x05\\\\x06) | head -c {n}"


@pytest.fixture(autouse=True)
def _nic_not_held_by_another_run() -> None:
    for name in ("lo", "veth0", "veth1"):
        wait_nic_free(name)


def _ns(ns: str | None, command: str) -> list[str]:
    """A shell command line, inside network namespace ``ns`` (as lib.py's cmd(..., ns=))."""
    argv = ["bash", "-c", command]
    return ["ip", "netns", "exec", ns, *argv] if ns else argv


_port_counter = [0]


def _rand_port() -> int:
    """A free port below the kernel's ephemeral range: a port in that range may be the local
    port of some other connection on lo (ncdevmem then fails to bind)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    for _ in range(200):
        _port_counter[0] += 1
        port = 10000 + (os.getpid() * 7 + _port_counter[0] * 131) % max(1, low - 10000)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free port below the ephemeral range")


def _wait_port_listen(port: int, ns: str | None = None, timeout: float = 60,
                      server: subprocess.Popen[Any] | None = None) -> None:
    """lib.py's wait_port_listen: poll `ss -ltn` until something listens on ``port``;
    fails at once, with its stderr, when ``server`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            err = server.stderr.read() if server.stderr is not None else b""
            raise AssertionError(f"the server exited ({server.returncode}) before listening on {port}: "
                                 f"{err.decode(errors='replace') if isinstance(err, bytes) else err}")
        out = subprocess.run(_ns(ns, f"ss -Hltn sport = :{port}"), capture_output=True, text=True).stdout
        if f":{port}" in out:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


def _bkg(ns: str | None, command: str, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(_ns(ns, command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def _finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> tuple[int, bytes, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err.decode(errors="replace")


@pytest.mark.netns
@pytest.mark.parametrize("nbytes", ["1K", "32M"])
def test_check_rx_5tuple_validated(netns_pair, nbytes: str) -> None:  # type: ignore[no-untyped-def]
    """devmem.py check_rx: `ncdevmem -l -f IF -s ADDR -p PORT -c REMOTE -v 7` and socat
    from REMOTE:PORT sending the pattern; ncdevmem's exit status is 0."""
    p = netns_pair
    port = _rand_port()
    listen = f"{NCDEVMEM} -l -f {p.veth_a} -s {p.addr_a} -p {port} -c {p.addr_b} -v 7"
    server = _bkg(p.ns_a, listen)
    _wait_port_listen(port, p.ns_a, server=server)
    socat = f"socat -u - TCP4:{p.addr_a}:{port},bind={p.addr_b}:{port}"
    send = subprocess.run(_ns(p.ns_b, f"{PATTERN_1K.format(n=nbytes)} | {socat}"), capture_output=True,
                          text=True, timeout=120)
    assert send.returncode == 0, send.stderr
    rc, out, err = _finish(server)
    assert rc == 0, err
    assert out == b""  # with -v nothing but the verdict, and that goes to stderr
    assert "validated" in err and "Traceback" not in err


@pytest.mark.netns
@pytest.mark.parametrize(("chunk", "nk"), [(0, False), (3, False), (0, True)])
def test_check_tx_and_tx_chunks(netns_pair, chunk: int, nk: bool) -> None:  # type: ignore[no-untyped-def]
    """devmem.py check_tx / check_tx_chunks: socat listens on the remote end, ncdevmem sends
    `echo -e "hello\\nworld"` from its TX dma-buf (-z 3: three-byte iovecs; nk: the extra
    flags devmem_lib.ncdevmem_tx passes in netkit mode, -t 0 -q 1 -n)."""
    p = netns_pair
    port = _rand_port()
    listener = _bkg(p.ns_b, f"socat -U - TCP4-LISTEN:{port}")
    _wait_port_listen(port, p.ns_b)
    extra = (" -t 0 -q 1 -n" if nk else "") + (f" -z {chunk}" if chunk else "")
    tx = subprocess.run(_ns(p.ns_a, f"echo -e \"hello\\nworld\" | {NCDEVMEM} -f {p.veth_a} -s {p.addr_b} "
                                    f"-p {port}{extra}"), capture_output=True, text=True, timeout=120)
    assert tx.returncode == 0, tx.stderr
    rc, out, err = _finish(listener)
    assert rc == 0, err
    assert out.decode().strip() == "hello\nworld"


@pytest.mark.netns
def test_check_txrx_stream_to_stdout_matches_sha256(netns_pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Both ends ncdevmem: the client sends a file from stdin through its TX dma-buf, the
    server (no -v) writes what it receives to stdout, piped to sha256sum as check_txrx does."""
    p = netns_pair
    payload = tmp_path / "payload.bin"
    data = os.urandom(5 << 20) + b"tail, not a page multiple"
    payload.write_bytes(data)
    port = _rand_port()
    server = _bkg(p.ns_a, f"set -o pipefail; {NCDEVMEM} -l -f {p.veth_a} -s {p.addr_a} -p {port} | sha256sum")
    _wait_port_listen(port, p.ns_a, server=server)
    tx = subprocess.run(_ns(p.ns_b, f"{NCDEVMEM} -f {p.veth_b} -s {p.addr_a} -p {port} < {payload}"),
                        capture_output=True, text=True, timeout=120)
    assert tx.returncode == 0, tx.stderr
    rc, out, err = _finish(server)
    assert rc == 0, err
    assert out.decode().split()[0] == hashlib.sha256(data).hexdigest()


def test_stream_to_stdout_on_lo_is_byte_exact(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On lo, 20 MiB of the pattern from a plain sender: stdout (a file here, so the
    sender is never held back by a full pipe) is exactly what was sent."""
    port = _rand_port()
    dest = tmp_path / "stream.out"
    with dest.open("wb") as f:
        server = subprocess.Popen(_ns(None, f"{NCDEVMEM} -l -f lo -s 127.0.0.1 -p {port}"), stdout=f,
                                  stderr=subprocess.PIPE)
        _wait_port_listen(port, server=server)
        n = 20 << 20
        plain_send("127.0.0.1", port, 251, n)
        _out, err = server.communicate(timeout=120)
    assert server.returncode == 0, err
    assert dest.read_bytes() == reference_pattern(251, 0, n)


@pytest.mark.parametrize("size", [1, 4096, 8192])
def test_rx_hds_fail_on_linear(size: int) -> None:
    """devmem_lib.run_rx_hds: `-L` (fail on SCM_DEVMEM_LINEAR), no -v, one segment of SIZE bytes
    from `dd | socat -b SIZE ...,nodelay`; with header split every byte is in the dma-buf."""
    port = _rand_port()
    server = _bkg(None, f"{NCDEVMEM} -l -f lo -s 127.0.0.1 -p {port} -L")
    _wait_port_listen(port, server=server)
    send = subprocess.run(_ns(None, f"dd if=/dev/zero bs={size} count=1 2>/dev/null | "
                                    f"socat -b {size} -u - TCP4:127.0.0.1:{port},nodelay"),
                          capture_output=True, text=True, timeout=60)
    assert send.returncode == 0, send.stderr
    rc, out, err = _finish(server)
    assert rc == 0, f"HDS failed for payload size {size}: {err}"
    assert out == bytes(size)


def test_server_skip_config_on_a_nic_set_up_beforehand() -> None:
    """nk_devmem.py's mode: the NIC is configured first (here by `devmemtcp setup`), then
    `ncdevmem -l ... -t Q -q 1 -n` only binds; the NIC is restored afterwards."""
    cli = [sys.executable, "-m", "devmemtcp.cli.main"]
    port = _rand_port()
    setup = subprocess.run([*cli, "setup", "lo", "--listen", "127.0.0.1", "--port", str(port), "--queues",
                            "3:1", "--backend", "emulated"], capture_output=True, text=True, timeout=60)
    assert setup.returncode == 0, setup.stderr
    try:
        server = _bkg(None, f"{NCDEVMEM} -l -f lo -s 127.0.0.1 -p {port} -t 3 -q 1 -n -v 7")
        _wait_port_listen(port, server=server)
        plain_send("127.0.0.1", port, 7, 8 << 20)
        rc, _out, err = _finish(server)
    finally:
        restore = subprocess.run([*cli, "restore", "lo"], capture_output=True, text=True, timeout=60)
    assert restore.returncode == 0, restore.stderr
    assert rc == 0, err
    assert "validated" in err


def test_validation_mismatch_exits_1() -> None:
    port = _rand_port()
    server = _bkg(None, f"{NCDEVMEM} -l -f lo -s 127.0.0.1 -p {port} -v 7")
    _wait_port_listen(port, server=server)
    with contextlib.suppress(OSError):  # the server closes on the mismatch
        plain_send("127.0.0.1", port, 7, 1 << 20, corrupt_at=12345)
    rc, _out, err = _finish(server)
    assert rc == 1, err
    assert "validation failed at stream offset 12345" in err and "Traceback" not in err


def test_probe_like_require_devmem() -> None:
    """devmem_lib.require_devmem runs `ncdevmem -f IF` and skips unless it exits 0: the
    emulated NIC passes ncdevmem's binding checks; the kernel backend on lo does not."""
    ok = subprocess.run(_ns(None, f"{NCDEVMEM} -f lo"), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    for case in ("bind-empty-queues", "bind-header-split-off", "bind-ok", "channels-below-bound-queue"):
        assert f"{case}: pass" in ok.stderr
    no = subprocess.run(_ns(None, f"{NCDEVMEM} -f lo --backend kernel"), capture_output=True, text=True,
                        timeout=120)
    assert no.returncode == 1, no.stderr
    assert "devmemtcp doctor lo" in no.stderr and "Traceback" not in no.stderr


@pytest.mark.parametrize(("args", "needle"), [
    ("-l -s 127.0.0.1 -p 5201", "Missing -f argument"),
    ("-l -f lo -c 127.0.0.2 -p 5201", "Missing -s argument"),  # neither -s nor -c: the probe
    ("-l -f lo -s 127.0.0.1", "Missing -p argument"),
    ("-l -f lo -s 127.0.0.1 -p 5201 -t 1", "Missing -q argument"),
    ("-l -f lo -s 127.0.0.1 -p 5201 -q 1", "Missing -t argument"),
    ("-f lo -t 1", "Both -t and -q are required"),
    ("-l -f lo -s 127.0.0.1 -p 70000", "out of range"),
    ("-l -f lo -s 127.0.0.1 -p -1", "out of range"),
    ("-l -f lo -s 127.0.0.1 -p 5201 -v 1", "between 2 and 256"),
    ("-l -f lo -s nohost -p 5201", "not an IP address"),
    ("-f lo -s 127.0.0.1 -p 5201 -z 0", "at least 1 byte"),
    ("-l -f lo -s 127.0.0.1 -p 5201 -t 1 -q 0", "at least one queue"),
    ("-l -f nosuch0 -s 127.0.0.1 -p 5201", "no interface named"),
    ("-x", "unrecognized arguments"),
    ("-f lo -b 3000", "must be a power of 2"),
    ("-f lo -b 2048", "must be >= PAGE_SIZE"),
    ("-f lo -b 16384", "not supported by devmemtcp"),  # devmem_lib's probe at 16K: exit 1, the test skips
])
def test_bad_arguments_exit_1_in_one_line(args: str, needle: str) -> None:
    """ncdevmem returns 1 for every failure, bad arguments included."""
    res = subprocess.run(_ns(None, f"{NCDEVMEM} {args} < /dev/null"), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[-2].startswith("ncdevmem: error: ") and needle in lines[-2], res.stderr
    assert lines[-1].startswith("hint: ") and "Traceback" not in res.stderr
