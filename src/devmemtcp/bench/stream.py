"""``devmemtcp bench stream``: loopback throughput, raw Python TCP against the emulated devmem path.

All runs of one comparison face the same far end, a separate process
(:mod:`devmemtcp.bench.peer`), so they differ only in the code measured.
Each raw baseline does the same transfer as the devmem path with plain socket
calls (same socket options, same bytes offered per call, same buffer
footprint), so a ratio isolates what the devmem machinery costs:

- receive: the peer sends ``nbytes`` of ncdevmem's pattern with plain
  ``socket.send``; this process receives it (1) raw, ``recv_into`` one fixed
  buffer as long as the Receiver's iov (1600 pages) with the same SO_RCVLOWAT
  :func:`devmemtcp.transfer.receive_stream` sets, and (2) with
  ``receive_stream`` on the emulated devmem NIC over ``lo`` (NIC setup,
  bind-rx, the Receiver, token release), once without and once with
  ``--validate`` (pattern checked in the dma-buf at the fragment offsets).
- send: the peer drains the connection into a fixed buffer; this process
  sends (1) raw, ``socket.send`` from a fixed buffer the size of the dma-buf
  (the pattern, sent round and round) in calls of the size ``send_stream``
  gives one sendmsg, and (2) with :func:`devmemtcp.transfer.send_stream` on
  the emulated NIC (bind-tx, the Sender's dma-buf offset iovecs and zerocopy
  completions). Send throughput is what the peer measures (first byte to
  EOF) for both.
- plain: for reference, a raw run of each direction with a hot 1 MiB buffer
  and default socket options (``*_plain_gbps``; not a target).

Runs are interleaved (raw, emulated, raw, ...) ``repeat`` times and the
median of each kind is reported, because loopback on a shared 2-core machine
is noisy. With ``pin`` (default, on two or more CPUs) this process runs on
one CPU and the peer on another for every run, raw and devmem alike, as
iperf3 -A does. Throughput: Gbit/s = bytes * 8 / seconds / 1e9.

Memory: the peak resident set (``VmHWM`` of /proc/self/status, reset before
each run by writing 5 to /proc/self/clear_refs) of this process during each
emulated receive; a run of a quarter of the bytes is compared with the full
runs to show that the receiver's memory does not grow with the bytes moved.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from devmemtcp import abi
from devmemtcp.bench import peer as peer_mod
from devmemtcp.errors import DevmemError

if TYPE_CHECKING:
    from devmemtcp.memory.base import DmaBuf

DEFAULT_BYTES = 1 << 30
DEFAULT_VALIDATE = 7
DEFAULT_REPEAT = 5
#: dma-buf of the emulated runs: ncdevmem's 16000 pages (62.5 MiB), as devmemtcp recv/send.
DEFAULT_DMABUF_SIZE = 16000 * abi.PAGE_SIZE
SEND_CHUNK = 1 << 20
#: buffer of the plain raw runs (bytes): hot in cache, default socket options
PLAIN_BUF = 1 << 20
HOST = "127.0.0.1"
SAMPLE_EVERY_S = 0.02

#: NicSetup refuses an interface another running devmemtcp has configured; the
#: benchmark waits up to BUSY_WAIT_S seconds for it to finish.
BUSY_TEXT = "already configured by a running devmemtcp"
BUSY_WAIT_S = 120.0

TARGET_RATIO = 0.85
TARGET_VALIDATE_COST = 0.25
#: "receiver resident memory independent of bytes transferred": the peak RSS of a
#: full run may exceed that of a quarter-size run by allocator noise only.
TARGET_RSS_GROWTH = 16 << 20


@dataclass
class Run:
    """One transfer: ``kind`` (raw_recv, emulated_recv, emulated_recv_validated,
    raw_send, emulated_send), bytes, seconds, Gbit/s, ``rss_peak`` (bytes,
    emulated receive only), ``samples`` ([seconds, bytes] along the run)."""

    kind: str
    bytes: int
    seconds: float
    rss_peak: int | None = None
    samples: list[list[float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "bytes": self.bytes, "seconds": round(self.seconds, 6),
                             "gbps": round(self.gbps, 4)}
        if self.rss_peak is not None:
            d["rss_peak"] = self.rss_peak
        d.update(self.extra)
        d["samples"] = [[round(t, 4), int(b)] for t, b in self.samples]
        return d


# ---------------------------------------------------------------------------
# Peak RSS of this process
# ---------------------------------------------------------------------------
def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0,
    Documentation/filesystems/proc.rst, clear_refs value 5). False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """VmHWM of this process in bytes (peak resident set since start or last reset)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise DevmemError("no VmHWM in /proc/self/status", "bench stream needs Linux procfs")


class _Sampler:
    """``[seconds, bytes]`` every ~20 ms, fed by a progress callback (cheap per call)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.samples: list[list[float]] = []
        self._next = self.t0 + SAMPLE_EVERY_S

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self._next = self.t0 + SAMPLE_EVERY_S

    def __call__(self, total: int) -> None:
        now = time.perf_counter()
        if now >= self._next:
            self.samples.append([now - self.t0, total])
            self._next = now + SAMPLE_EVERY_S


# ---------------------------------------------------------------------------
# Peer processes
# ---------------------------------------------------------------------------
#: CPU the peer processes run on while :func:`pinned` is active (None: anywhere).
_peer_cpu: int | None = None


@contextlib.contextmanager
def pinned(enabled: bool = True) -> Iterator[tuple[int, int] | None]:
    """Run this process on one CPU and the peers it starts on another (the
    two highest CPUs this process may use); yields ``(self_cpu, peer_cpu)``,
    or None when ``enabled`` is False or fewer than two CPUs are allowed.
    The affinity is restored on exit."""
    global _peer_cpu
    allowed = sorted(os.sched_getaffinity(0))
    if not enabled or len(allowed) < 2:
        yield None
        return
    mine, peer = allowed[-1], allowed[-2]
    os.sched_setaffinity(0, {mine})
    _peer_cpu = peer
    try:
        yield mine, peer
    finally:
        _peer_cpu = None
        os.sched_setaffinity(0, set(allowed))


def _popen(args: list[str]) -> subprocess.Popen[str]:
    cpu = _peer_cpu
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu})))


def _peer_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", peer_mod.__name__, *map(str, args)]


def _start_sender(port: int, nbytes: int, period: int) -> subprocess.Popen[str]:
    return _popen(_peer_cmd("send", HOST, port, nbytes, period, SEND_CHUNK))


def _finish(proc: subprocess.Popen[str], what: str, timeout: float = 120.0) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise DevmemError(f"the benchmark's {what} peer did not finish in {timeout} s",
                          "is the machine overloaded? try a smaller --bytes") from None
    if proc.returncode != 0:
        raise DevmemError(f"the benchmark's {what} peer failed: {err.strip()[-500:]}",
                          "run python -m devmemtcp.bench.peer by hand to see why")
    return dict(json.loads(out.strip().splitlines()[-1]))


@contextlib.contextmanager
def _sink(count: int) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    proc = _popen(_peer_cmd("sink", HOST, count))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip():
            err = proc.stderr.read() if proc.stderr else ""
            raise DevmemError(f"the benchmark's sink peer did not start: {err.strip()[-500:]}",
                              "run python -m devmemtcp.bench.peer sink 127.0.0.1 1 by hand")
        yield int(line), proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _sink_result(proc: subprocess.Popen[str], timeout: float = 120.0) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()
    if not line.strip() or time.monotonic() > deadline:
        raise DevmemError("the benchmark's sink peer stopped without a result",
                          "run python -m devmemtcp.bench.peer sink 127.0.0.1 1 by hand")
    return dict(json.loads(line))


# ---------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------
def recv_call_bytes() -> int:
    """Bytes the Receiver offers each recvmsg (its iov: one page per cmsg of its control buffer)."""
    from devmemtcp.rx import DEFAULT_CONTROL_SIZE

    return DEFAULT_CONTROL_SIZE // abi.DMABUF_CMSG_SPACE * abi.PAGE_SIZE


def raw_recv(nbytes: int, period: int, bufsize: int = PLAIN_BUF, rcvlowat: int = 0,
             kind: str = "raw_recv") -> Run:
    """Receive ``nbytes`` from a peer sender with plain ``recv_into`` one fixed
    buffer of ``bufsize`` bytes, SO_RCVLOWAT ``rcvlowat`` (0: the default)."""
    raw = bytearray(bufsize)
    # fault its pages in before timing: the devmem runs reuse a dma-buf the warm-up touched
    np.frombuffer(raw, np.uint8).fill(1)
    buf = memoryview(raw)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lsock:
        lsock.bind((HOST, 0))
        lsock.listen(1)
        proc = _start_sender(lsock.getsockname()[1], nbytes, period)
        try:
            lsock.settimeout(60)
            conn, _ = lsock.accept()
            conn.settimeout(None)
            if rcvlowat > 1:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, rcvlowat)
            with conn:
                sampler = _Sampler()
                total = 0
                recv_into = conn.recv_into
                while True:
                    k = recv_into(buf)
                    if not k:
                        break
                    total += k
                    sampler(total)
                seconds = time.perf_counter() - sampler.t0
        finally:
            sent = _finish(proc, "sender")
    if total != nbytes or sent["bytes"] != nbytes:
        raise DevmemError(f"raw receive got {total} of {nbytes} bytes", "the loopback connection broke")
    samples = sampler.samples
    if not samples or samples[-1][1] != total:
        samples.append([seconds, total])
    return Run(kind, total, seconds, samples=samples, extra={"buffer_bytes": bufsize, "rcvlowat": rcvlowat})


def emulated_recv(nbytes: int, period: int, validate: int | None, kind: str,
                  dmabuf_size: int | None = None, memory: DmaBuf | None = None) -> Run:
    """Receive ``nbytes`` from a peer sender through the emulated devmem NIC on lo,
    into ``memory`` (a dma-buf the caller keeps across runs, as an application
    would) or a new host dma-buf of ``dmabuf_size`` bytes.

    If another running devmemtcp has lo configured (NicSetup's undo journal),
    waits up to ``BUSY_WAIT_S`` seconds for it before giving up."""
    from devmemtcp.transfer import receive_stream

    procs: list[subprocess.Popen[str]] = []
    sampler = _Sampler()

    def on_ready(port: int) -> None:
        procs.append(_start_sender(port, nbytes, period))
        sampler.start()

    reset_ok = reset_peak_rss()
    waited = 0.0
    while True:
        try:
            res = receive_stream(HOST, 0, backend="emulated", validate=validate, accept_timeout=60,
                                 memory=memory or "host", size=dmabuf_size or DEFAULT_DMABUF_SIZE,
                                 on_ready=on_ready,
                                 on_progress=sampler)
            break
        except DevmemError as exc:
            # another devmemtcp process has lo set up (NicSetup's undo journal): wait for it
            if BUSY_TEXT not in exc.message or waited >= BUSY_WAIT_S or procs:
                raise
            time.sleep(0.5)
            waited += 0.5
        except BaseException:
            for p in procs:
                p.kill()
                p.communicate()
            raise
    ended = time.perf_counter() - sampler.t0
    for p in procs:
        _finish(p, "sender")
    rss = peak_rss() if reset_ok else None
    if res.bytes != nbytes:
        raise DevmemError(f"emulated receive got {res.bytes} of {nbytes} bytes", "see devmemtcp recv")
    # the sampler started when the receiver was ready; receive_stream's clock starts at accept
    shift = max(0.0, ended - res.seconds)
    samples = [[t - shift, b] for t, b in sampler.samples if t >= shift]
    if not samples or samples[-1][1] != res.bytes:
        samples.append([res.seconds, res.bytes])
    return Run(kind, res.bytes, res.seconds, rss_peak=rss, samples=samples,
               extra={"frags": res.frags, "release_syscalls": res.release_syscalls,
                      "tokens_released": res.tokens_released, "validated": res.validated,
                      "rcvlowat": res.rcvlowat})


def raw_send(nbytes: int, period: int, port: int, sink: subprocess.Popen[str], footprint: int = PLAIN_BUF,
             per_call: int | None = None, kind: str = "raw_send") -> Run:
    """Send ``nbytes`` of the pattern with ``socket.send`` to the sink peer, from
    one fixed buffer of about ``footprint`` bytes (whole pattern periods, sent
    round and round), at most ``per_call`` bytes per call (None: the buffer)."""
    buf = memoryview(peer_mod.pattern_buffer(period, footprint).data)
    n = len(buf)
    step = per_call or n
    with socket.create_connection((HOST, port)) as s:
        t0 = time.perf_counter()
        sent = 0
        pos = 0
        send = s.send
        while sent < nbytes:
            k = send(buf[pos:min(n, pos + step, pos + nbytes - sent)])
            sent += k
            pos = (pos + k) % n
        s.shutdown(socket.SHUT_WR)
        local = time.perf_counter() - t0
    got = _sink_result(sink)
    if got["bytes"] != nbytes:
        raise DevmemError(f"the sink got {got['bytes']} of {nbytes} bytes", "the loopback connection broke")
    return Run(kind, got["bytes"], got["seconds"], samples=got["samples"],
               extra={"sender_seconds": round(local, 6), "buffer_bytes": n, "bytes_per_call": min(step, n)})


def emulated_send(nbytes: int, period: int, port: int, sink: subprocess.Popen[str],
                  dmabuf_size: int | None = None, memory: DmaBuf | None = None) -> Run:
    """Send ``nbytes`` of the pattern through the emulated devmem NIC (Sender) to
    the sink peer, from ``memory`` (kept across runs) or a new host dma-buf."""
    from devmemtcp.transfer import send_stream

    res = send_stream(HOST, port, nbytes=nbytes, validate=period, backend="emulated",
                      memory=memory or "host", size=dmabuf_size or DEFAULT_DMABUF_SIZE)
    got = _sink_result(sink)
    if got["bytes"] != nbytes:
        raise DevmemError(f"the sink got {got['bytes']} of {nbytes} bytes", "see devmemtcp send")
    return Run("emulated_send", got["bytes"], got["seconds"], samples=got["samples"],
               extra={"sender_seconds": round(res.seconds, 6), "completions": res.completions})


def _median(runs: list[Run]) -> float:
    return float(statistics.median(r.gbps for r in runs))


def run_stream(
    nbytes: int = DEFAULT_BYTES,
    validate: int = DEFAULT_VALIDATE,
    *,
    repeat: int = DEFAULT_REPEAT,
    dmabuf_size: int | None = None,
    pin: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the receive and send comparisons; return the JSON object.

    Args:
        nbytes: bytes per run. validate: pattern period N for the validated
            receive (and the pattern every sender sends). repeat: runs of
            each kind (medians reported). dmabuf_size: bytes of the emulated
            runs' dma-buf. pin: this process on one CPU, the peers on another.

    Keys: bytes, validate, repeat, dmabuf_bytes, pinned ([self, peer] CPUs or
    None), baseline (what the raw runs did), raw_recv_gbps, emulated_recv_gbps,
    recv_ratio, emulated_recv_validated_gbps, validate_cost (1 - validated /
    unvalidated emulated Gbit/s), raw_send_gbps, emulated_send_gbps,
    send_ratio, raw_recv_plain_gbps / raw_send_plain_gbps and
    recv_ratio_vs_plain / send_ratio_vs_plain (a hot 1 MiB buffer, default
    socket options), rss_bytes_peak (unvalidated full runs),
    rss_bytes_peak_validated, rss_bytes_peak_quarter (an unvalidated run of
    nbytes/4 after the full ones), rss_growth_bytes (full minus quarter run),
    targets, runs (every run with its samples, the first a warm-up), machine.

    Raises DevmemError for bad arguments or a failed transfer.
    """
    from devmemtcp.bench.frags import machine_info
    from devmemtcp.memory.memfd import MemfdBuffer
    from devmemtcp.transfer import auto_rcvlowat, send_region_size

    if nbytes <= 0:
        raise DevmemError(f"--bytes {nbytes} must be positive", "use e.g. --bytes 1G")
    if validate < 2 or validate > 256:
        raise DevmemError(f"--validate {validate} must be in 2..256", "use e.g. --validate 7")
    if repeat < 1:
        raise DevmemError(f"--repeat {repeat} must be at least 1", "use e.g. --repeat 3")
    dmabuf = dmabuf_size or DEFAULT_DMABUF_SIZE
    if dmabuf <= 0 or dmabuf % abi.PAGE_SIZE:
        raise DevmemError(f"--dmabuf-size {dmabuf} is not a positive multiple of {abi.PAGE_SIZE}",
                          "use e.g. --dmabuf-size 8M")
    say = progress or (lambda _msg: None)
    machine = machine_info()
    runs: list[Run] = []
    # the raw baselines' transfer shape: what the devmem path does per call
    recv_buf, lowat = recv_call_bytes(), auto_rcvlowat(dmabuf)
    usable = dmabuf - dmabuf % validate
    per_send = send_region_size(usable)
    baseline = {"recv": {"buffer_bytes": recv_buf, "rcvlowat": lowat},
                "send": {"buffer_bytes": usable, "bytes_per_call": per_send},
                "plain": {"buffer_bytes": PLAIN_BUF, "rcvlowat": 0}}

    quarter = max(nbytes // 4, 1 << 20)
    with pinned(pin) as cpus, MemfdBuffer(dmabuf) as rx_mem, MemfdBuffer(dmabuf) as tx_mem:
        # one dma-buf per direction for every run, as an application keeps its device memory
        # (the warm-up run touches the receive side's pages first, as the raw runs' buffers are)
        if cpus:
            say(f"pinned: this process on CPU {cpus[0]}, the peer on CPU {cpus[1]}")
        say(f"warm-up: emulated receive of {quarter} bytes")
        runs.append(emulated_recv(quarter, validate, None, "emulated_recv_warmup", dmabuf, rx_mem))
        for i in range(repeat):
            say(f"receive round {i + 1}/{repeat}")
            runs.append(raw_recv(nbytes, validate, recv_buf, lowat))
            runs.append(emulated_recv(nbytes, validate, None, "emulated_recv", dmabuf, rx_mem))
            runs.append(emulated_recv(nbytes, validate, validate, "emulated_recv_validated", dmabuf, rx_mem))
            runs.append(raw_recv(nbytes, validate, PLAIN_BUF, 0, kind="raw_recv_plain"))
        say(f"memory: emulated receive of {quarter} bytes")
        small = emulated_recv(quarter, validate, None, "emulated_recv_quarter", dmabuf, rx_mem)
        runs.append(small)
        with _sink(3 * repeat) as (port, sink):
            for i in range(repeat):
                say(f"send round {i + 1}/{repeat}")
                runs.append(raw_send(nbytes, validate, port, sink, usable, per_send))
                runs.append(emulated_send(nbytes, validate, port, sink, dmabuf, tx_mem))
                runs.append(raw_send(nbytes, validate, port, sink, PLAIN_BUF, kind="raw_send_plain"))

    def of(kind: str) -> list[Run]:
        return [r for r in runs if r.kind == kind]

    raw_r, emu_r, emu_v = _median(of("raw_recv")), _median(of("emulated_recv")), _median(
        of("emulated_recv_validated"))
    raw_s, emu_s = _median(of("raw_send")), _median(of("emulated_send"))
    plain_r, plain_s = _median(of("raw_recv_plain")), _median(of("raw_send_plain"))
    full_rss = [r.rss_peak for r in of("emulated_recv") if r.rss_peak]
    val_rss = [r.rss_peak for r in of("emulated_recv_validated") if r.rss_peak]
    rss_peak = max(full_rss) if full_rss else None
    out: dict[str, Any] = {
        "bytes": nbytes,
        "validate": validate,
        "repeat": repeat,
        "dmabuf_bytes": dmabuf,
        "pinned": list(cpus) if cpus else None,
        "baseline": baseline,
        "raw_recv_gbps": round(raw_r, 4),
        "emulated_recv_gbps": round(emu_r, 4),
        "recv_ratio": round(emu_r / raw_r, 4) if raw_r else None,
        "emulated_recv_validated_gbps": round(emu_v, 4),
        "validate_cost": round(1 - emu_v / emu_r, 4) if emu_r else None,
        "raw_send_gbps": round(raw_s, 4),
        "emulated_send_gbps": round(emu_s, 4),
        "send_ratio": round(emu_s / raw_s, 4) if raw_s else None,
        "raw_recv_plain_gbps": round(plain_r, 4),
        "recv_ratio_vs_plain": round(emu_r / plain_r, 4) if plain_r else None,
        "raw_send_plain_gbps": round(plain_s, 4),
        "send_ratio_vs_plain": round(emu_s / plain_s, 4) if plain_s else None,
        "rss_bytes_peak": rss_peak,
        "rss_bytes_peak_validated": max(val_rss) if val_rss else None,
        "rss_bytes_peak_quarter": small.rss_peak,
        "rss_growth_bytes": (rss_peak - small.rss_peak) if rss_peak and small.rss_peak else None,
    }
    out["targets"] = {
        "recv_ratio": {"value": out["recv_ratio"], "target": f">= {TARGET_RATIO}",
                       "met": (out["recv_ratio"] or 0) >= TARGET_RATIO},
        "send_ratio": {"value": out["send_ratio"], "target": f">= {TARGET_RATIO}",
                       "met": (out["send_ratio"] or 0) >= TARGET_RATIO},
        "validate_cost": {"value": out["validate_cost"], "target": f"<= {TARGET_VALIDATE_COST}",
                          "met": out["validate_cost"] is not None
                          and out["validate_cost"] <= TARGET_VALIDATE_COST},
        "rss_growth_bytes": {"value": out["rss_growth_bytes"],
                             "target": f"<= {TARGET_RSS_GROWTH >> 20} MiB from a quarter of the bytes to all",
                             "met": out["rss_growth_bytes"] is not None
                             and out["rss_growth_bytes"] <= TARGET_RSS_GROWTH},
    }
    out["runs"] = [r.as_dict() for r in runs]
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    out["machine"] = machine
    return out
