"""bench frags: JSON schema and internal consistency of a small run (no timing assertions)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from devmemtcp import abi
from devmemtcp.errors import DevmemError

pytest.importorskip("devmemtcp.rx", reason="devmemtcp.rx (the Receiver) is not in this tree yet")

from devmemtcp.bench.frags import run_frags

HAVE_GCC = shutil.which("gcc") is not None

TOP_KEYS = {"frags", "per_call", "control_bytes", "batches", "bytes", "seconds", "cpu_seconds",
            "frags_per_s", "ns_per_frag", "release_syscalls", "frags_per_release_syscall",
            "tokens_released", "kernel_frags_freed", "model", "samples", "targets", "machine",
            "min_release_syscalls", "recv_loop"}


@pytest.fixture(scope="module")
def result() -> dict:
    return run_frags(40_000, 1600, c_baselines=HAVE_GCC, warmup_frags=3200, record_buffers=8, profile=True)


def test_schema(result: dict) -> None:
    assert result.keys() >= TOP_KEYS
    json.dumps(result)  # one JSON object, all values serialisable
    assert {"cpu", "cores", "kernel", "loadavg", "loadavg_after"} <= result["machine"].keys()
    for t in result["targets"].values():
        assert t.keys() >= {"value", "target", "met"}
    prof = result["profile"]
    assert 0 < len(prof) <= 15
    assert all(p.keys() == {"function", "calls", "own_s", "cumulative_s", "own_ns_per_frag"} for p in prof)
    assert [p["own_s"] for p in prof] == sorted((p["own_s"] for p in prof), reverse=True)
    # the Receiver's release path is among the profiled functions
    assert any("rx.py" in p["function"] for p in prof)


def test_numbers_agree(result: dict) -> None:
    r = result
    k = r["per_call"]
    assert r["frags"] == 40_000
    assert r["bytes"] == r["frags"] * abi.PAGE_SIZE
    assert r["control_bytes"] == k * abi.DMABUF_CMSG_SPACE
    assert r["batches"] == math.ceil(r["frags"] / k)
    assert r["frags_per_s"] == pytest.approx(r["frags"] / r["seconds"], rel=1e-3)
    assert r["ns_per_frag"] * r["frags_per_s"] == pytest.approx(1e9, rel=1e-3)
    assert r["frags_per_cpu_s"] == pytest.approx(r["frags"] / r["cpu_seconds"], rel=1e-3)
    # every token handed to the Receiver was given back, within the kernel's limits
    assert r["tokens_released"] == r["frags"]
    assert r["min_release_syscalls"] == math.ceil(r["frags"] / abi.MAX_DONTNEED_FRAGS)
    assert r["release_syscalls"] >= r["min_release_syscalls"]
    assert r["targets"]["release_syscalls"]["met"] == (r["release_syscalls"] <= r["min_release_syscalls"])
    loop = r["recv_loop"]
    assert loop["frags"] == r["frags"] and loop["tokens_released"] == r["frags"]
    assert loop["frags_per_s"] == pytest.approx(loop["frags"] / loop["seconds"], rel=1e-3)
    assert r["frags_per_release_syscall"] == pytest.approx(r["tokens_released"] / r["release_syscalls"],
                                                           abs=0.01)
    assert r["model"]["tokens_outstanding"] == 0
    assert r["model"]["tokens_freed"] == r["model"]["frags"]
    # the recording is one closed cycle: replayed round and round, the token numbers are the kernel's
    assert r["model"]["cycle_closed"] is True
    assert r["model"]["frags"] == r["model"]["recorded_buffers"] * k
    assert r["kernel_frags_freed"] == 0
    times = [t for t, _ in r["samples"]]
    counts = [f for _, f in r["samples"]]
    assert times == sorted(times) and counts == sorted(counts)
    assert all(f <= r["frags"] for f in counts)


@pytest.mark.skipif(not HAVE_GCC, reason="needs gcc for the C baselines")
def test_c_baselines_agree(result: dict) -> None:
    c = result["c"]
    assert set(c) == {"parse", "batched", "perfrag"}
    for entry in c.values():
        assert entry["frags"] >= result["frags"]
        assert entry["release_errors"] == 0
    assert c["perfrag"]["release_syscalls"] == c["perfrag"]["frags"]
    assert c["parse"]["release_syscalls"] == 0
    ratios = result["ratios"]
    assert ratios["python_vs_perfrag_c"] == pytest.approx(
        result["frags_per_s"] / c["perfrag"]["frags_per_s"], rel=1e-2)
    assert ratios["python_vs_batched_c"] == pytest.approx(
        result["frags_per_s"] / c["batched"]["frags_per_s"], rel=1e-2)
    met = result["targets"]["python_vs_perfrag_c"]["met"]
    assert met == (ratios["python_vs_perfrag_c"] >= 3.0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(DevmemError, match="--frags"):
        run_frags(0)
    with pytest.raises(DevmemError, match="--per-call"):
        run_frags(10, 0)
