"""examples/container.sh runs on this machine from the CLI alone and passes every step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "container.sh"


@pytest.mark.root
@pytest.mark.netns
def test_container_sh(tmp_path: Path) -> None:
    env = dict(os.environ, DEVMEMTCP=f"{sys.executable} -m devmemtcp.cli.main",
               DEVMEMTCP_EMU_DIR=str(tmp_path / "emu"), DEVMEMTCP_JOURNAL_DIR=str(tmp_path / "journal"))
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "FAIL:" not in out
    for text in ("Lease ifindex cannot be the same as queue creation ifindex",
                 "Device is not a virtual device",
                 "Lease device is a virtual device", "ERANGE", "Lease device queue is already leased",
                 "Lease device queue in use by memory provider", "Lease device queue in use by AF_XDP",
                 "Leasing multiple queues from different devices not supported",
                 "Device is unable to create a new queue", "tx_dropped", "ended the lease of queue 3",
                 "every step passed"):
        assert text in out, text
