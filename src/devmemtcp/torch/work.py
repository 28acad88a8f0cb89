"""Work objects of the devmem process group.

Strategy: an operation is split into parts (one send or receive per peer);
the worker threads complete the parts; the Work completes when its last part
does, or fails at its first failing part, or at its deadline (the process
group's timeout, from ``init_process_group(timeout=...)``) when the
watchdog fails it. Completion sets a :class:`torch.futures.Future` (what
``get_future`` returns and what DDP's reducer waits on, through the
``PyWork`` trampoline of torch/csrc/distributed/c10d/PyProcessGroup.hpp).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from devmemtcp.errors import DevmemError


class DevmemTorchError(DevmemError, RuntimeError):
    """A devmem process-group operation failed.

    A RuntimeError too, as torch.distributed's own backends raise. Attributes:
    ``op`` (e.g. ``"recv"``, ``"allgather"``), ``peer`` (the peer rank, or
    None), ``cause`` (one line).
    """

    def __init__(self, op: str, peer: int | None, cause: str, hint: str | None = None) -> None:
        self.op = op
        self.peer = peer
        self.cause = cause
        where = f" with rank {peer}" if peer is not None else ""
        super().__init__(f"devmem {op}{where} failed: {cause}", hint)


class DevmemWork(dist._Work):
    """The Work returned by every devmem operation.

    ``wait(timeout)`` returns True once done and raises the operation's
    DevmemTorchError if it failed; with a nonzero ``timeout``
    (datetime.timedelta) it raises DevmemTorchError when the operation is
    not done by then, as torch's Work.wait documents (the operation itself
    keeps running until the group's timeout). ``get_future()`` gives a
    torch.futures.Future of the output tensors; ``is_completed()``,
    ``is_success()``, ``exception()``, ``result()`` and ``source_rank()``
    (for receives from any source) behave as for Gloo's Work.
    """

    def __init__(self, op: str, parts: int, result: Any, deadline: float,
                 peers: tuple[int, ...] = (), driver: Any = None) -> None:
        super().__init__()
        self.op = op
        self.peers = peers
        self.deadline = deadline
        self._result = result
        self._left = parts
        self._lock = threading.Lock()
        # Completion latch: held until the work ends; a waiter takes and gives it back at once.
        self._latch = threading.Lock()
        self._latch.acquire()
        self._ended = False
        self._exc: BaseException | None = None
        self._source: int = -1
        self._future: torch.futures.Future[Any] | None = None  # made on first get_future()
        self._finally: list[Any] = []
        # driver(work, deadline): lets the waiting thread do the receiving itself
        # (the process group's leader/follower reading, see process_group.py)
        self._driver = driver
        self.recv_parts: list[Any] = []  # the receives from a known peer (what the driver reads)
        if parts == 0:
            self._finish()

    # -- completion, called by the worker threads --------------------------

    def on_done(self, fn: Any) -> None:
        """Run ``fn()`` (before the future is set) when the last part completes."""
        self._finally.append(fn)

    def part_done(self, source: int | None = None) -> None:
        with self._lock:
            if self._ended:
                return
            if source is not None:
                self._source = source
            self._left -= 1
            if self._left > 0:
                return
        try:
            for fn in self._finally:
                fn()
        except Exception as exc:  # a post-copy failing is the op failing
            self.fail(DevmemTorchError(self.op, None, f"completing the output failed: {exc}"))
            return
        self._finish()

    def fail(self, exc: BaseException) -> bool:
        """Fail the work (first failure wins); False when it had already finished."""
        return self._end(exc)

    def _finish(self) -> None:
        self._end(None)

    def _end(self, exc: BaseException | None) -> bool:
        """End the work once (failed with ``exc``, or done): open the latch and
        complete the future if one was asked for; False when it had ended."""
        with self._lock:
            if self._ended:
                return False
            self._exc = exc
            self._ended = True
            fut = self._future
        self._latch.release()
        if fut is not None:
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(self._result)
        return True

    def _wait_latch(self, seconds: float) -> bool:
        if self._ended:
            return True
        if self._latch.acquire(timeout=seconds):
            self._latch.release()
            return True
        return self._ended

    # -- the torch Work API -------------------------------------------------

    def wait(self, timeout: timedelta | float = timedelta(0)) -> bool:
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        end = time.monotonic() + seconds
        if not self._ended and self._driver is not None and self.recv_parts:
            self._driver(self, end if seconds > 0 else None)
        if seconds > 0:
            if not self._wait_latch(max(0.0, end - time.monotonic())):
                raise DevmemTorchError(self.op, self.peers[0] if len(self.peers) == 1 else None,
                                       f"not completed within wait(timeout={seconds:g}s)",
                                       "wait again, or give a longer timeout")
        else:
            # The watchdog fails the work at its deadline; the margin only guards
            # against a process group that is gone without failing it.
            while not self._wait_latch(1.0):
                if time.monotonic() > self.deadline + 30.0:
                    self.fail(DevmemTorchError(self.op, None, "timed out and no watchdog failed it"))
        if self._exc is not None:
            raise self._exc
        return True

    def get_future(self) -> torch.futures.Future[Any]:
        with self._lock:
            fut = self._future
            if fut is None:
                fut = self._future = torch.futures.Future()
                if self._ended:
                    if self._exc is not None:
                        fut.set_exception(self._exc)
                    else:
                        fut.set_result(self._result)
        return fut

    def is_completed(self) -> bool:
        return self._ended

    def is_success(self) -> bool:
        return self._ended and self._exc is None

    def exception(self) -> BaseException | None:
        return self._exc

    def result(self) -> Any:
        self.wait()
        return self._result

    def source_rank(self) -> int:
        if not self._ended or self._source < 0:
            raise DevmemTorchError(self.op, None,
                                   "source rank asked before a receive from any source completed")
        return self._source

    def _source_rank(self) -> int:
        return self.source_rank()

    def synchronize(self) -> None:
        self.wait()

    def __repr__(self) -> str:
        state = "failed" if self._exc else "completed" if self._ended else "pending"
        return f"DevmemWork({self.op}, peers={list(self.peers)}, {state})"
