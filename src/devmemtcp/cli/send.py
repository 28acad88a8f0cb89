"""``devmemtcp send``: send N bytes of the pattern from a dma-buf (devmem TX).

Compatible in spirit with the kernel's ncdevmem client: the dma-buf is filled
with ncdevmem's pattern (bytes 1..N-1 then 0x0a, repeating; period 256 when
--validate is not given), bound for TX, and sent with offset iovecs and
MSG_ZEROCOPY; a region is reused only after its completion. Any TCP receiver
works on the other end (``devmemtcp recv``, ncdevmem, ``nc``).

Short options as ncdevmem's client: ``-s ADDR`` (instead of the positional
ADDR), ``-p PORT``, ``-f IF``, ``-v N``, ``-z CHUNK``.

Exit status: 0 sent, 2 error (setup, environment, a connection reset, closed
or stalled past --timeout), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from devmemtcp.cli import common
from devmemtcp.errors import DevmemError
from devmemtcp.transfer import DEFAULT_CHUNK, DEFAULT_DMABUF_SIZE, send_stream

EXAMPLES = """\
examples:
  devmemtcp send 127.0.0.1 --port 5201 --bytes 1G --validate 7
  devmemtcp send 192.0.2.1 --port 5201 --ifname eth1 --bytes 256M --chunk 4K --json
  devmemtcp send -s 192.0.2.1 -p 5201 -f eth1 -v 7 -z 4K   ncdevmem's short options
  devmemtcp send 127.0.0.1 -p 5201 --bytes 16M           (receiver: nc -l 127.0.0.1 5201 > out)
  devmemtcp send 127.0.0.1 -p 5201 --file weights.bin       (or --file - to send stdin)
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("addr", nargs="?", type=common.ip_arg, metavar="ADDR",
                        help="receiver's IPv4/IPv6 address (or -s ADDR)")
    parser.add_argument("-s", "--server", dest="server", type=common.ip_arg, metavar="ADDR",
                        help="receiver's address, as ncdevmem's -s (instead of ADDR)")
    parser.add_argument("-p", "--port", required=True, type=common.peer_port_arg, metavar="PORT",
                        help="receiver's TCP port (1-65535)")
    parser.add_argument("-f", "--ifname", type=common.ifname_arg, metavar="IF",
                        help="egress devmem NIC (default: the interface of the route to ADDR)")
    parser.add_argument("--bytes", type=common.positive_size, default=1 << 30, metavar="N",
                        help="bytes to send (default 1G = 2**30; units K, M, G, T)")
    parser.add_argument("-v", "--validate", type=common.validate_arg, metavar="N",
                        help="send ncdevmem's pattern of period N (bytes 1..N-1 then 0x0a)")
    parser.add_argument("-z", "--chunk", type=common.positive_size, default=DEFAULT_CHUNK, metavar="BYTES",
                        help="bytes per iovec (default 64K)")
    parser.add_argument("--size", type=common.dmabuf_size, default=DEFAULT_DMABUF_SIZE, metavar="BYTES",
                        help="dma-buf size (default 16000 pages = 62.5 MiB)")
    parser.add_argument("--file", metavar="FILE",
                        help="send FILE's bytes ('-': stdin) through the TX dma-buf instead of the "
                             "pattern, until its end (--bytes and --validate do not apply)")
    parser.add_argument("--timeout", type=common.timeout_arg, default=None, metavar="SECONDS",
                        help="give up if the connection is not made within SECONDS (default 10), or "
                             "the receiver takes no data for SECONDS (default: wait forever)")
    common.add_backend_args(parser)


def run(args: argparse.Namespace) -> int:
    if args.addr and args.server and args.addr != args.server:
        raise DevmemError(f"two receivers given: ADDR {args.addr} and -s {args.server}",
                          "give the receiver's address once, as ADDR or with -s")
    addr = args.addr or args.server
    if not addr:
        raise DevmemError("no receiver address",
                          "give it as ADDR or with -s ADDR, e.g. devmemtcp send 127.0.0.1 -p 5201")
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
    progress = common.TransferProgress("send", total=None if source is not None else args.bytes)
    try:
        result = send_stream(
            addr, args.port, nbytes=args.bytes, ifname=args.ifname, validate=args.validate,
            chunk=args.chunk, memory=args.memory, size=args.size, backend=args.backend,
            connect_timeout=10.0 if args.timeout is None else args.timeout, idle_timeout=args.timeout,
            on_backend=common.backend_noter(args, args.ifname), on_progress=progress, source=source)
    finally:
        progress.close()
        if source is not None and args.file != "-":
            source.close()
    common.report_transfer(result, args.json, "devmemtcp send", verbose=args.verbose)
    return 0
