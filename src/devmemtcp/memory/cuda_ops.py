"""Gather and pattern validation on the GPU, for a :class:`~devmemtcp.memory.cuda.CudaBuffer`.

Strategy (as NCCL's TCPX unpack does on the device): the host turns a
FragBatch into a plan with numpy alone (:func:`plan_gather`): frags that
continue each other in the dma-buf are merged into runs (a page pool hands
out consecutive net_iovs, so most batches are a few long runs), and runs
are cut into pieces of at most ``chunk`` bytes; each piece is one
``(src, len, dst)`` triplet. The triplets go to the device in one copy and
one kernel launch per batch runs them, one thread block per piece: a
piece whose addresses and length allow it is copied in 16-byte words
(page-aligned runs: block copies), others in 8-, 4-byte words or bytes
(irregular frags, e.g. 1448-byte ones). A batch of whole aligned pages
(the common devmem batch) uploads only its page numbers, 4 bytes a page,
and a kernel copies one page per block. There is no host loop per frag.

Validation of ncdevmem's pattern (:func:`first_mismatch`) runs the same
triplets against the pattern computed on the device, and an atomicMin
finds the stream offset of the first bad byte, so it is reported as the host
path (:mod:`devmemtcp.validate`) reports it.

The pool is a CuPy array over the dma-buf's device memory
(:func:`pool_array`), so it is a DLPack / ``__cuda_array_interface__``
device array (``torch.from_dlpack(pool_array(buf))`` gives a CUDA tensor on
the same memory). CuPy is imported lazily; DevmemError with the fix when it
is absent. :func:`plan_gather` needs numpy only and is tested on the CPU
against the host gather.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from devmemtcp import abi
from devmemtcp.errors import DevmemError

if TYPE_CHECKING:
    from devmemtcp.codec import FragBatch
    from devmemtcp.memory.cuda import CudaBuffer

__all__ = ["GATHER_CHUNK", "DevicePlan", "GatherPlan", "cupy", "device_address", "device_gather",
           "first_mismatch", "gather_planned", "launch_gather", "plan_gather", "pool_array", "upload_plan"]

#: Bytes per triplet: a thread block of 256 threads copies 16 KiB in four 16-byte strides.
GATHER_CHUNK = 16 << 10
_THREADS = 256
_MAX_GRID = 1 << 20  # thread blocks per launch; more triplets are taken in a grid-stride loop
_NO_MISMATCH = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class GatherPlan:
    """A batch's frags as device work.

    ``triplets``: ``(m, 3)`` C-contiguous int64, rows ``(src, len, dst)``:
    bytes ``src .. src+len`` of the dma-buf go to ``dst .. dst+len`` of the
    destination; ``dst`` increases with the row, and the rows tile
    ``0 .. nbytes`` exactly. ``nbytes``: bytes gathered (sum of the sizes).
    ``runs``: contiguous runs after merging; ``block_runs``: those that
    start on a page boundary and are a whole number of pages (copied as
    blocks), the others being irregular frags. ``pages``: when every frag is
    one whole, aligned page (the common devmem batch), their page numbers
    (uint32, shape ``(n,)``, stream order): 4 bytes of frag list per page
    to upload instead of 24 per triplet; else None."""

    triplets: np.ndarray
    nbytes: int
    runs: int
    block_runs: int
    pages: np.ndarray | None = None


_EMPTY_TRIPLETS = np.empty((0, 3), np.int64)


def plan_gather(offsets: np.ndarray, sizes: np.ndarray, *, page_size: int = abi.PAGE_SIZE,
                chunk: int = GATHER_CHUNK, limit: int | None = None) -> GatherPlan:
    """Plan the gather of frags (dma-buf ``offsets``, ``sizes``; shape
    ``(n,)``, stream order) into one contiguous destination. Pure numpy.

    Zero-length frags are dropped; frags that continue the previous one in
    the dma-buf are merged; each run is cut into pieces of at most ``chunk``
    bytes (``chunk`` a positive multiple of 16). ``limit``: the dma-buf
    size; a frag ending past it (or a negative offset) raises DevmemError.
    """
    if chunk <= 0 or chunk % 16:
        raise DevmemError(f"gather chunk {chunk} is not a positive multiple of 16",
                          f"use the default, {GATHER_CHUNK} bytes")
    offs = np.asarray(offsets).astype(np.int64, copy=False).reshape(-1)
    lens = np.asarray(sizes).astype(np.int64, copy=False).reshape(-1)
    if offs.shape != lens.shape:
        raise DevmemError(f"{offs.shape[0]} offsets but {lens.shape[0]} sizes", "give one size per frag")
    keep = lens > 0
    if not keep.all():
        offs, lens = offs[keep], lens[keep]
    n = offs.shape[0]
    if n == 0:
        return GatherPlan(_EMPTY_TRIPLETS, 0, 0, 0)
    if int(offs.min()) < 0 or (limit is not None and int((offs + lens).max()) > limit):
        raise DevmemError("a fragment lies outside the dma-buf",
                          "gather only batches received on a binding of this buffer")
    # frag i starts a new run unless it begins where frag i-1 ended
    starts = np.flatnonzero(np.concatenate(([True], offs[1:] != offs[:-1] + lens[:-1])))
    run_src = offs[starts]
    run_len = np.add.reduceat(lens, starts)
    run_dst = np.cumsum(run_len) - run_len
    pieces = -(-run_len // chunk)
    total_pieces = int(pieces.sum())
    if total_pieces == run_len.shape[0]:
        trip = np.stack((run_src, run_len, run_dst), axis=1)
    else:
        which = np.repeat(np.arange(run_len.shape[0]), pieces)
        first_piece = np.cumsum(pieces) - pieces
        step = (np.arange(total_pieces) - first_piece[which]) * chunk
        trip = np.stack((run_src[which] + step, np.minimum(chunk, run_len[which] - step),
                         run_dst[which] + step), axis=1)
    block = int(((run_src % page_size == 0) & (run_len % page_size == 0)).sum())
    pages = None
    if bool((lens == page_size).all()) and not bool((offs % page_size).any()) \
            and int(offs.max()) // page_size < 1 << 32:
        pages = (offs // page_size).astype(np.uint32)
    return GatherPlan(np.ascontiguousarray(trip), int(run_len.sum()), int(run_len.shape[0]), block, pages)


# ---------------------------------------------------------------------------
# the device side (CuPy)
# ---------------------------------------------------------------------------
def cupy() -> Any:
    """The ``cupy`` module, or DevmemError with the install command."""
    try:
        import cupy as cp
    except ImportError:
        raise DevmemError("CuPy is not installed: gather and validation of CUDA memory run on the GPU "
                          "with it",
                          "pip install 'devmemtcp[gpu]' (cupy-cuda12x with NVRTC; cupy-cuda13x suits a "
                          "CUDA 13 driver too)") from None
    return cp


_KERNELS = r"""
extern "C" __global__ void devmemtcp_gather(const unsigned char* __restrict__ pool,
                                             unsigned char* __restrict__ out,
                                             const long long* __restrict__ trip, long long n) {
  for (long long t = blockIdx.x; t < n; t += gridDim.x) {
    const long long src = trip[3 * t], len = trip[3 * t + 1], dst = trip[3 * t + 2];
    const unsigned char* s = pool + src;
    unsigned char* d = out + dst;
    const unsigned long long a = (unsigned long long)s | (unsigned long long)d | (unsigned long long)len;
    if ((a & 15) == 0) {
      const uint4* s4 = reinterpret_cast<const uint4*>(s);
      uint4* d4 = reinterpret_cast<uint4*>(d);
      for (long long i = threadIdx.x; i < (len >> 4); i += blockDim.x) d4[i] = s4[i];
    } else if ((a & 7) == 0) {
      const uint2* s2 = reinterpret_cast<const uint2*>(s);
      uint2* d2 = reinterpret_cast<uint2*>(d);
      for (long long i = threadIdx.x; i < (len >> 3); i += blockDim.x) d2[i] = s2[i];
    } else if ((a & 3) == 0) {
      const unsigned int* s1 = reinterpret_cast<const unsigned int*>(s);
      unsigned int* d1 = reinterpret_cast<unsigned int*>(d);
      for (long long i = threadIdx.x; i < (len >> 2); i += blockDim.x) d1[i] = s1[i];
    } else {
      for (long long i = threadIdx.x; i < len; i += blockDim.x) d[i] = s[i];
    }
  }
}

// One whole page per block: the frag list is the pages' numbers (both buffers 16-byte aligned).
extern "C" __global__ void devmemtcp_gather_pages(const uint4* __restrict__ pool, uint4* __restrict__ out,
                                                   const unsigned int* __restrict__ pages, long long n,
                                                   int words_per_page) {
  for (long long t = blockIdx.x; t < n; t += gridDim.x) {
    const uint4* s = pool + (long long)pages[t] * words_per_page;
    uint4* d = out + t * words_per_page;
    for (int i = threadIdx.x; i < words_per_page; i += blockDim.x) d[i] = s[i];
  }
}

// ncdevmem's pattern: the byte at stream offset p is (p % period) + 1, or 0x0a
// when p % period == period - 1. Each thread stops at its first bad byte; the
// smallest such stream offset across all threads is the first mismatch.
extern "C" __global__ void devmemtcp_validate(const unsigned char* __restrict__ pool,
                                               const long long* __restrict__ trip, long long n,
                                               long long base, int period,
                                               unsigned long long* __restrict__ first_bad) {
  const int step = blockDim.x % period;
  for (long long t = blockIdx.x; t < n; t += gridDim.x) {
    const long long src = trip[3 * t], len = trip[3 * t + 1], dst = trip[3 * t + 2];
    const long long p0 = base + dst;
    int ph = (int)((p0 % period + threadIdx.x % period) % period);
    for (long long i = threadIdx.x; i < len; i += blockDim.x) {
      const unsigned char want = (ph == period - 1) ? (unsigned char)0x0a : (unsigned char)(ph + 1);
      if (pool[src + i] != want) {
        atomicMin(first_bad, (unsigned long long)(p0 + i));
        break;
      }
      ph += step;
      if (ph >= period) ph -= period;
    }
  }
}
"""


@functools.cache
def _module(device: int) -> Any:
    cp = cupy()
    with cp.cuda.Device(device):
        return cp.RawModule(code=_KERNELS, options=("--std=c++14",))


def _kernel(device: int, name: str) -> Any:
    return _module(device).get_function(name)


def pool_array(buf: CudaBuffer) -> Any:
    """A 1-D ``uint8`` CuPy array of shape ``(buf.size,)`` over the dma-buf's
    device memory (no copy; DLPack and ``__cuda_array_interface__`` capable).
    It keeps ``buf`` referenced but not open: do not use it after
    ``buf.close()``."""
    cp = cupy()
    if buf.closed:
        raise DevmemError("the CUDA dma-buf is closed", "do not use a buffer after close()")
    mem = cp.cuda.UnownedMemory(buf.ptr, buf.size, buf, device_id=buf.device)
    return cp.ndarray((buf.size,), dtype=cp.uint8, memptr=cp.cuda.MemoryPointer(mem, 0))


def _destination(cp: Any, out: Any, nbytes: int) -> Any:
    if out is None:
        return cp.empty(nbytes, dtype=cp.uint8)
    dst = cp.asarray(out)  # zero-copy for CuPy, torch and anything with __cuda_array_interface__
    if dst.dtype != cp.uint8 or dst.ndim != 1 or dst.shape[0] < nbytes or not dst.flags.c_contiguous:
        raise DevmemError(f"gather destination must be a contiguous 1-D uint8 device array of at least "
                          f"{nbytes} bytes", "allocate it with cupy.empty(batch.nbytes, cupy.uint8)")
    return dst


def _grid(m: int) -> tuple[int]:
    return (min(m, _MAX_GRID),)


def device_gather(buf: CudaBuffer, frags: FragBatch, out: Any = None) -> Any:
    """Gather ``frags`` (a FragBatch received on a binding of ``buf``) into a
    contiguous device array: :func:`plan_gather`, one host-to-device copy of
    the triplets, one kernel launch on CuPy's current stream. Returns the
    CuPy view of the first ``frags.nbytes`` bytes of ``out`` (a new array
    when None). DevmemError without CuPy, for a frag outside ``buf``, or a
    bad destination."""
    plan = plan_gather(frags.offset, frags.size, page_size=buf.page_size, limit=buf.size)
    return gather_planned(buf, plan, out)


@dataclass(frozen=True)
class DevicePlan:
    """A plan's frag list on the device: ``kind`` "pages" (``array``: uint32
    page numbers) or "triplets" (``array``: int64 ``(m, 3)``); ``count`` rows."""

    kind: str
    array: Any
    count: int


def device_address(arr: Any) -> int:
    """The device address of a CuPy array (or anything with ``__cuda_array_interface__``)."""
    return int(arr.__cuda_array_interface__["data"][0])


def upload_plan(plan: GatherPlan, *, pages: bool = True) -> DevicePlan:
    """Copy ``plan``'s frag list to the device (CuPy's current device and
    stream): its page numbers when it has them and ``pages``, else its triplets."""
    cp = cupy()
    if pages and plan.pages is not None:
        return DevicePlan("pages", cp.asarray(plan.pages), int(plan.pages.shape[0]))
    return DevicePlan("triplets", cp.asarray(plan.triplets), int(plan.triplets.shape[0]))


def launch_gather(buf: CudaBuffer, dplan: DevicePlan, dst: Any, pool: Any = None) -> None:
    """One kernel launch on CuPy's current stream: ``dplan``'s bytes of
    ``buf`` into the device array ``dst`` (``pool``: :func:`pool_array` of
    ``buf`` when the caller keeps one)."""
    if dplan.count == 0:
        return
    src = pool if pool is not None else pool_array(buf)
    if dplan.kind == "pages":
        _kernel(buf.device, "devmemtcp_gather_pages")(
            _grid(dplan.count), (_THREADS,),
            (src, dst, dplan.array, np.int64(dplan.count), np.int32(buf.page_size // 16)))
    else:
        _kernel(buf.device, "devmemtcp_gather")(
            _grid(dplan.count), (_THREADS,), (src, dst, dplan.array, np.int64(dplan.count)))


def gather_planned(buf: CudaBuffer, plan: GatherPlan, out: Any = None, pool: Any = None) -> Any:
    """The device half of :func:`device_gather`: one copy of ``plan``'s frag
    list to the device (page numbers for whole aligned pages into a 16-byte
    aligned destination, else triplets) and one kernel launch on CuPy's
    current stream (asynchronous: synchronise the stream before reading
    ``out`` on the host). ``pool``: :func:`pool_array` of ``buf`` when the
    caller keeps one. Returns the destination view of ``plan.nbytes`` bytes."""
    cp = cupy()
    with cp.cuda.Device(buf.device):
        dst = _destination(cp, out, plan.nbytes)[: plan.nbytes]
        if plan.nbytes:
            aligned = buf.page_size % 16 == 0 and device_address(dst) % 16 == 0
            launch_gather(buf, upload_plan(plan, pages=aligned), dst, pool)
        return dst


def first_mismatch(buf: CudaBuffer, plan: GatherPlan, base: int, period: int) -> tuple[int, int] | None:
    """Check the planned bytes of ``buf`` as stream bytes ``base ..
    base + plan.nbytes`` of ncdevmem's pattern of ``period`` (2..256, see
    :func:`devmemtcp.pattern.pattern_period`) on the device. Returns None
    when all match, else ``(stream_offset, received_byte)`` of the first
    mismatch. One kernel launch and an 8-byte copy back per call."""
    cp = cupy()
    m = plan.triplets.shape[0]
    if m == 0:
        return None
    with cp.cuda.Device(buf.device):
        pool = pool_array(buf)
        trip = cp.asarray(plan.triplets)
        bad = cp.full(1, _NO_MISMATCH, dtype=cp.uint64)
        _kernel(buf.device, "devmemtcp_validate")(
            _grid(m), (_THREADS,), (pool, trip, np.int64(m), np.int64(base), np.int32(period), bad))
        first = int(bad.get()[0])
        if first == int(_NO_MISMATCH):
            return None
        rel = first - base
        row = int(np.searchsorted(plan.triplets[:, 2], rel, side="right")) - 1
        src = int(plan.triplets[row, 0]) + rel - int(plan.triplets[row, 2])
        return first, int(pool[src:src + 1].get()[0])
