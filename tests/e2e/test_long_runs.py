"""Issue 11, "long runs": 10,000 bind/close cycles and 1,000 short
transfers in one process, with open fds, resident memory and state files
flat. Each test measures after a warm-up and at the end and prints the
figures (run with -s to see them).

The state directories go to tmpfs (/dev/shm) when there is one, as root's
/run/devmemtcp is: on a disk every state write's fsync would make these
runs take minutes (on tmpfs both take about 35 s, so they are not marked slow).
"""

from __future__ import annotations

import gc
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devmemtcp.backend.emulated import EmulatedBackend
from devmemtcp.emulation import state as st
from devmemtcp.memory.memfd import MemfdBuffer
from devmemtcp.transfer import run_demo


@pytest.fixture
def state_dirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="dmt-long-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK)
                                 else str(tmp_path)))
    monkeypatch.setenv("DEVMEMTCP_EMU_DIR", str(base / "emu"))
    monkeypatch.setenv("DEVMEMTCP_JOURNAL_DIR", str(base / "journal"))
    try:
        yield base
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def _files(base: Path) -> list[str]:
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


def _measure(base: Path) -> tuple[int, int, list[str]]:
    gc.collect()
    return _fds(), _rss_kib(), _files(base)


def test_10000_bind_close_cycles_keep_fds_memory_and_files_flat(state_dirs: Path) -> None:
    total, warm = 10_000, 500
    ifindex = socket.if_nametoindex("lo")
    with EmulatedBackend() as be, MemfdBuffer(16 * 4096) as buf:
        nic = be.nic("lo")
        nic.set_rings(tcp_data_split="enabled", hds_thresh=0)
        for i in range(total):
            b = be.bind_rx(ifindex, buf, [3])
            b.close()
            if i + 1 == warm:
                fds0, rss0, files0 = _measure(state_dirs)
        fds1, rss1, files1 = _measure(state_dirs)
        live = st.load_registry()["live"]
        pools = be.netdev.pools.items()
        nic.set_rings(tcp_data_split="unknown", hds_thresh=st.DEFAULT_HDS_THRESH)
    print(f"bind/close x{total}: fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB "
          f"(+{rss1 - rss0} KiB after {total - warm} cycles), state files {len(files0)} -> {len(files1)}")
    assert fds1 == fds0
    assert files1 == files0
    assert rss1 - rss0 < 4 * 1024  # a leak of one 1-KiB object per cycle would be 9.3 MiB
    assert live == {} and pools == []


def test_1000_short_transfers_keep_fds_memory_and_files_flat(state_dirs: Path) -> None:
    # warm-up past the bounded caches that fill in the first transfers (the emulated RX's
    # per-binding cmsg templates, at most 65 of them, about 2.6 MiB): growth after it is a leak
    total, warm = 1_000, 200
    with EmulatedBackend() as be:
        for i in range(total):
            r = run_demo(nbytes=64 << 10, backend=be, size=1 << 20, timeout=30)
            assert r["validated"] is True and r["bytes"] == 64 << 10
            if i + 1 == warm:
                fds0, rss0, files0 = _measure(state_dirs)
        fds1, rss1, files1 = _measure(state_dirs)
    print(f"transfers x{total}: fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB "
          f"(+{rss1 - rss0} KiB after {total - warm} transfers), state files {len(files0)} -> {len(files1)}")
    assert fds1 == fds0
    assert files1 == files0
    assert not [f for f in files1 if f.startswith("journal/") and f.endswith(".json")]  # every setup undone
    assert rss1 - rss0 < 8 * 1024  # a leak of one 64-KiB transfer's buffer each time would be 50 MiB
