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
(:mod:`devmemtcp.channel.credits`). The receiver reads every chunk with
recvmsg calls that stop at the chunk's end (so a frag never holds two
messages), gathers the frags into the destination
(:mod:`devmemtcp.channel.gather`) and gives their tokens back in batches.

Limits, each with its reason: a Listener's RX dma-buf and queues serve one
accepted channel at a time (its rules steer the data ports, whoever
connects); every message costs each end a fixed amount of Python (a header,
a sendmsg, a recvmsg and its token bookkeeping), so small messages run far
below a plain socket's rate (see ``devmemtcp bench tensor``); a thread
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
from devmemtcp.channel.credits import CreditLedger, CreditWindow, chunk_pages, max_unit, plan_window
from devmemtcp.channel.device import DeviceSide, device_kind, is_device_array
from devmemtcp.channel.gather import gather_batch
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
    encode_credit,
    encode_frame,
    encode_json,
    encode_msg,
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
HANDSHAKE_TIMEOUT = 10.0
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
    side.window = plan_window(pool_pages, streams, side.release_threshold)
    side.bytes_per_page = _bytes_per_page(be, ifname, socket.AF_INET6 if ":" in local_ip else socket.AF_INET)
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
        what = "too small" if size < nbytes else "larger than the message"
        raise ChannelError(
            f"out holds {size} bytes, {what}: the message (tag {tag}) has {nbytes} bytes",
            f"pass a destination of exactly {nbytes} bytes; the message stays receivable",
            tag=tag,
            expected=nbytes,
        )
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
        pool_pages = rx.dmabuf.size // abi.PAGE_SIZE
        self._receivers: list[Receiver] = [
            stack.enter_context(
                Receiver(backend, s, rx.binding, release_threshold=rx.release_threshold, max_held=pool_pages)
            )
            for s in rx_socks
        ]
        self._lowat = [1] * len(rx_socks)
        self._rcvbuf = [0] * len(rx_socks)
        self._lowat_cap = [RCVLOWAT_CAP] * len(rx_socks)
        # a receive timeout on the data flows: a low-water mark the window cannot reach returns
        # what is there after RCVTIMEO_S instead of waiting forever (then the mark is halved)
        tv = struct.pack("ll", 0, int(RCVTIMEO_S * 1e6))
        for sk in rx_socks:
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        self._senders: list[Sender] = [stack.enter_context(Sender(backend, s, tx_binding)) for s in tx_socks]
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
        # a chunk fits the peer's credit (a quarter of its window) and the staging ring
        self._unit = min(max_unit(self._credit.window, self._peer_bpp), self._ring)
        self._cv = threading.Condition()
        self._reading = False
        self._ctl_eof = False
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
        self._rx_seq = 0
        self._rr = 0
        self._tx_stats = _DirStats()
        self._rx_stats = _DirStats()
        self.credit_waits = 0
        self.rx_timeouts = 0
        self._rx_broken: ChannelError | None = None
        self._tx_broken: ChannelError | None = None
        self.spilled = 0
        self.parked = 0
        self._closed = False
        self._finalizer = weakref.finalize(self, stack.close)
        # frames that came in the same segment as the handshake's last one (a MSG sent right
        # after connect) are in the decoder already: dispatch them now, not after the next read
        while (fr := self._dec.next()) is not None:
            self._dispatch(*fr)

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

    def _wait(self, ready: Any, lost: Any, deadline: float | None = None) -> None:
        """Read control frames until ``ready()`` holds (checked under the
        condition lock); ``lost(reason)`` builds the error raised when the
        control connection ends first; TimeoutError once ``deadline``
        (time.monotonic) passes. One thread reads at a time."""
        while True:
            with self._cv:
                while True:
                    if ready():
                        return
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
                        raise TimeoutError("timed out")
                    if not self._reading:
                        self._reading = True
                        break
                    self._cv.wait(left)
            data = b""
            err: OSError | None = None
            try:
                if left is None or select.select([self._ctl], [], [], left)[0]:
                    data = self._ctl.recv(1 << 16)
                else:
                    data = None  # type: ignore[assignment]
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
                        while (fr := self._dec.next()) is not None:
                            self._dispatch(*fr)
                finally:
                    self._cv.notify_all()

    def _give_credit(self, force: bool = False) -> None:
        led = self._ledger
        if led.owed and (force or led.owed >= led.flush_at):
            frame = encode_frame(FrameType.CREDIT, encode_credit(led.take_owed()))
            if self._ctl_eof or self._ctl_error is not None:
                return  # the peer is gone: what it sent is still read to the end (or the cut)
            try:
                self._write(frame)
            except ChannelError:
                # reported by the data flow's end (which names the message) or the next control read
                with self._cv:
                    self._ctl_eof = True

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
        kernel; ``obj`` may be reused at once (except an ``empty()`` array,
        see :meth:`flush`).

        Raises ChannelError naming the tag and the bytes sent of the message's
        bytes when the peer goes away, ChannelError for objects that cannot be
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
            st.seconds += time.perf_counter() - t0
        return nbytes

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
        after this, arrays from :meth:`empty` may be written again."""
        for s in self._senders:
            s.flush(timeout)

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
                self._give_credit(force=True)
                try:
                    self._wait(lambda: bool(self._headers), self._lost_rx(tag), deadline)
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
        pages = sum(chunk_pages(h.chunk(i)[2], self._rx.bytes_per_page) for i in range(h.nchunks))
        if self._ledger.can_park(pages):
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
            pos += self._gather_batch(batch, dst[pos:])
        self._rx_stats.host_copy_bytes += pos

    def _gather_batch(self, batch: FragBatch, dst: Any) -> int:
        return gather_batch(self._rx_base, batch, dst)

    def _receive(self, h: MessageHeader, dst: Any, held: _Held | None) -> None:
        """Read message ``h``'s chunks off the data flows, in order. With
        ``dst``: gather each batch into it and give its tokens back, and the
        chunk's credit once it is done. Else keep the batches in ``held``."""
        self._rx_seq += 1
        converted = -1
        held_frags = 0
        got = 0
        st = self._rx_stats
        bpp = self._rx.bytes_per_page
        nbytes = h.nbytes
        try:
            for i in range(h.nchunks):
                f, start, ln = h.chunk(i)
                if f >= len(self._receivers):
                    raise ChannelError(
                        f"message tag {h.tag} names data flow {f}, this end has {len(self._receivers)}",
                        "the peer is broken",
                    )
                rx = self._receivers[f]
                need = ln
                low = self._low_water(f, need)
                if low != self._lowat[f]:
                    self._rx_socks[f].setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, low)
                    self._lowat[f] = low
                while need:
                    if self._ledger.owed:
                        self._give_credit()
                    try:
                        batch = rx.recv(need)
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
                        self._gather_batch(batch, dst[start + ln - need :])
                        rx.release(batch)
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
        box: list[int] = []

        def make(h: MessageHeader) -> tuple[Any, Any]:
            view = self._dest_out(out, h.nbytes, h.tag)
            box.append(h.nbytes)
            return out, view

        self._recv_msg(tag, make, timeout)
        return box[-1]

    @contextlib.contextmanager
    def recv_frags(self, tag: int | None = None, timeout: float | None = None) -> Iterator[Message]:
        """Zero-copy receive: ``with ch.recv_frags() as msg:`` holds the next
        message's frags in the RX dma-buf (``msg.frags``, a FragBatch) and gives
        their tokens back when the block ends. The message must fit half the
        credit window (ChannelError before anything is consumed otherwise; use
        :meth:`recv`). ``timeout`` as in :meth:`recv`."""
        self._check_rx("recv_frags")
        with self._rx_lock:
            held, h = self._next_header(tag, timeout)
            if held is None:
                assert h is not None
                pages = sum(chunk_pages(h.chunk(i)[2], self._rx.bytes_per_page) for i in range(h.nchunks))
                if not self._ledger.can_park(pages):
                    raise ChannelError(
                        f"message tag {h.tag} of {h.nbytes} bytes does not fit half the credit window "
                        f"({self._ledger.window // 2 - self._ledger.parked} pages free of "
                        f"{self._ledger.window})",
                        "receive it with recv()/recv_into(), or use a larger dmabuf_size",
                        tag=h.tag,
                    )
                self._headers.popleft()
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
        ``credit_waits`` (sends that waited for credit), ``rx_timeouts``
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
        self._closed = True
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
