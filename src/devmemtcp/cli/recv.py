"""``devmemtcp recv``: receive one TCP connection into a dma-buf (devmem RX).

Compatible in spirit with the kernel's ncdevmem server (``ncdevmem -l -s ADDR
-p PORT -f IF -v N``; the short options ``-l ADDR -p PORT -f IF -v N -n``
work here too, and the ``ncdevmem`` script takes ncdevmem's exact command
line): set up the NIC for the flow, bind the dma-buf, accept one connection,
receive until EOF, optionally validate ncdevmem's pattern, give every token
back, undo the setup, print a summary.

Exit status: 0 received (validated and complete where checked), 1 the data
did not validate or the stream was incomplete (``--bytes N``: exactly N bytes
expected), 2 error (setup, environment, a connection reset or stalled), 130
interrupted (the NIC is restored in every case).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import sys
from typing import Any

from devmemtcp.cli import common
from devmemtcp.errors import IncompleteStreamError, ValidationError
from devmemtcp.host import ifaces
from devmemtcp.transfer import DEFAULT_DMABUF_SIZE, TransferResult, receive_stream

EXAMPLES = """\
examples:
  devmemtcp recv --listen 127.0.0.1 --port 5201 --validate 7 --bytes 1G
      (peer: yes $(echo -e \\\\x01\\\\x02\\\\x03\\\\x04\\\\x05\\\\x06) | head -c 1G | nc -N 127.0.0.1 5201)
  devmemtcp recv -l 127.0.0.1 -p 5201 -v 7          the same with ncdevmem's short options
  devmemtcp recv --listen 192.0.2.1 --port 5201 --ifname eth1 --queues 3:1 --json
  devmemtcp recv --listen 127.0.0.1 --port 5201 --output copy.bin   (peer: devmemtcp send ... --file F)
  devmemtcp setup eth1 ... && devmemtcp recv --listen 192.0.2.1 --port 5201 --no-nic-config
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("-l", "--listen", required=True, type=common.ip_arg, metavar="ADDR",
                        help="local IPv4/IPv6 address to listen on (e.g. 127.0.0.1)")
    parser.add_argument("-p", "--port", required=True, type=common.port_arg, metavar="PORT",
                        help="TCP port (0: any free port; the one picked is printed)")
    parser.add_argument("-f", "--ifname", type=common.ifname_arg, metavar="IF",
                        help="devmem NIC (default: the interface that owns --listen; lo for 127.0.0.1)")
    parser.add_argument("--queues", type=common.parse_queues, metavar="START:COUNT",
                        help="RX queues to bind (default: the highest RX queue no other flow of this "
                             "machine holds: the last one, like ncdevmem, when none does)")
    parser.add_argument("-v", "--validate", type=common.validate_arg, metavar="N",
                        help="check ncdevmem's pattern: bytes 1..N-1 then 0x0a, repeating")
    parser.add_argument("--bytes", type=common.parse_size, default=None, metavar="N",
                        help="the stream must be exactly N bytes (units K, M, G, T; 0: an empty stream): "
                             "fewer or more is exit 1; without it the length is not checked and the "
                             "stream is not reported complete")
    parser.add_argument("--size", type=common.dmabuf_size, default=DEFAULT_DMABUF_SIZE, metavar="BYTES",
                        help="dma-buf size (default 16000 pages = 62.5 MiB, as ncdevmem)")
    parser.add_argument("-n", "--no-nic-config", action="store_true",
                        help="do not change the NIC (use a set-up made by `devmemtcp setup`); still binds")
    parser.add_argument("--timeout", type=common.timeout_arg, default=None, metavar="SECONDS",
                        help="give up if no connection arrives within SECONDS, or the connection "
                             "goes silent for SECONDS (default: wait forever); also the most it waits "
                             "for another devmemtcp's lock on the NIC (default 30)")
    parser.add_argument("--rcvlowat", type=common.parse_size, default=None, metavar="BYTES",
                        help="SO_RCVLOWAT: wake the receiver once BYTES are queued, so each recvmsg "
                             "carries more frags (default min(8M, --size/8); 0 leaves the socket's 1)")
    parser.add_argument("--output", metavar="FILE",
                        help="write the received stream, in order, to FILE ('-': stdout; the summary "
                             "then goes to stderr)")
    common.add_backend_args(parser)





def run(args: argparse.Namespace) -> int:
    progress = common.TransferProgress("recv", total=args.bytes)
    on_backend = common.backend_noter(args, args.ifname)

    def on_queues(queues: list[int], held: dict[int, int | None]) -> None:
        if args.queues is None:
            others = ", ".join(f"{q} (pid {p})" if p else str(q) for q, p in sorted(held.items()))
            ifname = args.ifname or ifaces.interface_of_address(args.listen)
            common.note(f"devmem queue {', '.join(map(str, queues))} on {ifname}"
                        + (f"; held by other flows: {others}" if others else ""))

    def on_ready(port: int) -> None:
        common.note(f"listening on {args.listen} port {port}")

    out: Any = None
    dmabuf: Any = None
    sink: Any = None
    to_stdout = args.output == "-"
    # with --output - the stream owns stdout: every summary and error object goes to stderr
    quiet_stdout = _stderr_if(to_stdout)
    try:
        if args.output is not None:
            from devmemtcp.memory import open_dmabuf
            from devmemtcp.transfer import StreamWriter

            try:
                out = sys.stdout.buffer if to_stdout else open(args.output, "wb")  # noqa: SIM115
            except OSError as exc:
                raise common.fail(f"cannot write {args.output}: {exc.strerror}",
                                  "give a writable path, or - for stdout") from None
            # the stream is written in order straight from the RX dma-buf's frags
            dmabuf = open_dmabuf(args.memory, args.size)
            sink = StreamWriter(out, dmabuf.host_view())
        with quiet_stdout:
            result = receive_stream(
                args.listen, args.port, ifname=args.ifname, queues=args.queues, validate=args.validate,
                memory=dmabuf if dmabuf is not None else args.memory, size=args.size, backend=args.backend,
                nic_config=not args.no_nic_config, accept_timeout=args.timeout, rcvlowat=args.rcvlowat,
                expect_bytes=args.bytes, idle_timeout=args.timeout,
                on_ready=on_ready, on_backend=on_backend, on_progress=progress, on_batch=sink,
                on_queues=on_queues)
    except ValidationError as exc:
        progress.close()
        with _stderr_if(to_stdout):
            return common.report_validation_failure("recv", exc, as_json=args.json)
    except IncompleteStreamError as exc:
        progress.close()
        with _stderr_if(to_stdout):
            common.report_incomplete("recv", exc)
            if isinstance(exc.result, TransferResult):
                if args.json:  # the summary (complete: false) with the error fields every command gives
                    common.print_json({**exc.result.as_dict(), "hint": exc.hint, "errno": None,
                                       "exit_status": common.EXIT_FAILED})
                else:
                    common.report_transfer(exc.result, False, "devmemtcp recv", verbose=args.verbose)
        return common.EXIT_FAILED
    except TimeoutError as exc:
        progress.close()
        with _stderr_if(to_stdout):
            return common.report_error("recv", str(exc), "start the sender, or raise --timeout",
                                       errno=errno.ETIMEDOUT, as_json=args.json)
    finally:
        progress.close()
        if out is not None:
            out.flush()
            if not to_stdout:
                out.close()
        if dmabuf is not None:
            dmabuf.close()
    with _stderr_if(to_stdout):
        common.report_transfer(result, args.json, "devmemtcp recv", verbose=args.verbose)
    return 0


def _stderr_if(cond: bool) -> Any:
    """stdout redirected to stderr while ``cond`` (the stream owns stdout)."""
    return contextlib.redirect_stdout(sys.stderr) if cond else contextlib.nullcontext()
