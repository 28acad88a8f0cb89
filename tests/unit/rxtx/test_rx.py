"""Receiver: token accounting, DONTNEED batching and limits, EOF/close release.

The backend double below models the kernel's side of the socket calls
(tcp_recvmsg_dmabuf / sock_devmem_dontneed): a page pool of net_iovs, a
per-socket token table numbered from 1 (lowest free first, like xa_alloc),
control buffers written with the kernel's layout, and SO_DEVMEM_DONTNEED's
limits (EINVAL above 128 ranges, stop after 1024 frags, unknown tokens
skipped, return value = frags freed). It also records every call, so the
tests check syscall counts and chunk sizes, not just end results.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmemtcp import abi
from devmemtcp.codec import ControlBufferError, FragBatch, encode_rx_control, rx_control_space
from devmemtcp.errors import DevmemError
from devmemtcp.memory import MemfdBuffer
from devmemtcp.rx import Receiver
from unit.codec.oracles import chunk_sorted_tokens, dedupe_sorted


class PoolStarved(Exception):
    """The double's NIC has no free buffer: a real flow would stall here."""


@dataclass
class FakeBinding:
    id: int
    dmabuf: MemfdBuffer
    ifindex: int = 1
    kind: str = "rx"
    queues: tuple[int, ...] = (0,)

    def close(self) -> None:
        pass


@dataclass
class DevmemSocketModel:
    """Kernel-side model of one devmem TCP socket on a bound queue."""

    npages: int
    script: list[tuple[str, int]]  # ("frags", k) | ("readable", nbytes) | ("linear", nbytes)
    binding_id: int = 7
    free_pages: list[int] = field(default_factory=list)
    tokens: dict[int, int] = field(default_factory=dict)  # token -> page
    dontneed_calls: list[np.ndarray] = field(default_factory=list)
    fail_dontneed: int | None = None
    name: str = "model"

    def __post_init__(self) -> None:
        self.free_pages = list(range(self.npages))

    def _alloc_token(self) -> int:
        t = 1
        while t in self.tokens:
            t += 1
        return t

    # -- Backend socket calls -------------------------------------------------
    def recvmsg(self, sock: socket.socket, buf: memoryview, control: memoryview,
                flags: int) -> tuple[int, int, int]:
        assert flags & abi.MSG_SOCK_DEVMEM
        if not self.script:
            return 0, 0, 0
        kind, k = self.script.pop(0)
        if kind == "readable":
            buf[:k] = (np.arange(k) % 256).astype(np.uint8).tobytes()
            return k, 0, 0
        lin = 0
        if kind == "linear":
            lin, k = k, 2
            buf[:lin] = b"L" * lin
        room = len(control) // abi.DMABUF_CMSG_SPACE - (1 if lin else 0)
        k = min(k, room)
        if len(self.free_pages) < k:
            raise PoolStarved(f"{len(self.free_pages)} free pages, {k} needed")
        pages = [self.free_pages.pop(0) for _ in range(k)]
        toks = []
        for p in pages:
            t = self._alloc_token()
            self.tokens[t] = p
            toks.append(t)
        clen = encode_rx_control(control, np.array(pages, np.uint64) * 4096, np.full(k, 4096, np.uint32),
                                 np.array(toks, np.uint32), self.binding_id, linear_size=lin)
        return k * 4096 + lin, clen, 0

    def dontneed(self, sock: socket.socket, tokens: np.ndarray) -> int:
        assert tokens.dtype == abi.DMABUF_TOKEN_DTYPE
        if self.fail_dontneed is not None:
            raise OSError(self.fail_dontneed, "injected")
        if tokens.shape[0] > abi.MAX_DONTNEED_TOKENS:
            raise OSError(errno.EINVAL, "too many ranges")
        self.dontneed_calls.append(tokens.copy())
        freed = 0
        for start, count in tokens.tolist():
            for t in range(start, start + count):
                if freed >= abi.MAX_DONTNEED_FRAGS:
                    return freed
                page = self.tokens.pop(t, None)
                if page is not None:
                    self.free_pages.append(page)
                    freed += 1
        return freed


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    yield s
    s.close()


@pytest.fixture
def dmabuf() -> Iterator[MemfdBuffer]:
    with MemfdBuffer(64 * 4096) as b:
        yield b


def make(npages: int, script: list[tuple[str, int]], sock: socket.socket, **kw: object
         ) -> tuple[DevmemSocketModel, Receiver, MemfdBuffer]:
    model = DevmemSocketModel(npages, script)
    buf = MemfdBuffer(npages * 4096)
    rx = Receiver(model, sock, FakeBinding(7, buf), **kw)  # type: ignore[arg-type]
    return model, rx, buf


def test_steady_state_one_dontneed_per_1024_frags(sock: socket.socket) -> None:
    frags = 50 * 1600
    model, rx, buf = make(8192, [("frags", 1600)] * 50, sock)
    with buf, rx:
        assert rx.release_threshold == 1024
        n = 0
        while (b := rx.recv()) is not None:
            assert len(b) == 1600 and b.token.dtype == np.uint32
            n += len(b)
            rx.release(b)
            assert rx.pending < 1024 + 1600
        assert n == frags
    sizes = [int(c["token_count"].sum()) for c in model.dontneed_calls]
    # every call but the last (the EOF flush) carries exactly 1024 frags
    assert all(s == 1024 for s in sizes[:-1]) and 0 < sizes[-1] <= 1024
    assert rx.stats.release_syscalls == len(sizes) == -(-frags // 1024)
    assert rx.stats.tokens_released == frags and rx.stats.release_shortfall == 0
    assert model.tokens == {}  # the kernel's table is empty: every token came back
    assert rx.stats.frags == frags and rx.stats.bytes == frags * 4096 == rx.stats.devmem_bytes


def test_small_pool_never_starves(sock: socket.socket) -> None:
    # 64 net_iovs, 16 frags per recvmsg: the thresholds follow the pool size
    model, rx, buf = make(64, [("frags", 16)] * 200, sock)
    with buf, rx:
        assert rx.release_threshold == 16 and rx.max_held == 32
        while (b := rx.recv()) is not None:
            rx.release(b)
    assert model.tokens == {} and rx.stats.frags == 3200


def test_holding_tokens_forces_flush_before_the_pool_runs_dry(sock: socket.socket) -> None:
    # the application keeps batches in flight (e.g. a GPU copy pipeline) and the
    # release threshold alone (1000) would queue more tokens than the pool has
    # (256): max_held must force the flush, or the model raises PoolStarved
    model, rx, buf = make(256, [("frags", 20)] * 200, sock, release_threshold=1000, max_held=100)
    inflight: list[FragBatch] = []
    with buf, rx:
        while (b := rx.recv()) is not None:
            inflight.append(b)
            if len(inflight) > 2:
                rx.release(inflight.pop(0))
            assert rx.held + rx.pending < rx.max_held
    assert model.tokens == {}
    assert rx.stats.forced_flushes >= 10 and rx.stats.frags == 4000


def test_close_gives_back_unreleased_tokens(sock: socket.socket) -> None:
    model, rx, buf = make(4096, [("frags", 100)] * 5, sock)
    with buf:
        with rx:
            batches = [rx.recv() for _ in range(3)]
            rx.release(batches[0])
            assert rx.held == 200 and rx.pending == 100 and len(model.tokens) == 300
        assert model.tokens == {} and rx.closed
        assert rx.stats.tokens_released == 300
        rx.close()  # idempotent
        assert rx.stats.release_syscalls == 1
        with pytest.raises(DevmemError, match="closed"):
            rx.recv()


def test_exception_in_block_still_releases(sock: socket.socket) -> None:
    model, rx, buf = make(4096, [("frags", 100)] * 5, sock)
    with buf, pytest.raises(RuntimeError), rx:
        rx.recv()
        raise RuntimeError("consumer failed")
    assert model.tokens == {}


def test_release_ignores_unknown_and_double_releases(sock: socket.socket) -> None:
    model, rx, buf = make(4096, [("frags", 10)], sock)
    with buf, rx:
        b = rx.recv()
        assert b is not None
        rx.release(b.token[:4])
        rx.release(b.token[:4])  # again: ignored
        rx.release(np.array([999999, 0], np.uint32))  # never delivered
        assert rx.held == 6 and rx.pending == 4
        rx.release(b)
        assert rx.held == 0 and rx.pending == 10
        rx.flush()
        assert rx.pending == 0 and model.tokens == {}
    assert [c.tolist() for c in model.dontneed_calls] == [[(1, 10)]]


def test_readable_data_is_a_flow_steering_error(sock: socket.socket) -> None:
    model, rx, buf = make(4096, [("readable", 300), ("frags", 3)], sock)
    with buf, rx:
        b = rx.recv()
        assert b is not None and len(b) == 0 and b.readable.shape == (300,)
        assert b.readable.tolist() == (np.arange(300) % 256).tolist()
        assert rx.stats.flow_steering_errors == 300 and rx.stats.bytes == 300
        b2 = rx.recv()
        assert b2 is not None and len(b2) == 3 and b2.readable.shape == (0,)
        rx.release(b2)
    assert rx.stats.bytes == 300 + 3 * 4096 and rx.stats.flow_steering_errors == 300
    assert model.tokens == {}


def test_linear_bytes_are_exposed(sock: socket.socket) -> None:
    model, rx, buf = make(4096, [("linear", 70)], sock)
    with buf, rx:
        b = rx.recv()
        assert b is not None
        assert b.linear_bytes == 70 and bytes(b.linear) == b"L" * 70 and len(b) == 2
        assert rx.stats.linear_bytes == 70 and rx.stats.devmem_bytes == 2 * 4096
    assert model.tokens == {}


def test_wrong_binding_is_reported_and_tokens_still_returned(sock: socket.socket) -> None:
    model, rx, buf = make(4096, [("frags", 5)], sock)
    model.binding_id = 99
    with buf, rx, pytest.raises(DevmemError, match="binding 99"):
        rx.recv()
    assert model.tokens == {}


def test_failed_dontneed_keeps_tokens_queued(sock: socket.socket) -> None:
    model, rx, buf = make(4096, [("frags", 1024)], sock)
    with buf:
        b = rx.recv()
        assert b is not None
        model.fail_dontneed = errno.EBADF
        with pytest.raises(OSError):
            rx.release(b)
        assert rx.pending == 1024 and rx.held == 0
        model.fail_dontneed = None
        rx.flush()
        assert model.tokens == {} and rx.pending == 0
        rx.close()


def test_fragmented_tokens_respect_128_ranges(sock: socket.socket) -> None:
    model, rx, buf = make(8192, [("frags", 1600)] * 3, sock)
    with buf, rx:
        for _ in range(3):
            b = rx.recv()
            assert b is not None
            rx.release(b.token[::2])  # every other token: isolated ranges
        assert len(model.dontneed_calls) == 12  # 1536 of the 1600 queued, 64 kept
        for c in model.dontneed_calls:
            assert c.shape[0] <= 128
            assert c.shape[0] == 128 or int(c["token_count"].sum()) == 1024
    assert model.tokens == {}  # close gave back the rest, held or queued


def test_process_control_drives_the_same_pipeline(sock: socket.socket, dmabuf: MemfdBuffer) -> None:
    model = DevmemSocketModel(64, [])
    with Receiver(model, sock, FakeBinding(7, dmabuf)) as rx:  # type: ignore[arg-type]
        ctl = bytearray(400)
        n = encode_rx_control(ctl, np.arange(10, dtype=np.uint64) * 4096, np.full(10, 4096, np.uint32),
                              np.arange(1, 11, dtype=np.uint32), 7)
        model.tokens.update({t: t - 1 for t in range(1, 11)})
        model.free_pages = model.free_pages[10:]
        b = rx.process_control(np.frombuffer(ctl, np.uint8), n, 0, 10 * 4096)
        assert b.token.tolist() == list(range(1, 11)) and rx.held == 10
        with pytest.raises(ControlBufferError, match="MSG_CTRUNC"):
            rx.process_control(np.frombuffer(ctl, np.uint8), n, abi.MSG_CTRUNC, 10)
    assert model.tokens == {}


def test_control_buffer_too_small_is_refused(sock: socket.socket, dmabuf: MemfdBuffer) -> None:
    with pytest.raises(DevmemError, match="40"):
        Receiver(DevmemSocketModel(4, []), sock, FakeBinding(7, dmabuf), control_size=39)  # type: ignore[arg-type]


def test_kernel_dontneed_on_a_real_tcp_socket() -> None:
    """Releasing through the real kernel: tokens it never handed out free nothing."""
    from devmemtcp.backend.kernel import KernelBackend

    kb = KernelBackend()

    class KernelReleasing(DevmemSocketModel):
        def dontneed(self, sock: socket.socket, tokens: np.ndarray) -> int:
            self.dontneed_calls.append(tokens.copy())
            return kb.dontneed(sock, tokens)

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        with socket.create_connection(lsock.getsockname()) as c, MemfdBuffer(4096 * 4096) as buf:
            model = KernelReleasing(4096, [("frags", 1600)] * 2)
            with Receiver(model, c, FakeBinding(7, buf)) as rx:  # type: ignore[arg-type]
                while (b := rx.recv()) is not None:
                    rx.release(b)
            assert rx.stats.release_syscalls == 4  # 1024 + 1024 + 1024 + 128 at EOF
            assert rx.stats.tokens_released == 0 and rx.stats.release_shortfall == 3200


# ---------------------------------------------------------------------------
# End to end over the emulated devmem NIC and real loopback TCP
# ---------------------------------------------------------------------------
def _emulated(tmp_path: object) -> object:
    from devmemtcp.backend.emulated import EmulatedBackend

    return EmulatedBackend(directory=str(tmp_path))


@contextlib.contextmanager
def _steered_pair(be: object) -> Iterator[tuple[socket.socket, socket.socket]]:
    from devmemtcp.types import NtupleRule

    be.nic("lo").set_rings(tcp_data_split="enabled", hds_thresh=0)  # type: ignore[attr-defined]
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname()) as cli:
            conn, _ = srv.accept()
            with conn:
                ip, port = conn.getsockname()[:2]
                be.nic("lo").add_rule(NtupleRule(dst_ip=ip, dst_port=port, queue=3))  # type: ignore[attr-defined]
                yield cli, conn


def test_emulated_stream_validated_with_a_small_pool(tmp_path: object) -> None:
    """8 MiB of ncdevmem's pattern through a 1 MiB (256-page) dma-buf: the
    Receiver must give buffers back fast enough for the flow never to stall,
    and every byte lands in the dma-buf in stream order."""
    from devmemtcp.pattern import PatternChecker, pattern_bytes

    be = _emulated(tmp_path)
    total = 8 << 20
    data = pattern_bytes(7, 0, total).tobytes()
    lo = socket.if_nametoindex("lo")
    with be, MemfdBuffer(256 * 4096) as buf, _steered_pair(be) as (cli, conn), \
            be.bind_rx(lo, buf, [3]) as binding:  # type: ignore[attr-defined]
        t = threading.Thread(target=lambda: (cli.sendall(data), cli.shutdown(socket.SHUT_WR)))
        t.start()
        checker = PatternChecker(7)
        with Receiver(be, conn, binding) as rx:  # type: ignore[arg-type]
            while (b := rx.recv()) is not None:
                assert len(b.readable) == 0
                checker.check(buf.gather(b))
                rx.release(b)
            st = rx.stats
        t.join()
        assert checker.offset == total == st.bytes == st.devmem_bytes
        assert st.flow_steering_errors == 0 and st.tokens_released == st.frags
        assert st.release_syscalls <= st.frags // 64 + 1  # threshold = pool/4 = 64 frags
        assert be.outstanding(conn) == 0  # type: ignore[attr-defined]


def test_emulated_close_returns_held_tokens(tmp_path: object) -> None:
    be = _emulated(tmp_path)
    lo = socket.if_nametoindex("lo")
    with be, MemfdBuffer(256 * 4096) as buf, _steered_pair(be) as (cli, conn), \
            be.bind_rx(lo, buf, [3]) as binding:  # type: ignore[attr-defined]
        cli.sendall(b"\x01" * (64 * 4096))
        rx = Receiver(be, conn, binding)  # type: ignore[arg-type]
        got = 0
        while got < 64 * 4096:
            b = rx.recv()
            assert b is not None
            got += b.nbytes
        assert rx.held == be.outstanding(conn) > 0  # type: ignore[attr-defined]
        rx.close()
        assert be.outstanding(conn) == 0  # type: ignore[attr-defined]


def test_emulated_unsteered_flow_counts_flow_steering_errors(tmp_path: object) -> None:
    be = _emulated(tmp_path)
    lo = socket.if_nametoindex("lo")
    with be, MemfdBuffer(64 * 4096) as buf:
        be.nic("lo").set_rings(tcp_data_split="enabled", hds_thresh=0)  # type: ignore[attr-defined]
        be.nic("lo").set_rss_indir([0] * 128)  # type: ignore[attr-defined]
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen()
            with socket.create_connection(srv.getsockname()) as cli, \
                    be.bind_rx(lo, buf, [3]) as binding:  # type: ignore[attr-defined]
                conn, _ = srv.accept()
                with conn, Receiver(be, conn, binding) as rx:  # type: ignore[arg-type]
                    cli.sendall(b"plain tcp")
                    cli.shutdown(socket.SHUT_WR)
                    data = b""
                    while (b := rx.recv()) is not None:
                        assert len(b) == 0
                        data += b.readable.tobytes()
                    assert data == b"plain tcp"
                    assert rx.stats.flow_steering_errors == 9 and rx.stats.frags == 0


# -- the fast flush against the general one ---------------------------------------------------
class RecordingBackend:
    """Records every SO_DEVMEM_DONTNEED; frees every frag it is asked for (up to 1024)."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, int]]] = []

    def dontneed(self, sock: socket.socket, tokens: np.ndarray) -> int:
        assert tokens.dtype == abi.DMABUF_TOKEN_DTYPE and 1 <= tokens.shape[0] <= abi.MAX_DONTNEED_TOKENS
        self.calls.append(tokens.tolist())
        return min(int(tokens["token_count"].sum()), abi.MAX_DONTNEED_FRAGS)


class GeneralQueue:
    """A release queue with the general plan only: an array of tokens; sort,
    dedupe_sorted, chunk_sorted_tokens (the earlier planner, an oracle)."""

    def __init__(self) -> None:
        self.toks = np.empty(0, np.uint32)
        self.queued = 0

    def add(self, tokens: np.ndarray, runs: list[int] | None = None) -> None:
        self.toks = np.concatenate([self.toks, np.asarray(tokens, np.uint32)])
        self.queued = self.toks.shape[0]

    def plan(self, full_only: bool = False) -> tuple[list[np.ndarray], list[int]]:
        self.toks = dedupe_sorted(np.sort(self.toks, kind="stable"))
        self.queued = self.toks.shape[0]
        return chunk_sorted_tokens(self.toks, full_only=full_only)

    def consume(self, sent: int) -> None:
        self.toks = self.toks[sent:]
        self.queued = self.toks.shape[0]

    def clear(self) -> None:
        self.toks = self.toks[:0]
        self.queued = 0


class GeneralPathReceiver(Receiver):
    """The Receiver with the general queue and flush (:class:`GeneralQueue`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue = GeneralQueue()  # type: ignore[assignment]


@st.composite
def receiver_scripts(draw: st.DrawFn) -> list[tuple[str, object]]:
    """recv (tokens as a few runs, at times out of order or repeated), release of
    a held batch (whole, twice, or part of its tokens), flush."""
    ops: list[tuple[str, object]] = []
    nbatches = 0
    next_tok = 1
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["recv", "recv", "release", "release", "part", "flush"]))
        if kind == "recv" and nbatches and draw(st.integers(0, 4)) == 0:
            # the same token numbers again while the first ones may still be held or queued
            prev = [arg for op, arg in ops if op == "recv"]
            ops.append(("recv", draw(st.sampled_from(prev))))
            nbatches += 1
        elif kind == "recv":
            parts = []
            for _r in range(draw(st.integers(1, 4))):
                count = draw(st.integers(1, 1500))
                start = draw(st.integers(1, next_tok + 2000))
                parts.append(np.arange(start, start + count, dtype=np.uint32))
                next_tok = max(next_tok, start + count)
            # one recvmsg never repeats a token (the kernel's xarray): overlapping parts merged
            toks = np.concatenate(parts)
            toks = toks[np.sort(np.unique(toks, return_index=True)[1])]
            if draw(st.booleans()):
                toks = toks[np.argsort(draw(st.permutations(range(toks.shape[0]))) if toks.shape[0] < 50
                                       else np.arange(toks.shape[0])[::-1])]
            ops.append(("recv", toks))
            nbatches += 1
        elif nbatches:
            ops.append((kind, draw(st.integers(0, nbatches - 1))))
        else:
            ops.append(("flush", None))
    return ops


def _control(tokens: np.ndarray) -> np.ndarray:
    ctl = np.zeros(rx_control_space(tokens.shape[0]), np.uint8)
    n = tokens.shape[0]
    # offsets inside the tests' 1 MiB dma-bufs
    offsets = (np.arange(n, dtype=np.uint64) % 256) * 4096
    encode_rx_control(ctl, offsets, np.full(n, 4096, np.uint32), tokens, 7)
    return ctl


@settings(max_examples=150, deadline=None)
@given(receiver_scripts(), st.sampled_from([None, 100, 700, 1024]), st.sampled_from([None, 3000]))
def test_fast_flush_issues_the_calls_of_the_general_flush(
        script: list[tuple[str, object]], threshold: int | None, max_held: int | None) -> None:
    backends = [RecordingBackend(), RecordingBackend()]
    with socket.socket() as s, MemfdBuffer(1 << 20) as dmabuf:
        rxs = [cls(be, s, FakeBinding(7, dmabuf), release_threshold=threshold, max_held=max_held)  # type: ignore[arg-type]
               for cls, be in zip((Receiver, GeneralPathReceiver), backends, strict=True)]
        batches: list[list[FragBatch]] = [[], []]
        for op, arg in script:
            for rx, mine in zip(rxs, batches, strict=True):
                if op == "recv":
                    assert isinstance(arg, np.ndarray)
                    mine.append(rx.process_control(_control(arg), rx_control_space(arg.shape[0]), 0,
                                                   arg.shape[0] * 4096))
                elif op == "release":
                    assert isinstance(arg, int)
                    rx.release(mine[arg])
                elif op == "part":
                    assert isinstance(arg, int)
                    rx.release(mine[arg].token[::3].copy())
                else:
                    rx.flush()
            assert rxs[0].pending == rxs[1].pending and rxs[0].held == rxs[1].held
            assert backends[0].calls == backends[1].calls
        for rx in rxs:
            rx.close()
    assert backends[0].calls == backends[1].calls
    assert rxs[0].stats == rxs[1].stats
    # a token number is given back at most as often as it was delivered, and close gave back all
    delivered = Counter(t for op, arg in script if op == "recv" for t in np.asarray(arg).tolist())
    given_back = Counter(t for call in backends[0].calls for start, count in call
                         for t in range(start, start + count))
    assert given_back.keys() == delivered.keys()
    assert all(given_back[t] <= delivered[t] for t in given_back)


def test_duplicate_tokens_in_the_queue_are_given_back_once(sock: socket.socket) -> None:
    backend = RecordingBackend()
    with MemfdBuffer(64 << 20) as dmabuf, Receiver(backend, sock, FakeBinding(7, dmabuf)) as rx:  # type: ignore[arg-type]
        assert rx.release_threshold == 1024
        toks = np.arange(1, 601, dtype=np.uint32)
        for _ in range(2):  # 1200 queued, 600 distinct: below a full call, nothing sent
            rx.release(rx.process_control(_control(toks), rx_control_space(600), 0, 600 * 4096))
        assert backend.calls == [] and rx.pending == 600
        rx.flush()
        assert backend.calls == [[(1, 600)]] and rx.pending == 0


def test_runs_queue_falls_back_to_an_array_with_the_same_count(sock: socket.socket) -> None:
    # tokens released twice count twice until the flush drops them, in both forms of the queue
    script = [np.arange(1, 301, dtype=np.uint32)] * 2 + [
        np.arange(1000, 1100, 2, dtype=np.uint32),  # 50 runs: the queue becomes an array
        np.arange(5000, 5060, dtype=np.uint32)]
    backends = [RecordingBackend(), RecordingBackend()]
    with MemfdBuffer(64 << 20) as dmabuf:
        rxs = [cls(be, sock, FakeBinding(7, dmabuf), release_threshold=700)  # type: ignore[arg-type]
               for cls, be in zip((Receiver, GeneralPathReceiver), backends, strict=True)]
        for toks in script:
            for rx in rxs:
                rx.release(rx.process_control(_control(toks), rx_control_space(toks.shape[0]), 0,
                                              toks.shape[0] * 4096))
            assert rxs[0].pending == rxs[1].pending
        assert rxs[0]._queue.is_runs  # back to runs after the flush
    assert backends[0].calls == backends[1].calls
    assert sum(c for call in backends[0].calls for _s, c in call) == 410
