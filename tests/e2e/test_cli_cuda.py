"""``--memory cuda`` as a user runs it (a subprocess) on a machine without a
GPU: recv, send, demo and bench gather fail with one error line and a hint,
exit status 2, no traceback; an unknown kind is refused by argparse; bench
gather runs on host memory; doctor lists the CUDA checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

NO_GPU = pytest.mark.skipif(os.path.exists("/dev/nvidia0"), reason="this machine has an NVIDIA GPU")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devmemtcp.cli.main", *args],
                          capture_output=True, text=True, timeout=120)


@NO_GPU
@pytest.mark.parametrize("args", [
    ["demo", "--memory", "cuda", "--bytes", "1M", "--backend", "emulated"],
    ["recv", "--listen", "127.0.0.1", "--port", "0", "--memory", "cuda:1", "--backend", "emulated",
     "--timeout", "5"],
    ["send", "127.0.0.1", "--port", "9", "--memory", "cuda", "--bytes", "1M", "--backend", "emulated"],
    ["bench", "gather", "--memory", "cuda", "--frags", "16", "--repeat", "1"],
])
def test_cuda_memory_without_gpu_is_one_clear_error(args: list[str]) -> None:
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ": error: " in ln]
    assert len(errors) == 1
    assert any(w in errors[0] for w in ("NVIDIA driver", "cuda-python", "CuPy", "cuInit"))
    assert "hint:" in r.stderr


def test_unknown_memory_kind_is_refused() -> None:
    r = cli("demo", "--memory", "gpu")
    assert r.returncode == 2
    assert "invalid choice: 'gpu' (choose from host, udmabuf, cuda, cuda:N)" in r.stderr


def test_bench_gather_host_json() -> None:
    r = cli("bench", "gather", "--memory", "host", "--frags", "256", "--repeat", "2", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["memory"] == "host" and out["targets"] == {}
    assert [c["frag_size"] for c in out["cases"]] == [4096, 1448]
    for c in out["cases"]:
        assert c["bytes"] == 256 * c["frag_size"] and c["gather_gbps"] > 0 and c["copy_gbps"] > 0


@NO_GPU
@pytest.mark.root
def test_doctor_json_has_the_cuda_checks() -> None:
    r = cli("doctor", "lo", "--json")
    assert r.returncode in (0, 1), r.stderr
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    for name in ("cuda-driver", "cuda-dmabuf"):
        assert checks[name]["status"] == "unknown"
        assert checks[name]["detail"].startswith("skip: no NVIDIA driver")
    assert checks["kernel-dmabuf"]["status"] in ("pass", "fail", "unknown")
    assert checks["iommu"]["status"] in ("pass", "unknown")
