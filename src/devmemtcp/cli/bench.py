"""``devmemtcp bench frags | stream | tensor | gather | torch | report``: measure the devmem paths
and the torch backend.

Each subcommand prints readable tables (progress on stderr) or, with
``--json``, one JSON object on stdout. Exit status 0 when the benchmark ran
(1 with ``--check`` when a target was missed), 2 for bad input or a missing
tool (gcc, matplotlib).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from devmemtcp.cli.common import (
    dmabuf_size,
    parse_size,
    positive_int,
    positive_size,
    print_json,
    validate_arg,
)

EPILOG = """\
examples:
  devmemtcp bench frags                    Receiver pipeline vs the C walks, 10 M frags
  devmemtcp bench frags --frags 2000000 --per-call 400 --json
  devmemtcp bench stream --bytes 512M      raw Python TCP vs the emulated devmem path on lo
  devmemtcp bench tensor --sizes 4K,1M,16M --streams 2   the data API vs plain TCP, and the gather
  devmemtcp bench torch --ranks 2 --sizes 64K,1M,16M,256M   the "devmem" torch backend vs Gloo
  devmemtcp bench report --out bench-out   both, plus bench-out/bench.json and bench-out/bench.png
  devmemtcp bench gather --memory cuda     device gather vs cuMemcpyDtoD (needs a GPU, cuda-python, CuPy)

What the figures mean: bench/README.md in the source tree.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCH", required=True)

    for name, help_, description, add_args in _SUBCOMMANDS:
        p = sub.add_parser(name, help=help_, description=description)
        add_args(p)
        _common_args(p)

    p = sub.add_parser("report", help="run frags and stream, write bench.json and a bench.png plot",
                       description="Run both benchmarks and write DIR/bench.json and DIR/bench.png "
                       "(needs matplotlib: pip install 'devmemtcp[plot]').")
    p.add_argument("--out", type=Path, default=Path("bench-report"), metavar="DIR",
                   help="directory for bench.json and bench.png (default ./bench-report)")
    p.add_argument("--skip-frags", action="store_true", help="do not run the fragment benchmark")
    p.add_argument("--skip-stream", action="store_true", help="do not run the stream benchmark")
    _frags_args(p)
    _stream_args(p)
    _common_args(p)


def _frags_args(p: argparse.ArgumentParser) -> None:
    from devmemtcp.bench.frags import DEFAULT_FRAGS, DEFAULT_PER_CALL

    p.add_argument("--frags", type=positive_int, default=DEFAULT_FRAGS, metavar="N",
                   help=f"fragments through the timed pass, rounded up to whole control buffers "
                   f"(default {DEFAULT_FRAGS})")
    p.add_argument("--per-call", type=positive_int, default=DEFAULT_PER_CALL, metavar="K",
                   help=f"fragments per control buffer, 40 bytes each (default {DEFAULT_PER_CALL})")
    p.add_argument("--no-c", action="store_true", help="skip the C baselines (no gcc needed)")
    p.add_argument("--profile", action="store_true",
                   help="run the pipeline once more under cProfile and show where the time goes")


def _stream_args(p: argparse.ArgumentParser) -> None:
    from devmemtcp.bench.stream import DEFAULT_BYTES, DEFAULT_DMABUF_SIZE, DEFAULT_REPEAT, DEFAULT_VALIDATE

    p.add_argument("--bytes", type=positive_size, default=DEFAULT_BYTES, metavar="N",
                   help="bytes per run, e.g. 512M, 1G (default 1G)")
    p.add_argument("--validate", type=validate_arg, default=DEFAULT_VALIDATE, metavar="N",
                   help=f"pattern period of the validated run (default {DEFAULT_VALIDATE})")
    p.add_argument("--repeat", type=positive_int, default=DEFAULT_REPEAT, metavar="R",
                   help=f"runs of each kind, medians reported (default {DEFAULT_REPEAT})")
    p.add_argument("--dmabuf-size", type=dmabuf_size, default=DEFAULT_DMABUF_SIZE, metavar="N",
                   help="dma-buf of the emulated runs (default 62.5M, ncdevmem's 16000 pages)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin this process and the peer to two different CPUs (pinning, as "
                        "iperf3 -A, applies to raw and devmem runs alike and cuts the run-to-run noise)")


def _gather_args(p: argparse.ArgumentParser) -> None:
    from devmemtcp.bench.gather import DEFAULT_FRAGS, DEFAULT_REPEAT
    from devmemtcp.cli.common import add_memory_arg

    add_memory_arg(p, default="cuda")
    p.add_argument("--frags", type=positive_int, default=DEFAULT_FRAGS, metavar="N",
                   help=f"frags per gathered batch, each in its own net_iov (default {DEFAULT_FRAGS})")
    p.add_argument("--repeat", type=positive_int, default=DEFAULT_REPEAT, metavar="R",
                   help=f"timed batches per frag size, medians reported (default {DEFAULT_REPEAT})")


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(parse_size(x) for x in text.split(",") if x.strip())
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise argparse.ArgumentTypeError(f"bad --sizes {text!r}: {exc}") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError("--sizes needs positive sizes, e.g. 4K,1M,16M")
    return sizes


def _tensor_args(p: argparse.ArgumentParser) -> None:
    from devmemtcp.bench.tensor import DEFAULT_BYTES

    p.add_argument("--sizes", type=_sizes, default=(4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20),
                   metavar="LIST", help="message sizes, comma separated (default 4K,64K,1M,16M,256M)")
    p.add_argument("--streams", type=positive_int, default=1, metavar="N",
                   help="data flows per direction of the devmem channel (default 1)")
    p.add_argument("--bytes", type=positive_size, default=DEFAULT_BYTES, metavar="N",
                   help="payload per size and kind (default 512M; at least 2, at most 20000 messages)")
    p.add_argument("--dmabuf-size", type=dmabuf_size, default=64 << 20, metavar="N",
                   help="RX dma-buf of each channel end (default 64M)")
    p.add_argument("--repeat", type=positive_int, default=3, metavar="R",
                   help="runs of each kind per size, alternated, medians reported (default 3)")
    p.add_argument("--no-gather", action="store_true", help="skip the gather measurements")


def _torch_args(p: argparse.ArgumentParser) -> None:
    from devmemtcp.bench.torchdist import DEFAULT_BYTES, DEFAULT_REPEAT, DEFAULT_SIZES

    p.add_argument("--ranks", type=positive_int, default=2, metavar="N", help="processes (default 2)")
    p.add_argument("--sizes", type=_sizes, default=DEFAULT_SIZES, metavar="LIST",
                   help="tensor sizes in bytes, comma separated (default 64K,1M,16M,256M)")
    p.add_argument("--bytes", type=parse_size, default=DEFAULT_BYTES, metavar="N",
                   help="payload per timed run (default 256M; 2 to 500 calls)")
    p.add_argument("--repeat", type=positive_int, default=DEFAULT_REPEAT, metavar="N",
                   help=f"timed runs per figure and backend, alternating; the best counts (default "
                        f"{DEFAULT_REPEAT}: fewer let one disturbed moment of a shared machine decide "
                        "the ratio)")
    p.add_argument("--streams", type=positive_int, default=1, metavar="N",
                   help="data flows per direction of each devmem channel (default 1)")


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--check", action="store_true", help="exit status 1 when a target is missed")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


#: (name, one-line help, description, the function adding its own options) of each measurement
_SUBCOMMANDS: tuple[tuple[str, str, str, Callable[[argparse.ArgumentParser], None]], ...] = (
    ("frags", "fragments per second through the Receiver's pipeline vs C walks",
     "Parse, account, coalesce and SO_DEVMEM_DONTNEED (on a real loopback TCP socket) synthetic "
     "kernel-layout control buffers through the Receiver, and compare with C walks compiled at run time.",
     _frags_args),
    ("stream", "loopback throughput: raw Python TCP vs the emulated devmem path",
     "Receive and send over lo: raw Python sockets vs the emulated devmem NIC (Receiver / Sender), "
     "same peer process, medians of --repeat runs.",
     _stream_args),
    ("tensor", "the data API (Channel) vs a plain-TCP framed channel; the gather",
     "Messages of each --sizes from a peer process, received with recv_into one preallocated numpy "
     "array: the devmem Channel on the emulated NIC over lo against a plain-TCP framed channel; then "
     "the gather alone against np.copyto.",
     _tensor_args),
    ("gather", "gather of received frags vs a plain copy (GPU: --memory cuda)",
     "Gather page-aligned and 1448-byte frags into one contiguous buffer and compare with a copy of "
     "the same bytes: on the GPU (--memory cuda[:N]: one kernel launch per batch vs cuMemcpyDtoD) or "
     "on the host (--memory host: numpy vs memcpy).",
     _gather_args),
    ("torch", 'the "devmem" torch.distributed backend vs Gloo (needs torch)',
     'send/recv, broadcast and all_gather_into_tensor of each --sizes on the "devmem" process group '
     "(emulated NIC on lo) and on Gloo, same job, same sizes.",
     _torch_args),
)


def _progress(args: argparse.Namespace) -> Any:
    if args.quiet:
        return None
    err = Console(file=sys.stderr)
    return lambda msg: err.print(f"[dim]bench: {msg}[/dim]", highlight=False)


def run(args: argparse.Namespace) -> int:
    progress = _progress(args)
    cmd = args.bench_command
    if cmd == "frags":
        from devmemtcp.bench.frags import run_frags

        result = run_frags(args.frags, args.per_call, c_baselines=not args.no_c, profile=args.profile,
                           progress=progress)
        _emit(args, result, lambda c: print_frags(c, result))
        return _status(args, result.get("targets", {}))
    if cmd == "stream":
        from devmemtcp.bench.stream import run_stream

        result = run_stream(args.bytes, args.validate, repeat=args.repeat, dmabuf_size=args.dmabuf_size,
                            pin=not args.no_pin,
                            progress=progress)
        _emit(args, result, lambda c: print_stream(c, result))
        return _status(args, result.get("targets", {}))
    if cmd == "gather":
        from devmemtcp.bench.gather import run_gather

        result = run_gather(args.memory, frags=args.frags, repeat=args.repeat, progress=progress)
        _emit(args, result, lambda c: print_gather(c, result))
        return _status(args, result.get("targets", {}))
    if cmd == "tensor":
        from devmemtcp.bench.tensor import run_tensor

        result = run_tensor(args.sizes, streams=args.streams, nbytes=args.bytes, dmabuf_size=args.dmabuf_size,
                            repeat=args.repeat, gather_runs=not args.no_gather, progress=progress)
        _emit(args, result, lambda c: print_tensor(c, result))
        return _status(args, result.get("targets", {}))
    if cmd == "torch":
        from devmemtcp.bench.torchdist import run_torch

        result = run_torch(args.ranks, args.sizes, nbytes=args.bytes, repeat=args.repeat,
                           streams=args.streams, progress=progress)
        _emit(args, result, lambda c: print_torch(c, result))
        return _status(args, result.get("targets", {}))
    from devmemtcp.bench.report import run_report

    frags_kw = None if args.skip_frags else {"frags": args.frags, "per_call": args.per_call,
                                             "c_baselines": not args.no_c, "profile": args.profile}
    stream_kw = None if args.skip_stream else {"nbytes": args.bytes, "validate": args.validate,
                                               "repeat": args.repeat, "dmabuf_size": args.dmabuf_size,
                                               "pin": not args.no_pin}
    result = run_report(args.out, frags_kwargs=frags_kw, stream_kwargs=stream_kw, progress=progress)

    def show(c: Console) -> None:
        if "frags" in result:
            print_frags(c, result["frags"])
        if "stream" in result:
            print_stream(c, result["stream"])
        c.print(f"wrote {result['json_path']} and {result['png_path']}")

    _emit(args, result, show)
    targets = {**result.get("frags", {}).get("targets", {}), **result.get("stream", {}).get("targets", {})}
    return _status(args, targets)


def _emit(args: argparse.Namespace, result: dict[str, Any], show: Any) -> None:
    if args.json:
        print_json(result)
    else:
        show(Console())


def _status(args: argparse.Namespace, targets: dict[str, Any]) -> int:
    if args.check and not all(t.get("met") for t in targets.values()):
        return 1
    return 0


def _n(x: float | None, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def _targets_table(targets: dict[str, Any]) -> Table:
    t = Table(title="targets", title_justify="left")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_column("target", justify="right")
    t.add_column("met", justify="center")
    for name, v in targets.items():
        value = v["value"]
        if isinstance(value, float):
            text = _n(value, ",.0f") if abs(value) >= 1000 else _n(value, ".3f")
        else:
            text = str(value)
        t.add_row(name, text, v["target"], "[green]yes[/green]" if v["met"] else "[red]no[/red]")
    return t


def print_frags(console: Console, r: dict[str, Any]) -> None:
    """The fragment benchmark as tables: one row per walk, then the targets."""
    t = Table(title=f"fragment path: {r['frags']:,} frags, {r['per_call']} per control buffer "
              f"({r['control_bytes']} bytes)", title_justify="left")
    t.add_column("walk", no_wrap=True)
    t.add_column("Mfrag/s", justify="right")
    t.add_column("ns/frag", justify="right")
    t.add_column("DONTNEEDs", justify="right")
    t.add_column("frags/call", justify="right")
    t.add_column("Mfrag/CPU-s", justify="right")
    t.add_row("Python Receiver", _n(r["frags_per_s"] / 1e6, ".2f"),
              _n(r["ns_per_frag"], ".2f"), _n(r["release_syscalls"]),
              _n(r["frags_per_release_syscall"], ".1f"),
              _n(r["frags_per_cpu_s"] / 1e6 if r.get("frags_per_cpu_s") else None, ".2f"))
    names = {"perfrag": "C per-frag", "batched": "C batched", "parse": "C walk only"}
    for mode, entry in (r.get("c") or {}).items():
        calls = entry["release_syscalls"]
        t.add_row(names.get(mode, mode), _n(entry["frags_per_s"] / 1e6, ".2f"),
                  _n(entry["ns_per_frag"], ".2f"), _n(calls),
                  _n(entry["frags"] / calls, ".1f") if calls else "-",
                  _n(entry["frags_per_cpu_s"] / 1e6 if entry.get("frags_per_cpu_s") else None, ".2f"))
    console.print(t)
    console.print("Python Receiver: process_control (parse, account) + release (coalesce, SO_DEVMEM_DONTNEED "
                  f"via libc); through recv(): {_n(r['recv_loop']['frags_per_s'])} frags/s. "
                  "C per-frag: one DONTNEED per fragment (ncdevmem); C batched: coalesced, 1024 "
                  "frags/128 ranges per call; C walk only: no syscall.")
    if "ratios" in r:
        console.print(f"Python / per-frag C = {r['ratios']['python_vs_perfrag_c']:.2f}x, "
                      f"Python / batched C = {r['ratios']['python_vs_batched_c']:.2f}x "
                      f"(kernel freed {r['kernel_frags_freed']} frags: "
                      "no devmem NIC, so the kernel finds none of the tokens)")
    console.print(_targets_table(r["targets"]))
    if r.get("profile"):
        p = Table(title="where the time goes (cProfile, own time; absolute times inflated by the profiler)",
                  title_justify="left")
        p.add_column("function", overflow="fold")
        p.add_column("calls", justify="right")
        p.add_column("own ns/frag", justify="right")
        for row in r["profile"]:
            p.add_row(row["function"], _n(row["calls"]), _n(row["own_ns_per_frag"], ".2f"))
        console.print(p)
    m = r["machine"]
    console.print(f"[dim]{m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, load {m['loadavg']} -> "
                  f"{m.get('loadavg_after')}[/dim]")


def print_stream(console: Console, r: dict[str, Any]) -> None:
    """The stream benchmark as tables: medians per kind, memory, then the targets."""
    t = Table(title=f"loopback stream: {r['bytes']:,} bytes per run, median of {r['repeat']}, "
              f"{r['dmabuf_bytes'] / (1 << 20):g} MiB dma-buf",
              title_justify="left")
    t.add_column("run")
    t.add_column("Gbit/s", justify="right")
    t.add_column("vs raw", justify="right")
    mib = 1 << 20
    br, bs = r["baseline"]["recv"], r["baseline"]["send"]
    t.add_row(f"receive, raw Python recv_into ({br['buffer_bytes'] / mib:.2f} MiB, "
              f"SO_RCVLOWAT {br['rcvlowat']:,})", _n(r["raw_recv_gbps"], ".2f"), "1.00")
    t.add_row("receive, emulated devmem (Receiver)", _n(r["emulated_recv_gbps"], ".2f"),
              _n(r["recv_ratio"], ".2f"))
    raw = r["raw_recv_gbps"]
    val = r["emulated_recv_validated_gbps"]
    t.add_row(f"receive, emulated devmem + --validate {r['validate']}", _n(val, ".2f"),
              _n(val / raw, ".2f") if raw else "-")
    t.add_row("[dim]receive, raw Python recv_into (1 MiB, default options)[/dim]",
              _n(r["raw_recv_plain_gbps"], ".2f"), _n(r["raw_recv_plain_gbps"] / raw, ".2f") if raw else "-")
    t.add_row(f"send, raw Python send ({bs['buffer_bytes'] / mib:.1f} MiB buffer, "
              f"{bs['bytes_per_call'] / mib:g} MiB per call)", _n(r["raw_send_gbps"], ".2f"), "1.00")
    t.add_row("send, emulated devmem (Sender)", _n(r["emulated_send_gbps"], ".2f"),
              _n(r["send_ratio"], ".2f"))
    raw_s = r["raw_send_gbps"]
    t.add_row("[dim]send, raw Python send (1 MiB hot buffer)[/dim]", _n(r["raw_send_plain_gbps"], ".2f"),
              _n(r["raw_send_plain_gbps"] / raw_s, ".2f") if raw_s else "-")
    console.print(t)
    console.print(f"the devmem path against the plain runs: receive {_n(r['recv_ratio_vs_plain'], '.2f')}, "
                  f"send {_n(r['send_ratio_vs_plain'], '.2f')}"
                  + (f"; pinned: this process on CPU {r['pinned'][0]}, the peer on CPU {r['pinned'][1]}"
                     if r.get("pinned") else "; not pinned"))
    peak = r.get("rss_bytes_peak")
    quarter = r.get("rss_bytes_peak_quarter")
    growth = r.get("rss_growth_bytes")
    console.print(f"receiver peak RSS: {_n(peak / mib if peak else None, '.1f')} MiB "
                  f"for {r['bytes']:,} bytes, "
                  f"{_n(quarter / mib if quarter else None, '.1f')} MiB for a quarter of that "
                  f"(growth {_n(growth / mib if growth is not None else None, '+.1f')} MiB)")
    console.print(_targets_table(r["targets"]))
    m = r["machine"]
    console.print(f"[dim]{m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, load {m['loadavg']} -> "
                  f"{m.get('loadavg_after')}[/dim]")


def print_gather(console: Console, r: dict[str, Any]) -> None:
    """The gather benchmark as a table: one row per frag size, then the targets."""
    t = Table(title=f"gather on {r['device']} ({r['memory']} memory), median of {r['repeat']} batches",
              title_justify="left")
    t.add_column("frags")
    t.add_column("bytes", justify="right")
    t.add_column("gather GB/s", justify="right")
    t.add_column("copy GB/s", justify="right")
    t.add_column("gather/copy", justify="right")
    device = any("upload_us" in c for c in r["cases"])
    if device:  # the frag list's upload and the host planning exist only for the device gather
        t.add_column("with upload", justify="right")
        t.add_column("upload us", justify="right")
        t.add_column("plan ms", justify="right")
    for c in r["cases"]:
        row = [f"{c['frags']:,} x {c['frag_size']} B", f"{c['bytes']:,}", _n(c["gather_gbps"], ".1f"),
               _n(c["copy_gbps"], ".1f"), _n(c["ratio"], ".2f")]
        if device:
            row += [_n(c.get("ratio_with_upload"), ".2f"), _n(c.get("upload_us"), ".1f"),
                    _n(c.get("plan_ms"), ".2f")]
        t.add_row(*row)
    console.print(t)
    if r["targets"]:
        console.print(_targets_table(r["targets"]))


def _size_label(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def print_tensor(console: Console, r: dict[str, Any]) -> None:
    """The tensor benchmark as tables: per size devmem vs plain, the gather, the targets."""
    t = Table(title=f"data API over lo: devmem Channel ({r['streams']} stream(s), emulated NIC, "
              f"{r['dmabuf_bytes'] >> 20} MiB dma-buf) vs plain-TCP framed channel, recv_into one array, "
              f"median of {r.get('repeat', 1)}", title_justify="left")
    for col in ("size", "msgs", "plain Gb/s", "devmem Gb/s", "ratio", "plain msg/s", "devmem msg/s",
                "devmem µs/msg", "copy/B"):
        t.add_column(col, justify="right")
    for row in r["rows"]:
        p, d = row["plain"], row["devmem"]
        t.add_row(_size_label(row["size"]), _n(row["count"]), _n(p["gbps"], ".2f"), _n(d["gbps"], ".2f"),
                  _n(row["ratio"], ".3f"), _n(p["msg_per_s"]), _n(d["msg_per_s"]), _n(d["us_per_msg"], ".1f"),
                  f"{p['host_copy_per_byte']:.1f}/{d['host_copy_per_byte']:.1f}")
    console.print(t)
    console.print("copy/B (plain/devmem): bytes the receiving process's CPU copies per payload byte "
                  "(plain: the kernel's copy to user space; devmem: the gather from the dma-buf; on the "
                  "emulated NIC the socket -> dma-buf copy stands in for the NIC's DMA and is not counted). "
                  "The devmem sender sends from Channel.empty() (no host copy).")
    lat = r.get("latency")
    if lat:
        lp, ld = lat["plain_rtt"], lat["devmem_rtt"]
        idle, after = lat["lone_idle"], lat["lone_after_send"]
        console.print(
            f"latency, {_size_label(lat['size'])} ping-pong x {lat['rounds']:,} (half the median round "
            f"trip): plain TCP (TCP_NODELAY) {lat['plain_one_way_us']:.1f} µs, devmem "
            f"{lat['devmem_one_way_us']:.1f} µs (round trip p99 {lp['p99_us']:.0f} / {ld['p99_us']:.0f} µs); "
            f"a lone devmem message one way (median/max): after idle {idle['median_us']:.0f}/"
            f"{idle['max_us']:.0f} µs, right after another {after['median_us']:.0f}/{after['max_us']:.0f} µs "
            f"(cork timer {lat['cork_delay_us']:.0f} µs)")
    mem = r.get("memory")
    if mem and mem.get("rss_growth_bytes") is not None:
        mib = 1 << 20
        console.print(f"receiver peak RSS: {mem['rss_peak'] / mib:.1f} MiB for {mem['count']:,} messages of "
                      f"{_size_label(mem['size'])}, {mem['rss_peak_quarter'] / mib:.1f} MiB for a quarter of "
                      f"them (growth {mem['rss_growth_bytes'] / mib:+.1f} MiB)")
    g = r.get("gather")
    if g:
        gt = Table(title=f"gather, one thread: {g['pass_bytes'] >> 20} MiB per pass from a "
                   f"{g['pool_bytes'] >> 20} MiB pool, frags at random pages; chosen: {g['chosen']}",
                   title_justify="left")
        for col in ("frags", "np.copyto GB/s", "candidate", "GB/s", "vs copyto"):
            gt.add_column(col, justify="right")
        for kind, label in (("pages", "4K pages"), ("1448", "1448 B")):
            e = g[kind]
            for name in ("chosen", "numpy_fallback", "np_take", "torch_index_select"):
                if f"{name}_gbs" in e:
                    gt.add_row(f"{label} x {e['frags']:,}", _n(e["copyto_gbs"], ".2f"), name,
                               _n(e[f"{name}_gbs"], ".2f"), _n(e[f"{name}_ratio"], ".3f"))
        console.print(gt)
    console.print(_targets_table(r["targets"]))
    m = r["machine"]
    console.print(f"[dim]{m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, load {m['loadavg']} -> "
                  f"{m.get('loadavg_after')}[/dim]")


def print_torch(console: Console, r: dict[str, Any]) -> None:
    """The torch backend benchmark: per op and size devmem vs Gloo, then the targets."""
    from devmemtcp.cli.common import format_bytes

    t = Table(title=f'torch.distributed over lo, {r["ranks"]} ranks: "devmem" (emulated NIC, '
              f'{r["streams"]} stream(s)) vs Gloo, best of {r["repeat"]}', title_justify="left")
    for col in ("op", "size", "calls", "devmem Gbit/s", "gloo Gbit/s", "ratio", "ratio of medians"):
        t.add_column(col, justify="right")
    for row in r["rows"]:
        t.add_row(row["op"], format_bytes(row["size"]), _n(row["iters"]), _n(row["devmem_gbps"], ".2f"),
                  _n(row["gloo_gbps"], ".2f"), _n(row["ratio"], ".3f"), _n(row["median_ratio"], ".3f"))
    console.print(t)
    console.print("Gbit/s: payload bytes per second (all_gather: the output's bytes) of the best run; "
                  "the ratio of the median runs shows how far the machine's load moved the ratio. The "
                  "emulated NIC copies each payload once more than Gloo (socket -> dma-buf, the NIC's DMA "
                  "on real hardware), and the Channel stages sends through its TX dma-buf.")
    console.print(_targets_table(r["targets"]))
    m = r["machine"]
    console.print(f"[dim]torch {r.get('torch')}, {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, "
                  f"load {m['loadavg']}[/dim]")
