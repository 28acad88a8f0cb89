"""The kernel token-numbering model used to make the synthetic control buffers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmemtcp import abi
from devmemtcp.bench.frags import TokenTableModel
from unit.codec.oracles import coalesce_tokens


def _ranges(pairs: list[tuple[int, int]]) -> np.ndarray:
    r = np.empty(len(pairs), abi.DMABUF_TOKEN_DTYPE)
    for i, (s, c) in enumerate(pairs):
        r[i] = (s, c)
    return r


def test_ids_start_at_one_and_lowest_free_is_reused() -> None:
    t = TokenTableModel(capacity=8)
    assert t.alloc(5).tolist() == [1, 2, 3, 4, 5]
    assert t.free(_ranges([(2, 2)])) == 2
    assert t.alloc(3).tolist() == [2, 3, 6]
    assert t.alloc(10).tolist() == list(range(7, 17))  # grows past the initial capacity
    assert t.outstanding == 5 + 3 + 10 - 2


def test_free_skips_unknown_tokens_and_stops_after_1024() -> None:
    t = TokenTableModel()
    t.alloc(2000)
    assert t.free(_ranges([(5000, 10)])) == 0  # unknown: skipped
    # the kernel counts every token it looks at, known or not, against the 1024 budget
    assert t.free(_ranges([(3000, 100), (1, 2000)])) == 1024 - 100
    assert t.outstanding == 2000 - 924


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 50)), min_size=1, max_size=30), st.randoms())
def test_matches_a_set_model(ops: list[tuple[bool, int]], rnd) -> None:  # type: ignore[no-untyped-def]
    t = TokenTableModel(capacity=4)
    held: set[int] = set()
    for is_alloc, n in ops:
        if is_alloc or not held:
            ids = t.alloc(n).tolist()
            expect, k = [], 1
            while len(expect) < n:
                if k not in held:
                    expect.append(k)
                k += 1
            assert ids == expect
            held.update(ids)
        else:
            give = sorted(rnd.sample(sorted(held), min(n, len(held))))
            freed = t.free(coalesce_tokens(np.asarray(give, np.uint32)))
            assert freed == len(give)
            held.difference_update(give)
        assert t.outstanding == len(held)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 40)), min_size=1, max_size=25), st.randoms())
def test_numbers_tokens_like_the_emulated_nic(ops: list[tuple[bool, int]], rnd) -> None:  # type: ignore[no-untyped-def]
    """The benchmark's model and the emulated NIC's token table hand out the same numbers."""
    tokens_mod = pytest.importorskip("devmemtcp.emulation.tokens")
    ours = TokenTableModel(capacity=4)
    theirs = tokens_mod.TokenTable()
    held: list[int] = []
    for is_alloc, n in ops:
        if is_alloc or not held:
            a = ours.alloc(n).tolist()
            b = tokens_mod.expand_runs(theirs.alloc_runs([(0, n)], 1, 0)).tolist()
            assert a == b
            held.extend(a)
        else:
            give = sorted(rnd.sample(held, min(n, len(held))))
            ours.free(coalesce_tokens(np.asarray(give, np.uint32)))
            for t in give:
                theirs.erase_range_runs(t, 1)
            held = [t for t in held if t not in set(give)]
        assert ours.outstanding == theirs.outstanding == len(held)
