"""The codec's fast paths against its general paths and an independent reference.

* :func:`devmemtcp.codec.parse_rx_uniform` / :func:`parse_rx_control` (one copy
  and views, the uniform-id check) against a field-by-field ``struct`` parser
  of the same bytes, on random buffers: dmabuf and linear records, several
  dma-buf ids, corrupted headers, odd lengths.
* :func:`devmemtcp.codec.plan_dontneed` (one subtraction, runs planned in
  Python) against ``chunk_sorted_tokens(dedupe_sorted(t))``, on random sorted
  tokens made of few runs (the Python path) and of many (the vectorised path),
  with duplicates.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmemtcp import abi
from devmemtcp.codec import ControlBufferError, parse_rx_control, parse_rx_uniform, plan_dontneed
from devmemtcp.codec import tokens as cmsg_mod
from unit.codec import oracles

DMABUF, LINEAR = abi.SCM_DEVMEM_DMABUF, abi.SCM_DEVMEM_LINEAR


def record(ctype: int, off: int, size: int, token: int, dmabuf_id: int, flags: int = 0,
           clen: int = 40, level: int = abi.SOL_SOCKET) -> bytes:
    return struct.pack("<QiiQIIII", clen, level, ctype, off, size, token, dmabuf_id, flags)


def reference_parse(ctl: bytes) -> tuple[dict[str, list[int]], int] | None:
    """What the kernel's bytes mean, record by record; None where the codec must
    refuse the buffer (ControlBufferError)."""
    if len(ctl) % 40:
        return None
    out: dict[str, list[int]] = {"offset": [], "size": [], "token": [], "dmabuf_id": [],
                                 "linear_sizes": [], "linear_at": []}
    kinds = []
    for pos in range(0, len(ctl), 40):
        clen, level, ctype, off, size, token, did, _flags = struct.unpack_from("<QiiQIIII", ctl, pos)
        if clen != 40 or level != abi.SOL_SOCKET or ctype not in (DMABUF, LINEAR):
            return None
        kinds.append(ctype)
        if ctype == LINEAR:
            out["linear_sizes"].append(size)
            out["linear_at"].append(len(out["token"]))
        else:
            out["offset"].append(off)
            out["size"].append(size)
            out["token"].append(token)
            out["dmabuf_id"].append(did)
    # the kernel's invariants: tokens in 1 .. 2**31 - 1, distinct; no empty fragment or linear piece
    toks = out["token"]
    if any(not 0 < t < 2**31 for t in toks) or len(set(toks)) != len(toks):
        return None
    if 0 in out["size"] or 0 in out["linear_sizes"]:
        return None
    ids = set(out["dmabuf_id"])
    uniform = ids.pop() if kinds and all(k == DMABUF for k in kinds) and len(ids) == 1 else -1
    return out, uniform


@st.composite
def control_buffers(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(0, 60))
    ids = draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3))
    recs = []
    for _ in range(n):
        kind = draw(st.sampled_from([DMABUF] * 8 + [LINEAR]))
        recs.append(record(kind, draw(st.integers(0, 2**64 - 1)), draw(st.integers(1, 2**32 - 1)),
                           draw(st.integers(1, 2**31 - 1)), draw(st.sampled_from(ids)),
                           flags=draw(st.sampled_from([0, 0, 0, 1]))))
    ctl = bytearray(b"".join(recs))
    corrupt = draw(st.sampled_from(["none"] * 6 + ["byte", "clen", "level", "type", "trim",
                                                   "size0", "token", "dup"]))
    if n and corrupt != "none":
        i = draw(st.integers(0, n - 1)) * 40
        if corrupt == "byte":  # any byte of any header word
            j = i + draw(st.integers(0, 15))
            ctl[j] ^= draw(st.integers(1, 255))
        elif corrupt == "clen":
            struct.pack_into("<Q", ctl, i, draw(st.sampled_from([0, 16, 39, 41, 48, 2**32 + 40])))
        elif corrupt == "level":
            struct.pack_into("<i", ctl, i + 8, draw(st.sampled_from([0, 6, 41, -1])))
        elif corrupt == "type":
            struct.pack_into("<i", ctl, i + 12, draw(st.sampled_from([0, 77, 80, 2**31 - 1])))
        elif corrupt == "size0":
            struct.pack_into("<I", ctl, i + 24, 0)
        elif corrupt == "token":
            struct.pack_into("<I", ctl, i + 28, draw(st.sampled_from([0, 2**31, 2**32 - 1])))
        elif corrupt == "dup":
            j = draw(st.integers(0, n - 1)) * 40
            ctl[i + 28:i + 32] = ctl[j + 28:j + 32]
        else:
            del ctl[-draw(st.integers(1, 39)):]
    return bytes(ctl)


@settings(max_examples=400, deadline=None)
@given(control_buffers(), st.integers(0, 7))
def test_parse_matches_a_field_by_field_reference(ctl: bytes, shift: int) -> None:
    # shifted copies: the codec must not depend on the buffer's alignment
    backing = bytearray(shift + len(ctl) + 8)
    backing[shift:shift + len(ctl)] = ctl
    raw = np.frombuffer(backing, np.uint8)[shift:shift + len(ctl)]
    ref = reference_parse(ctl)
    if ref is None:
        with pytest.raises(ControlBufferError):
            parse_rx_uniform(raw, len(ctl))
        with pytest.raises(ControlBufferError):
            parse_rx_control(ctl, len(ctl))
        return
    want, uniform = ref
    batch, did = parse_rx_uniform(raw, len(ctl))
    assert did == uniform
    for name in ("offset", "size", "token", "dmabuf_id", "linear_sizes", "linear_at"):
        assert getattr(batch, name).tolist() == want[name], name
    assert batch.offset.dtype == np.uint64 and batch.linear_at.dtype == np.int64
    assert all(getattr(batch, f).dtype == np.uint32 for f in ("size", "token", "dmabuf_id", "linear_sizes"))
    assert batch.linear_bytes == sum(want["linear_sizes"])
    assert len(batch) == len(want["token"])
    # the batch owns its records: the control buffer is reused by the next recvmsg
    backing[:] = b"\xff" * len(backing)
    assert batch.token.tolist() == want["token"] and batch.offset.tolist() == want["offset"]
    # the public parser agrees, from bytes too
    again = parse_rx_control(ctl, len(ctl))
    assert again.token.tolist() == want["token"] and again.dmabuf_id.tolist() == want["dmabuf_id"]


def test_uniform_id_of_the_common_buffer() -> None:
    ctl = b"".join(record(DMABUF, 4096 * i, 4096, i + 1, 9) for i in range(1600))
    batch, did = parse_rx_uniform(np.frombuffer(ctl, np.uint8), len(ctl))
    assert did == 9 and len(batch) == 1600 and batch.token[-1] == 1600
    mixed = ctl[:-40] + record(DMABUF, 0, 4096, 1601, 10)
    batch, did = parse_rx_uniform(mixed, len(mixed))
    assert did == -1 and batch.dmabuf_id[-1] == 10 and batch.dmabuf_id[0] == 9
    with_linear = record(LINEAR, 0, 66, 0, 0) + ctl[:80]
    batch, did = parse_rx_uniform(with_linear, len(with_linear))
    assert did == -1 and batch.linear_bytes == 66 and batch.dmabuf_id.tolist() == [9, 9]
    assert parse_rx_uniform(b"", 0)[1] == -1


# ---------------------------------------------------------------------------
# plan_dontneed
# ---------------------------------------------------------------------------
@st.composite
def sorted_tokens(draw: st.DrawFn) -> np.ndarray:
    """Ascending uint32 tokens: a few runs (sometimes many), sometimes duplicated."""
    if draw(st.booleans()):
        runs = draw(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 2500)), max_size=6))
    else:
        runs = draw(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 20)), max_size=80))
    pos = draw(st.integers(0, 2**31 - 200_000))
    parts = []
    for gap, count in runs:
        pos += gap
        parts.append(np.arange(pos, pos + count, dtype=np.uint32))
        pos += count
    t = np.concatenate(parts) if parts else np.empty(0, np.uint32)
    dups = draw(st.sampled_from([0, 0, 0, 1, 5]))
    if dups and t.shape[0]:
        idx = np.array(draw(st.lists(st.integers(0, t.shape[0] - 1), min_size=dups, max_size=dups)))
        t = np.sort(np.concatenate([t, t[idx]]), kind="stable")
    return t


@settings(max_examples=500, deadline=None)
@given(sorted_tokens(), st.integers(1, 130), st.integers(1, 1500), st.booleans())
def test_plan_dontneed_equals_dedupe_then_chunk(t: np.ndarray, max_tokens: int, max_frags: int,
                                                full_only: bool) -> None:
    original = t.copy()
    toks, chunks, ends = plan_dontneed(t, full_only, max_tokens, max_frags)
    want_t = oracles.dedupe_sorted(original)
    want_chunks, want_ends = oracles.chunk_sorted_tokens(want_t, max_tokens, max_frags, full_only)
    assert toks.tolist() == want_t.tolist()
    assert [c.tolist() for c in chunks] == [w.tolist() for w in want_chunks]
    assert ends == want_ends
    for c in chunks:
        assert c.dtype == abi.DMABUF_TOKEN_DTYPE and c.flags.c_contiguous and c.flags.writeable
    assert t.tolist() == original.tolist()  # the input is not modified


@pytest.mark.parametrize("full_only", [False, True])
def test_plan_dontneed_steady_state_shapes(full_only: bool) -> None:
    # what the Receiver sees: the sorted queue, one run or a few
    one = np.arange(1, 2177, dtype=np.uint32)
    _, chunks, ends = plan_dontneed(one, full_only)
    tail = [] if full_only else [[(2049, 128)]]
    assert [c.tolist() for c in chunks] == [[(1, 1024)], [(1025, 1024)], *tail]
    assert ends == [1024, 2048] + ([] if full_only else [2176])
    two = np.concatenate([np.arange(1, 1001, dtype=np.uint32), np.arange(2001, 3001, dtype=np.uint32)])
    _, chunks, ends = plan_dontneed(two, full_only)
    assert chunks[0].tolist() == [(1, 1000), (2001, 24)] and ends[0] == 1024
    assert len(chunks) == (1 if full_only else 2)


# ---------------------------------------------------------------------------
# token runs: the Receiver's queue of few runs
# ---------------------------------------------------------------------------
def _expand_runs(runs: list[int]) -> list[int]:
    return [t for s, c in zip(runs[0::2], runs[1::2], strict=True) for t in range(s, s + c)]


@st.composite
def token_arrays(draw: st.DrawFn) -> np.ndarray:
    """uint32 tokens as the kernel hands them out (a few ascending runs) or not
    (shuffled, repeated, near 2**32), contiguous or strided."""
    near = st.integers(0, 3000) | st.integers(2**32 - 3000, 2**32 - 1)
    runs = draw(st.lists(st.tuples(near | st.integers(0, 2**32 - 1), st.integers(1, 300)), max_size=8))
    parts = [np.arange(s, s + c, dtype=np.uint64).astype(np.uint32) for s, c in runs]  # may wrap
    t = np.concatenate(parts) if parts else np.empty(0, np.uint32)
    if t.shape[0] and draw(st.integers(0, 3)) == 0:
        t = t[np.array(draw(st.permutations(range(t.shape[0]))))] if t.shape[0] < 40 else t[::-1]
    if draw(st.booleans()):  # a strided view, like FragBatch.token
        rec = np.zeros((t.shape[0], 10), np.uint32)
        rec[:, 7] = t
        t = rec[:, 7]
    return t


@settings(max_examples=400, deadline=None)
@given(token_arrays(), token_arrays(), st.integers(2, 40))
def test_token_runs_and_merge_are_the_set_of_tokens(x: np.ndarray, y: np.ndarray, limit: int) -> None:
    rx, ry = cmsg_mod.token_runs(x, limit), cmsg_mod.token_runs(y, limit)
    for t, r in ((x, rx), (y, ry)):
        if r is None:
            continue
        assert len(r) < 2 * limit and all(c >= 1 for c in r[1::2])
        assert _expand_runs(r) == t.tolist()  # the runs, in order, are the tokens as given
    if rx is None or ry is None:
        return
    merged = cmsg_mod.merge_runs(rx, ry, limit)
    want = sorted(set(x.tolist()) | set(y.tolist()))
    if merged is None:
        assert len(oracles.coalesce_tokens(np.array(want, np.uint32))) >= limit
        return
    assert _expand_runs(merged) == want
    starts, counts = merged[0::2], merged[1::2]
    assert all(s + c < s2 for s, c, s2 in zip(starts, counts, starts[1:], strict=False))  # gaps between
    for k in {0, min(1, len(want)), len(want) // 2, len(want)}:
        assert _expand_runs(cmsg_mod.drop_tokens(merged, k)) == want[k:]
    # the plan of the runs is the plan of the sorted tokens
    for full_only in (False, True):
        chunks, ends = cmsg_mod.plan_runs(starts, counts, full_only, 128, 1024)
        want_chunks, want_ends = oracles.chunk_sorted_tokens(np.array(want, np.uint32), full_only=full_only)
        assert [c.tolist() for c in chunks] == [w.tolist() for w in want_chunks] and ends == want_ends


def test_merge_runs_coalesces_touching_and_overlapping_runs() -> None:
    merge = cmsg_mod.merge_runs
    assert merge([1025, 576], [1, 1024, 1601, 448]) == [1, 2048]  # the steady state: one run again
    assert merge([10, 5], [15, 5]) == [10, 10] and merge([15, 5], [10, 5]) == [10, 10]
    assert merge([10, 5], [12, 10]) == [10, 12] and merge([10, 20], [12, 3]) == [10, 20]
    assert merge([10, 5], [16, 5]) == [10, 5, 16, 5]
    assert merge([], [7, 1, 3, 2]) == [3, 2, 7, 1] and merge([], []) == []
    assert merge([1, 1, 3, 1, 5, 1], [7, 1], limit=4) is None
    assert cmsg_mod.token_runs(np.array([5, 6, 7, 1, 2, 9], np.uint32)) == [5, 3, 1, 2, 9, 1]
    assert cmsg_mod.token_runs(np.array([2**32 - 1, 0], np.uint32)) is None  # no wrap past 2**32 - 1
    assert cmsg_mod.token_runs(np.arange(40, dtype=np.uint32)[::-1].copy(), limit=32) is None
    assert cmsg_mod.drop_tokens([1, 4, 10, 2], 5) == [11, 1] and cmsg_mod.drop_tokens([1, 4], 4) == []


@st.composite
def steady_batches(draw: st.DrawFn) -> tuple[bytes, int]:
    """Buffers of the steady-state shape (one size, tokens in few runs, the
    last fragment possibly shorter) and near misses: a short fragment in the
    middle, a last one longer or empty, a repeated token, a wrong nbytes."""
    n = draw(st.integers(1, 80))
    size0 = draw(st.sampled_from([4096, 1448, 8192, 1]))
    sizes = [size0] * n
    last = draw(st.sampled_from(["same", "short", "short", "long", "zero"]))
    if last == "short":
        sizes[-1] = draw(st.integers(1, size0))
    elif last == "long":
        sizes[-1] = size0 + draw(st.integers(1, 100))
    elif last == "zero":
        sizes[-1] = 0
    if n > 2 and draw(st.booleans()) and draw(st.booleans()):
        sizes[draw(st.integers(1, n - 2))] = draw(st.integers(1, size0 + 10))
    tokens: list[int] = []
    t = draw(st.integers(1, 2**31 - 200))
    for i in range(n):
        if i and draw(st.integers(0, 9)) == 0:
            t = draw(st.integers(1, 2**31 - 200))  # a new run
        tokens.append(t)
        t += 1
    if n > 1 and draw(st.integers(0, 7)) == 0:
        tokens[-1] = tokens[0]  # a repeated token
    ctl = b"".join(record(DMABUF, i * 4096, s, tok, 3)
                   for i, (s, tok) in enumerate(zip(sizes, tokens, strict=True)))
    nbytes = sum(sizes) + draw(st.sampled_from([0, 0, 0, 1, -1]))
    return ctl, nbytes


@settings(max_examples=400, deadline=None)
@given(steady_batches())
def test_steady_state_check_agrees_with_the_general_check(case: tuple[bytes, int]) -> None:
    """_check_uniform (the fast path, a short last fragment included) never
    accepts what the general check refuses, and returns the same runs."""
    from devmemtcp.codec import FragRecordError
    from devmemtcp.codec import rx as crx

    ctl, nbytes = case
    raw = np.frombuffer(ctl, np.uint8)
    parsed = crx._parse_dense(raw, len(ctl))
    assert parsed is not None and parsed[2] is not None
    batch, _did, words = parsed
    try:
        want: list[int] | str | None = crx._check(batch, None, raw, nbytes, 1 << 40)
    except FragRecordError:
        want = "refused"
    fast = crx._check_uniform(batch, words, nbytes, 1 << 40)
    if fast is not None:
        assert want != "refused" and fast == want
    # and the public entry point answers as the general check does
    if want == "refused":
        with pytest.raises(FragRecordError):
            crx.parse_rx_batch(raw, len(ctl), 0, nbytes, 1 << 40)
    else:
        assert crx.parse_rx_batch(raw, len(ctl), 0, nbytes, 1 << 40)[2] == want


def test_a_short_last_fragment_stays_on_the_fast_path() -> None:
    """recvmsg's len often ends inside a fragment: the steady-state check takes
    that batch as it is (no general pass)."""
    from devmemtcp.codec import rx as crx

    ctl = b"".join(record(DMABUF, i * 4096, 4096 if i < 9 else 1000, 77 + i, 3) for i in range(10))
    raw = np.frombuffer(ctl, np.uint8)
    batch, _did, words = crx._parse_dense(raw, len(ctl))  # type: ignore[misc]
    assert crx._check_uniform(batch, words, 9 * 4096 + 1000, 1 << 30) == [77, 10]
    assert crx._check_uniform(batch, words, 10 * 4096, 1 << 30) is None  # nbytes disagrees
