"""``devmemtcp bench torch``: the "devmem" torch.distributed backend against Gloo.

Strategy: one job of ``ranks`` processes on lo (env:// rendezvous, as
torchrun sets it up), each with the devmem process group as its default
group and a Gloo group beside it (``new_group(backend="gloo")``). For each
size the same calls run on both groups, alternating, ``repeat`` times (the
best run counts, as the stream bench does against a busy machine):

- send/recv: rank 0 sends ``iters`` tensors to rank 1 with dist.send (blocking),
  rank 1 receives them with dist.recv and answers with one small tensor; the
  time is rank 0's, from the first send to the answer;
- broadcast from rank 0; all_gather_into_tensor of ``size`` bytes per rank.

Throughput is payload bytes moved per second as Gbit/s: for send/recv and
broadcast the tensor's bytes per call, for all_gather the output's bytes
(``ranks`` x size) per call. ``ratio`` is devmem / Gloo of the best runs;
``median_ratio`` the same of the median runs, beside it so that a reader
can tell a ratio the machine's load moved. Torch is imported by the ranks
only: this module imports it inside the worker.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

DEFAULT_SIZES = (64 << 10, 1 << 20, 16 << 20, 256 << 20)
DEFAULT_BYTES = 256 << 20
#: timed runs per figure and backend, alternating, the best counts: on a shared
#: machine one backend's run may land in a disturbed moment and the other's not,
#: and the best of two swings the ratio by more than the target's margin
DEFAULT_REPEAT = 5
OPS = ("sendrecv", "broadcast", "allgather")
#: devmem send/recv must reach this fraction of Gloo's for tensors of TARGET_MIN_SIZE and more
TARGET_RATIO = 0.8
TARGET_MIN_SIZE = 1 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def iterations(size: int, nbytes: int) -> int:
    """Calls per timed run: ``nbytes`` worth, at least 2 and at most 500."""
    return max(2, min(500, nbytes // max(1, size)))


def run_torch(ranks: int = 2, sizes: Sequence[int] = DEFAULT_SIZES, *, nbytes: int = DEFAULT_BYTES,
              repeat: int = DEFAULT_REPEAT, streams: int = 1, timeout: float = 900.0,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the job; returns ``{"rows": [...], "targets": {...}, ...}``.

    Each row: ``op``, ``size`` (bytes), ``iters``, ``devmem_gbps``, ``gloo_gbps``
    (Gbit/s of the best of ``repeat`` runs), ``ratio`` (of those, what the
    target reads), ``median_ratio`` (of the medians), ``devmem_runs_gbps`` /
    ``gloo_runs_gbps`` (every run, in order), ``devmem_s`` / ``gloo_s`` (the
    best runs' seconds). Raises RuntimeError with the ranks' output when the
    job fails.
    """
    from devmemtcp.errors import DevmemError

    if ranks < 2:
        raise DevmemError(f"--ranks {ranks}: send/recv needs two ranks", "use --ranks 2 or more")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise DevmemError("bench torch needs torch", "pip install 'devmemtcp[torch]' (torch==2.13.0, CPU)") \
            from None
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="devmemtcp-bench-torch-") as tmp:
        out = os.path.join(tmp, "result.json")
        spec = {"sizes": list(sizes), "nbytes": nbytes, "repeat": repeat, "out": out}
        procs = []
        logs = []
        for r in range(ranks):
            env = dict(os.environ)
            env.setdefault("DEVMEMTCP_EMU_DIR", os.path.join(tmp, "emu"))
            env.setdefault("DEVMEMTCP_JOURNAL_DIR", os.path.join(tmp, "journal"))
            env.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), DEVMEMTCP_STREAMS=str(streams),
                       DEVMEMTCP_BENCH_SPEC=json.dumps(spec), OMP_NUM_THREADS="1")
            log = open(os.path.join(tmp, f"rank{r}.log"), "w+")  # noqa: SIM115 (closed below)
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, "-m", "devmemtcp.bench.torchdist"], env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
        if progress:
            progress(f"{ranks} ranks on lo, sizes {', '.join(_size(s) for s in sizes)}, best of {repeat}")
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        texts = []
        for log in logs:
            log.seek(0)
            texts.append(log.read())
            log.close()
        if any(p.returncode != 0 for p in procs) or not os.path.exists(out):
            detail = "\n".join(f"--- rank {r} (exit {p.returncode}) ---\n{t[-3000:]}"
                               for r, (p, t) in enumerate(zip(procs, texts, strict=True)))
            raise RuntimeError(f"bench torch: the job failed\n{detail}")
        with open(out) as f:
            res: dict[str, Any] = json.load(f)
    rows = res["rows"]
    sr = [r for r in rows if r["op"] == "sendrecv" and r["size"] >= TARGET_MIN_SIZE]
    worst = min((r["ratio"] for r in sr), default=None)
    res["targets"] = {
        f"send/recv devmem/gloo, >= {_size(TARGET_MIN_SIZE)} (worst size)": {
            "value": worst if worst is not None else "n/a", "target": f">= {TARGET_RATIO}",
            "met": worst is not None and worst >= TARGET_RATIO},
    }
    res["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "kernel": platform.release(), "loadavg": round(os.getloadavg()[0], 2)}
    res.update(ranks=ranks, streams=streams, repeat=repeat, nbytes=nbytes)
    return res


def _size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


# ---------------------------------------------------------------------------
# The ranks
# ---------------------------------------------------------------------------


def _worker() -> None:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    import devmemtcp.torch as dtorch

    spec = json.loads(os.environ["DEVMEMTCP_BENCH_SPEC"])
    dist.init_process_group(dtorch.BACKEND_NAME, timeout=timedelta(seconds=300))
    rank, world = dist.get_rank(), dist.get_world_size()
    devmem = dist.group.WORLD
    gloo = dist.new_group(backend="gloo")
    sync = dist.new_group(backend="gloo")
    ack = torch.zeros(1)

    def once(op: str, group: Any, size: int, iters: int) -> float:
        t = torch.full((size,), rank % 251, dtype=torch.uint8)
        out = torch.empty(world * size, dtype=torch.uint8) if op == "allgather" else None
        dist.barrier(group=sync)
        t0 = time.perf_counter()
        if op == "sendrecv":
            if rank == 0:
                for _ in range(iters):
                    dist.send(t, 1, group=group)
                dist.recv(ack, 1, group=group)
            elif rank == 1:
                for _ in range(iters):
                    dist.recv(t, 0, group=group)
                dist.send(ack, 0, group=group)
        elif op == "broadcast":
            for _ in range(iters):
                dist.broadcast(t, 0, group=group)
        else:
            for _ in range(iters):
                dist.all_gather_into_tensor(out, t, group=group)
        if op != "sendrecv":
            dist.barrier(group=sync)
        return time.perf_counter() - t0

    rows = []
    for size in spec["sizes"]:
        iters = iterations(size, spec["nbytes"])
        for op in OPS:
            once(op, devmem, size, 1)  # warm: links open, buffers touched
            once(op, gloo, size, 1)
            runs: dict[str, list[float]] = {"devmem": [], "gloo": []}
            for _ in range(spec["repeat"]):
                for name, g in (("devmem", devmem), ("gloo", gloo)):
                    runs[name].append(once(op, g, size, iters))
            moved = size * iters * (world if op == "allgather" else 1)
            gbps = {k: [moved * 8 / t / 1e9 for t in v] for k, v in runs.items()}
            dg, gg = max(gbps["devmem"]), max(gbps["gloo"])
            # the best run is the figure; the medians show how far a busy machine moved it
            median_ratio = statistics.median(gbps["devmem"]) / statistics.median(gbps["gloo"])
            rows.append({"op": op, "size": size, "iters": iters, "devmem_gbps": round(dg, 3),
                         "gloo_gbps": round(gg, 3), "ratio": round(dg / gg, 3),
                         "median_ratio": round(median_ratio, 3),
                         "devmem_runs_gbps": [round(x, 3) for x in gbps["devmem"]],
                         "gloo_runs_gbps": [round(x, 3) for x in gbps["gloo"]],
                         "devmem_s": round(min(runs["devmem"]), 4), "gloo_s": round(min(runs["gloo"]), 4)})
            if rank == 0:
                print(f"bench: {op} {_size(size)}: devmem {dg:.2f} Gbit/s, gloo {gg:.2f} Gbit/s", flush=True)
    pg = devmem
    links = pg.link_stats() if isinstance(pg, dtorch.DevmemProcessGroup) else {}
    if rank == 0:
        with open(spec["out"], "w") as f:
            json.dump({"rows": rows, "links": {str(k): v for k, v in links.items()},
                       "torch": torch.__version__}, f)
    dist.barrier(group=sync)
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker()
