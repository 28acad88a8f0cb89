"""``devmemtcp bench gather``: gather of received frags against a plain copy of the same bytes.

Two frag shapes, as a devmem NIC hands them out with header split: whole
pages (4096-byte frags, each at the start of a net_iov) and 1448-byte frags
(an MSS at 1500 MTU, each at the start of its net_iov). The net_iovs are
taken in random order from the pool, so no two frags merge into a run: the
worst case for the gather (a page pool that hands out consecutive net_iovs
gives long runs, which are block copies).

``--memory cuda[:N]``: the pool is a :class:`~devmemtcp.memory.cuda.CudaBuffer`
and one gather is :func:`devmemtcp.memory.cuda_ops.gather_planned` (the
frag list's host-to-device copy, then one kernel launch), timed with CUDA events
on CuPy's stream; the baseline is ``cuMemcpyDtoDAsync`` of the same number
of bytes on the same stream. The targets compare the kernel with the copy:
gather at least 0.8 of the copy's GB/s for page-aligned frags and 0.5 for
1448-byte frags; the frag list's upload (``upload_us``, and the ratio with
it, ``ratio_with_upload``) and the host-side planning (``plan_ms``) are
reported beside them.

``--memory host``: the pool is a memfd and the gather
:meth:`~devmemtcp.memory.memfd.MemfdBuffer.gather` (numpy), against
``np.copyto`` of the same number of bytes; no targets (the host path is the
emulated NIC's, not the product's hot path on a GPU).

GB/s are 10**9 bytes gathered per second (each byte read once, written once).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from devmemtcp import abi
from devmemtcp.errors import DevmemError

DEFAULT_FRAGS = 16384
DEFAULT_REPEAT = 20
FRAG_SIZES = (abi.PAGE_SIZE, 1448)
TARGETS = {abi.PAGE_SIZE: 0.8, 1448: 0.5}
_WARMUP = 3


def make_frags(npages: int, nfrags: int, frag_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(offsets uint64, sizes uint32) of ``nfrags`` frags of ``frag_size``
    bytes, each at the start of a distinct net_iov of a pool of ``npages``
    pages, in random order."""
    if nfrags > npages:
        raise DevmemError(f"{nfrags} frags need {nfrags} pages, the pool has {npages}", "use fewer --frags")
    pages = np.random.default_rng(seed).permutation(npages)[:nfrags].astype(np.uint64)
    return pages * np.uint64(abi.PAGE_SIZE), np.full(nfrags, frag_size, np.uint32)


def _median_gbps(nbytes: int, seconds: list[float]) -> float:
    return nbytes / statistics.median(seconds) / 1e9


def _batch(offs: np.ndarray, sizes: np.ndarray) -> Any:
    from devmemtcp.codec import FragBatch

    n = offs.shape[0]
    return FragBatch(offs, sizes, np.arange(1, n + 1, dtype=np.uint32), np.ones(n, np.uint32))


def _run_host(nfrags: int, repeat: int, say: Callable[[str], None]) -> dict[str, Any]:
    from devmemtcp.memory.memfd import MemfdBuffer

    cases: list[dict[str, Any]] = []
    with MemfdBuffer(nfrags * abi.PAGE_SIZE) as buf:
        buf.copy_in(0, np.random.default_rng(1).integers(0, 256, buf.size, dtype=np.uint8))
        view = buf.host_view()
        for fs in FRAG_SIZES:
            offs, sizes = make_frags(buf.size // abi.PAGE_SIZE, nfrags, fs)
            fb = _batch(offs, sizes)
            nbytes = fb.nbytes
            out = np.empty(nbytes, np.uint8)
            say(f"host gather of {nfrags} frags of {fs} bytes, {repeat} runs")
            g, c = [], []
            for i in range(_WARMUP + repeat):
                t0 = time.perf_counter()
                buf.gather(fb, out)
                t1 = time.perf_counter()
                np.copyto(out, view[:nbytes])
                t2 = time.perf_counter()
                if i >= _WARMUP:
                    g.append(t1 - t0)
                    c.append(t2 - t1)
            gg, cg = _median_gbps(nbytes, g), _median_gbps(nbytes, c)
            cases.append({"frag_size": fs, "frags": nfrags, "bytes": nbytes, "gather_gbps": gg,
                          "copy_gbps": cg, "ratio": gg / cg})
    return {"memory": "host", "device": "CPU (numpy)", "repeat": repeat, "cases": cases, "targets": {}}


def _run_cuda(memory: str, nfrags: int, repeat: int, say: Callable[[str], None]) -> dict[str, Any]:
    from devmemtcp.memory.cuda import CudaBuffer, parse_device
    from devmemtcp.memory.cuda_ops import (
        cupy,
        device_address,
        gather_planned,
        launch_gather,
        plan_gather,
        pool_array,
        upload_plan,
    )

    cp = cupy()
    device = parse_device(memory)
    cases: list[dict[str, Any]] = []
    with CudaBuffer(nfrags * abi.PAGE_SIZE, device=device) as buf, cp.cuda.Device(device):
        drv = buf._drv
        pool = pool_array(buf)
        pool[:] = cp.random.randint(0, 256, buf.size, dtype=cp.uint8)
        stream = cp.cuda.get_current_stream()
        hstream = drv.CUstream(stream.ptr)
        for fs in FRAG_SIZES:
            offs, sizes = make_frags(buf.size // abi.PAGE_SIZE, nfrags, fs)
            t0 = time.perf_counter()
            plan = plan_gather(offs, sizes, page_size=buf.page_size, limit=buf.size)
            plan_s = time.perf_counter() - t0
            nbytes = plan.nbytes
            out = cp.empty(nbytes, dtype=cp.uint8)
            # correctness first: the device gather equals the host gather of the same frags
            gather_planned(buf, plan, out, pool)
            pages = buf.copy_out(0, buf.size).reshape(-1, abi.PAGE_SIZE)
            want = pages[(offs // abi.PAGE_SIZE).astype(np.int64), :fs].reshape(-1)
            if not np.array_equal(cp.asnumpy(out), want):
                raise DevmemError(f"device gather of {fs}-byte frags differs from the host copy",
                                  "report this: the gather kernel is wrong on this GPU")
            say(f"{buf.device_name}: gather of {nfrags} frags of {fs} bytes, {repeat} runs")
            up, g, c = [], [], []
            kind = ""
            for i in range(_WARMUP + repeat):
                e0, e1, e2, e3 = (cp.cuda.Event() for _ in range(4))
                e0.record(stream)
                dplan = upload_plan(plan)  # the frag list's host-to-device copy
                e1.record(stream)
                launch_gather(buf, dplan, out, pool)
                e2.record(stream)
                res = drv.cuMemcpyDtoDAsync(device_address(out), buf.ptr, nbytes, hstream)
                if int(res[0]) != 0:
                    raise DevmemError(f"cuMemcpyDtoDAsync failed: {res[0]}", "check the NVIDIA driver")
                e3.record(stream)
                e3.synchronize()
                kind = dplan.kind
                if i >= _WARMUP:
                    up.append(cp.cuda.get_elapsed_time(e0, e1) / 1e3)
                    g.append(cp.cuda.get_elapsed_time(e1, e2) / 1e3)
                    c.append(cp.cuda.get_elapsed_time(e2, e3) / 1e3)
            gg, cg = _median_gbps(nbytes, g), _median_gbps(nbytes, c)
            with_upload = nbytes / (statistics.median(up) + statistics.median(g)) / 1e9
            cases.append({"frag_size": fs, "frags": nfrags, "bytes": nbytes, "gather_gbps": gg,
                          "copy_gbps": cg, "ratio": gg / cg, "upload_us": statistics.median(up) * 1e6,
                          "gather_with_upload_gbps": with_upload, "ratio_with_upload": with_upload / cg,
                          "plan_ms": plan_s * 1e3, "frag_list": kind, "rows": int(dplan.count)})
        name = buf.device_name
        version = buf.driver_version
    targets: dict[str, Any] = {}
    for case in cases:
        goal = TARGETS[int(case["frag_size"])]
        targets[f"gather/copy, {case['frag_size']}-byte frags"] = {
            "value": case["ratio"], "target": f">= {goal}", "met": case["ratio"] >= goal}
    return {"memory": memory, "device": name, "driver": version, "repeat": repeat, "cases": cases,
            "targets": targets}


def run_gather(memory: str = "cuda", frags: int = DEFAULT_FRAGS, repeat: int = DEFAULT_REPEAT,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the gather benchmark (see the module docstring) and return
    ``{"memory", "device", "repeat", "cases": [{"frag_size", "frags",
    "bytes", "gather_gbps", "copy_gbps", "ratio", ...}], "targets"}``.

    ``memory``: "host", "cuda" or "cuda:N". Raises DevmemError without
    cuda-python, CuPy, a driver or a GPU (for CUDA), or for bad arguments."""
    if frags <= 0 or repeat <= 0:
        raise DevmemError("--frags and --repeat must be positive", "use e.g. --frags 16384 --repeat 20")
    say = progress or (lambda _msg: None)
    if memory == "host":
        return _run_host(frags, repeat, say)
    if memory.startswith("cuda"):
        return _run_cuda(memory, frags, repeat, say)
    raise DevmemError(f"bench gather runs on host or CUDA memory, not {memory!r}",
                      "use --memory host, cuda or cuda:N")
