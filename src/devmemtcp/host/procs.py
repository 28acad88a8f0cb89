"""Process liveness: is the process that wrote a journal entry or holds an
emulated binding still running?

A process is named by its pid and its start time (``/proc/PID/stat`` field
22, clock ticks since boot; fs/proc/array.c ``do_task_stat``), so a pid the
kernel handed to a new process after the old one exited is not taken for it.
"""

from __future__ import annotations

import os

_SELF: dict[int, int] = {}


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name (field 3 on), or
    None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ")"
    return raw[raw.rfind(b")") + 2:].split()


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/PID/stat``
    field 22), or None when there is no such process."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields is not None else None
    except (IndexError, ValueError):
        return None


def me() -> tuple[int, int]:
    """``(pid, start time)`` of the calling process, the pair :func:`alive`
    checks (the start time is read once per pid, so a forked child reads its
    own; 0 where /proc cannot tell it)."""
    pid = os.getpid()
    start = _SELF.get(pid)
    if start is None:
        start = _SELF[pid] = start_time(pid) or 0
    return pid, start


def alive(pid: int, start: int | None = None) -> bool:
    """True while process ``pid`` runs: it exists, is not a zombie (state Z or
    X: it has exited, only its parent has not reaped it yet) and, when
    ``start`` is given, started at ``start`` (not a reused pid). The calling
    process is always alive."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    fields = _stat_fields(pid)
    if fields is None:
        try:  # /proc may hide other users' processes (hidepid): ask the kernel
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True  # running; its start time cannot be read, so it is not told apart
    if not fields or fields[0] in (b"Z", b"X"):
        return False
    if start is None:
        return True
    try:
        return int(fields[19]) == start
    except (IndexError, ValueError):
        return False
