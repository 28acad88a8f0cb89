"""The sans-I/O cmsg codec: kernel layouts, round trips, token coalescing limits."""

from __future__ import annotations

import errno
import socket
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmemtcp import abi
from devmemtcp.codec import (
    ControlBufferError,
    FragBatch,
    build_tx_cmsg,
    encode_rx_control,
    encode_zerocopy_completion,
    parse_rx_control,
    parse_tx_cmsg,
    parse_zerocopy_completions,
    rx_cmsgs_written,
    rx_control_space,
)
from devmemtcp.codec import rx as rx_codec
from unit.codec import oracles as cmsg_mod
from unit.codec.oracles import coalesce_tokens, dontneed_chunks


def kernel_cmsg(ctype: int, off: int, size: int, token: int, dmabuf_id: int, clen: int = 40,
                level: int = abi.SOL_SOCKET) -> bytes:
    """One cmsg built field by field with struct (independent of the codec)."""
    return struct.pack("<QiiQIIII", clen, level, ctype, off, size, token, dmabuf_id, 0)


def test_layout_is_the_kernel_one() -> None:
    buf = bytearray(80)
    n = encode_rx_control(memoryview(buf), np.array([4096, 8192], np.uint64),
                          np.array([100, 4096], np.uint32), np.array([1, 2], np.uint32), 7)
    assert n == 80
    assert bytes(buf) == (kernel_cmsg(abi.SCM_DEVMEM_DMABUF, 4096, 100, 1, 7)
                          + kernel_cmsg(abi.SCM_DEVMEM_DMABUF, 8192, 4096, 2, 7))


def test_parse_kernel_bytes() -> None:
    ctl = (kernel_cmsg(abi.SCM_DEVMEM_LINEAR, 0, 66, 0, 0)
           + kernel_cmsg(abi.SCM_DEVMEM_DMABUF, 12288, 4000, 5, 3)
           + kernel_cmsg(abi.SCM_DEVMEM_DMABUF, 0, 4096, 6, 3))
    b = parse_rx_control(ctl, len(ctl))
    assert len(b) == 2
    assert b.offset.tolist() == [12288, 0]
    assert b.size.tolist() == [4000, 4096]
    assert b.token.tolist() == [5, 6]
    assert b.dmabuf_id.tolist() == [3, 3]
    assert b.linear_bytes == 66 and b.linear_sizes.tolist() == [66] and b.linear_at.tolist() == [0]
    assert b.nbytes == 8096
    assert b.offset.dtype == np.uint64 and b.size.dtype == np.uint32 and b.token.dtype == np.uint32


def test_linear_in_the_middle_keeps_stream_position() -> None:
    ctl = (kernel_cmsg(abi.SCM_DEVMEM_DMABUF, 0, 10, 1, 1)
           + kernel_cmsg(abi.SCM_DEVMEM_DMABUF, 4096, 10, 2, 1)
           + kernel_cmsg(abi.SCM_DEVMEM_LINEAR, 0, 5, 0, 0)
           + kernel_cmsg(abi.SCM_DEVMEM_DMABUF, 8192, 10, 3, 1)
           + kernel_cmsg(abi.SCM_DEVMEM_LINEAR, 0, 7, 0, 0))
    b = parse_rx_control(ctl, len(ctl))
    assert b.token.tolist() == [1, 2, 3]
    assert b.linear_at.tolist() == [2, 3]
    assert b.linear_sizes.tolist() == [5, 7]
    assert b.linear_bytes == 12


def test_ctrunc_is_an_error_naming_the_fix() -> None:
    with pytest.raises(ControlBufferError, match="MSG_CTRUNC") as ei:
        parse_rx_control(b"", 0, abi.MSG_CTRUNC)
    assert "enlarge" in (ei.value.hint or "")


def test_malformed_cmsg_len_names_offset() -> None:
    ctl = kernel_cmsg(abi.SCM_DEVMEM_DMABUF, 0, 1, 1, 1) + kernel_cmsg(abi.SCM_DEVMEM_DMABUF, 0, 1, 2, 1,
                                                                      clen=8)
    with pytest.raises(ControlBufferError, match="byte offset 40") as ei:
        parse_rx_control(ctl, len(ctl))
    assert ei.value.offset == 40


def test_cmsg_len_past_end() -> None:
    ctl = kernel_cmsg(abi.SCM_DEVMEM_DMABUF, 0, 1, 1, 1, clen=400)
    with pytest.raises(ControlBufferError) as ei:
        parse_rx_control(ctl, len(ctl))
    assert ei.value.offset == 0


def test_unknown_type_and_level_name_offset() -> None:
    good = kernel_cmsg(abi.SCM_DEVMEM_DMABUF, 0, 1, 1, 1)
    bad_type = kernel_cmsg(29, 0, 1, 1, 1)
    with pytest.raises(ControlBufferError, match="offset 80") as ei:
        parse_rx_control(good * 2 + bad_type, 120)
    assert ei.value.offset == 80
    bad_level = kernel_cmsg(abi.SCM_DEVMEM_DMABUF, 0, 1, 1, 1, level=abi.SOL_IP)
    with pytest.raises(ControlBufferError, match="offset 0"):
        parse_rx_control(bad_level, 40)


def test_truncated_devmem_cmsg_in_mixed_buffer() -> None:
    # an old-kernel (pre put_cmsg_notrunc) truncated record: cmsg_len 20, 20 bytes left
    ctl = kernel_cmsg(abi.SCM_DEVMEM_DMABUF, 0, 1, 1, 1) + struct.pack(
        "<Qii", 20, abi.SOL_SOCKET, abi.SCM_DEVMEM_DMABUF) + b"\0" * 4
    with pytest.raises(ControlBufferError, match="truncated devmem cmsg at byte offset 40"):
        parse_rx_control(ctl, len(ctl))


def test_controllen_larger_than_buffer() -> None:
    with pytest.raises(ControlBufferError, match="exceeds"):
        parse_rx_control(b"\0" * 40, 80)


def test_empty_control_is_empty_batch() -> None:
    b = parse_rx_control(bytearray(64), 0)
    assert len(b) == 0 and b.nbytes == 0 and b.linear_bytes == 0


def test_unaligned_buffers_parse_and_encode() -> None:
    backing = bytearray(8 + 3 + 80)
    view = np.frombuffer(backing, np.uint8)[3:83]
    assert view.ctypes.data % 8 != 0
    n = encode_rx_control(view, np.array([1, 2], np.uint64), np.array([3, 4], np.uint32),
                          np.array([5, 6], np.uint32), 9)
    b = parse_rx_control(view, n)
    assert b.offset.tolist() == [1, 2] and b.token.tolist() == [5, 6] and b.dmabuf_id.tolist() == [9, 9]


def test_short_control_buffer_mirrors_put_cmsg_notrunc() -> None:
    offs = np.arange(5, dtype=np.uint64) * 4096
    sizes = np.full(5, 4096, np.uint32)
    toks = np.arange(1, 6, dtype=np.uint32)
    # not even one cmsg fits: recvmsg fails with EFAULT
    with pytest.raises(OSError) as ei:
        encode_rx_control(bytearray(39), offs, sizes, toks, 1)
    assert ei.value.errno == errno.EFAULT
    # 100 bytes: two whole cmsgs, never a truncated third; no MSG_CTRUNC
    buf = bytearray(b"\xee" * 100)
    n = encode_rx_control(buf, offs, sizes, toks, 1)
    assert n == 80 and rx_cmsgs_written(n) == 2
    assert buf[80:] == b"\xee" * 20
    assert parse_rx_control(buf, n).token.tolist() == [1, 2]
    # linear first: 40 bytes hold only the linear cmsg
    buf = bytearray(40)
    n = encode_rx_control(buf, offs, sizes, toks, 1, linear_size=54)
    b = parse_rx_control(buf, n)
    assert len(b) == 0 and b.linear_bytes == 54


def test_rx_control_space() -> None:
    assert rx_control_space(1600) == 64000
    assert rx_control_space(3, 1) == 160


u32 = st.integers(0, 2**32 - 1)


@st.composite
def frag_arrays(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    n = draw(st.integers(0, 300))
    offs = np.array(draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n)), np.uint64)
    sizes = np.array(draw(st.lists(st.integers(1, 2**32 - 1), min_size=n, max_size=n)), np.uint32)
    # what the kernel writes: tokens distinct, in 1 .. 2**31 - 1; fragments not empty
    toks = np.array(draw(st.lists(st.integers(1, 2**31 - 1), min_size=n, max_size=n, unique=True)),
                    np.uint32)
    return offs, sizes, toks, draw(u32), draw(st.integers(0, 2**32 - 1) | st.just(0))


@settings(max_examples=150, deadline=None)
@given(frag_arrays())
def test_encode_parse_round_trip(arrs: tuple[np.ndarray, np.ndarray, np.ndarray, int, int]) -> None:
    offs, sizes, toks, bid, lin = arrs
    buf = bytearray(rx_control_space(len(toks), 1))
    n = encode_rx_control(buf, offs, sizes, toks, bid, linear_size=lin)
    assert n == rx_control_space(len(toks), 1 if lin else 0)
    b = parse_rx_control(buf, n)
    np.testing.assert_array_equal(b.offset, offs)
    np.testing.assert_array_equal(b.size, sizes)
    np.testing.assert_array_equal(b.token, toks)
    assert (b.dmabuf_id == bid).all()
    assert b.linear_bytes == lin
    # the cmsg_len walker (slow path) gives the same answer as the dense path
    if n:
        w = rx_codec._parse_walk(np.frombuffer(bytes(buf[:n]), np.uint8))[0]
        np.testing.assert_array_equal(w.token, toks)
        np.testing.assert_array_equal(w.offset, offs)
        assert w.linear_bytes == lin


def _expand(ranges: np.ndarray) -> np.ndarray:
    if ranges.shape[0] == 0:
        return np.empty(0, np.int64)
    return np.concatenate([np.arange(s, s + c, dtype=np.int64)
                           for s, c in zip(ranges["token_start"].tolist(), ranges["token_count"].tolist(),
                                           strict=True)])


def test_coalesce_simple() -> None:
    r = coalesce_tokens(np.array([5, 1, 2, 3, 9, 10, 4, 20], np.uint32))
    assert r.dtype == abi.DMABUF_TOKEN_DTYPE
    assert r.tolist() == [(1, 5), (9, 2), (20, 1)]
    assert coalesce_tokens(np.array([3, 3, 4], np.uint32)).tolist() == [(3, 2)]
    assert coalesce_tokens(np.empty(0, np.uint32)).shape == (0,)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 5000), max_size=3000))
def test_coalesce_and_chunks_cover_exactly_and_respect_limits(toks: list[int]) -> None:
    arr = np.array(toks, np.uint32)
    ranges = coalesce_tokens(arr)
    expanded = _expand(ranges)
    assert expanded.tolist() == sorted(set(toks))
    # ranges are maximal: no two adjacent ranges touch
    ends = ranges["token_start"].astype(np.int64) + ranges["token_count"]
    assert (ends[:-1] < ranges["token_start"][1:].astype(np.int64)).all()
    chunks = dontneed_chunks(ranges)
    got = np.concatenate([_expand(c) for c in chunks]) if chunks else np.empty(0, np.int64)
    assert got.tolist() == sorted(set(toks))
    for c in chunks:
        assert c.dtype == abi.DMABUF_TOKEN_DTYPE
        assert 1 <= c.shape[0] <= abi.MAX_DONTNEED_TOKENS
        assert 1 <= int(c["token_count"].sum()) <= abi.MAX_DONTNEED_FRAGS
        assert (c["token_count"] > 0).all()


def test_chunks_are_exactly_1024_frags_for_contiguous_tokens() -> None:
    ranges = coalesce_tokens(np.arange(1, 5001, dtype=np.uint32))
    chunks = dontneed_chunks(ranges)
    assert [int(c["token_count"].sum()) for c in chunks] == [1024] * 4 + [904]
    assert [c.shape[0] for c in chunks] == [1] * 5
    assert chunks[1].tolist() == [(1025, 1024)]


def test_chunks_respect_128_ranges() -> None:
    toks = np.arange(1, 2 * 300, 2, dtype=np.uint32)  # 300 isolated tokens
    chunks = dontneed_chunks(coalesce_tokens(toks))
    assert [c.shape[0] for c in chunks] == [128, 128, 44]


def test_tx_cmsg_layout() -> None:
    c = build_tx_cmsg(42)
    assert len(c) == 24
    clen, level, ctype, bid = struct.unpack_from("<QiiI", c)
    assert (clen, level, ctype, bid) == (20, abi.SOL_SOCKET, abi.SCM_DEVMEM_DMABUF, 42)
    assert parse_tx_cmsg(c) == 42
    # the unpadded form (controllen 20) is what some senders pass; still valid
    assert parse_tx_cmsg(c[:20]) == 42
    assert parse_tx_cmsg(b"") == 0
    with pytest.raises(ValueError):
        build_tx_cmsg(2**32)


def test_tx_cmsg_einval_like_the_kernel() -> None:
    # cmsg_len CMSG_LEN(8) for SCM_DEVMEM_DMABUF: EINVAL
    bad = struct.pack("<QiiQ", 24, abi.SOL_SOCKET, abi.SCM_DEVMEM_DMABUF, 1)
    with pytest.raises(OSError) as ei:
        parse_tx_cmsg(bad)
    assert ei.value.errno == errno.EINVAL
    # cmsg_len below the header (CMSG_OK fails)
    with pytest.raises(OSError) as ei:
        parse_tx_cmsg(struct.pack("<Qii", 8, abi.SOL_SOCKET, abi.SCM_DEVMEM_DMABUF) + b"\0" * 8)
    assert ei.value.errno == errno.EINVAL
    # cmsg_len past the end
    with pytest.raises(OSError) as ei:
        parse_tx_cmsg(build_tx_cmsg(1)[:16])
    assert ei.value.errno == errno.EINVAL
    # unknown SOL_SOCKET type
    with pytest.raises(OSError) as ei:
        parse_tx_cmsg(struct.pack("<QiiI4x", 20, abi.SOL_SOCKET, 200, 1))
    assert ei.value.errno == errno.EINVAL
    # other levels are skipped, SCM_RIGHTS accepted
    other = struct.pack("<QiiI4x", 20, abi.SOL_IP, 1, 5)
    rights = struct.pack("<QiiI4x", 20, abi.SOL_SOCKET, abi.SCM_RIGHTS, 0)
    assert parse_tx_cmsg(other + rights + build_tx_cmsg(9)) == 9


def test_zerocopy_completion_round_trip() -> None:
    c4 = encode_zerocopy_completion(3, 7)
    clen, level, ctype = struct.unpack_from("<Qii", c4)
    assert (clen, level, ctype) == (16 + 16 + 16, abi.SOL_IP, abi.IP_RECVERR)
    ee = np.frombuffer(c4, abi.SOCK_EXTENDED_ERR_DTYPE, count=1, offset=16)[0]
    assert (int(ee["ee_errno"]), int(ee["ee_origin"]), int(ee["ee_info"]), int(ee["ee_data"])) == (
        0, abi.SO_EE_ORIGIN_ZEROCOPY, 3, 7)
    c6 = encode_zerocopy_completion(8, 8, copied=True, family=socket.AF_INET6)
    clen6, level6, ctype6 = struct.unpack_from("<Qii", c6)
    assert (clen6, level6, ctype6, len(c6)) == (60, abi.SOL_IPV6, abi.IPV6_RECVERR, 64)
    both = c4 + c6
    assert parse_zerocopy_completions(both, len(both)) == [(3, 7), (8, 8)]
    # wraparound keeps u32 values
    w = encode_zerocopy_completion(2**32 - 2, 1)
    assert parse_zerocopy_completions(w, len(w)) == [(2**32 - 2, 1)]
    with pytest.raises(ControlBufferError):
        parse_zerocopy_completions(struct.pack("<Qii", 4, 0, 11), 16)


def test_fragbatch_empty() -> None:
    b = FragBatch.empty()
    assert len(b) == 0 and b.nbytes == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 50), st.integers(1, 3000)), min_size=1, max_size=40),
       st.integers(1, 200), st.integers(1, 2000))
def test_chunks_of_large_ranges(spec: list[tuple[int, int]], max_tokens: int, max_frags: int) -> None:
    # few long ranges (greedy path) and many (vectorised path) obey the same contract
    starts, pos = [], 1
    for gap, count in spec:
        starts.append((pos + gap, count))
        pos += gap + count
    ranges = np.array(starts, abi.DMABUF_TOKEN_DTYPE)
    chunks = dontneed_chunks(ranges, max_tokens=max_tokens, max_frags=max_frags)
    assert np.concatenate([_expand(c) for c in chunks]).tolist() == _expand(ranges).tolist()
    sums = [int(c["token_count"].sum()) for c in chunks]
    lens = [c.shape[0] for c in chunks]
    assert all(1 <= x <= max_frags for x in sums) and all(1 <= x <= max_tokens for x in lens)
    # every chunk but the last is full in at least one dimension
    assert all(s == max_frags or n == max_tokens for s, n in zip(sums[:-1], lens[:-1], strict=True))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 6000), max_size=4000), st.integers(1, 130), st.integers(1, 1500))
def test_fused_chunk_plan_equals_coalesce_then_chunk(toks: list[int], max_tokens: int,
                                                     max_frags: int) -> None:
    t = cmsg_mod.dedupe_sorted(np.sort(np.array(toks, np.uint32)))
    assert t.tolist() == sorted(set(toks))
    chunks, ends = cmsg_mod.chunk_sorted_tokens(t, max_tokens, max_frags)
    want = dontneed_chunks(coalesce_tokens(t), max_tokens, max_frags)
    assert [c.tolist() for c in chunks] == [w.tolist() for w in want]
    assert all(c.dtype == abi.DMABUF_TOKEN_DTYPE for c in chunks)
    # ends index the sorted tokens: chunk i covers t[ends[i-1]:ends[i]]
    starts = [0, *ends][: len(ends)]
    for c, a, b in zip(chunks, starts, ends, strict=True):
        assert _expand(c).tolist() == t[a:b].astype(np.int64).tolist()
    assert (ends[-1] if ends else 0) == t.shape[0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 3000), max_size=3000), st.integers(1, 130), st.integers(1, 1500))
def test_full_only_plan_drops_just_a_partial_last_chunk(toks: list[int], max_tokens: int,
                                                       max_frags: int) -> None:
    t = cmsg_mod.dedupe_sorted(np.sort(np.array(toks, np.uint32)))
    full, fends = cmsg_mod.chunk_sorted_tokens(t, max_tokens, max_frags)
    part, pends = cmsg_mod.chunk_sorted_tokens(t, max_tokens, max_frags, full_only=True)
    assert [c.tolist() for c in part] == [c.tolist() for c in full[: len(part)]]
    assert pends == fends[: len(pends)]
    assert len(full) - len(part) in (0, 1)
    if len(part) < len(full):
        last = full[-1]
        assert int(last["token_count"].sum()) < max_frags and last.shape[0] < max_tokens
    for c in part:
        assert int(c["token_count"].sum()) == max_frags or c.shape[0] == max_tokens
