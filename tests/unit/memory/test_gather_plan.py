"""plan_gather (the host half of the device gather) on the CPU: its triplets,
applied with plain slices, give exactly what MemfdBuffer.gather gives for
the same frags, and they tile the destination without gaps or overlaps."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmemtcp.codec import FragBatch
from devmemtcp.errors import DevmemError
from devmemtcp.memory import MemfdBuffer
from devmemtcp.memory.cuda_ops import GATHER_CHUNK, plan_gather

PS = 4096
NPAGES = 64


def batch(offs: list[int], sizes: list[int]) -> FragBatch:
    n = len(offs)
    return FragBatch(np.array(offs, np.uint64), np.array(sizes, np.uint32),
                     np.arange(1, n + 1, dtype=np.uint32), np.ones(n, np.uint32))


def apply(view: np.ndarray, trip: np.ndarray, nbytes: int) -> np.ndarray:
    """The kernel's work, one triplet at a time (a test reference, not the product path)."""
    out = np.full(nbytes, 0xEE, np.uint8)
    for src, ln, dst in trip.tolist():
        out[dst:dst + ln] = view[src:src + ln]
    return out


@pytest.fixture(scope="module")
def buf() -> Iterator[MemfdBuffer]:
    with MemfdBuffer(NPAGES * PS) as b:
        b.copy_in(0, np.random.default_rng(0).integers(0, 256, NPAGES * PS, dtype=np.uint8))
        yield b


def check(buf: MemfdBuffer, offs: list[int], sizes: list[int], chunk: int = GATHER_CHUNK) -> None:
    fb = batch(offs, sizes)
    plan = plan_gather(fb.offset, fb.size, chunk=chunk, limit=buf.size)
    assert plan.nbytes == fb.nbytes
    trip = plan.triplets
    assert trip.dtype == np.int64 and trip.flags.c_contiguous and trip.shape[1] == 3
    if plan.nbytes:
        # rows tile 0..nbytes in order, each at most one chunk
        assert trip[0, 2] == 0 and (trip[1:, 2] == trip[:-1, 2] + trip[:-1, 1]).all()
        assert int(trip[-1, 2] + trip[-1, 1]) == plan.nbytes
        assert (trip[:, 1] > 0).all() and (trip[:, 1] <= chunk).all()
    assert apply(buf.host_view(), trip, plan.nbytes).tobytes() == buf.gather(fb).tobytes()


def test_shuffled_pages_are_block_copies(buf: MemfdBuffer) -> None:
    pages = np.random.default_rng(1).permutation(NPAGES)[:40]
    offs = (pages * PS).tolist()
    check(buf, offs, [PS] * len(offs))
    plan = plan_gather(np.array(offs), np.full(len(offs), PS))
    assert plan.runs == plan.block_runs  # every run is whole aligned pages


def test_consecutive_pages_merge_into_chunked_runs(buf: MemfdBuffer) -> None:
    offs = [p * PS for p in range(10, 30)]
    plan = plan_gather(np.array(offs), np.full(20, PS))
    assert plan.runs == 1 and plan.block_runs == 1
    assert plan.triplets.shape[0] == 20 * PS // GATHER_CHUNK
    check(buf, offs, [PS] * 20)


def test_1448_byte_frags_are_irregular(buf: MemfdBuffer) -> None:
    offs = [p * PS + (p % 3) * 1448 for p in range(0, 40)]
    check(buf, offs, [1448] * 40)
    plan = plan_gather(np.array(offs), np.full(40, 1448))
    assert plan.block_runs == 0 and plan.runs == 40


def test_contiguous_small_frags_merge(buf: MemfdBuffer) -> None:
    offs = [100 + i * 1448 for i in range(30)]  # back to back across page boundaries
    plan = plan_gather(np.array(offs), np.full(30, 1448))
    assert plan.runs == 1
    check(buf, offs, [1448] * 30, chunk=4096)


def test_zero_length_and_empty(buf: MemfdBuffer) -> None:
    check(buf, [], [])
    check(buf, [0, PS, 2 * PS], [0, 10, 0])
    assert plan_gather(np.array([5]), np.array([0])).triplets.shape == (0, 3)


def test_bounds_and_bad_arguments() -> None:
    with pytest.raises(DevmemError, match="outside the dma-buf"):
        plan_gather(np.array([NPAGES * PS - 10]), np.array([20]), limit=NPAGES * PS)
    with pytest.raises(DevmemError, match="outside the dma-buf"):
        plan_gather(np.array([-1]), np.array([20]))
    with pytest.raises(DevmemError, match="multiple of 16"):
        plan_gather(np.array([0]), np.array([1]), chunk=100)
    with pytest.raises(DevmemError, match="one size per frag"):
        plan_gather(np.array([0, 1]), np.array([1]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, NPAGES * PS - 1), st.integers(0, PS)), max_size=40),
       st.sampled_from([16, 1024, 4096, GATHER_CHUNK]))
def test_plan_equals_host_gather(frags: list[tuple[int, int]], chunk: int) -> None:
    frags = [(o, min(s, NPAGES * PS - o)) for o, s in frags]
    with MemfdBuffer(NPAGES * PS) as b:
        b.copy_in(0, (np.arange(NPAGES * PS) * 7 % 251).astype(np.uint8))
        check(b, [o for o, _ in frags], [s for _, s in frags], chunk)
