"""Sender: devmem TX from a dma-buf, with zerocopy completion tracking.

Each :meth:`Sender.send` is one (or, for partial sends and long iovec
arrays, a few) ``sendmsg(MSG_ZEROCOPY)`` whose iovecs carry dma-buf offsets
in ``iov_base`` and lengths in ``iov_len``, with one SCM_DEVMEM_DMABUF cmsg
naming the TX binding (net/ipv4/tcp.c ``tcp_sendmsg_locked``,
net/core/sock.c ``__sock_cmsg_send``). The socket needs ``SO_ZEROCOPY``.

Every sendmsg that sends at least one byte takes the socket's next
zerocopy sequence number (``sk_zckey``, net/core/skbuff.c
``msg_zerocopy_realloc``; a call that fails without sending gives it back).
The kernel reports finished sends on the error queue as ``[lo, hi]`` ranges
(``__msg_zerocopy_callback``). Until its sendmsg completed, a dma-buf region
may still be read by the NIC: :meth:`Sender.wait_region_free` blocks until
no incomplete sendmsg covers a region, so the caller can overwrite it.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from devmemtcp import abi
from devmemtcp.abi import UIO_MAXIOV  # re-exported: more iovecs per sendmsg is EMSGSIZE
from devmemtcp.codec import ControlBufferError, build_tx_cmsg, parse_zerocopy_completions
from devmemtcp.errors import DevmemError

if TYPE_CHECKING:
    from devmemtcp.backend.base import Backend, Binding

__all__ = ["UIO_MAXIOV", "SendError", "Sender", "SenderStats"]

_SEQ_MASK = 0xFFFFFFFF
_PAGE_SHIFT = abi.PAGE_SIZE.bit_length() - 1

_HINTS = {
    errno.EINVAL: "check the socket has SO_ZEROCOPY, the call MSG_ZEROCOPY, and the binding id is a live "
                  "TX binding of this process (bind-tx, not bind-rx)",
    errno.ENODEV: "the route to the peer leaves through another device than the TX binding's: "
                  "bind-tx the egress device, or SO_BINDTODEVICE the socket to it",
    errno.EHOSTUNREACH: "no route to the peer: check addresses and routes (ip route get ADDR)",
    errno.EFAULT: "an iovec offset lies beyond the dma-buf: keep offset + length within its size",
    errno.EMSGSIZE: f"too many iovecs in one sendmsg: at most {UIO_MAXIOV}",
}


class SendError(DevmemError):
    """A devmem sendmsg the kernel (or the emulated NIC) refused; ``errno`` is its errno."""

    def __init__(self, err: int, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.errno = err


@dataclass
class SenderStats:
    """Counters of one Sender (cumulative).

    ``bytes``: bytes sendmsg accepted. ``sendmsg_calls``: calls that sent
    something (each took one zerocopy sequence number). ``partial_sends``:
    calls that sent less than asked. ``iovecs``: iovecs passed. ``frags``:
    PAGE_SIZE pieces the kernel cuts the sent bytes into (net_iovs read).
    ``completions``: sendmsg calls reported complete. ``errqueue_reads``:
    error-queue messages read. ``waits``: times a caller had to wait for a
    completion before reusing a region.
    """

    bytes: int = 0
    sendmsg_calls: int = 0
    partial_sends: int = 0
    iovecs: int = 0
    frags: int = 0
    completions: int = 0
    errqueue_reads: int = 0
    waits: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _in_range(seq: int, lo: int, hi: int) -> bool:
    return ((seq - lo) & _SEQ_MASK) <= ((hi - lo) & _SEQ_MASK)


class Sender:
    """Send from a dma-buf over a connected TCP socket (devmem TX).

    Args:
        backend: kernel or emulated :class:`~devmemtcp.backend.base.Backend`.
        sock: a connected TCP socket; ``SO_ZEROCOPY`` is set on it here.
        binding: the TX binding (``binding.id`` goes into every sendmsg).
        max_iov: iovecs per sendmsg (at most UIO_MAXIOV, 1024); longer
            arrays are sent in several calls.
        completion_timeout: seconds :meth:`flush` / :meth:`close` /
            :meth:`wait_region_free` wait for completions before raising.

    Use as a context manager: :meth:`close` waits for every outstanding
    completion (DevmemError after ``completion_timeout``).
    """

    def __init__(
        self,
        backend: Backend,
        sock: socket.socket,
        binding: Binding,
        *,
        max_iov: int = 64,
        completion_timeout: float = 10.0,
    ) -> None:
        if not 1 <= max_iov <= UIO_MAXIOV:
            raise DevmemError(f"max_iov {max_iov} out of range", f"use 1..{UIO_MAXIOV} iovecs per sendmsg")
        self.backend = backend
        self.sock = sock
        self.binding = binding
        self.binding_id = int(binding.id)
        self.max_iov = max_iov
        self.completion_timeout = completion_timeout
        self.stats = SenderStats()
        self._cmsg = build_tx_cmsg(self.binding_id)
        # sk_zckey starts at 0 for a new socket; we only count our own sends
        self._next_seq = 0
        # outstanding sendmsg calls: (seq, region start, region end) in send order
        self._outstanding: deque[tuple[int, int, int]] = deque()
        self._errctl = bytearray(4096)
        self._errctl_mv = memoryview(self._errctl)
        self._closed = False
        try:
            sock.setsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
        except OSError as exc:
            raise SendError(exc.errno or errno.EINVAL, f"cannot set SO_ZEROCOPY: {exc.strerror}",
                            "devmem TX needs a TCP socket with SO_ZEROCOPY (Linux >= 4.14)") from exc

    # -- sending -------------------------------------------------------------
    def send(self, offsets_lengths: np.ndarray) -> int:
        """Send the dma-buf ranges ``offsets_lengths`` (shape ``(n, 2)``,
        uint64: byte offset, length), in order; return the bytes sent (all of
        them: partial sends are continued).

        Each sendmsg carries up to ``max_iov`` iovecs; every call that sends
        is recorded with its zerocopy sequence number and the dma-buf span it
        covers. Raises :class:`SendError` (with the kernel's errno and a hint)
        when sendmsg fails, ConnectionError when the peer is gone.
        """
        if self._closed:
            raise DevmemError("send() on a closed Sender", "create a new Sender")
        iov = np.ascontiguousarray(offsets_lengths, dtype=np.uint64).reshape(-1, 2)
        if iov.shape[0] == 0:
            return 0
        if iov.shape[0] <= self.max_iov:
            return self._send_all(iov)
        total = 0
        for start in range(0, iov.shape[0], self.max_iov):
            total += self._send_all(iov[start: start + self.max_iov])
        return total

    def _send_all(self, iov: np.ndarray) -> int:
        remaining = int(iov[0, 1]) if iov.shape[0] == 1 else int(iov[:, 1].sum())
        sent_total = 0
        while remaining > 0:
            try:
                ret = int(self.backend.sendmsg(self.sock, iov, self._cmsg, abi.MSG_ZEROCOPY))
            except InterruptedError:
                continue
            except (ConnectionError, BlockingIOError, TimeoutError):
                raise
            except OSError as exc:
                err = exc.errno or 0
                name = errno.errorcode.get(err, str(err))
                raise SendError(
                    err, f"devmem sendmsg refused: {name} ({exc.strerror})",
                    _HINTS.get(err, "see the kernel's devmem TX rules (Documentation/networking/devmem.rst)"),
                ) from exc
            if ret <= 0:
                raise ConnectionError(errno.EPIPE, "sendmsg sent nothing: the connection is closed")
            self._account(iov, ret)
            sent_total += ret
            remaining -= ret
            if remaining > 0:
                self.stats.partial_sends += 1
                iov = self._advance(iov, ret)
        return sent_total

    def _account(self, iov: np.ndarray, ret: int) -> None:
        """Record one sendmsg of ``ret`` bytes over ``iov``: its sequence
        number, the dma-buf span it reads, and the counters."""
        st = self.stats
        if iov.shape[0] == 1:  # one range (the channel's chunks): plain integers, no numpy
            off = int(iov[0, 0])
            end = off + ret  # ret <= the iovec's length
            seq = self._next_seq
            self._next_seq = (seq + 1) & _SEQ_MASK
            self._outstanding.append((seq, off, end))
            st.bytes += ret
            st.sendmsg_calls += 1
            st.iovecs += 1
            st.frags += ((end + abi.PAGE_SIZE - 1) >> _PAGE_SHIFT) - (off >> _PAGE_SHIFT)
            return
        a = iov.view(np.int64)  # offsets and lengths fit in 63 bits (EFAULT otherwise)
        offs = a[:, 0]
        lens = a[:, 1]
        k = a.shape[0]
        if k > 1 and not bool(((offs | lens) & (abi.PAGE_SIZE - 1)).any()):
            # whole pages (send_stream's chunks): each byte's page is read once
            total = int(lens.sum())
            if ret == total and bool((offs[1:] == offs[:-1] + lens[:-1]).all()):
                seq = self._next_seq
                self._next_seq = (seq + 1) & _SEQ_MASK
                lo = int(offs[0])
                self._outstanding.append((seq, lo, lo + total))
                st.bytes += ret
                st.sendmsg_calls += 1
                st.iovecs += k
                st.frags += total >> _PAGE_SHIFT
                return
        total = int(lens.sum())
        if ret < total:  # partial: only the iovecs (and the part of the last) that went out
            cum = np.cumsum(lens)
            k = min(int(cum.searchsorted(ret, side="left")) + 1, k)
            offs = offs[:k]
            lens = lens[:k].copy()
            lens[-1] = ret - (int(cum[k - 2]) if k > 1 else 0)
        ends = offs + lens
        seq = self._next_seq
        self._next_seq = (seq + 1) & _SEQ_MASK
        used = lens != 0  # an empty iovec reads nothing: it does not widen the region
        self._outstanding.append((seq, int(offs[used].min()), int(ends[used].max())))
        st.bytes += ret
        st.sendmsg_calls += 1
        st.iovecs += k
        # net_iovs read: PAGE_SIZE pages each iovec touches (empty iovecs touch none)
        pages = ((ends + (abi.PAGE_SIZE - 1)) >> _PAGE_SHIFT) - (offs >> _PAGE_SHIFT)
        st.frags += int((pages * (lens != 0)).sum())

    @staticmethod
    def _advance(iov: np.ndarray, ret: int) -> np.ndarray:
        """The iovecs left after a partial send of ``ret`` bytes."""
        lens = iov[:, 1]
        cum = np.cumsum(lens)
        full = int(np.searchsorted(cum, ret, side="right"))  # iovecs completely sent
        rest = iov[full:].copy()
        already = ret - (int(cum[full - 1]) if full else 0)
        if already:
            rest[0, 0] += np.uint64(already)
            rest[0, 1] -= np.uint64(already)
        return rest

    # -- completions ---------------------------------------------------------
    @property
    def outstanding(self) -> int:
        """sendmsg calls not yet reported complete."""
        return len(self._outstanding)

    def poll_completions(self) -> int:
        """Read every pending error-queue message (non-blocking) and retire
        the sendmsg calls they complete; return how many were retired.

        Raises ControlBufferError on MSG_CTRUNC."""
        retired = 0
        while True:
            n = self._poll_one()
            if n < 0:
                return retired
            retired += n

    def _poll_one(self) -> int:
        """Read one error-queue message: the sendmsg calls it retired, or -1
        when the queue is empty."""
        while True:
            try:
                clen, mflags = self.backend.recv_errqueue(self.sock, self._errctl_mv)
                break
            except BlockingIOError:
                return -1
            except InterruptedError:
                continue
        self.stats.errqueue_reads += 1
        if mflags & abi.MSG_CTRUNC:
            raise ControlBufferError(
                "error-queue message truncated (MSG_CTRUNC)",
                "this is a bug: the completion control buffer is 4096 bytes",
            )
        retired = 0
        for lo, hi in parse_zerocopy_completions(self._errctl, clen):
            retired += self._retire(lo, hi)
        return retired

    def _retire(self, lo: int, hi: int) -> int:
        out = self._outstanding
        if not out:
            return 0
        # fast path: completions in order, covering the oldest sends
        n = 0
        while out and _in_range(out[0][0], lo, hi):
            out.popleft()
            n += 1
        if out and any(_in_range(s, lo, hi) for s, _, _ in out):
            kept = deque(e for e in out if not _in_range(e[0], lo, hi))
            n += len(out) - len(kept)
            self._outstanding = kept
        self.stats.completions += n
        return n

    def _busy(self, offset: int, length: int) -> bool:
        end = offset + length
        return any(lo < end and offset < hi for _, lo, hi in self._outstanding)

    def _wait_once(self, timeout: float) -> None:
        """Block until the error queue may have something, at most ``timeout`` s."""
        self.backend.wait_errqueue(self.sock, timeout)

    def region_free(self, offset: int, length: int) -> bool:
        """Whether no incomplete sendmsg covers dma-buf bytes ``[offset,
        offset + length)``, reading the completions queued so far (never blocks)."""
        if not self._busy(offset, length):
            return True
        self.poll_completions()
        return not self._busy(offset, length)

    def wait_region_free(self, offset: int, length: int, timeout: float | None = None) -> None:
        """Block until no incomplete sendmsg covers dma-buf bytes
        ``[offset, offset + length)``, so they may be overwritten or resent.

        Raises DevmemError after ``timeout`` (default ``completion_timeout``)."""
        while self._busy(offset, length):
            if self._poll_one() < 0:
                break
        else:
            return
        self.stats.waits += 1
        self._wait_until(lambda: not self._busy(offset, length), timeout,
                         f"dma-buf region [{offset}, {offset + length})")

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every sendmsg so far is reported complete (DevmemError
        after ``timeout``, default ``completion_timeout``)."""
        self.poll_completions()
        if self._outstanding:
            self._wait_until(lambda: not self._outstanding, timeout, "all sends")

    def _wait_until(self, done: Any, timeout: float | None, what: str) -> None:
        limit = self.completion_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        step = 0.0005
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DevmemError(
                    f"{len(self._outstanding)} sendmsg call(s) still not completed after {limit:g} s "
                    f"(waiting for {what})",
                    "the peer stopped reading or the NIC did not finish transmitting; "
                    "the dma-buf regions of those sends must not be reused",
                )
            self._wait_once(min(step, left))
            step = min(step * 2, 0.002)  # backends without an error-queue wakeup poll
            while not done():
                if self._poll_one() < 0:
                    break
            else:
                return

    # -- lifetime ------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float | None = None) -> None:
        """Wait for every outstanding completion (idempotent). Raises
        DevmemError if they do not arrive in time; the Sender is closed
        either way. A socket already closed has nothing left to wait for."""
        if self._closed:
            return
        self._closed = True
        if self.sock.fileno() < 0:
            self._outstanding.clear()
            return
        try:
            self.flush(timeout)
        except ConnectionError:
            self._outstanding.clear()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            with contextlib.suppress(OSError, DevmemError):
                self.close(timeout=min(self.completion_timeout, 1.0))

    def __repr__(self) -> str:
        return (f"<Sender binding={self.binding_id} outstanding={len(self._outstanding)} "
                f"bytes={self.stats.bytes}>")
