"""``devmemtcp demo``: both ends of a validated devmem transfer over loopback.

A receiver (``devmemtcp recv``'s code) listens on 127.0.0.1 with the NIC set
up for its flow and a dma-buf bound to its queue; a sender (``devmemtcp
send``'s code) sends N bytes of ncdevmem's pattern (period 7) from another
dma-buf; the receiver checks every byte straight from its dma-buf. On a
machine without a devmem NIC both ends run on the emulated NIC.

Exit status: 0 validated and complete, 1 validation mismatch or an incomplete
stream (the receiver is told the length), 2 error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from devmemtcp.cli import common
from devmemtcp.errors import DevmemError, IncompleteStreamError, ValidationError
from devmemtcp.transfer import run_demo

DEMO_PERIOD = 7

EXAMPLES = """\
examples:
  devmemtcp demo                       1 GiB over loopback, validated, a summary table
  devmemtcp demo --bytes 256M --json   one JSON object: recv and send summaries
  devmemtcp demo --verbose             also the full reason for the backend choice
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("--bytes", type=common.positive_size, default=1 << 30, metavar="N",
                        help="bytes to transfer (default 1G = 2**30)")
    parser.add_argument("-v", "--validate", type=common.validate_arg, default=DEMO_PERIOD, metavar="N",
                        help=f"pattern period (default {DEMO_PERIOD})")
    parser.add_argument("--backend", choices=("auto", "kernel", "emulated"), default="auto",
                        help="auto (default): kernel when lo could do devmem (it cannot), else emulated")
    common.add_memory_arg(parser)
    common.add_output_args(parser, verbose=True)


def _check_kernel_backend() -> None:
    """demo runs on lo: the kernel backend is only worth trying where doctor says
    lo can do devmem RX (no kernel so far), so say why up front."""
    from devmemtcp.doctor import diagnose

    report = diagnose("lo")
    if not report.rx_supported:
        raise DevmemError(
            "the kernel backend needs a devmem NIC and demo runs on lo, which has none "
            "(`devmemtcp doctor lo` says why)",
            "run `devmemtcp demo` (the emulated NIC), or devmemtcp recv/send --backend kernel "
            "on a devmem NIC's own address")


def run(args: argparse.Namespace) -> int:
    if args.backend == "kernel":
        _check_kernel_backend()
    progress = common.TransferProgress("demo", total=args.bytes)

    def on_backend(name: str, reason: str) -> None:
        print(common.backend_line(name, reason, ifname="lo", verbose=args.verbose), file=sys.stderr,
              flush=True)

    try:
        demo = run_demo(nbytes=args.bytes, validate=args.validate, backend=args.backend, memory=args.memory,
                        on_backend=on_backend, on_progress=progress)
    except ValidationError as exc:
        progress.close()
        return common.report_validation_failure("demo", exc, as_json=args.json)
    except IncompleteStreamError as exc:
        progress.close()
        common.report_incomplete("demo", exc)
        if args.json:
            common.print_json({"validated": False, "complete": False, "error": exc.message,
                               "hint": exc.hint, "errno": None, "exit_status": 1,
                               "bytes": exc.received, "expected_bytes": exc.expected})
        return 1
    finally:
        progress.close()
    if args.json:
        common.print_json(demo)
    else:
        for role, title in (("recv", "receiver"), ("send", "sender")):
            rows = common.table_rows(demo[role], verbose=args.verbose)
            common.print_summary(f"devmemtcp demo: {title}", rows)
        verdict = "validated and complete" if demo["validated"] else "NOT validated"
        print(f"{common.format_bytes(demo['bytes'])} over loopback on the {demo['backend']} backend "
              f"in {demo['seconds']:.2f} s ({demo['gbps']:.2f} Gbit/s), {verdict}")
    if not demo["validated"]:
        return common.report_error("demo", "the transfer was not validated to its end",
                                   "run with --json to see both ends' byte counts",
                                   exit_status=common.EXIT_FAILED, as_json=False)
    return 0
