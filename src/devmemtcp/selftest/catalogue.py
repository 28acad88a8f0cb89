"""The one catalogue of bind-rx qualification cases.

Each case is defined once, here, and run by two runners: ``devmemtcp
selftest`` (:class:`devmemtcp.selftest.runner.Selftest`, with its NIC changes
journaled) and tests/conformance (parametrised over :data:`BIND_RX_CASES`,
against the emulated NIC and, with ``DEVMEMTCP_NIC``, the kernel). Both call
:func:`check_bind_rx`, so their expectations cannot drift apart.

The cases follow ncdevmem.c's ``run_devmem_tests`` (bind must fail with an
empty queue list, with header split off, with hds-thresh non-zero, on an
out-of-range queue, twice on one queue; must succeed with header split on).
The errno and extack of each refusal come from net/core/netdev-genl.c
(``netdev_nl_bind_rx_doit``, ``netdev_nl_read_rxq_bitmap``) and
net/core/netdev_rx_queue.c (``__net_mp_open_rxq``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from devmemtcp.errors import DevmemError, NetlinkError

if TYPE_CHECKING:
    from devmemtcp.backend.base import Backend
    from devmemtcp.memory.base import DmaBuf

__all__ = ["BIND_RX_CASES", "BindRxCase", "CaseFailed", "CaseSkipped", "check_bind_rx", "netlink_errno"]


class CaseFailed(Exception):
    """A case's expectation was not met (the message is the reason)."""


class CaseSkipped(Exception):
    """A case cannot run here (the message is the reason)."""


@dataclass(frozen=True)
class BindRxCase:
    """One bind-rx case.

    ``queues`` maps the NIC's RX queue count to the queue ids to bind.
    ``errnos`` are the answers the kernel may give (empty: bind must
    succeed); the emulated NIC, which presents Linux 6.18, must give exactly
    ``errnos[0]`` and, when set, ``extack``. ``prebind`` binds the same
    queues first (from another dma-buf) and keeps them bound during the case.
    ``doctor`` names the doctor checks that must not fail for the case to
    mean anything on the kernel backend (otherwise it is skipped).
    """

    name: str
    description: str
    queues: Callable[[int], list[int]]
    errnos: tuple[int, ...] = ()
    extack: str | None = None
    tcp_data_split: str = "enabled"
    hds_thresh: int = 0
    prebind: bool = False
    needs_queues: bool = True
    doctor: tuple[str, ...] = ("kernel-bind-rx", "cap-net-admin", "queue-management-api", "header-split")
    source: str = ""

    @property
    def must_fail(self) -> bool:
        return bool(self.errnos)


def _last(n: int) -> list[int]:
    return [n - 1]


BIND_RX_CASES: tuple[BindRxCase, ...] = (
    BindRxCase(
        "bind-empty-queues", "bind-rx with an empty queue list fails (EINVAL)",
        queues=lambda n: [], errnos=(errno.EINVAL,), needs_queues=False,
        doctor=("kernel-bind-rx", "cap-net-admin"),
        source="netdev_nl_bind_rx_doit: GENL_REQ_ATTR_CHECK(NETDEV_A_DMABUF_QUEUES)"),
    BindRxCase(
        "bind-header-split-off", "bind-rx with header split off fails (EINVAL)",
        queues=_last, errnos=(errno.EINVAL,), extack="tcp-data-split is disabled",
        tcp_data_split="disabled", source="__net_mp_open_rxq (net/core/netdev_rx_queue.c)"),
    BindRxCase(
        "bind-hds-thresh-nonzero", "bind-rx with hds-thresh > 0 fails (EINVAL)",
        queues=_last, errnos=(errno.EINVAL,), extack="hds-thresh is not zero", hds_thresh=256,
        doctor=("kernel-bind-rx", "cap-net-admin", "queue-management-api", "header-split", "hds-thresh"),
        source="__net_mp_open_rxq (net/core/netdev_rx_queue.c)"),
    # 6.18 refuses the id while reading the queue nests (EINVAL); kernels whose
    # bitmap read does not check it give ERANGE "rx queue index out of range"
    # later, from __net_mp_open_rxq. The emulated NIC answers as 6.18.
    BindRxCase(
        "bind-queue-out-of-range", "bind-rx of a queue >= the RX queue count fails",
        queues=lambda n: [n], errnos=(errno.EINVAL, errno.ERANGE),
        source="netdev_nl_read_rxq_bitmap (6.18); __net_mp_open_rxq (older)"),
    BindRxCase(
        "bind-twice", "bind-rx twice on one queue fails (EEXIST)",
        queues=_last, errnos=(errno.EEXIST,), extack="designated queue already memory provider bound",
        prebind=True, source="__net_mp_open_rxq (net/core/netdev_rx_queue.c)"),
    BindRxCase(
        "bind-ok", "bind-rx with header split on and hds-thresh 0 succeeds", queues=_last,
        source="netdev_nl_bind_rx_doit"),
)


def netlink_errno(exc: BaseException) -> tuple[int | None, str | None]:
    """(errno, extack) of a refused netlink request or ioctl."""
    if isinstance(exc, NetlinkError):
        return exc.errno, exc.extack
    if isinstance(exc, OSError):
        return exc.errno, None
    return None, None


def _describe(exc: BaseException) -> str:
    return exc.message if isinstance(exc, DevmemError) else f"{type(exc).__name__}: {exc}"


def check_bind_rx(case: BindRxCase, backend: Backend, ifindex: int, nqueues: int,
                  open_dmabuf: Callable[[], AbstractContextManager[DmaBuf]]) -> dict[str, Any]:
    """Run ``case`` on a NIC whose rings are already as the case asks.

    Args:
        backend: the backend to bind through.
        ifindex: the NIC.
        nqueues: its RX queue count.
        open_dmabuf: a factory of dma-bufs (a context manager each), called
            once, twice for ``prebind`` cases.

    Returns the details seen: ``errno`` (name) and ``extack`` for refusals,
    ``binding_id`` and ``queues`` for a successful bind.

    Raises:
        CaseFailed: the answer differs from the case's expectation.
    """
    queues = case.queues(nqueues)
    with open_dmabuf() as buf:
        first = backend.bind_rx(ifindex, buf, queues) if case.prebind else None
        try:
            with open_dmabuf() as other:
                return _bind(case, backend, ifindex, queues, other if first else buf,
                             {"first_binding": first.id} if first else {})
        finally:
            if first is not None:
                first.close()


def _bind(case: BindRxCase, backend: Backend, ifindex: int, queues: list[int], buf: DmaBuf,
          extra: dict[str, Any]) -> dict[str, Any]:
    try:
        binding = backend.bind_rx(ifindex, buf, queues)
    except (NetlinkError, OSError) as exc:
        err, msg = netlink_errno(exc)
        seen = {"errno": errno.errorcode.get(err or 0, str(err)), "extack": msg, **extra}
        if not case.must_fail:
            raise CaseFailed(f"bind-rx of queues {queues} failed: {_describe(exc)}") from None
        allowed = case.errnos if backend.name == "kernel" else case.errnos[:1]
        if err not in allowed:
            raise CaseFailed(f"bind-rx failed with {seen['errno']} ({msg}), expected "
                             + " or ".join(errno.errorcode[e] for e in allowed)) from None
        # the kernel's text is checked where it gives one (older kernels may not)
        if case.extack and (msg is not None or backend.name != "kernel") and msg != case.extack:
            raise CaseFailed(f"extack {msg!r}, expected {case.extack!r}") from None
        return seen
    with binding:
        if case.must_fail:
            raise CaseFailed(f"bind-rx of queues {queues} succeeded (binding {binding.id}); it must fail")
        if binding.id < 1:
            raise CaseFailed(f"binding id {binding.id}: ids start at 1")
        return {"binding_id": binding.id, "queues": list(binding.queues), **extra}
