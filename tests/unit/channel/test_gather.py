"""Gather of devmem frags into a contiguous destination (devmemtcp.channel.gather)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmemtcp.channel import gather as g
from devmemtcp.errors import DevmemError

POOL = np.random.default_rng(3).integers(0, 256, 1 << 20, dtype=np.uint8)


def _ref(offs: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    parts = [POOL[o : o + s] for o, s in zip(offs.tolist(), sizes.tolist(), strict=True)]
    return np.concatenate(parts) if parts else np.empty(0, np.uint8)


frag_lists = st.lists(st.tuples(st.integers(0, (1 << 20) - 4096), st.integers(0, 4096)), max_size=80)


@settings(max_examples=60)
@given(frag_lists, st.booleans())
def test_both_paths_equal_the_reference(frags: list[tuple[int, int]], adjacent: bool) -> None:
    if adjacent and frags:  # runs of adjacent frags, as one recvmsg on the emulated NIC gives
        start = frags[0][0] // 2
        sizes = [s for _, s in frags]
        offs = np.cumsum([start, *sizes[:-1]]).astype(np.uint64)
        if int(offs[-1]) + sizes[-1] > POOL.shape[0]:
            return
    else:
        offs = np.array([o for o, _ in frags], dtype=np.uint64)
        sizes = [s for _, s in frags]
    sz = np.array(sizes, dtype=np.uint32)
    want = _ref(offs, sz)
    for fn in (g.gather, g.gather_numpy):
        dst = np.zeros(want.shape[0] + 5, np.uint8)
        assert fn(POOL, offs, sz, dst) == want.shape[0]
        assert np.array_equal(dst[: want.shape[0]], want)
        assert not dst[want.shape[0] :].any()


def test_strided_frag_arrays_as_a_fragbatch_has() -> None:
    rec = np.zeros((50, 5), dtype=np.uint64)
    offs = (np.random.default_rng(1).choice(255, 50, replace=False) * 4096).astype(np.uint64)
    rec[:, 2] = offs
    sizes_view = rec.view(np.uint32)[:, 6]
    sizes_view[:] = 1448
    assert not rec[:, 2].flags.c_contiguous
    dst = np.empty(50 * 1448, np.uint8)
    assert g.gather(POOL, rec[:, 2], sizes_view, dst) == dst.shape[0]
    assert np.array_equal(dst, _ref(offs, np.full(50, 1448, np.uint32)))


def test_page_aligned_pages_take_path() -> None:
    offs = (np.random.default_rng(2).choice(256, 100, replace=False) * 4096).astype(np.uint64)
    sizes = np.full(100, 4096, np.uint32)
    dst = np.empty(100 * 4096, np.uint8)
    assert g.gather_numpy(POOL, offs, sizes, dst) == dst.shape[0]
    assert np.array_equal(dst, _ref(offs, sizes))


@pytest.mark.parametrize("fn", [g.gather, g.gather_numpy])
def test_out_of_range_and_too_small(fn: object) -> None:
    f = fn  # type: ignore[assignment]
    offs = np.array([POOL.shape[0] - 10], dtype=np.uint64)
    with pytest.raises(DevmemError, match="outside"):
        f(POOL, offs, np.array([11], np.uint32), np.empty(64, np.uint8))  # type: ignore[operator]
    with pytest.raises(DevmemError, match="destination"):
        f(
            POOL,
            np.array([0, 8192], np.uint64),
            np.array([100, 100], np.uint32),  # type: ignore[operator]
            np.empty(150, np.uint8),
        )


def test_backend_is_reported_and_env_forces_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert g.gather_backend().startswith(("c ", "numpy "))
    monkeypatch.setattr(g, "_reason", None)
    monkeypatch.setattr(g, "_lib", None)
    monkeypatch.setenv(g.ENV, "numpy")
    assert g.gather_backend().startswith("numpy (asked for")
    dst = np.empty(10, np.uint8)
    assert g.gather(POOL, np.array([5], np.uint64), np.array([10], np.uint32), dst) == 10
    assert np.array_equal(dst, POOL[5:15])


def test_helper_builds_into_the_cache(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    if not (shutil.which("gcc") or shutil.which("cc")):
        pytest.skip("needs a C compiler (gcc)")
    lib = g.build_helper(tmp_path)  # type: ignore[arg-type]
    assert lib.exists() and lib.name == "libdmtgather.so"
    assert g.build_helper(tmp_path) == lib  # type: ignore[arg-type]
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(DevmemError, match="cannot run the C compiler"):
        g.build_helper(tmp_path / "other")  # type: ignore[operator]


@settings(max_examples=60)
@given(frag_lists, st.lists(st.integers(1, 9000), min_size=1, max_size=12))
def test_cursor_takes_pieces_across_frag_boundaries(frags: list[tuple[int, int]], cuts: list[int]) -> None:
    """A FragCursor hands out a batch's bytes in pieces of any length (a frag
    straddling two messages is split by offset and length), both paths equal
    the reference, skipped pieces copy nothing."""
    offs = np.array([o for o, _ in frags], dtype=np.uint64)
    sz = np.array([s for _, s in frags], dtype=np.uint32)
    want = _ref(offs, sz)
    for numpy_path in (False, True):
        cur = g.FragCursor(offs, sz)
        if numpy_path:
            cur._cur = None
        got = []
        pos = 0
        for i, c in enumerate(cuts):
            if i % 3 == 2:  # skipped
                assert cur.take(POOL, c, None) == min(c, want.shape[0] - pos)
                pos += min(c, want.shape[0] - pos)
                continue
            dst = np.zeros(c + 3, np.uint8)
            if i % 3 == 1 and c <= cur.left:  # by addresses (the Channel's small-message path)
                k = cur.take_to(g._addr(POOL), POOL.shape[0], c, g._addr(dst) + 3, c)
                if k < 0:  # spans frags without the compiled helper
                    assert numpy_path
                    k = cur.take(POOL, c, dst, 3)
            else:
                k = cur.take(POOL, c, dst, 3)
            assert k == min(c, want.shape[0] - pos)
            assert np.array_equal(dst[3 : 3 + k], want[pos : pos + k])
            got.append(k)
            pos += k
        assert cur.left == want.shape[0] - pos


def test_cursor_refuses_a_frag_outside_the_dmabuf() -> None:
    cur = g.FragCursor(np.array([POOL.shape[0] - 10], np.uint64), np.array([100], np.uint32))
    with pytest.raises(DevmemError, match="outside"):
        cur.take(POOL, 50, np.zeros(100, np.uint8))


def test_each_dmabuf_view_is_read_at_its_own_address() -> None:
    """Views gathered from in turn each give their own bytes (no address is
    carried over from an earlier view), and gathering keeps no view (an mmap
    closes after it); a caller's base_addr gives what base's own address does."""
    import mmap

    offs = np.array([4096, 0], dtype=np.uint64)
    sizes = np.array([4096, 100], dtype=np.uint32)
    dst = np.zeros(4196, np.uint8)
    m = mmap.mmap(-1, 8192)
    a = np.frombuffer(m, dtype=np.uint8)
    a[:] = 1
    b = np.full(8192, 2, np.uint8)
    for base, fill in ((a, 1), (b, 2), (a, 1)):
        assert g.gather(base, offs, sizes, dst) == 4196
        assert (dst == fill).all()
    del a, base
    m.close()  # BufferError if the helper still held the view
    c = np.arange(8192, dtype=np.uint64).astype(np.uint8)
    assert g.gather(c, offs, sizes, dst) == 4196
    assert (dst[:4096] == c[4096:]).all() and (dst[4096:] == c[:100]).all()
    again = np.zeros_like(dst)
    assert g.gather(c, offs, sizes, again, base_addr=c.__array_interface__["data"][0]) == 4196
    assert (again == dst).all()


@settings(max_examples=60)
@given(st.lists(st.tuples(st.integers(0, (1 << 20) - 70000), st.integers(0, 70000)), min_size=1, max_size=12),
       st.integers(0, 63), st.booleans())
def test_streamed_gather_equals_the_plain_one(frags: list[tuple[int, int]], shift: int,
                                              adjacent: bool) -> None:
    """Non-temporal stores (stream=True) for runs of 4 KiB and more: the same
    bytes as memcpy, whatever the destination's alignment and the run's tail,
    and nothing written past the frags."""
    sizes = [s for _, s in frags]
    if adjacent:  # one long run across frags, as a large recvmsg gives
        offs = np.cumsum([frags[0][0] // 4, *sizes[:-1]]).astype(np.uint64)
        if int(offs[-1]) + sizes[-1] > POOL.shape[0]:
            return
    else:
        offs = np.array([o for o, _ in frags], dtype=np.uint64)
    sz = np.array(sizes, dtype=np.uint32)
    want = _ref(offs, sz)
    buf = np.full(want.shape[0] + shift + 80, 0xEE, np.uint8)
    dst = buf[shift:]  # any alignment: the streamed part starts at a 16-byte boundary
    assert g.gather(POOL, offs, sz, dst, stream=True) == want.shape[0]
    assert np.array_equal(dst[: want.shape[0]], want)
    assert (buf[:shift] == 0xEE).all() and (dst[want.shape[0]:] == 0xEE).all()
    assert g.gather_batch(POOL, _batch(offs, sz), dst, stream=True) == want.shape[0]
    assert np.array_equal(dst[: want.shape[0]], want)


def _batch(offs: np.ndarray, sizes: np.ndarray) -> object:
    from devmemtcp.codec import FragBatch

    n = offs.shape[0]
    return FragBatch(offs, sizes, np.arange(n, dtype=np.uint32), np.zeros(n, np.uint32))
