"""Sender: iovecs of dma-buf offsets, partial sends, zerocopy completion tracking.

The backend double models the kernel's devmem TX rules that the Sender
depends on: the SCM_DEVMEM_DMABUF cmsg is parsed with the kernel's checks,
MSG_ZEROCOPY and SO_ZEROCOPY (read back from the real socket) are required,
offsets past the dma-buf are EFAULT, each sendmsg that sends takes the next
sequence number, and completions arrive later on an error queue as
sock_extended_err ranges, coalesced like the kernel does.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from devmemtcp import abi
from devmemtcp.codec import encode_zerocopy_completion, parse_tx_cmsg
from devmemtcp.errors import DevmemError
from devmemtcp.memory import MemfdBuffer
from devmemtcp.tx import Sender, SendError


@dataclass
class FakeBinding:
    id: int
    dmabuf: MemfdBuffer
    ifindex: int = 1
    kind: str = "tx"
    queues: tuple[int, ...] = ()

    def close(self) -> None:
        pass


@dataclass
class TxModel:
    dmabuf: MemfdBuffer
    binding_id: int = 3
    max_per_call: int | None = None  # emulate a full send buffer: partial sends
    auto_complete: bool = True
    wire: bytearray = field(default_factory=bytearray)
    calls: list[np.ndarray] = field(default_factory=list)
    zckey: int = 0
    done: list[int] = field(default_factory=list)  # completed, not yet reported
    errq: list[bytes] = field(default_factory=list)
    name: str = "txmodel"

    def sendmsg(self, sock: socket.socket, iov: np.ndarray, control: bytes, flags: int) -> int:
        if sock.getsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY) != 1 or not flags & abi.MSG_ZEROCOPY:
            raise OSError(errno.EINVAL, "zerocopy required")
        if parse_tx_cmsg(control) != self.binding_id:
            raise OSError(errno.EINVAL, "unknown binding")
        assert iov.dtype == np.uint64 and iov.shape[1] == 2
        if iov.shape[0] > 1024:
            raise OSError(errno.EMSGSIZE, "too many iovecs")
        self.calls.append(iov.copy())
        budget = self.max_per_call if self.max_per_call is not None else 1 << 62
        view = self.dmabuf.host_view()
        sent = 0
        for off, ln in iov.tolist():
            if off >= self.dmabuf.size:
                if sent:
                    break
                raise OSError(errno.EFAULT, "offset past the dma-buf")
            take = min(ln, budget - sent, self.dmabuf.size - off)
            self.wire += view[off:off + take].tobytes()
            sent += take
            if sent >= budget:
                break
        seq = self.zckey
        self.zckey += 1
        if self.auto_complete:
            self.complete(seq)
        return sent

    def complete(self, *seqs: int) -> None:
        for s in sorted(seqs):
            # the kernel extends the pending notification when ranges touch
            if self.errq and self._last_hi == s - 1:
                self.errq[-1] = encode_zerocopy_completion(self._last_lo, s)
            else:
                self.errq.append(encode_zerocopy_completion(s, s))
                self._last_lo = s
            self._last_hi = s

    _last_lo: int = -5
    _last_hi: int = -5

    def recv_errqueue(self, sock: socket.socket, control: memoryview) -> tuple[int, int]:
        if not self.errq:
            raise BlockingIOError(errno.EAGAIN, "empty")
        msg = self.errq.pop(0)
        self._last_hi = -5
        control[:len(msg)] = msg
        return len(msg), 0

    def wait_errqueue(self, sock: socket.socket, timeout: float) -> bool:
        return bool(self.errq)  # completions are queued synchronously: nothing to wait for


@pytest.fixture
def env() -> Iterator[tuple[socket.socket, MemfdBuffer, TxModel]]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, MemfdBuffer(16 * 4096) as buf:
        buf.host_view()[:] = np.arange(buf.size, dtype=np.uint64).astype(np.uint8)
        yield s, buf, TxModel(buf)


def iov(*pairs: tuple[int, int]) -> np.ndarray:
    return np.array(pairs, dtype=np.uint64)


Env = tuple[socket.socket, MemfdBuffer, TxModel]


def test_sets_so_zerocopy_and_sends_the_iovecs_in_order(env: Env) -> None:
    s, buf, model = env
    with Sender(model, s, FakeBinding(3, buf)) as tx:  # type: ignore[arg-type]
        assert s.getsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY) == 1
        n = tx.send(iov((8192, 100), (0, 5000), (4090, 10)))
        assert n == 5110
        tx.flush()
        assert tx.outstanding == 0 and tx.stats.completions == 1
    view = buf.host_view()
    assert bytes(model.wire) == (view[8192:8292].tobytes() + view[0:5000].tobytes()
                                 + view[4090:4100].tobytes())
    assert len(model.calls) == 1 and model.calls[0].shape == (3, 2)
    # frags: 100 B in page 2; 5000 B over pages 0-1; 10 B across pages 0/1
    assert tx.stats.frags == 1 + 2 + 2 and tx.stats.iovecs == 3 and tx.stats.sendmsg_calls == 1


@settings(max_examples=80, deadline=None)
@given(hst.lists(hst.tuples(hst.integers(0, 15), hst.integers(0, 4)), min_size=1, max_size=10),
       hst.booleans(), hst.one_of(hst.none(), hst.integers(1, 9 * 4096)))
def test_accounting_of_pages_and_regions(pairs: list[tuple[int, int]], chain: bool,
                                         budget: int | None) -> None:
    """Page-aligned iovecs (chained or not, whole or partly sent): frags count
    the pages each iovec touches, and the first sendmsg's outstanding region
    spans the iovecs it (partly) sent."""
    ps = abi.PAGE_SIZE
    if chain:
        pos, chained = pairs[0][0], []
        for _, n in pairs:
            chained.append((min(pos, 15), n))
            pos = min(pos, 15) + n
        pairs = chained
    ivs = [(p * ps, n * ps) for p, n in pairs if p * ps + n * ps <= 16 * ps]
    total = sum(n for _, n in ivs)
    if not total:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, MemfdBuffer(16 * ps) as buf:
        model = TxModel(buf, max_per_call=budget, auto_complete=False)
        tx = Sender(model, s, FakeBinding(3, buf))  # type: ignore[arg-type]
        tx._send_all(iov(*ivs))
        ret = min(total, budget) if budget is not None else total
        # the iovecs of the first call up to the one holding its last byte, that one cut short
        cut, done = [], 0
        for off, n in ivs:
            take = min(n, ret - done)
            if take:
                cut.append((off, take))
            done += take
            if done >= ret:
                break
        first = tx._outstanding[0]
        assert (first[1], first[2]) == (min(o for o, _ in cut), max(o + n for o, n in cut))
        assert tx.stats.frags >= sum(-(-(o + n) // ps) - o // ps for o, n in ivs if n)
        if budget is None:
            assert tx.stats.frags == sum(-(-(o + n) // ps) - o // ps for o, n in ivs if n)
        assert tx.stats.bytes == total


def test_max_iov_splits_calls(env: tuple[socket.socket, MemfdBuffer, TxModel]) -> None:
    s, buf, model = env
    with Sender(model, s, FakeBinding(3, buf), max_iov=4) as tx:  # type: ignore[arg-type]
        offs = np.arange(10, dtype=np.uint64) * 4096
        tx.send(np.stack([offs, np.full(10, 4096, np.uint64)], axis=1))
    assert [c.shape[0] for c in model.calls] == [4, 4, 2]
    assert bytes(model.wire) == buf.host_view()[:10 * 4096].tobytes()
    with pytest.raises(DevmemError, match="max_iov"):
        Sender(model, s, FakeBinding(3, buf), max_iov=2000)  # type: ignore[arg-type]


def test_partial_sends_are_continued_with_new_sequence_numbers(
        env: tuple[socket.socket, MemfdBuffer, TxModel]) -> None:
    s, buf, model = env
    model.max_per_call = 3000
    model.auto_complete = False
    tx = Sender(model, s, FakeBinding(3, buf))  # type: ignore[arg-type]
    n = tx.send(iov((0, 4096), (8192, 4096)))
    assert n == 8192 and tx.stats.partial_sends == 2 and tx.stats.sendmsg_calls == 3
    assert bytes(model.wire) == buf.host_view()[0:4096].tobytes() + buf.host_view()[8192:12288].tobytes()
    # the continuation starts where the kernel stopped
    assert model.calls[1][0].tolist() == [3000, 1096]
    assert model.calls[2].tolist() == [[8192 + 1904, 4096 - 1904]]
    assert tx.outstanding == 3
    model.complete(0, 1)
    assert tx.poll_completions() == 2 and tx.outstanding == 1
    model.complete(2)
    tx.close()
    assert tx.outstanding == 0 and tx.stats.completions == 3


def test_region_reused_only_after_its_completion(env: tuple[socket.socket, MemfdBuffer, TxModel]) -> None:
    s, buf, model = env
    model.auto_complete = False
    tx = Sender(model, s, FakeBinding(3, buf), completion_timeout=0.05)  # type: ignore[arg-type]
    tx.send(iov((0, 8192)))      # seq 0: bytes [0, 8192)
    tx.send(iov((16384, 4096)))  # seq 1: bytes [16384, 20480)
    tx.wait_region_free(8192, 8192)  # untouched region: returns at once
    with pytest.raises(DevmemError, match=r"still not completed .*region \[4096, 4196\)") as ei:
        tx.wait_region_free(4096, 100)
    assert "must not be reused" in (ei.value.hint or "")
    model.complete(1)  # out of order: the later send completes first
    tx.poll_completions()
    tx.wait_region_free(16384, 4096, timeout=0.01)
    with pytest.raises(DevmemError):
        tx.wait_region_free(0, 1, timeout=0.01)
    model.complete(0)
    tx.wait_region_free(0, 8192)
    assert tx.stats.waits >= 2
    tx.close()


def test_close_times_out_with_a_clear_error(env: tuple[socket.socket, MemfdBuffer, TxModel]) -> None:
    s, buf, model = env
    model.auto_complete = False
    tx = Sender(model, s, FakeBinding(3, buf), completion_timeout=0.05)  # type: ignore[arg-type]
    tx.send(iov((0, 10)))
    with pytest.raises(DevmemError, match="1 sendmsg call"):
        tx.close()
    assert tx.closed
    tx.close()  # idempotent


def test_kernel_errors_become_send_errors_with_hints(env: tuple[socket.socket, MemfdBuffer, TxModel]) -> None:
    s, buf, model = env
    with Sender(model, s, FakeBinding(9, buf)) as tx:  # type: ignore[arg-type]
        with pytest.raises(SendError) as ei:
            tx.send(iov((0, 10)))
        assert ei.value.errno == errno.EINVAL and "SO_ZEROCOPY" in (ei.value.hint or "")
        assert tx.stats.sendmsg_calls == 0 and tx.outstanding == 0
    with Sender(model, s, FakeBinding(3, buf)) as tx:  # type: ignore[arg-type]
        with pytest.raises(SendError) as ei:
            tx.send(iov((buf.size, 10)))
        assert ei.value.errno == errno.EFAULT and "beyond the dma-buf" in (ei.value.hint or "")


def test_sequence_numbers_wrap_at_32_bits(env: tuple[socket.socket, MemfdBuffer, TxModel]) -> None:
    s, buf, model = env
    model.auto_complete = False
    tx = Sender(model, s, FakeBinding(3, buf))  # type: ignore[arg-type]
    tx._next_seq = 2**32 - 1  # as if billions of sends happened
    tx.send(iov((0, 10)))
    tx.send(iov((4096, 10)))
    assert [e[0] for e in tx._outstanding] == [2**32 - 1, 0]
    model.errq.append(encode_zerocopy_completion(2**32 - 1, 0))
    assert tx.poll_completions() == 2
    tx.close()


def test_real_kernel_refuses_devmem_send_without_binding() -> None:
    """On this kernel (no TX binding exists), sendmsg with SCM_DEVMEM_DMABUF
    fails with EINVAL: the Sender reports it with the hint."""
    from devmemtcp.backend.kernel import KernelBackend

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lsock, MemfdBuffer(4096) as buf:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        with (socket.create_connection(lsock.getsockname()) as c,
              Sender(KernelBackend(), c, FakeBinding(12345, buf)) as tx):  # type: ignore[arg-type]
            with pytest.raises(SendError) as ei:
                tx.send(iov((0, 100)))
            assert ei.value.errno == errno.EINVAL
            assert tx.outstanding == 0


def test_emulated_send_pattern_to_a_plain_receiver(tmp_path: object) -> None:
    """Send 8 MiB of ncdevmem's pattern from a 256 KiB dma-buf, reusing each
    region only after its completion; a plain socket reads exactly the pattern."""
    import threading

    from devmemtcp.backend.emulated import EmulatedBackend
    from devmemtcp.pattern import PatternChecker

    be = EmulatedBackend(directory=str(tmp_path))
    total, region, chunk = 8 << 20, 64 << 10, 16 << 10
    with be, MemfdBuffer(256 << 10) as buf, socket.socket() as srv:
        PatternChecker(7).fill(buf.host_view()[: (256 << 10) - (256 << 10) % 7], 0)
        usable = (256 << 10) - (256 << 10) % 7  # whole periods: the stream continues across laps
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        checker = PatternChecker(7)

        def reader() -> None:
            conn, _ = srv.accept()
            with conn:
                while chunk_ := conn.recv(1 << 20):
                    checker.check(chunk_)

        t = threading.Thread(target=reader)
        t.start()
        with socket.create_connection(srv.getsockname()) as s, \
                be.bind_tx(socket.if_nametoindex("lo"), buf) as binding:
            with Sender(be, s, binding, max_iov=8) as tx:
                sent, off = 0, 0
                while sent < total:
                    length = min(region, usable - off, total - sent)
                    tx.wait_region_free(off, length)
                    starts = np.arange(off, off + length, chunk, dtype=np.uint64)
                    lens = np.minimum(np.uint64(chunk), np.uint64(off + length) - starts)
                    sent += tx.send(np.stack([starts, lens], axis=1))
                    off = (off + length) % usable
            assert tx.outstanding == 0 and tx.stats.completions == tx.stats.sendmsg_calls
            assert tx.stats.bytes == total
            s.shutdown(socket.SHUT_WR)
        t.join(timeout=30)
        assert checker.offset == total
