"""The container environment of the netkit devmem cases (drv-net ``NetDrvContEnv``).

:class:`ContainerEnv` builds, in private network namespaces, the topology of
the kernel's nk_devmem.py selftest on the emulated NIC:

    peer ns  [p0]----veth----[phys]   host ns   emulated devmem NIC (4 RX queues)
             [p1]----veth----[other]            a second emulated NIC
                             [primary]          netkit primary (forwarding)
                                 |  veth = emulated netkit pair
    ctr ns                   [guest]            netkit guest (NO_DMA, numrxqueues 2)

Traffic for the container is routed from ``phys`` through the primary to the
guest by IP forwarding (netkit's ``primary_rx_redirect`` does it with BPF).
Everything is undone on exit (leases, NIC settings, namespaces). Needs root
(``ip netns add``). Used by ``devmemtcp selftest --container`` and by
tests/conformance, through :func:`devmemtcp.selftest.catalogue.check_netkit`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from devmemtcp.errors import DevmemError
from devmemtcp.host import netns

T = TypeVar("T")
_seq = itertools.count()


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode:
        raise DevmemError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}",
                          "the container cases need root and iproute2 (ip netns add)")


class ContainerEnv:
    """Peer, host and container namespaces with an emulated netkit pair (see
    the module docstring). ``backend`` is the EmulatedBackend every case
    uses (state in ``directory``, default the usual state directory)."""

    phys = "eth-phys"
    other = "eth-other"
    primary = "nk-host"
    guest = "nk-ctr"
    lease_queue = 3

    def __init__(self, directory: str | None = None, numrxqueues: int = 2) -> None:
        from devmemtcp.backend.emulated import EmulatedBackend

        tag = f"{os.getpid() % 100000}x{next(_seq)}"
        self.peer_ns, self.host_ns, self.ctr_ns = f"dmtp{tag}", f"dmth{tag}", f"dmtc{tag}"
        n = (os.getpid() + next(_seq)) % 200 + 20
        self.net = f"10.{n}"
        self.peer_addr = f"{self.net}.1.2"
        self.phys_addr = f"{self.net}.1.1"
        self.ctr_addr = f"{self.net}.2.2"
        self.directory = directory
        self.numrxqueues = numrxqueues
        self.backend = EmulatedBackend(directory=directory)
        self._made: list[str] = []

    # -- namespaces -----------------------------------------------------------
    def run_in(self, ns: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """``fn(*args, **kw)`` in namespace ``ns``, on a thread of its own (returns its result)."""
        box: dict[str, Any] = {}

        def go() -> None:
            try:
                with netns.enter(ns):
                    box["r"] = fn(*args, **kw)
            except BaseException as exc:  # handed to the caller
                box["e"] = exc

        t = threading.Thread(target=go, daemon=True)
        t.start()
        t.join()
        if "e" in box:
            raise box["e"]
        return box["r"]

    def start_in(self, ns: str, fn: Callable[..., Any],
                 *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
        """Start ``fn(*args)`` in namespace ``ns`` on a thread; the box gets "r" or "e"."""
        box: dict[str, Any] = {}

        def go() -> None:
            try:
                with netns.enter(ns):
                    box["r"] = fn(*args)
            except BaseException as exc:
                box["e"] = exc

        t = threading.Thread(target=go, daemon=True)
        t.start()
        return t, box

    def __enter__(self) -> ContainerEnv:
        try:
            for ns in (self.peer_ns, self.host_ns, self.ctr_ns):
                _ip("netns", "add", ns)
                self._made.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            P, H, C, net = self.peer_ns, self.host_ns, self.ctr_ns, self.net
            _ip("link", "add", "p0", "netns", P, "type", "veth", "peer", "name", self.phys, "netns", H)
            _ip("link", "add", "p1", "netns", P, "type", "veth", "peer", "name", self.other, "netns", H)
            _ip("link", "add", self.primary, "netns", H, "type", "veth", "peer", "name", self.guest,
                "netns", C)
            for ns, dev, addr in ((P, "p0", f"{net}.1.2/24"), (P, "p1", f"{net}.3.2/24"),
                                  (H, self.phys, f"{net}.1.1/24"), (H, self.other, f"{net}.3.1/24"),
                                  (H, self.primary, f"{net}.2.1/24"), (C, self.guest, f"{net}.2.2/24")):
                _ip("-n", ns, "addr", "add", addr, "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", C, "route", "add", "default", "via", f"{net}.2.1")
            _ip("-n", P, "route", "add", f"{net}.2.0/24", "via", f"{net}.1.1")
            subprocess.run(["ip", "netns", "exec", H, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
            from devmemtcp.emulation import netkit

            self.run_in(H, netkit.make_netkit, self.primary, self.guest,
                        guest_netns=C, numrxqueues=self.numrxqueues, directory=self.directory)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the backend and delete the namespaces (their interfaces go with them)."""
        self.backend.close()
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the cases do -----------------------------------------------------
    def ifindex(self, ns: str, ifname: str) -> int:
        return self.run_in(ns, socket.if_nametoindex, ifname)

    def lease(self, guest: str | None = None, phys: str | None = None, queue: int | None = None,
              guest_in_ctr: bool = True) -> int:
        """queue-create from the host namespace: ``queue`` of ``phys`` to ``guest``
        (default: the lease queue of eth-phys to the container's guest)."""
        guest = guest or self.guest
        phys = phys or self.phys
        queue = self.lease_queue if queue is None else queue
        gns = self.ctr_ns if guest_in_ctr else self.host_ns
        g = self.ifindex(gns, guest)
        p = self.ifindex(self.host_ns, phys)
        return self.run_in(self.host_ns, lambda: self.backend.queue_create(
            g, p, queue, guest_netns=self.ctr_ns if guest_in_ctr else None))

    def unlease(self) -> None:
        from devmemtcp.emulation import netkit

        self.run_in(self.host_ns, netkit.unlease, self.guest, guest_netns=self.ctr_ns,
                    directory=self.directory)

    @contextlib.contextmanager
    def caps(self, ns: str, ifname: str, **kw: Any) -> Iterator[None]:
        """Set emulated driver capabilities of ``ifname`` for the body, then put them back."""
        def get() -> dict[str, Any]:
            return self.backend.nic(ifname).capabilities()

        before = self.run_in(ns, get)
        self.run_in(ns, lambda: self.backend.nic(ifname).set_capabilities(**kw))
        try:
            yield
        finally:
            old = {k: before[k] for k in kw}
            self.run_in(ns, lambda: self.backend.nic(ifname).set_capabilities(**old))

    @contextlib.contextmanager
    def phys_ready(self, split: str = "enabled", hds: int = 0, port: int | None = None,
                   queue: int | None = None) -> Iterator[None]:
        """Header split / hds-thresh on eth-phys and, with ``port``, an ntuple rule
        steering the container's flow to ``queue`` (default the lease queue); undone after."""
        from devmemtcp.types import NtupleRule

        def apply() -> tuple[Any, int | None]:
            nic = self.backend.nic(self.phys)
            r = nic.get_rings()
            nic.set_rings(tcp_data_split=split, hds_thresh=hds)
            loc = None
            if port is not None:
                q = self.lease_queue if queue is None else queue
                loc = nic.add_rule(NtupleRule(dst_ip=self.ctr_addr, dst_port=port, queue=q)).location
            return r, loc

        before, loc = self.run_in(self.host_ns, apply)

        def undo() -> None:
            nic = self.backend.nic(self.phys)
            if loc is not None:
                nic.delete_rule(loc)
            nic.set_rings(tcp_data_split=before.tcp_data_split, hds_thresh=before.hds_thresh)

        try:
            yield
        finally:
            self.run_in(self.host_ns, undo)

    def free_port(self, ns: str, addr: str) -> int:
        def pick() -> int:
            with socket.socket() as s:
                s.bind((addr, 0))
                return int(s.getsockname()[1])
        return self.run_in(ns, pick)

    @contextlib.contextmanager
    def route_via_other(self) -> Iterator[None]:
        """The host's route to the peer through eth-other for the body."""
        _ip("-n", self.host_ns, "route", "add", f"{self.peer_addr}/32", "dev", self.other)
        try:
            yield
        finally:
            _ip("-n", self.host_ns, "route", "del", f"{self.peer_addr}/32", "dev", self.other)

    def tx_dropped(self, ifname: str) -> int:
        from devmemtcp.emulation.report import device

        def read() -> int:
            return int(device(socket.if_nametoindex(ifname), ifname, self.directory)["tx_dropped"])
        return self.run_in(self.host_ns, read)


def run_container_selftest(*, backend: str = "auto", nbytes: int = 4 << 20, only: list[str] | None = None,
                           directory: str | None = None,
                           on_case: Callable[[Any], None] | None = None) -> Any:
    """``devmemtcp selftest --container``: the netkit cases of the catalogue
    (:data:`~devmemtcp.selftest.catalogue.NETKIT_CASES`: queue-create
    refusals, bind through a leased queue, netmem TX modes, and nk_devmem.py's
    RX / TX / TX-chunks / header-split sweep) in a fresh :class:`ContainerEnv`.

    ``backend`` "emulated" runs them on the emulated NIC; "kernel" needs the
    netdev family's queue-create op (Linux 7.1) and a netkit pair over a
    devmem NIC, which this runner does not build: every case is skipped with
    that reason; "auto" is "kernel" when the kernel has queue-create, else
    "emulated". Returns a :class:`~devmemtcp.selftest.runner.SelftestReport`."""
    import platform
    import time as _time

    from devmemtcp.selftest.catalogue import NETKIT_CASES, CaseFailed, CaseSkipped, check_netkit
    from devmemtcp.selftest.runner import CaseResult, SelftestReport

    has_op = _kernel_has_queue_create()
    if backend == "auto":
        backend, reason = ("kernel", "the kernel has queue-create") if has_op else (
            "emulated", f"this kernel ({platform.release()}) has no queue-create op "
                        "(netkit leasing is Linux 7.1)")
    else:
        reason = f"asked for (--backend {backend})"
    cases = [c for c in NETKIT_CASES if not only or c.name in only]
    report = SelftestReport("netkit", backend, reason, None, None, None, None)
    if backend == "kernel":
        why = ("this kernel has no queue-create op (netkit leasing is Linux 7.1)" if not has_op else
               "the kernel container cases need a netkit pair over a devmem NIC (NetDrvContEnv); "
               "this runner builds the emulated one only")
        for c in cases:
            r = CaseResult(c.name, c.description, "skip", why)
            report.cases.append(r)
            if on_case:
                on_case(r)
        return report
    with ContainerEnv(directory=directory) as env:
        report.netns, report.peer_netns = env.ctr_ns, env.peer_ns
        report.local_addr, report.peer_addr = env.ctr_addr, env.peer_addr
        for c in cases:
            r = CaseResult(c.name, c.description)
            t0 = _time.perf_counter()
            try:
                r.details = check_netkit(c, env, nbytes)
                r.details.pop("result", None)
                if c.errno is not None:
                    r.details["source"] = c.source
                r.status = "pass"
            except CaseSkipped as exc:
                r.status, r.reason = "skip", str(exc)
            except CaseFailed as exc:
                r.status, r.reason = "fail", str(exc)
            except (DevmemError, OSError, ValueError) as exc:
                r.status = "fail"
                r.reason = exc.message if isinstance(exc, DevmemError) else f"{type(exc).__name__}: {exc}"
            r.seconds = round(_time.perf_counter() - t0, 3)
            report.cases.append(r)
            if on_case:
                on_case(r)
    return report


def _kernel_has_queue_create() -> bool:
    try:
        from devmemtcp.netlink.netdev import NetdevClient

        with NetdevClient() as client:
            return "queue-create" in client.ops()
    except Exception:  # no netdev family at all: no queue-create either
        return False
