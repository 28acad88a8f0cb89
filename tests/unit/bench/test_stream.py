"""bench stream: JSON schema and internal consistency of a tiny loopback run (no timing assertions)."""

from __future__ import annotations

import json
import os
import statistics

import pytest

from devmemtcp.bench import stream
from devmemtcp.errors import DevmemError

for _mod in ("devmemtcp.rx", "devmemtcp.tx", "devmemtcp.backend.emulated"):
    pytest.importorskip(_mod, reason=f"{_mod} is not in this tree yet")

NBYTES = 8 << 20

KEYS = {"bytes", "validate", "repeat", "raw_recv_gbps", "emulated_recv_gbps", "recv_ratio",
        "emulated_recv_validated_gbps", "validate_cost", "raw_send_gbps", "emulated_send_gbps",
        "send_ratio", "rss_bytes_peak", "rss_bytes_peak_validated", "rss_bytes_peak_quarter",
        "rss_growth_bytes", "targets", "runs", "machine", "dmabuf_bytes", "pinned", "baseline",
        "raw_recv_plain_gbps", "raw_send_plain_gbps", "recv_ratio_vs_plain", "send_ratio_vs_plain"}


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    # module scope runs before the autouse per-test state directories: give it its own,
    # so a devmemtcp flow elsewhere on the machine (on lo, in /run/devmemtcp) cannot collide
    base = tmp_path_factory.mktemp("stream-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEVMEMTCP_JOURNAL_DIR", str(base / "journal"))
        mp.setenv("DEVMEMTCP_EMU_DIR", str(base / "emu"))
        return stream.run_stream(NBYTES, 7, repeat=1)


def test_schema(result: dict) -> None:
    assert result.keys() >= KEYS
    json.dumps(result)
    assert set(result["targets"]) == {"recv_ratio", "send_ratio", "validate_cost", "rss_growth_bytes"}
    assert result["dmabuf_bytes"] == stream.DEFAULT_DMABUF_SIZE


def test_every_run_moved_every_byte(result: dict) -> None:
    kinds = [r["kind"] for r in result["runs"]]
    assert kinds == ["emulated_recv_warmup", "raw_recv", "emulated_recv", "emulated_recv_validated",
                     "raw_recv_plain", "emulated_recv_quarter", "raw_send", "emulated_send", "raw_send_plain"]
    for run in result["runs"]:
        want = NBYTES // 4 if run["kind"] in ("emulated_recv_warmup", "emulated_recv_quarter") else NBYTES
        assert run["bytes"] == want
        assert run["gbps"] == pytest.approx(run["bytes"] * 8 / run["seconds"] / 1e9, rel=1e-3)
        samples = run["samples"]
        assert samples[-1][1] == run["bytes"]
        assert [b for _, b in samples] == sorted(b for _, b in samples)
    by_kind = {r["kind"]: r for r in result["runs"]}
    assert by_kind["emulated_recv_validated"]["validated"] is True
    assert by_kind["emulated_recv"]["validated"] is None
    # every fragment the emulated NIC delivered was given back
    emu = by_kind["emulated_recv"]
    assert emu["tokens_released"] == emu["frags"] > 0


def test_ratios_follow_from_the_runs(result: dict) -> None:
    r = result

    def median(kind: str) -> float:
        return statistics.median(x["gbps"] for x in r["runs"] if x["kind"] == kind)

    assert r["raw_recv_gbps"] == pytest.approx(median("raw_recv"), abs=1e-3)
    assert r["emulated_recv_gbps"] == pytest.approx(median("emulated_recv"), abs=1e-3)
    assert r["recv_ratio"] == pytest.approx(r["emulated_recv_gbps"] / r["raw_recv_gbps"], rel=1e-2)
    assert r["send_ratio"] == pytest.approx(r["emulated_send_gbps"] / r["raw_send_gbps"], rel=1e-2)
    assert r["raw_recv_plain_gbps"] == pytest.approx(median("raw_recv_plain"), abs=1e-3)
    assert r["send_ratio_vs_plain"] == pytest.approx(
        r["emulated_send_gbps"] / r["raw_send_plain_gbps"], rel=1e-2)
    assert r["validate_cost"] == pytest.approx(
        1 - r["emulated_recv_validated_gbps"] / r["emulated_recv_gbps"], abs=1e-3)
    for name, t in r["targets"].items():
        value = r[name]
        assert t["value"] == value
        if name == "rss_growth_bytes":
            assert t["met"] == (value is not None and value <= stream.TARGET_RSS_GROWTH)
        else:
            assert t["met"] == (value <= 0.25 if name == "validate_cost" else value >= 0.85)
    if r["rss_bytes_peak"] is not None:
        assert r["rss_growth_bytes"] == r["rss_bytes_peak"] - r["rss_bytes_peak_quarter"]


def test_raw_baselines_do_the_devmem_paths_transfer_shape(result: dict) -> None:
    from devmemtcp.transfer import auto_rcvlowat, send_region_size

    by_kind = {r["kind"]: r for r in result["runs"]}
    raw_r, emu_r = by_kind["raw_recv"], by_kind["emulated_recv"]
    assert raw_r["rcvlowat"] == emu_r["rcvlowat"] == auto_rcvlowat(stream.DEFAULT_DMABUF_SIZE) > 0
    assert raw_r["buffer_bytes"] == stream.recv_call_bytes() == 1600 * 4096
    usable = stream.DEFAULT_DMABUF_SIZE - stream.DEFAULT_DMABUF_SIZE % 7
    raw_s = by_kind["raw_send"]
    assert raw_s["buffer_bytes"] == usable
    assert raw_s["bytes_per_call"] == send_region_size(usable)
    assert by_kind["raw_recv_plain"]["rcvlowat"] == 0
    assert result["baseline"]["recv"]["rcvlowat"] == raw_r["rcvlowat"]


def test_pinning_restores_the_affinity() -> None:
    before = os.sched_getaffinity(0)
    with stream.pinned(True) as cpus:
        if len(before) >= 2:
            assert cpus is not None and os.sched_getaffinity(0) == {cpus[0]} and cpus[1] in before
        else:
            assert cpus is None
    assert os.sched_getaffinity(0) == before
    with stream.pinned(False) as cpus:
        assert cpus is None and os.sched_getaffinity(0) == before


def test_peak_rss_is_read_from_procfs() -> None:
    assert stream.peak_rss() > 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(DevmemError, match="--bytes"):
        stream.run_stream(0)
    with pytest.raises(DevmemError, match="--validate"):
        stream.run_stream(1 << 20, 1)
    with pytest.raises(DevmemError, match="--repeat"):
        stream.run_stream(1 << 20, 7, repeat=0)
    with pytest.raises(DevmemError, match="--dmabuf-size"):
        stream.run_stream(1 << 20, 7, dmabuf_size=1000)
