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

from devmemtcp.cli import common
from devmemtcp.cli.recv import table_rows
from devmemtcp.errors import IncompleteStreamError, ValidationError
from devmemtcp.transfer import run_demo

DEMO_PERIOD = 7


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = common.TRANSFER_EXIT_STATUS
    parser.add_argument("--bytes", type=common.parse_size, default=1 << 30, metavar="N",
                        help="bytes to transfer (default 1G = 2**30)")
    parser.add_argument("--validate", type=common.validate_arg, default=DEMO_PERIOD, metavar="N",
                        help=f"pattern period (default {DEMO_PERIOD})")
    parser.add_argument("--backend", choices=("auto", "kernel", "emulated"), default="auto",
                        help="auto (default): kernel when lo could do devmem (it cannot), else emulated")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    progress = common.ProgressLine("demo", total=args.bytes)

    def on_backend(name: str, reason: str) -> None:
        common.note(f"backend {name}: {reason}")

    try:
        demo = run_demo(nbytes=args.bytes, validate=args.validate, backend=args.backend,
                        on_backend=on_backend, on_progress=progress)
    except ValidationError as exc:
        progress.close()
        return common.report_validation_failure("demo", exc, as_json=args.json)
    except IncompleteStreamError as exc:
        progress.close()
        common.report_incomplete("demo", exc)
        if args.json:
            common.print_json({"validated": False, "complete": False, "error": exc.message,
                               "bytes": exc.received, "expected_bytes": exc.expected})
        return 1
    progress.close()
    if args.json:
        common.print_json(demo)
    else:
        common.print_summary("devmemtcp demo: receiver", table_rows(demo["recv"]))
        common.print_summary("devmemtcp demo: sender", table_rows(demo["send"]))
        verdict = "validated and complete" if demo["validated"] else "NOT validated"
        print(f"{common.format_bytes(demo['bytes'])} over loopback on the {demo['backend']} backend "
              f"in {demo['seconds']:.2f} s ({demo['gbps']:.2f} Gbit/s), {verdict}")
    return 0 if demo["validated"] else 1
