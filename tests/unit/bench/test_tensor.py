"""bench tensor: JSON schema and consistency of a tiny run (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from devmemtcp.bench import tensor


@pytest.mark.root  # the emulated NIC and NIC set-up keep state under /run (per test here)
def test_tiny_channel_run_schema() -> None:
    r = tensor.run_tensor((4096, 1 << 20), nbytes=2 << 20, dmabuf_size=8 << 20, repeat=1, gather_runs=False,
                          mem_count=8)
    json.dumps(r)
    assert [row["size"] for row in r["rows"]] == [4096, 1 << 20]
    for row in r["rows"]:
        assert row["count"] == tensor._count(row["size"], 2 << 20)
        for kind in ("plain", "devmem"):
            d = row[kind]
            assert d["bytes"] == row["size"] * row["count"] and d["messages"] == row["count"]
            assert d["gbps"] > 0 and d["msg_per_s"] > 0
            assert d["host_copy_per_byte"] == pytest.approx(d["host_copy_bytes"] / d["bytes"])
        assert row["devmem"]["host_copy_per_byte"] == pytest.approx(1.0)  # the gather, once per byte
        assert row["devmem"]["peer_host_copy_bytes"] == 0  # sent from Channel.empty()
        assert row["ratio"] == pytest.approx(row["devmem"]["gbps"] / row["plain"]["gbps"])
    assert set(r["targets"]) == {"ratio_4096", "rss_growth_bytes"}
    m = r["memory"]
    assert m["count"] == 8 and m["count_quarter"] == 2 and m["rss_peak"] > 0
    assert m["rss_growth_bytes"] == m["rss_peak"] - m["rss_peak_quarter"]


def test_tiny_gather_run_checks_every_candidate() -> None:
    g = tensor.run_gather(pool_bytes=4 << 20, pass_bytes=1 << 20, repeat=2)
    json.dumps(g)
    for kind, size in (("pages", 4096), ("1448", 1448)):
        e = g[kind]
        assert e["frag_bytes"] == size and e["bytes"] == e["frags"] * size
        for name in ("chosen", "numpy_fallback"):
            assert e[f"{name}_gbs"] > 0 and e[f"{name}_ratio"] > 0
    assert "np_take_gbs" in g["pages"] and "np_take_gbs" not in g["1448"]


def test_cli_sizes_parse() -> None:
    from devmemtcp.cli.bench import _sizes

    assert _sizes("4K,64K,1M") == (4096, 65536, 1 << 20)
    with pytest.raises(Exception, match="positive"):
        _sizes("0")
