"""Decoder hardening (issue 11 item 9): every decoder returns a correct value or
raises the project's error with the offset and the reason.

Each case found by the issue has a test here that fails without the fix, and
hypothesis drives every decoder with arbitrary bytes: the only exception that
may come out is the project's own (ControlBufferError, a DevmemError).
"""

from __future__ import annotations

import errno
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmemtcp import abi
from devmemtcp.codec import (
    ControlBufferError,
    FragRecordError,
    TxControlError,
    build_tx_cmsg,
    encode_rx_control,
    encode_zerocopy_completion,
    parse_rx_batch,
    parse_rx_control,
    parse_tx_cmsg,
    parse_zerocopy_completions,
    plan_dontneed,
    plan_runs,
    rx_control_space,
)
from devmemtcp.errors import DevmemError
from devmemtcp.netlink.genl import AttrDecodeError, attr_name_at, decode_uint, parse_extack
from devmemtcp.netlink.netdev import DmabufMsg
from unit.codec.oracles import coalesce_tokens, dontneed_chunks

PS = abi.PAGE_SIZE


def rx_buffer(tokens: list[int], sizes: list[int] | None = None, offsets: list[int] | None = None,
              linear: int = 0) -> tuple[np.ndarray, int]:
    n = len(tokens)
    ctl = np.zeros(rx_control_space(n, 1), np.uint8)
    clen = encode_rx_control(
        ctl, np.array(offsets if offsets is not None else [i * PS for i in range(n)], np.uint64),
        np.array(sizes if sizes is not None else [PS] * n, np.uint32), np.array(tokens, np.uint32), 3,
        linear_size=linear)
    return ctl, clen


# -- the cases the issue found ---------------------------------------------------------------
def test_strided_uint32_control_array_parses() -> None:
    ctl, clen = rx_buffer([1, 2, 3])
    wide = np.zeros(2 * (clen // 4), np.uint32)
    wide[::2] = ctl[:clen].view(np.uint32)  # a strided uint32 view holding the same bytes
    b = parse_rx_control(wide[::2], clen)
    assert b.token.tolist() == [1, 2, 3]
    with pytest.raises(ControlBufferError):
        parse_rx_control(np.array(["x"], object), 0)  # holds no bytes: the project's error


@pytest.mark.parametrize(("tokens", "bad_index", "what"), [
    ([1, 0, 3], 1, "token 0 outside"),
    ([1, 2**31, 3], 1, "token 2147483648 outside"),
    ([5, 6, 5], 2, "token 5 given twice"),
    ([*list(range(1, 60, 2)), 7], 30, "token 7 given twice"),  # many runs: the sorted path
])
def test_tokens_the_kernel_never_hands_out(tokens: list[int], bad_index: int, what: str) -> None:
    ctl, clen = rx_buffer(tokens)
    with pytest.raises(FragRecordError) as ei:
        parse_rx_control(ctl, clen)
    e = ei.value
    assert e.offset == 40 * bad_index and what in e.reason
    assert e.record == ctl[e.offset:e.offset + 40].tobytes()
    # the tokens the kernel may hold, each once, for the caller to give back
    assert e.tokens.tolist() == sorted({t for t in tokens if 0 < t < 2**31})


def test_fragment_sizes_and_extent() -> None:
    ctl, clen = rx_buffer([1, 2, 3], sizes=[PS, 0, PS])
    with pytest.raises(FragRecordError, match="0 bytes") as ei:
        parse_rx_control(ctl, clen)
    assert ei.value.offset == 40
    ctl, clen = rx_buffer([1, 2], offsets=[0, 16 * PS - 100])
    assert len(parse_rx_control(ctl, clen, dmabuf_size=16 * PS + 4096)) == 2
    with pytest.raises(FragRecordError, match="past the end") as ei:
        parse_rx_control(ctl, clen, dmabuf_size=16 * PS)
    assert ei.value.offset == 40
    ctl, clen = rx_buffer([1], sizes=[PS + 1])  # larger than a 1-page dma-buf
    with pytest.raises(FragRecordError, match="past the end"):
        parse_rx_control(ctl, clen, dmabuf_size=PS)
    # offset + size wraps past 2**64 in uint64: still past the end (found by the fuzzer)
    ctl, clen = rx_buffer([1], offsets=[2**64 - 1], sizes=[PS])
    with pytest.raises(FragRecordError, match="past the end"):
        parse_rx_control(ctl, clen, dmabuf_size=16 << 20)


def test_sizes_must_add_up_to_the_bytes_received() -> None:
    ctl, clen = rx_buffer([1, 2, 3], linear=100)
    assert parse_rx_control(ctl, clen, nbytes=3 * PS + 100).linear_bytes == 100
    for wrong in (3 * PS, 3 * PS + 99, 0):
        with pytest.raises(FragRecordError, match="add up") as ei:
            parse_rx_control(ctl, clen, nbytes=wrong)
        assert ei.value.offset is None and ei.value.tokens.tolist() == [1, 2, 3]
    ctl, clen = rx_buffer([1, 2, 3])  # the uniform fast path too
    with pytest.raises(FragRecordError, match="add up"):
        parse_rx_control(ctl, clen, nbytes=3 * PS - 1)


def test_linear_piece_of_zero_bytes() -> None:
    ctl, clen = rx_buffer([1])
    lin = struct.pack("<QiiQIIII", 40, abi.SOL_SOCKET, abi.SCM_DEVMEM_LINEAR, 0, 0, 0, 0, 0)
    buf = lin + ctl[:clen].tobytes()
    with pytest.raises(FragRecordError, match="LINEAR") as ei:
        parse_rx_control(buf, len(buf))
    assert ei.value.offset == 0


def test_ranges_wrapping_past_2_32() -> None:
    # (0xFFFFFC00, 1025): the kernel counts token_start + j in u32, the 1025th token is 0
    chunks, ends = plan_runs([0xFFFFFC00], [1025])
    assert [c.tolist() for c in chunks] == [[(0xFFFFFC00, 1024)], [(0, 1)]] and ends == [1024, 1025]
    oracle = dontneed_chunks(np.array([(0xFFFFFC00, 1025)], abi.DMABUF_TOKEN_DTYPE))
    assert [c.tolist() for c in oracle] == [c.tolist() for c in chunks]


def test_zerocopy_lengths() -> None:
    c = encode_zerocopy_completion(1, 2)
    for bad in (-1, len(c) + 1):
        with pytest.raises(ControlBufferError, match="controllen"):
            parse_zerocopy_completions(c, bad)
    with pytest.raises(ControlBufferError, match="MSG_CTRUNC"):
        parse_zerocopy_completions(c, len(c), abi.MSG_CTRUNC)
    short = struct.pack("<Qii", 20, abi.SOL_IP, abi.IP_RECVERR) + bytes(8)
    with pytest.raises(ControlBufferError, match="too short") as ei:
        parse_zerocopy_completions(short, len(short))
    assert ei.value.offset == 0


def test_tx_errors_are_einval_with_the_offset() -> None:
    bad = build_tx_cmsg(1) + struct.pack("<QiiI4x", 20, abi.SOL_SOCKET, 200, 1)
    with pytest.raises(TxControlError) as ei:
        parse_tx_cmsg(bad)
    assert ei.value.errno == errno.EINVAL and ei.value.offset == 24
    assert isinstance(ei.value, OSError) and isinstance(ei.value, DevmemError)


def test_genl_attr_name_at_on_a_malformed_request() -> None:
    # an attribute whose nla_len reaches past the request: struct.error before the fix
    req = struct.pack("=IHHII", 32, 0x20, 1, 1, 0) + bytes(4) + struct.pack("=HH", 200, 0x8003) + bytes(4)
    assert attr_name_at(req, 28, DmabufMsg) is None
    with pytest.raises(AttrDecodeError):
        decode_uint(b"\x01\x02\x03")


# -- arbitrary bytes through every decoder ----------------------------------------------------
def _clean(fn: object, *args: object) -> object:
    """Call a decoder; the only exception allowed is the project's own."""
    try:
        return fn(*args)  # type: ignore[operator]
    except DevmemError:
        return None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(-8, 420), st.sampled_from([0, abi.MSG_CTRUNC]),
       st.one_of(st.none(), st.integers(0, 1 << 20)), st.one_of(st.none(), st.integers(0, 1 << 24)))
def test_rx_decoder_on_arbitrary_bytes(data: bytes, clen: int, flags: int, nbytes: int | None,
                                       dmabuf_size: int | None) -> None:
    check_rx(data, clen, flags, nbytes, dmabuf_size)


def check_rx(data: bytes, clen: int, flags: int, nbytes: int | None, dmabuf_size: int | None) -> None:
    """parse_rx_batch returns what the kernel could have written, or raises the project's error."""
    out = _clean(parse_rx_batch, data, clen, flags, nbytes, dmabuf_size)
    if out is None:
        return
    batch, _id, runs = out  # type: ignore[misc]
    t = batch.token.tolist()
    # what it accepted is what the kernel could have written
    assert all(0 < x < 2**31 for x in t) and len(set(t)) == len(t)
    assert all(s > 0 for s in batch.size.tolist()) and all(s > 0 for s in batch.linear_sizes.tolist())
    if nbytes is not None and (t or batch.linear_sizes.shape[0]):
        assert sum(batch.size.tolist()) + batch.linear_bytes == nbytes
    if dmabuf_size is not None:
        assert all(o + s <= dmabuf_size for o, s in zip(batch.offset.tolist(), batch.size.tolist(),
                                                         strict=True))
    if runs is not None:
        flat = [s + i for s, c in zip(runs[0::2], runs[1::2], strict=True) for i in range(c)]
        assert flat == t


@st.composite
def plausible_rx(draw: st.DrawFn) -> tuple[bytes, int]:
    """Kernel-like buffers with one field broken at times: hypothesis reaches the value checks."""
    n = draw(st.integers(1, 40))
    first = draw(st.integers(1, 2**31 - 41))
    toks = list(range(first, first + n))
    if draw(st.booleans()):
        toks = draw(st.permutations(toks))
    sizes = [draw(st.sampled_from([PS, PS, 1448, 1]))] * n
    ctl, clen = rx_buffer(toks, sizes=sizes)
    raw = bytearray(ctl[:clen].tobytes())
    field = draw(st.sampled_from(["none", "size", "token", "offset"]))
    if field != "none":
        i = draw(st.integers(0, n - 1)) * 40
        at = {"size": 24, "token": 28, "offset": 16}[field]
        width = 8 if field == "offset" else 4
        raw[i + at:i + at + width] = draw(st.binary(min_size=width, max_size=width))
    return bytes(raw), sum(sizes)


@settings(max_examples=300, deadline=None)
@given(plausible_rx(), st.booleans())
def test_rx_decoder_on_plausible_buffers(case: tuple[bytes, int], with_nbytes: bool) -> None:
    data, nbytes = case
    check_rx(data, len(data), 0, nbytes if with_nbytes else None, 40 * PS)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda a, b: build_tx_cmsg(a) + b, st.integers(0, 2**32 - 1),
                                           st.binary(max_size=60)))
def test_tx_decoder_on_arbitrary_bytes(data: bytes) -> None:
    try:
        bid = parse_tx_cmsg(data)
    except TxControlError as exc:
        assert exc.errno == errno.EINVAL and exc.offset is not None and 0 <= exc.offset < len(data)
        return
    assert 0 <= bid < 2**32


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(-4, 210), st.lists(st.tuples(st.integers(0, 2**32 - 1),
                                                                        st.integers(0, 2**32 - 1)),
                                                              max_size=4))
def test_zerocopy_decoder_on_arbitrary_bytes(data: bytes, clen: int, good: list[tuple[int, int]]) -> None:
    out = _clean(parse_zerocopy_completions, data, clen)
    if out is not None:
        assert all(0 <= lo < 2**32 and 0 <= hi < 2**32 for lo, hi in out)  # type: ignore[attr-defined]
    # completions the kernel writes always round-trip
    buf = b"".join(encode_zerocopy_completion(lo, hi) for lo, hi in good)
    assert parse_zerocopy_completions(buf, len(buf)) == good


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.integers(-4, 130), st.booleans(), st.booleans())
def test_genl_decoders_on_arbitrary_bytes(data: bytes, offset: int, capped: bool, done: bool) -> None:
    name = attr_name_at(data, offset, DmabufMsg)
    assert name is None or isinstance(name, str)
    err, msg, offs, miss = parse_extack(data, capped, done)
    assert isinstance(err, int) and (msg is None or isinstance(msg, str))
    assert offs is None or 0 <= offs < 2**32
    assert miss is None or 0 <= miss < 2**32
    _clean(decode_uint, data[:9])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 3000)), min_size=1, max_size=6))
def test_planner_limits_and_token_set_with_wrapping_runs(spec: list[tuple[int, int]]) -> None:
    # any u32 tokens, runs that may reach past 2**32 - 1: the kept planner against the oracle
    toks = np.unique(np.concatenate([(np.arange(s, s + c, dtype=np.uint64) & 0xFFFFFFFF).astype(np.uint32)
                                     for s, c in spec]))
    _distinct, chunks, ends = plan_dontneed(toks)
    got = [int(r["token_start"]) + j for c in chunks for r in c for j in range(int(r["token_count"]))]
    assert got == toks.tolist() and ends[-1] == toks.shape[0]
    assert all(c.shape[0] <= abi.MAX_DONTNEED_TOKENS and int(c["token_count"].sum()) <= abi.MAX_DONTNEED_FRAGS
               for c in chunks)
    want = dontneed_chunks(coalesce_tokens(toks))
    assert [c.tolist() for c in chunks] == [c.tolist() for c in want]
