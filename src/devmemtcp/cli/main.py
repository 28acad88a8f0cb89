"""Entry point of the ``devmemtcp`` console script.

Subcommands live in their own modules (``devmemtcp.cli.<name>``), each with
``configure(parser)`` and ``run(args) -> int``; only the chosen one is
imported, so ``devmemtcp --help`` stays fast.

Exit status: 0 success, 1 the job ran and failed (validation mismatch, a
failed check), 2 bad input or environment (unknown interface, no
permission, missing kernel feature), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from devmemtcp import __version__
from devmemtcp.errors import DevmemError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("devmemtcp.cli.info", "show devices, queues, bindings, page pools and NIC settings"),
    "doctor": ("devmemtcp.cli.doctor", "check every devmem RX/TX prerequisite and say how to fix it"),
    "recv": ("devmemtcp.cli.recv", "receive one TCP connection into a dma-buf (devmem RX)"),
    "send": ("devmemtcp.cli.send", "send bytes from a dma-buf (devmem TX)"),
    "demo": ("devmemtcp.cli.demo", "receive and send over loopback on the emulated NIC, validated"),
    "setup": ("devmemtcp.cli.setup", "configure a NIC for a devmem flow and keep it configured"),
    "restore": ("devmemtcp.cli.restore", "undo what setup (or a crashed run) changed on a NIC"),
    "teardown": ("devmemtcp.cli.restore", "alias of restore"),
    "lease": ("devmemtcp.cli.lease", "lease a physical RX queue to a netkit guest (queue-create)"),
    "emulate": ("devmemtcp.cli.emulate", "shape the emulated NIC: netkit pairs, netmem TX mode, XDP"),
    "selftest": ("devmemtcp.cli.selftest", "qualify a NIC for devmem TCP (drv-net style cases)"),
    "bench": ("devmemtcp.cli.bench", "measure the fragment path and stream throughput"),
}

EPILOG = """\
examples:
  devmemtcp demo                       both ends over loopback, emulated NIC, validated
  devmemtcp doctor eth0                can this NIC do devmem RX/TX? what to fix?
  devmemtcp info --json                devices, queues, bindings, page pools as JSON
  devmemtcp recv --listen 0.0.0.0 --port 5201 --validate 7
  devmemtcp send 192.0.2.1 --port 5201 --bytes 1G --validate 7
  devmemtcp bench frags                fragments per second through the RX pipeline

Every command takes --help. Backends: 'kernel' (a devmem-capable NIC) or
'emulated' (a software devmem NIC over real TCP sockets, any Linux machine).
"""


def _chosen_command(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devmemtcp",
        description="Linux Device Memory TCP from Python: receive TCP payloads into, and send "
        "them from, dma-bufs (GPU or host memory) without a host bounce buffer.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"devmemtcp {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen_command(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(
            name, help=help_text, description=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # SUPPRESS: keep a top-level --debug when the subcommand does not repeat it.
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks on errors")
        if name == chosen:
            module = importlib.import_module(module_name)
            module.configure(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except DevmemError as exc:
        if args.debug:
            raise
        print(f"devmemtcp {args.command}: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        if args.debug:
            raise
        print(f"devmemtcp {args.command}: error: {exc}", file=sys.stderr)
        print("hint: run as root or grant CAP_NET_ADMIN", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
