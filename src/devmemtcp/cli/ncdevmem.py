"""``ncdevmem``: the kernel selftest tool's command line, run by devmemtcp.

A script written for ``tools/testing/selftests/drivers/net/hw/ncdevmem`` (the
drv-net ``devmem.py`` / ``devmem_lib.py`` tests included) runs with this
script in its place: the same flags, the same data on stdin and stdout, the
same exit status (0 success, 1 any failure; 130 when interrupted).

Server (devmem RX)::

    ncdevmem -l -f IFNAME -s SERVER_IP [-c CLIENT_IP] -p PORT [-t START_QUEUE -q NUM_QUEUES]
             [-v N] [-n] [-L] [-b RX_PAGE_SIZE]

sets up the NIC (header split, RSS off the devmem queues, an ntuple rule for
the flow: 5-tuple with ``-c``, source port PORT as ncdevmem's; the last RX
queue unless ``-t``/``-q``), binds a dma-buf to the queues, accepts one
connection and receives until EOF. Without ``-v`` every received byte is
written to stdout, in stream order (copied out of the dma-buf, as ncdevmem's
``memcpy_from_device``), so ``ncdevmem -l ... | sha256sum`` checksums the
stream; with ``-v N`` the stream is checked against ncdevmem's pattern (bytes
1..N-1 then a newline) straight in the dma-buf and nothing goes to stdout.
``-n`` leaves the NIC as it is (it was set up beforehand, as nk_devmem.py
does for netkit); ``-L`` fails on any SCM_DEVMEM_LINEAR data (the header-split
sweep). Readable data (the flow missed the devmem queue) is a flow steering
error, as in ncdevmem. ``-b`` (bind-rx's rx-page-size, net_iovs larger than a
page) is checked as ncdevmem checks it, and any size but PAGE_SIZE is refused
as unsupported (exit 1), so devmem_lib's probe for it skips the large-niov
test.

Client (devmem TX)::

    ncdevmem -f IFNAME -s SERVER_IP [-c CLIENT_IP] -p PORT [-z CHUNK]

binds a dma-buf for TX on IFNAME, connects (from CLIENT_IP:PORT with ``-c``,
bound to IFNAME), and sends what it reads on stdin from the dma-buf, in
iovecs of at most CHUNK bytes (``-z``; one iovec per read otherwise), each
region reused only after its zerocopy completion.

Probe: ``ncdevmem -f IFNAME`` (no ``-s``/``-c``) runs the binding checks
ncdevmem's ``run_devmem_tests`` makes (an empty queue list and header split
off must be refused, a bind must succeed, shrinking the channels below a
bound queue must be refused) and exits 0 when devmem RX works on IFNAME;
``devmem_lib.require_devmem`` uses it to skip.

What differs, by design: the backend is picked as ``devmemtcp`` does (the
kernel on a devmem NIC, otherwise the emulated NIC; ``--backend`` forces
one), the dma-buf is host memory unless ``--memory udmabuf``, per-fragment
debug lines are not printed, and bad values (a port over 65535, ``-v 1``)
are refused up front instead of being read by atoi.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import socket
import sys
from collections.abc import Sequence
from typing import IO, Any, NoReturn

import numpy as np

from devmemtcp import abi
from devmemtcp.cli import common
from devmemtcp.errors import DevmemError, ValidationError
from devmemtcp.host import ifaces
from devmemtcp.transfer import StreamWriter

PROG = "ncdevmem"
#: the kernel's MAX_IOV: iovecs of one sendmsg
MAX_IOV = 1024
#: ncdevmem's dma-buf: NUM_PAGES (16000) pages
NUM_PAGES = 16000
#: bytes the client reads from stdin and sends in one sendmsg when -z is not given
READ_SIZE = 1 << 20
#: ncdevmem's probe (run_devmem_tests) as devmemtcp selftest cases
PROBE_CASES = ["bind-empty-queues", "bind-header-split-off", "bind-ok", "channels-below-bound-queue"]

DESCRIPTION = ("devmem TCP netcat with the kernel selftest ncdevmem's command line: receive into, "
               "or send from, a dma-buf bound to NIC queues (emulated NIC where no devmem NIC is).")

EPILOG = """\
examples:
  ncdevmem -l -f eth1 -s 192.0.2.1 -p 5201 -v 7            server: receive and check the pattern
      (peer: yes $(echo -e \\\\x01\\\\x02\\\\x03\\\\x04\\\\x05\\\\x06) | head -c 1G | nc -N 192.0.2.1 5201)
  ncdevmem -l -f eth1 -s 192.0.2.1 -c 192.0.2.2 -p 5201 | sha256sum
                                                          server: the stream on stdout (5-tuple rule)
  echo -e "hello\\nworld" | ncdevmem -f eth1 -s 192.0.2.1 -p 5201 -z 3
                                                          client: stdin from a TX dma-buf, 3-byte iovecs
  ncdevmem -f eth1                                        probe: exit 0 when devmem RX works on eth1
  ncdevmem -l -f lo -s 127.0.0.1 -p 5201 -v 7             the emulated NIC on loopback

differences from the kernel's ncdevmem, by design:
  the backend is chosen as devmemtcp's (the kernel on a devmem NIC, the emulated NIC
  otherwise; --backend forces one); the dma-buf is host memory unless --memory udmabuf;
  no per-fragment debug lines; bad values (-p 70000, -v 1) are refused up front; the
  client reads stdin in blocks, not lines (the same bytes reach the peer); the probe runs
  on the queues selftest picks (-t/-q are only checked for being given together)

exit status:
  0    success (received to EOF, validated with -v; sent all of stdin; probe passed)
  1    any failure: bad arguments, setup refused, validation mismatch, flow steering error,
       linear data with -L, the stream cut short (as the kernel's ncdevmem)
  130  interrupted (SIGINT/SIGTERM); the NIC settings, binding and tokens are given back
"""


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Usage(message)


def _port(text: str) -> int:
    return common.port_arg(text)


def _validation(text: str) -> int:
    """-v N: 0 turns validation off (ncdevmem's atoll gives 0); else the pattern period 2..256."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"-v needs an integer, got {text!r}") from None
    if value == 0:
        return 0
    return common.validate_arg(text)


def _queue(text: str) -> int:
    return common.nonneg_int(text)


def _rx_page_size(text: str) -> int:
    """-b N: ncdevmem's checks (an integer, a power of 2, at least PAGE_SIZE, at most 2**32-1)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid rx_page_size: {text!r}") from None
    if value <= 0 or value > 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"invalid rx_page_size: {text}")
    if value & (value - 1):
        raise argparse.ArgumentTypeError(f"rx_page_size {value} must be a power of 2")
    if value < abi.PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"rx_page_size {value} must be >= PAGE_SIZE ({abi.PAGE_SIZE})")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``ncdevmem`` parser: ncdevmem's getopt string ``Lls:c:p:v:q:t:f:z:nb:``
    plus a few long options of devmemtcp's."""
    p = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-l", dest="server_mode", action="store_true", help="server: receive (devmem RX)")
    p.add_argument("-s", dest="server_ip", type=common.ip_arg, metavar="SERVER_IP",
                   help="the server's address: listen on it (-l) or connect to it")
    p.add_argument("-c", dest="client_ip", type=common.ip_arg, metavar="CLIENT_IP",
                   help="the client's address: a 5-tuple rule from it (server), or the source address "
                        "(client); the source port is PORT in both")
    p.add_argument("-p", dest="port", type=_port, metavar="PORT", help="TCP port")
    p.add_argument("-f", dest="ifname", type=common.ifname_arg, metavar="IFNAME",
                   help="the devmem NIC (required)")
    p.add_argument("-v", dest="validate", type=_validation, default=0, metavar="N",
                   help="server: check ncdevmem's pattern of period N (bytes 1..N-1 then 0x0a) instead "
                        "of writing the stream to stdout; 0: off")
    p.add_argument("-t", dest="start_queue", type=_queue, metavar="START_QUEUE",
                   help="first RX queue to bind (with -q; default: the last RX queue)")
    p.add_argument("-q", dest="num_queues", type=_queue, metavar="NUM_QUEUES",
                   help="number of RX queues to bind (with -t)")
    p.add_argument("-z", dest="max_chunk", type=common.positive_size, metavar="CHUNK",
                   help="client: bytes per iovec (default: one iovec per read from stdin)")
    p.add_argument("-n", dest="skip_config", action="store_true",
                   help="server: do not configure the NIC (header split, RSS, ntuple rule); still binds")
    p.add_argument("-L", dest="fail_on_linear", action="store_true",
                   help="server: fail when any payload arrives as SCM_DEVMEM_LINEAR (header split missed)")
    p.add_argument("-b", dest="rx_page_size", type=_rx_page_size, default=0, metavar="RX_PAGE_SIZE",
                   help="server and probe: bind-rx's rx-page-size (a power of 2 >= PAGE_SIZE); only "
                        "PAGE_SIZE is supported here, larger sizes exit 1 (unsupported)")
    p.add_argument("--backend", choices=("auto", "kernel", "emulated"), default="auto",
                   help="devmemtcp's: kernel, emulated, or auto (default: kernel where doctor finds "
                        "devmem possible on IFNAME, else the emulated NIC)")
    p.add_argument("--memory", choices=("host", "udmabuf"), default="host",
                   help="devmemtcp's: dma-buf provider (default host memfd; ncdevmem uses udmabuf)")
    p.add_argument("--size", type=common.dmabuf_size, default=NUM_PAGES * abi.PAGE_SIZE, metavar="BYTES",
                   help="devmemtcp's: dma-buf size (default ncdevmem's 16000 pages)")
    p.add_argument("--timeout", type=common.timeout_arg, default=None, metavar="SECONDS",
                   help="devmemtcp's: server gives up when no connection arrives in time (default: waits)")
    p.add_argument("--verbose", action="store_true", help="devmemtcp's: the full reason for the backend")
    return p


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _fail(message: str, hint: str | None = None) -> int:
    _say(f"error: {message}")
    if hint:
        print(f"hint: {hint}", file=sys.stderr, flush=True)
    return 1


# ---------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------

class _FragCounter:
    """ncdevmem's closing counts, and the -L / flow steering checks, per batch."""

    def __init__(self, fail_on_linear: bool, sink: StreamWriter | None) -> None:
        self.fail_on_linear = fail_on_linear
        self.sink = sink
        self.page_aligned = 0
        self.non_page_aligned = 0

    def __call__(self, batch: Any) -> None:
        if len(batch.readable):
            raise DevmemError(f"flow steering error: {len(batch.readable)} bytes arrived as ordinary "
                              "readable data, not in the dma-buf",
                              "check the ntuple rule (ethtool -n IFNAME) and that RSS leaves the devmem "
                              "queues out")
        if self.fail_on_linear and batch.linear_bytes:
            raise DevmemError(f"received {batch.linear_bytes} bytes as SCM_DEVMEM_LINEAR (-L)",
                              "header split missed these packets: check tcp-data-split and hds-thresh 0")
        aligned = int(np.count_nonzero(batch.size % abi.PAGE_SIZE == 0))
        self.page_aligned += aligned
        self.non_page_aligned += len(batch) - aligned
        if self.sink is not None:
            self.sink(batch)


def run_server(args: argparse.Namespace, out: IO[bytes]) -> int:
    """The ``-l`` mode: returns the exit status."""
    from devmemtcp.memory import open_dmabuf
    from devmemtcp.transfer import receive_stream

    queues = None if args.start_queue is None else (args.start_queue, args.num_queues)
    if queues is not None and queues[1] < 1:
        return _fail(f"-q {args.num_queues}: bind at least one queue", "use e.g. -t 1 -q 1")
    with open_dmabuf(args.memory, args.size) as dmabuf:
        sink = StreamWriter(out, dmabuf.host_view()) if not args.validate else None
        counter = _FragCounter(args.fail_on_linear, sink)

        def on_backend(name: str, reason: str) -> None:
            _say(common.backend_line(name, reason, ifname=args.ifname, verbose=args.verbose))

        def on_ready(port: int) -> None:
            _say(f"listening on {args.server_ip} port {port}")

        result = receive_stream(
            args.server_ip, args.port, ifname=args.ifname, queues=queues,
            validate=args.validate or None, memory=dmabuf, size=args.size, backend=args.backend,
            nic_config=not args.skip_config, accept_timeout=args.timeout, rcvlowat=None,
            peer=args.client_ip, on_ready=on_ready, on_backend=on_backend, on_batch=counter)
        out.flush()
    if result.flow_steering_errors:
        return _fail(f"flow steering error: {result.flow_steering_errors} bytes missed the devmem queue",
                     "check the ntuple rule (ethtool -n IFNAME) and that RSS leaves the devmem queues out")
    _say(f"received {result.bytes} bytes from {result.peer} in {result.seconds:.3f} s "
         f"({result.gbps:.2f} Gbit/s){', validated' if result.validated else ''}")
    _say(f"page_aligned_frags={counter.page_aligned}, non_page_aligned_frags={counter.non_page_aligned}")
    _say("ok")
    return 0


# ---------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------
def _read_some(fd: int, buf: memoryview) -> int:
    """Read into ``buf`` what stdin has now: at least one byte (blocking), then
    more while more is ready at once, up to ``len(buf)``; 0 at EOF."""
    got = os.readv(fd, [buf])
    while got and got < len(buf) and select.select([fd], [], [], 0)[0]:
        n = os.readv(fd, [buf[got:]])
        if n == 0:
            break
        got += n
    return got


def _iovecs(offset: int, length: int, chunk: int | None) -> np.ndarray:
    if not chunk:
        return np.array([[offset, length]], dtype=np.uint64)
    starts = np.arange(offset, offset + length, chunk, dtype=np.uint64)
    lens = np.minimum(np.uint64(chunk), np.uint64(offset + length) - starts)
    return np.stack((starts, lens), axis=1)


def run_client(args: argparse.Namespace, infd: int) -> int:
    """The client mode: send stdin (``infd``) from a TX dma-buf; returns the exit status."""
    from devmemtcp.backend import open_backend
    from devmemtcp.memory import open_dmabuf
    from devmemtcp.tx import Sender

    if args.port == 0:
        return _fail("-p 0: the client needs the server's port (1-65535)",
                     "give the port the server listens on")
    family = socket.AF_INET6 if ":" in args.server_ip else socket.AF_INET
    ifindex = ifaces.ifindex(args.ifname)
    be, reason = open_backend(args.backend, args.ifname, direction="tx")
    _say(common.backend_line(be.name, reason, ifname=args.ifname, verbose=args.verbose))
    region = READ_SIZE if not args.max_chunk else min(READ_SIZE, args.max_chunk * MAX_IOV)
    region = min(region, args.size // 4) or args.size
    sent = 0
    with contextlib.ExitStack() as stack:
        close = getattr(be, "close", None)
        if callable(close):
            stack.callback(close)
        dmabuf = stack.enter_context(open_dmabuf(args.memory, args.size))
        view = dmabuf.host_view()
        binding = stack.enter_context(be.bind_tx(ifindex, dmabuf))
        sock = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with contextlib.suppress(PermissionError):  # SO_BINDTODEVICE needs CAP_NET_RAW
            sock.setsockopt(socket.SOL_SOCKET, abi.SO_BINDTODEVICE, args.ifname.encode() + b"\0")
        if args.client_ip:
            try:
                sock.bind((args.client_ip, args.port))
            except OSError as exc:
                return _fail(f"cannot bind to {args.client_ip} port {args.port}: {exc.strerror or exc}",
                             "give -c an address of this host, or free the port")
        try:
            sock.connect((args.server_ip, args.port))
        except OSError as exc:
            return _fail(f"cannot connect to {args.server_ip} port {args.port}: {exc.strerror or exc}",
                         "start the server first (ncdevmem -l ..., or socat -U - TCP-LISTEN:PORT)")
        _say(f"connected to {args.server_ip} port {args.port} (via {args.ifname})")
        tx = stack.enter_context(Sender(be, sock, binding, max_iov=MAX_IOV))
        usable = args.size - args.size % region
        off = 0
        while True:
            tx.wait_region_free(off, region)
            n = _read_some(infd, view[off:off + region].data)
            if n == 0:
                break
            tx.send(_iovecs(off, n, args.max_chunk))
            sent += n
            off = (off + region) % usable
        tx.flush()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
    _say(f"tx ok ({sent} bytes)")
    return 0


# ---------------------------------------------------------------------------
# Probe
# ---------------------------------------------------------------------------
def run_probe(args: argparse.Namespace) -> int:
    """``ncdevmem -f IFNAME``: ncdevmem's binding checks; 0 when they all pass."""
    from devmemtcp.selftest import run_selftest

    ifaces.ifindex(args.ifname)
    report = run_selftest(args.ifname, only=PROBE_CASES, backend=args.backend, memory=args.memory)
    _say(common.backend_line(report.backend, report.backend_reason, ifname=args.ifname,
                             verbose=args.verbose))
    bad = [c for c in report.cases if c.status != "pass"]
    for c in report.cases:
        _say(f"{c.name}: {c.status}{': ' + c.reason if c.reason else ''}")
    if bad:
        return _fail(f"devmem is not usable on {args.ifname}: {bad[0].name} {bad[0].status}",
                     f"`devmemtcp doctor {args.ifname}` says what to fix")
    return 0


# ---------------------------------------------------------------------------
def _check(args: argparse.Namespace) -> str | None:
    """ncdevmem's own argument checks, in its order; the message or None."""
    if not args.ifname:
        return "Missing -f argument"
    if args.server_ip is None and args.client_ip is None:
        if (args.start_queue is None) != (args.num_queues is None):
            return "Both -t and -q are required"
        return None
    if args.start_queue is None and args.num_queues is not None:
        return "Missing -t argument"
    if args.num_queues is None and args.start_queue is not None:
        return "Missing -q argument"
    if args.server_ip is None:
        return "Missing -s argument"
    if args.port is None:
        return "Missing -p argument"
    return None


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """The ``ncdevmem`` console script: returns the exit status (0, 1 or 130)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except _Usage as exc:
        return _fail(*common.split_hint(str(exc), "see `ncdevmem --help`"))
    problem = _check(args)
    if problem:
        return _fail(problem, "see `ncdevmem --help`")
    if args.rx_page_size not in (0, abi.PAGE_SIZE):
        # bind-rx's rx-page-size attribute (net_iovs larger than a page) is not modelled by
        # devmemtcp's backends: say so, as a NIC without it would (devmem_lib then skips)
        return _fail(f"-b {args.rx_page_size}: rx-page-size larger than PAGE_SIZE ({abi.PAGE_SIZE}) "
                     "is not supported by devmemtcp",
                     "leave out -b (PAGE_SIZE net_iovs), as on kernels before bind-rx had rx-page-size")
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.server_ip is None and args.client_ip is None:
            return run_probe(args)
        if args.server_mode:
            return run_server(args, sys.stdout.buffer)
        return run_client(args, sys.stdin.fileno())
    except KeyboardInterrupt:
        _say("interrupted")
        return common.EXIT_INTERRUPTED
    except ValidationError as exc:
        return _fail(exc.message, exc.hint)
    except DevmemError as exc:
        return _fail(exc.message, exc.hint)
    except TimeoutError as exc:
        return _fail(str(exc), "start the client, or raise --timeout")
    except BrokenPipeError:
        return _fail("stdout was closed before the stream ended", "read the whole stream (e.g. | sha256sum)")
    except OSError as exc:
        return _fail(str(exc), "see `ncdevmem --help`; devmemtcp doctor IFNAME checks the NIC")


if __name__ == "__main__":
    sys.exit(main())
