# The methods below have the signatures the PyProcessGroup trampoline and distributed_c10d
# call them with (C++ Backend style); torch's stubs describe the public overloads instead.
# mypy: disable-error-code="override"
"""The "devmem" torch.distributed process group.

Strategy:
- A Python subclass of ``torch.distributed.ProcessGroup`` (the extension
  point of pytorch's test/distributed/test_c10d_pypg.py; torchft's
  process_group.py wraps Gloo the same way). ``distributed_c10d`` calls its
  methods from Python; DDP's reducer and the functional collectives call
  them from C++ through the ``PyProcessGroup`` trampoline.
- Bytes move on one link (a devmem Channel) per pair of ranks, opened on
  first use: the higher rank connects to the lower rank's listener, whose
  address, port and interface it reads from the c10d store, and introduces
  itself with a hello message. Every operation is split into parts (one send
  or one receive per peer); a sender thread per link sends its queue in
  order; a reader thread per link takes every arriving message and matches
  it to a posted receive by (peer, kind, tag), so a message nobody waits for
  yet is kept (copied aside) rather than stalling the link: two ranks
  sending large tensors to each other never deadlock.
- Fewer thread switches, since each costs as much CPU as the bookkeeping of
  a message: a send of at most EAGER_BYTES whose credit is there, on a link
  with nothing queued, goes out in the calling thread (eager, as in MPI; it
  never waits for the peer's application). A thread waiting for a receive
  (DevmemWork.wait) reads that peer's link itself (leader/follower: the
  link's reader thread stands aside while a waiter reads and for
  _LEAD_GRACE_S after, and reads whatever comes when nobody waits). A Ctrl-C
  in either leaves the stream to that peer in an unknown state, so it fails
  that link, naming the interruption.
- The Channel tag (u64) carries kind (4 bits: p2p, collective, hello), a
  dtype code (8 bits) and the user's tag or the collective's sequence
  number (32 bits), so the receiver checks dtype and size before it writes
  a byte and names the sender in the error.
- Reductions and barrier go to an inner Gloo group built from the same
  store under the prefix ``gloo/``: a reduction needs arithmetic next to
  the data, and devmem moves data, it does not compute on it.
- A watchdog fails every part past the group's timeout, naming the peer;
  a link whose peer closes or resets fails every part that depends on it at
  once. shutdown() (destroy_process_group), atexit and SIGTERM close every
  channel, which undoes its NIC set-up.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import logging
import os
import secrets
import signal
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from devmemtcp.errors import ChannelError, DevmemError
from devmemtcp.torch.config import Options, resolve
from devmemtcp.torch.transport import Link, Transport
from devmemtcp.torch.work import DevmemTorchError, DevmemWork

log = logging.getLogger("devmemtcp.torch")

BACKEND_NAME = "devmem"

KIND_P2P = 1
KIND_COLL = 2
KIND_HELLO = 3

_TAG_MASK = 0xFFFFFFFF
HELLO_VERSION = 1

# Copying an unmatched message aside costs little below this size, so the
# reader only waits (briefly) for its receive to be posted above it.
_GRACE_BYTES = 256 * 1024
# A reader lets go of its link this often between messages (closing it then never waits).
_READER_POLL_S = 0.5
# How long shutdown waits for each link's close (NIC set-up undone).
CLOSE_WAIT_S = 20.0
_GRACE_S = 0.02
# A send of at most this many bytes whose credit is there goes out in the calling
# thread (an eager send): it never waits for the peer's application.
EAGER_BYTES = 4 << 20
# After a waiting thread stops reading a link itself, its reader thread leaves the
# link alone this long: the next blocking receive usually comes sooner and reads it.
_LEAD_GRACE_S = 0.002
# How often a reader thread looks whether the leader of its link has gone.
_LEAD_IDLE_S = 0.02


def _dtypes() -> list[torch.dtype]:
    names = ["float32", "float64", "float16", "bfloat16", "complex64", "complex128", "int8", "int16",
             "int32", "int64", "uint8", "bool", "uint16", "uint32", "uint64", "complex32",
             "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
             "float4_e2m1fn_x2", "qint8", "quint8", "qint32"]
    out = []
    for n in names:
        dt = getattr(torch, n, None)
        if isinstance(dt, torch.dtype):
            out.append(dt)
    return out


#: Wire codes of torch dtypes (index in this list); both ends run the same table.
DTYPES: list[torch.dtype] = _dtypes()
_CODE = {dt: i for i, dt in enumerate(DTYPES)}


def pack_tag(kind: int, code: int, tag: int) -> int:
    """Channel tag: ``kind << 60 | dtype code << 52 | (tag & 0xFFFFFFFF)``."""
    return (kind << 60) | (code << 52) | (tag & _TAG_MASK)


def unpack_tag(t: int) -> tuple[int, int, int]:
    return (t >> 60) & 0xF, (t >> 52) & 0xFF, t & _TAG_MASK


def _dtype_name(code: int) -> str:
    return str(DTYPES[code]).removeprefix("torch.") if code < len(DTYPES) else f"dtype code {code}"


def _payload(t: torch.Tensor) -> torch.Tensor:
    """The bytes of ``t`` as a flat contiguous uint8 tensor (a view when ``t`` is contiguous)."""
    if not t.is_contiguous():
        t = t.contiguous()
    flat = t if t.dim() == 1 else t.reshape(-1)
    return flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat


# ---------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------


class _Part:
    __slots__ = ("deadline", "done", "nbytes", "peer", "work")

    def __init__(self, work: DevmemWork, peer: int | None, nbytes: int, deadline: float) -> None:
        self.work = work
        self.peer = peer
        self.nbytes = nbytes
        self.deadline = deadline
        self.done = False


class _SendPart(_Part):
    __slots__ = ("payload", "tag")

    def __init__(self, work: DevmemWork, peer: int, payload: torch.Tensor, tag: int, deadline: float) -> None:
        super().__init__(work, peer, payload.numel(), deadline)
        self.payload = payload
        self.tag = tag


class _RecvPart(_Part):
    __slots__ = ("code", "dest", "finish", "key", "seq", "target")

    def __init__(self, work: DevmemWork, peer: int | None, target: torch.Tensor, key: tuple[int, int],
                 seq: int, deadline: float) -> None:
        self.target = target
        self.code = _CODE[target.dtype]
        if target.is_contiguous():
            self.dest = _payload(target)
            self.finish: Callable[[], None] | None = None
        else:
            tmp = torch.empty(target.shape, dtype=target.dtype)
            self.dest = _payload(tmp)

            def finish() -> None:
                target.copy_(tmp)

            self.finish = finish
        super().__init__(work, peer, self.dest.numel(), deadline)
        self.key = key
        self.seq = seq

    def check(self, src: int, code: int, nbytes: int) -> DevmemTorchError | None:
        """The error for a message of ``code``/``nbytes`` from ``src``, or None when it fits."""
        if code != self.code:
            return DevmemTorchError(
                self.work.op, src,
                f"rank {src} sent a {_dtype_name(code)} tensor of {nbytes} bytes, the receiving tensor "
                f"is {_dtype_name(self.code)}", "post the receive with the dtype the sender sends")
        if nbytes != self.nbytes:
            return DevmemTorchError(
                self.work.op, src,
                f"rank {src} sent {nbytes} bytes ({_dtype_name(code)}), the receiving tensor holds "
                f"{self.nbytes} bytes (shape {list(self.target.shape)})",
                "post the receive with a tensor of the size the sender sends")
        return None


class _Arrival:
    """One message arriving from ``src``: :meth:`choose` (in the transport's
    receive, header known) picks its destination, :meth:`finish` (payload
    written) completes the part or keeps the message for a later receive."""

    __slots__ = ("bad", "buf", "code", "key", "part", "pg", "seq", "src")

    def __init__(self, pg: DevmemProcessGroup, src: int) -> None:
        self.pg = pg
        self.src = src
        self.part: _RecvPart | None = None
        self.bad: DevmemTorchError | None = None
        self.buf: torch.Tensor | None = None
        self.code = 0
        self.key = (0, 0)
        self.seq = 0

    def choose(self, tag: int, nbytes: int) -> torch.Tensor:
        pg = self.pg
        kind, code, t = unpack_tag(tag)
        self.code = code
        self.key = (kind, t)
        with pg._lock:
            part = pg._match(self.src, self.key)
            if part is None and nbytes >= _GRACE_BYTES:
                # A receive posted a moment later still gets the payload directly.
                end = time.monotonic() + _GRACE_S
                while part is None and not pg._closing and (left := end - time.monotonic()) > 0:
                    pg._posted_cv.wait(left)
                    part = pg._match(self.src, self.key)
            if part is None:
                pg._arrivals += 1
                self.seq = pg._arrivals
        if part is not None:
            self.part = part
            self.bad = part.check(self.src, code, nbytes)
            if self.bad is None:
                return part.dest
        # Nobody waits for it yet (or it does not fit): take it aside.
        self.buf = torch.empty(nbytes, dtype=torch.uint8)
        return self.buf

    def finish(self) -> None:
        pg = self.pg
        part = self.part
        if part is not None:
            if self.bad is not None:
                pg._fail_part(part, self.bad)
            else:
                pg._part_done(part, self.src)
            return
        assert self.buf is not None
        with pg._lock:
            part = pg._match(self.src, self.key)
            if part is None:
                pg._unexpected.setdefault((self.src, *self.key), collections.deque()).append(
                    (self.seq, self.code, self.buf))
                return
        bad = part.check(self.src, self.code, self.buf.numel())
        if bad is not None:
            pg._fail_part(part, bad)
            return
        part.dest.copy_(self.buf)
        pg._part_done(part, self.src)


# ---------------------------------------------------------------------------
# Peers (one link each)
# ---------------------------------------------------------------------------


class _Peer:
    def __init__(self, pg: DevmemProcessGroup, rank: int) -> None:
        self.pg = pg
        self.rank = rank
        self.link: Link | None = None
        self.error: DevmemTorchError | None = None
        self.sends: collections.deque[_SendPart] = collections.deque()
        self.busy = False  # a send is in progress (the sender thread's or an eager one)
        self.cv = threading.Condition(pg._lock)
        # The one thread reading the link holds rmutex: the reader thread, or a thread
        # waiting in DevmemWork.wait for a receive from this peer (a leader), which then
        # reads the link itself and saves two thread switches per message.
        self.rmutex = threading.Lock()
        self.leaders = 0
        self.led_at = 0.0
        self.lead_cv = threading.Condition(pg._lock)
        self.connected = threading.Event()
        self.sender = threading.Thread(target=self._send_loop, name=f"devmem-send-{pg._rank}->{rank}",
                                       daemon=True)
        self.reader = threading.Thread(target=self._read_loop, name=f"devmem-recv-{pg._rank}<-{rank}",
                                       daemon=True)

    # Link establishment: the higher rank connects.
    def _establish(self) -> None:
        pg = self.pg
        if pg._rank > self.rank:
            addr = pg._peer_address(self.rank)
            link = pg._transport.connect(addr, pg._timeout_s)
            hello = torch.tensor([HELLO_VERSION, pg._rank, pg._token], dtype=torch.int64)
            link.send(_payload(hello), pack_tag(KIND_HELLO, _CODE[torch.int64], 0))
            self.attach(link)
        else:
            deadline = time.monotonic() + pg._timeout_s
            if self.link is None:
                # The peer may not need this link yet: ask it to connect.
                pg._transport.ask(pg._peer_address(self.rank), pg._rank, pg._timeout_s)
            with pg._lock:
                while self.link is None and self.error is None and not pg._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise DevmemTorchError(
                            "connect", self.rank,
                            f"timed out after {pg._timeout_s:g}s: rank {self.rank} did not connect",
                            f"check that rank {self.rank} is alive and reaches "
                            f"{pg._address.get('addr')}:{pg._address.get('port')}")
                    self.cv.wait(min(left, 0.5))

    def attach(self, link: Link) -> None:
        with self.pg._lock:
            if self.link is not None or self.error is not None or self.pg._closing:
                stale = True
            else:
                self.link = link
                stale = False
            self.cv.notify_all()
        if stale:
            with contextlib.suppress(Exception):
                link.close()
            return
        self.connected.set()
        self.reader.start()

    def start(self) -> None:
        self.sender.start()

    def _send_loop(self) -> None:
        pg = self.pg
        try:
            if self.link is None:
                try:
                    self._establish()
                except Exception as exc:
                    self.fail(exc, "connecting to", setup=True)
                    return
            if pg._closing:
                return
            link = self.link
            assert link is not None
            while True:
                with pg._lock:
                    while (not self.sends or self.busy) and not pg._closing and self.error is None:
                        self.cv.wait()
                    if pg._closing or self.error is not None:
                        return
                    part = self.sends.popleft()
                    self.busy = True
                try:
                    if not (part.done or part.work.is_completed()) and not self.send_part(link, part):
                        return
                finally:
                    with pg._lock:
                        self.busy = False
        except Exception as exc:
            self.fail(exc, "sending to")

    def send_part(self, link: Link, part: _SendPart) -> bool:
        """Send ``part`` on ``link`` (``busy`` held); False when the link broke."""
        try:
            link.send(part.payload, part.tag)
        except Exception as exc:
            self.fail(exc, "sending to", inflight=part)
            return False
        except BaseException:
            # interrupted (Ctrl-C in an eager send) with part of the message maybe sent:
            # the stream to this peer is cut, so nothing more may go on it
            self.fail(ConnectionError("a send was interrupted halfway"), "sending to", inflight=part)
            raise
        self.pg._part_done(part)
        return True

    def eager(self, part: _SendPart) -> bool:
        """Take the link for an eager send of ``part`` (lock held): True when it is
        idle, nothing is queued before it and its credit is there now."""
        link = self.link
        if (link is None or self.sends or self.busy or part.nbytes > EAGER_BYTES
                or not link.ready_to_send(part.nbytes)):
            return False
        self.busy = True
        return True

    def eager_done(self) -> None:
        with self.pg._lock:
            self.busy = False
            if self.sends:
                self.cv.notify_all()

    def _read_loop(self) -> None:
        pg = self.pg
        while not pg._closing and self.error is None:
            with pg._lock:
                # a leader reads the link now, or did a moment ago and soon will again (each
                # wake-up here costs CPU the leader could use, so they are rare while it reads)
                while not pg._closing and self.error is None:
                    if self.leaders:
                        self.lead_cv.wait(_LEAD_IDLE_S)
                    elif (idle := time.monotonic() - self.led_at) < _LEAD_GRACE_S:
                        self.lead_cv.wait(_LEAD_GRACE_S - idle)
                    else:
                        break
            if not self.rmutex.acquire(timeout=_READER_POLL_S):
                continue
            try:
                if not self.leaders and not self.read_one(_READER_POLL_S):
                    return
            finally:
                self.rmutex.release()

    def read_one(self, timeout: float) -> bool:
        """Take the next message from the link (``rmutex`` held), waiting up to
        ``timeout`` seconds for it; False when the link broke."""
        pg = self.pg
        link = self.link
        assert link is not None
        arrival = _Arrival(pg, self.rank)
        try:
            if link.recv_next(arrival.choose, timeout):
                arrival.finish()
        except Exception as exc:
            if not pg._closing:
                self.fail(exc, "receiving from", inflight=arrival.part)
            return False
        except BaseException:
            # interrupted (Ctrl-C in a leader): where the stream stands is unknown (a
            # header may be taken, its payload not), so nothing more is read from it
            self.fail(ConnectionError("a receive was interrupted halfway"), "receiving from",
                      inflight=arrival.part)
            raise
        return True

    def lead(self, part: _RecvPart, deadline: float | None) -> None:
        """Read the link in the calling thread until ``part`` is done, the link
        breaks or ``deadline`` (time.monotonic) passes."""
        pg = self.pg

        def left() -> float:
            return _READER_POLL_S if deadline is None else min(deadline - time.monotonic(), _READER_POLL_S)

        with pg._lock:
            if self.link is None or self.error is not None or pg._closing:
                return
            self.leaders += 1
        try:
            while not part.done and self.error is None and not pg._closing:
                if (wait := left()) <= 0:
                    return
                if not self.rmutex.acquire(timeout=wait):
                    continue
                try:
                    # taken again: the wait for the link (its reader thread was mid-read) counts too
                    if part.done or (wait := left()) <= 0 or not self.read_one(wait):
                        return
                finally:
                    self.rmutex.release()
        finally:
            with pg._lock:
                self.leaders -= 1
                self.led_at = time.monotonic()

    def fail(self, exc: BaseException, what: str, inflight: _Part | None = None, setup: bool = False) -> None:
        """Mark the link broken; fail every part that depends on it (``inflight``:
        the part being sent or received when it broke)."""
        pg = self.pg
        if isinstance(exc, DevmemTorchError):
            err = exc
        elif isinstance(exc, DevmemError) and (setup or not isinstance(exc, ChannelError)):
            # Set-up refused (NIC, queues, memory, the peer's listener): its own hint says what to do.
            err = DevmemTorchError("link", self.rank, f"{what} rank {self.rank}: {exc.message}", exc.hint)
        else:
            msg = exc.message if isinstance(exc, DevmemError) else str(exc) or type(exc).__name__
            err = DevmemTorchError("link", self.rank, f"{what} rank {self.rank}: {msg}",
                                   f"rank {self.rank} may have exited or crashed: check its log")
        if inflight is not None:
            pg._fail_part(inflight, self._op_error(inflight, err))
        with pg._lock:
            if self.error is not None:
                return
            self.error = err
            sends = list(self.sends)
            self.sends.clear()
            recvs = pg._take_posted(self.rank)
            self.cv.notify_all()
            self.lead_cv.notify_all()
        if not pg._closing and (sends or recvs):
            log.warning("devmem link to rank %d failed: %s", self.rank, err.cause)
        else:
            log.debug("devmem link to rank %d closed: %s", self.rank, err.cause)
        for part in sends + recvs:
            pg._fail_part(part, self._op_error(part, err))
        self.close_link()

    def close_link(self, wait: float = 0.0) -> None:
        """Close the link from a helper thread: a transport may block its close until
        its reader lets go, and no caller (the watchdog above all) may hang on it."""
        link = self.link
        if link is None:
            return

        def close() -> None:
            with contextlib.suppress(Exception):
                link.close()

        t = threading.Thread(target=close, name=f"devmem-close-{self.pg._rank}-{self.rank}", daemon=True)
        t.start()
        if wait > 0:
            t.join(wait)

    def _op_error(self, part: _Part, err: DevmemTorchError) -> DevmemTorchError:
        if err.op == part.work.op:
            return err
        return DevmemTorchError(part.work.op, self.rank, err.cause, err.hint)


# ---------------------------------------------------------------------------
# The process group
# ---------------------------------------------------------------------------


_LIVE: weakref.WeakSet[DevmemProcessGroup] = weakref.WeakSet()
_HANDLERS_INSTALLED = False


def _close_all() -> None:
    for pg in list(_LIVE):
        with contextlib.suppress(Exception):
            pg.shutdown()


def _on_sigterm(signum: int, frame: Any) -> None:
    _close_all()
    prev = _PREV_HANDLERS.get(signum)
    if callable(prev):
        prev(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


_PREV_HANDLERS: dict[int, Any] = {}


def _install_handlers() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_close_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            prev = signal.getsignal(sig)
            if prev in (signal.SIG_IGN,):
                continue
            _PREV_HANDLERS[sig] = prev
            signal.signal(sig, _on_sigterm)


class DevmemProcessGroup(dist.ProcessGroup):
    """torch.distributed process group whose point-to-point operations and
    data-moving collectives run on devmem Channels; reductions and barrier
    run on an inner Gloo group.

    Created by ``init_process_group("devmem", ...)`` (or ``new_group(backend=
    "devmem")``) once :mod:`devmemtcp.torch` is imported. Handles CPU tensors
    of every torch dtype. Every call returns a :class:`DevmemWork` at once;
    the group's ``timeout`` bounds every operation.

    Args:
        store: the c10d store (already prefixed for this group by torch).
        rank, size: this rank and the group size.
        timeout: per-operation timeout (``init_process_group(timeout=...)``).
        options: :class:`devmemtcp.torch.Options` (``pg_options=``), or None.
        transport: the byte transport; default the devmem Channel transport.

    Raises DevmemError (set-up: no route, bad option, NIC refused) and
    DevmemTorchError (per operation: peer, cause).
    """

    def __init__(self, store: dist.Store, rank: int, size: int, timeout: timedelta,
                 options: Options | None = None, transport: Transport | None = None) -> None:
        super().__init__(rank, size)  # type: ignore[call-arg]  # the (rank, size) overload
        self._rank = rank
        self._size = size
        self._store = store
        self._timeout = timeout
        self._timeout_s = max(timeout.total_seconds(), 0.001)
        self._options = resolve(options)
        self._cuda = str(self._options.memory or "").startswith("cuda")  # CUDA tensors go device to device
        self._lock = threading.RLock()
        self._posted_cv = threading.Condition(self._lock)
        self._closing = False
        self._group_name = ""
        self._group_desc = ""
        self._peers: dict[int, _Peer] = {}
        self._posted: dict[tuple[int, int, int], collections.deque[_RecvPart]] = {}
        self._posted_any: dict[tuple[int, int], collections.deque[_RecvPart]] = {}
        self._unexpected: dict[tuple[int, int, int], collections.deque[tuple[int, int, torch.Tensor]]] = {}
        self._arrivals = 0
        self._post_seq = 0
        self._coll_seq = 0
        self._parts: set[_Part] = set()
        self._works: weakref.WeakSet[DevmemWork] = weakref.WeakSet()
        if transport is None:
            from devmemtcp.torch.channel_transport import ChannelTransport

            transport = ChannelTransport(self._options)
        self._transport = transport
        self._gloo = self._make_gloo(store, rank, size, timeout)
        self._acceptor = transport.listen()
        self._address = dict(self._acceptor.address)
        if rank == 0:
            self._token = secrets.randbits(62)
            store.set("devmem/token", str(self._token))
        else:
            self._token = int(store.get("devmem/token").decode())
        store.set(f"devmem/addr/{rank}", json.dumps(self._address))
        self._threads = [
            threading.Thread(target=self._accept_loop, name=f"devmem-accept-{rank}", daemon=True),
            threading.Thread(target=self._watchdog, name=f"devmem-watchdog-{rank}", daemon=True),
        ]
        for t in self._threads:
            t.start()
        _LIVE.add(self)
        _install_handlers()
        log.debug("devmem process group rank %d/%d listening on %s", rank, size, self._address)

    # -- set-up -------------------------------------------------------------

    def _make_gloo(self, store: dist.Store, rank: int, size: int, timeout: timedelta) -> Any:
        opts = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
        opts._timeout = timeout
        ifname = self._options.gloo_ifname
        opts._devices = [dist.ProcessGroupGloo.create_device(interface=ifname)] if ifname else \
            [dist.ProcessGroupGloo.create_default_device()]
        return dist.ProcessGroupGloo(dist.PrefixStore("gloo/", store), rank, size, opts)

    def _peer_address(self, rank: int) -> dict[str, Any]:
        try:
            raw = self._store.get(f"devmem/addr/{rank}")
        except Exception as exc:
            raise DevmemTorchError("connect", rank, f"rank {rank} never published its devmem address: {exc}",
                                   f"check that rank {rank} started and imported devmemtcp.torch") from None
        addr: dict[str, Any] = json.loads(raw.decode())
        return addr

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                link = self._acceptor.accept(0.25)
            except Exception as exc:
                if not self._closing:
                    log.warning("devmem accept failed: %s", exc)
                    time.sleep(0.1)
                continue
            if isinstance(link, int):
                if 0 <= link < self._rank:
                    self._peer(link)  # a lower rank needs the link: connect to it
                continue
            if link is not None:
                threading.Thread(target=self._hello, args=(link,), daemon=True,
                                 name=f"devmem-hello-{self._rank}").start()

    def _hello(self, link: Link) -> None:
        buf = torch.empty(3, dtype=torch.int64)

        def choose(tag: int, nbytes: int) -> torch.Tensor:
            if unpack_tag(tag)[0] != KIND_HELLO or nbytes != 24:
                raise DevmemTorchError("connect", None, "a connection did not start with a devmem hello")
            return _payload(buf)

        try:
            deadline = time.monotonic() + self._timeout_s
            while not link.recv_next(choose, _READER_POLL_S):
                if self._closing or time.monotonic() > deadline:
                    raise DevmemTorchError("connect", None, "no hello on an incoming connection")
            version, rank, token = (int(v) for v in buf.tolist())
            if version != HELLO_VERSION or token != self._token or not self._rank < rank < self._size:
                raise DevmemTorchError("connect", rank if 0 <= rank < self._size else None,
                                       f"hello from rank {rank} (version {version}) does not belong to this "
                                       f"group (rank {self._rank}, version {HELLO_VERSION})",
                                       "run every rank with the same devmemtcp and the same store")
        except Exception as exc:
            if not self._closing:
                log.warning("devmem: refused an incoming connection: %s", exc)
            with contextlib.suppress(Exception):
                link.close()
            return
        self._peer(rank, attach=link)

    def _peer(self, rank: int, attach: Link | None = None) -> _Peer:
        with self._lock:
            peer = self._peers.get(rank)
            new = peer is None
            if peer is None:
                peer = self._peers[rank] = _Peer(self, rank)
        if attach is not None:
            peer.attach(attach)
        if new:
            peer.start()
        return peer

    # -- parts: posting, matching, completing -------------------------------

    def _deadline(self) -> float:
        return time.monotonic() + self._timeout_s

    def _new_work(self, op: str, parts: int, result: Any, peers: Sequence[int]) -> DevmemWork:
        w = DevmemWork(op, parts, result, self._deadline(), tuple(peers), self._drive)
        self._works.add(w)
        return w

    def _drive(self, work: DevmemWork, deadline: float | None) -> None:
        """DevmemWork.wait's driver: the waiting thread reads the links of the
        work's receives itself, one after the other (see _Peer.lead)."""
        for part in work.recv_parts:
            if work.is_completed():
                return
            if not part.done:
                self._peers[part.peer].lead(part, deadline)

    def _check(self, op: str, t: torch.Tensor, peer: int | None = None) -> None:
        if not isinstance(t, torch.Tensor):
            raise DevmemTorchError(op, peer, f"expected a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu" and not (t.device.type == "cuda" and self._cuda):
            raise DevmemTorchError(op, peer, f"tensor is on {t.device}; the devmem backend moves CPU tensors",
                                   "move the tensor to the CPU, set DEVMEMTCP_MEMORY=cuda:N (CUDA tensors "
                                   "device to device), or use init_process_group('cpu:devmem,cuda:nccl')")
        if t.layout != torch.strided:
            raise DevmemTorchError(op, peer, f"tensor layout {t.layout} is not supported (strided only)")
        if t.dtype not in _CODE:
            raise DevmemTorchError(op, peer, f"dtype {t.dtype} is not supported by the devmem backend")
        if self._closing:
            raise DevmemTorchError(op, peer, "the process group was destroyed")

    def _check_rank(self, op: str, r: int) -> None:
        if not 0 <= r < self._size:
            raise DevmemTorchError(op, r, f"rank {r} is outside the group (size {self._size})")

    def _post_send(self, work: DevmemWork, peer: int, t: torch.Tensor, kind: int, tag: int) -> None:
        payload = _payload(t)
        part = _SendPart(work, peer, payload, pack_tag(kind, _CODE[t.dtype], tag), work.deadline)
        p = self._peer(peer)
        eager = False
        with self._lock:
            if p.error is not None:
                err = p.error
            else:
                err = None
                self._parts.add(part)
                if p.eager(part):
                    eager = True
                else:
                    p.sends.append(part)
                    p.cv.notify_all()
        if err is not None:
            self._fail_part(part, DevmemTorchError(work.op, peer, err.cause, err.hint))
        elif eager:
            try:
                assert p.link is not None
                p.send_part(p.link, part)
            finally:
                p.eager_done()

    def _post_recv(self, work: DevmemWork, peer: int | None, t: torch.Tensor, kind: int, tag: int) -> None:
        key = (kind, tag & _TAG_MASK)
        with self._lock:
            self._post_seq += 1
            part = _RecvPart(work, peer, t, key, self._post_seq, work.deadline)
        if part.finish is not None:
            work.on_done(part.finish)
        peers = [peer] if peer is not None else [r for r in range(self._rank)]
        objs = [self._peer(r) for r in peers]
        found: tuple[int, int, torch.Tensor] | None = None
        src = -1
        err: DevmemTorchError | None = None
        with self._lock:
            if peer is not None and objs[0].error is not None:
                err = objs[0].error
            else:
                # A message that arrived before this receive was posted (the earliest, for
                # any source); a drained key is dropped, so the scan stays short.
                best: tuple[int, int, int] | None = None
                if peer is not None:
                    if (peer, *key) in self._unexpected:
                        best = (peer, *key)
                else:
                    for (r, k, g), q in self._unexpected.items():
                        if (k, g) == key and (best is None or q[0][0] < self._unexpected[best][0][0]):
                            best = (r, k, g)
                if best is not None:
                    q = self._unexpected[best]
                    found = q.popleft()
                    if not q:
                        del self._unexpected[best]
                    src = best[0]
                else:
                    self._parts.add(part)
                    if peer is None:
                        self._posted_any.setdefault(key, collections.deque()).append(part)
                    else:
                        self._posted.setdefault((peer, *key), collections.deque()).append(part)
                        work.recv_parts.append(part)
                    self._posted_cv.notify_all()
        if err is not None:
            self._fail_part(part, DevmemTorchError(work.op, peer, err.cause, err.hint))
        elif found is not None:
            _, code, buf = found
            bad = part.check(src, code, buf.numel())
            if bad is not None:
                self._fail_part(part, bad)
            else:
                part.dest.copy_(buf)
                self._part_done(part, src)

    def _match(self, src: int, key: tuple[int, int]) -> _RecvPart | None:
        """Pop the earliest posted receive for a message from ``src`` (lock held)."""
        q = self._posted.get((src, *key))
        qa = self._posted_any.get(key)
        cands = [x for x in (q, qa) if x]
        if not cands:
            return None
        best = min(cands, key=lambda d: d[0].seq)
        part = best.popleft()
        if not best:
            if best is q:
                del self._posted[(src, *key)]
            else:
                del self._posted_any[key]
        return part

    def _take_posted(self, src: int) -> list[_Part]:
        """Remove and return the posted receives from ``src`` (lock held)."""
        out: list[_Part] = []
        for k in [k for k in self._posted if k[0] == src]:
            out.extend(self._posted.pop(k))
        return out

    def _unpost(self, part: _Part) -> None:
        with self._lock:
            self._parts.discard(part)
            if isinstance(part, _RecvPart):
                q = (self._posted.get((part.peer, *part.key)) if part.peer is not None
                     else self._posted_any.get(part.key))
                if q is not None:
                    with contextlib.suppress(ValueError):
                        q.remove(part)

    def _part_done(self, part: _Part, src: int | None = None) -> None:
        part.done = True
        with self._lock:
            self._parts.discard(part)
        part.work.part_done(src)

    def _fail_part(self, part: _Part, err: DevmemTorchError) -> None:
        part.done = True
        self._unpost(part)
        part.work.fail(err)

    def _watchdog(self) -> None:
        while not self._closing:
            time.sleep(0.1)
            now = time.monotonic()
            with self._lock:
                late = [p for p in self._parts if p.deadline < now and not p.done]
            for part in late:
                what = "send of" if isinstance(part, _SendPart) else "receive of"
                if part.peer is None:
                    err = DevmemTorchError(part.work.op, None,
                                           f"timed out after {self._timeout_s:g}s: no rank sent the awaited "
                                           f"{part.nbytes}-byte message", "check the senders' tags")
                    self._fail_part(part, err)
                    continue
                err = DevmemTorchError(
                    part.work.op, part.peer,
                    f"timed out after {self._timeout_s:g}s waiting for rank {part.peer} ({what} "
                    f"{part.nbytes} bytes)",
                    f"check that rank {part.peer} is alive and makes the matching call; "
                    "raise init_process_group(timeout=...) for slow steps")
                self._fail_part(part, err)
                # The link's state is unknown after a timeout (part of a message may be
                # in flight): close it, as NCCL aborts its communicator.
                peer = self._peers.get(part.peer)
                if peer is not None:
                    peer.fail(err, "waiting for")

    # -- torch.distributed.ProcessGroup API: identity --------------------------

    def getBackendName(self) -> str:
        return BACKEND_NAME

    def setGroupName(self, name: str) -> None:
        self._group_name = name

    def getGroupName(self) -> str:
        return self._group_name

    def setGroupDesc(self, desc: str) -> None:
        self._group_desc = desc

    def getGroupDesc(self) -> str:
        return self._group_desc

    @property
    def options(self) -> Options:
        """The resolved :class:`Options` this group runs with."""
        return self._options

    @property
    def transport_name(self) -> str:
        return self._transport.name

    def link_stats(self) -> dict[int, dict[str, Any]]:
        """Per peer rank with an open link: ``transport``, and for devmem Channels
        ``ifname``, ``backend`` ("kernel" or "emulated"), ``rx_bytes`` / ``tx_bytes``
        (payload bytes), ``streams``, ``rx_timeouts`` / ``credit_waits`` (the Channel's
        counters); ``error`` when the link failed."""
        out: dict[int, dict[str, Any]] = {}
        with self._lock:
            peers = dict(self._peers)
        for r, p in sorted(peers.items()):
            d: dict[str, Any] = {"transport": self._transport.name}
            link = p.link
            ch = getattr(link, "ch", None)
            if ch is not None:
                st = ch.stats
                d.update(ifname=ch.ifname, backend=st.get("backend"), rx_bytes=st["rx"]["bytes"],
                         tx_bytes=st["tx"]["bytes"], streams=st.get("streams_rx"),
                         rx_timeouts=st.get("rx_timeouts"), credit_waits=st.get("credit_waits"))
            if p.error is not None:
                d["error"] = p.error.cause
            out[r] = d
        return out

    def __repr__(self) -> str:
        return f"DevmemProcessGroup(rank={self._rank}, size={self._size}, transport={self._transport.name})"

    # -- point-to-point -----------------------------------------------------------

    def send(self, tensors: list[torch.Tensor], dst: int, tag: int = 0) -> DevmemWork:
        t = self._single("send", tensors, dst)
        self._check_rank("send", dst)
        if dst == self._rank:
            raise DevmemTorchError("send", dst, "a rank cannot send to itself")
        w = self._new_work("send", 1, tensors, [dst])
        self._post_send(w, dst, t, KIND_P2P, tag)
        return w

    def recv(self, tensors: list[torch.Tensor], src: int, tag: int = 0) -> DevmemWork:
        t = self._single("recv", tensors, src)
        self._check_rank("recv", src)
        if src == self._rank:
            raise DevmemTorchError("recv", src, "a rank cannot receive from itself")
        w = self._new_work("recv", 1, tensors, [src])
        self._post_recv(w, src, t, KIND_P2P, tag)
        return w

    def recv_anysource(self, tensors: list[torch.Tensor], tag: int = 0) -> DevmemWork:
        t = self._single("recv", tensors, None)
        w = self._new_work("recv", 1, tensors, [])
        self._post_recv(w, None, t, KIND_P2P, tag)
        return w

    def _single(self, op: str, tensors: list[torch.Tensor], peer: int | None) -> torch.Tensor:
        if len(tensors) != 1:
            raise DevmemTorchError(op, peer, f"expected exactly one tensor, got {len(tensors)}")
        self._check(op, tensors[0], peer)
        return tensors[0]

    # -- collectives on the devmem links -----------------------------------------

    def _coll(self) -> int:
        with self._lock:
            self._coll_seq += 1
            return self._coll_seq

    def broadcast(self, tensors: list[torch.Tensor], opts: Any = None) -> DevmemWork:
        root = int(getattr(opts, "rootRank", 0))
        t = self._single("broadcast", tensors, None)
        self._check_rank("broadcast", root)
        seq = self._coll()
        if self._rank == root:
            peers = [r for r in range(self._size) if r != root]
            w = self._new_work("broadcast", len(peers), tensors, peers)
            for r in peers:
                self._post_send(w, r, t, KIND_COLL, seq)
        else:
            w = self._new_work("broadcast", 1, tensors, [root])
            self._post_recv(w, root, t, KIND_COLL, seq)
        return w

    def allgather(self, output_tensors: list[list[torch.Tensor]], input_tensors: list[torch.Tensor],
                  opts: Any = None) -> DevmemWork:
        t = self._single("allgather", input_tensors, None)
        if len(output_tensors) != 1 or len(output_tensors[0]) != self._size:
            raise DevmemTorchError("allgather", None,
                                   f"expected one output list of {self._size} tensors")
        outs = output_tensors[0]
        return self._allgather_parts("allgather", [t], [outs], output_tensors)

    def _allgather_parts(self, op: str, inputs: list[torch.Tensor], outs: list[list[torch.Tensor]],
                         result: Any) -> DevmemWork:
        """inputs[i] of every rank r lands in outs[i][r]."""
        for i, o in zip(inputs, outs, strict=True):
            self._check(op, i)
            for x in o:
                self._check(op, x)
        seq = self._coll()
        peers = [r for r in range(self._size) if r != self._rank]
        w = self._new_work(op, 2 * len(peers) * len(inputs), result, peers)
        for i, o in zip(inputs, outs, strict=True):
            for r in peers:
                self._post_recv(w, r, o[r], KIND_COLL, seq)
            for r in peers:
                self._post_send(w, r, i, KIND_COLL, seq)
            self._local_copy(op, o[self._rank], i)
        return w

    def _local_copy(self, op: str, dst: torch.Tensor, src: torch.Tensor) -> None:
        if dst.dtype != src.dtype or dst.numel() != src.numel():
            raise DevmemTorchError(op, self._rank,
                                   f"output {dst.dtype}{list(dst.shape)} does not fit the input "
                                   f"{src.dtype}{list(src.shape)}")
        dst.copy_(src.reshape(dst.shape))

    @staticmethod
    def _chunks(out: torch.Tensor, n: int, op: str) -> list[torch.Tensor]:
        if out.numel() % n:
            raise DevmemTorchError(op, None,
                                   f"output of {out.numel()} elements does not split into {n} ranks")
        flat = out.reshape(-1) if out.is_contiguous() else None
        if flat is None:
            raise DevmemTorchError(op, None, "the output tensor must be contiguous")
        return list(flat.chunk(n)) if out.numel() else [flat] * n

    def all_gather_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> DevmemWork:
        self._check("allgather", output)
        self._check("allgather", input)
        if output.numel() != input.numel() * self._size:
            raise DevmemTorchError("allgather", None, f"output has {output.numel()} elements, expected "
                                   f"{self._size} x {input.numel()}")
        outs = self._chunks(output, self._size, "allgather")
        return self._allgather_parts("allgather", [input.reshape(-1)], [outs], [output])

    _allgather_base = all_gather_single

    def allgather_coalesced(self, output_lists: list[list[torch.Tensor]], inputs: list[torch.Tensor],
                            opts: Any = None) -> DevmemWork:
        if len(output_lists) != self._size or any(len(o) != len(inputs) for o in output_lists):
            raise DevmemTorchError("allgather_coalesced", None,
                                   f"expected {self._size} output lists of {len(inputs)} tensors")
        outs = [[output_lists[r][i] for r in range(self._size)] for i in range(len(inputs))]
        return self._allgather_parts("allgather_coalesced", list(inputs), outs, output_lists)

    def all_gather_single_coalesced(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor],
                                    opts: Any = None) -> DevmemWork:
        if len(outputs) != len(inputs):
            raise DevmemTorchError("allgather_into_tensor_coalesced", None,
                                   f"{len(outputs)} outputs for {len(inputs)} inputs")
        for o, i in zip(outputs, inputs, strict=True):
            self._check("allgather_into_tensor_coalesced", o)
            self._check("allgather_into_tensor_coalesced", i)
            if o.numel() != i.numel() * self._size:
                raise DevmemTorchError("allgather_into_tensor_coalesced", None,
                                       f"output has {o.numel()} elements, expected "
                                       f"{self._size} x {i.numel()}")
        outs = [self._chunks(o, self._size, "allgather_into_tensor_coalesced") for o in outputs]
        return self._allgather_parts("allgather_into_tensor_coalesced", [i.reshape(-1) for i in inputs],
                                     outs, outputs)

    allgather_into_tensor_coalesced = all_gather_single_coalesced  # type: ignore[assignment]

    def gather(self, output_tensors: list[list[torch.Tensor]], input_tensors: list[torch.Tensor],
               opts: Any = None) -> DevmemWork:
        root = int(getattr(opts, "rootRank", 0))
        self._check_rank("gather", root)
        t = self._single("gather", input_tensors, None)
        seq = self._coll()
        if self._rank != root:
            w = self._new_work("gather", 1, [], [root])
            self._post_send(w, root, t, KIND_COLL, seq)
            return w
        if len(output_tensors) != 1 or len(output_tensors[0]) != self._size:
            raise DevmemTorchError("gather", None, f"the root needs one list of {self._size} output tensors")
        outs = output_tensors[0]
        for o in outs:
            self._check("gather", o)
        peers = [r for r in range(self._size) if r != root]
        w = self._new_work("gather", len(peers), output_tensors, peers)
        for r in peers:
            self._post_recv(w, r, outs[r], KIND_COLL, seq)
        self._local_copy("gather", outs[root], t)
        return w

    def scatter(self, output_tensors: list[torch.Tensor], input_tensors: list[list[torch.Tensor]],
                opts: Any = None) -> DevmemWork:
        root = int(getattr(opts, "rootRank", 0))
        self._check_rank("scatter", root)
        t = self._single("scatter", output_tensors, None)
        seq = self._coll()
        if self._rank != root:
            w = self._new_work("scatter", 1, output_tensors, [root])
            self._post_recv(w, root, t, KIND_COLL, seq)
            return w
        if len(input_tensors) != 1 or len(input_tensors[0]) != self._size:
            raise DevmemTorchError("scatter", None, f"the root needs one list of {self._size} input tensors")
        ins = input_tensors[0]
        for i in ins:
            self._check("scatter", i)
        peers = [r for r in range(self._size) if r != root]
        w = self._new_work("scatter", len(peers), output_tensors, peers)
        for r in peers:
            self._post_send(w, r, ins[r], KIND_COLL, seq)
        self._local_copy("scatter", t, ins[root])
        return w

    def alltoall(self, output_tensors: list[torch.Tensor], input_tensors: list[torch.Tensor],
                 opts: Any = None) -> DevmemWork:
        if len(output_tensors) != self._size or len(input_tensors) != self._size:
            raise DevmemTorchError("alltoall", None, f"expected {self._size} input and output tensors")
        for x in (*output_tensors, *input_tensors):
            self._check("alltoall", x)
        return self._alltoall_parts("alltoall", list(output_tensors), list(input_tensors), output_tensors)

    def _alltoall_parts(self, op: str, outs: list[torch.Tensor], ins: list[torch.Tensor],
                        result: Any) -> DevmemWork:
        seq = self._coll()
        peers = [r for r in range(self._size) if r != self._rank]
        w = self._new_work(op, 2 * len(peers), result, peers)
        for r in peers:
            self._post_recv(w, r, outs[r], KIND_COLL, seq)
        for r in peers:
            self._post_send(w, r, ins[r], KIND_COLL, seq)
        self._local_copy(op, outs[self._rank], ins[self._rank])
        return w

    def all_to_all_single(self, output: torch.Tensor, input: torch.Tensor, output_split_sizes: list[int],
                          input_split_sizes: list[int], opts: Any = None) -> DevmemWork:
        op = "alltoall_single"
        self._check(op, output)
        self._check(op, input)
        outs = self._split(op, output, list(output_split_sizes))
        ins = self._split(op, input, list(input_split_sizes))
        return self._alltoall_parts(op, outs, ins, [output])

    alltoall_base = all_to_all_single  # type: ignore[assignment]

    def _split(self, op: str, t: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        rows = t.shape[0] if t.dim() else 1
        if not sizes:
            if rows % self._size:
                raise DevmemTorchError(op, None,
                                       f"dim 0 of {rows} rows does not split into {self._size} ranks")
            sizes = [rows // self._size] * self._size
        if len(sizes) != self._size or sum(sizes) != rows:
            raise DevmemTorchError(op, None, f"split sizes {sizes} do not cover dim 0 ({rows} rows) for "
                                   f"{self._size} ranks")
        return list(torch.split(t, sizes, dim=0)) if t.dim() else [t]

    # -- everything that computes: the inner Gloo group --------------------------

    def allreduce(self, tensors: list[torch.Tensor], opts: Any = None) -> Any:
        return self._gloo.allreduce(tensors, opts) if opts is not None else self._gloo.allreduce(tensors)

    def allreduce_coalesced(self, tensors: list[torch.Tensor], opts: Any = None) -> Any:
        return self._gloo.allreduce_coalesced(tensors, opts) if opts is not None else \
            self._gloo.allreduce_coalesced(tensors)

    def reduce(self, tensors: list[torch.Tensor], opts: Any = None) -> Any:
        return self._gloo.reduce(tensors, opts) if opts is not None else self._gloo.reduce(tensors)

    def reduce_scatter(self, output_tensors: list[torch.Tensor], input_tensors: list[list[torch.Tensor]],
                       opts: Any = None) -> Any:
        return self._gloo.reduce_scatter(output_tensors, input_tensors, opts or dist.ReduceScatterOptions())

    def reduce_scatter_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> Any:
        return self._gloo._reduce_scatter_base(output, input, opts or dist.ReduceScatterOptions())

    _reduce_scatter_base = reduce_scatter_single  # type: ignore[assignment]

    def reduce_scatter_single_coalesced(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor],
                                        opts: Any = None) -> Any:
        return self._gloo.reduce_scatter_tensor_coalesced(outputs, inputs,
                                                          opts or dist.ReduceScatterOptions())

    reduce_scatter_tensor_coalesced = reduce_scatter_single_coalesced  # type: ignore[assignment]

    def barrier(self, opts: Any = None) -> DevmemWork:
        """Wait for this rank's earlier devmem operations, then a Gloo barrier
        (as Gloo's own barrier waits for its earlier work)."""
        earlier = [w for w in list(self._works) if not w.is_completed()]
        w = self._new_work("barrier", 1, [], [])

        def run() -> None:
            try:
                for e in earlier:
                    with contextlib.suppress(Exception):
                        e.wait()
                g = self._gloo.barrier(opts or dist.BarrierOptions())
                g.wait()
                w.part_done()
            except Exception as exc:
                w.fail(exc if isinstance(exc, DevmemTorchError)
                       else DevmemTorchError("barrier", None, str(exc)))

        threading.Thread(target=run, name=f"devmem-barrier-{self._rank}", daemon=True).start()
        return w

    # -- teardown -------------------------------------------------------------------

    def shutdown(self) -> None:
        """Close every channel (undoing its NIC set-up) and the listener; fail
        what is pending. Called by ``destroy_process_group``, at exit and on SIGTERM."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            peers = list(self._peers.values())
            parts = list(self._parts)
            self._parts.clear()
            for p in peers:
                p.cv.notify_all()
                p.lead_cv.notify_all()
            self._posted_cv.notify_all()
        err = DevmemTorchError("shutdown", None,
                               "the process group was destroyed with this operation pending")
        for part in parts:
            part.work.fail(err)
        # Undoing NIC set-up takes netlink round trips: wait for it (bounded), or the
        # interpreter's exit would kill the closing threads halfway.
        closers = []
        for p in peers:
            if p.link is not None:
                closers.append(threading.Thread(target=p.close_link, args=(CLOSE_WAIT_S,), daemon=True))
                closers[-1].start()
        for t in closers:
            t.join(CLOSE_WAIT_S + 1.0)
        with contextlib.suppress(Exception):
            self._acceptor.close()
        me = threading.current_thread()
        for t in [*self._threads, *(th for p in peers for th in (p.sender, p.reader))]:
            if t.is_alive() and t is not me:
                t.join(timeout=2.0)
        _LIVE.discard(self)

    def abort(self) -> None:
        self.shutdown()


def create(dist_opts: Any, options: Any = None) -> DevmemProcessGroup:
    """The factory given to ``Backend.register_backend`` (extended API):
    ``dist_opts`` is torch's ``_DistributedBackendOptions``; ``options`` is the
    ``pg_options`` of ``init_process_group`` / ``new_group`` (an
    :class:`Options` or None)."""
    if options is not None and not isinstance(options, Options):
        raise TypeError(f"pg_options for the devmem backend must be devmemtcp.torch.Options, "
                        f"got {type(options).__name__}")
    return DevmemProcessGroup(dist_opts.store, dist_opts.group_rank, dist_opts.group_size,
                              dist_opts.timeout, options)
