"""Compile and run the C baselines (``cwalk.c``) of ``devmemtcp bench frags``.

The C source ships as package data and is compiled with ``gcc -O2`` at run
time into a cache directory (``$XDG_CACHE_HOME/devmemtcp/bench`` or
``~/.cache/devmemtcp/bench``), keyed by a hash of the source and the compiler
version, so an edited source or a new compiler rebuilds it.

Input format shared with the C side (see the comment at the top of
``cwalk.c``): records of ``[u32 controllen][u32 nbytes][controllen bytes]``,
each record padded to 8 bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from devmemtcp.errors import DevmemError

CWalkMode = Literal["perfrag", "batched", "parse"]
SOURCE_NAME = "cwalk.c"


def cache_dir() -> Path:
    """Directory the compiled baselines are kept in (created on demand)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "devmemtcp" / "bench"


def _gcc() -> str:
    gcc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        raise DevmemError(
            "the C baselines need a C compiler and none was found (gcc, cc, $CC)",
            "install gcc (apt-get install gcc) or set CC, or run with --no-c to skip the baselines",
        )
    return gcc


def build_cwalk(directory: Path | None = None) -> Path:
    """Compile ``cwalk.c`` (once per source and compiler) and return the binary's path.

    Raises:
        DevmemError: no compiler, or the compiler failed (its stderr is in the message).
    """
    source = resources.files("devmemtcp.bench").joinpath(SOURCE_NAME).read_bytes()
    gcc = _gcc()
    try:
        version = subprocess.run([gcc, "--version"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DevmemError(f"cannot run the C compiler {gcc}: {exc}",
                          "install gcc (apt-get install gcc) or set CC, or run with --no-c to skip the "
                          "C baselines") from exc
    digest = hashlib.sha256(source + b"\0" + version).hexdigest()[:16]
    out_dir = (directory or cache_dir()) / digest
    binary = out_dir / "cwalk"
    if binary.exists():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    src_path = out_dir / SOURCE_NAME
    src_path.write_bytes(source)
    tmp = out_dir / f"cwalk.{os.getpid()}.tmp"
    proc = subprocess.run(
        [gcc, "-O2", "-Wall", "-o", str(tmp), str(src_path)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise DevmemError(
            f"compiling the C baseline {src_path} failed: {proc.stderr.strip()[:500]}",
            "check that gcc and the C library headers are installed (apt-get install gcc libc6-dev)",
        )
    os.replace(tmp, binary)  # atomic: concurrent runs never see a half-written binary
    return binary


def write_records(path: Path, records: Sequence[tuple[bytes | memoryview, int]]) -> None:
    """Write ``(control_bytes, nbytes)`` records in the format ``cwalk`` reads."""
    with open(path, "wb") as f:
        for control, nbytes in records:
            n = len(control)
            f.write(struct.pack("<II", n, nbytes))
            f.write(control)
            f.write(b"\0" * ((-n) % 8))


@dataclass(frozen=True)
class CWalkResult:
    """One run of a C walk. ``seconds`` is wall time, ``cpu_seconds`` process CPU time."""

    mode: str
    buffers: int
    frags: int
    bytes: int
    release_syscalls: int
    frags_freed: int
    release_errors: int
    last_errno: int
    seconds: float
    cpu_seconds: float

    @property
    def frags_per_s(self) -> float:
        return self.frags / self.seconds if self.seconds > 0 else 0.0


def run_cwalk(binary: Path, mode: CWalkMode, records_path: Path, frags: int,
              timeout: float = 300.0) -> CWalkResult:
    """Run one C walk over the records in ``records_path`` until ``frags`` fragments.

    Raises:
        DevmemError: the walk exited with an error (its stderr is in the message).
    """
    proc = subprocess.run([str(binary), mode, str(records_path), str(frags)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise DevmemError(f"C baseline '{mode}' failed: {proc.stderr.strip()}",
                          "run it by hand to see why: " + " ".join([str(binary), mode, str(records_path),
                                                                    str(frags)]))
    data = json.loads(proc.stdout)
    return CWalkResult(
        mode=data["mode"], buffers=int(data["buffers"]), frags=int(data["frags"]),
        bytes=int(data["bytes"]), release_syscalls=int(data["release_syscalls"]),
        frags_freed=int(data["frags_freed"]), release_errors=int(data["release_errors"]),
        last_errno=int(data["last_errno"]), seconds=float(data["seconds"]),
        cpu_seconds=float(data["cpu_seconds"]),
    )
