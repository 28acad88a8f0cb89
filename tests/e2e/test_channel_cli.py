"""`devmemtcp recv --output` and `devmemtcp send --file`: files byte for byte through the dma-bufs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.root  # the emulated NIC and NIC set-up keep state under /run (per test here)

CLI = [sys.executable, "-m", "devmemtcp.cli.main"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _listening(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = b""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
        m = re.search(rb"listening on \S+ port (\d+)", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"receiver never listened: {seen!r}, rc={proc.poll()}")


def _payload(n: int) -> bytes:
    return np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_file_to_file_equal_sha256(tmp_path: Path) -> None:
    data = _payload((37 << 20) + 123)  # not a whole number of pages or regions
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    dst = tmp_path / "out.bin"
    rcv = subprocess.Popen([*CLI, "recv", "--listen", "127.0.0.1", "--port", "0", "--timeout", "60",
                            "--size", "8M", "--output", str(dst), "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    port = _listening(rcv)
    snd = subprocess.run([*CLI, "send", "127.0.0.1", "--port", str(port), "--file", str(src), "--size", "4M",
                          "--json"], capture_output=True, timeout=300)
    assert snd.returncode == 0, snd.stderr.decode()
    out, err = rcv.communicate(timeout=300)
    assert rcv.returncode == 0, err.decode()
    assert json.loads(out)["bytes"] == len(data) == json.loads(snd.stdout)["bytes"]
    assert _sha(dst.read_bytes()) == _sha(data)


def test_stdin_to_stdout_equal_sha256() -> None:
    data = _payload((5 << 20) + 7)
    rcv = subprocess.Popen([*CLI, "recv", "--listen", "127.0.0.1", "--port", "0", "--timeout", "60",
                            "--output", "-", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    port = _listening(rcv)
    snd = subprocess.run([*CLI, "send", "127.0.0.1", "--port", str(port), "--file", "-"], input=data,
                         capture_output=True, timeout=300)
    assert snd.returncode == 0, snd.stderr.decode()
    out, err = rcv.communicate(timeout=300)
    assert rcv.returncode == 0, err.decode()
    assert _sha(out) == _sha(data)  # stdout holds the stream only: the summary went to stderr
    assert b'"bytes": ' + str(len(data)).encode() in err


def test_file_and_validate_do_not_mix(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_bytes(b"x")
    res = subprocess.run([*CLI, "send", "127.0.0.1", "--port", "1", "--file", str(f), "--validate", "7"],
                         capture_output=True, text=True, env=dict(os.environ))
    assert res.returncode == 2 and "--file and --validate" in res.stderr
    res = subprocess.run([*CLI, "send", "127.0.0.1", "--port", "1", "--file", str(tmp_path / "missing")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "cannot read" in res.stderr
