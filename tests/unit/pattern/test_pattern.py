"""ncdevmem's validation pattern: layout, checker state across calls, first mismatch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmemtcp.errors import DevmemError, ValidationError
from devmemtcp.pattern import PatternChecker, pattern_bytes, pattern_period


def ncdevmem_reference(n: int, length: int) -> list[int]:
    """validate_buffer()'s expected bytes, step by step, with its u8 seed."""
    seed, out = 1, []
    for _ in range(length):
        out.append(seed if seed else 0x0A)
        seed = (seed + 1) & 0xFF
        if seed == n:
            seed = 0
    return out


def test_validate_7_stream() -> None:
    assert pattern_bytes(7, 0, 16).tolist() == [1, 2, 3, 4, 5, 6, 10, 1, 2, 3, 4, 5, 6, 10, 1, 2]
    assert pattern_bytes(7, 5, 4).tolist() == [6, 10, 1, 2]


@pytest.mark.parametrize("n", [2, 3, 7, 11, 200, 255, 256, 300, 100000])
def test_matches_ncdevmem_validate_buffer(n: int) -> None:
    length = 3 * 256 + 5
    assert pattern_bytes(n, 0, length).tolist() == ncdevmem_reference(n, length)


def test_period_and_bad_n() -> None:
    assert pattern_period(7) == 7 and pattern_period(255) == 255 and pattern_period(1000) == 256
    for bad in (0, 1, -3):
        with pytest.raises(DevmemError, match="N >= 2"):
            PatternChecker(bad)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 400), st.lists(st.integers(0, 5000), max_size=12))
def test_checker_keeps_offset_across_calls(n: int, cuts: list[int]) -> None:
    total = sum(cuts)
    stream = pattern_bytes(n, 0, total)
    c = PatternChecker(n)
    pos = 0
    for k in cuts:
        c.check(stream[pos:pos + k])
        pos += k
    assert c.offset == total


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 300), st.integers(1, 20000), st.data())
def test_first_mismatch_names_offset_expected_received(n: int, length: int, data: st.DataObject) -> None:
    stream = pattern_bytes(n, 0, length)
    bad = data.draw(st.integers(0, length - 1))
    split = data.draw(st.integers(0, length))
    want = int(stream[bad])
    stream[bad] ^= 0x5A
    c = PatternChecker(n)
    with pytest.raises(ValidationError) as ei:
        c.check(stream[:split])
        c.check(stream[split:])
    assert (ei.value.offset, ei.value.expected, ei.value.received) == (bad, want, want ^ 0x5A)
    assert f"offset {bad}" in str(ei.value)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 300), st.integers(1, 20000), st.integers(1, 299))
def test_a_periodic_stream_in_the_wrong_phase_fails(n: int, length: int, shift: int) -> None:
    # every byte equals the one a period before it: only the head compare can catch this
    period = PatternChecker(n).period
    if shift % period == 0:
        shift += 1
    wrong = pattern_bytes(n, shift, length)
    with pytest.raises(ValidationError) as ei:
        PatternChecker(n).check(wrong)
    first_bad = int(np.flatnonzero(wrong != pattern_bytes(n, 0, length))[0])
    assert ei.value.offset == first_bad < period


def test_large_and_bytes_input_and_unaligned() -> None:
    n = 7
    big = pattern_bytes(n, 3, 5 * (1 << 20) + 123)
    c = PatternChecker(n, offset=3)
    c.check(big[:1])
    c.check(memoryview(big[1:].tobytes()))
    assert c.offset == 3 + big.shape[0]
    big[4 * (1 << 20) + 17] = 0
    c2 = PatternChecker(n, offset=3)
    with pytest.raises(ValidationError) as ei:
        c2.check(big)
    assert ei.value.offset == 3 + 4 * (1 << 20) + 17
    # non-contiguous input is accepted
    c3 = PatternChecker(n)
    two = np.stack([pattern_bytes(n, 0, 100), np.zeros(100, np.uint8)], axis=1)[:, 0]
    c3.check(two)
    assert c3.offset == 100


def test_fill_for_senders() -> None:
    c = PatternChecker(11)
    buf = bytearray(3 * (1 << 20) + 7)
    c.fill(buf, 5)
    assert np.frombuffer(buf, np.uint8).tolist()[:20] == pattern_bytes(11, 5, 20).tolist()
    PatternChecker(11, offset=5).check(buf)
    arr = np.empty(1000, np.uint8)
    c.fill(arr, 123456789)
    assert arr.tolist() == pattern_bytes(11, 123456789, 1000).tolist()


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 300), st.integers(1, 5000), st.data())
def test_check_at_advances_only_on_a_match(n: int, length: int, data: st.DataObject) -> None:
    good = pattern_bytes(n, 0, length)
    chk = PatternChecker(n)
    assert chk.check_at(good.ctypes.data, length) and chk.offset == length
    bad = good.copy()
    i = data.draw(st.integers(0, length - 1))
    bad[i] ^= 0x40
    chk2 = PatternChecker(n)
    assert not chk2.check_at(bad.ctypes.data, length) and chk2.offset == 0
    with pytest.raises(ValidationError) as info:
        chk2.check(bad)
    assert info.value.offset == i
