"""Entry point of the ``devmemtcp`` console script.

Subcommands live in their own modules (``devmemtcp.cli.<name>``), each with
``configure(parser)`` and ``run(args) -> int``; only the chosen one is
imported, so ``devmemtcp --help`` stays fast (:func:`build_parser` with
``full=True`` configures them all, for the man page, completion and docs).

Exit status (every command): 0 success, 1 the data did not validate or was
incomplete, or a check failed, 2 error (bad input, no permission, missing
kernel or NIC feature), 130 interrupted; 141, quietly, when stdout's reader
went away early (``| head``), as for a process SIGPIPE ended. Errors print one line
``devmemtcp CMD: error: ...`` and a ``hint:`` line on stderr, never a
traceback (``--debug`` shows it); with ``--json`` also one JSON object
``{"error", "hint", "errno", "exit_status"}`` on stdout.
"""

from __future__ import annotations

import argparse
import errno as _errno
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from devmemtcp import __version__
from devmemtcp.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_STATUS_EPILOG, report_error, split_hint
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
    "completion": ("devmemtcp.cli.completion", "print a shell completion script (bash, zsh, tcsh)"),
    "man": ("devmemtcp.cli.manpage", "show the devmemtcp(1) manual page (or write it)"),
}

EPILOG = """\
examples:
  devmemtcp demo                       both ends over loopback, emulated NIC, validated
  devmemtcp doctor eth0                can this NIC do devmem RX/TX? what to fix?
  devmemtcp info --json                devices, queues, bindings, page pools as JSON
  devmemtcp recv -l 0.0.0.0 -f eth1 -p 5201 -v 7
  devmemtcp send 192.0.2.1 -p 5201 --bytes 1G -v 7
  devmemtcp bench frags                fragments per second through the RX pipeline
  eval "$(devmemtcp completion bash)"  tab completion in this shell

Every command takes --help. Backends: kernel (a devmem-capable NIC) or
emulated (a software devmem NIC over real TCP sockets, any Linux machine).
The kernel's ncdevmem command line works too: see `ncdevmem --help`.

""" + EXIT_STATUS_EPILOG


#: stdout closed by its reader: the status of a process SIGPIPE ended (128 + 13)
EXIT_SIGPIPE = 141


class UsageError(Exception):
    """A command line argparse refused: ``prog`` (e.g. ``devmemtcp recv``) and the message."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog
        self.message = message


class CliParser(argparse.ArgumentParser):
    """argparse, but a refused command line raises :class:`UsageError` instead of
    printing the usage block and exiting, so :func:`main` reports it as one line
    (and as JSON with ``--json``)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


def _chosen_command(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: Sequence[str] = (), *, full: bool = False) -> argparse.ArgumentParser:
    """The ``devmemtcp`` parser. Only the subcommand named in ``argv`` is
    configured (its module imported), unless ``full`` (every one: for the man
    page, shell completion and docs/cli.md)."""
    parser = CliParser(
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
        if full or name == chosen:
            module = importlib.import_module(module_name)
            module.configure(p)
            p.set_defaults(_run=module.run)
            p.epilog = (p.epilog.rstrip("\n") + "\n\n" if p.epilog else "") + EXIT_STATUS_EPILOG
    return parser


def _errno_of(exc: BaseException) -> int | None:
    value = getattr(exc, "errno", None)
    return value if isinstance(value, int) else None


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args_list
    parser = build_parser(args_list)
    try:
        args = parser.parse_args(args_list)
    except UsageError as exc:
        command = exc.prog.removeprefix("devmemtcp").strip()
        message, hint = split_hint(exc.message, f"see `{exc.prog} --help`")
        return report_error(command, message, hint, errno=_errno.EINVAL, exit_status=EXIT_ERROR,
                            as_json=as_json)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_ERROR
    as_json = bool(getattr(args, "json", False))
    command = args.command
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return report_error(command, "interrupted", None, errno=_errno.EINTR, exit_status=EXIT_INTERRUPTED,
                            as_json=as_json)
    except BrokenPipeError:
        # stdout's reader left early (`devmemtcp completion bash | head`): stop quietly, as a
        # process that SIGPIPE ended would (sockets never get here: transfer turns theirs into
        # DevmemError); stdout goes to /dev/null so the interpreter's final flush cannot fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_SIGPIPE
    except DevmemError as exc:
        if args.debug:
            raise
        return report_error(command, exc.message, exc.hint, errno=_errno_of(exc),
                            exit_status=int(getattr(exc, "exit_status", EXIT_ERROR)), as_json=as_json)
    except PermissionError as exc:
        if args.debug:
            raise
        if exc.filename:
            hint = f"{exc.filename} is not yours to change: run as its owner or as root"
        else:
            hint = "run as root or grant CAP_NET_ADMIN (setcap cap_net_admin+ep, or a capable container)"
        return report_error(command, str(exc), hint, errno=_errno_of(exc), as_json=as_json)
    except OSError as exc:
        if args.debug:
            raise
        return report_error(command, str(exc), "run again with --debug to see where it happened",
                            errno=_errno_of(exc), as_json=as_json)


if __name__ == "__main__":
    sys.exit(main())
