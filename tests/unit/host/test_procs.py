"""host.procs: a process is alive while it runs with the start time recorded for it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from devmemtcp.host import procs


def test_dead_owner_is_not_alive() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    start = procs.start_time(p.pid)
    assert start is not None and procs.alive(p.pid, start)
    p.wait()
    assert not procs.alive(p.pid, start)
    assert procs.alive(*procs.me())
    assert not procs.alive(os.getpid() + 10**7, 1)


def test_reused_pid_and_zombie_are_not_alive() -> None:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = procs.start_time(p.pid)
        assert start is not None
        assert procs.alive(p.pid) and procs.alive(p.pid, start)
        assert not procs.alive(p.pid, start + 1)  # another process that got the same pid
    finally:
        p.kill()
    deadline = time.monotonic() + 10
    while procs.alive(p.pid) and time.monotonic() < deadline:  # exited, not reaped: a zombie
        time.sleep(0.01)
    assert not procs.alive(p.pid) and procs.start_time(p.pid) is not None  # still in /proc, but dead
    p.wait()
    assert procs.start_time(p.pid) is None


def test_me_is_this_process_and_pid_zero_is_nobody() -> None:
    pid, start = procs.me()
    assert pid == os.getpid() and start == procs.start_time(pid)
    assert not procs.alive(0) and not procs.alive(-1)
