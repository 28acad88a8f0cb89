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

import contextlib
import errno
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from devmemtcp.errors import DevmemError, NetlinkError

if TYPE_CHECKING:
    from devmemtcp.backend.base import Backend
    from devmemtcp.memory.base import DmaBuf

__all__ = ["BIND_RX_CASES", "NETKIT_CASES", "BindRxCase", "CaseFailed", "CaseSkipped", "NetkitCase",
           "check_bind_rx", "check_netkit", "netlink_errno"]


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


# ---------------------------------------------------------------------------
# netkit: queue leasing, bind through a leased queue, netmem TX modes, and
# nk_devmem.py's stream cases (tools/testing/selftests/drivers/net/hw/nk_devmem.py)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NetkitCase:
    """One case of the container environment
    (:class:`devmemtcp.selftest.container.ContainerEnv`).

    ``arrange`` names what the case sets up before its request (one of the
    names :func:`check_netkit` knows); ``errno``/``extack`` the refusal the
    kernel gives (None: the request must succeed). ``source`` is the kernel
    function the answer comes from."""

    name: str
    description: str
    arrange: str
    errno: int | None = None
    extack: str | None = None
    source: str = ""


_QC = "netdev_nl_queue_create_doit (net/core/netdev-genl.c)"
_BUSY = "netdev_queue_busy (net/core/netdev_queues.c)"
_NKQ = "netkit_queue_create (drivers/net/netkit.c)"
_OPEN = "__net_mp_open_rxq (net/core/netdev_rx_queue.c, netkit series)"
_TXB = "netdev_nl_bind_tx_doit (net/core/netdev-genl.c, netkit TX series)"
_XMIT = "validate_xmit_unreadable_skb (net/core/dev.c, netkit TX series)"

NETKIT_CASES: tuple[NetkitCase, ...] = (
    NetkitCase("lease-same-ifindex", "queue-create with the lease ifindex equal to the device's",
               "same-ifindex", errno.EINVAL,
               "Lease ifindex cannot be the same as queue creation ifindex", _QC),
    NetkitCase("lease-to-physical", "queue-create on a physical device", "guest-physical", errno.EINVAL,
               "Device is not a virtual device", "netdev_can_create_queue (net/core/netdev_queues.c)"),
    NetkitCase("lease-from-virtual", "queue-create leasing from a virtual device", "lease-virtual",
               errno.EINVAL, "Lease device is a virtual device",
               "netdev_can_lease_queue (net/core/netdev_queues.c)"),
    NetkitCase("lease-no-queue-mgmt", "queue-create leasing from a driver without queue management",
               "no-queue-mgmt", errno.EINVAL, "Lease device does not support queue management operations",
               "netdev_can_lease_queue (net/core/netdev_queues.c)"),
    NetkitCase("lease-queue-out-of-range", "queue-create of a queue id >= the RX queue count",
               "out-of-range", errno.ERANGE, None, _QC),
    NetkitCase("lease-queue-leased", "queue-create of a queue already leased", "already-leased",
               errno.EBUSY, "Lease device queue is already leased", _BUSY),
    NetkitCase("lease-queue-xsk", "queue-create of a queue used by AF_XDP", "xsk", errno.EBUSY,
               "Lease device queue in use by AF_XDP", _BUSY),
    NetkitCase("lease-queue-bound", "queue-create of a queue with a memory provider", "bound", errno.EBUSY,
               "Lease device queue in use by memory provider", _BUSY),
    NetkitCase("lease-two-devices", "queue-create from a second physical device", "two-devices",
               errno.EOPNOTSUPP, "Leasing multiple queues from different devices not supported", _QC),
    NetkitCase("lease-primary", "queue-create on the netkit primary", "primary", errno.EOPNOTSUPP,
               "Device is unable to create a new queue", _NKQ),
    NetkitCase("lease-guest-full", "queue-create past the guest's numrxqueues", "guest-full", errno.EINVAL,
               "Device is unable to create a new queue", _NKQ + " -> netif_set_real_num_rx_queues"),
    NetkitCase("lease-ok", "queue-create leases the queue; queue-get shows it on both sides", "ok",
               source=_QC),
    NetkitCase("bind-rx-guest-unleased", "bind-rx of a guest queue without a lease", "bind-unleased",
               errno.EBUSY, "rx queue is mapped to a virtual netdev", _OPEN),
    NetkitCase("bind-rx-phys-leased", "bind-rx of a leased queue on the physical device", "bind-phys-leased",
               errno.EBUSY, "rx queue peered to a virtual netdev", _OPEN),
    NetkitCase("bind-rx-guest-split-off", "bind-rx on the guest checks header split on the physical NIC",
               "bind-split-off", errno.EINVAL, "tcp-data-split is disabled", _OPEN),
    NetkitCase("bind-rx-guest-hds", "bind-rx on the guest checks hds-thresh on the physical NIC",
               "bind-hds", errno.EINVAL, "hds-thresh is not zero", _OPEN),
    NetkitCase("bind-rx-guest-xdp", "bind-rx on the guest with XDP on the physical NIC", "bind-xdp",
               errno.EEXIST, "unable to custom memory provider to device with XDP program attached", _OPEN),
    NetkitCase("bind-rx-guest-ok", "bind-rx on the guest binds the leased physical queue", "bind-ok",
               source=_OPEN),
    NetkitCase("bind-tx-guest-no-lease", "bind-tx on a NO_DMA device without a lease", "tx-no-lease",
               errno.EOPNOTSUPP, "No DMA-capable device found for netmem TX", _TXB),
    NetkitCase("bind-tx-none", "bind-tx on a device without netmem TX", "tx-none", errno.EOPNOTSUPP,
               "Driver does not support netmem TX", _TXB),
    NetkitCase("bind-tx-guest-ok", "bind-tx on the guest binds the physical device (DMA device)", "tx-ok",
               source=_TXB),
    NetkitCase("xmit-none-drops", "unreadable skbs forwarded to a NONE device are dropped and counted",
               "xmit-none", source=_XMIT),
    NetkitCase("xmit-other-dma-drops", "unreadable skbs on a DMA device other than the bound one are dropped",
               "xmit-other-dma", source=_XMIT),
    NetkitCase("nk-rx", "RX of a validated stream in the container through the leased queue", "rx",
               source="nk_devmem.py check_nk_rx"),
    NetkitCase("nk-tx", "TX of a validated stream from the container (NO_DMA guest, DMA physical NIC)",
               "tx", source="nk_devmem.py check_nk_tx (NO_DMA passes)"),
    NetkitCase("nk-tx-chunks", "TX from the container in 3-byte iovecs", "tx-chunks",
               source="nk_devmem.py check_nk_tx_chunks"),
    NetkitCase("nk-hds-sweep",
               "header split of payloads 1..8192 bytes through the leased queue: no linear data",
               "hds-sweep", source="nk_devmem.py check_nk_rx_hds"),
)


def _expect_refusal(case: NetkitCase, fn: Callable[[], Any]) -> dict[str, Any]:
    try:
        result = fn()
    except (NetlinkError, OSError) as exc:
        err, msg = netlink_errno(exc)
        # (glibc names 95 ENOTSUP; the kernel says EOPNOTSUPP)
        name = "EOPNOTSUPP" if err == errno.EOPNOTSUPP else errno.errorcode.get(err or 0, str(err))
        seen = {"errno": name, "extack": msg}
        if case.errno is None:
            raise CaseFailed(f"refused with {seen['errno']} ({msg}); it must succeed") from None
        if err != case.errno:
            raise CaseFailed(f"{seen['errno']} ({msg}), expected {errno.errorcode[case.errno]}") from None
        if case.extack is not None and msg != case.extack:
            raise CaseFailed(f"extack {msg!r}, expected {case.extack!r}") from None
        return seen
    if case.errno is not None:
        with contextlib.suppress(Exception):
            result.close()
        raise CaseFailed(f"succeeded ({result!r}); it must fail with {errno.errorcode[case.errno]}")
    return {"result": result}


def check_netkit(case: NetkitCase, env: Any, nbytes: int = 4 << 20) -> dict[str, Any]:
    """Run ``case`` in ``env`` (a :class:`~devmemtcp.selftest.container.ContainerEnv`
    entered, no lease made yet); every lease and setting it makes is undone.
    Returns the details seen; raises CaseFailed when the answer differs."""
    try:
        return _NETKIT_ARRANGE[case.arrange](case, env, nbytes)
    finally:
        env.unlease()


def _dmabuf(size: int = 1 << 20) -> Any:
    from devmemtcp.memory import open_dmabuf

    return open_dmabuf("host", size)


def _bind_in(env: Any, ns: str, ifname: str, queues: list[int] | None) -> Any:
    """bind-rx (``queues``) or bind-tx (None) of ``ifname`` in ``ns``; returns the binding."""
    def go() -> Any:
        buf = _dmabuf()
        try:
            idx = socket.if_nametoindex(ifname)
            b = env.backend.bind_rx(idx, buf, queues) if queues is not None else env.backend.bind_tx(idx, buf)
        except BaseException:
            buf.close()
            raise
        return b
    return env.run_in(ns, go)


def _a_same(case: NetkitCase, env: Any, n: int) -> dict[str, Any]:
    return _expect_refusal(case, lambda: env.lease(guest=env.phys, guest_in_ctr=False))


def _a_guest_phys(case: NetkitCase, env: Any, n: int) -> dict[str, Any]:
    return _expect_refusal(case, lambda: env.lease(guest=env.other, guest_in_ctr=False))


def _a_lease_virtual(case: NetkitCase, env: Any, n: int) -> dict[str, Any]:
    return _expect_refusal(case, lambda: env.lease(phys=env.primary, queue=0))


def _a_no_qmgmt(case: NetkitCase, env: Any, n: int) -> dict[str, Any]:
    with env.caps(env.host_ns, env.phys, queue_mgmt=False):
        return _expect_refusal(case, lambda: env.lease())


def _a_range(case: NetkitCase, env: Any, n: int) -> dict[str, Any]:
    seen = _expect_refusal(case, lambda: env.lease(queue=4))
    return {**seen, "queue": 4}


def _a_leased(case: NetkitCase, env: Any, n: int) -> dict[str, Any]:
    env.lease()
    return _expect_refusal(case, lambda: env.lease())


def _a_xsk(case: NetkitCase, env: Any, n: int) -> dict[str, Any]:
    with env.caps(env.host_ns, env.phys, xsk=[env.lease_queue]):
        return _expect_refusal(case, lambda: env.lease())


def _a_bound(case: NetkitCase, env: Any, n: int) -> dict[str, Any]:
    with env.phys_ready():
        b = _bind_in(env, env.host_ns, env.phys, [env.lease_queue])
        try:
            return _expect_refusal(case, lambda: env.lease())
        finally:
            b.close()


def _a_two(case: NetkitCase, env: Any, n: int) -> dict[str, Any]:
    env.lease()
    return _expect_refusal(case, lambda: env.lease(phys=env.other, queue=0))


def _a_primary(case: NetkitCase, env: Any, n: int) -> dict[str, Any]:
    return _expect_refusal(case, lambda: env.lease(guest=env.primary, guest_in_ctr=False))


def _a_full(case: NetkitCase, env: Any, n: int) -> dict[str, Any]:
    env.lease()
    return _expect_refusal(case, lambda: env.lease(queue=0))


def _a_ok(case: NetkitCase, env: Any, n: int) -> dict[str, Any]:
    from devmemtcp.emulation.report import device

    gq = env.lease()
    guest = env.run_in(env.ctr_ns, lambda: device(env.ifindex(env.ctr_ns, env.guest), env.guest,
                                                  env.directory))
    phys = env.run_in(env.host_ns, lambda: device(env.ifindex(env.host_ns, env.phys), env.phys,
                                                  env.directory))
    g = next(q for q in guest["queues"] if q["type"] == "rx" and q["id"] == gq)
    p = next(q for q in phys["queues"] if q["type"] == "rx" and q["id"] == env.lease_queue)
    if g["lease"] is None or g["lease"]["queue"]["id"] != env.lease_queue:
        raise CaseFailed(f"guest queue {gq} shows lease {g['lease']}")
    if p["lease"] is None or p["lease"]["queue"]["id"] != gq:
        raise CaseFailed(f"physical queue {env.lease_queue} shows lease {p['lease']}")
    return {"guest_queue": gq, "guest_lease": g["lease"], "phys_lease": p["lease"]}


def _bind_case(case: NetkitCase, env: Any, queues: Callable[[int], list[int]], ns: str | None = None,
               ifname: str | None = None, **ready: Any) -> dict[str, Any]:
    gq = env.lease()
    caps = ready.pop("caps", None)
    xdp = env.caps(env.host_ns, env.phys, **caps) if caps else contextlib.nullcontext()
    with env.phys_ready(**ready), xdp:
        seen = _expect_refusal(case, lambda: _bind_in(env, ns or env.ctr_ns, ifname or env.guest, queues(gq)))
        if case.errno is None:
            b = seen.pop("result")
            try:
                bound = env.run_in(env.host_ns, lambda: env.backend.nic(env.phys).bound_queues())
                if bound.get(env.lease_queue) != b.id:
                    raise CaseFailed(f"physical queue {env.lease_queue} is not bound by {b.id}: {bound}")
                seen.update(binding_id=b.id, guest_queues=list(b.queues), phys_queue=env.lease_queue)
            finally:
                b.close()
        return seen


def _tx_case(case: NetkitCase, env: Any, lease: bool, ns: str, ifname: str,
             caps: dict[str, Any] | None = None) -> dict[str, Any]:
    if lease:
        env.lease()
    with env.caps(env.host_ns, ifname, **caps) if caps else contextlib.nullcontext():
        seen = _expect_refusal(case, lambda: _bind_in(env, ns, ifname, None))
    if case.errno is None:
        b = seen.pop("result")
        try:
            if b.ifname != env.phys or b.vdev is None or b.vdev[2] != env.guest:
                raise CaseFailed(f"binding {b.id} is on {b.ifname} (virtual {b.vdev}); expected {env.phys} "
                                 f"with virtual device {env.guest}")
            seen.update(binding_id=b.id, dma_device=b.ifname, virtual_device=b.vdev[2])
        finally:
            b.close()
    return seen


def _xmit_drop(case: NetkitCase, env: Any, mode: str) -> dict[str, Any]:
    import time

    import numpy as np

    from devmemtcp import abi, codec

    env.lease()
    port = env.free_port(env.peer_ns, env.peer_addr)
    got: dict[str, int] = {}

    def serve() -> None:
        with socket.socket() as ls:
            ls.bind((env.peer_addr, port))
            ls.listen(1)
            ls.settimeout(10)
            conn, _ = ls.accept()
            conn.settimeout(1.5)
            n = 0
            with contextlib.suppress(TimeoutError, OSError), conn:
                while chunk := conn.recv(1 << 16):
                    n += len(chunk)
            got["bytes"] = n

    before = env.tx_dropped(env.other)
    with env.caps(env.host_ns, env.other, netmem_tx=mode), env.route_via_other():
        t, _box = env.start_in(env.peer_ns, serve)
        time.sleep(0.2)

        def send() -> int:
            b = _bind_in(env, env.ctr_ns, env.guest, None)
            try:
                with socket.create_connection((env.peer_addr, port), timeout=10) as s:
                    s.setsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
                    iov = np.array([[0, 256 << 10]], dtype=np.uint64)
                    return int(env.backend.sendmsg(s, iov, codec.build_tx_cmsg(b.id), abi.MSG_ZEROCOPY))
            finally:
                b.close()
        sent = env.run_in(env.ctr_ns, send)
        t.join(15)
    after = env.tx_dropped(env.other)
    if after <= before:
        raise CaseFailed(f"{env.other} (netmem TX {mode}) tx_dropped {before} -> {after}: "
                         "nothing was dropped")
    if got.get("bytes"):
        raise CaseFailed(f"the peer received {got['bytes']} bytes through a dropping device")
    return {"sendmsg": sent, "tx_dropped": after - before, "peer_bytes": got.get("bytes", 0)}


def _a_stream(case: NetkitCase, env: Any, n: int) -> dict[str, Any]:
    from devmemtcp.selftest.container_streams import container_rx, container_tx

    if case.arrange == "rx":
        return container_rx(env, [64 << 10] * max(1, n // (64 << 10)), nodelay=False)
    if case.arrange == "hds-sweep":
        from devmemtcp.selftest.runner import HDS_SIZES

        r = container_rx(env, list(HDS_SIZES), nodelay=True)
        if r["linear_bytes"]:
            raise CaseFailed(f"{r['linear_bytes']} bytes arrived as linear data with hds-thresh 0")
        return r
    if case.arrange == "tx":
        return container_tx(env, n, 64 << 10)
    return container_tx(env, min(n, 48 << 10), 3)


_NETKIT_ARRANGE: dict[str, Callable[[NetkitCase, Any, int], dict[str, Any]]] = {
    "same-ifindex": _a_same, "guest-physical": _a_guest_phys, "lease-virtual": _a_lease_virtual,
    "no-queue-mgmt": _a_no_qmgmt, "out-of-range": _a_range, "already-leased": _a_leased, "xsk": _a_xsk,
    "bound": _a_bound, "two-devices": _a_two, "primary": _a_primary, "guest-full": _a_full, "ok": _a_ok,
    "bind-unleased": lambda c, e, n: _bind_case(c, e, lambda gq: [0]),
    "bind-phys-leased": lambda c, e, n: _bind_case(c, e, lambda gq: [e.lease_queue], e.host_ns, e.phys),
    "bind-split-off": lambda c, e, n: _bind_case(c, e, lambda gq: [gq], split="disabled"),
    "bind-hds": lambda c, e, n: _bind_case(c, e, lambda gq: [gq], hds=256),
    "bind-xdp": lambda c, e, n: _bind_case(c, e, lambda gq: [gq], caps={"xdp": True}),
    "bind-ok": lambda c, e, n: _bind_case(c, e, lambda gq: [gq]),
    "tx-no-lease": lambda c, e, n: _tx_case(c, e, False, e.ctr_ns, e.guest),
    "tx-none": lambda c, e, n: _tx_case(c, e, False, e.host_ns, e.other, {"netmem_tx": "none"}),
    "tx-ok": lambda c, e, n: _tx_case(c, e, True, e.ctr_ns, e.guest),
    "xmit-none": lambda c, e, n: _xmit_drop(c, e, "none"),
    "xmit-other-dma": lambda c, e, n: _xmit_drop(c, e, "dma"),
    "rx": _a_stream, "hds-sweep": _a_stream, "tx": _a_stream, "tx-chunks": _a_stream,
}
