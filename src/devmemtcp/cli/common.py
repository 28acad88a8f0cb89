"""Helpers shared by the transfer commands (``recv``, ``send``, ``demo``).

Byte sizes (``1G``, ``256M``), the ``--backend``/``--memory``/``--json``
options, a progress line on a terminal, and the summary (a rich table, or
one JSON object on stdout).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from devmemtcp.errors import DevmemError, IncompleteStreamError, ValidationError

#: The exit statuses of the transfer commands (recv, send, demo), for their --help.
TRANSFER_EXIT_STATUS = """\
exit status:
  0    ok (received, sent; validated and complete where checked)
  1    the data did not validate, or the stream was incomplete (cut short or too long)
  2    error (bad input, environment, setup; a connection reset, closed or stalled)
  130  interrupted (Ctrl-C); the NIC is restored in every case
"""

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1 << 10, "ki": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mi": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gi": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "ti": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Parse a byte count: ``4096``, ``64K``, ``256M``, ``1G``, ``1.5GiB``, ``2GB``.

    Single letters and ``KiB``/``MiB``/``GiB``/``TiB`` are binary (``1G`` =
    2**30 bytes, as ``head -c 1G``); ``KB``/``MB``/``GB``/``TB`` are decimal.
    Returns an ``int`` (bytes). Raises ``argparse.ArgumentTypeError`` on
    malformed input, a negative value or a fractional byte count.
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use a number with an optional unit, e.g. 4096, 64K, 256M, 1G")
    number, unit = m.group(1), m.group(2).lower()
    if unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"invalid size unit {m.group(2)!r} in {text!r}: use K, M, G, T (binary) or KB, MB, GB (decimal)")
    value = float(number) * _UNITS[unit] if "." in number else int(number) * _UNITS[unit]
    if value != int(value):
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: not a whole number of bytes")
    return int(value)


def format_bytes(n: float) -> str:
    """``1073741824`` -> ``'1.00 GiB'`` (binary units, two decimals)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover - loop always returns


def parse_queues(text: str) -> tuple[int, int]:
    """``"START:COUNT"`` -> ``(start, count)``; ``"3"`` means ``(3, 1)``.

    Raises ``argparse.ArgumentTypeError`` unless start >= 0 and count >= 1.
    """
    parts = text.split(":")
    try:
        if len(parts) == 1:
            start, count = int(parts[0]), 1
        elif len(parts) == 2:
            start, count = int(parts[0]), int(parts[1])
        else:
            raise ValueError(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid queue range {text!r}: use START:COUNT, e.g. 3:1") from None
    if start < 0 or count < 1:
        raise argparse.ArgumentTypeError(
            f"invalid queue range {text!r}: START must be >= 0 and COUNT >= 1")
    return start, count


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def validate_arg(text: str) -> int:
    """argparse type for ``--validate N``: the pattern period, 2..256.

    ncdevmem's pattern is bytes 1..N-1 then 0x0a, so N must be at least 2
    and at most 256 (bytes are 8 bits)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--validate needs an integer, got {text!r}") from None
    if not 2 <= value <= 256:
        raise argparse.ArgumentTypeError(
            f"--validate {value}: the pattern period must be between 2 and 256 "
            "(bytes 1..N-1 then a newline)")
    return value


def add_backend_args(parser: argparse.ArgumentParser, *, memory: bool = True) -> None:
    """Add ``--backend auto|kernel|emulated``, ``--memory host|udmabuf`` and ``--json``."""
    parser.add_argument(
        "--backend", choices=("auto", "kernel", "emulated"), default="auto",
        help="kernel: a devmem-capable NIC; emulated: the software devmem NIC over real TCP; "
        "auto (default): kernel when doctor finds devmem possible on the interface, else emulated")
    if memory:
        parser.add_argument(
            "--memory", choices=("host", "udmabuf"), default="host",
            help="dma-buf provider: host (memfd, default) or udmabuf (/dev/udmabuf)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def note(message: str) -> None:
    """One informational line on stderr (e.g. which backend was picked)."""
    print(f"devmemtcp: {message}", file=sys.stderr, flush=True)


def print_json(obj: dict[str, Any], stream: IO[str] | None = None) -> None:
    """Print ``obj`` as one indented JSON object (stdout by default)."""
    out = stream if stream is not None else sys.stdout
    out.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    out.flush()


def print_summary(title: str, rows: dict[str, Any], stream: IO[str] | None = None) -> None:
    """Print ``rows`` as a two-column rich table (field, value)."""
    console = Console(file=stream if stream is not None else sys.stdout)
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        if value is None:
            text = "-"
        elif isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, float):
            text = f"{value:.3f}"
        elif isinstance(value, int) and key in ("bytes", "linear_bytes", "flow_steering_errors"):
            text = f"{value} ({format_bytes(value)})" if value >= 1024 else str(value)
        else:
            text = str(value)
        table.add_row(key, text)
    console.print(table)


class ProgressLine:
    """A one-line progress display on stderr, only when stderr is a terminal.

    (Written with ``\r`` and the erase-line escape directly: rich's Console
    strips carriage returns from printed text.)

    Call the instance with ``(bytes_done)`` as often as you like; it redraws
    at most every ``interval`` seconds (default 0.25 s) and shows bytes,
    percent of ``total`` when known, and the average rate in Gbit/s.
    ``close()`` erases the line. On a pipe or file it prints nothing.
    """

    def __init__(self, label: str, total: int | None = None, *, interval: float = 0.25,
                 stream: IO[str] | None = None, force: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = force or bool(getattr(self.stream, "isatty", lambda: False)())
        self.label = label
        self.total = total
        self.interval = interval
        self._start = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        elapsed = max(now - self._start, 1e-9)
        text = f"{self.label}: {format_bytes(done)}"
        if self.total:
            text += f" / {format_bytes(self.total)} ({100.0 * done / self.total:.0f}%)"
        text += f"  {done * 8 / elapsed / 1e9:.2f} Gbit/s  {elapsed:.1f} s"
        self.stream.write(f"\r{text}\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> Callable[[int], None]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fail(message: str, hint: str | None = None) -> DevmemError:
    """Build a DevmemError (for ``raise fail(...)`` in command modules)."""
    return DevmemError(message, hint)


def report_validation_failure(command: str, exc: ValidationError, *, as_json: bool) -> int:
    """Print a pattern mismatch (offset, expected and received bytes) and its
    hint; with ``as_json`` also the JSON object scripts read. Returns exit status 1."""
    print(f"devmemtcp {command}: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)
    if as_json:
        print_json({"validated": False, "error": exc.message, "offset": exc.offset,
                    "expected": exc.expected, "received": exc.received})
    return 1


def report_incomplete(command: str, exc: IncompleteStreamError) -> None:
    """Print a stream of the wrong length (``stream ended after K of N
    bytes``, or the overrun offset) and its hint on stderr; the caller prints
    the summary (``complete`` false) and exits with status 1."""
    print(f"devmemtcp {command}: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)
