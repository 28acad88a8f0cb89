"""Listener, Channel, listen, connect: arrays and tensors over devmem flows.

A Channel is one control connection (ordinary TCP, never steered) plus, per
direction, N data flows (devmem TCP). Each end receives on the data flows it
set up: one ntuple rule per flow steering it to its own devmem RX queue, all
those queues bound to one RX dma-buf (:class:`~devmemtcp.setup.NicSetup`
journals every change and undoes it on close, on errors and on signals). It
sends on the peer's data flows from a TX dma-buf bound with bind-tx
(:class:`~devmemtcp.tx.Sender`, MSG_ZEROCOPY from dma-buf offsets).

Handshake (:mod:`devmemtcp.channel.header` frames on the control connection):
the connector opens the control connection, binds its receiving data
sockets and sets their rules up, and sends HELLO (its flows' ports, credit
window, bytes per page); the listener answers HELLO (its data ports, a
return port, the channel id); the connector connects its sending flows to
the listener's data ports (and names their source ports in FLOWS) and its
receiving flows to the return port (each saying its index on the wire, which
the listener reads: that flow's bytes towards the listener are plain TCP).

Then each message is a MSG header on the control connection and its payload
in chunks on the data flows (:class:`~devmemtcp.channel.header.MessageHeader`
gives the striping), under the receiver's credits
(:mod:`devmemtcp.channel.credits`). The receiver reads every chunk of a
larger message with recvmsg calls that stop at the chunk's end (so its frags
hold no other message's bytes: it can be held zero-copy), gathers the frags
into the destination (:mod:`devmemtcp.channel.gather`) and gives their
tokens back in batches; small messages are read ahead, several per recvmsg
(a frag may then straddle two of them; its token goes back once every byte
of its batch was taken).

Limits, each with its reason: a Listener's RX dma-buf and queues serve one
accepted channel at a time (its rules steer the data ports, whoever
connects); every message costs each end a fixed amount of Python (a header,
a sendmsg, a recvmsg and its token bookkeeping): small messages are corked
on the sending end (many headers in one control write, many payloads in one
sendmsg, see :meth:`Channel.send`) and read ahead on the receiving end (one
recvmsg takes the bytes of the small messages whose headers are there, each
message then takes its byte range, see ``Channel._receive``), which brings
4 KiB messages near a plain socket's rate (``devmemtcp bench tensor``); a thread
waiting in ``send`` for credit reads control frames but no payload, so bulk
traffic in both directions at once needs a sending and a receiving thread
per end. Receiving data flows carry SO_RCVLOWAT (one recvmsg per chunk where
the bytes are there) bounded by the receive buffer, and SO_RCVTIMEO so that
a mark the TCP window cannot reach never hangs a receive.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import itertools
import os
import select
import socket
import struct
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from devmemtcp import __version__, abi
from devmemtcp.channel.credits import (
    CreditLedger,
    CreditWindow,
    chunk_pages,
    max_unit,
    message_pages,
    plan_window,
)
from devmemtcp.channel.device import DeviceSide, device_kind, is_device_array
from devmemtcp.channel.gather import FragCursor, gather_batch
from devmemtcp.channel.header import (
    DL_BFLOAT,
    PROTOCOL_VERSION,
    DType,
    FrameDecoder,
    FrameType,
    MessageHeader,
    decode_credit,
    decode_header,
    decode_json,
    destination_size_error,
    encode_credit,
    encode_frame,
    encode_json,
    encode_msg,
    msg_tail_of,
    pack_msg_frame,
)
from devmemtcp.codec import FragBatch
from devmemtcp.errors import ChannelClosed, ChannelError, DevmemError, NetlinkError
from devmemtcp.host import ifaces

if TYPE_CHECKING:
    from devmemtcp.backend.base import Backend
    from devmemtcp.memory.base import DmaBuf
    from devmemtcp.rx import Receiver
    from devmemtcp.tx import Sender

__all__ = ["DEFAULT_DMABUF_SIZE", "Channel", "Listener", "Message", "connect", "listen"]

#: Default RX dma-buf size (bytes) of each end.
DEFAULT_DMABUF_SIZE = 64 << 20
#: a chunk's recvmsg waits for at most this many bytes at once (SO_RCVLOWAT)
RCVLOWAT_CAP = 1 << 20
#: SO_RCVTIMEO of the receiving data flows (seconds), see Channel._low_water
RCVTIMEO_S = 0.02
#: staged sends go back to the staging ring's start once this far in and the start is free
STAGE_HOT_BYTES = 8 << 20
#: a message of at least this many bytes is gathered into its host destination with
#: non-temporal stores (gather.c): a destination this large is not in a core's caches
STREAM_GATHER_BYTES = 4 << 20
#: a receiver waiting for the next header after a large message holds owed credit back
#: this long (seconds) before it writes a CREDIT frame: in a stream the header comes first
CREDIT_LINGER_S = 0.0005
HANDSHAKE_TIMEOUT = 10.0
#: the send cork (see Channel.send): a message of at most CORK_SMALL bytes (one chunk) waits in
#: it until CORK_MSGS messages or CORK_BYTES bytes are there, the next recv, flush, close or
#: larger send, or at most CORK_DELAY_S seconds (plus scheduling); after CORK_DELAY_S without
#: a send, a message goes out at once
CORK_SMALL = 64 << 10
CORK_MSGS = 64
CORK_BYTES = 256 << 10
CORK_DELAY_S = 0.0005
#: the timer thread stops ticking after this many ticks without a corked message
CORK_IDLE_TICKS = 100
#: read-ahead: a receive of a message of at most READAHEAD_SMALL bytes (one chunk) asks its
#: recvmsg for the bytes of the small messages whose headers follow on that flow too, up to
#: READAHEAD_BYTES (or a sixteenth of the RX dma-buf per flow)
READAHEAD_SMALL = 64 << 10
READAHEAD_BYTES = 1 << 20
READAHEAD_HEADERS = 256
_PREAMBLE = struct.Struct("<4s16sH")  # b"DMTF", channel id, flow index
_PREAMBLE_MAGIC = b"DMTF"
_TCP_MAXSEG = getattr(socket, "TCP_MAXSEG", 2)

_shared_lock = threading.Lock()
_shared_emulated: Any = None


# ---------------------------------------------------------------------------
# Backends and NIC set-up
# ---------------------------------------------------------------------------
def _open_backend(choice: str | Backend, ifname: str) -> tuple[Backend, str]:
    """The backend for ``choice``. The emulated NIC places a flow's data in the
    dma-buf of the backend object that bound its queue, so every channel of a
    process shares one EmulatedBackend (both ends of a loopback test included)."""
    global _shared_emulated
    from devmemtcp.backend import open_backend

    if not isinstance(choice, str):
        return choice, "given by the caller"
    if choice == "emulated":
        be, reason = None, "asked for (backend='emulated')"
    else:
        be, reason = open_backend(choice, ifname, direction="rx")
        if be.name != "emulated":
            return be, reason
    with _shared_lock:
        if _shared_emulated is None:
            from devmemtcp.backend.emulated import EmulatedBackend

            _shared_emulated = be if be is not None else EmulatedBackend()
        return _shared_emulated, reason


def _is_loopback(ifname: str, addr: str) -> bool:
    return ifname == "lo" or ipaddress.ip_address(addr).is_loopback


def _bytes_per_page(be: Backend, ifname: str, family: int) -> int:
    """Payload bytes per net_iov the receiver counts on: PAGE_SIZE on the
    emulated NIC (it fills whole pages), else one packet's payload (MTU less
    IP and TCP headers with timestamps), as a NIC may put each packet in its
    own page."""
    if be.name == "emulated":
        return abi.PAGE_SIZE
    try:
        with open(f"/sys/class/net/{ifname}/mtu") as f:
            mtu = int(f.read())
    except (OSError, ValueError):
        mtu = 1500
    ip = 40 if family == socket.AF_INET6 else 20
    return max(512, min(abi.PAGE_SIZE, mtu - ip - 32))


@dataclass
class _RxSide:
    """What one end set up to receive: the RX dma-buf, its binding, the queues,
    the rules' destination ports, and the credit numbers."""

    backend: Any
    ifname: str
    dmabuf: Any
    binding: Any
    queues: list[int]
    ports: list[int]
    window: int
    bytes_per_page: int
    release_threshold: int
    rules: list[Any] = field(default_factory=list)
    readahead: int = 0  # bytes per flow one recvmsg may take beyond the message it reads for


def _setup_rx(
    stack: contextlib.ExitStack,
    be: Backend,
    ifname: str,
    local_ip: str,
    ports: list[int],
    queues: Sequence[int] | None,
    dmabuf_size: int,
    memory: str | DmaBuf,
) -> _RxSide:
    """RX dma-buf, header split and RSS (shared with any other flow on the NIC),
    the binding, and one ntuple rule per data flow (``local_ip:ports[i]`` ->
    queue i), all undone when ``stack`` unwinds."""
    from devmemtcp.setup import NicSetup

    streams = len(ports)
    handle = threading.current_thread() is threading.main_thread()
    dmabuf = _open_dmabuf(memory, dmabuf_size)
    if isinstance(memory, str):
        stack.callback(dmabuf.close)
    nic = be.nic(ifname)
    if queues is not None:
        qlist = [int(q) for q in queues]
        if len(qlist) != streams or len(set(qlist)) != streams:
            raise ChannelError(
                f"queues={list(queues)} must name {streams} distinct RX queue(s), one per data flow",
                f"give {streams} queue ids, or streams={len(qlist)}",
            )
        start, channels = min(qlist), None
        if start < 1:
            raise ChannelError(
                "devmem queue 0 cannot be used: RSS needs an ordinary queue for other traffic",
                "name queues above 0",
            )
        span = nic.rx_queue_count() - start
    else:
        n = nic.rx_queue_count()
        # both ends of a loopback channel receive on this NIC: room for both; and as the
        # channel count cannot change under a live set-up, the first one on a loopback NIC
        # takes all the channels the NIC has, for the channels that follow it on this host
        need = 1 + streams * (2 if _is_loopback(ifname, local_ip) else 1)
        if _is_loopback(ifname, local_ip):
            with contextlib.suppress(DevmemError, OSError):
                need = max(need, int(nic.get_channels().combined_max or 0))
        channels = need if n < need else None
        start, span = 1, max(n, need) - 1
    steps = ("rings", "rss") + (("channels",) if channels else ())
    stack.enter_context(
        NicSetup(be, ifname, queues=(start, span), steps=steps, channels=channels, handle_signals=handle)
    )
    ifindex = ifaces.ifindex(ifname)
    binding = None
    if queues is not None:
        binding = be.bind_rx(ifindex, dmabuf, qlist)
    else:
        n = nic.rx_queue_count()
        last_exc: NetlinkError | None = None
        for hi in range(n, start + streams - 1, -1):  # the highest free block of queues
            qlist = list(range(hi - streams, hi))
            try:
                binding = be.bind_rx(ifindex, dmabuf, qlist)
                break
            except NetlinkError as exc:
                if exc.errno != errno.EEXIST:  # queue bound by another binding: try lower
                    raise
                last_exc = exc
        if binding is None:
            raise ChannelError(
                f"no {streams} free RX queue(s) on {ifname} for the channel's data flows"
                + (f" ({last_exc})" if last_exc else ""),
                "close other channels or receivers on this NIC, raise its channel count, "
                "or use fewer streams",
            )
    stack.callback(binding.close)
    side = _RxSide(be, ifname, dmabuf, binding, qlist, list(ports), 0, 0, 0)
    for q, port in zip(qlist, ports, strict=True):
        rule = NicSetup(
            be, ifname, queues=(q, 1), flow=(local_ip, port), steps=("rule",), handle_signals=handle
        )
        stack.enter_context(rule)
        side.rules.append(rule.rule)
    pool_pages = dmabuf.size // abi.PAGE_SIZE
    side.release_threshold = max(1, min(abi.MAX_DONTNEED_FRAGS, pool_pages // (8 * streams)))
    side.bytes_per_page = _bytes_per_page(be, ifname, socket.AF_INET6 if ":" in local_ip else socket.AF_INET)
    side.readahead = min(READAHEAD_BYTES, dmabuf.size // (16 * streams)) // abi.PAGE_SIZE * abi.PAGE_SIZE
    side.window = plan_window(
        pool_pages, streams, side.release_threshold, -(-side.readahead // side.bytes_per_page) + 1
    )
    return side


def _check_steering(value: str) -> None:
    if value not in ("raise", "copy"):
        raise ChannelError(f"steering_errors={value!r}", "use 'raise' or 'copy'")


def _setup_tx(
    stack: contextlib.ExitStack, be: Backend, ifname: str, size: int, memory: str | DmaBuf
) -> tuple[Any, Any]:
    dmabuf = _open_dmabuf(memory, size)
    if isinstance(memory, str):
        stack.callback(dmabuf.close)
    binding = be.bind_tx(ifaces.ifindex(ifname), dmabuf)
    stack.callback(binding.close)
    return dmabuf, binding


def _family(addr: str) -> socket.AddressFamily:
    return ifaces.family_of(addr)


def _open_dmabuf(memory: str | DmaBuf, size: int) -> Any:
    if not isinstance(memory, str):
        return memory
    if size <= 0 or size % abi.PAGE_SIZE:
        raise ChannelError(
            f"dma-buf size {size} is not a positive multiple of {abi.PAGE_SIZE}",
            f"use a size like 64M (a multiple of {abi.PAGE_SIZE} bytes)",
        )
    from devmemtcp.memory import open_dmabuf

    return open_dmabuf(memory, size)


def _listen_socket(addr: str, port: int, backlog: int) -> socket.socket:
    sock = socket.socket(_family(addr), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ChannelError(
            f"cannot listen on {addr} port {port}: {exc.strerror or exc}",
            "pick another port, or an address this namespace owns (ip -br addr)",
        ) from None
    return sock


def _recv_exact(sock: socket.socket, n: int, what: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        got = sock.recv(n - len(buf))
        if not got:
            raise ChannelError(
                f"the peer closed the connection during the handshake ({what})",
                "check the peer's output: it refused or failed to set up its end",
            )
        buf += got
    return bytes(buf)


def _read_frame(sock: socket.socket, dec: FrameDecoder, what: str) -> tuple[FrameType, bytes]:
    while True:
        fr = dec.next()
        if fr is not None:
            if fr[0] == FrameType.ERROR:
                msg = decode_json(fr[1], "error").get("message", "")
                raise ChannelError(f"the peer failed during the handshake: {msg}", "see the peer's output")
            return fr
        data = sock.recv(1 << 16)
        if not data:
            raise ChannelError(
                f"the peer closed the connection during the handshake (waiting for {what})",
                "check the peer's output: it refused or failed to set up its end",
            )
        dec.feed(data)


def _nodelay(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _hello(role: str, rx: _RxSide, **extra: Any) -> dict[str, Any]:
    return {
        "protocol": PROTOCOL_VERSION,
        "devmemtcp": __version__,
        "role": role,
        "pid": os.getpid(),
        "rx_flows": len(rx.ports),
        "rx_ports": rx.ports,
        "window": rx.window,
        "bytes_per_page": rx.bytes_per_page,
        "backend": rx.backend.name,
        **extra,
    }


def _check_hello(h: dict[str, Any]) -> None:
    try:
        if int(h["protocol"]) != PROTOCOL_VERSION:
            raise ChannelError(
                f"channel protocol version mismatch: the peer (devmemtcp {h.get('devmemtcp')}) "
                f"speaks version {h['protocol']}, this end version {PROTOCOL_VERSION}",
                "run the same devmemtcp release on both ends",
            )
        int(h["rx_flows"])
        [int(p) for p in h["rx_ports"]]
        int(h["window"])
        int(h["bytes_per_page"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ChannelError(
            f"the peer's HELLO lacks or garbles {exc}", "run the same devmemtcp on both ends"
        ) from None


# ---------------------------------------------------------------------------
# listen / connect
# ---------------------------------------------------------------------------
def listen(
    addr: str,
    port: int,
    *,
    ifname: str | None = None,
    backend: str | Backend = "auto",
    memory: str | DmaBuf = "host",
    streams: int = 1,
    queues: Sequence[int] | None = None,
    dmabuf_size: int | None = None,
    tx_dmabuf_size: int | None = None,
    steering_errors: str = "raise",
) -> Listener:
    """Listen for channels on ``addr:port`` (the control connection).

    Sets the NIC up for this end's ``streams`` receiving data flows right away:
    header split, RSS off the devmem queues, one ntuple rule per flow
    (TCP to ``addr``:an ephemeral data port -> its own RX queue; ``queues``
    names them, default the highest free ones, the channel count raised when
    too few), and the RX dma-buf (``dmabuf_size`` bytes, default 64 MiB,
    ``memory`` "host", "udmabuf" or a DmaBuf) bound to those queues. All of
    it is undone by :meth:`Listener.close` (also on errors and SIGINT/SIGTERM
    in the main thread; ``devmemtcp restore IF`` after a kill -9).

    ``port`` 0 picks a free port (``Listener.port``). ``ifname`` defaults to
    the interface owning ``addr``. ``backend``: "auto" (doctor decides:
    kernel when the NIC can do devmem, else the emulated NIC), "kernel",
    "emulated" or a Backend. ``tx_dmabuf_size``: bytes of the TX dma-buf each
    accepted channel sends from (default twice ``dmabuf_size``: half staging
    ring, half for :meth:`Channel.empty`). ``steering_errors``: what a
    receive does with readable bytes on a data flow (the flow missed its
    devmem queue: a rule removed, a NIC that ignores it): "raise" (default) a
    ChannelError naming the ntuple rule to check, or "copy": take them as the
    payload they are (counted in ``stats["rx"]["flow_steering_errors"]``).

    Raises DevmemError/NetlinkError (with the kernel's extack) when the NIC
    cannot be set up, ChannelError for bad arguments; nothing is left set up.
    """
    return Listener(
        addr,
        port,
        ifname=ifname,
        backend=backend,
        memory=memory,
        streams=streams,
        queues=queues,
        dmabuf_size=dmabuf_size,
        tx_dmabuf_size=tx_dmabuf_size,
        steering_errors=steering_errors,
    )


def connect(
    addr: str,
    port: int,
    *,
    ifname: str | None = None,
    backend: str | Backend = "auto",
    memory: str | DmaBuf = "host",
    streams: int = 1,
    queues: Sequence[int] | None = None,
    dmabuf_size: int | None = None,
    tx_dmabuf_size: int | None = None,
    timeout: float | None = HANDSHAKE_TIMEOUT,
    steering_errors: str = "raise",
) -> Channel:
    """Open a channel to a :func:`listen` endpoint at ``addr:port``.

    This end receives on ``streams`` data flows of its own (set up as in
    :func:`listen`, on the interface that owns the control connection's local
    address unless ``ifname`` is given) and sends on the listener's. The
    arguments are :func:`listen`'s; ``timeout`` (seconds) bounds the
    connection and the handshake. Returns a :class:`Channel` (a context
    manager). Raises ChannelError when the listener is not there, speaks
    another protocol version or fails its side; every resource is given back.
    """
    if streams < 1:
        raise ChannelError(f"streams={streams}: a channel needs at least one data flow", "use streams >= 1")
    _check_steering(steering_errors)
    fam = _family(addr)
    size = dmabuf_size or DEFAULT_DMABUF_SIZE
    stack = contextlib.ExitStack()
    try:
        ctl = stack.enter_context(socket.socket(fam, socket.SOCK_STREAM))
        ctl.settimeout(timeout)
        try:
            ctl.connect((addr, port))
        except OSError as exc:
            raise ChannelError(
                f"cannot connect to {addr} port {port}: {exc.strerror or exc}",
                "start the listener first (devmemtcp.listen), and check the address",
            ) from None
        _nodelay(ctl)
        local_ip = ctl.getsockname()[0]
        ifname = ifname or ifaces.interface_of_address(local_ip)
        be, reason = _open_backend(backend, ifname)
        # receiving sockets: bound now so their rules exist before any byte flows
        rsocks = []
        for _ in range(streams):
            s = stack.enter_context(socket.socket(fam, socket.SOCK_STREAM))
            s.bind((local_ip, 0))
            rsocks.append(s)
        rx = _setup_rx(
            stack, be, ifname, local_ip, [s.getsockname()[1] for s in rsocks], queues, size, memory
        )
        tx_dmabuf, tx_binding = _setup_tx(stack, be, ifname, tx_dmabuf_size or 2 * size, memory)
        dec = FrameDecoder()
        ctl.sendall(encode_frame(FrameType.HELLO, encode_json(_hello("connect", rx))))
        ftype, body = _read_frame(ctl, dec, "the listener's HELLO")
        if ftype != FrameType.HELLO:
            raise ChannelError(f"expected the listener's HELLO, got {ftype.name}", "the peer is broken")
        peer = decode_json(body, "HELLO")
        _check_hello(peer)
        chan_id = bytes.fromhex(str(peer["channel"]))
        tsocks = []
        for p in peer["rx_ports"]:
            s = stack.enter_context(socket.socket(fam, socket.SOCK_STREAM))
            with contextlib.suppress(PermissionError, OSError):
                s.setsockopt(socket.SOL_SOCKET, abi.SO_BINDTODEVICE, ifname.encode() + b"\0")
            s.settimeout(timeout)
            s.connect((addr, int(p)))
            tsocks.append(s)
        ctl.sendall(
            encode_frame(FrameType.FLOWS, encode_json({"ports": [s.getsockname()[1] for s in tsocks]}))
        )
        for i, s in enumerate(rsocks):
            s.settimeout(timeout)
            s.connect((addr, int(peer["return_port"])))
            s.sendall(_PREAMBLE.pack(_PREAMBLE_MAGIC, chan_id, i))
        ctl.settimeout(None)
        for s in (*tsocks, *rsocks):
            s.settimeout(None)
            _nodelay(s)
        ch = Channel(
            ctl=ctl,
            decoder=dec,
            backend=be,
            backend_reason=reason,
            ifname=ifname,
            rx=rx,
            rx_socks=rsocks,
            tx_socks=tsocks,
            tx_dmabuf=tx_dmabuf,
            tx_binding=tx_binding,
            peer=peer,
            stack=stack,
            steering_errors=steering_errors,
        )
    except BaseException:
        stack.close()
        raise
    return ch


class Listener:
    """A listening endpoint (see :func:`listen`); a context manager.

    ``port``: the control port. ``queues``: the RX queues its data flows are
    steered to; ``data_ports``: their TCP ports. The RX dma-buf and its
    binding belong to the listener and serve one accepted channel at a time:
    :meth:`accept` refuses (ChannelError) while a channel it returned is open.
    """

    def __init__(
        self,
        addr: str,
        port: int,
        *,
        ifname: str | None,
        backend: str | Backend,
        memory: str | DmaBuf,
        streams: int,
        queues: Sequence[int] | None,
        dmabuf_size: int | None,
        tx_dmabuf_size: int | None,
        steering_errors: str = "raise",
    ) -> None:
        _check_steering(steering_errors)
        self.steering_errors = steering_errors
        if streams < 1:
            raise ChannelError(
                f"streams={streams}: a channel needs at least one data flow", "use streams >= 1"
            )
        fam = _family(addr)
        self.addr = addr
        self.memory = memory
        self.dmabuf_size = dmabuf_size or DEFAULT_DMABUF_SIZE
        self.tx_dmabuf_size = tx_dmabuf_size or 2 * self.dmabuf_size
        self._stack = contextlib.ExitStack()
        self._active: weakref.ref[Channel] | None = None
        try:
            self.ifname = ifname or ifaces.interface_of_address(addr)
            self.backend, self.backend_reason = _open_backend(backend, self.ifname)
            self._ctl = self._stack.enter_context(_listen_socket(addr, port, 8))
            self.port = int(self._ctl.getsockname()[1])
            self._ret = self._stack.enter_context(_listen_socket(addr, 0, max(8, 2 * streams)))
            self._data = [self._stack.enter_context(_listen_socket(addr, 0, 8)) for _ in range(streams)]
            self.data_ports = [int(s.getsockname()[1]) for s in self._data]
            local = (
                addr
                if not ipaddress.ip_address(addr).is_unspecified
                else ifaces.address_of_interface(self.ifname, fam)
            )
            self._rx = _setup_rx(
                self._stack,
                self.backend,
                self.ifname,
                local,
                self.data_ports,
                queues,
                self.dmabuf_size,
                memory,
            )
            self.queues = list(self._rx.queues)
        except BaseException:
            self._stack.close()
            raise
        self._finalizer = weakref.finalize(self, self._stack.close)

    def accept(self, timeout: float | None = None) -> Channel:
        """Wait for a :func:`connect` (``timeout`` seconds, None: forever) and
        return the Channel. Raises TimeoutError, or ChannelError when the peer
        fails the handshake (the listener stays usable) or a channel from this
        listener is still open."""
        if self._active is not None and (ch := self._active()) is not None and not ch.closed:
            raise ChannelError(
                "a channel accepted from this listener is still open: its data flows use the "
                "listener's RX dma-buf and queues",
                "close it first, or listen on another port",
            )
        self._ctl.settimeout(timeout)
        try:
            ctl, peer_addr = self._ctl.accept()
        except TimeoutError:
            raise TimeoutError(
                f"no channel connected to {self.addr} port {self.port} within {timeout} s"
            ) from None
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(ctl)
            ctl.settimeout(HANDSHAKE_TIMEOUT)
            _nodelay(ctl)
            dec = FrameDecoder()
            ftype, body = _read_frame(ctl, dec, "the connector's HELLO")
            if ftype != FrameType.HELLO:
                raise ChannelError(f"expected the connector's HELLO, got {ftype.name}", "the peer is broken")
            try:
                peer = decode_json(body, "HELLO")
                _check_hello(peer)
            except ChannelError as exc:
                with contextlib.suppress(OSError):
                    ctl.sendall(encode_frame(FrameType.ERROR, encode_json({"message": exc.message})))
                raise
            chan_id = uuid.uuid4().bytes
            tx_dmabuf, tx_binding = _setup_tx(
                stack, self.backend, self.ifname, self.tx_dmabuf_size, self.memory
            )
            ctl.sendall(
                encode_frame(
                    FrameType.HELLO,
                    encode_json(
                        _hello(
                            "listen",
                            self._rx,
                            channel=chan_id.hex(),
                            return_port=int(self._ret.getsockname()[1]),
                        )
                    ),
                )
            )
            ftype, body = _read_frame(ctl, dec, "the connector's FLOWS")
            if ftype != FrameType.FLOWS:
                raise ChannelError(f"expected the connector's FLOWS, got {ftype.name}", "the peer is broken")
            ports = {int(p) for p in decode_json(body, "FLOWS").get("ports", [])}
            rsocks = []
            for ls in self._data:
                ls.settimeout(HANDSHAKE_TIMEOUT)
                while True:
                    s, a = ls.accept()
                    if a[0] == peer_addr[0] and a[1] in ports:
                        break
                    s.close()  # a stray connection to the data port: not this channel's
                rsocks.append(stack.enter_context(s))
            tsocks: list[socket.socket | None] = [None] * int(peer["rx_flows"])
            self._ret.settimeout(HANDSHAKE_TIMEOUT)
            while any(t is None for t in tsocks):
                s, a = self._ret.accept()
                s.settimeout(HANDSHAKE_TIMEOUT)
                try:
                    magic, cid, idx = _PREAMBLE.unpack(_recv_exact(s, _PREAMBLE.size, "data flow preamble"))
                except ChannelError:
                    s.close()
                    continue
                if (
                    magic != _PREAMBLE_MAGIC
                    or cid != chan_id
                    or idx >= len(tsocks)
                    or tsocks[idx] is not None
                ):
                    s.close()
                    continue
                tsocks[idx] = stack.enter_context(s)
            ctl.settimeout(None)
            out = [t for t in tsocks if t is not None]
            for s in (*rsocks, *out):
                s.settimeout(None)
                _nodelay(s)
            ch = Channel(
                ctl=ctl,
                decoder=dec,
                backend=self.backend,
                backend_reason=self.backend_reason,
                ifname=self.ifname,
                rx=self._rx,
                rx_socks=rsocks,
                tx_socks=out,
                tx_dmabuf=tx_dmabuf,
                tx_binding=tx_binding,
                peer=peer,
                stack=stack,
                steering_errors=self.steering_errors,
            )
        except BaseException:
            stack.close()
            raise
        self._active = weakref.ref(ch)
        return ch

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Close the listening sockets, unbind the RX dma-buf and undo the NIC
        set-up (idempotent). A channel still open from this listener is closed first."""
        if self._active is not None and (ch := self._active()) is not None:
            ch.close()
        self._finalizer()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Listener {self.addr}:{self.port} ifname={self.ifname} backend={self.backend.name} "
            f"queues={self.queues}>"
        )




def _dead() -> None:
    return None


_dead_ref: Any = _dead  # a "weak reference" to nothing: calling it gives None


def _cork_timer(ref: weakref.ref[Channel], evt: threading.Event) -> None:
    """The cork's timer thread: while a channel's cork is armed, flush it
    every CORK_DELAY_S; holds the channel only while it flushes."""
    while True:
        evt.wait()
        time.sleep(CORK_DELAY_S)
        ch = ref()
        if ch is None or ch._closed:
            return
        ch._timer_flush()
        del ch


# ---------------------------------------------------------------------------
# Payload views
# ---------------------------------------------------------------------------
def _is_torch(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "torch" and hasattr(obj, "data_ptr")


def _torch_dtype_spec(t: Any) -> DType:
    import torch

    if t.dtype == torch.bfloat16:
        return DType(dlpack=(DL_BFLOAT, 16, 1))
    try:
        npdt = torch.empty(0, dtype=t.dtype).numpy().dtype
    except (TypeError, RuntimeError) as exc:
        raise ChannelError(
            f"torch dtype {t.dtype} cannot be sent: {exc}", "convert the tensor first"
        ) from None
    return DType.of_numpy(npdt)


def _payload(obj: Any) -> tuple[np.ndarray, DType, tuple[int, ...], int]:
    """``(uint8 contiguous view, dtype, shape, bytes copied to make it)``."""
    copied = 0
    if _is_torch(obj):
        t = obj.detach()
        if t.device.type != "cpu":
            raise ChannelError(
                f"a tensor on {t.device} cannot be sent from host memory",
                "move it to the CPU, or use the CUDA memory provider (memory='cuda')",
            )
        spec = _torch_dtype_spec(t)
        if not t.is_contiguous():
            t = t.contiguous()
            copied = t.numel() * t.element_size()
        import torch

        u8 = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.empty(0, np.uint8)
        return u8, spec, tuple(int(d) for d in t.shape), copied
    if isinstance(obj, np.ndarray):
        arr = obj
    elif hasattr(obj, "__dlpack__"):
        if is_device_array(obj):
            raise ChannelError(
                f"a {type(obj).__name__} in device memory cannot be sent from host memory",
                "copy it to the host, or use the CUDA memory provider (memory='cuda')",
            )
        arr = np.from_dlpack(obj)
    else:
        try:
            arr = np.asarray(memoryview(obj))
        except TypeError:
            raise ChannelError(
                f"cannot send a {type(obj).__name__}: not an array, tensor or buffer",
                "send a numpy array, a torch tensor, or a bytes-like object",
            ) from None
    spec = DType.of_numpy(arr.dtype)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
        copied = arr.nbytes
    u8 = arr.reshape(-1).view(np.uint8) if arr.size else np.empty(0, np.uint8)
    return u8, spec, arr.shape, copied


def _writable_view(out: Any, nbytes: int, tag: int) -> np.ndarray:
    """``out`` as a contiguous writable uint8 array of exactly ``nbytes``, or
    ChannelError (nothing of the message consumed)."""
    if _is_torch(out):
        import torch

        if out.device.type != "cpu":
            raise ChannelError(
                f"out is a tensor on {out.device}: host memory is needed here",
                "receive into a CPU tensor, or use the CUDA memory provider",
            )
        if not out.is_contiguous():
            raise ChannelError("out is not contiguous", "pass a contiguous tensor (t.contiguous())", tag=tag)
        size = out.numel() * out.element_size()
        view = out.detach().reshape(-1).view(torch.uint8).numpy() if out.numel() else np.empty(0, np.uint8)
    elif isinstance(out, np.ndarray):
        if not out.flags.writeable:
            raise ChannelError("out is not writable", "pass a writable array", tag=tag)
        if not out.flags.c_contiguous:
            raise ChannelError("out is not C-contiguous", "pass a contiguous array (np.empty(...))", tag=tag)
        size = out.nbytes
        view = out.reshape(-1).view(np.uint8) if out.size else np.empty(0, np.uint8)
    else:
        try:
            mv = memoryview(out)
        except TypeError:
            raise ChannelError(
                f"out is a {type(out).__name__}: not an array, tensor or buffer",
                "pass a numpy array, a torch tensor or a bytearray",
            ) from None
        if mv.readonly:
            raise ChannelError(
                "out is not writable (a read-only buffer)", "pass a bytearray or a writable array", tag=tag
            )
        if not mv.c_contiguous:
            raise ChannelError("out is not contiguous", "pass a contiguous buffer", tag=tag)
        size = mv.nbytes
        view = np.frombuffer(mv.cast("B"), np.uint8) if size else np.empty(0, np.uint8)
    if size != nbytes:
        raise destination_size_error(size, nbytes, tag)
    return view


def _new_destination(h: MessageHeader, like: str) -> tuple[Any, np.ndarray]:
    if like == "numpy":
        arr = np.empty(h.shape, dtype=h.dtype.numpy())
        return arr, (arr.reshape(-1).view(np.uint8) if arr.size else np.empty(0, np.uint8))
    if like == "torch":
        try:
            import torch
        except ImportError:
            raise ChannelError(
                "like='torch' needs torch", "pip install torch (a CPU build: torch==2.13.0)"
            ) from None
        if h.dtype.dlpack == (DL_BFLOAT, 16, 1):
            tdt = torch.bfloat16
        else:
            try:
                tdt = torch.from_numpy(np.empty(0, h.dtype.numpy())).dtype
            except TypeError:
                raise ChannelError(
                    f"dtype {h.dtype} has no torch equivalent", "receive with like='numpy'"
                ) from None
        t = torch.empty(h.shape, dtype=tdt)
        return t, (t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.empty(0, np.uint8))
    raise ChannelError(f"like={like!r}", "use like='numpy' or like='torch'")


# ---------------------------------------------------------------------------
# Messages held in the RX dma-buf
# ---------------------------------------------------------------------------
@dataclass
class _Held:
    """A received message waiting for its recv: its frags in the RX dma-buf
    (``parts``: (receiver, batch) in stream order, tokens held) or, when it
    was spilled, its bytes in host memory (``data``)."""

    header: MessageHeader
    parts: list[tuple[Any, FragBatch]] = field(default_factory=list)
    data: Any = None  # numpy array; a device array on a CUDA channel
    pages: int = 0  # credit pages still held (parts only)


class _Piece:
    """Bytes of one recvmsg on a data flow that later messages take (the
    read-ahead): ``cur`` over the batch's frags (tokens given back with
    ``rx.release(batch)`` once ``left`` is 0), or ``data``, a host copy."""

    __slots__ = ("batch", "cur", "data", "left", "rx")

    def __init__(
        self, rx: Any, batch: FragBatch | None, cur: FragCursor | None, data: Any, left: int
    ) -> None:
        self.rx = rx
        self.batch = batch
        self.cur = cur
        self.data = data
        self.left = left


class Message:
    """A received message held for :meth:`Channel.recv_frags`.

    ``tag``, ``nbytes``, ``dtype`` (numpy dtype, or the DType for dtypes
    numpy lacks), ``shape``; ``frags``: a FragBatch of its frags in the RX
    dma-buf (offset, size, token, dmabuf_id arrays, stream order; empty when
    the message had been copied out of the dma-buf to make room, then
    ``host`` holds its bytes). :meth:`gather` copies it into ``out``.
    Tokens are given back when the ``with`` block ends."""

    def __init__(self, ch: Channel, held: _Held) -> None:
        self._ch = ch
        self._held = held
        h = held.header
        self.tag = h.tag
        self.nbytes = h.nbytes
        self.shape = h.shape
        try:
            self.dtype: Any = h.dtype.numpy()
        except ChannelError:
            self.dtype = h.dtype
        self.host = held.data
        parts = held.parts
        if not parts:
            self.frags = FragBatch.empty()
        elif len(parts) == 1:
            self.frags = parts[0][1]
        else:
            b = [p[1] for p in parts]
            self.frags = FragBatch(
                np.concatenate([x.offset for x in b]),
                np.concatenate([x.size for x in b]),
                np.concatenate([x.token for x in b]),
                np.concatenate([x.dmabuf_id for x in b]),
            )

    def gather(self, out: Any = None, like: str = "numpy") -> Any:
        """Copy the message into ``out`` (exactly ``nbytes``, contiguous,
        writable) or a new array (``like`` "numpy" or "torch"); returns it."""
        if out is None:
            res, view = self._ch._dest_new(self._held.header, like)
        else:
            res, view = out, self._ch._dest_out(out, self.nbytes, self.tag)
        self._ch._copy_held(self._held, view)
        return res


# ---------------------------------------------------------------------------
# Channel
# ---------------------------------------------------------------------------
@dataclass
class _DirStats:
    bytes: int = 0
    messages: int = 0
    frags: int = 0
    host_copy_bytes: int = 0
    seconds: float = 0.0


class Channel:
    """A bidirectional channel of arrays and tensors (see :func:`connect`, :meth:`Listener.accept`).

    ``send`` puts one message (numpy array, torch CPU tensor, anything with
    ``__dlpack__`` or the buffer protocol) on the peer's data flows; ``recv``
    returns the next message (of a tag) as a new array, ``recv_into`` writes
    it into an array; messages of one tag arrive in send order. Thread-safe:
    one thread may send while another receives (do so for bulk traffic in
    both directions at once: a send waiting for credit does not receive).
    Use as a context manager; :meth:`close` gives back every token and binding
    and undoes the NIC set-up this channel made.
    """

    def __init__(
        self,
        *,
        ctl: socket.socket,
        decoder: FrameDecoder,
        backend: Any,
        backend_reason: str,
        ifname: str,
        rx: _RxSide,
        rx_socks: list[socket.socket],
        tx_socks: list[socket.socket],
        tx_dmabuf: Any,
        tx_binding: Any,
        peer: dict[str, Any],
        stack: contextlib.ExitStack,
        steering_errors: str = "raise",
    ) -> None:
        from devmemtcp.rx import Receiver
        from devmemtcp.tx import Sender

        self.backend = backend
        self.backend_reason = backend_reason
        self.steering_errors = steering_errors
        self.ifname = ifname
        self.peer_info = peer
        self._ctl = ctl
        self._dec = decoder
        self._stack = stack
        self._rx = rx
        # CUDA memory: the device side moves the bytes (no host view of either dma-buf)
        self._dev: DeviceSide | None = None
        if device_kind(rx.dmabuf) or device_kind(tx_dmabuf):
            if not (device_kind(rx.dmabuf) and device_kind(tx_dmabuf)):
                raise ChannelError(
                    "the RX and TX dma-bufs must both be CUDA memory or both host memory",
                    "give listen/connect one memory kind (memory='cuda:N' or 'host')",
                )
            self._dev = DeviceSide(rx.dmabuf, tx_dmabuf)
            self._rx_base: Any = None
            self._gather_batch = self._dev.gather_batch  # type: ignore[method-assign]
        else:
            self._rx_base = rx.dmabuf.host_view()
        self._rx_base_addr = 0 if self._rx_base is None else self._rx_base.__array_interface__["data"][0]
        self._rx_base_len = 0 if self._rx_base is None else int(self._rx_base.shape[0])
        self._out_ref: Any = _dead_ref
        self._out_addr = 0
        pool_pages = rx.dmabuf.size // abi.PAGE_SIZE
        self._receivers: list[Receiver] = [
            stack.enter_context(
                Receiver(backend, s, rx.binding, release_threshold=rx.release_threshold, max_held=pool_pages)
            )
            for s in rx_socks
        ]
        self._lowat = [1] * len(rx_socks)
        self._ra: list[deque[_Piece]] = [deque() for _ in rx_socks]  # read-ahead per flow
        self._rcvbuf = [0] * len(rx_socks)
        self._lowat_cap = [RCVLOWAT_CAP] * len(rx_socks)
        # a receive timeout on the data flows: a low-water mark the window cannot reach returns
        # what is there after RCVTIMEO_S instead of waiting forever (then the mark is halved)
        tv = struct.pack("ll", 0, int(RCVTIMEO_S * 1e6))
        for sk in rx_socks:
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        self._senders: list[Sender] = [
            stack.enter_context(Sender(backend, s, tx_binding, max_iov=CORK_MSGS)) for s in tx_socks
        ]
        self._rx_socks = rx_socks
        self._tx_socks = tx_socks
        self._tx_dmabuf = tx_dmabuf
        self._tx_view: Any = None
        self._tx_addr = 0
        if self._dev is None:
            self._tx_view = tx_dmabuf.host_view()
            self._tx_addr = int(self._tx_view.__array_interface__["data"][0])
        size = tx_dmabuf.size
        # TX dma-buf: [0, ring) staging ring for sends that copy, [ring, size) buffers of empty()
        self._ring = max(abi.PAGE_SIZE, (size // 2) // abi.PAGE_SIZE * abi.PAGE_SIZE)
        self._ring_pos = 0
        # (start, end, flow, lap) in ring order; a lap starts at the ring's beginning
        self._ring_used: deque[tuple[int, int, int, int]] = deque()
        self._ring_lap = 0
        self._heap_free: list[tuple[int, int]] = [(self._ring, size - self._ring)]
        self._heap_lock = threading.Lock()
        self._heap_pending: list[tuple[int, int]] = []
        self._peer_bpp = int(peer["bytes_per_page"])
        self._credit = CreditWindow(int(peer["window"]))
        self._ledger = CreditLedger(rx.window)
        self._flush_at = self._ledger.flush_at
        self._rx_bpp = rx.bytes_per_page
        # a chunk fits the peer's credit (a quarter of its window) and the staging ring
        self._unit = min(max_unit(self._credit.window, self._peer_bpp), self._ring)
        self._cv = threading.Condition()
        self._reading = False
        self._ctl_eof = False
        self._ctl_wdead = False  # a write on the control connection failed (the peer closed it)
        self._ctl_error: str | None = None
        self._peer_closed = False
        self._headers: deque[MessageHeader] = deque()
        self._held: dict[int, deque[_Held]] = {}
        self._held_order: deque[_Held] = deque()
        self._tx_lock = threading.Lock()
        self._rx_lock = threading.Lock()
        self._wlock = threading.Lock()
        self._tx_seq = 0
        self._iov = np.empty((1, 2), dtype=np.uint64)
        # the send cork: MSG frames and per-flow (offset, length) pairs not yet written
        self._cork_hdr: list[bytes] = []
        self._cork_iov: list[list[int]] = [[] for _ in tx_socks]
        self._cork_n = 0
        self._cork_bytes = 0
        self._cork_first: tuple[int, int] = (0, 0)  # (tag, nbytes) of the oldest corked message
        self._cork_limit = min(CORK_BYTES, self._ring // 4)
        self._cork_small = min(CORK_SMALL, self._cork_limit) if self._dev is None else 0
        self._tx_last = 0.0  # perf_counter of the last write of payload
        self._src_ref: Any = _dead_ref
        self._src_addr = 0
        self._cork_evt = threading.Event()
        self._cork_idle = 0  # timer ticks without a corked message
        self._rx_called = False  # a receive was called since the last write of the cork
        self._flusher: threading.Thread | None = None
        self.cork_flushes = 0
        self.cork_timer_flushes = 0
        self._rx_seq = 0
        self._rr = 0
        self._tx_stats = _DirStats()
        self._rx_stats = _DirStats()
        self.credit_waits = 0
        self.credit_frames = 0
        self._rx_bulk = False  # the last message received was larger than READAHEAD_SMALL
        self.rx_timeouts = 0
        self._rx_broken: ChannelError | None = None
        self._tx_broken: ChannelError | None = None
        self.spilled = 0
        self.parked = 0
        self._closed = False
        self._finalizer = weakref.finalize(self, stack.close)
        # frames that came in the same segment as the handshake's last one (a MSG sent right
        # after connect) are in the decoder already: dispatch them now, not after the next read
        self._dispatch_all()

    # -- control connection --------------------------------------------------
    def _write(self, data: bytes) -> None:
        with self._wlock:
            try:
                self._ctl.sendall(data)
            except OSError as exc:
                raise ChannelError(
                    f"the control connection to the peer is gone: {exc}",
                    "the peer closed the channel or died; check its output",
                ) from None

    def _dispatch_all(self) -> None:
        """Dispatch every whole frame the decoder holds (message headers in bulk)."""
        hs = self._headers
        for fr in self._dec.drain():
            if type(fr) is MessageHeader:
                hs.append(fr)
            else:
                self._dispatch(*fr)

    def _dispatch(self, ftype: FrameType, body: bytes) -> None:
        if ftype == FrameType.MSG:
            self._headers.append(decode_header(body))
        elif ftype == FrameType.CREDIT:
            self._credit.give(decode_credit(body))
        elif ftype == FrameType.CLOSE:
            self._peer_closed = True
        elif ftype == FrameType.ERROR:
            self._ctl_error = str(decode_json(body, "error").get("message", "unknown error"))
        else:
            raise ChannelError(f"unexpected {ftype.name} frame after the handshake", "the peer is broken")

    def _wait(self, ready: Any, lost: Any, deadline: float | None = None, expire_ok: bool = False) -> bool:
        """Read control frames until ``ready()`` holds (checked under the
        condition lock); ``lost(reason)`` builds the error raised when the
        control connection ends first; TimeoutError once ``deadline``
        (time.monotonic) passes, or False with ``expire_ok``; else True.
        One thread reads at a time."""
        while True:
            with self._cv:
                while True:
                    if ready():
                        return True
                    if self._ctl_error is not None:
                        raise lost(f"the peer failed: {self._ctl_error}")
                    if self._ctl_eof or self._peer_closed:
                        raise lost(
                            "the peer closed the channel"
                            if self._peer_closed
                            else "the peer closed the control connection without closing the channel"
                        )
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        if expire_ok:
                            return False
                        raise TimeoutError("timed out")
                    if not self._reading:
                        self._reading = True
                        break
                    self._cv.wait(left)
            data: bytes | None = b""  # None: the deadline passed
            err: OSError | None = None
            try:
                if left is None:
                    data = self._ctl.recv(1 << 16)
                else:
                    # frames already queued (a stream's next headers) are read without a select
                    try:
                        data = self._ctl.recv(1 << 16, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        ready_now = select.select([self._ctl], [], [], left)[0]
                        data = self._ctl.recv(1 << 16) if ready_now else None
            except OSError as exc:
                err = exc
            with self._cv:
                self._reading = False
                try:
                    if data is None:
                        pass  # the deadline passed: checked at the top
                    elif not data:
                        self._ctl_eof = True
                        if err is not None:
                            self._ctl_error = f"control connection error: {err}"
                    else:
                        self._dec.feed(data)
                        self._dispatch_all()
                finally:
                    self._cv.notify_all()

    def _give_credit(self, force: bool = False) -> None:
        led = self._ledger
        if led.owed and (force or led.owed >= led.flush_at):
            frame = encode_frame(FrameType.CREDIT, encode_credit(led.take_owed()))
            if self._ctl_eof or self._ctl_error is not None or self._ctl_wdead:
                return  # the peer is gone: what it sent is still read to the end (or the cut)
            try:
                self._write(frame)
                self.credit_frames += 1
            except ChannelError:
                # reported by the data flow's end (which names the message) or the next control
                # read, which still gets the frames the peer wrote before it closed (its last
                # messages, CLOSE): no more credit is written
                self._ctl_wdead = True

    # -- sending -------------------------------------------------------------
    def empty(self, shape: int | Sequence[int], dtype: Any = np.uint8, *, like: str | None = None) -> Any:
        """A new array of ``shape`` and ``dtype`` living in the TX dma-buf:
        ``send`` of it (or of a contiguous slice) copies nothing on the host.

        Host memory: a numpy array (``like`` None or "numpy"). CUDA memory
        (``memory="cuda:N"``): a CuPy array on device N (``like`` None or
        "cupy"), or a CUDA torch tensor (``like="torch"``, by DLPack; needs
        torch with CUDA); both are over the dma-buf's device memory, no copy.

        The memory returns to the channel when the array and every view of it
        are gone. Do not write into it while a send of it may still be read
        by the NIC: :meth:`flush` waits until every send completed. Raises
        ChannelError when the TX dma-buf has no room (``tx_dmabuf_size``), or
        for a ``like`` this memory cannot give."""
        if self._dev is None and like not in (None, "numpy"):
            raise ChannelError(f"empty(like={like!r}) on a host memory channel",
                               "use like='numpy', or open the channel with memory='cuda'")
        if self._dev is not None:
            self._dev.check_like(like)  # before any room is taken
        dt = np.dtype(dtype)
        DType.of_numpy(dt)  # ChannelError for object dtypes: the TX dma-buf holds bytes, not references
        shp = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
        n = int(np.prod(shp, dtype=np.int64)) * dt.itemsize
        need = max(abi.PAGE_SIZE, -(-n // abi.PAGE_SIZE) * abi.PAGE_SIZE)
        mm = getattr(self._tx_dmabuf, "_mm", None)
        if mm is None and self._dev is None:
            raise ChannelError("this TX dma-buf has no host mapping for empty()", "use memory='host'")
        with self._tx_lock:
            self._heap_collect()
        with self._heap_lock:
            for i, (off, ln) in enumerate(self._heap_free):
                if ln >= need:
                    self._heap_free[i] = (off + need, ln - need)
                    if ln == need:
                        del self._heap_free[i]
                    break
            else:
                free = max((ln for _, ln in self._heap_free), default=0)
                raise ChannelError(
                    f"no room for {n} bytes in the TX dma-buf (largest free block {free} bytes)",
                    "drop arrays from empty() you no longer need, or give a larger tx_dmabuf_size",
                )
        if self._dev is not None:
            return self._dev.empty(off, need, n, dt, shp, like or "cupy", self._heap_release)
        # the holder exports the mapping's buffer: the memory outlives the channel while arrays use it
        holder = (ctypes.c_char * need).from_buffer(mm, off)
        weakref.finalize(holder, self._heap_release, off, need)
        arr = np.frombuffer(holder, dtype=np.uint8, count=n).view(dt).reshape(shp)
        return arr

    def _heap_release(self, off: int, ln: int) -> None:
        # called by the garbage collector, from any thread: only note it
        self._heap_pending.append((off, ln))

    def _heap_collect(self) -> None:
        """(under the TX lock) Return the regions of dropped empty() arrays
        once no send still reads them."""
        pending, self._heap_pending = self._heap_pending, []
        if not pending:
            return
        for off, ln in pending:
            for s in self._senders:
                s.wait_region_free(off, ln)
        with self._heap_lock:
            free = sorted([*self._heap_free, *pending])
            merged: list[tuple[int, int]] = []
            for o, n in free:
                if merged and merged[-1][0] + merged[-1][1] == o:
                    merged[-1] = (merged[-1][0], merged[-1][1] + n)
                else:
                    merged.append((o, n))
            self._heap_free = merged

    def _stage(self, src: Any, flow: int) -> int:
        """Copy ``src`` into the staging ring; returns its dma-buf offset. A
        region is overwritten only after the sendmsg that last read it completed."""
        n = src.shape[0]
        need = -(-n // abi.PAGE_SIZE) * abi.PAGE_SIZE
        used = self._ring_used
        if self._ring_pos + need > STAGE_HOT_BYTES:
            # past the first STAGE_HOT_BYTES: start the next lap early, at the ring's start (whose
            # bytes are still in the CPU caches), once the sends still in flight are all of this
            # lap and clear of [0, need): the overlap check below then meets them in ring order
            while used and self._senders[used[0][2]].region_free(used[0][0], used[0][1] - used[0][0]):
                used.popleft()
            if not used or (used[0][3] == self._ring_lap and used[0][0] >= need):
                self._ring_pos = 0
                self._ring_lap += 1
        if self._ring_pos + need > self._ring:
            # wrap: what is left of the previous lap (at or past this lap's end) is the oldest
            while used and used[0][0] >= self._ring_pos:
                s, e, f, _lap = used.popleft()
                self._senders[f].wait_region_free(s, e - s)
            self._ring_pos = 0
            self._ring_lap += 1
        start, end = self._ring_pos, self._ring_pos + need
        while used and used[0][0] < end and start < used[0][1]:
            s, e, f, _lap = used.popleft()
            self._senders[f].wait_region_free(s, e - s)
        if self._dev is None:
            self._tx_view[start : start + n] = src
        else:
            self._dev.stage(start, src)
        used.append((start, end, flow, self._ring_lap))
        self._ring_pos = end
        return start

    def send(self, obj: Any, *, tag: int = 0) -> int:
        """Send one message; returns its payload bytes.

        ``obj``: a numpy array (any dtype but object; non-contiguous and
        Fortran-order arrays are sent as their C-order copy), a torch CPU
        tensor, anything with ``__dlpack__`` or the buffer protocol. ``tag``:
        u64. The header goes on the control connection, the payload in chunks
        of at most the stripe unit over the data flows (a message of one chunk
        on one flow, round robin), each chunk only once the receiver granted
        its credit pages (a slow receiver holds the sender here). Bytes are
        copied once into the TX dma-buf's staging ring, unless ``obj`` lives in
        it already (:meth:`empty`). Returns when every chunk is handed to the
        kernel, or, for a small message, put in the cork (below); either way
        ``obj`` may be reused at once (its bytes are in the staging ring),
        except an ``empty()`` array, see :meth:`flush`.

        The cork (Nagle's idea in user space, so that many small messages
        cost one control write and one sendmsg): a C-contiguous numpy array of
        at most ``CORK_SMALL`` bytes (64 KiB; less with a small TX dma-buf)
        whose credit is there is queued: header and (offset, length). The
        cork is written, headers first, when it holds ``CORK_MSGS`` (64)
        messages or ``CORK_BYTES`` (256 KiB), when any other send, a
        ``recv``/``recv_into``/``recv_frags`` on this end, :meth:`flush` or
        :meth:`close` comes, and by a timer thread at most ``CORK_DELAY_S``
        (0.5 ms, plus the scheduler's delay) after the message was queued. A
        message goes out at once when this end wrote nothing for
        ``CORK_DELAY_S``, or called a receive since its last write (request
        and response: the peer is waiting for it).
        Messages keep their send order on every flow.

        Raises ChannelError naming the tag and the bytes sent of the message's
        bytes when the peer goes away (for corked messages: the oldest one of
        the cork, raised by the call that writes it; when the timer wrote it,
        the next send or flush raises), ChannelError for objects that cannot be
        sent."""
        if self._closed:
            raise ChannelError("send() on a closed channel", "open a new channel")
        if self._tx_broken is not None:
            raise ChannelError(
                f"send() after the channel's send side failed: {self._tx_broken.message}",
                "close this channel and open a new one",
                tag=self._tx_broken.tag,
            )
        if not 0 <= tag < 1 << 64:
            raise ChannelError(f"tag {tag} is not a u64", "use a tag in 0..2**64-1")
        t0 = time.perf_counter()
        if self._dev is None and type(obj) is np.ndarray and obj.flags.c_contiguous:
            n = self._send_small(obj, tag, t0)
            if n >= 0:
                return n
        if self._dev is not None and is_device_array(obj):
            u8, spec, shape = self._device_payload(obj)
            copied = 0
            host_src = False
            in_dma = self._dev.tx_offset(u8)
            if in_dma is not None:
                self._dev.sync()  # writes into an empty() array on CuPy's stream land before the NIC reads
        else:
            u8, spec, shape, copied = _payload(obj)
            host_src = True
            in_dma = self._offset_in_tx(u8) if self._dev is None else None
        nbytes = int(u8.shape[0])
        with self._tx_lock:
            if self._cork_n:
                self._flush_cork()  # messages stay in send order on every flow
            seq = self._tx_seq
            self._tx_seq += 1
            nflows = len(self._senders)
            first = self._rr
            self._rr = (first + 1) % nflows
            unit = self._unit
            self._write(
                encode_frame(FrameType.MSG, encode_msg(tag, nbytes, seq, unit, first, nflows, spec, shape))
            )
            sent = 0
            iov = self._iov
            bpp = self._peer_bpp
            try:
                for i in range(-(-nbytes // unit) if nbytes else 0):
                    f = (first + i) % nflows
                    start = i * unit
                    ln = min(unit, nbytes - start)
                    cost = chunk_pages(ln, bpp)
                    if not self._credit.can_take(cost):
                        self.credit_waits += 1
                        self._wait(
                            lambda c=cost: self._credit.can_take(c),
                            lambda why, s=sent: ChannelError(
                                f"{why} while sending message tag {tag}: {s} of {nbytes} bytes sent",
                                "check the peer's output; the message was cut short",
                                tag=tag,
                                received=s,
                                expected=nbytes,
                            ),
                        )
                    if in_dma is not None:
                        off = in_dma + start
                    else:
                        off = self._stage(u8[start : start + ln], f)
                        if host_src:
                            copied += ln
                    with self._cv:
                        self._credit.take(cost)
                    iov[0, 0] = off
                    iov[0, 1] = ln
                    self._senders[f].send(iov)
                    sent += ln
            except (ConnectionError, DevmemError, OSError) as exc:
                if isinstance(exc, ChannelError):
                    self._tx_broken = exc
                    raise
                self._tx_broken = ChannelError(
                    f"connection lost while sending message tag {tag}: {sent} of {nbytes} bytes sent ({exc})",
                    "check the peer's output; the message was cut short",
                    tag=tag,
                    received=sent,
                    expected=nbytes,
                )
                raise self._tx_broken from None
            st = self._tx_stats
            st.bytes += nbytes
            st.messages += 1
            st.frags += -(-nbytes // abi.PAGE_SIZE)
            st.host_copy_bytes += copied
            self._tx_last = now = time.perf_counter()
            st.seconds += now - t0
        return nbytes

    def _send_small(self, arr: np.ndarray, tag: int, t0: float) -> int:
        """The fast path of :meth:`send` for a C-contiguous host array of at
        most ``_cork_small`` bytes with its credit available: stage it (unless
        it lives in the TX dma-buf), put its header and (offset, length) in
        the cork, flush by the cork's rule. Returns its bytes, or -1 when the
        message must take the general path (nothing done then)."""
        nbytes = arr.nbytes
        if not 0 < nbytes <= self._cork_small:
            return -1
        shape = arr.shape
        tail = msg_tail_of(arr.dtype, shape)  # encoded (and checked) once per dtype and shape
        cost = chunk_pages(nbytes, self._peer_bpp)
        with self._tx_lock:
            cw = self._credit
            if not cw.can_take(cost):
                return -1  # the general path waits for credit (after flushing the cork)
            if self._src_ref() is not arr:  # the address of the last source, by a weak reference
                self._src_ref = weakref.ref(arr)
                self._src_addr = arr.__array_interface__["data"][0]
            off = self._src_addr - self._tx_addr
            nflows = len(self._senders)
            f = self._rr
            self._rr = (f + 1) % nflows
            st = self._tx_stats
            if off < 0 or off + nbytes > self._tx_view.shape[0]:
                off = self._stage(arr.reshape(-1).view(np.uint8), f)
                st.host_copy_bytes += nbytes
            seq = self._tx_seq
            self._tx_seq = seq + 1
            hdr = pack_msg_frame(tail, tag, nbytes, seq, self._unit, f, nflows)
            cw.taken += cost  # this thread alone adds to taken (see CreditWindow)
            # at once: after CORK_DELAY_S without a write, or when this end received since its
            # last write (request and response: the peer waits for this message)
            idle = not self._cork_n and (self._rx_called or t0 - self._tx_last >= CORK_DELAY_S)
            if not self._cork_n:
                self._cork_first = (tag, nbytes)
            self._cork_hdr.append(hdr)
            self._cork_iov[f] += (off, nbytes)
            self._cork_n += 1
            self._cork_bytes += nbytes
            st.bytes += nbytes
            st.messages += 1
            st.frags += -(-nbytes // abi.PAGE_SIZE)
            if idle or self._cork_n >= CORK_MSGS or self._cork_bytes >= self._cork_limit:
                self._flush_cork()
            else:
                self._cork_idle = 0
                if not self._cork_evt.is_set():
                    self._arm_flusher()
            st.seconds += time.perf_counter() - t0
        return nbytes

    def _flush_cork(self) -> None:
        """(under the TX lock) Write the corked headers in one control write,
        then each flow's corked payloads in one sendmsg (an iov of many
        ranges). ChannelError naming the oldest corked message when the peer
        is gone (and the send side is broken from then on)."""
        hdrs = b"".join(self._cork_hdr)
        n, (tag, nbytes) = self._cork_n, self._cork_first
        self._cork_hdr = []
        self._cork_n = 0
        self._cork_bytes = 0
        iovs = self._cork_iov
        self._cork_iov = [[] for _ in iovs]
        self.cork_flushes += 1
        try:
            self._write(hdrs)
            for f, iov in enumerate(iovs):
                if iov:
                    self._senders[f].send(np.array(iov, dtype=np.uint64).reshape(-1, 2))
        except (ConnectionError, DevmemError, OSError) as exc:
            why = exc.message if isinstance(exc, ChannelError) else str(exc)
            self._tx_broken = ChannelError(
                f"connection lost while sending {n} corked message(s) from tag {tag}: "
                f"0 of {nbytes} bytes of that one known sent ({why})",
                "check the peer's output; the messages were cut short",
                tag=tag,
                received=0,
                expected=nbytes,
            )
            raise self._tx_broken from None
        self._tx_last = time.perf_counter()
        self._rx_called = False

    def _try_flush_cork(self) -> None:
        """Flush the cork unless another thread is sending (it flushes, or the timer does)."""
        if self._tx_lock.acquire(blocking=False):
            try:
                if self._cork_n:
                    self._flush_cork()
            finally:
                self._tx_lock.release()

    def _arm_flusher(self) -> None:
        """(under the TX lock) Make sure the timer thread flushes the cork within CORK_DELAY_S."""
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=_cork_timer, args=(weakref.ref(self), self._cork_evt), name="devmemtcp-cork",
                daemon=True,
            )
            self._flusher.start()
            weakref.finalize(self, self._cork_evt.set)
        self._cork_evt.set()

    def _timer_flush(self) -> None:
        """(the timer thread, every CORK_DELAY_S while armed) Write the cork;
        after CORK_IDLE_TICKS ticks without a corked message, stop ticking
        (the next corked message arms it again: ticking while messages flow
        spares a thread wake-up per message)."""
        with self._tx_lock:
            if self._cork_n:
                self.cork_timer_flushes += 1
                self._cork_idle = 0
                with contextlib.suppress(ChannelError):
                    self._flush_cork()  # kept in _tx_broken: the next send or flush names it
            else:
                self._cork_idle += 1
                if self._cork_idle >= CORK_IDLE_TICKS:
                    self._cork_idle = 0
                    self._cork_evt.clear()

    def _device_payload(self, obj: Any) -> tuple[Any, DType, tuple[int, ...]]:
        """A device array as ``(uint8 device view, dtype, shape)``; a
        non-contiguous one is made contiguous on the device first."""
        assert self._dev is not None
        if _is_torch(obj):
            t = obj.detach()
            spec = _torch_dtype_spec(t)
            if not t.is_contiguous():
                t = t.contiguous()
            return self._dev.u8(t), spec, tuple(int(d) for d in t.shape)
        cp = self._dev.cp
        arr = cp.asarray(obj) if hasattr(obj, "__cuda_array_interface__") else cp.from_dlpack(obj)
        spec = DType.of_numpy(np.dtype(arr.dtype))
        if not arr.flags.c_contiguous:
            arr = cp.ascontiguousarray(arr)
        return self._dev.u8(arr), spec, tuple(int(d) for d in arr.shape)

    def _offset_in_tx(self, u8: np.ndarray) -> int | None:
        if not u8.shape[0]:
            return None
        addr = int(u8.__array_interface__["data"][0])
        off = addr - self._tx_addr
        if off >= 0 and off + u8.shape[0] <= self._tx_view.shape[0]:
            return off
        return None

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every send so far completed (the NIC read its bytes):
        after this, arrays from :meth:`empty` may be written again.
        Corked messages are written first (ChannelError when the peer is gone)."""
        self._check_tx_flush()
        for s in self._senders:
            s.flush(timeout)

    def _check_tx_flush(self) -> None:
        with self._tx_lock:
            if self._cork_n:
                self._flush_cork()

    # -- receiving -----------------------------------------------------------
    def _lost_rx(self, tag: int | None) -> Any:
        def make(why: str) -> ChannelError:
            if self._peer_closed and not self._ctl_error:
                return ChannelClosed(
                    f"{why}; no message{'' if tag is None else f' of tag {tag}'} is pending",
                    "the peer sent everything it had",
                    tag=tag,
                )
            return ChannelError(
                f"{why} while waiting for a message" + ("" if tag is None else f" of tag {tag}"),
                "check the peer's output",
                tag=tag,
            )

        return make

    def _take_held(self, tag: int | None) -> _Held | None:
        if tag is None:
            if not self._held_order:
                return None
            held = self._held_order.popleft()
            self._held[held.header.tag].popleft()
            return held
        q = self._held.get(tag)
        if not q:
            return None
        held = q.popleft()
        self._held_order.remove(held)
        return held

    def _next_header(
        self, tag: int | None, timeout: float | None = None
    ) -> tuple[_Held | None, MessageHeader | None]:
        """The next message for ``tag``: a held one, or the header of the next
        arriving message of that tag (messages of other tags before it are
        received and held). TimeoutError when none came within ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            held = self._take_held(tag)
            if held is not None:
                return held, None
            if not self._headers:
                ready, lost = (lambda: bool(self._headers)), self._lost_rx(tag)
                try:
                    if self._ledger.owed and self._rx_bulk:
                        # in a stream of large messages the next header comes first: the owed
                        # credit is only urgent to a sender short of it, which then waits this
                        # long more (small messages are corked, so their next header may not)
                        linger = time.monotonic() + CREDIT_LINGER_S
                        self._wait(ready, lost, linger if deadline is None else min(deadline, linger),
                                   expire_ok=True)
                    if not self._headers:
                        self._give_credit(force=True)
                        self._wait(ready, lost, deadline)
                except TimeoutError:
                    what = "no message" if tag is None else f"no message of tag {tag}"
                    raise TimeoutError(f"{what} arrived within {timeout} s") from None
            h = self._headers[0]
            if tag is None or h.tag == tag:
                return None, h
            self._headers.popleft()
            self._hold(h)

    def _hold(self, h: MessageHeader) -> _Held:
        """Receive message ``h`` nobody asked for yet: keep its frags (tokens
        held) while parked messages take at most half the credit window, else
        copy it out of the dma-buf into host memory and give its tokens back."""
        held = _Held(h)
        pages = message_pages(h.nbytes, h.unit, self._rx_bpp)
        # bytes read ahead share their batch with other messages: such a message is copied out
        if self._ledger.can_park(pages) and not self._ra_pending(h):
            self._ledger.park(pages)
            held.pages = pages
            try:
                self._receive(h, None, held)
            except BaseException:
                self._release_held(held)
                raise
            self.parked += 1
        else:
            held.data = self._spill(h.nbytes)
            self._receive(h, held.data, None)
            if self._dev is None:
                self._rx_stats.host_copy_bytes += h.nbytes
            self.spilled += 1
        self._held.setdefault(h.tag, deque()).append(held)
        self._held_order.append(held)
        return held

    def _release_held(self, held: _Held) -> None:
        for rx, batch in held.parts:
            rx.release(batch)
        held.parts = []
        if held.pages:
            self._ledger.unpark(held.pages)
            self._ledger.consumed(held.pages)
            held.pages = 0
            self._give_credit()

    def _spill(self, nbytes: int) -> Any:
        """Where a message copied out of the RX dma-buf goes (host, or device memory on a CUDA channel)."""
        return np.empty(nbytes, np.uint8) if self._dev is None else self._dev.scratch(nbytes)

    def _dest_out(self, out: Any, nbytes: int, tag: int) -> Any:
        """``out`` as the uint8 view a receive writes: a device view for a
        device array on a CUDA channel, else the host view (ChannelError if it does not fit)."""
        if self._dev is not None and is_device_array(out):
            return self._dev.destination(out, nbytes, tag)
        return _writable_view(out, nbytes, tag)

    def _dest_new(self, h: MessageHeader, like: str) -> tuple[Any, Any]:
        if self._dev is not None and like != "numpy":
            return self._dev.new(h, like)
        if like == "cupy":
            raise ChannelError("like='cupy' needs a CUDA channel", "open the channel with memory='cuda'")
        return _new_destination(h, like)

    def _dev_target(self, view: Any) -> tuple[Any, np.ndarray | None]:
        """(CUDA channel) the device view to gather into, and the host view to copy it to after."""
        assert self._dev is not None
        if hasattr(view, "__cuda_array_interface__"):
            return view, None
        return self._dev.scratch(view.shape[0]), view

    def _dev_finish(self, dv: Any, host: np.ndarray | None) -> None:
        assert self._dev is not None
        self._dev.sync()
        if host is not None:
            self._dev.to_host(dv, host)
            self._rx_stats.host_copy_bytes += host.shape[0]

    def _copy_held(self, held: _Held, dst: Any) -> None:
        if self._dev is not None:
            dv, host = self._dev_target(dst)
            if held.data is not None:
                if held.data.shape[0]:
                    dv[:] = held.data  # device to device
            else:
                pos = 0
                for _rx, batch in held.parts:
                    pos += self._gather_batch(batch, dv[pos:])
            self._dev_finish(dv, host)
            return
        if held.data is not None:
            dst[:] = held.data
            self._rx_stats.host_copy_bytes += held.header.nbytes
            return
        pos = 0
        for _rx, batch in held.parts:
            pos += self._gather_batch(batch, dst[pos:], held.header.nbytes)
        self._rx_stats.host_copy_bytes += pos

    def _gather_batch(self, batch: FragBatch, dst: Any, msg_bytes: int = 0) -> int:
        """``batch`` into ``dst``, part of a message of ``msg_bytes`` bytes that lands
        there (0: a spill, read back soon): a large one is streamed past the caches."""
        return gather_batch(self._rx_base, batch, dst, msg_bytes >= STREAM_GATHER_BYTES, self._rx_base_addr)

    def _receive(self, h: MessageHeader, dst: Any, held: _Held | None) -> None:
        """Read message ``h``'s chunks off the data flows, in order. With
        ``dst``: gather each batch into it and give its tokens back, and the
        chunk's credit once it is done. Else keep the batches in ``held``.

        Read-ahead: a small message (one chunk of at most READAHEAD_SMALL
        bytes) gathered into a host ``dst`` asks its recvmsg for the bytes of
        the small messages whose headers follow on the flow too; what is past
        its own bytes waits in the flow's queue (:class:`_Piece`, a
        :class:`~devmemtcp.channel.gather.FragCursor` over the batch) for
        those messages, and the batch's tokens go back once its last byte is
        taken (a frag straddling two messages is split by offset and length).
        ``held`` (dst None) is only used when the flows' queues hold none of
        the message's bytes (see :meth:`_ra_pending`)."""
        self._rx_seq += 1
        self._rx_bulk = h.nbytes > READAHEAD_SMALL
        converted = -1
        held_frags = 0
        got = 0
        st = self._rx_stats
        bpp = self._rx.bytes_per_page
        nbytes = h.nbytes
        ahead = dst is not None and self._dev is None and 0 < nbytes <= min(READAHEAD_SMALL, h.unit)
        try:
            for i in range(h.nchunks):
                f, start, ln = h.chunk(i)
                if f >= len(self._receivers):
                    raise ChannelError(
                        f"message tag {h.tag} names data flow {f}, this end has {len(self._receivers)}",
                        "the peer is broken",
                    )
                rx = self._receivers[f]
                q = self._ra[f]
                need = ln
                if q:
                    assert dst is not None, "a held message must not take read-ahead bytes"
                    k = self._take(q, need, dst, start)
                    need -= k
                    got += k
                if need:
                    low = self._low_water(f, need)
                    if low != self._lowat[f]:
                        self._rx_socks[f].setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, low)
                        self._lowat[f] = low
                while need:
                    if self._ledger.owed:
                        self._give_credit()
                    want = need + self._ahead(f) if ahead else need
                    try:
                        batch = rx.recv(want)
                    except (BlockingIOError, TimeoutError, InterruptedError):
                        # SO_RCVTIMEO: the mark was not reached (or nothing came) in time
                        self.rx_timeouts += 1
                        self._give_credit(force=True)
                        if self._lowat[f] > abi.PAGE_SIZE:
                            self._lowat_cap[f] = max(abi.PAGE_SIZE, self._lowat[f] // 2)
                            low = min(need, self._lowat_cap[f])
                            self._rx_socks[f].setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, low)
                            self._lowat[f] = low
                        continue
                    if batch is None:
                        raise ChannelError(
                            f"the peer closed data flow {f} in the middle of message tag {h.tag}: "
                            f"{got} of {nbytes} bytes received",
                            "check the peer's output; the message was cut short",
                            tag=h.tag,
                            received=got,
                            expected=nbytes,
                        )
                    readable = batch.readable.shape[0]
                    if readable and self.steering_errors == "raise":
                        self._steering_error(f, batch)
                    n = batch.nbytes + batch.linear_bytes + readable
                    st.frags += batch.token.shape[0]
                    if dst is not None:
                        at = start + ln - need
                        if n <= need:
                            self._gather_batch(batch, dst[at:], nbytes)
                            rx.release(batch)
                        else:  # read ahead: the rest waits in the flow's queue for the next messages
                            q.append(self._piece(rx, batch, n))
                            n = self._take(q, need, dst, at)
                    else:
                        assert held is not None
                        held.parts.append((rx, batch))
                        held_frags += batch.token.shape[0]
                        # linear and readable bytes live in the iov buffer, and a message must not
                        # hold more net_iovs than it was charged: copy the message out of the dma-buf
                        if batch.linear_bytes or readable or held_frags > held.pages:
                            data = self._spill(nbytes)
                            pos = 0
                            for _r, b in held.parts:
                                pos += self._gather_batch(b, data[pos:])
                            for r, b in held.parts:
                                r.release(b)
                            held.parts = []
                            # chunks up to this one are credited now, the rest as they complete
                            done = sum(chunk_pages(h.chunk(j)[2], bpp) for j in range(i + 1))
                            self._ledger.unpark(held.pages)
                            held.pages = 0
                            self._ledger.consumed(done)
                            held.data, dst, converted = data, data, i
                    need -= n
                    got += n
                if dst is not None and i > converted and self._ledger.consumed(chunk_pages(ln, bpp)):
                    self._give_credit()
        except ChannelError as exc:
            self._rx_broken = exc
            raise
        except (ConnectionError, OSError) as exc:
            self._rx_broken = ChannelError(
                f"data flow lost in the middle of message tag {h.tag}: {got} of {nbytes} bytes "
                f"received ({exc})",
                "check the peer's output; the message was cut short",
                tag=h.tag,
                received=got,
                expected=nbytes,
            )
            raise self._rx_broken from None
        st.bytes += nbytes
        st.messages += 1

    def _ahead(self, f: int) -> int:
        """Bytes of the small messages whose headers are read and whose
        payload comes next on flow ``f`` (up to the first larger message, at
        most the read-ahead limit): what a recvmsg may take beyond its own."""
        extra = 0
        cap = self._rx.readahead
        with self._cv:  # a thread waiting for credit may be appending headers
            hs = list(itertools.islice(self._headers, READAHEAD_HEADERS))
        for h in hs:
            n = h.nbytes
            if n > READAHEAD_SMALL or n > h.unit:
                break
            if h.first == f:
                extra += n
                if extra >= cap:
                    return cap
        return extra

    def _piece(self, rx: Any, batch: FragBatch, n: int) -> _Piece:
        """A batch read ahead, as a piece of its flow's queue: a cursor over
        its frags, or (linear or readable bytes, which live in the iov
        buffer only until the next recvmsg) a host copy, its tokens given back now."""
        if batch.linear_bytes or batch.readable.shape[0]:
            data = np.empty(n, np.uint8)
            self._gather_batch(batch, data)
            rx.release(batch)
            return _Piece(None, None, None, data, n)
        return _Piece(rx, batch, FragCursor(batch.offset, batch.size), None, n)

    def _take(self, q: deque[_Piece], n: int, dst: np.ndarray, at: int) -> int:
        """Copy up to ``n`` bytes from the front of a flow's read-ahead queue
        into ``dst[at:]``; a piece's tokens go back when its last byte is
        taken. Returns the bytes taken."""
        got = 0
        base = self._rx_base
        while got < n and q:
            pc = q[0]
            if pc.data is not None:
                k = min(n - got, pc.left)
                p = pc.data.shape[0] - pc.left
                dst[at + got : at + got + k] = pc.data[p : p + k]
                pc.left -= k
            else:
                assert pc.cur is not None
                k = pc.cur.take(base, n - got, dst, at + got)
                pc.left = pc.cur.left
            got += k
            if not pc.left:
                q.popleft()
                if pc.batch is not None:
                    pc.rx.release(pc.batch)
        return got

    def _ra_pending(self, h: MessageHeader) -> bool:
        """Whether a flow's read-ahead queue holds bytes of ``h`` (only small
        messages are read ahead, and only into their queue's front)."""
        return bool(h.nbytes) and bool(self._ra[h.first])

    def _low_water(self, f: int, need: int) -> int:
        """SO_RCVLOWAT for reading ``need`` more bytes of a chunk on flow ``f``:
        one recvmsg per chunk where the data is there, but at most an eighth of
        the socket's receive buffer and the flow's cap. tcp_set_rcvlowat
        (net/ipv4/tcp.c) grows the buffer and clamps the window to a mark that
        does not fit, and a window rounded below the mark never lets it be
        reached (seen here with 1 MiB on lo): the data flows also have
        SO_RCVTIMEO, and a receive that times out halves the flow's cap."""
        low = min(need, self._lowat_cap[f])
        if low > abi.PAGE_SIZE and low > self._rcvbuf[f] // 8:
            self._rcvbuf[f] = self._rx_socks[f].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            low = max(abi.PAGE_SIZE, min(low, self._rcvbuf[f] // 8))
        return low

    def _steering_error(self, f: int, batch: FragBatch) -> None:
        rule = self._rx.rules[f] if f < len(self._rx.rules) else None
        where = (
            f"ntuple rule {rule.location} (TCP to {rule.dst_ip}:{rule.dst_port} -> queue {rule.queue})"
            if rule is not None
            else "its ntuple rule"
        )
        raise ChannelError(
            f"data flow {f} landed on an ordinary RX queue of {self.ifname}: "
            f"{batch.readable.shape[0]} readable bytes where devmem frags were expected "
            "(flow steering error)",
            f"check {where} with `ethtool -n {self.ifname}`; another tool may have removed it",
        )

    def _check_rx(self, what: str) -> None:
        if self._closed:
            raise ChannelError(f"{what}() on a closed channel", "open a new channel")
        if self._rx_broken is not None:
            # the data flows are no longer at a message boundary: nothing after it can be trusted
            raise ChannelError(
                f"{what}() after the channel's receive side failed: {self._rx_broken.message}",
                "close this channel and open a new one",
                tag=self._rx_broken.tag,
                received=self._rx_broken.received,
                expected=self._rx_broken.expected,
            )

    def _recv_msg(self, tag: int | None, make: Any, timeout: float | None = None) -> Any:
        """Receive the next message of ``tag`` into ``make(header)`` -> (result, uint8 view)."""
        self._check_rx("recv")
        t0 = time.perf_counter()
        self._rx_called = True
        if self._cork_n:
            self._try_flush_cork()
        with self._rx_lock:
            held, h = self._next_header(tag, timeout)
            if held is not None:
                try:
                    res, view = make(held.header)
                except BaseException:
                    self._put_back(held)
                    raise
                self._copy_held(held, view)
                self._release_held(held)
            else:
                assert h is not None
                res, view = make(h)  # raises before any payload is read: the message stays receivable
                self._headers.popleft()
                if self._dev is None:
                    self._receive(h, view, None)
                    self._rx_stats.host_copy_bytes += h.nbytes
                else:
                    dv, host = self._dev_target(view)
                    self._receive(h, dv, None)
                    self._dev_finish(dv, host)
            self._rx_stats.seconds += time.perf_counter() - t0
            return res

    def _put_back(self, held: _Held) -> None:
        self._held.setdefault(held.header.tag, deque()).appendleft(held)
        order = list(self._held_order)
        order.append(held)
        order.sort(key=lambda x: x.header.seq)
        self._held_order = deque(order)

    def recv(
        self, *, tag: int | None = None, out: Any = None, like: str = "numpy", timeout: float | None = None
    ) -> Any:
        """Receive the next message (of ``tag``; None: of any tag) and return it.

        Without ``out``: a new array of the sender's dtype and shape (``like``
        "numpy", or "torch" for a CPU tensor; bfloat16 needs "torch"). With
        ``out``: the bytes are written into it (writable, contiguous, exactly
        the message's nbytes; any dtype) and ``out`` is returned. ``out`` may
        also be a callable: it gets the message's
        :class:`~devmemtcp.channel.header.MessageHeader` (``tag``, ``nbytes``,
        ``dtype``, ``shape``) before any payload is read and returns the
        destination (to match a message to a posted receive). Messages of
        other tags that arrive first are kept for later recv calls (their frags
        in the RX dma-buf while there is room, else copied out).

        CUDA memory (``memory="cuda:N"``): the frags are gathered on device N
        (one kernel launch per batch, :mod:`devmemtcp.channel.device`).
        ``like="torch"`` gives a CUDA tensor on device N (needs torch with
        CUDA), ``like="cupy"`` a CuPy array, ``like="numpy"`` a host array
        (gathered on the device, then one device-to-host copy, counted in
        ``stats["rx"]["host_copy_bytes"]``). ``out`` may be a CUDA tensor, a
        CuPy array, anything with ``__cuda_array_interface__`` or a CUDA
        DLPack device (no host copy), or host memory (one copy as above).

        Raises ChannelError before any payload is consumed when ``out`` does
        not fit (the message stays receivable), ChannelError naming the tag
        and the bytes received of the bytes expected when the peer goes away
        mid-message, ChannelClosed when the peer closed the channel and no
        message is pending, TimeoutError when no message started within
        ``timeout`` seconds (None: wait forever; nothing is consumed then, and
        a message that started is read to its end)."""
        if callable(out):
            choose = out

            def make(h: MessageHeader) -> tuple[Any, Any]:
                dest = choose(h)
                return dest, self._dest_out(dest, h.nbytes, h.tag)

            return self._recv_msg(tag, make, timeout)
        if out is not None:
            return self._recv_msg(tag, lambda h: (out, self._dest_out(out, h.nbytes, h.tag)), timeout)
        return self._recv_msg(tag, lambda h: self._dest_new(h, like), timeout)

    def recv_into(self, out: Any, *, tag: int | None = None, timeout: float | None = None) -> int:
        """Receive the next message (of ``tag``) into ``out``; returns its
        bytes. ``out``: writable, contiguous, exactly the message's nbytes
        (numpy array, torch CPU tensor or writable buffer; on a CUDA channel
        also a device array, see :meth:`recv`), else ChannelError
        before anything is consumed (the message stays receivable).
        ``timeout`` as in :meth:`recv`."""
        if type(out) is np.ndarray and self._headers and self._dev is None:
            n = self._recv_small(out, tag)
            if n >= 0:
                return n
        box: list[int] = []

        def make(h: MessageHeader) -> tuple[Any, Any]:
            view = self._dest_out(out, h.nbytes, h.tag)
            box.append(h.nbytes)
            return out, view

        self._recv_msg(tag, make, timeout)
        return box[-1]

    def _recv_small(self, out: np.ndarray, tag: int | None) -> int:
        """The fast path of :meth:`recv_into`: the next message (no held one
        waiting) is small, of ``tag``, and its bytes are in the front piece of
        its flow's read-ahead queue; ``out`` a contiguous writable numpy array
        of its size. One copy by the cursor, integer bookkeeping. Returns its
        bytes, or -1 (nothing consumed) for the general path."""
        if self._closed or self._rx_broken is not None:
            return -1
        t0 = time.perf_counter()
        self._rx_called = True
        self._rx_bulk = False
        if self._cork_n:
            self._try_flush_cork()
        with self._rx_lock:
            hs = self._headers
            if not hs or self._held_order:
                return -1
            h = hs[0]
            n = h.nbytes
            if (tag is not None and h.tag != tag) or not 0 < n <= READAHEAD_SMALL or n > h.unit:
                return -1
            q = self._ra[h.first]
            if not q:
                return -1
            pc = q[0]
            flags = out.flags
            if pc.cur is None or pc.left < n or out.nbytes != n:
                return -1
            if not (flags.c_contiguous and flags.writeable):
                return -1
            if self._out_ref() is not out:  # the address of the last destination, by a weak reference
                self._out_ref = weakref.ref(out)
                self._out_addr = out.__array_interface__["data"][0]
            if pc.cur.take_to(self._rx_base_addr, self._rx_base_len, n, self._out_addr, n) < 0:
                return -1  # no compiled helper: the general path
            hs.popleft()
            self._rx_seq += 1
            pc.left = pc.cur.left
            if not pc.left:
                q.popleft()
                pc.rx.release(pc.batch)
            led = self._ledger
            led.owed += chunk_pages(n, self._rx_bpp)
            if led.owed >= self._flush_at:
                self._give_credit()
            st = self._rx_stats
            st.bytes += n
            st.messages += 1
            st.host_copy_bytes += n
            st.seconds += time.perf_counter() - t0
        return n

    @contextlib.contextmanager
    def recv_frags(self, tag: int | None = None, timeout: float | None = None) -> Iterator[Message]:
        """Zero-copy receive: ``with ch.recv_frags() as msg:`` holds the next
        message's frags in the RX dma-buf (``msg.frags``, a FragBatch) and gives
        their tokens back when the block ends. The message must fit half the
        credit window (ChannelError before anything is consumed otherwise; use
        :meth:`recv`). A small message whose bytes were read ahead with an
        earlier one's (they share a recvmsg's frags) is copied out instead:
        ``msg.frags`` is empty and ``msg.host`` holds its bytes.
        ``timeout`` as in :meth:`recv`."""
        self._check_rx("recv_frags")
        self._rx_called = True
        if self._cork_n:
            self._try_flush_cork()
        with self._rx_lock:
            held, h = self._next_header(tag, timeout)
            if held is None:
                assert h is not None
                pages = message_pages(h.nbytes, h.unit, self._rx_bpp)
                if not self._ledger.can_park(pages):
                    raise ChannelError(
                        f"message tag {h.tag} of {h.nbytes} bytes does not fit half the credit window "
                        f"({self._ledger.window // 2 - self._ledger.parked} pages free of "
                        f"{self._ledger.window})",
                        "receive it with recv()/recv_into(), or use a larger dmabuf_size",
                        tag=h.tag,
                    )
                self._headers.popleft()
                if self._ra_pending(h):
                    # its bytes were read ahead with an earlier message's: a copy, not frags
                    held = _Held(h, data=self._spill(h.nbytes))
                    self._receive(h, held.data, None)
                    self._rx_stats.host_copy_bytes += h.nbytes
                else:
                    held = _Held(h, pages=pages)
                    self._ledger.park(pages)
                    try:
                        self._receive(h, None, held)
                    except BaseException:
                        self._release_held(held)
                        raise
        try:
            yield Message(self, held)
        finally:
            with self._rx_lock:
                self._release_held(held)

    @property
    def pending(self) -> int:
        """Messages received and held for a later recv (by tag)."""
        return len(self._held_order)

    def can_send(self, nbytes: int) -> bool:
        """True when a message of ``nbytes`` bytes has all its credit now: a
        :meth:`send` of it does not wait for the receiver to consume anything
        (it still waits for the kernel to take the bytes)."""
        cost = message_pages(nbytes, self._unit, self._peer_bpp)
        return self._tx_broken is None and not self._closed and self._credit.can_take(cost)

    # -- stats and lifetime --------------------------------------------------
    @property
    def stats(self) -> dict[str, Any]:
        """Counters per direction: ``{"rx": {...}, "tx": {...}, ...}``.

        Each direction: ``bytes`` (payload), ``messages``, ``frags`` (devmem
        frags received; PAGE_SIZE pieces sent), ``host_copy_bytes`` (bytes the
        CPU copied on this host for the direction: gather into the
        destination, staging into the TX dma-buf, spills; on a CUDA channel
        only copies between host and device memory: a host destination or
        source), ``seconds`` (time
        spent in send/recv calls), ``gbps`` (bytes * 8 / seconds / 1e9);
        rx also ``release_syscalls`` (SO_DEVMEM_DONTNEED calls) and
        ``flow_steering_errors`` (readable bytes on data flows). Also
        ``credit_waits`` (sends that waited for credit), ``credit_frames`` (CREDIT
        frames this end wrote), ``cork_flushes`` /
        ``cork_timer_flushes`` (writes of the send cork, by the timer), ``rx_timeouts``
        (receives that hit SO_RCVTIMEO), ``parked`` / ``spilled`` (messages
        held in the dma-buf / copied out of it), ``pending``."""

        def d(s: _DirStats) -> dict[str, Any]:
            return {
                "bytes": s.bytes,
                "messages": s.messages,
                "frags": s.frags,
                "host_copy_bytes": s.host_copy_bytes,
                "seconds": round(s.seconds, 6),
                "gbps": round(s.bytes * 8 / s.seconds / 1e9, 4) if s.seconds > 0 else 0.0,
            }

        rx = d(self._rx_stats)
        rx["release_syscalls"] = sum(r.stats.release_syscalls for r in self._receivers)
        rx["tokens_released"] = sum(r.stats.tokens_released for r in self._receivers)
        rx["flow_steering_errors"] = sum(r.stats.flow_steering_errors for r in self._receivers)
        tx = d(self._tx_stats)
        tx["sendmsg_calls"] = sum(s.stats.sendmsg_calls for s in self._senders)
        return {
            "rx": rx,
            "tx": tx,
            "credit_waits": self.credit_waits,
            "credit_frames": self.credit_frames,
            "cork_flushes": self.cork_flushes,
            "cork_timer_flushes": self.cork_timer_flushes,
            "rx_timeouts": self.rx_timeouts,
            "parked": self.parked,
            "spilled": self.spilled,
            "pending": self.pending,
            "streams_rx": len(self._receivers),
            "streams_tx": len(self._senders),
            "stripe_unit": self._unit,
            "backend": self.backend.name,
        }

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Tell the peer (CLOSE), wait briefly for outstanding sends, give
        back every token, close the flows, unbind the TX dma-buf and undo the
        NIC set-up this end made (the listener keeps its own until
        :meth:`Listener.close`). Idempotent."""
        if self._closed:
            return
        with self._tx_lock, contextlib.suppress(ChannelError):
            if self._cork_n:
                self._flush_cork()
        with contextlib.suppress(ChannelError, OSError):
            self._write(encode_frame(FrameType.CLOSE))
        for s in self._senders:
            with contextlib.suppress(DevmemError, OSError):
                s.close(timeout=2.0)
        with self._rx_lock:
            for held in list(self._held_order):
                for rx, batch in held.parts:
                    with contextlib.suppress(DevmemError, OSError):
                        rx.release(batch)
            self._held_order.clear()
            self._held.clear()
            for q in self._ra:
                for pc in q:
                    if pc.batch is not None:
                        with contextlib.suppress(DevmemError, OSError):
                            pc.rx.release(pc.batch)
                q.clear()
        self._closed = True
        self._cork_evt.set()  # the timer thread ends
        self._finalizer()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Channel ifname={self.ifname} backend={self.backend.name} rx_flows={len(self._receivers)} "
            f"tx_flows={len(self._senders)}{' closed' if self._closed else ''}>"
        )
