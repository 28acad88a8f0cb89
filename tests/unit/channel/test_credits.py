"""Credit arithmetic of the channel (devmemtcp.channel.credits)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devmemtcp import abi
from devmemtcp.channel.credits import (
    CreditLedger,
    CreditWindow,
    chunk_pages,
    max_unit,
    message_pages,
    plan_window,
)
from devmemtcp.errors import ChannelError


@given(st.integers(0, 2000), st.integers(1, 1 << 22), st.floats(0, 1, exclude_max=True),
       st.sampled_from([1448, 4096, 9000]))
def test_message_pages_is_the_sum_over_its_chunks(full: int, unit: int, frac: float, bpp: int) -> None:
    from devmemtcp.channel.header import DType, MessageHeader

    nbytes = full * unit + int(frac * unit)  # up to 2000 whole chunks and a shorter last one
    h = MessageHeader(0, nbytes, 0, DType.of_numpy(np.dtype(np.uint8)), (nbytes,), unit, 0, 1)
    assert message_pages(nbytes, unit, bpp) == sum(chunk_pages(h.chunk(i)[2], bpp) for i in range(h.nchunks))


def test_chunk_pages_counts_partial_pages_at_both_ends() -> None:
    assert chunk_pages(0, 4096) == 0
    assert chunk_pages(1, 4096) == 3
    assert chunk_pages(4096, 4096) == 3
    assert chunk_pages(4097, 4096) == 4
    assert chunk_pages(1448 * 10, 1448) == 12  # one packet per page at MTU 1500


def test_window_keeps_back_the_release_batches() -> None:
    pool = (64 << 20) // abi.PAGE_SIZE
    w = plan_window(pool, 4, 512)
    assert w == pool - (4 * (512 + 2) + 16)
    with pytest.raises(ChannelError, match="too small") as ei:
        plan_window(100, 4, 1024)
    assert ei.value.hint and "dmabuf_size" in ei.value.hint


@given(st.integers(64, 1 << 20), st.sampled_from([4096, 1448, 8948]))
def test_unit_costs_at_most_a_quarter_of_the_window(window: int, bpp: int) -> None:
    unit = max_unit(window, bpp)
    assert unit % abi.PAGE_SIZE == 0 and unit <= 4 << 20
    if window // 4 - 2 >= abi.PAGE_SIZE // bpp + 3:
        assert chunk_pages(unit, bpp) <= window // 4


def test_sender_window() -> None:
    w = CreditWindow(10)
    assert w.can_take(10) and not w.can_take(11)
    w.take(7)
    assert w.available == 3
    with pytest.raises(ChannelError, match="bug"):
        w.take(4)
    w.give(7)
    with pytest.raises(ChannelError, match="more than it was lent"):
        w.give(1)


def test_ledger_flushes_at_an_eighth_and_parks_half() -> None:
    led = CreditLedger(80)
    assert not led.consumed(9)
    assert led.consumed(1)
    assert led.take_owed() == 10 and led.owed == 0
    assert led.can_park(40) and not led.can_park(41)
    led.park(30)
    assert not led.can_park(11)
    led.unpark(30)
    assert led.can_park(40)
