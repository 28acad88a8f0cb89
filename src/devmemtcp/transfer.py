"""The transfer API: receive one TCP stream into a dma-buf, or send one from it.

:func:`receive_stream` is ``devmemtcp recv`` as a function: it listens,
configures the NIC for its flow (header split, RSS off the devmem queues, an
ntuple rule, bind-rx; all undone on return, on exceptions and on Ctrl-C),
accepts one connection, receives until EOF through a
:class:`~devmemtcp.rx.Receiver`, optionally validates every byte against
ncdevmem's pattern straight from the dma-buf at the fragment offsets, gives
every token back and returns a :class:`TransferResult`.

:func:`send_stream` is ``devmemtcp send``: it fills a dma-buf with the
pattern, binds it for TX, connects and sends N bytes through a
:class:`~devmemtcp.tx.Sender` (iovecs whose base is a dma-buf offset),
reusing a region of the dma-buf only after the kernel reported its sendmsg
complete.

Both ends speak plain TCP on the wire: the receiver accepts any TCP sender
(``socat``, ``nc``, a Python socket) and the sender any TCP receiver; the
devmem part (real or emulated NIC) sits under the socket, not in the protocol.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

import numpy as np

from devmemtcp import abi
from devmemtcp.backend import open_backend
from devmemtcp.errors import (
    DevmemError,
    IncompleteStreamError,
    ValidationError,
    more_queues_hint,
    stream_error,
)
from devmemtcp.host import ifaces
from devmemtcp.validate import FragValidator, frag_validator

if TYPE_CHECKING:
    from devmemtcp.backend.base import Backend, Binding
    from devmemtcp.memory.base import DmaBuf

#: Default dma-buf size for ``recv``/``send``: ncdevmem's 16000 pages (62.5 MiB).
DEFAULT_DMABUF_SIZE = 16000 * abi.PAGE_SIZE
#: Default size of one iovec on the send side (bytes).
DEFAULT_CHUNK = 64 * 1024
#: Pattern period the sender fills with when no ``validate`` is asked for.
DEFAULT_FILL_PERIOD = 256
#: Upper bound of the receiver's automatic SO_RCVLOWAT (bytes), see :func:`auto_rcvlowat`.
MAX_AUTO_RCVLOWAT = 8 << 20


def auto_rcvlowat(dmabuf_size: int) -> int:
    """The SO_RCVLOWAT :func:`receive_stream` uses by default: ``min(8 MiB,
    dmabuf_size / 8)`` in whole pages, 0 (leave the socket's default of 1)
    for a dma-buf under 8 pages.

    Every recvmsg costs the same fixed work whatever it carries (cmsg parse,
    token bookkeeping); waking the receiver only once several MiB are queued
    (tcp_recvmsg returns once ``min(SO_RCVLOWAT, len)`` bytes are there, or at
    EOF or timeout) amortises it, so a default Receiver (6.25 MiB iov) on a
    62.5 MiB dma-buf fills its whole iov each call. An eighth of the dma-buf
    keeps the NIC supplied while the receiver waits: a Receiver holds at most
    half of it, so four times the low-water mark stays free."""
    low = min(MAX_AUTO_RCVLOWAT, dmabuf_size // 8)
    return low - low % abi.PAGE_SIZE


@dataclass
class TransferResult:
    """What one transfer did. ``as_dict()`` is the ``--json`` object.

    Units: ``bytes`` payload bytes (devmem frags + linear + readable),
    ``seconds`` wall time from the first byte (accept / connect) to EOF (or
    last completion), ``gbps`` = bytes * 8 / seconds / 1e9. ``frags``: devmem
    fragments received (RX) or PAGE_SIZE-cut fragments sent (TX).
    ``linear_bytes``: bytes announced by SCM_DEVMEM_LINEAR. ``tokens_released``
    / ``release_syscalls``: frags given back and SO_DEVMEM_DONTNEED calls (RX;
    ``None`` on TX). ``flow_steering_errors``: readable bytes that should have
    been devmem (the flow landed on an ordinary queue). ``validated``:
    ``True``/``False`` when a pattern was checked, ``None`` when not asked;
    when the stream's length is known it is ``True`` only for a complete
    stream (a pattern check alone accepts any prefix). ``complete``: the
    stream had exactly the expected length (``True``/``False``), ``None``
    when no length was given (recv without ``expect_bytes``).
    ``rcvlowat``: the SO_RCVLOWAT the receiver ran with (bytes; None: not set).
    ``non_page_aligned_frags``: RX frags whose dma-buf offset is not a
    multiple of PAGE_SIZE (ncdevmem's count); ``frag_sizes``: the RX
    frag-size histogram ``{"LO-HI": frags}`` (bytes; None on TX).
    """

    role: str
    backend: str
    bytes: int = 0
    seconds: float = 0.0
    frags: int = 0
    linear_bytes: int = 0
    tokens_released: int | None = 0
    release_syscalls: int | None = 0
    flow_steering_errors: int = 0
    validated: bool | None = None
    complete: bool | None = None
    backend_reason: str = ""
    ifname: str = ""
    queues: list[int] = field(default_factory=list)
    binding_id: int | None = None
    peer: str = ""
    completions: int | None = None
    rcvlowat: int | None = None
    error: str | None = None
    non_page_aligned_frags: int | None = None
    frag_sizes: dict[str, int] | None = None

    @property
    def gbps(self) -> float:
        """Throughput in Gbit/s (10**9 bits per second); 0.0 for an empty transfer."""
        return self.bytes * 8 / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The documented JSON object: backend, bytes, seconds, gbps, frags,
        linear_bytes, tokens_released, release_syscalls, flow_steering_errors,
        validated, complete, then the context fields (role, backend_reason, ifname,
        queues, binding_id, peer, completions, rcvlowat, error)."""
        d = asdict(self)
        ordered: dict[str, Any] = {
            "backend": d["backend"],
            "bytes": d["bytes"],
            "seconds": round(d["seconds"], 6),
            "gbps": round(self.gbps, 4),
        }
        for key in ("frags", "linear_bytes", "tokens_released", "release_syscalls",
                    "flow_steering_errors", "validated", "complete", "role", "backend_reason", "ifname",
                    "queues", "binding_id", "peer", "completions", "rcvlowat", "error",
                    "non_page_aligned_frags", "frag_sizes"):
            ordered[key] = d[key]
        return ordered


# ---------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------


def _open_dmabuf(memory: str | DmaBuf, size: int) -> DmaBuf:
    if not isinstance(memory, str):
        return memory
    if size <= 0 or size % abi.PAGE_SIZE:
        raise DevmemError(f"dma-buf size {size} is not a positive multiple of {abi.PAGE_SIZE}",
                          f"use a size like 64M (a multiple of {abi.PAGE_SIZE} bytes)")
    from devmemtcp.memory import open_dmabuf

    return open_dmabuf(memory, size)


def _default_queues(backend: Backend, ifname: str) -> tuple[int, int]:
    """ncdevmem's default: one queue, the last RX queue of the interface."""
    count = backend.nic(ifname).rx_queue_count()
    if count < 2:
        raise DevmemError(
            f"{ifname} has {count} RX queue(s): devmem needs one for the flow and one for other traffic",
            more_queues_hint(ifname, 2, backend.name) + ", or give --queues START:COUNT with --no-nic-config")
    return count - 1, 1


# ---------------------------------------------------------------------------
# Receive
# ---------------------------------------------------------------------------
def _listen_socket(listen: str, port: int) -> socket.socket:
    fam = ifaces.family_of(listen)
    sock = socket.socket(fam, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listen, port))
        sock.listen(1)
    except OSError as exc:
        sock.close()
        raise DevmemError(f"cannot listen on {listen} port {port}: {exc.strerror or exc}",
                          "pick another --port, or an address this namespace owns (ip -br addr)") from None
    return sock


@contextlib.contextmanager
def _nic_for_flow(backend: Backend, ifname: str, queues: tuple[int, int] | None, flow: tuple[Any, ...],
                  dmabuf: DmaBuf, nic_config: bool, lock_timeout: float | None = None,
                  on_queues: Callable[[list[int], dict[int, int | None]], None] | None = None,
                  ) -> Iterator[Binding]:
    """Bind ``dmabuf`` to the queues, after a :class:`~devmemtcp.setup.NicSetup`
    (header split, RSS spread below the queues, ntuple rule for ``flow``,
    ``(dst_ip, dst_port[, src_ip, src_port])``; journaled, undone in reverse
    order on exit, on errors
    and on SIGINT/SIGTERM when run from the main thread) unless
    ``nic_config`` is false (the NIC was prepared by ``devmemtcp setup``).
    ``queues`` None: NicSetup picks a devmem queue no other flow holds
    (``on_queues(queues, held)`` is told which, and which others held)."""
    import threading

    if not nic_config:
        start, count = queues if queues is not None else _default_queues(backend, ifname)
        with backend.bind_rx(ifaces.ifindex(ifname), dmabuf, list(range(start, start + count))) as binding:
            yield binding
        return
    from devmemtcp.setup import NicSetup

    setup = NicSetup(backend, ifname, queues=queues, flow=flow, dmabuf=dmabuf,
                     handle_signals=threading.current_thread() is threading.main_thread(),
                     lock_timeout=lock_timeout)
    with setup:
        assert setup.binding is not None
        if on_queues is not None:
            on_queues(list(setup.binding.queues), dict(setup.held))
        yield setup.binding


def receive_stream(
    listen: str,
    port: int,
    *,
    ifname: str | None = None,
    queues: tuple[int, int] | None = None,
    validate: int | None = None,
    memory: str | DmaBuf = "host",
    size: int = DEFAULT_DMABUF_SIZE,
    backend: str | Backend = "auto",
    nic_config: bool = True,
    accept_timeout: float | None = None,
    rcvlowat: int | None = None,
    expect_bytes: int | None = None,
    idle_timeout: float | None = None,
    on_ready: Callable[[int], None] | None = None,
    on_backend: Callable[[str, str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_queues: Callable[[list[int], dict[int, int | None]], None] | None = None,
    peer: str | None = None,
    on_batch: Callable[[Any], None] | None = None,
) -> TransferResult:
    """Receive one TCP connection on ``listen:port`` into a dma-buf, until EOF.

    Args:
        listen: local IPv4/IPv6 address to listen on. port: TCP port (0 picks
            a free one; ``on_ready`` is told which).
        ifname: the devmem NIC; default the interface owning ``listen``.
        queues: ``(start, count)`` RX queues to bind; default the highest RX
            queue no other flow of this machine holds (the last queue when
            none does; ``on_queues(queues, {queue: pid})`` is told which,
            and which queues other flows held). Flows on one NIC share its
            RSS spread; the last one out undoes the shared settings.
        validate: pattern period N (bytes 1..N-1, 0x0a, repeating), or None.
        memory: "host" (memfd), "udmabuf", "cuda" / "cuda:N" (GPU memory), or a
            DmaBuf the caller owns.
        size: dma-buf size in bytes (multiple of PAGE_SIZE).
        backend: "auto", "kernel", "emulated" or a Backend object.
        nic_config: False skips NicSetup (the NIC was set up by
            ``devmemtcp setup``); the dma-buf is still bound.
        accept_timeout: seconds to wait for the connection (None: forever),
            and at most for another devmemtcp's lock on the NIC's journal or
            emulated state (None: 30 s; a LockTimeout names the holder).
        rcvlowat: SO_RCVLOWAT of the connection in bytes (None:
            :func:`auto_rcvlowat` of the dma-buf size; 0: leave the default).
            A bulk stream receives in fewer, larger batches; bytes short of
            it wait until more arrive or the sender closes (tcp_data_ready
            wakes the reader only then), so keep it 0 for a sender that
            pauses mid-stream and expects to be seen.
        expect_bytes: the stream's exact length in bytes, or None (not
            checked: ``complete`` stays None). A stream that ends short of
            it, or runs past it (the receiver stops at the first byte too
            many), raises IncompleteStreamError.
        idle_timeout: seconds the connection may stay silent mid-stream
            (None: wait forever); past it StreamError. Each recvmsg waits
            at most a quarter of it (SO_RCVTIMEO; a recvmsg short of
            ``rcvlowat`` returns what it has only then, tcp_recvmsg_locked),
            so a silence is given up on after 1 to 1.25 times it.
        on_ready(port): called once listening and set up (the sender may go).
        on_backend(name, reason): called once the backend is picked.
        on_progress(bytes): called with 0 when the first byte is there (the
            moment ``seconds`` starts counting) and after each batch with
            the bytes received so far.
        peer: the sender's address: the ntuple rule becomes a 5-tuple (source
            address, and source port ``port``, as ncdevmem's ``-c``).
        on_batch(batch): called with each FragBatch in stream order, after
            validation and before its tokens are given back (the frags are
            readable in ``memory`` until the callback returns).

    Returns a TransferResult (``validated`` True when a pattern was checked
    to the end, and the stream was complete when ``expect_bytes`` was
    given). Raises ValidationError (offset, expected, received) at the first
    mismatching byte, IncompleteStreamError (its ``result`` the summary) for
    a stream of the wrong length, StreamError for a socket error on the data
    path (reset by the peer, broken pipe, ``idle_timeout``),
    DevmemError/NetlinkError for setup problems, TimeoutError when nobody
    connects in time. Every resource (socket, binding, tokens, NIC settings,
    dma-buf) is released on every path.
    """
    from devmemtcp.rx import Receiver

    ifaces.family_of(listen)  # a clear error for a non-numeric address, before anything is set up
    if rcvlowat is not None and rcvlowat < 0:
        raise DevmemError(f"rcvlowat {rcvlowat} is negative", "give a size in bytes, or 0 to leave it unset")
    if expect_bytes is not None and expect_bytes < 0:
        raise DevmemError(f"cannot expect {expect_bytes} bytes", "give --bytes >= 0")
    ifname = ifname or ifaces.interface_of_address(listen)
    ifaces.ifindex(ifname)
    be, reason = open_backend(backend, ifname, direction="rx", lock_timeout=accept_timeout)
    if on_backend:
        on_backend(be.name, reason)
    result = TransferResult(role="recv", backend=be.name, backend_reason=reason, ifname=ifname)
    with contextlib.ExitStack() as stack:
        if isinstance(backend, str):
            stack.callback(be.close)
        lsock = stack.enter_context(_listen_socket(listen, port))
        port = lsock.getsockname()[1]
        dmabuf = _open_dmabuf(memory, size)
        if isinstance(memory, str):
            stack.callback(dmabuf.close)
        # a wildcard listener's flow is steered by the interface's own address
        dst = listen if not ipaddress.ip_address(listen).is_unspecified or not nic_config \
            else ifaces.address_of_interface(ifname, ifaces.family_of(listen))
        flow: tuple[Any, ...] = (dst, port) if peer is None else (dst, port, peer, port)
        binding = stack.enter_context(_nic_for_flow(be, ifname, queues, flow, dmabuf, nic_config,
                                                    accept_timeout, on_queues))
        result.binding_id = binding.id
        result.queues = sorted(int(q) for q in binding.queues)
        validator = frag_validator(validate, dmabuf) if validate else None
        if validator is not None:
            stack.callback(validator.close)  # before the dma-buf closes: its views must go first
        if on_ready:
            on_ready(port)
        lsock.settimeout(accept_timeout)
        try:
            conn, peer_addr = lsock.accept()
        except TimeoutError:
            raise TimeoutError(f"no connection on {listen} port {port} within {accept_timeout} s") from None
        stack.enter_context(conn)
        conn.settimeout(None)
        lsock.close()
        result.peer = f"{peer_addr[0]}:{peer_addr[1]}"
        t0 = time.perf_counter()
        rx = None
        try:
            # the clock starts at the first byte (SO_RCVLOWAT is still 1, so poll wakes on it), not
            # at accept: a sender that connects and then prepares its data must not dilute the rate
            _wait_readable(conn, idle_timeout)
            t0 = time.perf_counter()
            if on_progress:
                on_progress(0)
            low = auto_rcvlowat(dmabuf.size) if rcvlowat is None else rcvlowat
            if low > 1:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, low)
                result.rcvlowat = conn.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)
            if idle_timeout is not None:
                _set_timeo(conn, socket.SO_RCVTIMEO, idle_timeout / _IDLE_SLICES)
            rx = stack.enter_context(Receiver(be, conn, binding))
            _receive_loop(rx, validator, expect_bytes, idle_timeout, on_progress, on_batch)
        except ValidationError as exc:
            result.validated = False
            result.error = exc.message
            raise
        except IncompleteStreamError as exc:
            result.complete = False
            result.validated = False if validator is not None else None
            result.error = exc.message
            exc.result = result
            raise
        except OSError as exc:
            # reset, broken pipe, SO_RCVTIMEO...: one clear error, never a traceback
            raise stream_error(exc, role="recv", peer=result.peer, timeout=idle_timeout,
                               bytes_done=int(rx.stats.bytes) if rx is not None else 0) from None
        finally:
            result.seconds = time.perf_counter() - t0
            if rx is not None:
                rx.close()
                _fill_rx_stats(result, rx)
        if expect_bytes is not None:
            result.complete = True  # _receive_loop raised otherwise
        if validator is not None:
            result.validated = True
    return result


def _wait_readable(conn: socket.socket, timeout: float | None) -> None:
    """Block until ``conn`` has data or EOF (POLLIN; POLLHUP/POLLERR end the wait
    too); TimeoutError after ``timeout`` seconds of silence (None: wait forever)."""
    import select

    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait_ms = 1000.0 if deadline is None else min(1000.0, (deadline - time.monotonic()) * 1000)
        if poller.poll(max(0.0, wait_ms)):
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(errno.ETIMEDOUT, "no data before the idle timeout")


def _set_timeo(sock: socket.socket, opt: int, seconds: float) -> None:
    """SO_RCVTIMEO / SO_SNDTIMEO (struct timeval) of ``seconds``: the kernel
    then ends a blocked recvmsg/sendmsg with EAGAIN (sock_rcvtimeo, sock_sndtimeo
    in include/net/sock.h); 0 would mean forever, so it is raised to 1 us."""
    usec = max(1, round(seconds * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, opt, struct.pack("qq", usec // 1_000_000, usec % 1_000_000))


#: SO_RCVTIMEO is this fraction of the receiver's idle timeout (see receive_stream)
_IDLE_SLICES = 4


def _receive_loop(rx: Any, validator: FragValidator | None, expect: int | None, idle: float | None,
                  on_progress: Callable[[int], None] | None,
                  on_batch: Callable[[Any], None] | None = None) -> None:
    """Receive to EOF, validating each batch; with ``expect`` (bytes) raise
    IncompleteStreamError at EOF short of it, or at the first batch that
    carries a byte past it (a mismatch before that offset is reported
    first, as the earlier fault). A recvmsg that times out (EAGAIN, no byte
    taken) is retried until ``idle`` seconds passed since the last batch.
    ``on_batch`` sees each accepted batch, in order, before its release."""
    total = 0
    last = time.monotonic()
    while True:
        try:
            batch = rx.recv()
        except BlockingIOError:
            if idle is not None and time.monotonic() - last < idle:
                continue
            raise
        last = time.monotonic()
        if batch is None:
            break
        n = _batch_bytes(batch)
        if validator is not None:
            try:
                validator.check_batch(batch)
            except ValidationError as exc:
                if expect is None or exc.offset < expect:
                    raise
                # a mismatch past the end: the overrun is the fault
        if expect is not None and total + n > expect:
            rx.release(batch)
            raise IncompleteStreamError(expect, total + n, overrun_at=expect)
        if on_batch is not None:
            on_batch(batch)
        total += n
        rx.release(batch)
        if on_progress:
            on_progress(total)
    if expect is not None and total != expect:
        raise IncompleteStreamError(expect, total)


def _batch_bytes(batch: Any) -> int:
    return int(batch.nbytes) + int(batch.linear_bytes) + len(batch.readable)


def _fill_rx_stats(result: TransferResult, rx: Any) -> None:
    st = rx.stats
    result.bytes = int(st.bytes)
    result.frags = int(st.frags)
    result.linear_bytes = int(st.linear_bytes)
    result.tokens_released = int(st.tokens_released)
    result.release_syscalls = int(st.release_syscalls)
    result.flow_steering_errors = int(st.flow_steering_errors)
    result.non_page_aligned_frags = int(st.non_page_aligned_frags)
    from devmemtcp.rx import frag_size_histogram

    result.frag_sizes = frag_size_histogram(rx.frag_size_hist)


# ---------------------------------------------------------------------------
# Send
# ---------------------------------------------------------------------------
def _fill_pattern(dmabuf: DmaBuf, period: int) -> int:
    """Fill the dma-buf with the pattern from stream offset 0; return the
    usable length: the largest multiple of ``period`` that fits, so the
    dma-buf can be sent round and round without breaking the pattern."""
    from devmemtcp.pattern import pattern_bytes

    usable = dmabuf.size - dmabuf.size % period
    if usable <= 0:
        raise DevmemError(f"dma-buf of {dmabuf.size} bytes is smaller than the pattern period {period}",
                          "use a larger --size")
    step = 16 << 20
    step -= step % period
    for start in range(0, usable, step):
        n = min(step, usable - start)
        dmabuf.copy_in(start, pattern_bytes(period, start, n))  # device memory has no host view
    return usable


def _regions(usable: int, region: int) -> list[tuple[int, int]]:
    return [(off, min(region, usable - off)) for off in range(0, usable, region)]


def send_stream(
    addr: str,
    port: int,
    *,
    nbytes: int,
    ifname: str | None = None,
    validate: int | None = None,
    chunk: int = DEFAULT_CHUNK,
    memory: str | DmaBuf = "host",
    size: int = DEFAULT_DMABUF_SIZE,
    backend: str | Backend = "auto",
    connect_timeout: float = 10.0,
    idle_timeout: float | None = None,
    on_backend: Callable[[str, str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    source: BinaryIO | None = None,
) -> TransferResult:
    """Send ``nbytes`` of the pattern from a dma-buf to ``addr:port`` (devmem TX).

    With ``source`` (a binary file), its bytes are sent instead, until its
    end (``nbytes`` and ``validate`` are ignored): each region of the dma-buf
    is read into from the file once its last send completed, then sent.

    The dma-buf (``size`` bytes) is filled with ncdevmem's pattern of period
    ``validate`` (or :data:`DEFAULT_FILL_PERIOD` when None) and sent round and
    round: each sendmsg carries the iovecs of one region (``chunk`` bytes per
    iovec, iov_base a dma-buf offset), and a region is reused only after its
    sendmsg's zerocopy completion arrived. The receiver sees exactly the
    pattern stream (any plain TCP receiver will do).

    ``ifname`` defaults to the interface of the route to ``addr``.
    ``idle_timeout``: seconds a sendmsg may stay blocked on a receiver that
    takes no data (SO_SNDTIMEO; a sendmsg that moved part of its bytes
    returns them only then, so a stopped receiver is given up on after one
    to two times it), and the Sender's completion timeout (None: sendmsg
    waits forever, completions 10 s). Returns a TransferResult
    (``tokens_released``/``release_syscalls`` None: they are RX notions;
    ``completions`` counts completed sendmsg calls; ``complete`` True: every
    byte went out). Raises DevmemError/NetlinkError for setup problems
    (bind-tx refused, no route), StreamError for a socket error on the data
    path (reset by the peer, broken pipe, ``idle_timeout``).
    """
    from devmemtcp.tx import Sender

    if nbytes < 0:
        raise DevmemError(f"cannot send {nbytes} bytes", "give --bytes >= 0")
    if chunk <= 0:
        raise DevmemError(f"--chunk {chunk} must be positive", "use e.g. --chunk 64K")
    period = validate or DEFAULT_FILL_PERIOD
    family = ifaces.family_of(addr)
    ifname = ifname or ifaces.interface_of_route(addr)
    ifindex = ifaces.ifindex(ifname)
    be, reason = open_backend(backend, ifname, direction="tx", lock_timeout=connect_timeout)
    if on_backend:
        on_backend(be.name, reason)
    # validated stays None: the pattern is checked by the receiver
    result = TransferResult(role="send", backend=be.name, backend_reason=reason, ifname=ifname,
                            tokens_released=None, release_syscalls=None)
    with contextlib.ExitStack() as stack:
        if isinstance(backend, str):
            stack.callback(be.close)
        dmabuf = _open_dmabuf(memory, size)
        if isinstance(memory, str):
            stack.callback(dmabuf.close)
        usable = _fill_pattern(dmabuf, period) if source is None else dmabuf.size
        binding = stack.enter_context(be.bind_tx(ifindex, dmabuf))
        result.binding_id = binding.id
        sock = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
        with contextlib.suppress(PermissionError):
            # SO_BINDTODEVICE keeps the flow on the bound device (devmem.rst); needs CAP_NET_RAW.
            sock.setsockopt(socket.SOL_SOCKET, abi.SO_BINDTODEVICE, ifname.encode() + b"\0")
        sock.settimeout(connect_timeout)
        try:
            sock.connect((addr, port))
        except OSError as exc:
            raise DevmemError(f"cannot connect to {addr} port {port}: {exc.strerror or exc}",
                              "start the receiver first (devmemtcp recv --listen ADDR --port PORT)") from None
        sock.settimeout(None)
        try:
            peer = sock.getpeername()
            result.peer = f"{peer[0]}:{peer[1]}"
        except OSError:  # ENOTCONN: the peer reset it already; sendmsg reports that
            result.peer = f"{addr}:{port}"
        if idle_timeout is not None:
            _set_timeo(sock, socket.SO_SNDTIMEO, idle_timeout)
        # a receiver that takes nothing: sendmsg blocks (SO_SNDTIMEO), or no region completes
        tx = stack.enter_context(Sender(be, sock, binding) if idle_timeout is None else
                                 Sender(be, sock, binding, completion_timeout=idle_timeout))
        t0 = time.perf_counter()
        if on_progress:
            on_progress(0)  # the first byte goes now: the progress clock starts with ``seconds``
        try:
            if source is None:
                sent = _send_loop(tx, nbytes, usable, chunk, on_progress)
            else:
                sent = _send_file_loop(tx, dmabuf, source, chunk, on_progress)
            tx.flush()
            # a reset after the last sendmsg completes the sends (the kernel frees the
            # purged skbs) but the bytes never arrived: the socket's error says so
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
        except OSError as exc:
            # reset, broken pipe, SO_SNDTIMEO...: one clear error, never a traceback
            raise stream_error(exc, role="send", peer=result.peer, timeout=idle_timeout,
                               bytes_done=int(tx.stats.bytes)) from None
        finally:
            result.seconds = time.perf_counter() - t0
        result.bytes = sent
        result.complete = sent == nbytes if source is None else True  # a file: sent to its end
        _fill_tx_stats(result, tx)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
    return result


def send_region_size(usable: int, chunk: int = DEFAULT_CHUNK, max_iov: int = 64) -> int:
    """Bytes :func:`send_stream` hands to one sendmsg: ``max_iov`` iovecs of
    ``chunk`` bytes, but small enough that the dma-buf's ``usable`` bytes hold
    at least four such regions (so sending never waits on the newest one)."""
    region = min(chunk * max_iov, max(usable // 4, chunk))
    return max(region - region % chunk, chunk)


def _send_loop(tx: Any, nbytes: int, usable: int, chunk: int,
               on_progress: Callable[[int], None] | None) -> int:
    regions = _regions(usable, send_region_size(usable, chunk, int(getattr(tx, "max_iov", 64))))
    iovs: dict[tuple[int, int], np.ndarray] = {}  # each lap sends the same regions: build their iovecs once
    sent = 0
    i = 0
    while sent < nbytes:
        off, length = regions[i % len(regions)]
        length = min(length, nbytes - sent)
        tx.wait_region_free(off, length)
        iov = iovs.get((off, length))
        if iov is None:
            starts = np.arange(off, off + length, chunk, dtype=np.uint64)
            lens = np.minimum(np.uint64(chunk), np.uint64(off + length) - starts)
            iov = iovs[off, length] = np.stack((starts, lens), axis=1)
        tx.send(iov)
        sent += length
        i += 1
        if on_progress:
            on_progress(sent)
    return sent


def _send_file_loop(tx: Any, dmabuf: DmaBuf, source: BinaryIO, chunk: int,
                    on_progress: Callable[[int], None] | None) -> int:
    """Send ``source`` to its end through the dma-buf's regions, round and round."""
    usable = dmabuf.size
    regions = _regions(usable, send_region_size(usable, chunk, int(getattr(tx, "max_iov", 64))))
    mv = dmabuf.host_view().data
    readinto = cast(Any, source).readinto  # BinaryIO does not declare it; files and pipes have it
    sent = 0
    i = 0
    while True:
        off, length = regions[i % len(regions)]
        tx.wait_region_free(off, length)
        got = 0
        while got < length:  # a pipe gives what it has: fill the region or reach the end
            k = readinto(mv[off + got: off + length])
            if not k:
                break
            got += k
        if got:
            starts = np.arange(off, off + got, chunk, dtype=np.uint64)
            lens = np.minimum(np.uint64(chunk), np.uint64(off + got) - starts)
            tx.send(np.stack((starts, lens), axis=1))
            sent += got
            if on_progress:
                on_progress(sent)
        if got < length:
            return sent
        i += 1


def _fill_tx_stats(result: TransferResult, tx: Any) -> None:
    st = getattr(tx, "stats", None)
    if st is not None:
        result.frags = int(getattr(st, "frags", 0))
        result.completions = int(getattr(st, "completions", 0))


# ---------------------------------------------------------------------------
# Demo: both ends over loopback
# ---------------------------------------------------------------------------
def _unblock(listen: str, port_box: list[int]) -> None:
    """Connect to the demo receiver and close at once, so a receiver still
    waiting in accept() sees an empty stream and unwinds."""
    if not port_box:
        return
    with contextlib.suppress(OSError), socket.create_connection((listen, port_box[0]), timeout=1):
        pass


def run_demo(
    *,
    nbytes: int = 1 << 30,
    validate: int = 7,
    backend: str | Backend = "auto",
    listen: str = "127.0.0.1",
    size: int = DEFAULT_DMABUF_SIZE,
    timeout: float = 30.0,
    memory: str = "host",
    on_backend: Callable[[str, str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Receive and send ``nbytes`` over ``listen`` (loopback) in one process, validated.

    The receiver runs in a thread (:func:`receive_stream`, NIC set up for
    its flow, pattern checked from its dma-buf), the sender in the caller's
    thread (:func:`send_stream`); ``memory`` is both ends' dma-buf kind
    ("host", "udmabuf", "cuda", "cuda:N"). Returns ``{"backend", "bytes", "seconds",
    "gbps", "validated", "complete", "recv": {...}, "send": {...}}`` where
    recv/send are the two TransferResult JSON objects; the receiver is told
    the length, so ``complete`` is checked. Raises the receiver's
    ValidationError on a mismatch, IncompleteStreamError on a stream of
    the wrong length, or the first setup error of either end.
    """
    import threading

    ifname = ifaces.interface_of_address(listen)
    be, reason = open_backend(backend, ifname, direction="rx", lock_timeout=timeout)
    if on_backend:
        on_backend(be.name, reason)
    ready = threading.Event()
    port_box: list[int] = []
    outcome: dict[str, Any] = {}

    def on_ready(port: int) -> None:
        port_box.append(port)
        ready.set()

    def receiver() -> None:
        try:
            outcome["recv"] = receive_stream(listen, 0, ifname=ifname, validate=validate, size=size,
                                             memory=memory, backend=be, accept_timeout=timeout,
                                             on_ready=on_ready, expect_bytes=nbytes, on_progress=on_progress)
        except BaseException as exc:
            outcome["recv_error"] = exc
            ready.set()

    thread = threading.Thread(target=receiver, name="devmemtcp-demo-recv", daemon=True)
    sent: TransferResult | None = None
    try:
        thread.start()
        ready.wait(timeout)
        if port_box and "recv_error" not in outcome:
            sent = send_stream(listen, port_box[0], nbytes=nbytes, ifname=ifname, validate=validate,
                               size=size, memory=memory, backend=be)
    except BaseException:
        # the sender failed or was interrupted: let the receiver see EOF so it
        # unwinds (unbinds, undoes the NIC set-up) before we re-raise; a receiver
        # still setting up is let listen first (else it would wait out its accept timeout)
        end = time.monotonic() + timeout
        if not port_box:
            ready.wait(timeout)
        _unblock(listen, port_box)
        thread.join(max(0.0, end - time.monotonic()))
        # the receiver's mismatch or overrun made the sender fail; a stream cut
        # short is the sender's failure (or Ctrl-C), reported as such
        rerr = outcome.get("recv_error")
        if isinstance(rerr, ValidationError) or (
                isinstance(rerr, IncompleteStreamError) and rerr.overrun_at is not None):
            raise rerr from None
        raise
    finally:
        thread.join(timeout if sent is None else None)
        if isinstance(backend, str) and not thread.is_alive():
            be.close()
    if "recv_error" in outcome:
        raise outcome["recv_error"]
    if sent is None or "recv" not in outcome:
        raise DevmemError("the demo receiver did not get ready in time",
                          "run `devmemtcp recv --listen 127.0.0.1 --port 5201` by hand to see why")
    recv: TransferResult = outcome["recv"]
    recv.backend_reason = sent.backend_reason = reason
    complete = bool(recv.complete) and recv.bytes == sent.bytes == nbytes
    received_ok = bool(recv.validated) and complete
    seconds = max(recv.seconds, sent.seconds)
    return {
        "backend": be.name,
        "backend_reason": reason,
        "bytes": recv.bytes,
        "seconds": round(seconds, 6),
        "gbps": round(recv.bytes * 8 / seconds / 1e9, 4) if seconds > 0 else 0.0,
        "validated": received_ok,
        "complete": complete,
        "recv": recv.as_dict(),
        "send": sent.as_dict(),
    }


class StreamWriter:
    """Write received batches to a binary file in stream order: readable bytes,
    then device frags with the linear pieces where ``linear_at`` puts them (the
    order :meth:`devmemtcp.validate.FragValidator.check_batch` checks in).

    ``host_view`` is the RX dma-buf's host mapping (uint8, shape ``(size,)``);
    consecutive frags are written as one slice, straight from it."""

    def __init__(self, out: IO[bytes], host_view: np.ndarray) -> None:
        self.out = out
        self.view = host_view
        self.bytes = 0

    def _frags(self, offsets: np.ndarray, sizes: np.ndarray) -> None:
        n = int(offsets.shape[0])
        if n == 0:
            return
        offs = offsets.astype(np.int64, copy=False)
        ends = offs + sizes.astype(np.int64, copy=False)
        brk = (offs[1:] != ends[:-1]).nonzero()[0]
        first = 0
        for last in [*brk.tolist(), n - 1]:
            a, b = int(offs[first]), int(ends[last])
            self.out.write(self.view[a:b].data)
            self.bytes += b - a
            first = last + 1

    def _bytes(self, data: np.ndarray) -> None:
        if len(data):
            self.out.write(data.data)
            self.bytes += len(data)

    def __call__(self, batch: Any) -> None:
        self._bytes(batch.readable)
        if not len(batch.linear_sizes):
            self._frags(batch.offset, batch.size)
            return
        done = pos = 0
        for at, piece in zip(batch.linear_at.tolist(), batch.linear_sizes.tolist(), strict=True):
            if at > done:
                self._frags(batch.offset[done:at], batch.size[done:at])
                done = at
            self._bytes(batch.linear[pos:pos + piece])
            pos += piece
        self._frags(batch.offset[done:], batch.size[done:])
