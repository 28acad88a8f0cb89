"""The channel's control protocol codec (devmemtcp.channel.header), sans I/O."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devmemtcp.channel.header import (
    FRAME,
    MAGIC,
    PROTOCOL_VERSION,
    DType,
    FrameDecoder,
    FrameType,
    MessageHeader,
    decode_credit,
    decode_header,
    encode_credit,
    encode_frame,
    encode_header,
)
from devmemtcp.errors import ChannelError

DTYPES = [
    "?",
    "i1",
    "<i2",
    ">i4",
    "<i8",
    "u1",
    "<u2",
    "<u4",
    "<u8",
    "<f2",
    "<f4",
    ">f8",
    "<c8",
    "<c16",
    "S5",
    "<U3",
    "<M8[ns]",
    "<m8[s]",
    "V7",
    [("a", "<i4"), ("b", ">f8", (2,))],
]


@pytest.mark.parametrize("dt", DTYPES, ids=str)
def test_every_numpy_dtype_survives_the_header(dt: object) -> None:
    dtype = np.dtype(dt)  # type: ignore[call-overload]
    spec = DType.of_numpy(dtype)
    h = MessageHeader(
        tag=2**64 - 1,
        nbytes=6 * dtype.itemsize,
        seq=5,
        dtype=spec,
        shape=(2, 3),
        unit=4096,
        first=1,
        nflows=4,
    )
    back = decode_header(encode_header(h))
    assert back == h
    assert back.dtype.numpy() == dtype


def test_long_double_and_bfloat16() -> None:
    ld = np.dtype(np.longdouble)
    assert DType.of_numpy(ld).numpy() == ld
    bf = DType(dlpack=(4, 16, 1))
    h = MessageHeader(tag=0, nbytes=8, seq=0, dtype=bf, shape=(4,), unit=4096)
    back = decode_header(encode_header(h))
    assert back.dtype == bf and str(back.dtype) == "bfloat16" and back.dtype.itemsize == 2
    with pytest.raises(ChannelError, match="no numpy equivalent"):
        back.dtype.numpy()
    assert DType(dlpack=(2, 32, 1)).numpy() == np.dtype("<f4")


def test_object_dtype_is_refused() -> None:
    with pytest.raises(ChannelError, match="Python objects"):
        DType.of_numpy(np.dtype(object))


def test_zero_d_and_empty_shapes() -> None:
    for shape, n in (((), 1), ((0,), 0), ((3, 0, 2), 0)):
        h = MessageHeader(
            tag=1, nbytes=8 * n, seq=0, dtype=DType.of_numpy(np.dtype("<f8")), shape=shape, unit=4096
        )
        assert decode_header(encode_header(h)).shape == shape
        assert h.nchunks == (1 if n else 0)


def test_striping_chunks() -> None:
    h = MessageHeader(
        tag=0,
        nbytes=10_000,
        seq=0,
        dtype=DType.of_numpy(np.dtype("u1")),
        shape=(10_000,),
        unit=4096,
        first=2,
        nflows=3,
    )
    assert [h.chunk(i) for i in range(h.nchunks)] == [(2, 0, 4096), (0, 4096, 4096), (1, 8192, 1808)]


def test_inconsistent_header_is_refused() -> None:
    h = MessageHeader(tag=9, nbytes=12, seq=0, dtype=DType.of_numpy(np.dtype("<i4")), shape=(4,), unit=4096)
    with pytest.raises(ChannelError, match=r"tag 9: shape \(4,\) of <i4 is 16 bytes but the payload is 12"):
        decode_header(encode_header(h))
    with pytest.raises(ChannelError, match="does not decode"):
        decode_header(b"\x00" * 7)
    bad = MessageHeader(
        tag=0, nbytes=0, seq=0, dtype=DType.of_numpy(np.dtype("u1")), shape=(0,), unit=1, first=3, nflows=2
    )
    with pytest.raises(ChannelError, match="bad striping"):
        decode_header(encode_header(bad))


def test_unknown_dtype_descr() -> None:
    h = MessageHeader(tag=0, nbytes=0, seq=0, dtype=DType(descr="<q9"), shape=(0,), unit=4096)
    back = decode_header(encode_header(h))
    with pytest.raises(ChannelError, match="unknown dtype '<q9'"):
        back.dtype.numpy()


@given(st.lists(st.integers(0, 2**64 - 1), max_size=20), st.integers(1, 50))
def test_decoder_reassembles_frames_split_anywhere(credits: list[int], step: int) -> None:
    wire = b"".join(encode_frame(FrameType.CREDIT, encode_credit(c)) for c in credits)
    dec = FrameDecoder()
    got = []
    for i in range(0, len(wire), step):
        dec.feed(wire[i : i + step])
        while (fr := dec.next()) is not None:
            assert fr[0] == FrameType.CREDIT
            got.append(decode_credit(fr[1]))
    assert got == credits and dec.buffered == 0


def test_version_mismatch_names_both_versions() -> None:
    dec = FrameDecoder()
    dec.feed(encode_frame(FrameType.HELLO, b"{}", version=PROTOCOL_VERSION + 98))
    with pytest.raises(
        ChannelError,
        match=f"peer speaks version {PROTOCOL_VERSION + 98}, this end version {PROTOCOL_VERSION}",
    ) as ei:
        dec.next()
    assert ei.value.hint and "same devmemtcp" in ei.value.hint


def test_not_a_frame_and_unknown_type_and_oversized() -> None:
    dec = FrameDecoder()
    dec.feed(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(ChannelError, match="not a devmemtcp channel frame"):
        dec.next()
    dec = FrameDecoder()
    dec.feed(FRAME.pack(MAGIC, PROTOCOL_VERSION, 77, 0))
    with pytest.raises(ChannelError, match="unknown control frame type 77"):
        dec.next()
    dec = FrameDecoder()
    dec.feed(FRAME.pack(MAGIC, PROTOCOL_VERSION, int(FrameType.MSG), 1 << 30))
    with pytest.raises(ChannelError, match="over the"):
        dec.next()


def test_partial_frame_waits() -> None:
    frame = encode_frame(FrameType.CLOSE)
    dec = FrameDecoder()
    dec.feed(frame[:5])
    assert dec.next() is None
    dec.feed(frame[5:])
    assert dec.next() == (FrameType.CLOSE, b"")
    with pytest.raises(ChannelError, match="credit frame of 3 bytes"):
        decode_credit(struct.pack("<HB", 1, 2))


def test_drain_decodes_headers_in_bulk_as_decode_header_does() -> None:
    """FrameDecoder.drain: MSG frames (known and new shapes/dtypes) equal
    decode_header's, other frames in their place, a partial frame kept."""
    import numpy as np

    from devmemtcp.channel.header import (
        DType,
        FrameDecoder,
        FrameType,
        decode_header,
        encode_credit,
        encode_frame,
        encode_msg,
        encode_msg_frame,
    )

    f4 = DType.of_numpy(np.dtype("<f4"))
    u1 = DType.of_numpy(np.dtype("u1"))
    frames = [
        encode_msg_frame(1, 40, 0, 4096, 0, 1, f4, (10,)),
        encode_msg_frame(2, 40, 1, 4096, 0, 1, f4, (10,)),
        encode_frame(FrameType.CREDIT, encode_credit(7)),
        encode_frame(FrameType.MSG, encode_msg(3, 6, 2, 4096, 1, 2, u1, (2, 3))),
        encode_msg_frame(4, 6, 3, 4096, 1, 2, u1, (2, 3)),
    ]
    assert frames[0] == encode_frame(FrameType.MSG, encode_msg(1, 40, 0, 4096, 0, 1, f4, (10,)))
    data = b"".join(frames)
    dec = FrameDecoder()
    dec.feed(data[:-5])
    got = dec.drain()
    assert len(got) == 4 and dec.buffered == len(frames[-1]) - 5
    dec.feed(data[-5:])
    got += dec.drain()
    assert dec.buffered == 0
    want = [decode_header(fr[12:]) if i != 2 else None for i, fr in enumerate(frames)]
    assert got[0] == want[0] and got[1] == want[1] and got[3] == want[3] and got[4] == want[4]
    assert got[2] == (FrameType.CREDIT, encode_credit(7))
    # the same size, kind, ndim and dtype length but another shape: not taken for the previous one's
    dec.feed(
        encode_msg_frame(5, 6, 4, 4096, 0, 1, u1, (2, 3))
        + encode_msg_frame(6, 6, 5, 4096, 0, 1, u1, (3, 2))
        + encode_msg_frame(7, 6, 6, 4096, 0, 1, u1, (3, 2))
    )
    shapes = [h.shape for h in dec.drain()]
    assert shapes == [(2, 3), (3, 2), (3, 2)]
