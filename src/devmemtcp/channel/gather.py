"""Gather devmem frags from a dma-buf into one contiguous destination.

A received message is a list of frags ``(offset, length)`` in the RX
dma-buf, in stream order; :func:`gather` copies them, in one pass, into a
contiguous ``uint8`` destination. Never a Python loop per frag.

Strategy (measured by ``devmemtcp bench tensor``, see bench/README): numpy's
``take`` / fancy indexing move scattered pages at a fraction of memcpy
bandwidth (they copy element by element through an index array), so the
gather is a small compiled loop, ``gather.c``: one ``memcpy`` per run of
adjacent frags, reading offsets and lengths through strides so the views of a
parsed control buffer need no copy. It is built on first use with the C
compiler these machines have (``$CC``, gcc or cc, ``-O2 -shared``) into
``$XDG_CACHE_HOME/devmemtcp/gather/HASH/`` (``~/.cache`` by default; HASH
of the source and the compiler version, so an edited source or a new
compiler rebuilds it) and loaded with ctypes. Where no compiler is there, or
``DEVMEMTCP_GATHER=numpy`` is set, the numpy path below is used
(:func:`gather_backend` says which and why). Destinations that are torch CPU
tensors are gathered into through their numpy view, by the same loop.

A large destination (the Channel's ``STREAM_GATHER_BYTES``: a message of
4 MiB or more) is written with non-temporal stores (``stream=True``): it does
not fit a core's caches, so plain stores would read each of its lines from
memory before writing it (read for ownership) and evict the receiver's own
working set; glibc's memcpy switches to such stores only past a threshold
derived from the last-level cache size, which a VM reports for the whole host.
The staging copy of a send keeps plain stores: the kernel reads the staged
bytes right after, from the caches.

On a device dma-buf (CUDA) the gather runs on the device (the CUDA
provider's kernel, as NCCL's unpack does); this module is the host path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from devmemtcp import abi
from devmemtcp.errors import DevmemError

if TYPE_CHECKING:
    from devmemtcp.codec import FragBatch

__all__ = ["FragCursor", "build_helper", "gather", "gather_backend", "gather_batch", "gather_numpy"]

SOURCE_NAME = "gather.c"
ENV = "DEVMEMTCP_GATHER"
_lock = threading.Lock()
_lib: Any = None
_lib_from: Any = None
_reason: str | None = None


def cache_dir() -> Path:
    """Where the compiled helper is kept (created on demand)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "devmemtcp" / "gather"


def build_helper(directory: Path | None = None) -> Path:
    """Compile ``gather.c`` into a shared library (once per source and
    compiler) and return its path. Raises DevmemError when there is no
    compiler or it fails (its stderr in the message)."""
    source = resources.files("devmemtcp.channel").joinpath(SOURCE_NAME).read_bytes()
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise DevmemError(
            "no C compiler found (gcc, cc, $CC) for the gather helper",
            "install gcc (apt-get install gcc); the numpy gather is used meanwhile",
        )
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DevmemError(f"cannot run the C compiler {cc}: {exc}", "install gcc or set CC") from None
    digest = hashlib.sha256(source + b"\0" + version).hexdigest()[:16]
    out_dir = (directory or cache_dir()) / digest
    lib = out_dir / "libdmtgather.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    src = out_dir / SOURCE_NAME
    src.write_bytes(source)
    tmp = out_dir / f"libdmtgather.{os.getpid()}.{threading.get_ident()}.tmp"
    proc = subprocess.run(
        [cc, "-O2", "-Wall", "-shared", "-fPIC", "-o", str(tmp), str(src)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise DevmemError(
            f"compiling the gather helper {src} failed: {proc.stderr.strip()[:500]}",
            "check that gcc and the C library headers are installed (apt-get install gcc libc6-dev)",
        )
    os.replace(tmp, lib)  # atomic: a concurrent process never loads a half-written library
    return lib


def _load() -> Any:
    global _lib, _lib_from, _reason
    with _lock:
        if _reason is not None:
            return _lib
        if os.environ.get(ENV, "").lower() == "numpy":
            _reason = f"numpy (asked for: {ENV}=numpy)"
            return None
        try:
            lib = ctypes.CDLL(str(build_helper()))
            fn = lib.dmt_gather
            fn.argtypes = [
                ctypes.c_void_p,
                ctypes.c_uint64,
                ctypes.c_void_p,
                ctypes.c_int64,
                ctypes.c_void_p,
                ctypes.c_int64,
                ctypes.c_int64,
                ctypes.c_void_p,
                ctypes.c_uint64,
                ctypes.c_int,
            ]
            fn.restype = ctypes.c_int64
            fr = lib.dmt_gather_from
            fr.argtypes = [
                ctypes.c_void_p,
                ctypes.c_uint64,
                ctypes.c_void_p,
                ctypes.c_uint64,
                ctypes.c_void_p,
                ctypes.c_uint64,
            ]
            fr.restype = ctypes.c_int64
            _lib, _lib_from = fn, fr
            _reason = "c (gather.c, compiled on first use)"
        except (DevmemError, OSError, AttributeError) as exc:
            _lib = _lib_from = None
            _reason = f"numpy (the C helper is unavailable: {exc})"
        return _lib


def gather_backend() -> str:
    """Which gather runs: ``"c (...)"`` or ``"numpy (why)"``."""
    _load()
    assert _reason is not None
    return _reason


def _addr(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def gather(base: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, dst: np.ndarray,
           stream: bool = False, base_addr: int | None = None) -> int:
    """Copy the frags ``(offsets[i], sizes[i])`` of ``base`` (the dma-buf's
    ``uint8`` host view) into ``dst`` (a writable contiguous ``uint8`` array),
    back to back, from ``dst[0]``; return the bytes copied.

    ``offsets``: uint64, ``sizes``: uint32, shape ``(n,)``, any stride (the
    views of a FragBatch). ``stream``: write runs of 4 KiB and more with
    non-temporal stores (the C helper on x86-64; ignored elsewhere), for a
    destination too large to be in the CPU caches: plain stores would read
    each of its lines from memory first. ``base_addr``: ``base``'s address
    when the caller keeps it (the Channel: one dma-buf view for its life;
    __array_interface__ builds a dict per call). Raises DevmemError when a
    frag lies outside ``base`` or the frags do not fit ``dst``."""
    n = int(offsets.shape[0])
    if n == 0:
        return 0
    fn = _lib if _reason is not None else _load()
    if fn is None or offsets.dtype != np.uint64 or sizes.dtype != np.uint32:
        return gather_numpy(base, offsets, sizes, dst)
    got = fn(
        _addr(base) if base_addr is None else base_addr,
        base.shape[0],
        _addr(offsets),
        offsets.strides[0],
        _addr(sizes),
        sizes.strides[0],
        n,
        _addr(dst),
        dst.shape[0],
        1 if stream else 0,
    )
    if got < 0:
        i = -got - 1
        raise DevmemError(
            f"frag {i} (offset {int(offsets[i])}, {int(sizes[i])} bytes) lies outside the "
            f"{base.shape[0]}-byte dma-buf or past the {dst.shape[0]}-byte destination",
            "gather only frags received on a binding of this dma-buf, into a destination that holds them",
        )
    return int(got)


def gather_numpy(base: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, dst: np.ndarray) -> int:
    """The numpy fallback of :func:`gather` (same arguments and errors).

    Frags are merged into runs of adjacent ones (one numpy compare); a few
    runs are copied as slices, whole page-aligned frags with one ``np.take``
    of pages, anything else with one fancy-indexed copy of every byte."""
    offs = np.asarray(offsets, dtype=np.int64)
    lens = np.asarray(sizes, dtype=np.int64)
    n = offs.shape[0]
    if n == 0:
        return 0
    total = int(lens.sum())
    if int(offs.min()) < 0 or int((offs + lens).max()) > base.shape[0] or total > dst.shape[0]:
        raise DevmemError(
            f"the frags lie outside the {base.shape[0]}-byte dma-buf or do not fit the "
            f"{dst.shape[0]}-byte destination",
            "gather only frags received on a binding of this dma-buf, into a destination that holds them",
        )
    breaks = np.flatnonzero(offs[1:] != offs[:-1] + lens[:-1]) + 1
    if breaks.shape[0] < 64:
        starts = np.concatenate(([0], breaks)).tolist()
        ends = [*breaks.tolist(), n]
        d = 0
        ends_b = np.cumsum(lens)
        for s, e in zip(starts, ends, strict=True):  # a loop per run of adjacent frags, not per frag
            o = int(offs[s])
            ln = int(ends_b[e - 1] - (ends_b[s - 1] if s else 0))
            dst[d : d + ln] = base[o : o + ln]
            d += ln
        return total
    ps = abi.PAGE_SIZE
    if (
        int(lens.min()) == ps
        and int(lens.max()) == ps
        and not (offs & (ps - 1)).any()
        and base.shape[0] % ps == 0
    ):
        np.take(base.reshape(-1, ps), offs // ps, axis=0, out=dst[:total].reshape(n, ps))
        return total
    fs = int(lens.max())
    if int(lens.min()) == fs and int(offs.max()) + fs <= base.shape[0]:
        # one size (1448-byte packets): rows of a strided window view (fancy indexing: np.take
        # would copy the whole window view first)
        windows = np.lib.stride_tricks.as_strided(base, shape=(base.shape[0] - fs + 1, fs), strides=(1, 1))
        dst[:total].reshape(n, fs)[...] = windows[offs]
        return total
    # every byte's source index: frag start repeated, plus its position in the frag
    first = np.cumsum(lens) - lens
    idx = np.repeat(offs - first, lens) + np.arange(total, dtype=np.int64)
    np.take(base, idx, out=dst[:total])
    return total


def gather_batch(base: np.ndarray, batch: FragBatch, dst: np.ndarray, stream: bool = False,
                 base_addr: int | None = None) -> int:
    """One received batch in stream order into ``dst``: its frags, with its
    SCM_DEVMEM_LINEAR pieces (bytes a real NIC could not split, in the
    Receiver's iov buffer: ``batch.linear``) put back where ``linear_at``
    says, and readable bytes (a flow on an ordinary queue) as they are.
    Returns the bytes written. A loop per linear piece (rare), never per frag.
    ``stream``, ``base_addr``: as for :func:`gather`."""
    if batch.readable.shape[0]:
        n = batch.readable.shape[0]
        dst[:n] = batch.readable
        return n
    if not batch.linear_bytes:
        return gather(base, batch.offset, batch.size, dst, stream, base_addr)
    pos = lin = done = 0
    for size, at in zip(batch.linear_sizes.tolist(), batch.linear_at.tolist(), strict=True):
        if at > done:
            pos += gather(base, batch.offset[done:at], batch.size[done:at], dst[pos:], stream, base_addr)
            done = at
        dst[pos : pos + size] = batch.linear[lin : lin + size]
        pos += size
        lin += size
    if batch.offset.shape[0] > done:
        pos += gather(base, batch.offset[done:], batch.size[done:], dst[pos:], stream, base_addr)
    return pos


class FragCursor:
    """A read position in one batch's frags, for a receiver that takes the
    bytes of one recvmsg in several pieces (several messages, a frag
    straddling two of them): :meth:`take` copies the next bytes into a
    destination and advances, by ``gather.c``'s ``dmt_gather_from`` (one
    ctypes call, a ``memcpy`` per frag, no Python per frag), or the numpy
    path without the helper.

    ``offset`` (uint64) and ``size`` (uint32) are the batch's arrays, shape
    ``(n,)``, any stride; they are kept referenced here. The position
    (``frag``, ``skip_bytes``) is kept as integers, with the frags as lists:
    a piece inside the current frag (a small message in page-size frags) is
    one ``memmove``, no array touched."""

    __slots__ = ("_cur", "_cur_addr", "_offs", "_sizes", "frag", "left", "offset", "size", "skip_bytes")

    def __init__(self, offset: np.ndarray, size: np.ndarray) -> None:
        self.offset = offset
        self.size = size
        n = int(offset.shape[0])
        self.left = int(size.sum(dtype=np.uint64)) if n else 0
        if _reason is None:
            _load()
        self._cur: np.ndarray | None = None
        self._cur_addr = 0
        if _lib_from is not None and n and offset.dtype == np.uint64 and size.dtype == np.uint32:
            self._cur = np.array(
                [_addr(offset), offset.strides[0], _addr(size), size.strides[0], n, 0, 0], dtype=np.int64
            )
            self._cur_addr = _addr(self._cur)
        self._offs: list[int] = offset.tolist()
        self._sizes: list[int] = size.tolist()
        self.frag = 0  # the current frag and the bytes of it taken
        self.skip_bytes = 0

    def _take_c(self, base_addr: int, base_len: int, k: int, dst_addr: int | None, dst_len: int) -> int:
        cur = self._cur
        assert cur is not None and _lib_from is not None
        cur[5] = self.frag
        cur[6] = self.skip_bytes
        got = int(_lib_from(base_addr, base_len, self._cur_addr, k, dst_addr, dst_len))
        if got >= 0:
            self.frag = int(cur[5])
            self.skip_bytes = int(cur[6])
        return got

    def take(self, base: np.ndarray, total: int, dst: np.ndarray | None, at: int = 0) -> int:
        """Copy the next ``min(total, left)`` bytes into ``dst[at:]`` (None:
        skip them); returns that count. DevmemError for a frag outside
        ``base`` or bytes that do not fit ``dst``."""
        k = min(total, self.left)
        if k <= 0:
            return 0
        if self._cur is not None:
            if dst is None:
                got = self._take_c(_addr(base), base.shape[0], k, None, 0)
            else:
                got = self._take_c(_addr(base), base.shape[0], k, _addr(dst) + at, dst.shape[0] - at)
            if got < 0:
                self._bad(base, -got - 1, dst)
        else:
            got = self._take_numpy(base, k, dst, at)
        self.left -= got
        return int(got)

    def take_to(self, base_addr: int, base_len: int, total: int, dst_addr: int, dst_len: int) -> int:
        """:meth:`take` by addresses (the Channel's small-message path):
        ``total`` must be at most ``left``; -1 when the bytes span frags and
        the compiled helper is not there (call :meth:`take`), DevmemError for
        a bad frag."""
        i = self.frag
        skip = self.skip_bytes
        sz = self._sizes[i]
        if sz - skip >= total:  # inside the current frag: one memmove
            src = self._offs[i] + skip
            if src + sz - skip > base_len or total > dst_len:
                got = -(i + 1)
            else:
                ctypes.memmove(dst_addr, base_addr + src, total)
                skip += total
                if skip == sz:
                    self.frag = i + 1
                    self.skip_bytes = 0
                else:
                    self.skip_bytes = skip
                self.left -= total
                return total
        elif self._cur is None:
            return -1
        else:
            got = self._take_c(base_addr, base_len, total, dst_addr, dst_len)
        if got < 0:
            raise DevmemError(
                f"frag {-got - 1} lies outside the {base_len}-byte dma-buf or past the "
                f"{dst_len}-byte destination",
                "gather only frags received on a binding of this dma-buf, into a destination that holds them",
            )
        self.left -= got
        return int(got)

    def _bad(self, base: np.ndarray, i: int, dst: np.ndarray | None) -> None:
        raise DevmemError(
            f"frag {i} (offset {int(self.offset[i])}, {int(self.size[i])} bytes) lies outside the "
            f"{base.shape[0]}-byte dma-buf or past the {0 if dst is None else dst.shape[0]}-byte destination",
            "gather only frags received on a binding of this dma-buf, into a destination that holds them",
        )

    def _take_numpy(self, base: np.ndarray, k: int, dst: np.ndarray | None, at: int) -> int:
        i, skip = self.frag, self.skip_bytes
        lens = self.size[i:].astype(np.int64)
        ends = np.cumsum(lens) - skip  # bytes available up to the end of each frag from here
        j = int(np.searchsorted(ends, k, side="left"))  # the frag holding the last byte taken
        if dst is not None:
            offs = self.offset[i : i + j + 1].astype(np.uint64)
            sizes = lens[: j + 1].copy()
            offs[0] += np.uint64(skip)
            sizes[0] -= skip
            sizes[-1] -= int(ends[j]) - k
            gather_numpy(base, offs, sizes.astype(np.uint32), dst[at:])
        if int(ends[j]) == k:
            self.frag, self.skip_bytes = i + j + 1, 0
        else:
            self.frag = i + j
            self.skip_bytes = int(lens[j]) - (int(ends[j]) - k)
        return k
