"""Network namespaces: enter one, run a function in one, identify one, and
read a namespace's own sysfs.

:func:`enter` moves the calling thread into ``/run/netns/NAME`` (the
namespaces ``ip netns add`` creates) with ``setns(2)`` and back on exit;
:func:`run_in` runs a function in a fresh thread that entered one (the
caller's thread is untouched). Sockets opened inside (netlink included) stay
bound to that namespace. :func:`inode` identifies the calling thread's
namespace, :func:`name_of` gives its ``ip netns`` name.

``/sys/class/net`` keeps showing the namespace sysfs was mounted in, not the
thread's (fs/sysfs: the net namespace is captured at mount time), so
:func:`sysfs_queue_counts` reads a namespace's queues from a fresh sysfs
mounted by a short-lived child process in a private mount namespace, as
``ip netns exec`` does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from devmemtcp import abi
from devmemtcp.errors import DevmemError

T = TypeVar("T")

_local = threading.local()
_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def _setns(fd: int, nstype: int) -> None:
    if _c().setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _stack() -> list[str]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def current() -> str | None:
    """Name of the namespace this thread entered with :func:`enter`, or None
    (the namespace the process started in)."""
    stack = _stack()
    return stack[-1] if stack else None


def path_of(name: str) -> str:
    """``/run/netns/NAME``; DevmemError when the namespace does not exist."""
    if not name or "/" in name or name in (".", ".."):
        raise DevmemError(f"invalid network namespace name {name!r}",
                          "list namespaces with `ip netns list`")
    path = os.path.join(abi.NETNS_RUN_DIR, name)
    if not os.path.exists(path):
        raise DevmemError(f"network namespace {name!r} does not exist ({path} is missing)",
                          f"create it with `ip netns add {name}`, or list them with `ip netns list`")
    return path


@contextmanager
def maybe_enter(name: str | None) -> Iterator[str | None]:
    """:func:`enter` ``name``, or stay in the current namespace when ``None``."""
    if name is None:
        yield None
    else:
        with enter(name) as path:
            yield path


@contextmanager
def enter(name: str) -> Iterator[str]:
    """Run the body inside network namespace ``name``; yields its path.

    Raises DevmemError when the namespace is missing (hint: ``ip netns add
    NAME`` / ``ip netns list``) or when this process may not enter it
    (setns needs CAP_SYS_ADMIN). The thread is always moved back, and both
    namespace fds are closed, on exit.
    """
    path = path_of(name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        raise DevmemError(f"cannot open network namespace {name!r}: permission denied",
                          "run as root (entering a namespace needs CAP_SYS_ADMIN)") from None
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(target)
        raise
    try:
        try:
            _setns(target, abi.CLONE_NEWNET)
        except OSError as exc:
            if exc.errno in (_errno.EPERM, _errno.EACCES):
                raise DevmemError(f"cannot enter network namespace {name!r}: permission denied",
                                  "run as root (setns needs CAP_SYS_ADMIN)") from None
            raise DevmemError(f"cannot enter network namespace {name!r}: {exc.strerror}",
                              "check it with `ip netns list`") from None
        _stack().append(name)
        try:
            yield path
        finally:
            _stack().pop()
            _setns(home, abi.CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(home)


def run_in(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` run in a fresh thread that entered network
    namespace ``name`` (:func:`enter`); returns its result, re-raises its exception.

    Sockets, netlink and ioctls made by ``fn`` act in that namespace (and
    :func:`current` names it there); the caller's thread is untouched.
    Raises what :func:`enter` raises (missing namespace, no CAP_SYS_ADMIN).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with enter(name):
                box["value"] = fn(*args, **kwargs)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, name=f"netns-{name}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def inode() -> int:
    """Inode of the calling thread's network namespace (``/proc/thread-self/ns/net``,
    the ``net:[N]`` of ``ls -l``): what names a namespace in journals and NIC state.

    Threads may sit in different namespaces (``setns``), so the thread's, not
    the process's, namespace counts (``/proc/self`` only where thread-self is
    missing)."""
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return os.stat("/proc/self/ns/net").st_ino


def name_of(ns: int | None = None) -> str | None:
    """The ``ip netns`` name (an entry of /run/netns) of the namespace with inode
    ``ns`` (default: the calling thread's), or None when it has none (the
    initial namespace, usually)."""
    ns = inode() if ns is None else ns
    base = Path(abi.NETNS_RUN_DIR)
    if not base.is_dir():
        return None
    for entry in sorted(base.iterdir()):
        try:
            if os.stat(entry).st_ino == ns:
                return entry.name
        except OSError:
            continue
    return None


def describe() -> str:
    """The calling thread's namespace in words, for error texts:
    ``network namespace 'NAME'`` or ``this process's network namespace``."""
    name = current() or name_of()
    return f"network namespace {name!r}" if name else "this process's network namespace"


def _queue_counts_here(sysfs_root: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    net = os.path.join(sysfs_root, "class", "net")
    for ifname in sorted(os.listdir(net)):
        qdir = os.path.join(net, ifname, "queues")
        try:
            names = os.listdir(qdir)
        except OSError:
            continue
        out[ifname] = {"rx": sum(n.startswith("rx-") for n in names),
                       "tx": sum(n.startswith("tx-") for n in names)}
    return out


def sysfs_queue_counts(name: str | None = None) -> dict[str, dict[str, int]]:
    """{ifname: {"rx": n, "tx": n}}: the ``queues/rx-*`` and ``tx-*`` entries
    of every interface in ``/sys/class/net`` as namespace ``name`` sees it
    (``None``: the current thread's namespace; the mounted /sys when that
    is where the process started).

    For another namespace a forked child enters it, unshares its mount
    namespace, mounts a private sysfs and reports back (needs root).
    Raises DevmemError when that fails.
    """
    if name is None:
        name = current()
        if name is None:
            return _queue_counts_here("/sys")
    path = path_of(name)
    mnt = tempfile.mkdtemp(prefix="devmemtcp-sysfs-")
    rfd, wfd = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # child: never returns
            code = 0
            try:
                os.close(rfd)
                fd = os.open(path, os.O_RDONLY)
                _setns(fd, abi.CLONE_NEWNET)
                if _c().unshare(abi.CLONE_NEWNS) != 0:
                    raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
                if _c().mount(b"none", b"/", None, abi.MS_REC | abi.MS_PRIVATE, None) != 0:
                    raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
                if _c().mount(b"sysfs", mnt.encode(), b"sysfs", 0, None) != 0:
                    raise OSError(ctypes.get_errno(), "mount sysfs")
                payload: dict[str, object] = {"ok": _queue_counts_here(mnt)}
            except BaseException as exc:
                payload = {"error": f"{type(exc).__name__}: {exc}"}
                code = 1
            try:
                os.write(wfd, json.dumps(payload).encode())
            finally:
                os._exit(code)
        os.close(wfd)
        wfd = -1
        chunks = []
        while True:
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.waitpid(pid, 0)
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)
        shutil.rmtree(mnt, ignore_errors=True)
    try:
        result = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        result = {}
    if "ok" not in result:
        raise DevmemError(f"cannot read sysfs of network namespace {name!r}: "
                          f"{result.get('error', 'no answer from the helper process')}",
                          "run as root (mounting sysfs for a namespace needs CAP_SYS_ADMIN)")
    counts: dict[str, dict[str, int]] = result["ok"]
    return counts
