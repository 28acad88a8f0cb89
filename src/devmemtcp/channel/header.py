"""The Channel's control protocol, sans I/O: frames, message headers, dtypes.

Strategy (h11's): pure functions and one incremental decoder, no sockets.
Everything a Channel says travels on its control connection, an ordinary TCP
connection never steered to a devmem queue, because the payload bytes of a
data flow land in device memory the CPU may not be able to read.

Every control frame is ``FRAME`` (little endian): magic ``b"DMTC"``, protocol
version (u16), frame type (u16), body length (u32, bytes), then the body.
A frame of another version is refused with a :class:`ChannelError` naming
both versions, so two ends of different devmemtcp releases fail at once.

A message header (``MSG`` frame body, :class:`MessageHeader`) carries the tag
(u64), payload size (bytes), sequence number, how the payload is striped over
the data flows (stripe unit in bytes, first flow, number of flows: chunk
``i`` holds bytes ``[i*unit, (i+1)*unit)`` and goes on flow
``(first + i) % nflows``), the shape and the dtype: a numpy dtype descr (as
``numpy.lib.format`` writes it in .npy files) or a DLPack ``(code, bits,
lanes)`` triple for dtypes numpy lacks (bfloat16).
"""

from __future__ import annotations

import ast
import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np

from devmemtcp.errors import ChannelError

__all__ = [
    "FRAME",
    "MAGIC",
    "MAX_BODY",
    "PROTOCOL_VERSION",
    "DType",
    "FrameDecoder",
    "FrameType",
    "MessageHeader",
    "decode_credit",
    "decode_header",
    "decode_json",
    "destination_size_error",
    "encode_credit",
    "encode_frame",
    "encode_header",
    "encode_json",
    "encode_msg",
    "encode_msg_frame",
    "msg_tail",
    "msg_tail_of",
    "pack_msg_frame",
]

PROTOCOL_VERSION = 1
MAGIC = b"DMTC"
FRAME = struct.Struct("<4sHHI")  # magic, version, type, body length
#: largest frame body accepted (a header with 32 dims and a long structured dtype is < 4 KiB)
MAX_BODY = 1 << 20
_MSG = struct.Struct("<QQQIHHBBH")  # tag, nbytes, seq, unit, first, nflows, dtype kind, ndim, dtype len
_CREDIT = struct.Struct("<Q")
MAX_NDIM = 64

# DLPack type codes (dlpack.h DLDataTypeCode)
DL_INT, DL_UINT, DL_FLOAT, DL_BFLOAT, DL_COMPLEX, DL_BOOL = 0, 1, 2, 4, 5, 6
_DL_NAMES = {
    DL_INT: "int",
    DL_UINT: "uint",
    DL_FLOAT: "float",
    DL_BFLOAT: "bfloat",
    DL_COMPLEX: "complex",
    DL_BOOL: "bool",
}


class FrameType(IntEnum):
    """Control frame types."""

    HELLO = 1  #: JSON: each end's parameters (flows, ports, credit window)
    MSG = 2  #: a message header; the payload follows on the data flows
    CREDIT = 3  #: u64: credit pages given back to the sender
    FLOWS = 4  #: JSON: the local ports of the connector's data flows
    CLOSE = 5  #: orderly end: no message follows
    ERROR = 6  #: JSON {"message"}: the peer failed and is closing


#: dtype conversions seen so far (a header per message: decoding a descr costs more than the rest)
_OF_NUMPY: dict[Any, DType] = {}
_TO_NUMPY: dict[str, Any] = {}


@dataclass(frozen=True)
class DType:
    """A message's element type: ``descr`` (a numpy dtype descr: ``'<f4'``,
    ``'|b1'``, or a structured list's repr) or, when ``descr`` is None,
    the DLPack triple ``(code, bits, lanes)``."""

    descr: str | None = None
    dlpack: tuple[int, int, int] | None = None

    @classmethod
    def of_numpy(cls, dtype: np.dtype[Any]) -> DType:
        """The DType of a numpy dtype; ChannelError for object dtypes (Python
        objects have no bytes to send)."""
        hit = _OF_NUMPY.get(dtype)
        if hit is not None:
            return hit
        if dtype.hasobject:
            raise ChannelError(
                f"cannot send arrays of dtype {dtype}: they hold Python objects, not bytes",
                "convert to a numeric, bytes or unicode dtype first",
            )
        descr = np.lib.format.dtype_to_descr(dtype)
        spec = cls(descr=descr if isinstance(descr, str) else repr(descr))
        if len(_OF_NUMPY) < 256:
            _OF_NUMPY[dtype] = spec
        return spec

    def numpy(self) -> np.dtype[Any]:
        """The numpy dtype; ChannelError when there is none (bfloat16) or the
        descr does not decode."""
        if self.descr is None:
            assert self.dlpack is not None
            code, bits, lanes = self.dlpack
            if lanes == 1 and code in (DL_INT, DL_UINT, DL_FLOAT, DL_COMPLEX, DL_BOOL):
                kind = {DL_INT: "i", DL_UINT: "u", DL_FLOAT: "f", DL_COMPLEX: "c", DL_BOOL: "b"}[code]
                try:
                    return np.dtype(f"<{kind}{bits // 8}" if kind != "b" else "?")
                except TypeError:
                    pass
            raise ChannelError(
                f"dtype {self} has no numpy equivalent",
                "receive it with like='torch', or as raw bytes with recv_into(uint8 array)",
            )
        hit = _TO_NUMPY.get(self.descr)
        if hit is not None:
            return hit
        try:
            text = self.descr
            descr: Any = ast.literal_eval(text) if text.startswith("[") else text
            dt = np.lib.format.descr_to_dtype(descr)
            if len(_TO_NUMPY) < 256:
                _TO_NUMPY[text] = dt
            return dt
        except (ValueError, TypeError, SyntaxError) as exc:
            raise ChannelError(
                f"unknown dtype {self.descr!r} in a message header: {exc}",
                "both ends must run a numpy that knows the dtype",
            ) from None

    @property
    def itemsize(self) -> int:
        if self.descr is None:
            assert self.dlpack is not None
            return self.dlpack[1] * self.dlpack[2] // 8
        return int(self.numpy().itemsize)

    def __str__(self) -> str:
        if self.descr is not None:
            return self.descr
        assert self.dlpack is not None
        code, bits, lanes = self.dlpack
        name = f"{_DL_NAMES.get(code, f'code{code}')}{bits}"
        return name if lanes == 1 else f"{name}x{lanes}"


class MessageHeader(NamedTuple):
    """One message: ``tag`` (u64), ``nbytes`` (payload bytes), ``seq`` (the
    sender's message number, from 0), ``dtype``, ``shape`` (element counts),
    and its striping: ``unit`` (bytes per chunk), ``first`` (flow of chunk 0)
    and ``nflows`` (flows it is striped over, at least 1)."""

    tag: int
    nbytes: int
    seq: int
    dtype: DType
    shape: tuple[int, ...]
    unit: int
    first: int = 0
    nflows: int = 1

    @property
    def nchunks(self) -> int:
        return -(-self.nbytes // self.unit) if self.nbytes else 0

    def chunk(self, i: int) -> tuple[int, int, int]:
        """Chunk ``i``: ``(flow, start byte, length)``."""
        start = i * self.unit
        return (self.first + i) % self.nflows, start, min(self.unit, self.nbytes - start)


# ---------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------
def encode_frame(ftype: FrameType | int, body: bytes = b"", version: int = PROTOCOL_VERSION) -> bytes:
    """One control frame: ``FRAME`` then ``body``."""
    return FRAME.pack(MAGIC, version, int(ftype), len(body)) + body


class FrameDecoder:
    """Incremental frame decoder: :meth:`feed` bytes, :meth:`next` returns
    ``(type, body)`` or None until a whole frame is there.

    Raises ChannelError for bytes that are not a frame (bad magic), a frame of
    another protocol version (naming both), an unknown type or a body over
    ``MAX_BODY``."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next(self) -> tuple[FrameType, bytes] | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < FRAME.size:
            return None
        magic, version, ftype, length = FRAME.unpack_from(buf, pos)
        if magic != MAGIC:
            raise ChannelError(
                f"the peer sent bytes that are not a devmemtcp channel frame "
                f"(magic {bytes(magic)!r}, expected {MAGIC!r})",
                "connect to a devmemtcp.listen() endpoint with devmemtcp.connect()",
            )
        if version != PROTOCOL_VERSION:
            raise ChannelError(
                f"channel protocol version mismatch: the peer speaks version {version}, "
                f"this end version {PROTOCOL_VERSION}",
                "run the same devmemtcp release on both ends",
            )
        try:
            kind = _FRAME_TYPES[ftype]
        except KeyError:
            raise ChannelError(
                f"unknown control frame type {ftype} (protocol version {version})",
                "run the same devmemtcp release on both ends",
            ) from None
        if length > MAX_BODY:
            raise ChannelError(
                f"control frame of {length} bytes is over the {MAX_BODY}-byte limit",
                "the peer is not a devmemtcp channel or is broken",
            )
        end = pos + FRAME.size + length
        if len(buf) < end:
            return None
        body = bytes(buf[pos + FRAME.size : end])
        self._pos = end
        if end == len(buf):
            buf.clear()
            self._pos = 0
        return kind, body


    def drain(self) -> list[Any]:
        """Every whole frame buffered, in order: a :class:`MessageHeader` for
        each MSG frame (as :func:`decode_header` gives it), ``(type, body)``
        for the others; the errors of :meth:`next` and :func:`decode_header`.

        MSG frames whose shape and dtype fields were seen before are decoded
        straight from the buffer (one unpack, one dictionary lookup): the
        receiving end reads many headers per recv of a busy channel."""
        out: list[Any] = []
        unpack = _MSG_FRAME.unpack_from
        cache = _TAIL_CACHE
        hsize = _MSG_FRAME.size
        new = tuple.__new__  # MessageHeader's fields in order, without its Python-level __new__
        last: tuple[int, int, int, int, bytes] | None = None  # the previous frame's tail fields
        hit: tuple[DType, tuple[int, ...]] | None = None
        while True:
            buf, pos = self._buf, self._pos
            n = len(buf)
            while n - pos >= hsize:
                (magic, version, ftype, length, tag, nbytes, seq, unit, first, nflows, kind, ndim,
                 dlen) = unpack(buf, pos)
                end = pos + FRAME.size + length
                if ftype != 2 or magic != MAGIC or version != PROTOCOL_VERSION or end > n:
                    break
                if (
                    last is None
                    or last[0] != nbytes
                    or last[1] != kind
                    or last[2] != ndim
                    or last[3] != dlen
                    or end - pos - hsize != len(last[4])
                    or not buf.startswith(last[4], pos + hsize, end)
                ):  # not the same shape and dtype as the frame before: look it up
                    key = (nbytes, kind, ndim, dlen, bytes(buf[pos + hsize : end]))
                    hit = cache.get(key)
                    if hit is None:
                        break
                    last = key
                assert hit is not None
                if not 0 <= first < nflows or not (unit or not nbytes):
                    break
                out.append(new(MessageHeader, (tag, nbytes, seq, hit[0], hit[1], unit, first, nflows)))
                pos = end
            self._pos = pos
            if pos == n:
                buf.clear()
                self._pos = 0
                return out
            fr = self.next()  # a frame of another type, a new shape or dtype, or not whole yet
            if fr is None:
                return out
            out.append(decode_header(fr[1]) if fr[0] == FrameType.MSG else fr)


# ---------------------------------------------------------------------------
# Bodies
# ---------------------------------------------------------------------------
def encode_header(h: MessageHeader) -> bytes:
    """The ``MSG`` frame body of ``h``."""
    return encode_msg(h.tag, h.nbytes, h.seq, h.unit, h.first, h.nflows, h.dtype, h.shape)


def encode_msg(
    tag: int, nbytes: int, seq: int, unit: int, first: int, nflows: int, dtype: DType, shape: tuple[int, ...]
) -> bytes:
    """:func:`encode_header` from the fields (the send path builds no MessageHeader)."""
    ndim = len(shape)
    if ndim > MAX_NDIM:
        raise ChannelError(
            f"{ndim} dimensions: at most {MAX_NDIM} are supported", "reshape the array before sending"
        )
    dt = _DT_BYTES.get(dtype)
    if dt is None:
        if dtype.descr is not None:
            dt = (0, dtype.descr.encode())
        else:
            assert dtype.dlpack is not None
            dt = (1, struct.pack("<BBH", *dtype.dlpack))
        if len(_DT_BYTES) < 256:
            _DT_BYTES[dtype] = dt
    kind, raw = dt
    return (
        _MSG.pack(tag, nbytes, seq, unit, first, nflows, kind, ndim, len(raw))
        + struct.pack(f"<{ndim}Q", *shape)
        + raw
    )


_MSG_FRAME = struct.Struct("<4sHHIQQQIHHBBH")  # FRAME then _MSG: one pack per header
_TAILS: dict[Any, tuple[int, int, int, bytes]] = {}


def msg_tail(dtype: DType, shape: tuple[int, ...], key: Any = None) -> tuple[int, int, int, bytes]:
    """The dtype and shape fields of a MSG header, encoded once per ``key``
    (default ``(dtype, shape)``; the send path passes the numpy dtype and
    shape, cheaper to hash) and cached (up to 1024 keys)."""
    k = (dtype, shape) if key is None else key
    t = _TAILS.get(k)
    if t is None:
        body = encode_msg(0, 0, 0, 0, 0, 1, dtype, shape)
        kind, ndim, dlen = struct.unpack_from("<BBH", body, _MSG.size - 4)
        t = (kind, ndim, dlen, body[_MSG.size :])
        if len(_TAILS) < 1024:
            _TAILS[k] = t
    return t


def msg_tail_of(arr_dtype: np.dtype[Any], shape: tuple[int, ...]) -> tuple[int, int, int, bytes]:
    """:func:`msg_tail` keyed by a numpy dtype and shape (one dict lookup once
    seen). ChannelError for dtypes a message cannot carry (object)."""
    t = _TAILS.get((arr_dtype, shape))
    return t if t is not None else msg_tail(DType.of_numpy(arr_dtype), shape, (arr_dtype, shape))


def pack_msg_frame(
    tail: tuple[int, int, int, bytes], tag: int, nbytes: int, seq: int, unit: int, first: int, nflows: int
) -> bytes:
    """``encode_frame(MSG, encode_msg(...))`` in one pack, from a :func:`msg_tail`."""
    kind, ndim, dlen, raw = tail
    return (
        _MSG_FRAME.pack(
            MAGIC, PROTOCOL_VERSION, FrameType.MSG, _MSG.size + len(raw), tag, nbytes, seq, unit, first,
            nflows, kind, ndim, dlen,
        )
        + raw
    )


def encode_msg_frame(
    tag: int,
    nbytes: int,
    seq: int,
    unit: int,
    first: int,
    nflows: int,
    dtype: DType,
    shape: tuple[int, ...],
    key: Any = None,
) -> bytes:
    """``encode_frame(MSG, encode_msg(...))`` in one pack (:func:`msg_tail`, :func:`pack_msg_frame`)."""
    return pack_msg_frame(msg_tail(dtype, shape, key), tag, nbytes, seq, unit, first, nflows)


_DT_BYTES: dict[DType, tuple[int, bytes]] = {}
_DT_OF_RAW: dict[tuple[int, bytes], DType] = {}
_FRAME_TYPES = {int(t): t for t in FrameType}
#: decoded (nbytes, shape and dtype fields) -> (dtype, shape) of headers seen (checked once)
_TAIL_CACHE: dict[tuple[int, int, int, int, bytes], tuple[DType, tuple[int, ...]]] = {}
_MSG_SIZE = _MSG.size


def decode_header(body: bytes) -> MessageHeader:
    """Decode a ``MSG`` body; ChannelError when it does not decode or is inconsistent."""
    if len(body) >= _MSG_SIZE:
        tag, nbytes, seq, unit, first, nflows, kind, ndim, dlen = _MSG.unpack_from(body, 0)
        hit = _TAIL_CACHE.get((nbytes, kind, ndim, dlen, body[_MSG_SIZE:]))
        if hit is not None and 0 <= first < nflows and (unit or not nbytes):
            return MessageHeader(tag, nbytes, seq, hit[0], hit[1], unit, first, nflows)
    try:
        tag, nbytes, seq, unit, first, nflows, kind, ndim, dlen = _MSG.unpack_from(body, 0)
        shape = struct.unpack_from(f"<{ndim}Q", body, _MSG.size)
        dt = body[_MSG.size + 8 * ndim :]
        if len(dt) != dlen:
            raise ValueError(f"dtype field of {len(dt)} bytes, header says {dlen}")
        if kind == 0:
            dtype = DType(descr=dt.decode())
        elif kind == 1:
            code, bits, lanes = struct.unpack("<BBH", dt)
            dtype = DType(dlpack=(code, bits, lanes))
        else:
            raise ValueError(f"dtype kind {kind}")
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ChannelError(
            f"a message header does not decode ({exc}; protocol version {PROTOCOL_VERSION})",
            "the peer is not a devmemtcp channel of this version, or is broken",
        ) from None
    h = MessageHeader(
        tag=tag,
        nbytes=nbytes,
        seq=seq,
        dtype=dtype,
        shape=tuple(shape),
        unit=unit,
        first=first,
        nflows=nflows,
    )
    if nflows < 1 or first >= nflows or (nbytes and unit < 1):
        raise ChannelError(
            f"message header with bad striping (unit {unit}, first {first}, flows {nflows})",
            "the peer is broken",
        )
    try:
        itemsize = dtype.itemsize
    except ChannelError:
        # a dtype this end's numpy does not know: recv_into() of raw bytes still works,
        # recv() of an array names the dtype then
        return h
    n = 1
    for d in shape:
        n *= d
    if n * itemsize != nbytes:
        raise ChannelError(
            f"message header for tag {tag}: shape {tuple(shape)} of {dtype} is "
            f"{n * itemsize} bytes but the payload is {nbytes}",
            "the peer is broken",
        )
    if len(_TAIL_CACHE) < 1024:
        _TAIL_CACHE[(nbytes, kind, ndim, dlen, body[_MSG_SIZE:])] = (dtype, h.shape)
    return h


def encode_credit(pages: int) -> bytes:
    return _CREDIT.pack(pages)


def decode_credit(body: bytes) -> int:
    try:
        return int(_CREDIT.unpack(body)[0])
    except struct.error:
        raise ChannelError(
            f"a credit frame of {len(body)} bytes does not decode", "the peer is broken"
        ) from None


def encode_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def decode_json(body: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(body.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ChannelError(f"the peer's {what} frame does not decode: {exc}", "the peer is broken") from None
    if not isinstance(obj, dict):
        raise ChannelError(f"the peer's {what} frame is not an object", "the peer is broken")
    return obj


def destination_size_error(size: int, nbytes: int, tag: int) -> ChannelError:
    """The error for a receive destination of ``size`` bytes given a message of
    ``nbytes`` (raised before any payload is read: the message stays receivable)."""
    what = "too small" if size < nbytes else "larger than the message"
    return ChannelError(
        f"out holds {size} bytes, {what}: the message (tag {tag}) has {nbytes} bytes",
        f"pass a destination of exactly {nbytes} bytes; the message stays receivable",
        tag=tag,
        expected=nbytes,
    )
