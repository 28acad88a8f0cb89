"""The Receiver and records that break the kernel's invariants (issue 11 item 9).

On the kernel backend such a record is a kernel or driver fault
(KernelInvariantError, with the raw record); on any backend the batch's tokens
the kernel may hold are given back before the error propagates, and nothing
of the batch is left held.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from devmemtcp import abi
from devmemtcp.codec import FragRecordError, KernelInvariantError, encode_rx_control, rx_control_space
from devmemtcp.memory import MemfdBuffer
from devmemtcp.rx import Receiver

PS = abi.PAGE_SIZE


class Recording:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[list[tuple[int, int]]] = []

    def dontneed(self, sock: socket.socket, tokens: np.ndarray) -> int:
        self.calls.append(tokens.tolist())
        return int(tokens["token_count"].sum())


@dataclass
class Binding:
    id: int
    dmabuf: MemfdBuffer


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    with socket.socket() as s:
        yield s


def control(tokens: list[int], sizes: list[int] | None = None) -> np.ndarray:
    n = len(tokens)
    ctl = np.zeros(rx_control_space(n), np.uint8)
    encode_rx_control(ctl, np.arange(n, dtype=np.uint64) * PS, np.array(sizes or [PS] * n, np.uint32),
                      np.array(tokens, np.uint32), 7)
    return ctl


@pytest.mark.parametrize("backend_name", ["kernel", "emulated"])
@pytest.mark.parametrize(("tokens", "sizes", "nbytes", "what"), [
    ([1, 2, 0, 3], None, 4 * PS, "token 0"),
    ([1, 2, 2, 3], None, 4 * PS, "twice"),
    ([1, 2, 3], [PS, 0, PS], 2 * PS, "0 bytes"),
    ([1, 2, 3], None, 3 * PS - 1, "add up"),
])
def test_bad_record_gives_back_what_it_parsed(sock: socket.socket, backend_name: str, tokens: list[int],
                                              sizes: list[int] | None, nbytes: int, what: str) -> None:
    be = Recording(backend_name)
    with MemfdBuffer(64 * PS) as dmabuf:
        rx = Receiver(be, sock, Binding(7, dmabuf))  # type: ignore[arg-type]
        ctl = control(tokens, sizes)
        with pytest.raises(FragRecordError) as ei:
            rx.process_control(ctl, ctl.shape[0], 0, nbytes)
        err = ei.value
        assert what in err.reason
        assert isinstance(err, KernelInvariantError) == (backend_name == "kernel")
        if backend_name == "kernel":
            assert str(err).startswith("kernel fault:") and "driver" in (err.hint or "")
        if err.offset is not None:
            assert err.record == ctl[err.offset:err.offset + 40].tobytes()
        # given back at once, each valid token once; nothing held or queued afterwards
        given = [t for call in be.calls for s, c in call for t in range(s, s + c)]
        assert given == sorted({t for t in tokens if 0 < t < 2**31})
        assert rx.held == 0 and rx.pending == 0
        # the receiver still works
        ok = control([10, 11])
        rx.release(rx.process_control(ok, ok.shape[0], 0, 2 * PS))
        rx.close()
    assert [t for call in be.calls for s, c in call for t in range(s, s + c)][-2:] == [10, 11]


def test_fragment_past_the_dma_buf(sock: socket.socket) -> None:
    be = Recording("kernel")
    with MemfdBuffer(4 * PS) as dmabuf:
        rx = Receiver(be, sock, Binding(7, dmabuf))  # type: ignore[arg-type]
        ctl = control([1, 2, 3, 4, 5])  # the fifth fragment lies at 4 * PS: past a 4-page dma-buf
        with pytest.raises(KernelInvariantError, match="past the end") as ei:
            rx.process_control(ctl, ctl.shape[0], 0, 5 * PS)
        assert ei.value.offset == 4 * 40
        rx.close()
    assert be.calls == [[(1, 5)]]
