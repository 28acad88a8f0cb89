"""Receiver: the devmem receive loop, with batched and coalesced token release.

One :class:`Receiver` wraps a connected TCP socket whose flow lands on RX
queues bound to a dma-buf. Each :meth:`Receiver.recv` is one
``recvmsg(MSG_SOCK_DEVMEM)`` (``tcp_recvmsg_dmabuf`` in net/ipv4/tcp.c) into
an iov buffer and a control buffer allocated once, parsed by
:func:`devmemtcp.codec.parse_rx_control` into a :class:`~devmemtcp.codec.FragBatch`.

Tokens the application is done with go back through
:meth:`Receiver.release`: they are queued in a
:class:`~devmemtcp.codec.ReleaseQueue` (as runs of consecutive tokens
while there are few, the steady state, else as an array), coalesced
into ``dmabuf_token`` ranges and handed to ``SO_DEVMEM_DONTNEED``
(``sock_devmem_dontneed`` in net/core/sock.c) in calls of exactly 1024 frags
(or 128 ranges) where possible, the rest staying queued for the next call:
at most one syscall per 1024 fragments in steady state. Because the NIC can
only refill its page pool from the dma-buf, the receiver never sits on many
tokens: ``max_held`` forces a full flush, and EOF and :meth:`Receiver.close`
give back everything.

The same code runs over the kernel and the emulated backend, and
:meth:`Receiver.process_control` lets benchmarks drive the exact per-batch
pipeline with synthetic kernel-layout buffers. Nothing here loops per
fragment in Python.
"""

from __future__ import annotations

import contextlib
import mmap
import socket
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from devmemtcp import abi
from devmemtcp.codec import FragBatch, FragRecordError, KernelInvariantError, ReleaseQueue, parse_rx_batch
from devmemtcp.errors import DevmemError

if TYPE_CHECKING:
    from devmemtcp.backend.base import Backend, Binding

__all__ = ["DEFAULT_CONTROL_SIZE", "Receiver", "ReceiverStats"]

DEFAULT_CONTROL_SIZE = 1600 * abi.DMABUF_CMSG_SPACE  # 64000 bytes: 1600 fragments per recvmsg


@dataclass
class ReceiverStats:
    """Counters of one Receiver (all cumulative).

    ``bytes``: every byte recvmsg returned (device + linear + readable).
    ``frags`` / ``devmem_bytes``: SCM_DEVMEM_DMABUF fragments and their bytes.
    ``linear_bytes``: SCM_DEVMEM_LINEAR bytes (copied into the iov).
    ``flow_steering_errors``: bytes of readable data (recvmsg returned data
    with no devmem cmsg: the flow landed on an ordinary queue).
    ``tokens_released``: frags the kernel reported freed by SO_DEVMEM_DONTNEED.
    ``release_syscalls``: SO_DEVMEM_DONTNEED calls. ``release_shortfall``:
    frags asked for but not freed (tokens the kernel did not know).
    ``recv_calls`` / ``batches``: recvmsg calls / non-empty batches.
    ``forced_flushes``: flushes forced by ``max_held`` or EOF.
    ``page_aligned_frags`` / ``non_page_aligned_frags``: frags whose
    dma-buf offset is / is not a multiple of PAGE_SIZE (as ncdevmem counts
    them). The frag-size histogram is :attr:`Receiver.frag_size_hist`.
    """

    bytes: int = 0
    frags: int = 0
    devmem_bytes: int = 0
    linear_bytes: int = 0
    flow_steering_errors: int = 0
    tokens_released: int = 0
    release_syscalls: int = 0
    release_shortfall: int = 0
    recv_calls: int = 0
    batches: int = 0
    forced_flushes: int = 0
    page_aligned_frags: int = 0
    non_page_aligned_frags: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


#: frag-size histogram buckets: bucket k holds sizes with bit length k (2**(k-1) .. 2**k - 1)
FRAG_SIZE_BUCKETS = 33


def frag_size_histogram(hist: np.ndarray) -> dict[str, int]:
    """``{"LO-HI": count}`` (sizes in bytes, both ends included) of the
    non-empty buckets of a :attr:`Receiver.frag_size_hist` array."""
    return {f"{1 << (k - 1)}-{(1 << k) - 1}": int(c) for k, c in enumerate(hist.tolist()) if c and k}


class Receiver:
    """Receive a devmem flow as :class:`~devmemtcp.codec.FragBatch` objects.

    Args:
        backend: the :class:`~devmemtcp.backend.base.Backend` (kernel or emulated).
        sock: the connected TCP socket.
        binding: the RX binding; fragments whose ``dmabuf_id`` differs from
            ``binding.id`` raise DevmemError (their tokens are still tracked
            and given back).
        control_size: control buffer bytes, 40 per fragment (default 64000,
            1600 fragments per recvmsg).
        linear_buf_size: iov buffer bytes; it bounds the bytes one recvmsg
            returns, device bytes included (tcp_recvmsg's ``len``). Default:
            one PAGE_SIZE per cmsg the control buffer holds. Lazily-mapped
            anonymous memory: only pages written (linear or readable data)
            become resident.
        release_threshold: queued tokens that trigger a release; default
            ``MAX_DONTNEED_FRAGS`` (1024) or a quarter of the dma-buf's pages
            if that is smaller.
        max_held: when the tokens held (delivered and not yet released, plus
            queued) reach this, every queued token is given back at once, so
            the page pool cannot starve; default half the dma-buf's pages
            (``release_threshold`` is lowered to it if larger).
        check_dmabuf_id: raise on fragments of another binding (default True).

    Use as a context manager; :meth:`close` gives back every token still
    held, also when leaving on an exception.
    """

    def __init__(
        self,
        backend: Backend,
        sock: socket.socket,
        binding: Binding,
        *,
        control_size: int = DEFAULT_CONTROL_SIZE,
        linear_buf_size: int | None = None,
        release_threshold: int | None = None,
        max_held: int | None = None,
        check_dmabuf_id: bool = True,
    ) -> None:
        if control_size < abi.DMABUF_CMSG_SPACE:
            raise DevmemError(
                f"control buffer of {control_size} bytes cannot hold one devmem cmsg",
                f"use at least {abi.DMABUF_CMSG_SPACE} bytes (40 per fragment)",
            )
        self.backend = backend
        self.sock = sock
        self.binding = binding
        self.binding_id = int(binding.id)
        self.check_dmabuf_id = check_dmabuf_id
        dmabuf = binding.dmabuf
        pool_pages = None  # a binding from a bare fd: its size is not known here
        if dmabuf is not None and dmabuf.size:
            pool_pages = int(dmabuf.size) // int(dmabuf.page_size or abi.PAGE_SIZE)
        self._dmabuf_size = int(dmabuf.size) if dmabuf is not None and dmabuf.size else None
        if release_threshold is None:
            release_threshold = abi.MAX_DONTNEED_FRAGS
            if pool_pages:
                release_threshold = max(1, min(release_threshold, pool_pages // 4))
        if release_threshold < 1:
            raise DevmemError(f"release_threshold {release_threshold} must be >= 1", "use e.g. 1024")
        if max_held is None:
            max_held = max(release_threshold, pool_pages // 2) if pool_pages else 8 * abi.MAX_DONTNEED_FRAGS
        if max_held < 1:
            raise DevmemError(f"max_held {max_held} must be >= 1", "use e.g. half the dma-buf's pages")
        self.max_held = max_held
        self.release_threshold = min(release_threshold, max_held)
        self.stats = ReceiverStats()
        #: frags per size bucket (bucket k: sizes of bit length k; see frag_size_histogram)
        self.frag_size_hist = np.zeros(FRAG_SIZE_BUCKETS, dtype=np.int64)
        # buffers, allocated once
        self._control = bytearray(control_size)
        self._control_mv = memoryview(self._control)
        self._control_np = np.frombuffer(self._control, np.uint8)
        if linear_buf_size is None:
            linear_buf_size = (control_size // abi.DMABUF_CMSG_SPACE) * abi.PAGE_SIZE
        self._iobuf = mmap.mmap(-1, max(linear_buf_size, 1))
        self._iobuf_np = np.frombuffer(self._iobuf, np.uint8)[:linear_buf_size]
        self._iobuf_mv = memoryview(self._iobuf)[:linear_buf_size]
        # token accounting: the token arrays of delivered batches the application still holds
        # (with their runs when the parser found few), by batch serial: one dict operation per
        # batch, none per token
        self._live: dict[int, tuple[np.ndarray, list[int] | None]] = {}
        self._serial = 0
        self._nheld = 0
        # released tokens not yet given to the kernel (counts duplicates until a flush drops them)
        self._queue = ReleaseQueue()
        self._closed = False
        self.eof = False

    # -- receiving -----------------------------------------------------------
    def recv(self, max_bytes: int | None = None) -> FragBatch | None:
        """One ``recvmsg(MSG_SOCK_DEVMEM)``; the batch, or ``None`` at EOF.

        ``max_bytes`` (default: the iov buffer's size) bounds the bytes this
        call returns, device bytes included (tcp_recvmsg_dmabuf stops at the
        call's ``len``), so a caller can stop exactly at a message boundary.

        The batch's arrays are new; its ``linear`` / ``readable`` views point
        into the receiver's iov buffer and are valid until the next call.
        Raises OSError from the backend (EAGAIN on a socket timeout, EFAULT
        if the control buffer cannot hold one cmsg),
        :class:`~devmemtcp.codec.ControlBufferError` for MSG_CTRUNC or a
        malformed buffer (:class:`~devmemtcp.codec.FragRecordError` for values
        the kernel never writes), DevmemError for fragments of another binding.
        At EOF every queued token is given back.
        """
        if self._closed:
            raise DevmemError("recv() on a closed Receiver", "create a new Receiver for a new connection")
        iov = self._iobuf_mv
        if max_bytes is not None and 0 < max_bytes < len(iov):
            iov = iov[:max_bytes]
        nbytes, controllen, msg_flags = self.backend.recvmsg(
            self.sock, iov, self._control_mv, abi.MSG_SOCK_DEVMEM
        )
        self.stats.recv_calls += 1
        if nbytes == 0 and controllen == 0:
            self.eof = True
            if self._queue.queued:
                self.stats.forced_flushes += 1
                self._flush(everything=True)
            return None
        return self.process_control(self._control_np, controllen, msg_flags, nbytes)

    def process_control(
        self, control: np.ndarray | memoryview | bytes, controllen: int, msg_flags: int, nbytes: int
    ) -> FragBatch:
        """The per-batch pipeline of :meth:`recv` after the syscall: parse the
        control buffer, account, track the tokens as held.

        ``control`` is in the kernel's layout (``controllen`` bytes used),
        ``nbytes`` what recvmsg returned. Data with no devmem cmsg is
        readable data: counted in ``stats.flow_steering_errors`` and exposed
        as ``batch.readable`` (a view of the iov buffer).

        A record the kernel never writes (a token 0, above 2**31 - 1 or
        twice, an empty fragment or one past the dma-buf, sizes that do not
        add up to ``nbytes``) raises
        :class:`~devmemtcp.codec.FragRecordError`, or on the kernel backend
        :class:`~devmemtcp.codec.KernelInvariantError` (a kernel or driver
        fault, with the raw record); the batch's tokens that the kernel may
        hold are given back first.
        """
        try:
            batch, dmabuf_id, runs = parse_rx_batch(control, controllen, msg_flags, nbytes,
                                                    self._dmabuf_size)
        except FragRecordError as err:
            self._give_back_now(err.tokens)
            if self.backend.name == "kernel":
                raise KernelInvariantError(err) from err
            raise
        st = self.stats
        st.bytes += nbytes
        n = batch.token.shape[0]
        lin = batch.linear_bytes
        if n == 0 and lin == 0:
            if nbytes:
                st.flow_steering_errors += nbytes
                batch.readable = self._iobuf_np[:nbytes]
            return batch
        st.batches += 1
        st.frags += n
        if n:
            unaligned = int(np.count_nonzero(batch.offset & (abi.PAGE_SIZE - 1)))
            st.non_page_aligned_frags += unaligned
            st.page_aligned_frags += n - unaligned
            sizes = batch.size
            if np.minimum.reduce(sizes) == np.maximum.reduce(sizes):  # (ndarray.min goes through Python)
                self.frag_size_hist[int(sizes[0]).bit_length()] += n
            else:
                self.frag_size_hist += np.bincount(np.frexp(sizes)[1], minlength=FRAG_SIZE_BUCKETS)[
                    :FRAG_SIZE_BUCKETS]
        if lin:
            st.linear_bytes += lin
            batch.linear = self._iobuf_np[:lin]
        st.devmem_bytes += nbytes - lin
        if n:
            self._serial = serial = self._serial + 1
            batch.serial = serial
            self._live[serial] = (batch.token, runs)
            self._nheld += n
            # parse_rx_uniform gave the id when all fragments share it: one comparison per batch
            if dmabuf_id != self.binding_id and self.check_dmabuf_id:
                ids = batch.dmabuf_id
                if dmabuf_id >= 0 or (ids != self.binding_id).any():
                    bad = dmabuf_id if dmabuf_id >= 0 else int(ids[ids != self.binding_id][0])
                    raise DevmemError(
                        f"received fragments of dma-buf binding {bad}, this receiver's binding is "
                        f"{self.binding_id}: flow steering error",
                        "steer the flow to the queues bound to this dma-buf (ntuple rule: devmemtcp setup)",
                    )
        return batch

    # -- giving buffers back -------------------------------------------------
    @property
    def held(self) -> int:
        """Tokens delivered and not yet released by the application."""
        return self._nheld

    @property
    def pending(self) -> int:
        """Tokens released by the application, not yet given to the kernel."""
        return self._queue.queued

    def release(self, batch_or_tokens: FragBatch | np.ndarray) -> None:
        """Give fragments back (a FragBatch, or an array of token numbers).

        Tokens this receiver does not hold (already released, never
        delivered) are ignored; releasing a batch twice is harmless (the
        kernel may have handed its token numbers out again since, so the
        second call does nothing). Tokens are queued; once ``release_threshold``
        are queued, whole SO_DEVMEM_DONTNEED calls (1024 frags or 128 ranges
        each) are issued and the remainder stays queued; reaching
        ``max_held`` flushes everything. Raises OSError from the backend (the
        unsent tokens stay queued).
        """
        runs: list[int] | None = None
        if isinstance(batch_or_tokens, FragBatch):
            serial = batch_or_tokens.serial
            live = self._live.pop(serial, None)
            if live is None:
                if serial:  # ours, already given back in full: token numbers may be reused since
                    return
                tokens = self._take_tokens(batch_or_tokens.token)  # a batch built elsewhere
            else:
                tokens, runs = live
        else:
            tokens = self._take_tokens(np.asarray(batch_or_tokens, dtype=np.uint32).reshape(-1))
        k = tokens.shape[0]
        if k == 0:
            return
        self._nheld -= k
        q = self._queue
        q.add(tokens, runs)
        if q.queued >= self.release_threshold:
            self._flush(everything=self.release_threshold < abi.MAX_DONTNEED_FRAGS)
        elif q.queued + self._nheld >= self.max_held:
            self.stats.forced_flushes += 1
            self._flush(everything=True)

    def _take_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """Remove ``tokens`` from the held batches; return those that were held
        (the slow path for token arrays and partly released batches)."""
        if tokens.shape[0] == 0 or not self._live:
            return tokens[:0]
        want = np.unique(tokens)
        taken: list[np.ndarray] = []
        for serial, (arr, _runs) in list(self._live.items()):
            hit = np.isin(arr, want)
            if hit.any():
                taken.append(arr[hit])
                rest = arr[~hit]
                if rest.shape[0]:
                    self._live[serial] = (rest, None)
                else:
                    del self._live[serial]
        if not taken:
            return tokens[:0]
        return np.concatenate(taken)

    def flush(self) -> None:
        """Give every queued token back now."""
        if self._queue.queued:
            self._flush(everything=True)

    def _give_back_now(self, tokens: np.ndarray) -> None:
        """Queue ``tokens`` (of a batch that is not delivered) and flush them;
        a failing release leaves them queued for :meth:`close`."""
        if tokens.shape[0]:
            self._queue.add(tokens)
            with contextlib.suppress(OSError):
                self._flush(everything=True)

    def _flush(self, everything: bool) -> None:
        """Issue the SO_DEVMEM_DONTNEED calls the queue plans
        (:meth:`~devmemtcp.codec.ReleaseQueue.plan`).

        ``everything=False`` keeps the last chunk queued unless it is full
        (1024 frags or 128 ranges), so steady state stays at one call per
        1024 fragments."""
        q = self._queue
        chunks, ends = q.plan(full_only=not everything)
        sent = 0
        st = self.stats
        dontneed = self.backend.dontneed
        sock = self.sock
        try:
            for chunk, end in zip(chunks, ends, strict=True):
                freed = int(dontneed(sock, chunk))
                st.release_syscalls += 1
                st.tokens_released += freed
                if freed < end - sent:
                    st.release_shortfall += end - sent - freed
                sent = end
        finally:
            # the chunks cover the sorted distinct tokens in order: the unsent tail stays queued
            q.consume(sent)

    # -- lifetime ------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Give back every token still held or queued (idempotent).

        If the socket is already closed the kernel has freed them with it
        (tokens are per socket) and nothing is sent. Raises OSError from the
        backend if a release fails (the receiver is closed regardless)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.sock.fileno() < 0:
                return
            if self._live:
                held = np.concatenate([arr for arr, _runs in self._live.values()])
                self._live.clear()
                self._nheld = 0
                self._queue.add(held)
            if self._queue.queued:
                self._flush(everything=True)
        finally:
            self._queue.clear()
            self._nheld = 0
            self._live.clear()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            # do not mask the exception in flight; the kernel frees the tokens
            # with the socket if this fails
            with contextlib.suppress(OSError, DevmemError):
                self.close()

    def __repr__(self) -> str:
        return (f"<Receiver binding={self.binding_id} held={self._nheld} pending={self._queue.queued} "
                f"frags={self.stats.frags}>")
