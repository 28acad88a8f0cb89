"""``devmemtcp bench tensor``: the data API against a plain-TCP framed channel, and the gather alone.

Channel runs: a peer process (``python -m devmemtcp.bench.tensor``) sends
``count`` messages of ``size`` bytes; this process receives each with
``recv_into`` the same preallocated numpy destination, and the figures are
this process's (first message to last):

- devmem: :func:`devmemtcp.connect` in the peer (sending from an array of
  :meth:`~devmemtcp.channel.Channel.empty`, so the sender copies nothing) to
  :func:`devmemtcp.listen` here, on the emulated NIC over ``lo``;
- plain: the obvious framed channel, the peer ``sendall`` of a 16-byte
  header (tag, nbytes) then the payload from a preallocated buffer; here
  ``recv_into`` the header, then ``recv_into`` the destination until full.

Both move the payload into the same destination. On the emulated NIC the
devmem path makes one host copy more (socket to dma-buf, the emulated DMA,
then the gather into the destination; on a devmem NIC the first is the
NIC's DMA and the second the device's copy), so ``host_copy_per_byte``
is 1.0 for both in the receiving process' own accounting (the gather vs
the kernel's copy to user space) and the ratio shows what the rest costs.

Latency (4 KiB): ping-pong, this process sends a message and waits for the
peer's echo, ``LAT_ROUNDS`` times, for the Channel and the plain channel
(with TCP_NODELAY: Nagle and delayed ACKs would add up to 40 ms a round);
half the median round trip is reported. And the lone message, one way: the
peer sends a message with its send time (``time.perf_counter``, the same
CLOCK_MONOTONIC in both processes) every ``LAT_GAP_S``, and a second one
``LAT_SECOND_S`` after the first (the Channel's cork holds that one until its
timer writes it, :data:`devmemtcp.channel.core.CORK_DELAY_S`); arrival minus
send time of each kind.

Gather runs (one thread): a 64 MiB pool (the RX dma-buf), frags at random
distinct pages: 4 KiB page-aligned frags, and 1448-byte frags (one per page,
what a NIC at MTU 1500 that puts each packet in its own page gives), 16 MiB
per pass; each candidate against ``np.copyto`` of as many contiguous bytes
(memcpy bandwidth): the chosen gather (:mod:`devmemtcp.channel.gather`),
its numpy fallback, ``np.take`` of pages, and ``torch.index_select`` when
torch is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from devmemtcp import abi
from devmemtcp.errors import DevmemError

DEFAULT_SIZES = (4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20)
#: payload bytes per size and kind (at least MIN_COUNT messages, at most MAX_COUNT)
DEFAULT_BYTES = 512 << 20
MIN_COUNT = 2
MAX_COUNT = 20000
HOST = "127.0.0.1"
POOL_BYTES = 64 << 20
GATHER_BYTES = 16 << 20
GATHER_REPEAT = 15
DEFAULT_REPEAT = 3
#: the memory check: MEM_COUNT messages of MEM_SIZE bytes (1 GiB) against a quarter of them
MEM_SIZE = 1 << 20
MEM_COUNT = 1024
TARGET_RSS_GROWTH = 16 << 20
TARGET_LARGE = 0.6  # devmem / plain for messages >= 16 MiB
TARGET_SMALL = 0.5  # at 4 KiB
TARGET_GATHER_PAGES = 0.8
TARGET_GATHER_1448 = 0.5
_PLAIN_HDR = struct.Struct("<QQ")
LAT_SIZE = 4 << 10
LAT_ROUNDS = 2000
LAT_LONE = 150
LAT_GAP_S = 0.004
LAT_SECOND_S = 0.0002


# ---------------------------------------------------------------------------
# Gather
# ---------------------------------------------------------------------------
def _frag_set(
    kind: str, rng: np.random.Generator, pool_bytes: int, pass_bytes: int
) -> tuple[np.ndarray, np.ndarray]:
    pages = pool_bytes // abi.PAGE_SIZE
    size = abi.PAGE_SIZE if kind == "pages" else 1448
    n = pass_bytes // size
    if n > pages:
        n = pages
    idx = rng.choice(pages, size=n, replace=False).astype(np.uint64)
    return idx * np.uint64(abi.PAGE_SIZE), np.full(n, size, dtype=np.uint32)


def _paired(
    fn: Callable[[], Any], ref: Callable[[], Any], repeat: int = GATHER_REPEAT
) -> tuple[float, float]:
    """Best-of-``repeat`` seconds of ``fn`` and of ``ref``, run alternately so
    both see the same load on a shared machine."""
    fn()  # warm: page faults, caches, the C helper's build
    ref()
    a: list[float] = []
    b: list[float] = []
    for _ in range(repeat):
        for f, acc in ((fn, a), (ref, b)):
            t0 = time.perf_counter()
            f()
            acc.append(time.perf_counter() - t0)
    return min(a), min(b)


def _gather_kind(
    kind: str, pool: np.ndarray, rng: np.random.Generator, torch: Any, pass_bytes: int, repeat: int
) -> dict[str, Any]:
    """One frag kind: every candidate's GB/s and its ratio to the np.copyto run alternately with it."""
    from devmemtcp.channel.gather import gather, gather_numpy

    offs, sizes = _frag_set(kind, rng, pool.shape[0], pass_bytes)
    total = int(sizes.sum(dtype=np.int64))
    dst = np.empty(total, np.uint8)
    src = pool[:total]
    ref = np.concatenate([pool[o : o + s] for o, s in zip(offs.tolist(), sizes.tolist(), strict=True)])
    res: dict[str, Any] = {"frags": int(offs.shape[0]), "frag_bytes": int(sizes[0]), "bytes": total}

    def copy() -> None:
        np.copyto(dst, src)

    best_copy = float("inf")
    cands: dict[str, Callable[[], Any]] = {
        "chosen": lambda: gather(pool, offs, sizes, dst),
        "numpy_fallback": lambda: gather_numpy(pool, offs, sizes, dst),
    }
    if kind == "pages":
        rows = (offs // np.uint64(abi.PAGE_SIZE)).astype(np.int64)
        pv = pool.reshape(-1, abi.PAGE_SIZE)
        dv = dst.reshape(-1, abi.PAGE_SIZE)
        cands["np_take"] = lambda: np.take(pv, rows, axis=0, out=dv)
    if torch is not None:
        tpool = torch.from_numpy(pool)
        tidx = torch.from_numpy((offs // np.uint64(abi.PAGE_SIZE)).astype(np.int64))
        fs = int(sizes[0])
        win = tpool.as_strided((pool.shape[0] // abi.PAGE_SIZE, fs), (abi.PAGE_SIZE, 1))
        tdst = torch.from_numpy(dst).view(-1, fs)
        cands["torch_index_select"] = lambda: torch.index_select(win, 0, tidx, out=tdst)
    for name, fn in cands.items():
        dst.fill(0)
        fn()
        if not np.array_equal(dst, ref):
            raise DevmemError(
                f"gather candidate {name} produced wrong bytes ({kind} frags)", "this is a bug in the gather"
            )
        t, tc = _paired(fn, copy, repeat)
        best_copy = min(best_copy, tc)
        res[f"{name}_gbs"] = total / t / 1e9
        res[f"{name}_ratio"] = tc / t  # against the copies run alternately with it
    res["copyto_gbs"] = total / best_copy / 1e9
    return res


def run_gather(
    progress: Callable[[str], None] | None = None,
    *,
    pool_bytes: int = POOL_BYTES,
    pass_bytes: int = GATHER_BYTES,
    repeat: int = GATHER_REPEAT,
) -> dict[str, Any]:
    """Gather GB/s (10**9 bytes/s) of each candidate and np.copyto, per frag kind.

    Keys: pool_bytes, pass_bytes, chosen (:func:`~devmemtcp.channel.gather.gather_backend`),
    and per kind ("pages", "1448"): frags, frag_bytes, bytes, copyto_gbs, and
    ``NAME_gbs`` / ``NAME_ratio`` for NAME in chosen, numpy_fallback, np_take
    (pages only), torch_index_select (with torch). Each ratio is against the
    np.copyto runs alternated with that candidate (best of ``repeat`` each)."""
    from devmemtcp.channel.gather import gather_backend

    say = progress or (lambda _m: None)
    rng = np.random.default_rng(12)
    pool = rng.integers(0, 256, pool_bytes, dtype=np.uint8)
    torch: Any = None
    with contextlib.suppress(ImportError):
        import torch as _torch

        torch = _torch
    out: dict[str, Any] = {"pool_bytes": pool_bytes, "pass_bytes": pass_bytes, "chosen": gather_backend()}
    old_threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    try:
        for kind in ("pages", "1448"):
            say(f"gather: {kind} frags")
            out[kind] = _gather_kind(kind, pool, rng, torch, pass_bytes, repeat)
    finally:
        if torch is not None and old_threads:
            torch.set_num_threads(old_threads)
    return out


# ---------------------------------------------------------------------------
# Channel runs
# ---------------------------------------------------------------------------
def _count(size: int, nbytes: int) -> int:
    return max(MIN_COUNT, min(MAX_COUNT, nbytes // max(size, 1)))


def _peer(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", __name__, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], what: str, timeout: float = 300.0) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise DevmemError(f"the {what} peer did not finish in {timeout} s", "try smaller --sizes") from None
    if proc.returncode != 0:
        raise DevmemError(
            f"the {what} peer failed: {err.strip()[-800:]}", f"run python -m {__name__} by hand to see why"
        )
    return dict(json.loads(out.strip().splitlines()[-1]))


def plain_run(size: int, count: int) -> dict[str, Any]:
    """Receive ``count`` framed messages of ``size`` bytes from a plain-TCP peer."""
    dst = np.empty(size, np.uint8)
    dst.fill(0)
    dmv = dst.data
    hdr = bytearray(_PLAIN_HDR.size)
    hmv = memoryview(hdr)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
        ls.bind((HOST, 0))
        ls.listen(1)
        proc = _peer("plain", HOST, ls.getsockname()[1], size, count)
        try:
            ls.settimeout(60)
            conn, _ = ls.accept()
            with conn:
                conn.settimeout(None)
                t0 = 0.0
                for i in range(count):
                    got = 0
                    while got < _PLAIN_HDR.size:
                        k = conn.recv_into(hmv[got:])
                        if not k:
                            raise DevmemError("plain peer closed early", "see the peer")
                        got += k
                    if i == 0:
                        t0 = time.perf_counter()
                    _tag, n = _PLAIN_HDR.unpack(hdr)
                    got = 0
                    while got < n:
                        k = conn.recv_into(dmv[got:], n - got)
                        if not k:
                            raise DevmemError("plain peer closed mid-message", "see the peer")
                        got += k
                seconds = time.perf_counter() - t0
                conn.sendall(b"k")
        finally:
            _finish(proc, "plain")
    # the first message's header starts the clock: count - 1 messages and a payload are timed
    moved = size * count
    return {"bytes": moved, "seconds": seconds, "messages": count, "host_copy_bytes": moved}


def devmem_run(size: int, count: int, streams: int, dmabuf_size: int) -> dict[str, Any]:
    """Receive ``count`` messages of ``size`` bytes over a Channel from a peer process."""
    from devmemtcp.bench.stream import peak_rss, reset_peak_rss
    from devmemtcp.channel import listen

    dst = np.empty(size, np.uint8)
    dst.fill(0)
    reset_ok = reset_peak_rss()
    with listen(
        HOST,
        0,
        backend="emulated",
        streams=streams,
        dmabuf_size=dmabuf_size,
        tx_dmabuf_size=8 * abi.PAGE_SIZE * 64,
    ) as lis:
        proc = _peer("channel", HOST, lis.port, size, count, streams, dmabuf_size)
        try:
            with lis.accept(timeout=60) as ch:
                t0 = 0.0
                for i in range(count):
                    if i == 0:
                        # as the plain run: the clock starts when the first message is there
                        ch._wait(lambda: bool(ch._headers) or ch.pending > 0, ch._lost_rx(None))
                        t0 = time.perf_counter()
                    ch.recv_into(dst)
                seconds = time.perf_counter() - t0
                rss = peak_rss() if reset_ok else None
                st = ch.stats
                ch.send(np.zeros(1, np.uint8))  # tell the peer everything arrived
        finally:
            peer = _finish(proc, "channel")
    rx = st["rx"]
    return {
        "bytes": size * count,
        "seconds": seconds,
        "messages": count,
        "host_copy_bytes": rx["host_copy_bytes"],
        "frags": rx["frags"],
        "release_syscalls": rx["release_syscalls"],
        "credit_waits_peer": peer.get("credit_waits"),
        "peer_host_copy_bytes": peer.get("host_copy_bytes"),
        "stripe_unit": st["stripe_unit"],
        "rx_timeouts": st["rx_timeouts"],
        "rss_peak": rss,
    }


def _pct(xs: list[float]) -> dict[str, float]:
    """Median, 99th percentile and maximum, in microseconds, of seconds ``xs``."""
    a = np.sort(np.asarray(xs, dtype=np.float64)) * 1e6
    return {
        "median_us": round(float(np.median(a)), 1),
        "p99_us": round(float(a[min(len(a) - 1, int(len(a) * 0.99))]), 1),
        "max_us": round(float(a[-1]), 1),
    }


def latency_run(size: int = LAT_SIZE, rounds: int = LAT_ROUNDS, lone: int = LAT_LONE) -> dict[str, Any]:
    """Ping-pong of ``size``-byte messages (plain TCP with TCP_NODELAY, and the
    Channel), ``rounds`` each; then ``lone`` pairs of one-way Channel messages
    (see the module docstring). Round trips and one-way times in microseconds."""
    from devmemtcp.channel import core, listen

    buf = np.ones(size, np.uint8)
    dst = np.empty(size, np.uint8)
    hdr = bytearray(_PLAIN_HDR.size)
    # plain
    rtts: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
        ls.bind((HOST, 0))
        ls.listen(1)
        proc = _peer("plain-echo", HOST, ls.getsockname()[1], size, rounds)
        try:
            ls.settimeout(60)
            conn, _ = ls.accept()
            with conn:
                conn.settimeout(60)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i in range(rounds):
                    t0 = time.perf_counter()
                    conn.sendall(_PLAIN_HDR.pack(i, size))
                    conn.sendall(buf.data)
                    _recv_full(conn, memoryview(hdr))
                    _recv_full(conn, dst.data)
                    rtts.append(time.perf_counter() - t0)
        finally:
            _finish(proc, "plain echo")
    plain = _pct(rtts)
    # devmem
    rtts = []
    first: list[float] = []
    second: list[float] = []
    with listen(HOST, 0, backend="emulated", tx_dmabuf_size=8 * abi.PAGE_SIZE * 64) as lis:
        proc = _peer("channel-echo", HOST, lis.port, size, rounds, lone)
        try:
            with lis.accept(timeout=60) as ch:
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    ch.send(buf)
                    ch.recv_into(dst)
                    rtts.append(time.perf_counter() - t0)
                stamp = np.empty(size // 8, np.float64)
                for _ in range(lone):
                    ch.recv_into(stamp, tag=1)
                    first.append(time.perf_counter() - float(stamp[0]))
                    ch.recv_into(stamp, tag=2)
                    second.append(time.perf_counter() - float(stamp[0]))
                ch.send(np.zeros(1, np.uint8))
        finally:
            _finish(proc, "channel echo")
    dev = _pct(rtts)
    return {
        "size": size,
        "rounds": rounds,
        "plain_rtt": plain,
        "devmem_rtt": dev,
        "plain_one_way_us": round(plain["median_us"] / 2, 1),
        "devmem_one_way_us": round(dev["median_us"] / 2, 1),
        "lone": lone,
        "lone_idle": _pct(first),
        "lone_after_send": _pct(second),
        "cork_delay_us": round(getattr(core, "CORK_DELAY_S", 0.0) * 1e6, 1),
    }


def _recv_full(conn: socket.socket, mv: memoryview) -> None:
    got = 0
    n = len(mv)
    while got < n:
        k = conn.recv_into(mv[got:], n - got)
        if not k:
            raise DevmemError("the echo peer closed early", "see the peer's output")
        got += k


def _figures(r: dict[str, Any]) -> dict[str, Any]:
    secs = r["seconds"]
    return {
        **r,
        "gbps": r["bytes"] * 8 / secs / 1e9 if secs > 0 else 0.0,
        "msg_per_s": r["messages"] / secs if secs > 0 else 0.0,
        "us_per_msg": secs / r["messages"] * 1e6,
        "host_copy_per_byte": r["host_copy_bytes"] / r["bytes"] if r["bytes"] else 0.0,
    }


def run_tensor(
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    *,
    streams: int = 1,
    nbytes: int = DEFAULT_BYTES,
    dmabuf_size: int = 64 << 20,
    repeat: int = DEFAULT_REPEAT,
    gather_runs: bool = True,
    latency: bool = True,
    mem_count: int = MEM_COUNT,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the comparisons; return the JSON object.

    Per size, ``repeat`` plain and devmem runs alternate (the machine's load
    changes under both alike) and each kind's median run (by Gbit/s) is
    reported. Keys: sizes, streams, dmabuf_bytes, repeat, rows (per size:
    size, count, plain and devmem with bytes, seconds, messages,
    host_copy_bytes, gbps, msg_per_s, us_per_msg, host_copy_per_byte, and
    ``gbps_runs`` every run's Gbit/s; ratio = devmem / plain median Gbit/s),
    gather (:func:`run_gather`), latency (:func:`latency_run`, with
    ``latency``), targets, machine."""
    from devmemtcp.bench.frags import machine_info

    say = progress or (lambda _m: None)
    machine = machine_info()
    rows = []
    for size in sizes:
        count = _count(size, nbytes)
        runs: dict[str, list[dict[str, Any]]] = {"plain": [], "devmem": []}
        for i in range(repeat):
            say(f"{size} bytes x {count} ({i + 1}/{repeat}): plain TCP, devmem channel ({streams} stream(s))")
            runs["plain"].append(_figures(plain_run(size, count)))
            runs["devmem"].append(_figures(devmem_run(size, count, streams, dmabuf_size)))
        row: dict[str, Any] = {"size": size, "count": count}
        for name, rs in runs.items():
            ranked = sorted(rs, key=lambda x: x["gbps"])
            row[name] = {**ranked[len(ranked) // 2], "gbps_runs": [round(x["gbps"], 3) for x in rs]}
        row["ratio"] = row["devmem"]["gbps"] / row["plain"]["gbps"] if row["plain"]["gbps"] else None
        rows.append(row)
    # receiver memory against bytes moved: the same messages, a quarter as many and all of them
    memory: dict[str, Any] | None = None
    if mem_count >= 4:
        say(f"memory: {MEM_SIZE} bytes x {mem_count // 4} and x {mem_count}, devmem channel")
        quarter = devmem_run(MEM_SIZE, mem_count // 4, streams, dmabuf_size)
        full = devmem_run(MEM_SIZE, mem_count, streams, dmabuf_size)
        memory = {
            "size": MEM_SIZE,
            "count_quarter": mem_count // 4,
            "count": mem_count,
            "rss_peak_quarter": quarter["rss_peak"],
            "rss_peak": full["rss_peak"],
            "rss_growth_bytes": (full["rss_peak"] - quarter["rss_peak"])
            if full["rss_peak"] and quarter["rss_peak"]
            else None,
        }
    out: dict[str, Any] = {
        "memory": memory,
        "sizes": list(sizes),
        "streams": streams,
        "dmabuf_bytes": dmabuf_size,
        "repeat": repeat,
        "rows": rows,
    }
    if latency:
        say(f"latency: {LAT_SIZE}-byte ping-pong x {LAT_ROUNDS}, plain TCP and devmem; "
            f"{LAT_LONE} lone messages")
        out["latency"] = latency_run()
    if gather_runs:
        out["gather"] = run_gather(progress)
    targets: dict[str, Any] = {}
    for row in rows:
        if row["size"] >= 16 << 20:
            targets[f"ratio_{row['size']}"] = {
                "value": row["ratio"],
                "target": f">= {TARGET_LARGE}",
                "met": (row["ratio"] or 0) >= TARGET_LARGE,
            }
        if row["size"] == 4 << 10:
            targets["ratio_4096"] = {
                "value": row["ratio"],
                "target": f">= {TARGET_SMALL}",
                "met": (row["ratio"] or 0) >= TARGET_SMALL,
            }
    if memory is not None:
        growth = memory["rss_growth_bytes"]
        targets["rss_growth_bytes"] = {
            "value": growth,
            "target": f"<= {TARGET_RSS_GROWTH >> 20} MiB from a quarter of the bytes to all",
            "met": growth is not None and growth <= TARGET_RSS_GROWTH,
        }
    if gather_runs:
        g = out["gather"]
        targets["gather_pages_ratio"] = {
            "value": g["pages"]["chosen_ratio"],
            "target": f">= {TARGET_GATHER_PAGES}",
            "met": g["pages"]["chosen_ratio"] >= TARGET_GATHER_PAGES,
        }
        targets["gather_1448_ratio"] = {
            "value": g["1448"]["chosen_ratio"],
            "target": f">= {TARGET_GATHER_1448}",
            "met": g["1448"]["chosen_ratio"] >= TARGET_GATHER_1448,
        }
    out["targets"] = targets
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    out["machine"] = machine
    return out


# ---------------------------------------------------------------------------
# The peer (python -m devmemtcp.bench.tensor ...)
# ---------------------------------------------------------------------------
def _peer_plain(host: str, port: int, size: int, count: int) -> dict[str, Any]:
    payload = np.ones(size, np.uint8)
    with socket.create_connection((host, port)) as s:
        t0 = time.perf_counter()
        for i in range(count):
            s.sendall(_PLAIN_HDR.pack(i, size))
            s.sendall(payload.data)
        s.recv(1)
        return {"seconds": time.perf_counter() - t0}


def _peer_channel(
    host: str, port: int, size: int, count: int, streams: int, dmabuf_size: int
) -> dict[str, Any]:
    from devmemtcp.channel import connect

    with connect(
        host,
        port,
        backend="emulated",
        streams=streams,
        dmabuf_size=dmabuf_size,
        tx_dmabuf_size=max(2 * dmabuf_size, 2 * (-(-size // abi.PAGE_SIZE)) * abi.PAGE_SIZE + dmabuf_size),
        timeout=60,
    ) as ch:
        buf = ch.empty(size, np.uint8)
        buf.fill(1)
        t0 = time.perf_counter()
        for i in range(count):
            ch.send(buf, tag=i & 0xFF)
        ch.recv()  # the receiver's "done"
        st = ch.stats
        return {
            "seconds": time.perf_counter() - t0,
            "credit_waits": st["credit_waits"],
            "host_copy_bytes": st["tx"]["host_copy_bytes"],
        }


def _peer_plain_echo(host: str, port: int, size: int, rounds: int) -> dict[str, Any]:
    dst = np.empty(size, np.uint8)
    hdr = bytearray(_PLAIN_HDR.size)
    with socket.create_connection((host, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(rounds):
            _recv_full(s, memoryview(hdr))
            _recv_full(s, dst.data)
            s.sendall(hdr)
            s.sendall(dst.data)
    return {}


def _peer_channel_echo(host: str, port: int, size: int, rounds: int, lone: int) -> dict[str, Any]:
    from devmemtcp.channel import connect

    with connect(host, port, backend="emulated", timeout=60) as ch:
        buf = ch.empty(size, np.uint8)
        for _ in range(rounds):
            ch.recv_into(buf)
            ch.send(buf)
        stamp = np.zeros(size // 8, np.float64)
        for _ in range(lone):
            time.sleep(LAT_GAP_S)
            stamp[0] = time.perf_counter()
            ch.send(stamp, tag=1)
            time.sleep(LAT_SECOND_S)
            stamp[0] = time.perf_counter()
            ch.send(stamp, tag=2)
        ch.recv()
        return {"cork_timer_flushes": getattr(ch, "cork_timer_flushes", None)}


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[0] == "plain":
        print(json.dumps(_peer_plain(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))), flush=True)
        return 0
    if len(argv) == 5 and argv[0] == "plain-echo":
        print(json.dumps(_peer_plain_echo(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))), flush=True)
        return 0
    if len(argv) == 6 and argv[0] == "channel-echo":
        res = _peer_channel_echo(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5]))
        print(json.dumps(res), flush=True)
        return 0
    if len(argv) == 7 and argv[0] == "channel":
        print(
            json.dumps(
                _peer_channel(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5]), int(argv[6]))
            ),
            flush=True,
        )
        return 0
    print(
        f"usage: python -m {__name__} plain HOST PORT SIZE COUNT\n"
        f"       python -m {__name__} channel HOST PORT SIZE COUNT STREAMS DMABUF_SIZE\n"
        f"       python -m {__name__} plain-echo HOST PORT SIZE ROUNDS\n"
        f"       python -m {__name__} channel-echo HOST PORT SIZE ROUNDS LONE",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
