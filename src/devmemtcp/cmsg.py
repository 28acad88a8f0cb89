"""Sans-I/O codec for the devmem socket control messages.

Pure functions of bytes, no sockets: they parse and build exactly the bytes
the kernel reads and writes, so the Receiver, the emulated NIC and the
benchmarks all run the same code.

* RX: ``tcp_recvmsg_dmabuf`` (net/ipv4/tcp.c) writes one cmsg per fragment:
  a 16-byte ``cmsghdr`` (level ``SOL_SOCKET``, type ``SCM_DEVMEM_DMABUF`` or
  ``SCM_DEVMEM_LINEAR``) followed by a 24-byte ``struct dmabuf_cmsg``;
  ``CMSG_SPACE(24) == CMSG_LEN(24) == 40`` so the buffer is a dense array of
  40-byte records. :func:`parse_rx_control` turns it into a :class:`FragBatch`
  of numpy arrays with no Python object per fragment.
* Token release: :func:`coalesce_tokens` merges token numbers into
  ``struct dmabuf_token`` ranges and :func:`dontneed_chunks` splits them so
  every ``SO_DEVMEM_DONTNEED`` call stays within the kernel's limits
  (``sock_devmem_dontneed`` in net/core/sock.c: 128 ranges, 1024 frags).
* TX: :func:`build_tx_cmsg` / :func:`parse_tx_cmsg` (``__sock_cmsg_send``,
  net/core/sock.c) and the MSG_ZEROCOPY completion records read from the
  error queue (:func:`encode_zerocopy_completion`,
  :func:`parse_zerocopy_completions`; net/core/skbuff.c
  ``__msg_zerocopy_callback``, net/ipv4/ip_sockglue.c ``ip_recv_error``).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass, field

import numpy as np

from devmemtcp import abi
from devmemtcp.errors import DevmemError

__all__ = [
    "ControlBufferError",
    "FragBatch",
    "build_tx_cmsg",
    "chunk_sorted_tokens",
    "coalesce_sorted",
    "coalesce_tokens",
    "dedupe_sorted",
    "dontneed_chunks",
    "drop_tokens",
    "encode_rx_control",
    "encode_zerocopy_completion",
    "merge_runs",
    "parse_rx_control",
    "parse_rx_uniform",
    "parse_tx_cmsg",
    "parse_zerocopy_completions",
    "plan_dontneed",
    "plan_runs",
    "rx_cmsgs_written",
    "rx_control_space",
    "token_runs",
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


class ControlBufferError(DevmemError):
    """A control buffer the codec cannot accept.

    ``offset`` is the byte offset of the offending cmsg in the control buffer
    (``None`` when the whole buffer is at fault, e.g. MSG_CTRUNC).
    """

    def __init__(self, message: str, hint: str | None = None, offset: int | None = None) -> None:
        super().__init__(message, hint)
        self.offset = offset


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
        return int(self.size.sum(dtype=np.uint64))

    @classmethod
    def empty(cls) -> FragBatch:
        """A batch with no fragments."""
        return cls(_EMPTY_U64, _EMPTY_U32, _EMPTY_U32, _EMPTY_U32)


def _as_u8(buf: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(buf, np.ndarray):
        if buf.dtype != np.uint8 or buf.ndim != 1:
            buf = buf.reshape(-1).view(np.uint8)
        return buf
    return np.frombuffer(buf, dtype=np.uint8)


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
def parse_rx_control(
    control: bytes | bytearray | memoryview | np.ndarray, controllen: int, msg_flags: int = 0
) -> FragBatch:
    """Parse a devmem RX control buffer into a :class:`FragBatch`.

    ``control`` holds at least ``controllen`` bytes (the ``msg_controllen``
    recvmsg returned) in the kernel's layout. When every cmsg is a 40-byte
    devmem record (always the case for what ``tcp_recvmsg_dmabuf`` writes) the
    buffer is copied once and parsed as strided numpy views of the copy with
    no Python loop; otherwise the cmsgs are walked by ``cmsg_len``
    (``__CMSG_NXTHDR`` rules).

    Raises :class:`ControlBufferError` when ``msg_flags`` has MSG_CTRUNC (the
    control buffer was too small), when a cmsg is malformed (``cmsg_len``
    below the header size, past the end, or not CMSG_LEN(24) for a devmem
    cmsg), or when a cmsg has a level/type other than SOL_SOCKET
    SCM_DEVMEM_DMABUF / SCM_DEVMEM_LINEAR; the error names the byte offset.
    """
    return parse_rx_uniform(control, controllen, msg_flags)[0]


def parse_rx_uniform(
    control: bytes | bytearray | memoryview | np.ndarray, controllen: int, msg_flags: int = 0
) -> tuple[FragBatch, int]:
    """:func:`parse_rx_control`, also telling whether every fragment has the
    same ``dmabuf_id``: returns ``(batch, dmabuf_id)`` where ``dmabuf_id`` is
    that id when the buffer is the common one (only SCM_DEVMEM_DMABUF cmsgs,
    all of one binding) and ``-1`` otherwise (linear cmsgs, several
    bindings, no fragment), in which case ``batch.dmabuf_id`` says which.

    The Receiver uses it to check the binding with one comparison per batch
    instead of one per fragment. Same errors as :func:`parse_rx_control`.
    """
    if msg_flags & abi.MSG_CTRUNC:
        raise ControlBufferError(
            f"control data truncated (MSG_CTRUNC set, controllen {controllen})",
            "enlarge the control buffer: it needs 40 bytes per fragment "
            "(CMSG_SPACE(sizeof(struct dmabuf_cmsg)))",
        )
    raw = control if type(control) is np.ndarray and control.dtype == _U8 else _as_u8(control)
    if controllen < 0 or controllen > raw.shape[0]:
        raise ControlBufferError(
            f"controllen {controllen} exceeds the control buffer ({raw.shape[0]} bytes)",
            "pass the msg_controllen recvmsg returned and the buffer it wrote into",
        )
    if controllen == 0:
        return FragBatch.empty(), -1
    if controllen % _REC == 0:
        parsed = _parse_dense(raw, controllen)
        if parsed is not None:
            return parsed
    return _parse_walk(raw[:controllen]), -1


_U8 = np.dtype(np.uint8)
_U32 = np.dtype(np.uint32)
_U64 = np.dtype(np.uint64)
_BOOL = np.dtype(bool)
# the two fixed header words of an SCM_DEVMEM_DMABUF record (cmsg_len; level | type << 32), as a
# column: compared with the transposed (2, n) header view in one ufunc call
_DMABUF_HDR = np.array([[_REC_LEN], [_KEY_DMABUF]], dtype=np.uint64)


def _parse_dense(raw: np.ndarray, controllen: int) -> tuple[FragBatch, int] | None:
    """Fast path: every record is a 40-byte devmem cmsg. None if not.

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
                first if np.count_nonzero(same) == n else -1)
    if not (words[:, 0] == _REC_LEN).all():
        return None
    keys = words[:, 1]
    is_linear = keys == _KEY_LINEAR
    if not (ok[1] | is_linear).all():  # ok[1]: keys == _KEY_DMABUF
        return None
    return _split_linear(words, is_linear), -1


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


def _parse_walk(raw: np.ndarray) -> FragBatch:
    """Slow path: walk cmsg_len like CMSG_FIRSTHDR/CMSG_NXTHDR, then gather
    the records with one fancy-indexing step."""
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
        return _records_to_batch(words)
    return _split_linear(words, is_linear)


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
    raw = _as_u8(out)
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


# ---------------------------------------------------------------------------
# Token release
# ---------------------------------------------------------------------------
def coalesce_tokens(tokens: np.ndarray) -> np.ndarray:
    """Sort ``tokens`` (uint32, shape ``(n,)``) and merge runs of consecutive
    values into ``struct dmabuf_token`` ranges.

    Returns an array of ``abi.DMABUF_TOKEN_DTYPE`` (token_start, token_count),
    ascending, covering each distinct input token exactly once (duplicates are
    dropped: the kernel would skip a token already given back).
    """
    return coalesce_sorted(np.sort(np.asarray(tokens, dtype=np.uint32), kind="stable"))


def coalesce_sorted(t: np.ndarray) -> np.ndarray:
    """:func:`coalesce_tokens` for tokens already sorted ascending (uint32)."""
    n = t.shape[0]
    if n == 0:
        return np.empty(0, abi.DMABUF_TOKEN_DTYPE)
    if n > 1:
        d = np.diff(t)
        ones = d == 1
        if ones.all():  # one contiguous run: the common case
            out = np.empty((1, 2), np.uint32)
            out[0, 0] = t[0]
            out[0, 1] = n
            return out.view(abi.DMABUF_TOKEN_DTYPE).reshape(1)
        if not d.all():  # duplicates: keep the first of each run of equal tokens
            keep = np.empty(n, bool)
            keep[0] = True
            np.not_equal(d, 0, out=keep[1:])
            return coalesce_sorted(t[keep])
        brk = np.flatnonzero(~ones)
    else:
        brk = np.empty(0, np.int64)
    m = brk.shape[0] + 1
    out = np.empty((m, 2), np.uint32)
    out[0, 0] = t[0]
    out[1:, 0] = t[brk + 1]
    # run lengths: distance between consecutive run starts (index space)
    bounds = np.empty(m + 1, np.int64)
    bounds[0] = 0
    bounds[1:-1] = brk + 1
    bounds[-1] = n
    out[:, 1] = np.diff(bounds)
    return out.view(abi.DMABUF_TOKEN_DTYPE).reshape(m)


def dontneed_chunks(
    ranges: np.ndarray,
    max_tokens: int = abi.MAX_DONTNEED_TOKENS,
    max_frags: int = abi.MAX_DONTNEED_FRAGS,
) -> list[np.ndarray]:
    """Split ``dmabuf_token`` ranges into SO_DEVMEM_DONTNEED-sized arrays.

    Each returned array (``abi.DMABUF_TOKEN_DTYPE``) holds at most
    ``max_tokens`` ranges (128: larger optlen is EINVAL) and at most
    ``max_frags`` frags (1024: ``sock_devmem_dontneed`` silently stops after
    that many). A range crossing a ``max_frags`` boundary is cut in two, so
    every chunk but the last carries exactly ``max_frags`` frags unless the
    range limit cuts it first. Loops run once per chunk, never per frag.
    """
    r = np.asarray(ranges, dtype=abi.DMABUF_TOKEN_DTYPE)
    if r.shape[0] == 0:
        return []
    counts = r["token_count"].astype(np.int64)
    keep = counts > 0
    if not keep.all():
        r, counts = r[keep], counts[keep]
        if r.shape[0] == 0:
            return []
    cum_end = np.cumsum(counts)
    total = int(cum_end[-1])
    if total <= max_frags and r.shape[0] <= max_tokens:
        return [r.copy()]
    # Greedy: each chunk takes as many whole ranges as both limits allow, then
    # fills the remaining frag room with the head of the next range.
    # searchsorted finds each chunk's end, so the loop runs once per chunk.
    m = r.shape[0]
    starts = r["token_start"]
    chunks: list[np.ndarray] = []
    i, used = 0, 0  # current range, frags of it already given out
    while i < m:
        base = int(cum_end[i] - counts[i]) + used
        limit = base + max_frags
        j = min(int(np.searchsorted(cum_end, limit, side="right")), i + max_tokens, m)
        if j == i:  # range i alone fills the chunk
            chunk = np.empty(1, abi.DMABUF_TOKEN_DTYPE)
            chunk[0] = (int(starts[i]) + used, max_frags)
            chunks.append(chunk)
            used += max_frags
            if used == counts[i]:
                i, used = i + 1, 0
            continue
        room = limit - int(cum_end[j - 1])
        tail = 1 if (j < m and room > 0 and j - i < max_tokens) else 0
        chunk = np.empty(j - i + tail, abi.DMABUF_TOKEN_DTYPE)
        chunk[: j - i] = r[i:j]
        if used:
            chunk[0] = (int(starts[i]) + used, int(counts[i]) - used)
        if tail:
            chunk[-1] = (int(starts[j]), room)
        chunks.append(chunk)
        i, used = j, (room if tail else 0)
        if tail and used == counts[i]:
            i, used = i + 1, 0
    return chunks


def dedupe_sorted(t: np.ndarray) -> np.ndarray:
    """Drop repeated values from an ascending array (vectorised, no sort)."""
    if t.shape[0] < 2:
        return t
    d = t[1:] - t[:-1]
    if d.all():
        return t
    keep = np.empty(t.shape[0], bool)
    keep[0] = True
    np.not_equal(d, 0, out=keep[1:])
    return t[keep]


def chunk_sorted_tokens(
    t: np.ndarray,
    max_tokens: int = abi.MAX_DONTNEED_TOKENS,
    max_frags: int = abi.MAX_DONTNEED_FRAGS,
    full_only: bool = False,
    breaks: np.ndarray | None = None,
) -> tuple[list[np.ndarray], list[int]]:
    """Plan SO_DEVMEM_DONTNEED calls for ascending, distinct tokens ``t``.

    The fused form of ``dontneed_chunks(coalesce_sorted(t))`` that the
    Receiver uses: the same greedy chunks (each at most ``max_frags`` frags
    and ``max_tokens`` ranges, full in one of them except the last), computed
    in index space: a chunk is ``t[a:b]``, and a run of consecutive tokens is
    recognised from ``t[b-1] - t[a] == b - a - 1`` without building ranges.
    With ``full_only`` a last chunk that is full in neither dimension is not
    planned (the Receiver keeps those tokens for its next call).
    Returns ``(chunks, ends)``: the ``DMABUF_TOKEN_DTYPE`` arrays and, for
    each, the index in ``t`` where it ends (so ``t[ends[i]:]`` is what is
    left after the first ``i + 1`` calls). ``breaks``, if given, must be
    ``np.flatnonzero(np.diff(t) != 1)`` (a caller that has it saves a pass).
    """
    n = t.shape[0]
    chunks: list[np.ndarray] = []
    ends: list[int] = []
    brk = breaks  # break positions i: t[i + 1] != t[i] + 1 (computed when first needed)
    a = 0
    while a < n:
        b = min(a + max_frags, n)
        first = int(t[a])
        if int(t[b - 1]) - first == b - a - 1:  # one contiguous run
            if full_only and b - a < max_frags and max_tokens > 1:
                break
            chunks.append(np.frombuffer(bytearray(_PACK_RANGE(first, b - a)), abi.DMABUF_TOKEN_DTYPE))
            ends.append(b)
            a = b
            continue
        if brk is None:
            brk = np.flatnonzero((t[1:] - t[:-1]) != 1)
        lo = int(brk.searchsorted(a))
        hi = int(brk.searchsorted(b - 1))  # breaks i with a <= i < b - 1
        if hi - lo + 1 > max_tokens:
            hi = lo + max_tokens - 1
            b = int(brk[hi]) + 1
        elif full_only and b - a < max_frags and hi - lo + 1 < max_tokens:
            break
        cut = brk[lo:hi] + 1
        m = cut.shape[0] + 1
        idx = np.empty(m + 1, np.int64)
        idx[0] = a
        idx[1:m] = cut
        idx[m] = b
        out = np.empty((m, 2), np.uint32)
        out[:, 0] = t[idx[:-1]]
        out[:, 1] = idx[1:] - idx[:-1]
        chunks.append(out.view(abi.DMABUF_TOKEN_DTYPE).reshape(-1))
        ends.append(b)
        a = b
    return chunks, ends


_PACK_RANGE = struct.Struct("<II").pack
_TOKEN_DTYPE = abi.DMABUF_TOKEN_DTYPE
_ONE_U32 = np.uint32(1)
#: at most this many runs of consecutive tokens are planned in plain Python (a
#: loop per run, never per token); more go through the vectorised plan
_FEW_RUNS = 32


def plan_dontneed(
    t: np.ndarray,
    full_only: bool = False,
    max_tokens: int = abi.MAX_DONTNEED_TOKENS,
    max_frags: int = abi.MAX_DONTNEED_FRAGS,
) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """Plan SO_DEVMEM_DONTNEED calls for ascending tokens ``t`` (uint32,
    duplicates allowed): the Receiver's whole plan in as few numpy calls as
    possible.

    Returns ``(toks, chunks, ends)``: ``toks`` is ``t`` without duplicates
    (``t`` itself when it has none), and ``(chunks, ends)`` is exactly
    ``chunk_sorted_tokens(toks, max_tokens, max_frags, full_only)``.
    Duplicates and run breaks are found in one pass (a subtraction); when the
    tokens form at most ``_FEW_RUNS`` runs of consecutive values (the steady
    state of a flow: the kernel hands out the lowest free ids) the chunks are
    cut from the runs in Python, one step per run, otherwise by the
    vectorised :func:`chunk_sorted_tokens`.
    """
    n = t.shape[0]
    if n < 2:
        return t, *chunk_sorted_tokens(t, max_tokens, max_frags, full_only)
    d = t[1:] - t[:-1]  # sorted: no wraparound; 0 marks a duplicate, > 1 a gap
    if np.count_nonzero(d) != n - 1:
        t = dedupe_sorted(t)
        return t, *chunk_sorted_tokens(t, max_tokens, max_frags, full_only)
    first = int(t[0])
    if int(t[n - 1]) - first == n - 1:  # distinct and spanning n values: one run
        return t, *plan_runs([first], [n], full_only, max_tokens, max_frags)
    brk = (d != _ONE_U32).nonzero()[0]
    if brk.shape[0] >= _FEW_RUNS:
        return t, *chunk_sorted_tokens(t, max_tokens, max_frags, full_only, breaks=brk)
    cut = brk + 1
    bounds = cut.tolist()
    starts = [first, *t[cut].tolist()]
    counts = [b - a for a, b in zip([0, *bounds], [*bounds, n], strict=True)]
    return t, *plan_runs(starts, counts, full_only, max_tokens, max_frags)


def plan_runs(
    starts: list[int],
    counts: list[int],
    full_only: bool = False,
    max_tokens: int = abi.MAX_DONTNEED_TOKENS,
    max_frags: int = abi.MAX_DONTNEED_FRAGS,
) -> tuple[list[np.ndarray], list[int]]:
    """:func:`chunk_sorted_tokens` for tokens given as ascending, disjoint,
    non-adjacent runs ``starts[i] .. starts[i] + counts[i] - 1``: the same
    greedy chunks (a chunk closes at ``max_frags`` frags, cutting a run, or at
    ``max_tokens`` ranges), in a loop over runs and chunks, never over tokens;
    ``ends`` count the tokens planned up to the end of each chunk."""
    chunks: list[np.ndarray] = []
    ends: list[int] = []
    if len(starts) == 1 and max_tokens > 1:  # one run: whole max_frags pieces of it, then the tail
        s, c = starts[0], counts[0]
        for done in range(max_frags, c + 1, max_frags):
            chunks.append(np.frombuffer(bytearray(_PACK_RANGE(s + done - max_frags, max_frags)),
                                        _TOKEN_DTYPE))
            ends.append(done)
        tail = c % max_frags
        if tail and not full_only:
            chunks.append(np.frombuffer(bytearray(_PACK_RANGE(s + c - tail, tail)), _TOKEN_DTYPE))
            ends.append(c)
        return chunks, ends
    flat: list[int] = []  # the open chunk, token_start/token_count pairs
    room = max_frags
    done = 0  # tokens planned in closed chunks
    for s, c in zip(starts, counts, strict=True):
        while c:
            take = c if c < room else room
            flat += (s, take)
            s += take
            c -= take
            room -= take
            if room == 0 or len(flat) == 2 * max_tokens:
                done += max_frags - room
                chunks.append(np.frombuffer(bytearray(
                    _PACK_RANGE(*flat) if len(flat) == 2 else struct.pack(f"<{len(flat)}I", *flat)
                ), _TOKEN_DTYPE))
                ends.append(done)
                flat = []
                room = max_frags
    if flat and not full_only:
        done += max_frags - room
        chunks.append(np.frombuffer(bytearray(
            _PACK_RANGE(*flat) if len(flat) == 2 else struct.pack(f"<{len(flat)}I", *flat)
        ), _TOKEN_DTYPE))
        ends.append(done)
    return chunks, ends


# ---------------------------------------------------------------------------
# TX cmsg (net/core/sock.c __sock_cmsg_send)
# ---------------------------------------------------------------------------
_TX_LEN = abi.cmsg_len(abi.TX_CMSG_PAYLOAD_SIZE)  # CMSG_LEN(4) == 20
_TX_SPACE = abi.cmsg_space(abi.TX_CMSG_PAYLOAD_SIZE)  # 24


def build_tx_cmsg(binding_id: int) -> bytes:
    """The SCM_DEVMEM_DMABUF cmsg for a devmem sendmsg: level SOL_SOCKET,
    ``cmsg_len == CMSG_LEN(4)``, payload the bare u32 binding id, padded to
    CMSG_SPACE(4) (24 bytes). Raises ValueError if the id does not fit u32."""
    if not 0 <= binding_id <= 0xFFFFFFFF:
        raise ValueError(f"binding id {binding_id} does not fit in u32")
    return struct.pack("<QiiI4x", _TX_LEN, abi.SOL_SOCKET, abi.SCM_DEVMEM_DMABUF, binding_id)


# SOL_SOCKET cmsgs __sock_cmsg_send accepts and the payload size it demands
# (None: accepted without a length check).
_TX_SOL_SOCKET_LEN: dict[int, int | None] = {
    abi.SO_MARK: 4,
    abi.SO_TIMESTAMPING_OLD: 4,
    abi.SCM_TXTIME: 8,
    abi.SCM_TS_OPT_ID: 4,
    abi.SCM_RIGHTS: None,
    abi.SCM_CREDENTIALS: None,
    abi.SO_PRIORITY: 4,
    abi.SCM_DEVMEM_DMABUF: 4,
}


def _einval(msg: str) -> OSError:
    return OSError(errno.EINVAL, f"{os.strerror(errno.EINVAL)}: {msg}")


def parse_tx_cmsg(control: bytes | bytearray | memoryview) -> int:
    """Return the devmem binding id a sendmsg control buffer selects (0: none).

    Walks the cmsgs as ``sock_cmsg_send`` does (``CMSG_OK`` on each,
    non-SOL_SOCKET cmsgs skipped) and applies ``__sock_cmsg_send``'s checks.
    Raises ``OSError(EINVAL)`` exactly where the kernel returns -EINVAL: a
    cmsg_len below the header or past the buffer, an SCM_DEVMEM_DMABUF (or
    other u32/u64 option) whose cmsg_len is not CMSG_LEN(payload), or an
    unknown SOL_SOCKET type. Permission checks (SO_MARK, SO_PRIORITY: EPERM)
    and timestamping flag checks depend on the socket and are not modelled.
    The last SCM_DEVMEM_DMABUF wins, as in the kernel.
    """
    data = bytes(control)
    total = len(data)
    pos = 0
    dmabuf_id = 0
    while total - pos >= _HDR:  # CMSG_FIRSTHDR / __CMSG_NXTHDR
        clen, level, ctype = struct.unpack_from("<Qii", data, pos)
        if clen < _HDR or clen > total - pos:  # CMSG_OK
            raise _einval(f"cmsg at byte offset {pos} has cmsg_len {clen}")
        if level == abi.SOL_SOCKET:
            if ctype not in _TX_SOL_SOCKET_LEN:
                raise _einval(f"unknown SOL_SOCKET cmsg type {ctype} at byte offset {pos}")
            need = _TX_SOL_SOCKET_LEN[ctype]
            if need is not None and clen != abi.cmsg_len(need):
                raise _einval(
                    f"cmsg type {ctype} at byte offset {pos}: cmsg_len {clen}, "
                    f"expected CMSG_LEN({need}) = {abi.cmsg_len(need)}"
                )
            if ctype == abi.SCM_DEVMEM_DMABUF:
                (dmabuf_id,) = struct.unpack_from("<I", data, pos + _HDR)
        pos += abi.cmsg_align(clen)
    return dmabuf_id


# ---------------------------------------------------------------------------
# MSG_ZEROCOPY completions (error queue)
# ---------------------------------------------------------------------------
def _recverr_layout(family: int) -> tuple[int, int, int]:
    if family == socket.AF_INET:
        return abi.SOL_IP, abi.IP_RECVERR, abi.SOCKADDR_IN_SIZE
    if family == socket.AF_INET6:
        return abi.SOL_IPV6, abi.IPV6_RECVERR, abi.SOCKADDR_IN6_SIZE
    raise ValueError(f"unsupported address family {family}")


def encode_zerocopy_completion(lo: int, hi: int, copied: bool = False, family: int = socket.AF_INET) -> bytes:
    """One MSG_ZEROCOPY completion cmsg as ``recvmsg(MSG_ERRQUEUE)`` returns it.

    Level/type SOL_IP/IP_RECVERR (AF_INET) or SOL_IPV6/IPV6_RECVERR
    (AF_INET6); payload a ``sock_extended_err`` (ee_errno 0, ee_origin
    SO_EE_ORIGIN_ZEROCOPY, ee_code SO_EE_CODE_ZEROCOPY_COPIED if ``copied``,
    ee_info = ``lo``, ee_data = ``hi``: sendmsg sequence numbers ``lo..hi``
    inclusive, u32) followed by a zeroed offender address; padded to
    CMSG_SPACE.
    """
    level, ctype, addr = _recverr_layout(family)
    ee = np.zeros(1, abi.SOCK_EXTENDED_ERR_DTYPE)
    ee["ee_origin"] = abi.SO_EE_ORIGIN_ZEROCOPY
    ee["ee_code"] = abi.SO_EE_CODE_ZEROCOPY_COPIED if copied else 0
    ee["ee_info"] = lo & 0xFFFFFFFF
    ee["ee_data"] = hi & 0xFFFFFFFF
    payload = ee.tobytes() + bytes(addr)
    clen = abi.cmsg_len(len(payload))
    pad = abi.cmsg_space(len(payload)) - clen
    return struct.pack("<Qii", clen, level, ctype) + payload + bytes(pad)


def parse_zerocopy_completions(
    control: bytes | bytearray | memoryview | np.ndarray, controllen: int
) -> list[tuple[int, int]]:
    """Completed sendmsg sequence ranges ``(lo, hi)`` (inclusive, u32; ``hi``
    may be below ``lo`` after 32-bit wraparound) found in an error-queue
    control buffer. Other cmsgs and non-zerocopy errors are skipped.

    Raises :class:`ControlBufferError` for a malformed cmsg_len (naming the
    byte offset)."""
    data = _as_u8(control)[:controllen].tobytes()
    total = len(data)
    pos = 0
    out: list[tuple[int, int]] = []
    ee_size = abi.SOCK_EXTENDED_ERR_DTYPE.itemsize
    while total - pos >= _HDR:
        clen, level, ctype = struct.unpack_from("<Qii", data, pos)
        if clen < _HDR or clen > total - pos:
            raise ControlBufferError(
                f"malformed error-queue cmsg at byte offset {pos}: cmsg_len {clen}",
                "pass the msg_controllen recvmsg(MSG_ERRQUEUE) returned",
                offset=pos,
            )
        if (level, ctype) in ((abi.SOL_IP, abi.IP_RECVERR), (abi.SOL_IPV6, abi.IPV6_RECVERR)) and (
            clen >= _HDR + ee_size
        ):
            ee = np.frombuffer(data, abi.SOCK_EXTENDED_ERR_DTYPE, count=1, offset=pos + _HDR)[0]
            if int(ee["ee_origin"]) == abi.SO_EE_ORIGIN_ZEROCOPY and int(ee["ee_errno"]) == 0:
                out.append((int(ee["ee_info"]), int(ee["ee_data"])))
        pos += abi.cmsg_align(clen)
    return out


# ---------------------------------------------------------------------------
# Token runs: the Receiver's queue when it is a few runs of consecutive tokens
# ---------------------------------------------------------------------------
_U32_MAX = 0xFFFFFFFF


def token_runs(t: np.ndarray, limit: int = _FEW_RUNS) -> list[int] | None:
    """The runs of consecutive values in ``t`` (uint32, any order, any
    strides), in the order they come: ``[start0, count0, start1, count1, ...]``,
    or None when there are ``limit`` runs or more (or a run would wrap past
    2**32 - 1). Three numpy calls (one subtraction finds every break) and a
    step per run."""
    n = t.shape[0]
    if n < 2:
        return [int(t[0]), 1] if n else []
    brk = ((t[1:] - t[:-1]) != _ONE_U32).nonzero()[0].tolist()  # uint32: a step down breaks too
    if len(brk) >= limit - 1:
        return None
    item = t.item
    s = item(0)
    out: list[int] = []
    a = 0  # index where the open run starts
    for i in brk:
        out += (s, i + 1 - a)
        if s + i - a > _U32_MAX:  # 0xFFFFFFFF then 0: consecutive only mod 2**32
            return None
        a = i + 1
        s = item(a)
    if s + n - 1 - a > _U32_MAX:
        return None
    out += (s, n - a)
    return out


def merge_runs(a: list[int], b: list[int], limit: int = _FEW_RUNS) -> list[int] | None:
    """The union of two sets of token runs (flat ``[start, count, ...]`` lists
    as :func:`token_runs` returns), as ascending, disjoint, non-adjacent runs;
    None when that is ``limit`` runs or more. A token in both is kept once."""
    runs = a + b
    if len(runs) <= 2:
        return runs
    pairs = sorted(zip(runs[0::2], runs[1::2], strict=True))
    out: list[int] = []
    cur, end = pairs[0]
    end += cur  # exclusive end of the open run
    for s, c in pairs:
        if s <= end:  # overlaps or touches the open run (the first pair: itself)
            c += s
            if c > end:
                end = c
        else:
            out += (cur, end - cur)
            cur = s
            end = s + c
    out += (cur, end - cur)
    return out if len(out) < 2 * limit else None


def drop_tokens(runs: list[int], k: int) -> list[int]:
    """``runs`` (ascending ``[start, count, ...]``) without their first ``k``
    tokens."""
    i = 0
    while k:
        c = runs[i + 1]
        if c > k:
            return [runs[i] + k, c - k, *runs[i + 2:]]
        k -= c
        i += 2
    return runs[i:]
