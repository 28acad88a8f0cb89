"""The devmem Channel transport of the process group (see :mod:`devmemtcp.torch.transport`).

Strategy: a devmem Listener serves one channel at a time (its RX dma-buf
and queues belong to that channel), and a rank talks to up to size - 1
peers, opened lazily. So each rank listens on one ordinary TCP rendezvous
socket on its data address (published in the c10d store); a peer that
wants a channel connects there and asks; the rank then opens a devmem
Listener on an ephemeral port just for that peer (setting up its NIC for
the data flows), answers the port, and accepts the channel. The NIC set-up
of both the listener and the channel is undone by :meth:`ChannelLink.close`.

The rendezvous speaks one JSON line each way: ``{"v": 1}`` ->
``{"port": P}`` or ``{"error": "..."}``; and ``{"v": 1, "want": R}`` ->
``{"ok": true}`` when rank R (lower) needs the link before this rank did.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from devmemtcp.errors import DevmemError
from devmemtcp.memory.base import host_array
from devmemtcp.torch.config import Options, parse_queues

log = logging.getLogger("devmemtcp.torch")

RENDEZVOUS_VERSION = 1
_announced = False
_announce_lock = threading.Lock()


def _announce(ch: Any) -> None:
    """Say once per process which backend the channels run on (INFO)."""
    global _announced
    with _announce_lock:
        if _announced:
            return
        _announced = True
    name = getattr(getattr(ch, "backend", None), "name", "?")
    reason = getattr(ch, "backend_reason", "")
    if name == "emulated":
        log.info("devmem backend: no devmem NIC on %s, using the emulated NIC (%s)", ch.ifname, reason)
    else:
        log.info("devmem backend: %s backend on %s (%s)", name, ch.ifname, reason)


def _read_line(sock: socket.socket, limit: int = 4096) -> dict[str, Any]:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("the rendezvous peer closed the connection")
        buf += chunk
        if len(buf) > limit:
            raise ConnectionError("rendezvous line too long")
    out: dict[str, Any] = json.loads(buf.decode())
    return out


#: host views kept (one per buffer a job sends from or receives into); the oldest goes first
HOST_VIEWS_MAX = 256
_views: dict[tuple[int, int], np.ndarray] = {}
_views_lock = threading.Lock()


def _host_view(t: torch.Tensor) -> Any:
    """The bytes of a 1-D contiguous torch.uint8 CPU tensor (the Link's payloads
    and destinations) as a writable numpy uint8 array; a device tensor as itself.

    One array per (address, length), made once: a job sends from and receives
    into the same tensors again and again. A dict lookup replaces the array
    ``t.numpy()`` built per message, and the Channel's small-message paths
    reuse the address they remember for the same array (by weak reference).
    The array owns nothing (:func:`~devmemtcp.memory.base.host_array`), so it keeps no
    tensor alive. It is only handed out for a live tensor covering exactly
    those bytes, so it never outlives what it points at while in use."""
    if not t.is_cpu:
        return t
    if t.dtype is not torch.uint8 or not t.is_contiguous():
        return t.detach().numpy()  # outside the Link's contract: the tensor's own view, made per call
    key = (t.data_ptr(), t.numel())
    v = _views.get(key)
    if v is None:
        v = host_array(*key)
        with _views_lock:
            if len(_views) >= HOST_VIEWS_MAX:
                del _views[next(iter(_views))]
            _views[key] = v
    return v


class ChannelLink:
    """One Channel (and, on the accepting side, the Listener that owns its RX set-up)."""

    def __init__(self, ch: Any, listener: Any = None) -> None:
        self.ch = ch
        self.listener = listener
        self._closed = False
        self._close_lock = threading.Lock()

    def send(self, payload: torch.Tensor, tag: int) -> None:
        # A host tensor goes as its numpy view (no copy): the Channel's torch path
        # works out a dtype spec per message, and the payload is plain bytes here.
        self.ch.send(_host_view(payload), tag=tag)

    def ready_to_send(self, nbytes: int) -> bool:
        return bool(self.ch.can_send(nbytes))

    def recv_next(self, choose: Callable[[int, int], torch.Tensor], timeout: float) -> bool:
        # The header decides the destination (Channel.recv with a callable out): the
        # process group matches it to a posted receive, and the payload is gathered
        # straight into that tensor. The timeout lets go of the Channel between
        # messages, so a close from another thread never waits for a message.
        try:
            self.ch.recv(out=lambda h: _host_view(choose(int(h.tag), int(h.nbytes))), timeout=timeout)
        except TimeoutError:
            return False
        return True

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.ch.stats)

    def close(self) -> None:
        """Close the channel and the listener that owns its RX set-up (undoing the NIC
        changes). A second call waits for a close in progress (in another thread)."""
        with self._close_lock:
            if self._closed:
                return
            try:
                self.ch.close()
            finally:
                if self.listener is not None:
                    self.listener.close()
                self._closed = True


class ChannelAcceptor:
    """The rendezvous socket of one rank; :meth:`accept` opens a devmem
    Listener for each peer that asks and returns the accepted channel."""

    def __init__(self, transport: ChannelTransport) -> None:
        self.t = transport
        o = transport.options
        assert o.addr is not None
        fam = socket.AF_INET6 if ":" in o.addr else socket.AF_INET
        self.sock = socket.create_server((o.addr, 0), family=fam)
        self.address: dict[str, Any] = {"addr": o.addr, "port": int(self.sock.getsockname()[1]),
                                        "ifname": o.ifname, "streams": o.streams}

    def accept(self, timeout: float) -> ChannelLink | int | None:
        self.sock.settimeout(timeout)
        try:
            s, _ = self.sock.accept()
        except TimeoutError:
            return None
        with s:
            s.settimeout(self.t.handshake_timeout)
            req = _read_line(s)
            if req.get("v") != RENDEZVOUS_VERSION:
                s.sendall((json.dumps({"error": f"rendezvous version {req.get('v')} is not "
                                       f"{RENDEZVOUS_VERSION}"}) + "\n").encode())
                return None
            if "want" in req:
                s.sendall(b'{"ok": true}\n')
                return int(req["want"])
            try:
                lis = self.t.listen_channel()
            except Exception as exc:
                msg, hint = (exc.message, exc.hint) if isinstance(exc, DevmemError) else (str(exc), None)
                s.sendall((json.dumps({"error": msg, "hint": hint}) + "\n").encode())
                raise
            try:
                s.sendall((json.dumps({"port": int(lis.port)}) + "\n").encode())
                ch = lis.accept(timeout=self.t.handshake_timeout)
            except BaseException:
                lis.close()
                raise
        _announce(ch)
        return ChannelLink(ch, lis)

    def close(self) -> None:
        self.sock.close()


class ChannelTransport:
    """Links between ranks over devmem Channels (devmemtcp.listen / connect)."""

    name = "channel"

    def __init__(self, options: Options, handshake_timeout: float = 60.0) -> None:
        self.options = options
        self.handshake_timeout = handshake_timeout
        self._queue_spec = parse_queues(options.queues)
        self._next_queue = 0
        self._lock = threading.Lock()

    def _queues(self) -> list[int] | None:
        """The next ``streams`` queues of DEVMEMTCP_QUEUES for a new channel end
        (each channel end receives on queues of its own), or None: the Channel picks."""
        if self._queue_spec is None:
            return None
        start, count = self._queue_spec
        n = self.options.streams or 1
        with self._lock:
            first = self._next_queue
            self._next_queue += n
        if first + n > count:
            raise DevmemError(
                f"DEVMEMTCP_QUEUES={self.options.queues} has {count} queue(s); this rank needs {n} per peer "
                f"and already uses {first}",
                "give START:COUNT with COUNT >= streams x (peers), or leave DEVMEMTCP_QUEUES unset")
        return list(range(start + first, start + first + n))

    def _kwargs(self) -> dict[str, Any]:
        o = self.options
        kw: dict[str, Any] = {"ifname": o.ifname, "backend": o.backend or "auto",
                              "memory": o.memory or "host",
                              "streams": o.streams or 1, "queues": self._queues()}
        if o.dmabuf_size:
            kw["dmabuf_size"] = o.dmabuf_size
        if o.tx_dmabuf_size:
            kw["tx_dmabuf_size"] = o.tx_dmabuf_size
        return kw

    def listen(self) -> ChannelAcceptor:
        return ChannelAcceptor(self)

    def listen_channel(self) -> Any:
        import devmemtcp

        assert self.options.addr is not None
        return devmemtcp.listen(self.options.addr, 0, **self._kwargs())

    def ask(self, address: dict[str, Any], rank: int, timeout: float) -> None:
        addr, port = str(address["addr"]), int(address["port"])
        with socket.create_connection((addr, port), timeout=min(timeout, self.handshake_timeout)) as s:
            s.sendall((json.dumps({"v": RENDEZVOUS_VERSION, "want": rank}) + "\n").encode())
            _read_line(s)

    def connect(self, address: dict[str, Any], timeout: float) -> ChannelLink:
        import devmemtcp

        addr, port = str(address["addr"]), int(address["port"])
        with socket.create_connection((addr, port), timeout=min(timeout, self.handshake_timeout)) as s:
            s.sendall((json.dumps({"v": RENDEZVOUS_VERSION}) + "\n").encode())
            s.settimeout(max(timeout, self.handshake_timeout))
            rep = _read_line(s)
        if "error" in rep:
            raise DevmemError(f"the peer at {addr}:{port} could not open a devmem listener: {rep['error']}",
                              rep.get("hint") or "check that peer's log and its NIC set-up "
                              "(devmemtcp doctor IFNAME)")
        kw = self._kwargs()
        ch = devmemtcp.connect(addr, int(rep["port"]), timeout=min(timeout, self.handshake_timeout), **kw)
        _announce(ch)
        with contextlib.suppress(Exception):
            log.debug("devmem channel to %s:%s up: %s", addr, rep["port"], ch)
        return ChannelLink(ch)
