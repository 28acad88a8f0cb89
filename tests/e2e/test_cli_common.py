"""The shared CLI helpers: sizes, queue ranges, --validate, summary, progress."""

from __future__ import annotations

import argparse
import io
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devmemtcp.cli import common


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("4096", 4096), ("4K", 4096), ("4k", 4096), ("256M", 256 << 20), ("1G", 1 << 30),
    ("1GiB", 1 << 30), ("1.5G", 3 << 29), ("2GB", 2 * 10**9), ("4T", 4 << 40), (" 64 KiB ", 65536),
    ("10MB", 10**7), ("7b", 7),
])
def test_parse_size_accepts_units(text: str, value: int) -> None:
    assert common.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "G", "-1", "1X", "1.5", "0.3K", "1 G B", "one"])
def test_parse_size_rejects_malformed(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        common.parse_size(text)


@given(st.integers(min_value=0, max_value=1 << 20),
       st.sampled_from(["", "K", "M", "G", "KiB", "MiB", "GiB", "KB", "MB", "GB"]))
def test_parse_size_round_trip(n: int, unit: str) -> None:
    factor = {"": 1, "K": 1024, "M": 1 << 20, "G": 1 << 30, "KiB": 1024, "MiB": 1 << 20, "GiB": 1 << 30,
              "KB": 1000, "MB": 10**6, "GB": 10**9}[unit]
    assert common.parse_size(f"{n}{unit}") == n * factor


def test_parse_queues() -> None:
    assert common.parse_queues("3:2") == (3, 2)
    assert common.parse_queues("5") == (5, 1)
    for bad in ("", "a:b", "1:0", "-1:1", "1:2:3"):
        with pytest.raises(argparse.ArgumentTypeError):
            common.parse_queues(bad)


def test_validate_arg_bounds() -> None:
    assert common.validate_arg("7") == 7
    assert common.validate_arg("256") == 256
    for bad in ("1", "0", "257", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            common.validate_arg(bad)


def test_format_bytes() -> None:
    assert common.format_bytes(512) == "512 B"
    assert common.format_bytes(1 << 30) == "1.00 GiB"
    assert common.format_bytes(1536) == "1.50 KiB"


def test_print_json_is_one_object() -> None:
    out = io.StringIO()
    common.print_json({"backend": "emulated", "validated": None, "bytes": 5}, out)
    assert json.loads(out.getvalue()) == {"backend": "emulated", "validated": None, "bytes": 5}


def test_print_summary_shows_every_row() -> None:
    out = io.StringIO()
    common.print_summary("t", {"backend": "emulated", "bytes": 1 << 20, "validated": True,
                               "tokens_released": None}, out)
    text = out.getvalue()
    assert "emulated" in text and "1.00 MiB" in text and "yes" in text and "tokens_released" in text


def test_progress_silent_off_terminal() -> None:
    out = io.StringIO()
    progress = common.TransferProgress("recv", stream=out)
    progress(0)
    progress(1 << 20)
    progress.close()
    assert out.getvalue() == "" and progress.elapsed is None


def test_progress_draws_bytes_rate_and_clears_on_terminal() -> None:
    out = io.StringIO()
    progress = common.TransferProgress("send", total=1 << 30, stream=out, force=True)
    progress(0)
    time.sleep(0.1)
    progress(1 << 29)
    progress.close()
    drawn = out.getvalue()
    assert "send" in drawn and "0.5/1.0 GiB" in drawn and "50%" in drawn and "Gbit/s" in drawn
    assert drawn.endswith("\x1b[2K")  # transient: the line is erased at the end


def test_progress_clock_starts_at_the_first_byte() -> None:
    """The summary's seconds start at the first byte; so does the progress's elapsed time."""
    out = io.StringIO()
    progress = common.TransferProgress("recv", stream=out, force=True)
    time.sleep(0.4)  # listening, waiting for the sender: not counted
    progress(0)
    time.sleep(0.05)
    progress(1 << 20)
    elapsed = progress.elapsed
    progress.close()
    assert elapsed is not None and 0.04 < elapsed < 0.35
