"""Units of the emulated NIC: token numbering, page pools, steering, state files."""

from __future__ import annotations

import ipaddress
import itertools
import socket
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from devmemtcp import abi
from devmemtcp.emulation import state as st
from devmemtcp.emulation.pool import RxPool
from devmemtcp.emulation.steering import Flow, steer, toeplitz_hash
from devmemtcp.emulation.tokens import TokenTable, dontneed_walk, expand_runs, page_runs


# ---------------------------------------------------------------------------
# tokens: xa_alloc with XA_FLAGS_ALLOC1 hands out the lowest free index >= 1
# ---------------------------------------------------------------------------
class XaModel:
    """Reference: a set of used indices, lowest free first."""

    def __init__(self) -> None:
        self.used: dict[int, int] = {}

    def alloc(self, pages: list[int]) -> list[int]:
        out = []
        t = 1
        for p in pages:
            while t in self.used:
                t += 1
            self.used[t] = p
            out.append(t)
        return out

    def erase(self, toks: list[int]) -> list[int]:
        return [self.used.pop(t) for t in toks if t in self.used]


ops = hst.lists(
    hst.one_of(
        hst.tuples(hst.just("alloc"), hst.integers(1, 40)),
        hst.tuples(hst.just("erase"), hst.lists(hst.integers(0, 120), max_size=30)),
        hst.tuples(hst.just("range"), hst.tuples(hst.integers(0, 120), hst.integers(0, 60))),
    ),
    max_size=40,
)


def alloc_tokens(tt: TokenTable, pages: list[int], bid: int, queue: int) -> list[int]:
    """Tokens for ``pages`` (frag order), through the run API."""
    runs = tt.alloc_runs(page_runs(np.array(pages, np.int64)), bid, queue)
    return [t + j for t, c in runs for j in range(c)]


def net_iovs(runs: list[tuple[int, int, int, int]]) -> list[int]:
    return [p + j for p, c, _, _ in runs for j in range(c)]


@settings(max_examples=200, deadline=None)
@given(ops)
def test_token_numbering_matches_xarray(seq: list[tuple[str, Any]]) -> None:
    tt = TokenTable()
    ref = XaModel()
    page = 0
    for op, arg in seq:
        if op == "alloc":
            pages = list(range(page, page + arg))
            page += arg
            assert alloc_tokens(tt, pages, 7, 3) == ref.alloc(pages)
        elif op == "range":
            start, count = arg
            got = tt.erase_range_runs(start, count)
            assert sorted(net_iovs(got)) == sorted(ref.erase(list(range(start, start + count))))
            assert all(c > 0 for _, c, _, _ in got)
        else:
            got = [r for t in dict.fromkeys(arg) for r in tt.erase_range_runs(t, 1)]
            assert sorted(net_iovs(got)) == sorted(ref.erase(list(dict.fromkeys(arg))))
            assert all((b, q) == (7, 3) for _, _, b, q in got)
        assert tt.outstanding == len(ref.used)
        check_segments(tt, ref)
    assert sorted(net_iovs(tt.erase_all_runs())) == sorted(ref.used.values())
    assert tt.outstanding == 0 and tt.segments == []
    assert alloc_tokens(tt, [1], 7, 3) == [1]


def test_token_alloc_pairs_token_runs_with_net_iov_runs() -> None:
    """Tokens 4..5 free between held ones: five frags in two net_iov runs take
    tokens 4..5 and 8..10, and the segments are cut at both kinds of boundary."""
    tt = TokenTable()
    tt.alloc_runs([(100, 7)], 1, 0)
    tt.erase_range_runs(4, 2)
    assert tt.alloc_runs([(10, 2), (50, 3)], 1, 0) == [(4, 2), (8, 3)]
    assert tt.segments == [(1, 3, 100, 1, 0), (4, 2, 10, 1, 0), (6, 2, 105, 1, 0), (8, 3, 50, 1, 0)]
    # a run that continues the one before it (token and net_iov) merges into its segment
    assert tt.alloc_runs([(53, 2)], 1, 0) == [(11, 2)]
    assert tt.segments[-1] == (8, 5, 50, 1, 0)
    # another queue does not merge
    tt.alloc_runs([(55, 1)], 1, 2)
    assert tt.segments[-1] == (13, 1, 55, 1, 2)


def check_segments(tt: TokenTable, ref: XaModel) -> None:
    """The segments map exactly the model's tokens to its net_iovs, sorted,
    disjoint, and no two that continue each other are left unmerged."""
    segs = tt.segments
    mapping = {t + j: p + j for t, c, p, _, _ in segs for j in range(c)}
    assert mapping == ref.used
    for (t1, c1, p1, b1, q1), (t2, _, p2, b2, q2) in itertools.pairwise(segs):
        assert t1 + c1 <= t2
        assert not (t1 + c1 == t2 and p1 + c1 == p2 and (b1, q1) == (b2, q2))


@settings(max_examples=300, deadline=None)
@given(hst.integers(0, 300), hst.lists(hst.integers(1, 299), max_size=80),
       hst.lists(hst.tuples(hst.one_of(hst.integers(0, 320), hst.just(0xFFFFFFFF - 3)),
                            hst.one_of(hst.integers(0, 40), hst.integers(900, 1100))),
                 min_size=1, max_size=abi.MAX_DONTNEED_TOKENS))
def test_token_dontneed_erases_what_the_kernel_loop_erases(
        n: int, holes: list[int], ranges: list[tuple[int, int]]) -> None:
    tt = TokenTable()
    ref = XaModel()
    pages = list(range(1000, 1000 + n))
    alloc_tokens(tt, pages, 5, 2)
    ref.alloc(pages)
    for t in dict.fromkeys(holes):
        tt.erase_range_runs(t, 1)
    ref.erase(list(dict.fromkeys(holes)))
    arr = np.array(ranges, dtype=abi.DMABUF_TOKEN_DTYPE)
    got = tt.dontneed_runs(arr)
    want = ref.erase(list(dict.fromkeys(kernel_walk(ranges))))
    assert sorted(net_iovs(got)) == sorted(want)
    assert all((b, q) == (5, 2) for _, _, b, q in got)
    assert tt.outstanding == len(ref.used)
    check_segments(tt, ref)


def kernel_walk(ranges: list[tuple[int, int]]) -> list[int]:
    """sock_devmem_dontneed's loop, literally."""
    out = []
    num_frags = 0
    for start, count in ranges:
        for j in range(count):
            num_frags += 1
            if num_frags > abi.MAX_DONTNEED_FRAGS:
                return out
            out.append((start + j) & 0xFFFFFFFF)
    return out


@settings(max_examples=300, deadline=None)
@given(hst.lists(hst.tuples(hst.integers(0, 0xFFFFFFFF), hst.one_of(hst.integers(0, 40),
                                                                    hst.integers(0, 0xFFFFFFFF))),
                 max_size=abi.MAX_DONTNEED_TOKENS))
def test_dontneed_walk_matches_the_kernel_loop(ranges: list[tuple[int, int]]) -> None:
    arr = np.array(ranges, dtype=abi.DMABUF_TOKEN_DTYPE) if ranges else np.empty(0, abi.DMABUF_TOKEN_DTYPE)
    assert dontneed_walk(arr).tolist() == kernel_walk(ranges)


# ---------------------------------------------------------------------------
# page pool
# ---------------------------------------------------------------------------
def test_pool_hands_out_lowest_free_first() -> None:
    pool = RxPool(1, 8)
    assert pool.alloc_runs(3, 0, None) == [(0, 3)]
    assert pool.alloc_runs(10, 0, None) == [(3, 5)]
    assert pool.inflight == 8
    pool.release(np.array([6, 1, 2]), np.zeros(3, np.int32))
    assert pool.alloc_runs(2, 0, None) == [(1, 2)]  # first fit, as gen_pool_first_fit
    pool.give_back_runs([(1, 1)], 0)
    assert pool.alloc_runs(5, 0, None) == [(1, 1), (6, 1)]
    qs = pool.queue_stats(0)
    # the kernel's meanings: 8 cache misses with an empty ring (the provider serves
    # them), 3 recycled into the ring, one refill from it, then 3 from the alloc cache
    assert (qs.alloc_empty, qs.recycle_ring, qs.alloc_refill, qs.alloc_fast, pool.nfree) == (8, 3, 1, 3, 0)
    assert (qs.alloc_slow, qs.recycle_released) == (0, 0)
    pool.release(np.array([6]), np.zeros(1, np.int32))
    with pytest.raises(RuntimeError, match="given back twice"):
        pool.release(np.array([6]), np.zeros(1, np.int32))


@pytest.mark.parametrize("few_edges", [64, 2])  # 2: fragmented windows take the index path
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=hst.lists(hst.tuples(hst.booleans(), hst.integers(1, 40), hst.booleans()), max_size=60))
def test_pool_first_fit_matches_a_sorted_free_set(ops: list[tuple[bool, int, bool]], few_edges: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from devmemtcp.emulation import pool as pool_mod

    monkeypatch.setattr(pool_mod, "_FEW_EDGES", few_edges)
    monkeypatch.setattr(pool_mod, "_SCAN_CHUNK", 16)  # several scan windows per alloc
    pool = RxPool(1, 64)
    free = set(range(64))
    held: list[int] = []
    for take, k, as_runs in ops:
        if take:
            if not free:
                continue
            runs = pool.alloc_runs(k, 0, None)
            got = expand_runs(runs).tolist()
            # runs are maximal and ascending: no two touch
            assert all(a + c < b for (a, c), (b, _) in itertools.pairwise(runs))
            assert got == sorted(free)[:k]
            free -= set(got)
            held += got
        elif held:
            # give back every other held net_iov first: scattered holes
            back, held = held[::2][:k], [p for p in held if p not in set(held[::2][:k])]
            if as_runs:
                pool.release_runs([(p, 1, 1, 0) for p in back])
            else:
                pool.release(np.array(back, dtype=np.int64), np.zeros(len(back), np.int32))
            free |= set(back)
        assert pool.nfree == len(free)
        assert pool.free.nonzero()[0].tolist() == sorted(free)


def test_pool_empty_waits_until_deadline() -> None:
    pool = RxPool(1, 1)
    pool.alloc_runs(1, 2, None)
    t0 = time.monotonic()
    assert pool.alloc_runs(1, 2, t0 + 0.05) == []
    assert time.monotonic() - t0 >= 0.05
    assert pool.queue_stats(2).alloc_empty == 1


# ---------------------------------------------------------------------------
# steering
# ---------------------------------------------------------------------------
def test_toeplitz_matches_the_rss_verification_suite() -> None:
    # Microsoft "Verifying the RSS Hash Calculation", IPv4 with TCP ports
    cases = [
        ("66.9.149.187", 2794, "161.142.100.80", 1766, 0x51CCC178),
        ("199.92.111.2", 14230, "65.69.140.83", 4739, 0xC626B0EA),
        ("24.19.198.95", 12898, "12.22.207.184", 38024, 0x5C2B394A),
    ]
    for src, sport, dst, dport, want in cases:
        data = (ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
                + sport.to_bytes(2, "big") + dport.to_bytes(2, "big"))
        assert toeplitz_hash(data) == want
        assert Flow(socket.AF_INET, src, sport, dst, dport).rss_input() == data


def test_rules_win_over_rss_lowest_location_first() -> None:
    nic = st.default_nic("lo", 1, 0, queues=4)
    flow = Flow(socket.AF_INET, "10.0.0.2", 5555, "10.0.0.1", 9000)
    q, how = steer(nic, flow)
    assert how == "rss" and q == toeplitz_hash(flow.rss_input()) % 128 % 4
    nic["rules"] = [
        {"location": 5, "dst_ip": "10.0.0.1", "dst_port": 9000, "queue": 1, "src_ip": None,
         "src_port": None, "family": socket.AF_INET},
        {"location": 2, "dst_ip": "10.0.0.1", "dst_port": 9000, "queue": 3, "src_ip": "10.0.0.2",
         "src_port": 5555, "family": socket.AF_INET},
        {"location": 0, "dst_ip": "10.0.0.1", "dst_port": 9000, "queue": 2, "src_ip": "10.0.0.9",
         "src_port": None, "family": socket.AF_INET},
    ]
    assert steer(nic, flow) == (3, "rule@2")
    nic["rules"] = nic["rules"][:1]
    assert steer(nic, flow) == (1, "rule@5")


# ---------------------------------------------------------------------------
# state: binding ids and owners
# ---------------------------------------------------------------------------
def test_binding_ids_are_cyclic_and_wrap() -> None:
    reg: dict[str, Any] = {"next": 1, "live": {}}
    assert [st.alloc_binding_id(reg) for _ in range(3)] == [1, 2, 3]
    reg["live"] = {"1": {}, "3": {}}
    assert st.alloc_binding_id(reg) == 4
    reg["next"] = 0xFFFFFFFF
    reg["live"] = {"1": {}}
    assert st.alloc_binding_id(reg) == 0xFFFFFFFF
    assert st.alloc_binding_id(reg) == 2  # wrapped past the live id 1


def test_nic_state_round_trip_and_reset_on_new_ifindex(tmp_path: Any) -> None:
    d = str(tmp_path)
    nic = st.load_nic("lo", directory=d)
    assert nic["rings"]["tcp_data_split"] == "unknown" and len(nic["rss"]["indir"]) == st.RSS_TABLE_SIZE
    nic["rings"]["hds_thresh"] = 0
    with st.locked(d):
        st.save_nic(nic, d)
    assert st.load_nic("lo", directory=d)["rings"]["hds_thresh"] == 0
    nic["ifindex"] = 999999  # a re-created interface starts from defaults
    with st.locked(d):
        st.save_nic(nic, d)
    assert st.load_nic("lo", directory=d)["rings"]["hds_thresh"] == st.DEFAULT_HDS_THRESH


def test_queue_count_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVMEMTCP_EMU_QUEUES", "8")
    assert st.default_rx_queues() == 8
    monkeypatch.setenv("DEVMEMTCP_EMU_QUEUES", "0")
    with pytest.raises(Exception, match="DEVMEMTCP_EMU_QUEUES"):
        st.default_rx_queues()
