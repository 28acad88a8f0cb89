"""ReleaseQueue: one queue, two representations, the same plans as the oracle."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from devmemtcp import abi
from devmemtcp.codec import ReleaseQueue, token_runs
from unit.codec.oracles import chunk_sorted_tokens, dedupe_sorted


@st.composite
def releases(draw: st.DrawFn) -> list[np.ndarray]:
    out = []
    for _ in range(draw(st.integers(1, 12))):
        parts = [np.arange(s, s + c, dtype=np.uint32)
                 for s, c in draw(st.lists(st.tuples(st.integers(1, 6000), st.integers(1, 900)),
                                           min_size=1, max_size=5))]
        if draw(st.integers(0, 3)) == 0:  # scattered: many runs, the array form
            parts.append(np.array(draw(st.lists(st.integers(1, 2**31 - 1), max_size=80)), np.uint32))
        out.append(np.concatenate(parts))
    return out


@settings(max_examples=200, deadline=None)
@given(releases(), st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=12, max_size=12),
       st.booleans())
def test_queue_plans_like_the_oracle(rels: list[np.ndarray], flushes: list[tuple[bool, int]],
                                     pass_runs: bool) -> None:
    q = ReleaseQueue()
    ref = np.empty(0, np.uint32)  # the oracle's queue: every token added, in an array
    for toks, (full_only, calls_ok) in zip(rels, flushes, strict=False):
        q.add(toks, token_runs(toks) if pass_runs else None)
        ref = np.concatenate([ref, toks])
        assert q.queued == len(q) == ref.shape[0]  # duplicates count until a plan drops them
        chunks, ends = q.plan(full_only)
        ref = dedupe_sorted(np.sort(ref))
        want, want_ends = chunk_sorted_tokens(ref, full_only=full_only)
        assert [c.tolist() for c in chunks] == [c.tolist() for c in want] and ends == want_ends
        assert q.queued == ref.shape[0]
        for c in chunks:  # sock_devmem_dontneed's limits
            assert c.shape[0] <= abi.MAX_DONTNEED_TOKENS
            assert int(c["token_count"].sum()) <= abi.MAX_DONTNEED_FRAGS
        k = min(calls_ok, len(ends))  # the first k calls went through
        sent = ends[k - 1] if k else 0
        q.consume(sent)
        ref = ref[sent:]
        assert q.queued == ref.shape[0]
        if ref.shape[0] and token_runs(ref) is not None:
            assert q.is_runs  # few runs again: back to runs
    q.clear()
    assert q.queued == 0 and q.is_runs and q.plan() == ([], [])


def test_switches_to_an_array_and_back() -> None:
    q = ReleaseQueue()
    q.add(np.arange(1, 301, dtype=np.uint32))
    q.add(np.arange(1, 301, dtype=np.uint32))  # the same again: counted twice
    assert q.is_runs and q.queued == 600
    q.add(np.arange(1000, 1100, 2, dtype=np.uint32))  # 50 more runs: an array now
    assert not q.is_runs and q.queued == 650
    chunks, ends = q.plan()
    assert q.queued == 350 and ends == [350]
    assert chunks[0].shape[0] == 51
    q.consume(300)  # the first 300 went: the 50 scattered ones are left, as an array
    assert q.queued == 50 and not q.is_runs
    q.consume(0)
    chunks, ends = q.plan()
    q.consume(ends[-1])
    assert q.queued == 0 and q.is_runs
