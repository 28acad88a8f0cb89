"""Plain-TCP peers and an independent pattern reference for the transfer tests.

The reference pattern is written here from ncdevmem's validate_buffer()
(tools/testing/selftests/drivers/net/hw/ncdevmem.c): a seed starts at 1, the
expected byte is the seed or '\\n' when the seed is 0, and the seed wraps to 0
when it reaches N. So byte i of the stream is (i + 1) % N, with 0 shown as 0x0a.
It deliberately does not use devmemtcp.pattern, so the tests check it.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time

import numpy as np


def reference_pattern(period: int, offset: int, length: int) -> bytes:
    idx = (np.arange(offset, offset + length, dtype=np.int64) + 1) % period
    out = idx.astype(np.uint8)
    out[idx == 0] = 0x0A
    return out.tobytes()


def plain_send(addr: str, port: int, period: int, nbytes: int, *, corrupt_at: int | None = None,
               block: int = 1 << 20, family: int = socket.AF_INET) -> int:
    """Send ``nbytes`` of the pattern over a plain TCP socket (sendall)."""
    # one period-aligned block reused: block is a multiple of the period
    block -= block % period
    base = bytearray(reference_pattern(period, 0, block))
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.connect((addr, port))
        sent = 0
        while sent < nbytes:
            n = min(block, nbytes - sent)
            if corrupt_at is not None and sent <= corrupt_at < sent + n:
                chunk = bytearray(base[:n])
                chunk[corrupt_at - sent] ^= 0xFF
                s.sendall(chunk)
            else:
                s.sendall(memoryview(base)[:n])
            sent += n
    return sent


class PlainReceiver:
    """A plain TCP server that reads one connection to EOF in a thread.

    Keeps every byte when ``keep`` (small transfers), else checks them
    against the reference pattern on the fly and records the first mismatch.
    """

    def __init__(self, addr: str = "127.0.0.1", *, period: int | None = None, keep: bool = True) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((addr, 0))
        self.sock.listen(1)
        self.sock.settimeout(60)
        self.port = self.sock.getsockname()[1]
        self.period = period
        self.keep = keep
        self.data = bytearray()
        self.total = 0
        self.mismatch: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with conn:
                buf = bytearray(1 << 20)
                view = memoryview(buf)
                while True:
                    n = conn.recv_into(view)
                    if n == 0:
                        break
                    if self.keep:
                        self.data += view[:n]
                    elif self.period and self.mismatch is None:
                        ref = reference_pattern(self.period, self.total, n)
                        if ref != bytes(view[:n]):
                            got = np.frombuffer(view[:n], dtype=np.uint8)
                            first = int(np.flatnonzero(got != np.frombuffer(ref, dtype=np.uint8))[0])
                            self.mismatch = self.total + first
                    self.total += n
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self.sock.close()

    def join(self, timeout: float = 120) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "plain receiver did not finish"
        if self.error:
            raise self.error


def wait_listening(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    """Read the CLI's stderr until its 'listening on ADDR port N' line; return
    N and the stderr text read so far."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"listening on \S+ port (\d+)", line)
        if m:
            return int(m.group(1)), "".join(lines)
    raise AssertionError(f"receiver never said it was listening; stderr so far: {''.join(lines)!r}; "
                         f"rc={proc.poll()}")


def wait_nic_free(ifname: str = "lo", timeout: float = 120, journal_dir: str | None = None) -> None:
    """Wait while another live process holds ``ifname``'s NIC set-up.

    One devmem flow per interface can be set up at a time (one undo journal
    per interface). When several people run test suites on one machine, a
    test of ours would otherwise fail on their live set-up of lo; a journal
    whose owner is dead is left alone (NicSetup reports it, as it should).
    """
    import json
    import os

    journal_dir = journal_dir or os.environ.get("DEVMEMTCP_JOURNAL_DIR", "/run/devmemtcp")
    path = os.path.join(journal_dir, f"{ifname}.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                pid = json.load(f).get("pid")
        except (OSError, ValueError):
            return
        if not isinstance(pid, int) or pid == os.getpid():
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(0.2)
