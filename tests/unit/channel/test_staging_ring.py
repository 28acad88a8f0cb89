"""The TX staging ring (Channel._stage): a region is written only when no
send still in flight reads it, whatever the sizes, the completion order and
the early laps that keep the ring's start in the CPU caches."""

from __future__ import annotations

import random
from collections import deque
from types import SimpleNamespace
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from devmemtcp import abi
from devmemtcp.channel import core

PS = abi.PAGE_SIZE


class FakeSender:
    """In-flight sends of one flow, completed in order (as TCP acks them) when the test says."""

    def __init__(self, inflight: list[tuple[int, int, int]]) -> None:
        self.inflight = inflight  # shared by every flow: (flow, offset, length)
        self.flow = -1

    def _busy(self, off: int, ln: int) -> bool:
        return any(f == self.flow and o < off + ln and off < o + n for f, o, n in self.inflight)

    def region_free(self, off: int, ln: int) -> bool:
        return not self._busy(off, ln)

    def wait_region_free(self, off: int, ln: int) -> None:
        # blocking: this flow's sends complete in order up to the last one covering the region
        while self._busy(off, ln):
            i = next(i for i, e in enumerate(self.inflight) if e[0] == self.flow)
            del self.inflight[i]


def _ring(ring: int, flows: int) -> Any:
    inflight: list[tuple[int, int, int]] = []
    senders = [FakeSender(inflight) for _ in range(flows)]
    for i, s in enumerate(senders):
        s.flow = i
    return SimpleNamespace(_ring=ring, _ring_pos=0, _ring_used=deque(), _ring_lap=0, _senders=senders,
                           _dev=None, _tx_view=np.zeros(ring, np.uint8)), inflight


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([16, 64, 4096]), st.integers(1, 3))
def test_a_staged_region_never_overlaps_a_send_in_flight(seed: int, ring_pages: int, flows: int) -> None:
    rng = random.Random(seed)
    ch, inflight = _ring(ring_pages * PS, flows)
    hot = min(core.STAGE_HOT_BYTES, ch._ring // 2)
    old = core.STAGE_HOT_BYTES
    core.STAGE_HOT_BYTES = hot  # early laps within small rings too
    try:
        for _ in range(300):
            n = rng.choice([1, PS, 3 * PS + 5, rng.randint(1, ch._ring // 3)])
            f = rng.randrange(flows)
            src = np.full(n, rng.randrange(256), np.uint8)
            off = core.Channel._stage(ch, src, f)
            need = -(-n // PS) * PS
            assert off >= 0 and off + need <= ch._ring
            clash = [e for e in inflight if e[1] < off + need and off < e[1] + e[2]]
            assert not clash, "overwrote a send in flight"
            inflight.append((f, off, need))
            # the NIC acks some sends, oldest first per flow
            for fl in range(flows):
                for _ in range(rng.choice([0, 0, 1, 2])):
                    i = next((i for i, e in enumerate(inflight) if e[0] == fl), None)
                    if i is not None:
                        del inflight[i]
    finally:
        core.STAGE_HOT_BYTES = old


def test_the_next_lap_starts_early_at_the_ring_start() -> None:
    """Sends of 1 MiB through a 64 MiB ring that complete one behind: the
    ring restarts past STAGE_HOT_BYTES instead of walking all 64 MiB."""
    ch, inflight = _ring(64 << 20, 1)
    offs = []
    for _ in range(40):
        offs.append(core.Channel._stage(ch, np.zeros(1 << 20, np.uint8), 0))
        inflight.append((0, offs[-1], 1 << 20))
        if len(inflight) > 1:
            del inflight[0]  # the previous send is acked by now
    assert max(offs) < core.STAGE_HOT_BYTES + (1 << 20) and ch._ring_lap >= 4
