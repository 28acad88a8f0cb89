"""Private state on disk: directories only their user can enter, files opened
without following symlinks, locks that give up on time and name their holder.

The undo journal and the emulated NIC's state decide what devmemtcp changes
on a NIC, so another local user must not be able to read, plant or lock
them. Where they live (:func:`state_root`):

* root: ``/run/devmemtcp`` (tmpfs, gone at reboot like the NIC settings);
* other users: ``$XDG_RUNTIME_DIR/devmemtcp`` (per-user tmpfs, 0700 by
  systemd-logind), else ``$XDG_CACHE_HOME/devmemtcp`` or
  ``~/.cache/devmemtcp``; never a predictable name in a shared /tmp.

Every directory on the way from the root is checked by :func:`private_dir`:
owned by the user, not writable by group or others, not a symlink. Files are
opened with ``O_NOFOLLOW`` (and ``O_EXCL`` when created for an atomic
replace) and checked after opening to be regular files owned by the user.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from devmemtcp.errors import DevmemError

__all__ = ["LockTimeout", "atomic_write", "lock_file", "open_private", "private_dir", "read_private",
           "state_root"]

DIR_MODE = 0o700
FILE_MODE = 0o600


class LockTimeout(DevmemError):
    """A lock was not granted in time; ``holder`` is the pid that holds it, if known."""

    def __init__(self, message: str, hint: str, holder: int | None) -> None:
        super().__init__(message, hint)
        self.holder = holder


def state_root() -> Path:
    """The user's private state directory (not created: see :func:`private_dir`)."""
    if os.geteuid() == 0:
        return Path("/run/devmemtcp")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and _owned_private(runtime):
        return Path(runtime) / "devmemtcp"
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache) if cache and os.path.isabs(cache) else Path.home() / ".cache"
    return base / "devmemtcp"


def _owned_private(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _refuse(path: Path, why: str) -> DevmemError:
    return DevmemError(
        f"refusing to use {path}: {why}",
        f"remove it or fix its owner and mode (chown {os.geteuid()} {path}; chmod 700 {path}), "
        "or point DEVMEMTCP_JOURNAL_DIR / DEVMEMTCP_EMU_DIR at a directory of your own")


def check_private_dir(path: Path) -> None:
    """Raise DevmemError unless ``path`` is a real directory owned by this user
    and not writable by group or others."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise _refuse(path, "it does not exist") from None
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(path, "it is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "it is not a directory")
    if st.st_uid != os.geteuid():
        raise _refuse(path, f"it is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})")
    if st.st_mode & 0o022:
        raise _refuse(path, f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")


def private_dir(path: Path | str) -> Path:
    """Create ``path`` (mode 0700) if missing, then check it with :func:`check_private_dir`.

    Parents that already exist are left as they are (``/run``, a home
    directory); the directories this call creates are 0700.

    Raises:
        DevmemError: the directory exists but is a symlink, not ours, or
            writable by others; or it cannot be created (the error names it).
    """
    p = Path(path)
    missing = [d for d in (p, *p.parents) if not os.path.lexists(d)]
    try:
        for d in reversed(missing):  # each one we create is 0700, whatever the umask
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=DIR_MODE)
                os.chmod(d, DIR_MODE)
    except PermissionError:
        raise DevmemError(f"cannot create {p}: permission denied",
                          "set DEVMEMTCP_JOURNAL_DIR / DEVMEMTCP_EMU_DIR to a directory you own") from None
    except OSError as exc:
        raise DevmemError(f"cannot create {p}: {exc.strerror}",
                          "set DEVMEMTCP_JOURNAL_DIR / DEVMEMTCP_EMU_DIR to a directory you own") from None
    check_private_dir(p)
    return p


def open_private(path: Path | str, flags: int = os.O_RDWR | os.O_CREAT) -> int:
    """``open(2)`` a state file: ``O_NOFOLLOW | O_CLOEXEC``, mode 0600 when created.

    Returns the fd. Raises DevmemError when ``path`` is a symlink, not a
    regular file, or owned by another user (the fd is closed first);
    FileNotFoundError when it is missing and ``O_CREAT`` is not given.
    """
    p = Path(path)
    try:
        fd = os.open(p, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(p, "it is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(p, "it is not a regular file")
        if st.st_uid != os.geteuid():
            raise _refuse(p, f"it is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private(path: Path | str) -> bytes:
    """The bytes of a state file opened with :func:`open_private` (read-only)."""
    fd = open_private(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def atomic_write(path: Path | str, data: bytes) -> None:
    """Replace ``path`` with ``data``: a fresh ``O_EXCL | O_NOFOLLOW`` file in the
    same directory, fsync, rename over the old one, fsync the directory."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of this pid's crash; O_EXCL below refuses anything planted since
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)
    dfd = os.open(p.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@contextlib.contextmanager
def lock_file(path: Path | str, *, timeout: float | None = None, what: str = "state") -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``path`` (a 0600 file, created if missing).

    The holder writes its pid into the file, so a waiter that gives up can
    name it. ``timeout`` in seconds (None waits for ever, 0 tries once).

    Raises:
        LockTimeout: not granted within ``timeout``; names the holder's pid.
    """
    fd = open_private(path, os.O_RDWR | os.O_CREAT)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    holder = _holder(fd)
                    who = f"process {holder}" if holder else "another process"
                    raise LockTimeout(
                        f"{what} is locked by {who}: gave up after {timeout:g} s ({path})",
                        "wait for that process to finish, or stop it"
                        + (f" (kill {holder})" if holder else ""), holder) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield fd
    finally:
        os.close(fd)  # closing drops the flock


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
