"""One rank of a torch.distributed test job (run by tests/e2e/torch_job.py or torchrun).

    python torch_worker.py SCENARIO     # RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from the env

The backend under test is "devmem" (TORCH_TEST_TRANSPORT=channel, default)
or the same process group on the plain-socket test transport
(TORCH_TEST_TRANSPORT=tcp). Each scenario checks its results against Gloo
(an extra new_group(backend="gloo") in the same job) or against values
every rank can compute, and writes one JSON line to TORCH_TEST_OUT.
A failed check raises, so the rank exits non-zero with the traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import devmemtcp.torch as dtorch
from devmemtcp.torch.process_group import DevmemProcessGroup

RANK = int(os.environ["RANK"])
WORLD = int(os.environ["WORLD_SIZE"])


def _tcp_factory(dist_opts: Any, options: Any = None) -> DevmemProcessGroup:
    from torch_tcp_transport import TcpTransport

    return DevmemProcessGroup(dist_opts.store, dist_opts.group_rank, dist_opts.group_size,
                              dist_opts.timeout, options,
                              transport=TcpTransport(os.environ.get("DEVMEMTCP_ADDR", "127.0.0.1")))


def init(timeout: float = 60.0) -> str:
    name = "devmem"
    if os.environ.get("TORCH_TEST_TRANSPORT", "channel") == "tcp":
        name = "devmemtcptest"
        if name.upper() not in dist.Backend._plugins:
            dist.Backend.register_backend(name, _tcp_factory, extended_api=True, devices=["cpu"])
    dist.init_process_group(name, timeout=timedelta(seconds=timeout))
    return name


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(f"rank {RANK}: {what}")


def equal(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    check(a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f"{what}: {a} != {b}")


ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64, torch.complex128,
              torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool, torch.uint16,
              torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2]


def sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    nbytes = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (nbytes,),
                        dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        return (raw % 2).bool().reshape(shape)
    t = raw.view(dtype).reshape(shape)
    if dtype.is_floating_point or dtype.is_complex:
        # NaN payloads compare unequal: keep the values finite and ordinary.
        t = torch.where(torch.isfinite(t.float() if not dtype.is_complex else t.abs()), t,
                        torch.zeros((), dtype=dtype))
    return t


# ---------------------------------------------------------------------------


def scenario_p2p() -> dict[str, Any]:
    init()
    peer = 1 - RANK if RANK < 2 else None
    n = 0
    if peer is not None:
        shapes: list[tuple[int, ...]] = [(), (0,), (7,), (3, 5), (2, 3, 4), (1000, 33)]
        for i, dt in enumerate(ALL_DTYPES):
            for j, shape in enumerate(shapes):
                seed = 1000 * i + j
                if RANK == 0:
                    dist.send(sample(dt, shape, seed), 1)
                    got = torch.empty(shape, dtype=dt)
                    dist.recv(got, 1, tag=5)
                else:
                    got = torch.empty(shape, dtype=dt)
                    dist.recv(got, 0)
                    dist.send(got, 0, tag=5)
                equal(got, sample(dt, shape, seed), f"{dt}{shape}")
                n += 1
        # Non-contiguous source and destination.
        base = torch.arange(600, dtype=torch.float32).reshape(20, 30)
        if RANK == 0:
            dist.send(base.t(), 1)
            dist.send(base[::2, 1::3], 1)
        else:
            a = torch.empty(30, 20)
            dist.recv(a, 0)
            equal(a, base.t().contiguous(), "transposed source")
            b = torch.zeros(20, 10)[::2]  # non-contiguous destination
            check(not b.is_contiguous(), "destination should be non-contiguous")
            dist.recv(b, 0)
            equal(b, base[::2, 1::3].contiguous(), "non-contiguous destination")
        # Tags received in the opposite order of sending.
        if RANK == 0:
            w1 = dist.isend(torch.full((4,), 1.0), 1, tag=1)
            w2 = dist.isend(torch.full((4,), 2.0), 1, tag=2)
            w1.wait()
            w2.wait()
        else:
            r2 = torch.empty(4)
            r1 = torch.empty(4)
            dist.recv(r2, 0, tag=2)
            dist.recv(r1, 0, tag=1)
            equal(r1, torch.full((4,), 1.0), "tag 1")
            equal(r2, torch.full((4,), 2.0), "tag 2")
        # Receive from any source.
        if RANK == 0:
            dist.send(torch.tensor([42]), 1, tag=9)
        else:
            x = torch.empty(1, dtype=torch.int64)
            src = dist.recv(x, tag=9)
            check(src == 0 and int(x) == 42, f"recv from any source: src={src} x={x}")
        # Work API.
        if RANK == 0:
            time.sleep(0.3)
            dist.send(torch.ones(3), 1, tag=11)
        else:
            out = torch.empty(3)
            w = dist.irecv(out, 0, tag=11)
            check(not w.is_completed(), "irecv completed before the send")
            fut = w.get_future()
            check(isinstance(fut, torch.futures.Future), "get_future type")
            check(w.wait(timeout=timedelta(seconds=10)) is True, "wait returns True")
            check(w.is_completed() and w.is_success(), "completed")
            equal(fut.wait()[0], torch.ones(3), "future value")
        # Mismatched dtype and size: clear errors naming the sender; the link keeps working.
        if RANK == 0:
            dist.send(torch.ones(4, dtype=torch.float64), 1, tag=20)
            dist.send(torch.ones(5), 1, tag=21)
            dist.send(torch.ones(2), 1, tag=22)
        else:
            for tag, t, words in ((20, torch.empty(4), "float64"), (21, torch.empty(4), "20 bytes")):
                try:
                    dist.recv(t, 0, tag=tag)
                except RuntimeError as exc:
                    check("rank 0" in str(exc) and words in str(exc), f"mismatch error text: {exc}")
                else:
                    raise AssertionError("a mismatched receive did not raise")
            ok = torch.empty(2)
            dist.recv(ok, 0, tag=22)
            equal(ok, torch.ones(2), "link after a mismatch")
    # batch_isend_irecv ring over every rank, several rounds.
    for rnd in range(3):
        send = torch.arange(1000, dtype=torch.int32) + 1000 * RANK + rnd
        recv = torch.empty_like(send)
        ops = [dist.P2POp(dist.isend, send, (RANK + 1) % WORLD),
               dist.P2POp(dist.irecv, recv, (RANK - 1) % WORLD)]
        for w in dist.batch_isend_irecv(ops):
            w.wait()
        equal(recv, torch.arange(1000, dtype=torch.int32) + 1000 * ((RANK - 1) % WORLD) + rnd, "ring")
    dist.barrier()
    dist.destroy_process_group()
    return {"cases": n}


def _collective_cases(group: Any) -> list[torch.Tensor]:
    """Every byte-moving collective on ``group``; returns the outputs to compare."""
    out: list[torch.Tensor] = []
    r = dist.get_rank(group)
    w = dist.get_world_size(group)
    for root in range(min(w, 2)):
        t = torch.arange(10, dtype=torch.float64) * (r + 1)
        dist.broadcast(t, root, group=group)
        out.append(t)
    x = torch.arange(6, dtype=torch.int64).reshape(2, 3) + 10 * r
    lst = [torch.empty_like(x) for _ in range(w)]
    dist.all_gather(lst, x, group=group)
    out += lst
    big = torch.empty(w * 2, 3, dtype=torch.int64)
    dist.all_gather_into_tensor(big, x, group=group)
    out.append(big)
    gl = [torch.empty_like(x) for _ in range(w)] if r == 0 else None
    dist.gather(x, gl, dst=0, group=group)
    out += gl or []
    s = torch.empty(3, dtype=torch.float32)
    sl = [torch.full((3,), float(i) + 0.5) for i in range(w)] if r == 1 % w else None
    dist.scatter(s, sl, src=1 % w, group=group)
    out.append(s)
    ins = [torch.full((2,), float(10 * r + i)) for i in range(w)]
    outs = [torch.empty(2) for _ in range(w)]
    dist.all_to_all(outs, ins, group=group)
    out += outs
    a = torch.arange(w * 4, dtype=torch.int32) + 100 * r
    b = torch.empty_like(a)
    dist.all_to_all_single(b, a, group=group)
    out.append(b)
    # Uneven splits: rank r sends i+1 rows to rank i.
    insplit = [i + 1 for i in range(w)]
    outsplit = [r + 1] * w
    a = torch.arange(sum(insplit) * 2, dtype=torch.float32).reshape(-1, 2) + 1000 * r
    b = torch.empty(sum(outsplit), 2)
    dist.all_to_all_single(b, a, outsplit, insplit, group=group)
    out.append(b)
    ar = torch.arange(5, dtype=torch.float32) + r
    dist.all_reduce(ar, group=group)
    out.append(ar)
    objs: list[Any] = [None] * w
    dist.all_gather_object(objs, {"rank": r}, group=group)
    out.append(torch.tensor([o["rank"] for o in objs]))
    return out


def _links() -> dict[str, Any]:
    from torch.distributed.distributed_c10d import _get_default_group

    pg = _get_default_group()
    return {str(k): v for k, v in pg.link_stats().items()} if isinstance(pg, DevmemProcessGroup) else {}


def scenario_collectives() -> dict[str, Any]:
    init()
    gloo = dist.new_group(backend="gloo")
    mine = _collective_cases(None)
    links = _links()
    ref = _collective_cases(gloo)
    check(len(mine) == len(ref), "same number of outputs")
    for i, (a, b) in enumerate(zip(mine, ref, strict=True)):
        equal(a, b, f"collective output {i}")
    # The coalesced into-tensor form (what functional all_gather_tensor uses).
    import torch.distributed._functional_collectives as fcol

    x = torch.arange(4, dtype=torch.float32) + RANK
    g = fcol.all_gather_tensor(x, 0, dist.group.WORLD)
    g = torch.ops._c10d_functional.wait_tensor(g)
    want = torch.cat([torch.arange(4, dtype=torch.float32) + i for i in range(WORLD)])
    equal(g, want, "functional all_gather")
    outs = [[torch.empty(3), torch.empty(2)] for _ in range(WORLD)]
    ins = [torch.full((3,), float(RANK)), torch.tensor([RANK, -RANK], dtype=torch.float32)]
    dist.all_gather_coalesced(outs, ins)
    for i in range(WORLD):
        equal(outs[i][0], torch.full((3,), float(i)), "all_gather_coalesced[0]")
        equal(outs[i][1], torch.tensor([i, -i], dtype=torch.float32), "all_gather_coalesced[1]")
    if WORLD >= 3 and os.environ.get("TORCH_TEST_SUBGROUP"):
        # A devmem subgroup of the ranks but 0: its own channels (so its own RX queues:
        # one lo has too few for 4 ranks and a subgroup), group ranks mapped by torch.
        sub = dist.new_group(list(range(1, WORLD)), backend="devmem")
        if RANK >= 1:
            t = torch.full((5,), float(RANK))
            dist.broadcast(t, src=WORLD - 1, group=sub)
            equal(t, torch.full((5,), float(WORLD - 1)), "broadcast in a subgroup")
            got = torch.empty(1, dtype=torch.int64)
            if RANK == 1:
                dist.send(torch.tensor([42]), dst=2, group=sub)
            elif RANK == 2:
                dist.recv(got, src=1, group=sub)
                check(int(got) == 42, f"send/recv in a subgroup: {got}")
    dist.barrier()
    dist.destroy_process_group()
    return {"outputs": len(mine), "links": links}


def _ddp_run(group: Any) -> list[torch.Tensor]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(1234)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    if RANK == 0:  # different initial weights on rank 0: DDP must broadcast them
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5)
    ddp = DDP(model, process_group=group, bucket_cap_mb=1)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.5)
    g = torch.Generator().manual_seed(99 + RANK)
    for _ in range(20):
        x = torch.randn(8, 16, generator=g)
        y = torch.randn(8, 4, generator=g)
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def scenario_ddp() -> dict[str, Any]:
    init()
    gloo = dist.new_group(backend="gloo")
    mine = _ddp_run(dist.group.WORLD)
    ref = _ddp_run(gloo)
    for i, (a, b) in enumerate(zip(mine, ref, strict=True)):
        check(bool(torch.isfinite(a).all()),
              f"DDP parameter {i} is not finite; on gloo: {bool(torch.isfinite(b).all())}")
        check(torch.equal(a, b), f"DDP parameter {i} differs from gloo's: max diff {(a - b).abs().max()}")
    # The same across ranks (DDP's invariant).
    flat = torch.cat([p.reshape(-1) for p in mine])
    allp = [torch.empty_like(flat) for _ in range(WORLD)]
    dist.all_gather(allp, flat)
    for i in range(WORLD):
        check(torch.equal(allp[i], flat), f"DDP parameters of rank {i} differ")
    dist.destroy_process_group()
    return {"params": len(mine)}


def _pipeline_run(group: Any) -> list[torch.Tensor]:
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    torch.manual_seed(7)
    stages = [torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh()), torch.nn.Linear(16, 4)]
    mod = stages[RANK]
    stage = PipelineStage(mod, RANK, 2, torch.device("cpu"), group=group)
    sched = ScheduleGPipe(stage, n_microbatches=4, loss_fn=lambda o, t: torch.nn.functional.mse_loss(o, t))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 16, generator=g)
    y = torch.randn(8, 4, generator=g)
    losses: list[torch.Tensor] = []
    if RANK == 0:
        sched.step(x)
    else:
        sched.step(target=y, losses=losses)
    grads = [p.grad.detach().clone() for p in mod.parameters() if p.grad is not None]
    return grads + ([torch.stack(losses)] if losses else [])


def scenario_pipeline() -> dict[str, Any]:
    init()
    check(WORLD == 2, "the pipeline scenario runs two stages")
    gloo = dist.new_group(backend="gloo")
    mine = _pipeline_run(dist.group.WORLD)
    ref = _pipeline_run(gloo)
    check(len(mine) == len(ref) and len(mine) > 0, "gradients present")
    for i, (a, b) in enumerate(zip(mine, ref, strict=True)):
        check(torch.equal(a, b), f"pipeline gradient/loss {i} differs from gloo's")
    dist.destroy_process_group()
    return {"tensors": len(mine)}


def scenario_bidir() -> dict[str, Any]:
    init(timeout=float(os.environ.get("TORCH_TEST_TIMEOUT", "120")))
    nbytes = int(os.environ.get("TORCH_TEST_BYTES", str(256 << 20)))
    peer = 1 - RANK
    send = torch.full((nbytes // 8,), float(RANK + 1), dtype=torch.float64)
    send[::4096] = torch.arange(send[::4096].numel(), dtype=torch.float64)
    recv = torch.empty_like(send)
    t0 = time.monotonic()
    ws = dist.isend(send, peer)
    wr = dist.irecv(recv, peer)
    ws.wait()
    wr.wait()
    dt = time.monotonic() - t0
    expect = torch.full_like(send, float(peer + 1))
    expect[::4096] = torch.arange(expect[::4096].numel(), dtype=torch.float64)
    check(torch.equal(recv, expect), "bidirectional payload")
    # Blocking sends both ways at the same time: the reader keeps the link flowing.
    small = torch.full((4 << 20,), float(RANK))
    got = torch.empty_like(small)
    dist.send(small, peer, tag=3)
    dist.recv(got, peer, tag=3)
    check(torch.equal(got, torch.full_like(small, float(peer))), "simultaneous blocking sends")
    dist.barrier()
    dist.destroy_process_group()
    return {"seconds": dt, "bytes": nbytes}


def scenario_kill() -> dict[str, Any]:
    """Rank WORLD-1 dies in the middle of sending a large tensor; every other rank,
    waiting on a receive from it, must raise naming it, within the timeout."""
    import threading

    timeout = float(os.environ.get("TORCH_TEST_TIMEOUT", "20"))
    init(timeout=timeout)
    victim = WORLD - 1
    nbytes = int(os.environ.get("TORCH_TEST_BYTES", str(256 << 20)))
    # Links up first (one small exchange with the victim).
    if victim == RANK:
        for r in range(WORLD - 1):
            dist.recv(torch.empty(4), r)
        sig = int(os.environ.get("TORCH_TEST_SIGNAL", "9"))
        threading.Timer(0.3, os.kill, (os.getpid(), sig)).start()
        big = torch.ones(nbytes // 4)
        for r in range(WORLD - 1):
            # tag 8 keeps the link busy as the kill lands; the peers wait on tag 7, which
            # never comes, so only the death can end their receive (a fast machine that
            # finished the send before 0.3 s would otherwise let the receive succeed)
            dist.isend(big, r, tag=8)
        time.sleep(60)
        raise AssertionError("the victim outlived its kill")
    dist.send(torch.ones(4), victim)
    t0 = time.monotonic()
    try:
        dist.recv(torch.empty(nbytes // 4), victim, tag=7)
    except RuntimeError as exc:
        dt = time.monotonic() - t0
        first = str(exc)
        check(f"rank {victim}" in first, f"error names rank {victim}: {exc}")
        check(dt < timeout + 5, f"raised after {dt:.1f}s, timeout {timeout}s")
    else:
        raise AssertionError("a receive from a rank killed mid-send did not raise")
    # Later operations that need the dead rank fail at once, naming it.
    t1 = time.monotonic()
    try:
        dist.broadcast(torch.empty(1 << 16), victim)
    except RuntimeError as exc2:
        check(f"rank {victim}" in str(exc2), f"second error names rank {victim}: {exc2}")
    else:
        raise AssertionError("broadcast from a dead rank did not raise")
    return {"seconds": dt, "error": first, "after": time.monotonic() - t1}


def scenario_timeout() -> dict[str, Any]:
    """A receive nobody answers fails at the group's timeout, naming the peer."""
    timeout = float(os.environ.get("TORCH_TEST_TIMEOUT", "3"))
    init(timeout=timeout)
    res: dict[str, Any] = {}
    peer = 1 - RANK
    x = torch.zeros(4)
    # The link is up (one exchange), then rank 0 waits for a tag rank 1 never sends.
    if RANK == 0:
        dist.send(x, peer)
    else:
        dist.recv(x, peer)
    if RANK == 0:
        t0 = time.monotonic()
        try:
            dist.recv(torch.empty(4), 1, tag=99)
        except RuntimeError as exc:
            dt = time.monotonic() - t0
            check("rank 1" in str(exc) and "timed out" in str(exc), f"timeout text: {exc}")
            check(timeout - 0.5 < dt < timeout + 3, f"timeout after {dt:.2f}s, expected ~{timeout}s")
            res = {"seconds": dt, "error": str(exc)}
        else:
            raise AssertionError("an unanswered receive did not time out")
    time.sleep(timeout + 1.5)
    return res


def scenario_stress() -> dict[str, Any]:
    """Many simultaneous exchanges both ways (all_gather and bidirectional isend/irecv)."""
    init(timeout=float(os.environ.get("TORCH_TEST_TIMEOUT", "60")))
    n = int(os.environ.get("TORCH_TEST_ITERS", "200"))
    size = int(os.environ.get("TORCH_TEST_BYTES", str(1 << 20)))
    inp = torch.full((size,), RANK + 1, dtype=torch.uint8)
    out = torch.empty(WORLD * size, dtype=torch.uint8)
    for i in range(n):
        inp[0] = i % 256
        dist.all_gather_into_tensor(out, inp)
        for r in range(WORLD):
            ok = int(out[r * size]) == i % 256 and int(out[r * size + 1]) == r + 1
            check(ok, f"iteration {i} rank {r}")
    dist.barrier()
    dist.destroy_process_group()
    return {"iters": n}


def scenario_cuda_p2p() -> dict[str, Any]:
    """CUDA tensors between two ranks on the devmem group (DEVMEMTCP_MEMORY=cuda:N):
    send/recv of several dtypes and shapes, a 64 MiB tensor, broadcast and all_gather."""
    init()
    dev = torch.device("cuda", int(os.environ.get("TORCH_TEST_CUDA_DEVICE", "0")))
    check("cuda" in dist.Backend.backend_capability["devmem"], "device cuda not registered")
    n = 0
    for i, dt in enumerate([torch.float32, torch.bfloat16, torch.int64, torch.uint8, torch.bool]):
        for j, shape in enumerate([(7,), (3, 5), (1000, 33)]):
            want = sample(dt, shape, 1000 * i + j).to(dev)
            got = torch.empty(shape, dtype=dt, device=dev)
            if RANK == 0:
                dist.send(want, 1)
                dist.recv(got, 1, tag=5)
            else:
                dist.recv(got, 0)
                dist.send(got, 0, tag=5)
            equal(got, want, f"cuda {dt}{shape}")
            n += 1
    big = torch.arange(16 << 20, dtype=torch.float32, device=dev)
    if RANK == 0:
        dist.send(big, 1)
    else:
        got = torch.empty_like(big)
        dist.recv(got, 0)
        equal(got, big, "64 MiB CUDA tensor")
    t = torch.full((1 << 20,), float(RANK + 1), device=dev)
    dist.broadcast(t, 0)
    equal(t, torch.full((1 << 20,), 1.0, device=dev), "broadcast")
    parts = [torch.empty(1000, device=dev) for _ in range(2)]
    dist.all_gather(parts, torch.full((1000,), float(RANK), device=dev))
    for r in range(2):
        equal(parts[r], torch.full((1000,), float(r), device=dev), f"all_gather part {r}")
    dist.destroy_process_group()
    return {"cases": n}


def main() -> None:
    if os.environ.get("TORCH_TEST_DUMP"):  # debugging a hang: every thread's stack after N s
        import faulthandler

        faulthandler.dump_traceback_later(float(os.environ["TORCH_TEST_DUMP"]))
    name = sys.argv[1]
    fn = globals()[f"scenario_{name}"]
    res = fn()
    res.update(rank=RANK, scenario=name, transport=os.environ.get("TORCH_TEST_TRANSPORT", "channel"))
    out = os.environ.get("TORCH_TEST_OUT")
    line = json.dumps(res)
    if out:
        with open(f"{out}.{RANK}", "w") as f:
            f.write(line + "\n")
    print(line, flush=True)
    assert dtorch.BACKEND_NAME == "devmem"


if __name__ == "__main__":
    main()
