"""Helpers shared by the transfer commands (``recv``, ``send``, ``demo``).

Byte sizes (``1G``, ``256M``), the ``--backend``/``--memory``/``--json``
options, a progress line on a terminal, and the summary (a rich table, or
one JSON object on stdout).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import re
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from devmemtcp.errors import DevmemError, IncompleteStreamError, ValidationError
from devmemtcp.setup import DEFAULT_JOURNAL_DIR
from devmemtcp.setup.journal import LOCK_TIMEOUT_S

if TYPE_CHECKING:
    from devmemtcp.transfer import TransferResult

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


MEMORY_METAVAR = "{host,udmabuf,cuda,cuda:N}"


def memory_arg(text: str) -> str:
    """argparse type of ``--memory``: host, udmabuf, cuda or cuda:N (GPU N)."""
    from devmemtcp.memory import is_memory_kind

    if not is_memory_kind(text):
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from host, udmabuf, cuda, cuda:N)")
    return text


def add_memory_arg(parser: argparse.ArgumentParser, default: str = "host") -> None:
    """Add ``--memory host|udmabuf|cuda|cuda:N``."""
    parser.add_argument(
        "--memory", type=memory_arg, default=default, metavar=MEMORY_METAVAR,
        help="dma-buf provider: host (memfd, default), udmabuf (/dev/udmabuf), or cuda / cuda:N "
             "(GPU memory of device 0 / N: needs cuda-python, CuPy and an NVIDIA driver with dma-buf export)")


#: What an argparse type function puts between its message and its hint (see :func:`arg_error`).
HINT_SEP = "\nhint: "


def arg_error(message: str, hint: str | None) -> argparse.ArgumentTypeError:
    """An ArgumentTypeError that carries a hint: the CLI prints it as the ``hint:`` line
    instead of the generic "see --help" (see :func:`split_hint`)."""
    return argparse.ArgumentTypeError(message + (HINT_SEP + hint if hint else ""))


def split_hint(message: str, default: str | None) -> tuple[str, str | None]:
    """``(message, hint)`` of an argparse error message built with :func:`arg_error`."""
    if HINT_SEP in message:
        text, _, hint = message.partition(HINT_SEP)
        return text, hint
    return message, default


def _int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None


def port_arg(text: str) -> int:
    """argparse type: a TCP port to listen on, 0..65535 (0: any free port)."""
    value = _int(text, "a port")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"port {value} is out of range: use 1..65535, or 0 for any free port")
    return value


def peer_port_arg(text: str) -> int:
    """argparse type: a TCP port to connect to or match in a rule, 1..65535."""
    value = _int(text, "a port")
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is out of range: use 1..65535")
    return value


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0 (a queue id)."""
    value = _int(text, "the value")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def timeout_arg(text: str) -> float:
    """argparse type: seconds, a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a timeout must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"timeout {text} must be a finite number of seconds >= 0")
    return value


def positive_size(text: str) -> int:
    """argparse type: a byte count (:func:`parse_size`) of at least 1."""
    value = parse_size(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is 0 bytes: give a size of at least 1 byte, e.g. 1M")
    return value


def dmabuf_size(text: str) -> int:
    """argparse type: a dma-buf size: a positive multiple of PAGE_SIZE (4096) bytes."""
    from devmemtcp import abi

    value = positive_size(text)
    if value % abi.PAGE_SIZE:
        raise argparse.ArgumentTypeError(
            f"dma-buf size {value} is not a multiple of {abi.PAGE_SIZE} bytes: use e.g. 64M")
    return value


def ip_arg(text: str) -> str:
    """argparse type: a numeric IPv4 or IPv6 address (returned as given)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IP address: give a numeric IPv4 or IPv6 address, e.g. 127.0.0.1 or ::1"
        ) from None
    return text


def ifname_arg(text: str) -> str:
    """argparse type: an interface name the kernel could have (1..15 bytes, no '/',
    no whitespace). Whether it exists is checked where it is used: it may live in
    another network namespace."""
    if not text or len(text.encode()) > 15 or "/" in text or any(c.isspace() for c in text) \
            or text in (".", ".."):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an interface name (1-15 characters, no '/' or spaces); see `ip -br link`")
    return text


def netns_arg(text: str) -> str:
    """argparse type: the name of a network namespace that exists (``/run/netns/NAME``,
    as ``ip netns add`` makes)."""
    from devmemtcp.host import netns

    try:
        netns.path_of(text)
    except DevmemError as exc:
        raise arg_error(exc.message, exc.hint) from None
    return text


def add_backend_args(parser: argparse.ArgumentParser, *, memory: bool = True) -> None:
    """Add ``--backend auto|kernel|emulated``, ``--memory host|udmabuf|cuda[:N]`` and ``--json``."""
    parser.add_argument(
        "--backend", choices=("auto", "kernel", "emulated"), default="auto",
        help="kernel: a devmem-capable NIC; emulated: the software devmem NIC over real TCP; "
        "auto (default): kernel when doctor finds devmem possible on the interface, else emulated")
    if memory:
        add_memory_arg(parser)
    add_output_args(parser, verbose=True)


def add_output_args(parser: argparse.ArgumentParser, *, verbose: bool = False) -> None:
    """Add ``--json`` (and ``--verbose``: the full reasons, e.g. why a backend was picked)."""
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout (on errors too: error, hint, errno, "
                             "exit_status)")
    if verbose:
        parser.add_argument("--verbose", action="store_true",
                            help="say more: the full reason for the backend choice")


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


class _GbpsColumn(ProgressColumn):
    """Average rate since the first byte in Gbit/s: the figure the summary gives."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed
        if not elapsed or not task.completed:
            return Text("-.-- Gbit/s", style="progress.data.speed")
        return Text(f"{task.completed * 8 / elapsed / 1e9:.2f} Gbit/s", style="progress.data.speed")


class TransferProgress:
    """Progress of one transfer on stderr with rich.progress, only on a terminal.

    Shows bytes done (of ``total`` when known, with a bar and an ETA), the
    average rate in Gbit/s and the time elapsed since the FIRST byte: the
    task's clock starts at the first call (the transfer functions call
    ``on_progress(0)`` when the first byte is there, the moment their
    ``seconds`` starts), so the rate shown and the summary's ``gbps`` agree.
    Call the instance with the bytes done so far; ``close()`` (or leaving the
    ``with`` block) removes the display. When stderr is not a terminal (a
    pipe, a file, ``2>/dev/null``) it draws nothing and costs one attribute
    test per call.
    """

    def __init__(self, label: str, total: int | None = None, *, stream: IO[str] | None = None,
                 force: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = force or is_terminal(self.stream)
        self.label = label
        self.total = total
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._started = False
        self._last = 0

    def _open(self) -> None:
        columns: list[ProgressColumn | str] = [TextColumn("[bold]{task.description}")]
        if self.total:
            columns += [BarColumn(), TaskProgressColumn()]
        columns += [DownloadColumn(binary_units=True), _GbpsColumn(), TimeElapsedColumn()]
        if self.total:
            columns += ["eta", TimeRemainingColumn()]
        console = Console(file=self.stream, force_terminal=True if self.enabled else None)
        self._progress = Progress(*columns, console=console, transient=True, refresh_per_second=4)
        self._task = self._progress.add_task(self.label, total=self.total, start=False)
        self._progress.start()

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            self._open()
        assert self._progress is not None and self._task is not None
        if not self._started:
            self._progress.start_task(self._task)  # the clock starts at the first byte
            self._started = True
        self._last = done
        self._progress.update(self._task, completed=done)

    @property
    def elapsed(self) -> float | None:
        """Seconds since the first byte (None before it, or off a terminal)."""
        if self._progress is None or self._task is None:
            return None
        return self._progress.tasks[0].elapsed

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> TransferProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_terminal(stream: IO[str] | None) -> bool:
    """True when ``stream`` is a terminal (``isatty()``), False for pipes and files."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------------------
# The backend line
# ---------------------------------------------------------------------------
#: doctor check -> what its failure means, in a few words ({ifname} filled in)
_SHORT_REASONS: dict[str, str] = {
    "queue-management-api": "{ifname} has no devmem queue API",
    "kernel-bind-rx": "the kernel refused devmem RX on {ifname}",
    "cap-net-admin": "no CAP_NET_ADMIN for devmem",
    "header-split": "{ifname} has no TCP header split",
    "hds-thresh": "{ifname} cannot set hds-thresh 0",
    "ntuple": "{ifname} has no ntuple flow steering",
    "rss": "{ifname} cannot move RSS off the devmem queue",
    "rx-queues": "{ifname} has too few RX queues",
    "kernel-bind-tx": "the kernel refused devmem TX on {ifname}",
    "netmem-tx": "{ifname} has no devmem TX",
}
_DOCTOR_NO = re.compile(r"^doctor: no devmem (?P<dir>RX|TX) on (?P<ifname>\S+) \((?P<check>[\w-]+): ")


def short_backend_reason(reason: str, ifname: str | None = None) -> str:
    """The few words of a backend reason that fit on one line.

    ``"doctor: no devmem RX on lo (queue-management-api: ...)"`` becomes
    ``"lo has no devmem queue API; `devmemtcp doctor lo` says why"``;
    ``"asked for (--backend emulated)"`` stays as it is; anything else is cut
    at its first parenthesis."""
    m = _DOCTOR_NO.match(reason)
    if m:
        name = m.group("ifname")
        text = _SHORT_REASONS.get(m.group("check"), f"no devmem {m.group('dir')} on {{ifname}}")
        return f"{text.format(ifname=name)}; `devmemtcp doctor {name}` says why"
    if reason.startswith("doctor: devmem") or reason.startswith("asked for"):
        return reason.removeprefix("doctor: ")
    if reason.startswith("doctor could not check"):
        where = f" {ifname}" if ifname else ""
        return f"{reason.split(' (')[0].removeprefix('doctor ')}; `devmemtcp doctor{where}` says why"
    return reason.split(" (")[0]


def backend_line(name: str, reason: str, *, ifname: str | None = None, verbose: bool = False) -> str:
    """``"backend: emulated — lo has no devmem queue API; `devmemtcp doctor lo` says why"``,
    or with ``verbose`` the full reason doctor gave."""
    return f"backend: {name} — {reason if verbose else short_backend_reason(reason, ifname)}"

#: Exit statuses of every command (the --help epilog and the README give this table).
EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

EXIT_STATUS_EPILOG = """\
exit status:
  0    ok (received, sent, validated and complete where checked; checks passed)
  1    the data did not validate, or the stream was incomplete (cut short or too long),
       or a check failed
  2    error: bad input, no permission, a missing kernel or NIC feature, a refused setup,
       a connection reset, closed or stalled
  130  interrupted (SIGINT/SIGTERM); the NIC settings, bindings and tokens are given back
"""


def report_error(command: str, message: str, hint: str | None = None, *, errno: int | None = None,
                 exit_status: int = EXIT_ERROR, as_json: bool = False,
                 extra: dict[str, Any] | None = None) -> int:
    """Print an error: ``devmemtcp COMMAND: error: MESSAGE`` and ``hint: HINT`` on
    stderr and, with ``as_json``, one object ``{"error", "hint", "errno",
    "exit_status", ...extra}`` on stdout. Returns ``exit_status``."""
    prefix = f"devmemtcp {command}" if command else "devmemtcp"
    print(f"{prefix}: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    if as_json:
        print_json({"error": message, "hint": hint, "errno": errno, "exit_status": exit_status,
                    **(extra or {})})
    return exit_status


def fail(message: str, hint: str | None = None) -> DevmemError:
    """Build a DevmemError (for ``raise fail(...)`` in command modules)."""
    return DevmemError(message, hint)


def report_validation_failure(command: str, exc: ValidationError, *, as_json: bool) -> int:
    """Print a pattern mismatch (offset, expected and received bytes) and its
    hint; with ``as_json`` also the JSON object scripts read. Returns exit status 1."""
    return report_error(command, exc.message, exc.hint, exit_status=EXIT_FAILED, as_json=as_json,
                        extra={"validated": False, "offset": exc.offset, "expected": exc.expected,
                               "received": exc.received})


def report_incomplete(command: str, exc: IncompleteStreamError) -> None:
    """Print a stream of the wrong length (``stream ended after K of N
    bytes``, or the overrun offset) and its hint on stderr; the caller prints
    the summary (``complete`` false) and exits with status 1."""
    print(f"devmemtcp {command}: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)


# -- shared by the transfer and setup commands -------------------------------
def table_rows(d: dict[str, Any], *, verbose: bool = False) -> dict[str, Any]:
    """The summary rows for a table: the JSON fields less those that do not
    apply to this role (completions on recv, queues on send), an empty error,
    and the backend's reason (said once on stderr; kept with ``verbose``)."""
    rows = dict(d)
    if not verbose:
        rows.pop("backend_reason", None)
    if rows.get("error") is None:
        rows.pop("error", None)
    if rows.get("role") == "recv":
        rows.pop("completions", None)
        if isinstance(rows.get("frag_sizes"), dict):
            rows["frag_sizes"] = ", ".join(f"{k}: {v}" for k, v in rows["frag_sizes"].items()) or "-"
        if rows.get("complete") is None:
            rows["complete"] = "length not checked (no --bytes)"
    else:
        rows.pop("queues", None)
        rows.pop("rcvlowat", None)
        rows.pop("non_page_aligned_frags", None)
        rows.pop("frag_sizes", None)
    return rows


def report_transfer(result: TransferResult, as_json: bool, title: str, *, verbose: bool = False) -> None:
    """Print the summary of one transfer (table on stdout, or one JSON object)."""
    if as_json:
        print_json(result.as_dict())
    else:
        print_summary(title, table_rows(result.as_dict(), verbose=verbose))


def backend_noter(args: argparse.Namespace, ifname: str | None) -> Any:
    """The ``on_backend`` callback of a transfer: one short line on stderr
    (the full reason with ``--verbose``; the JSON's backend_reason has it always)."""
    def on_backend(name: str, reason: str) -> None:
        print(backend_line(name, reason, ifname=ifname, verbose=args.verbose), file=sys.stderr,
              flush=True)
    return on_backend


def add_journal_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by setup and restore: --journal-dir, --netns, --lock-timeout, --json."""
    parser.add_argument("--journal-dir", type=Path, default=None, metavar="DIR",
                        help="where undo journals live "
                        f"(default $DEVMEMTCP_JOURNAL_DIR or {DEFAULT_JOURNAL_DIR})")
    parser.add_argument("--netns", type=netns_arg, metavar="NAME",
                        help="act inside network namespace NAME (as `ip netns exec NAME` would)")
    parser.add_argument("--lock-timeout", type=timeout_arg, default=None, metavar="SECONDS",
                        help="wait at most SECONDS for the interface's journal lock while another "
                        f"setup or restore of it runs (default {LOCK_TIMEOUT_S:g})")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
