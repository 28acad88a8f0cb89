"""`devmemtcp selftest --container`: nk_devmem's cases through a leased queue, from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devmemtcp.selftest.catalogue import NETKIT_CASES

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "devmemtcp.cli.main", "selftest", *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.root
@pytest.mark.netns
def test_selftest_container_emulated_passes_every_case() -> None:
    proc = _run("--container", "--backend", "emulated", "--bytes", "2M", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["ok"] and report["backend"] == "emulated"
    assert [c["name"] for c in report["cases"]] == [c.name for c in NETKIT_CASES]
    assert {c["status"] for c in report["cases"]} == {"pass"}
    rx = next(c for c in report["cases"] if c["name"] == "nk-rx")
    assert rx["details"]["non_page_aligned_frags"] > 0


def test_selftest_container_kernel_skips_with_the_reason() -> None:
    proc = _run("--container", "--backend", "kernel", "--json", "--case", "lease-ok")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (case,) = json.loads(proc.stdout)["cases"]
    assert case["status"] == "skip" and ("queue-create" in case["reason"] or "netkit" in case["reason"])


def test_selftest_needs_an_interface_or_container() -> None:
    proc = _run("--backend", "emulated")
    assert proc.returncode == 2 and "--ifname" in proc.stderr
