"""bench stream: JSON schema and internal consistency of a tiny loopback run (no timing assertions)."""

from __future__ import annotations

import json
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
        "rss_growth_bytes", "targets", "runs", "machine", "dmabuf_bytes"}


@pytest.fixture(scope="module")
def result() -> dict:
    return stream.run_stream(NBYTES, 7, repeat=1)


def test_schema(result: dict) -> None:
    assert result.keys() >= KEYS
    json.dumps(result)
    assert set(result["targets"]) == {"recv_ratio", "send_ratio", "validate_cost", "rss_growth_bytes"}
    assert result["dmabuf_bytes"] == stream.DEFAULT_DMABUF_SIZE


def test_every_run_moved_every_byte(result: dict) -> None:
    kinds = [r["kind"] for r in result["runs"]]
    assert kinds == ["emulated_recv_warmup", "raw_recv", "emulated_recv", "emulated_recv_validated",
                     "emulated_recv_quarter", "raw_send", "emulated_send"]
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
