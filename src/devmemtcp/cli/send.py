"""``devmemtcp send``: send N bytes of the pattern from a dma-buf (devmem TX).

Compatible in spirit with the kernel's ncdevmem client: the dma-buf is filled
with ncdevmem's pattern (bytes 1..N-1 then 0x0a, repeating; period 256 when
--validate is not given), bound for TX, and sent with offset iovecs and
MSG_ZEROCOPY; a region is reused only after its completion. Any TCP receiver
works on the other end (``devmemtcp recv``, ncdevmem, ``nc``).

Exit status: 0 sent, 2 error (setup, environment, a connection reset, closed
or stalled past --timeout), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from devmemtcp.cli import common
from devmemtcp.cli.recv import report
from devmemtcp.transfer import DEFAULT_CHUNK, DEFAULT_DMABUF_SIZE, send_stream

EXAMPLES = """\
examples:
  devmemtcp send 127.0.0.1 --port 5201 --bytes 1G --validate 7
  devmemtcp send 192.0.2.1 --port 5201 --ifname eth1 --bytes 256M --chunk 4K --json
  devmemtcp send 127.0.0.1 --port 5201 --file weights.bin        (or --file - to send stdin)
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES + "\n" + common.TRANSFER_EXIT_STATUS
    parser.add_argument("addr", metavar="ADDR", help="receiver's IPv4/IPv6 address")
    parser.add_argument("--port", required=True, type=int, metavar="PORT", help="receiver's TCP port")
    parser.add_argument("--ifname", metavar="IF",
                        help="egress devmem NIC (default: the interface of the route to ADDR)")
    parser.add_argument("--bytes", type=common.parse_size, default=1 << 30, metavar="N",
                        help="bytes to send (default 1G = 2**30; units K, M, G, T)")
    parser.add_argument("--validate", type=common.validate_arg, metavar="N",
                        help="send ncdevmem's pattern of period N (bytes 1..N-1 then 0x0a)")
    parser.add_argument("--chunk", type=common.parse_size, default=DEFAULT_CHUNK, metavar="BYTES",
                        help="bytes per iovec (default 64K)")
    parser.add_argument("--size", type=common.parse_size, default=DEFAULT_DMABUF_SIZE, metavar="BYTES",
                        help="dma-buf size (default 16000 pages = 62.5 MiB)")
    parser.add_argument("--file", metavar="FILE",
                        help="send FILE's bytes ('-': stdin) through the TX dma-buf instead of the "
                             "pattern, until its end (--bytes and --validate do not apply)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="give up if the connection is not made within SECONDS (default 10), or "
                             "the receiver takes no data for SECONDS (default: wait forever)")
    common.add_backend_args(parser)


def run(args: argparse.Namespace) -> int:
    source: Any = None
    if args.file is not None:
        if args.validate is not None:
            raise common.fail("--file and --validate do not go together: a file is sent as it is",
                              "drop --validate (the receiver compares the file, e.g. with sha256sum)")
        try:
            source = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
        except OSError as exc:
            raise common.fail(f"cannot read {args.file}: {exc.strerror}",
                              "give a readable file, or - for stdin") from None
    progress = common.ProgressLine("send", total=None if source is not None else args.bytes)

    def on_backend(name: str, reason: str) -> None:
        common.note(f"backend {name}: {reason}")

    try:
        result = send_stream(
            args.addr, args.port, nbytes=args.bytes, ifname=args.ifname, validate=args.validate,
            chunk=args.chunk, memory=args.memory, size=args.size, backend=args.backend,
            connect_timeout=10.0 if args.timeout is None else args.timeout, idle_timeout=args.timeout,
            on_backend=on_backend, on_progress=progress, source=source)
    finally:
        progress.close()
        if source is not None and args.file != "-":
            source.close()
    report(result, args.json, "devmemtcp send")
    return 0
