"""RX codec: the control buffer ``tcp_recvmsg_dmabuf`` writes, to and from a :class:`FragBatch`.

``tcp_recvmsg_dmabuf`` (net/ipv4/tcp.c) writes one cmsg per fragment: a
16-byte ``cmsghdr`` (level ``SOL_SOCKET``, type ``SCM_DEVMEM_DMABUF`` or
``SCM_DEVMEM_LINEAR``) followed by a 24-byte ``struct dmabuf_cmsg``;
``CMSG_SPACE(24) == CMSG_LEN(24) == 40`` so the buffer is a dense array of
40-byte records. :func:`parse_rx_control` turns it into a :class:`FragBatch`
of numpy arrays with no Python object per fragment, and checks the values
against the kernel's invariants with a few whole-batch array operations
(:class:`~devmemtcp.codec.errors.FragRecordError` names the record that breaks
one). :func:`encode_rx_control` writes what the kernel writes (the emulated
NIC and the benchmarks use it).

Sans-I/O: pure functions of bytes, no sockets.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field

import numpy as np

from devmemtcp import abi
from devmemtcp.codec.errors import ControlBufferError, FragRecordError

__all__ = [
    "FragBatch",
    "encode_rx_control",
    "parse_rx_batch",
    "parse_rx_control",
    "parse_rx_uniform",
    "rx_cmsgs_written",
    "rx_control_space",
]

_HDR = abi.CMSGHDR_DTYPE.itemsize  # 16
_REC = abi.DMABUF_CMSG_SPACE  # 40 bytes per RX devmem cmsg
_REC_LEN = abi.cmsg_len(abi.DMABUF_CMSG_DTYPE.itemsize)  # CMSG_LEN(24) == 40
assert _REC == _REC_LEN == 40

# One RX record seen as five little-endian u64 words:
#   0: cmsg_len   1: cmsg_level | cmsg_type << 32   2: frag_offset
#   3: frag_size | frag_token << 32                  4: dmabuf_id | flags << 32
_WORDS = _REC // 8
_KEY_DMABUF = np.uint64(abi.SOL_SOCKET | (abi.SCM_DEVMEM_DMABUF << 32))
_KEY_LINEAR = np.uint64(abi.SOL_SOCKET | (abi.SCM_DEVMEM_LINEAR << 32))

_EMPTY_U64 = np.empty(0, np.uint64)
_EMPTY_U32 = np.empty(0, np.uint32)
_EMPTY_I64 = np.empty(0, np.int64)
_EMPTY_U8 = np.empty(0, np.uint8)

#: tokens come from xa_alloc with XA_FLAGS_ALLOC1 and xa_limit_31b (net/ipv4/tcp.c): 1 .. 2**31 - 1
_TOKEN_MAX = abi.TOKEN_LIMIT
#: batches of at most this many runs of consecutive tokens are checked (and handed to the
#: Receiver) as runs, a step per run; more take the vectorised check with a sort
_FEW_RUNS = 32


@dataclass(eq=False)
class FragBatch:
    """The fragments one ``recvmsg(MSG_SOCK_DEVMEM)`` returned, as arrays.

    All per-fragment arrays have shape ``(n,)`` and are in the order the kernel
    wrote the cmsgs (stream order):

    * ``offset`` (uint64): byte offset of the fragment in the dma-buf;
    * ``size`` (uint32): fragment length in bytes (at most one net_iov,
      ``PAGE_SIZE`` on 6.12-7.2);
    * ``token`` (uint32): the handle to give back with SO_DEVMEM_DONTNEED;
    * ``dmabuf_id`` (uint32): the binding id the fragment belongs to.

    From :func:`parse_rx_control` the four arrays are strided views of one
    private copy of the control buffer's records (not C-contiguous; use
    ``np.ascontiguousarray`` where a flat buffer is needed).
    ``linear_bytes`` is the sum of the SCM_DEVMEM_LINEAR ``frag_size`` values:
    bytes the kernel copied into the iov instead. ``linear_sizes`` (uint32)
    lists each linear piece and ``linear_at`` (int64) the number of dmabuf
    fragments that precede it in the stream, so the stream order of linear and
    device bytes can be rebuilt. ``linear`` (uint8) and ``readable`` (uint8)
    are optional views set by the Receiver: the linear bytes in its iov
    buffer, and readable data (a flow that landed on an ordinary queue, no
    devmem cmsg at all). Both views are only valid until the next receive.
    ``serial`` is the Receiver's number for the batch (0: not from a Receiver).
    """

    offset: np.ndarray
    size: np.ndarray
    token: np.ndarray
    dmabuf_id: np.ndarray
    linear_bytes: int = 0
    linear_sizes: np.ndarray = field(default_factory=lambda: _EMPTY_U32)
    linear_at: np.ndarray = field(default_factory=lambda: _EMPTY_I64)
    linear: np.ndarray = field(default_factory=lambda: _EMPTY_U8)
    readable: np.ndarray = field(default_factory=lambda: _EMPTY_U8)
    serial: int = 0

    def __len__(self) -> int:
        return int(self.token.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes in device memory (sum of ``size``), excluding linear bytes."""
        return int(np.add.reduce(self.size, dtype=np.uint64))  # (ndarray.sum goes through Python)

    @classmethod
    def empty(cls) -> FragBatch:
        """A batch with no fragments."""
        return cls(_EMPTY_U64, _EMPTY_U32, _EMPTY_U32, _EMPTY_U32)


def as_u8(buf: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """``buf``'s bytes as a 1-D uint8 array (a view where the memory is one
    contiguous block, else a copy). Raises :class:`ControlBufferError` for an
    object that holds no bytes (a str, an object array, ...)."""
    if type(buf) is np.ndarray and buf.dtype == _U8 and buf.ndim == 1:
        return buf
    try:
        if isinstance(buf, np.ndarray):
            if buf.dtype.hasobject:
                raise TypeError(f"dtype {buf.dtype} holds Python objects, not bytes")
            return np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
        if isinstance(buf, memoryview) and not buf.c_contiguous:
            return np.frombuffer(buf.tobytes(), dtype=np.uint8)
        return np.frombuffer(buf, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as exc:
        raise ControlBufferError(
            f"control buffer of type {type(buf).__name__} holds no bytes: {exc}",
            "pass the bytearray, memoryview or uint8 array recvmsg wrote into",
        ) from None


def rx_control_space(nfrags: int, linear_pieces: int = 0) -> int:
    """Control buffer bytes needed for ``nfrags`` dmabuf cmsgs plus
    ``linear_pieces`` SCM_DEVMEM_LINEAR cmsgs (40 bytes each on 64-bit)."""
    return (nfrags + linear_pieces) * _REC


def rx_cmsgs_written(controllen: int) -> int:
    """Number of devmem cmsgs in a control buffer of ``controllen`` bytes
    written by :func:`encode_rx_control` (or the kernel)."""
    return controllen // _REC


# ---------------------------------------------------------------------------
# RX: parse
# ---------------------------------------------------------------------------
Control = bytes | bytearray | memoryview | np.ndarray


def parse_rx_control(control: Control, controllen: int, msg_flags: int = 0, *,
                     nbytes: int | None = None, dmabuf_size: int | None = None) -> FragBatch:
    """Parse a devmem RX control buffer into a :class:`FragBatch`.

    ``control`` holds at least ``controllen`` bytes (the ``msg_controllen``
    recvmsg returned) in the kernel's layout. When every cmsg is a 40-byte
    devmem record (always the case for what ``tcp_recvmsg_dmabuf`` writes) the
    buffer is copied once and parsed as strided numpy views of the copy with
    no Python loop; otherwise the cmsgs are walked by ``cmsg_len``
    (``__CMSG_NXTHDR`` rules).

    ``nbytes`` (optional): the byte count recvmsg returned; the fragment and
    linear sizes must add up to it. ``dmabuf_size`` (optional, bytes): every
    fragment must lie inside a dma-buf of that size.

    Raises :class:`~devmemtcp.codec.errors.ControlBufferError` when
    ``msg_flags`` has MSG_CTRUNC (the control buffer was too small), when a
    cmsg is malformed (``cmsg_len`` below the header size, past the end, or
    not CMSG_LEN(24) for a devmem cmsg), or when a cmsg has a level/type
    other than SOL_SOCKET SCM_DEVMEM_DMABUF / SCM_DEVMEM_LINEAR; and its
    subclass :class:`~devmemtcp.codec.errors.FragRecordError` for a record
    the kernel never writes: a token 0 or above 2**31 - 1, a token twice, a
    fragment or linear piece of 0 bytes, a fragment past ``dmabuf_size``,
    sizes not adding up to ``nbytes``. Each error names the byte offset.
    The checks are whole-batch array operations, none per fragment.
    """
    return parse_rx_batch(control, controllen, msg_flags, nbytes, dmabuf_size)[0]


def parse_rx_uniform(control: Control, controllen: int, msg_flags: int = 0, *,
                     nbytes: int | None = None, dmabuf_size: int | None = None) -> tuple[FragBatch, int]:
    """:func:`parse_rx_control`, also telling whether every fragment has the
    same ``dmabuf_id``: returns ``(batch, dmabuf_id)`` where ``dmabuf_id`` is
    that id when the buffer is the common one (only SCM_DEVMEM_DMABUF cmsgs,
    all of one binding) and ``-1`` otherwise (linear cmsgs, several
    bindings, no fragment), in which case ``batch.dmabuf_id`` says which.

    The Receiver uses it to check the binding with one comparison per batch
    instead of one per fragment. Same errors as :func:`parse_rx_control`.
    """
    batch, dmabuf_id, _runs = parse_rx_batch(control, controllen, msg_flags, nbytes, dmabuf_size)
    return batch, dmabuf_id


def parse_rx_batch(control: Control, controllen: int, msg_flags: int = 0, nbytes: int | None = None,
                   dmabuf_size: int | None = None) -> tuple[FragBatch, int, list[int] | None]:
    """:func:`parse_rx_uniform` plus the batch's tokens as runs of consecutive
    values, ``[start0, count0, start1, count1, ...]`` in stream order, when
    they form fewer than 32 runs (else ``None``): the token check finds them
    anyway, and the Receiver's release queue takes them as they are. Same
    errors as :func:`parse_rx_control`."""
    if msg_flags & abi.MSG_CTRUNC:
        raise ControlBufferError(
            f"control data truncated (MSG_CTRUNC set, controllen {controllen})",
            "enlarge the control buffer: it needs 40 bytes per fragment "
            "(CMSG_SPACE(sizeof(struct dmabuf_cmsg)))",
        )
    raw = control if type(control) is np.ndarray and control.dtype == _U8 and control.ndim == 1 \
        else as_u8(control)
    if type(controllen) is not int:
        try:
            controllen = int(controllen)  # numpy integers
        except (TypeError, ValueError):
            raise ControlBufferError(f"controllen {controllen!r} is not a byte count",
                                     "pass the msg_controllen recvmsg returned") from None
    if controllen < 0 or controllen > raw.shape[0]:
        raise ControlBufferError(
            f"controllen {controllen} exceeds the control buffer ({raw.shape[0]} bytes)"
            if controllen > 0 else f"negative controllen {controllen}",
            "pass the msg_controllen recvmsg returned and the buffer it wrote into",
        )
    if controllen == 0:
        return FragBatch.empty(), -1, []
    parsed = None
    if controllen % _REC == 0:
        parsed = _parse_dense(raw, controllen)
    if parsed is None:
        batch, _words, pos = _parse_walk(raw[:controllen])
        dmabuf_id = -1
        dense = None
    else:
        batch, dmabuf_id, dense = parsed
        pos = None
    if dense is not None:
        runs = _check_uniform(batch, dense, nbytes, dmabuf_size)
        if runs is not None:
            return batch, dmabuf_id, runs
    return batch, dmabuf_id, _check(batch, pos, raw, nbytes, dmabuf_size)


_U8 = np.dtype(np.uint8)
_U32 = np.dtype(np.uint32)
_U64 = np.dtype(np.uint64)
_BOOL = np.dtype(bool)
# the two fixed header words of an SCM_DEVMEM_DMABUF record (cmsg_len; level | type << 32), as a
# column: compared with the transposed (2, n) header view in one ufunc call
_DMABUF_HDR = np.array([[_REC_LEN], [_KEY_DMABUF]], dtype=np.uint64)
_ONE_U32 = np.uint32(1)


def _parse_dense(raw: np.ndarray, controllen: int) -> tuple[FragBatch, int, np.ndarray | None] | None:
    """Fast path: every record is a 40-byte devmem cmsg. None if not; else
    the batch, the common dma-buf id (-1: none) and, when every record is an
    SCM_DEVMEM_DMABUF one, the records as ``(n, 5)`` uint64 words.

    The records are copied once (one memcpy; the copy is aligned whatever
    ``raw`` was) and the batch's arrays are views of the copy. The common
    buffer (every record SCM_DEVMEM_DMABUF, one dma-buf id) costs five numpy
    calls besides the copy: the header words of all records checked in one
    comparison, the ids in another."""
    n = controllen // _REC
    rec = raw[:controllen].copy()
    words = rec.view(_U64).reshape(n, _WORDS)
    ok = np.empty((2, n), _BOOL)
    np.equal(words[:, :2].T, _DMABUF_HDR, out=ok)
    if np.count_nonzero(ok) == 2 * n:  # all SCM_DEVMEM_DMABUF, cmsg_len 40
        w32 = words.view(_U32)  # (n, 10): size, token, id are u32 columns 6, 7, 8
        ids = w32[:, 8]
        first = ids.item(0)
        same = ok[0]
        np.equal(ids, first, out=same)
        return (FragBatch(words[:, 2], w32[:, 6], w32[:, 7], ids),
                first if np.count_nonzero(same) == n else -1, words)
    if not (words[:, 0] == _REC_LEN).all():
        return None
    keys = words[:, 1]
    is_linear = keys == _KEY_LINEAR
    if not (ok[1] | is_linear).all():  # ok[1]: keys == _KEY_DMABUF
        return None
    return _split_linear(words, is_linear), -1, None


def _records_to_batch(words: np.ndarray) -> FragBatch:
    """The batch of ``words`` (``(n, 5)`` uint64, records the caller owns: a
    copy): views of it, no further copy."""
    w32 = words.view(_U32)  # (n, 10): offset is words[:, 2]; size, token, id are u32 columns 6, 7, 8
    return FragBatch(words[:, 2], w32[:, 6], w32[:, 7], w32[:, 8])


def _split_linear(words: np.ndarray, is_linear: np.ndarray) -> FragBatch:
    frag_words = words[~is_linear]
    batch = _records_to_batch(frag_words)
    lin_idx = np.flatnonzero(is_linear)
    linear_sizes = (words[lin_idx, 3] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    # number of dmabuf cmsgs before each linear cmsg = its index minus the linear ones before it
    batch.linear_at = lin_idx.astype(np.int64) - np.arange(lin_idx.shape[0], dtype=np.int64)
    batch.linear_sizes = linear_sizes
    batch.linear_bytes = int(linear_sizes.sum(dtype=np.uint64))
    return batch


def _parse_walk(raw: np.ndarray) -> tuple[FragBatch, np.ndarray, np.ndarray]:
    """Slow path: walk cmsg_len like CMSG_FIRSTHDR/CMSG_NXTHDR, then gather
    the records with one fancy-indexing step. Returns the batch, the records
    (``(m, 5)`` uint64) and their byte offsets in the buffer (int64)."""
    total = raw.shape[0]
    data = raw.tobytes()
    starts: list[int] = []
    pos = 0
    while pos + _HDR <= total:
        clen, level, ctype = struct.unpack_from("<Qii", data, pos)
        if clen < _HDR or clen > total - pos:
            raise ControlBufferError(
                f"malformed cmsg at byte offset {pos}: cmsg_len {clen} "
                f"(header {_HDR} bytes, {total - pos} bytes left)",
                "the control buffer is corrupt or was not written by recvmsg; "
                "pass the msg_controllen recvmsg returned",
                offset=pos,
            )
        if level != abi.SOL_SOCKET or ctype not in (abi.SCM_DEVMEM_DMABUF, abi.SCM_DEVMEM_LINEAR):
            raise ControlBufferError(
                f"unexpected cmsg at byte offset {pos}: level {level} type {ctype} "
                f"(expected SOL_SOCKET SCM_DEVMEM_DMABUF/SCM_DEVMEM_LINEAR)",
                "do not enable other control messages (timestamps, ...) on a devmem socket",
                offset=pos,
            )
        if clen != _REC_LEN:
            raise ControlBufferError(
                f"truncated devmem cmsg at byte offset {pos}: cmsg_len {clen}, expected {_REC_LEN}",
                "enlarge the control buffer: 40 bytes per fragment",
                offset=pos,
            )
        starts.append(pos)
        pos += abi.cmsg_align(clen)
    if pos < total:
        # trailing bytes shorter than a cmsghdr: __CMSG_NXTHDR would stop
        # there, but the kernel never writes them, so they mean a bad length.
        raise ControlBufferError(
            f"{total - pos} stray bytes at byte offset {pos} after the last cmsg",
            "pass the msg_controllen recvmsg returned",
            offset=pos,
        )
    idx = np.asarray(starts, dtype=np.int64)
    rec = np.frombuffer(data, np.uint8)[idx[:, None] + np.arange(_REC)].copy()
    words = rec.view(np.uint64).reshape(-1, _WORDS)
    is_linear = words[:, 1] == _KEY_LINEAR
    if not is_linear.any():
        return _records_to_batch(words), words, idx
    return _split_linear(words, is_linear), words, idx


# ---------------------------------------------------------------------------
# RX: the kernel's invariants, checked per batch
# ---------------------------------------------------------------------------
_MAX = np.maximum.reduce
_TOKEN_STEP = np.uint64(1 << 32)  # word 3 of the next record: same frag_size, frag_token + 1


def _check_uniform(batch: FragBatch, words: np.ndarray, nbytes: int | None,
                   dmabuf_size: int | None) -> list[int] | None:
    """The steady-state check, three numpy calls and a step per run: every
    fragment the same size (the last one may be shorter) and the tokens fewer
    than 32 runs of consecutive values. Word 3 of a record is ``frag_size | frag_token << 32``, so inside
    a run it grows by exactly 2**32 from record to record (mod 2**64: a token
    wrapping past 2**32 - 1 is caught by the range test on the runs); at each
    break the sizes are compared one by one. Returns the runs when the batch
    passes every check, ``None`` when the general check must decide (it also
    finds the reason of a failure)."""
    n = words.shape[0]
    col = words[:, 3]
    w0 = col.item(0)
    size0 = w0 & 0xFFFFFFFF
    if size0 == 0:
        return None
    # the last fragment may be shorter (recvmsg's len ends inside it): 0 < last <= size0
    wl = col.item(n - 1)
    last = wl & 0xFFFFFFFF
    if last == 0 or last > size0:
        return None
    if n == 1:
        runs = [w0 >> 32, 1]
    else:
        ne = col[1:] - col[:-1] != _TOKEN_STEP
        if last != size0:
            # judge the last step by its token alone: a short last fragment breaks the word-3 pattern
            ne[-1] = (wl >> 32) != (col.item(n - 2) >> 32) + 1
        k = np.count_nonzero(ne)  # cheaper than any()
        if not k:
            runs = [w0 >> 32, n]
        elif k >= _FEW_RUNS - 1:
            return None
        else:
            item = col.item
            runs = []
            a = 0
            for i in ne.nonzero()[0].tolist():
                if i + 1 < n - 1 and item(i + 1) & 0xFFFFFFFF != size0:
                    return None
                runs += (item(a) >> 32, i + 1 - a)
                a = i + 1
            runs += (item(a) >> 32, n - a)
    if not _runs_valid(runs):
        return None
    if nbytes is not None and size0 * (n - 1) + last != nbytes:
        return None
    if dmabuf_size is not None and int(_MAX(batch.offset)) + size0 > dmabuf_size:
        return None
    return runs


def _runs_valid(runs: list[int]) -> bool:
    """Runs ``[start, count, ...]`` of tokens the kernel can hand out at once:
    every token in 1 .. 2**31 - 1 and no token in two runs."""
    if len(runs) == 2:
        return runs[0] > 0 and runs[0] + runs[1] - 1 <= _TOKEN_MAX
    pairs = list(zip(runs[0::2], runs[1::2], strict=True))
    for attempt in (pairs, sorted(pairs)):  # ascending already (the common case), else sorted
        end = 0
        for s, c in attempt:
            if s < end or s == 0 or s + c - 1 > _TOKEN_MAX:
                break
            end = s + c
        else:
            return True
    return False


def _check(batch: FragBatch, pos: np.ndarray | None, raw: np.ndarray,
           nbytes: int | None, dmabuf_size: int | None) -> list[int] | None:
    """Check ``batch`` against what tcp_recvmsg_dmabuf guarantees; return its
    token runs (``None``: 32 runs or more).

    Tokens in a few runs (the kernel hands out the lowest free ids): one
    subtraction and one comparison over the tokens find the runs, and the
    runs (a step each) show the tokens in range and distinct; one reduction
    over the sizes finds an empty fragment, one more checks the sum against
    ``nbytes``, two the fragment ends against ``dmabuf_size``. Only a batch
    that fails (or has many runs) takes a slower, exact pass that names the
    first bad record. ``pos``: the records' byte offsets when the buffer was
    walked (``None``: dense, record ``i`` at ``40 * i``)."""
    t = batch.token
    n = t.shape[0]
    size = batch.size
    bad = None
    runs: list[int] | None = None
    if n:
        runs = _runs_if_valid(t)
        if runs is None and not _tokens_valid(t):
            bad = _first_bad_token(t)
        elif int(size.min()) == 0:
            bad = (int(np.flatnonzero(size == 0)[0]), "fragment of 0 bytes (frag_size 0)")
        elif dmabuf_size is not None and int(batch.offset.max()) + int(size.max()) > dmabuf_size:
            # the exact test, only where the cheap bound fails; offset + size in uint64 may
            # wrap past 2**64, so compare offset > dmabuf_size - size (which cannot)
            dsz = np.uint64(dmabuf_size)
            sz = size.astype(np.uint64)
            past = (sz > dsz) | (batch.offset > dsz - np.minimum(sz, dsz))
            if past.any():
                j = int(np.flatnonzero(past)[0])
                bad = (j, f"fragment [{int(batch.offset[j])}, {int(batch.offset[j]) + int(size[j])}) "
                          f"past the end of the {dmabuf_size}-byte dma-buf")
    lin = batch.linear_sizes
    if bad is None and lin.shape[0] and int(lin.min()) == 0:
        j = int(np.flatnonzero(lin == 0)[0])
        rec_i = int(batch.linear_at[j]) + j
        _raise(batch, pos, raw, rec_i, "SCM_DEVMEM_LINEAR piece of 0 bytes")
    if bad is not None:
        _raise(batch, pos, raw, _frag_record(batch, bad[0]), bad[1])
    if nbytes is not None and (n or lin.shape[0]):
        total = int(size.sum(dtype=np.uint64)) + batch.linear_bytes
        if total != nbytes:
            raise FragRecordError(
                f"fragment sizes add up to {total} bytes (linear {batch.linear_bytes}), "
                f"recvmsg returned {nbytes}", None, None, _givable(t))
    return runs


def _runs_if_valid(t: np.ndarray) -> list[int] | None:
    """The runs of ``t`` (stream order) when they are fewer than 32, every
    token is in 1 .. 2**31 - 1 and none repeats; ``None`` otherwise."""
    n = t.shape[0]
    first = t.item(0)
    if n == 1:
        return [first, 1] if 0 < first <= _TOKEN_MAX else None
    ne = (t[1:] - t[:-1]) != _ONE_U32  # uint32: a step down is a huge step up, a break too
    k = np.count_nonzero(ne)
    if not k:
        runs = [first, n]
    elif k >= _FEW_RUNS - 1:
        return None
    else:
        item = t.item
        runs = []
        a = 0
        for i in ne.nonzero()[0].tolist():
            runs += (item(a), i + 1 - a)
            a = i + 1
        runs += (item(a), n - a)
    return runs if _runs_valid(runs) else None


def _tokens_valid(t: np.ndarray) -> bool:
    """Every token in 1 .. 2**31 - 1 and none twice (the many-runs path: a sort)."""
    if np.count_nonzero((t - _ONE_U32) >= np.uint32(_TOKEN_MAX)):
        return False
    s = np.sort(t)
    return not np.count_nonzero(s[1:] == s[:-1])


def _first_bad_token(t: np.ndarray) -> tuple[int, str]:
    """(fragment index, reason) of the first token the kernel cannot have written."""
    out = np.flatnonzero((t - _ONE_U32) >= np.uint32(_TOKEN_MAX))
    first_out = int(out[0]) if out.shape[0] else t.shape[0]
    order = np.argsort(t, kind="stable")
    s = t[order]
    dup_at = order[1:][s[1:] == s[:-1]]  # the later copies, in sorted order
    first_dup = int(dup_at.min()) if dup_at.shape[0] else t.shape[0]
    if first_out <= first_dup:
        return first_out, (f"token {int(t[first_out])} outside 1..{_TOKEN_MAX} "
                           "(xa_alloc with XA_FLAGS_ALLOC1, xa_limit_31b)")
    return first_dup, f"token {int(t[first_dup])} given twice in one batch"


def _givable(t: np.ndarray) -> np.ndarray:
    """The distinct tokens of ``t`` the kernel may hold (in 1 .. 2**31 - 1)."""
    ok = t[(t - _ONE_U32) < np.uint32(_TOKEN_MAX)]
    return np.unique(ok).astype(np.uint32)


def _frag_record(batch: FragBatch, j: int) -> int:
    """Record index (linear cmsgs counted) of fragment ``j``."""
    at = batch.linear_at
    if not at.shape[0]:
        return j
    # fragment j follows the linear cmsgs with linear_at <= j
    return j + int(np.count_nonzero(at <= j))


def _raise(batch: FragBatch, pos: np.ndarray | None, raw: np.ndarray, rec_i: int, reason: str) -> None:
    offset = int(pos[rec_i]) if pos is not None else rec_i * _REC
    record = raw[offset: offset + _REC].tobytes()
    raise FragRecordError(reason, offset, record, _givable(batch.token))


# ---------------------------------------------------------------------------
# RX: encode (what tcp_recvmsg_dmabuf writes)
# ---------------------------------------------------------------------------
def encode_rx_control(
    out: memoryview | bytearray | np.ndarray,
    offsets: np.ndarray,
    sizes: np.ndarray,
    tokens: np.ndarray,
    dmabuf_id: int | np.ndarray,
    linear_size: int = 0,
) -> int:
    """Write devmem RX cmsgs into ``out`` exactly as the kernel does; return
    the control length written.

    When ``linear_size > 0`` an SCM_DEVMEM_LINEAR cmsg (only ``frag_size``
    set, the rest zero) comes first, then one SCM_DEVMEM_DMABUF cmsg per
    fragment (``offsets`` uint64, ``sizes`` / ``tokens`` uint32, shape
    ``(n,)``; ``dmabuf_id`` a scalar or an ``(n,)`` array). Bytes of ``out``
    past the returned length are left untouched.

    A short buffer mirrors ``put_cmsg_notrunc`` (net/core/scm.c, used by
    tcp_recvmsg_dmabuf since 6.14): cmsgs are never truncated and MSG_CTRUNC
    is never set; the kernel stops before the first cmsg that does not fit
    and returns the bytes of the fragments it did announce. So:

    * if not even the first cmsg fits, raise ``OSError(EFAULT)`` (recvmsg
      fails with EFAULT when it had copied nothing yet);
    * otherwise write as many whole cmsgs as fit and return their length;
      :func:`rx_cmsgs_written` tells the caller how many cmsgs (hence which
      fragments, the linear one first) were announced, and the caller must
      consume only those bytes from the stream.
    """
    # written in place: a view of ``out`` (a non-contiguous array raises ValueError from numpy)
    raw = out.reshape(-1).view(np.uint8) if isinstance(out, np.ndarray) else np.frombuffer(out, np.uint8)
    n = int(np.shape(tokens)[0])
    nlin = 1 if linear_size > 0 else 0
    room = raw.shape[0] // _REC
    if n + nlin == 0:
        return 0
    if room == 0:
        raise OSError(errno.EFAULT, "control buffer too small for one devmem cmsg (needs 40 bytes)")
    k_total = min(room, n + nlin)
    k = k_total - nlin  # dmabuf records written
    region = raw[: k_total * _REC]
    words = region.view(np.uint64).reshape(-1, _WORDS)  # unaligned views work too
    words[:, 0] = _REC_LEN
    if nlin:
        words[0, 1] = _KEY_LINEAR
        words[0, 2] = 0
        words[0, 3] = np.uint64(linear_size & 0xFFFFFFFF)
        words[0, 4] = 0
    if k > 0:
        body = words[nlin:]
        body[:, 1] = _KEY_DMABUF
        body[:, 2] = np.asarray(offsets[:k], dtype=np.uint64)
        body[:, 3] = np.asarray(sizes[:k], dtype=np.uint64) | (
            np.asarray(tokens[:k], dtype=np.uint64) << np.uint64(32)
        )
        ids = np.asarray(dmabuf_id, dtype=np.uint64)
        body[:, 4] = ids if ids.ndim == 0 else ids[:k]
    return k_total * _REC


