"""Issue 11 item 2: waiting for another process's lock on the emulated NIC
state or an undo journal is bounded (recv's --timeout, else 30 s) and the
error names the holder's pid."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from devmemtcp.backend.emulated import EmulatedBackend
from devmemtcp.host.files import LockTimeout

CLI = [sys.executable, "-m", "devmemtcp.cli.main"]

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    kind, where = sys.argv[1], sys.argv[2]
    if kind == "emu":
        from devmemtcp.emulation import state
        ctx = state.locked(where)
    else:
        from devmemtcp.setup.journal import Journal, journal_lock
        ctx = journal_lock(Journal("lo", where))
    with ctx:
        print("held", flush=True)
        time.sleep(60)
""")


def _hold(kind: str, where: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, kind, where], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_state_lock_times_out_naming_the_holder(tmp_path: Path) -> None:
    d = str(tmp_path / "emu")
    holder = _hold("emu", d)
    try:
        with EmulatedBackend(directory=d, lock_timeout=0.3) as be:
            t0 = time.monotonic()
            with pytest.raises(LockTimeout) as exc:
                be.nic("lo").set_rings(hds_thresh=0)
            assert time.monotonic() - t0 < 5
        assert exc.value.holder == holder.pid
        assert f"locked by process {holder.pid}" in exc.value.message
        assert f"kill {holder.pid}" in (exc.value.hint or "")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("kind", ["emu", "journal"])
def test_recv_gives_up_after_its_timeout_while_another_holds_the_lock(kind: str) -> None:
    where = os.environ["DEVMEMTCP_EMU_DIR"] if kind == "emu" else os.environ["DEVMEMTCP_JOURNAL_DIR"]
    holder = _hold(kind, where)
    try:
        t0 = time.monotonic()
        proc = subprocess.run([*CLI, "recv", "--backend", "emulated", "--listen", "127.0.0.1", "--port", "0",
                               "--timeout", "1"], capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr
    assert f"locked by process {holder.pid}: gave up after 1 s" in proc.stderr
    assert elapsed < 20  # bounded by --timeout (plus start-up), not for ever



def test_setup_and_restore_give_up_after_lock_timeout() -> None:
    """setup and restore wait for the journal lock at most --lock-timeout
    seconds, then fail naming the holder; once it is gone, restore undoes
    the kept set-up."""
    setup = [*CLI, "setup", "lo", "--listen", "127.0.0.1", "--port", "5201", "--backend", "emulated"]
    restore = [*CLI, "restore", "lo"]
    kept = subprocess.run(setup, capture_output=True, text=True, timeout=60)
    assert kept.returncode == 0, kept.stderr
    holder = _hold("journal", os.environ["DEVMEMTCP_JOURNAL_DIR"])
    try:
        runs = [subprocess.run([*argv, "--lock-timeout", "0.5"], capture_output=True, text=True, timeout=60)
                for argv in (setup, restore)]
    finally:
        holder.kill()
        holder.wait()
    for proc in runs:
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"locked by process {holder.pid}: gave up after 0.5 s" in proc.stderr
    done = subprocess.run(restore, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not list(Path(os.environ["DEVMEMTCP_JOURNAL_DIR"]).glob("*.json"))
