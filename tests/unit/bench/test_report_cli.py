"""bench report (JSON + PNG) and the `devmemtcp bench` CLI, on tiny runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from devmemtcp.bench import report
from devmemtcp.errors import DevmemError

pytest.importorskip("devmemtcp.rx", reason="devmemtcp.rx (the Receiver) is not in this tree yet")
pytest.importorskip("matplotlib", reason="bench report needs matplotlib (pip install 'devmemtcp[plot]')")

TINY_FRAGS = {"frags": 19_200, "per_call": 1600, "c_baselines": False, "warmup_frags": 0,
              "record_buffers": 4}


def test_report_writes_json_and_png(tmp_path: Path) -> None:
    out = report.run_report(tmp_path / "out", frags_kwargs=TINY_FRAGS, stream_kwargs=None)
    data = json.loads(Path(out["json_path"]).read_text())
    assert set(data) == {"frags"}
    assert data["frags"]["frags"] == TINY_FRAGS["frags"]
    png = Path(out["png_path"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_rate_series_differentiates_cumulative_samples() -> None:
    t, r = report.rate_series([[0.0, 0], [0.5, 100], [1.0, 300], [1.0001, 301]], 1.0)
    # the 0.1 ms step is merged: the last sample replaces the one before it
    assert t == pytest.approx([0.25, 0.75005])
    assert r == pytest.approx([200.0, 201 / 0.5001])


def test_missing_matplotlib_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(DevmemError) as exc:
        report.run_report(tmp_path, frags_kwargs=TINY_FRAGS)
    assert exc.value.hint and "devmemtcp[plot]" in exc.value.hint
    assert not (tmp_path / report.JSON_NAME).exists()  # refused before running anything


def test_cli_frags_json(capsys: pytest.CaptureFixture[str]) -> None:
    from devmemtcp.cli.main import main

    rc = main(["bench", "frags", "--frags", "20000", "--per-call", "1600", "--no-c", "--json", "--quiet"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["frags"] == 13 * 1600  # whole control buffers: the first count >= --frags
    assert "c" not in data and "ratios" not in data
    assert data["frags_per_s"] == pytest.approx(data["frags"] / data["seconds"], rel=1e-3)


def test_cli_frags_table(capsys: pytest.CaptureFixture[str]) -> None:
    from devmemtcp.cli.main import main

    rc = main(["bench", "frags", "--frags", "20000", "--no-c", "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "Python Receiver" in text and "targets" in text and "frags_per_s" in text


def test_cli_check_exit_status_follows_the_targets(capsys: pytest.CaptureFixture[str]) -> None:
    from devmemtcp.cli.main import main

    rc = main(["bench", "frags", "--frags", "20000", "--no-c", "--check", "--json", "--quiet"])
    data = json.loads(capsys.readouterr().out)
    assert rc == (0 if all(t["met"] for t in data["targets"].values()) else 1)


def test_cli_rejects_bad_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    from devmemtcp.cli.main import main

    # a refused command line is one error line and a hint, exit status 2 (returned, not SystemExit)
    assert main(["bench", "frags", "--frags", "0"]) == 2
    err = capsys.readouterr().err
    assert "--frags" in err and err.startswith("devmemtcp bench frags: error: ")
