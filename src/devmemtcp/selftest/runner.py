"""``devmemtcp selftest``: the qualification suite for a devmem NIC.

Modelled on the kernel's drv-net devmem tests
(tools/testing/selftests/drivers/net/hw/devmem.py: check_rx, check_tx,
check_tx_chunks, check_rx_hds) and ncdevmem.c's ``run_devmem_tests`` (bind
must fail with an empty queue list, with header split off, with hds-thresh
non-zero, on an out-of-range queue, twice on one queue; must succeed with
header split on; shrinking the channels below a bound queue must fail).

Every case ends as ``pass``, ``fail`` (with the reason: the errno and kernel
message seen, or the bytes that differed) or ``skip`` (with the reason: on
the kernel backend the failing :func:`devmemtcp.doctor.diagnose` check that
makes the case impossible, or a missing peer). Every NIC change a case makes
goes through the same undo journal as NicSetup, so the NIC is restored after
each case, and the last case checks that it was.

Peers: on ``lo`` the traffic peer is this namespace; on any other interface
the peer lives in another network namespace (``peer_netns``) reached through
the interface (a veth pair), or the RX/TX cases are skipped ("needs a peer").
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devmemtcp.errors import DevmemError, IncompleteStreamError, NetlinkError, more_queues_hint
from devmemtcp.host import ifaces
from devmemtcp.host import netns as host_netns
from devmemtcp.selftest.catalogue import (
    BIND_RX_CASES,
    BindRxCase,
    CaseFailed,
    CaseSkipped,
    check_bind_rx,
    netlink_errno,
)
from devmemtcp.setup import (
    ChannelsStep,
    Entry,
    Journal,
    NicSetup,
    RingsStep,
    default_journal_dir,
    undo_journal,
)

VALIDATE = 7  # ncdevmem's --validate period used by the stream cases
HDS_SIZES: tuple[int, ...] = tuple(sorted(
    set(range(1, 65)) | {n + d for k in range(6, 14) for n in (1 << k,) for d in (-1, 0, 1)} - {8193}))


@dataclass
class CaseResult:
    """One case: ``status`` is "pass", "fail" or "skip"; ``reason`` says why it
    failed or was skipped (empty on pass); ``details`` are the figures seen."""

    name: str
    description: str
    status: str = "skip"
    reason: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class SelftestReport:
    """All cases of one run; ``ok`` is true when no case failed."""

    ifname: str
    backend: str
    backend_reason: str
    netns: str | None
    peer_netns: str | None
    local_addr: str | None
    peer_addr: str | None
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.cases)

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.cases) for s in ("pass", "fail", "skip")}

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["counts"] = self.counts()
        return d


# ---------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------


def _peer_address(local: str, peer_netns: str) -> str | None:
    """An address in ``peer_netns`` on the same subnet as ``local`` (ifname's address)."""
    mine = [a for a in ifaces.addresses() if str(a.ip) == local] or [ipaddress.ip_interface(local)]
    nets = [a.network for a in mine]
    for a in host_netns.run_in(peer_netns, ifaces.addresses):
        if any(a.ip in n for n in nets) and str(a.ip) != local:
            return str(a.ip)
    return None


# ---------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    return exc.message if isinstance(exc, DevmemError) else f"{type(exc).__name__}: {exc}"


class Selftest:
    """The devmem qualification suite for one interface.

    Args:
        ifname: the NIC (in this thread's network namespace).
        backend: "auto" (kernel when doctor finds devmem RX possible, else
            emulated), "kernel", "emulated", or a Backend object.
        peer_netns: namespace of the traffic peer (required for RX/TX on
            interfaces other than lo).
        memory: "host" (memfd) or "udmabuf"; default udmabuf for the kernel
            backend (the kernel binds only real dma-bufs), host for emulated.
        nbytes: bytes per stream case (default 4 MiB).
        dmabuf_size: bytes of each dma-buf (default 16 MiB).
        journal_dir: the undo journal directory (shared with NicSetup and
            ``devmemtcp restore``).
        on_case: called with each CaseResult as it completes.
    """

    def __init__(self, ifname: str, *, backend: Any = "auto", peer_netns: str | None = None,
                 memory: str | None = None, nbytes: int = 4 << 20, dmabuf_size: int = 16 << 20,
                 journal_dir: Path | str | None = None,
                 on_case: Callable[[CaseResult], None] | None = None) -> None:
        self.ifname = ifname
        self.backend_choice = backend
        self.peer_netns = peer_netns
        self.memory_choice = memory
        self.nbytes = nbytes
        self.dmabuf_size = dmabuf_size
        self.journal_dir = Path(journal_dir) if journal_dir is not None else default_journal_dir()
        self.on_case = on_case
        self._rx_result: Any = None

    # -- environment ----------------------------------------------------------------
    def _prepare(self) -> None:
        from devmemtcp.backend import open_backend

        self.ifindex = ifaces.ifindex(self.ifname)
        self.backend, self.backend_reason = open_backend(self.backend_choice, self.ifname, direction="rx")
        self.memory = self.memory_choice or ("udmabuf" if self.backend.name == "kernel" else "host")
        self.nic = self.backend.nic(self.ifname)
        self.doctor: dict[str, Any] = {}
        if self.backend.name == "kernel":
            from devmemtcp.doctor import diagnose

            self.doctor = {c.name: c for c in diagnose(self.ifname).checks}
        self.local_addr = "127.0.0.1" if self.ifname == "lo" else ifaces.local_address(self.ifname)
        self.peer_addr: str | None = None
        if self.ifname == "lo":
            self.peer_addr = self.local_addr
        elif self.peer_netns and self.local_addr:
            self.peer_addr = _peer_address(self.local_addr, self.peer_netns)
        self.before = self._snapshot()
        if Journal(self.ifname, self.journal_dir).exists():
            raise DevmemError(f"{self.ifname} has an undo journal: it is set up by devmemtcp already",
                              f"run 'devmemtcp restore {self.ifname}' first")

    def _snapshot(self) -> dict[str, Any]:
        def read(fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except (NetlinkError, OSError) as exc:
                return f"refused: {errno.errorcode.get(netlink_errno(exc)[0] or 0, '?')}"
        return {"channels": read(self.nic.get_channels), "rings": read(self.nic.get_rings),
                "rss": read(self.nic.get_rss_indir), "rules": read(self.nic.list_rules)}

    def _require(self, *checks: str) -> None:
        """Skip (kernel backend) when doctor found one of ``checks`` failing."""
        for name in checks:
            c = self.doctor.get(name)
            if c is not None and c.status == "fail":
                raise CaseSkipped(f"doctor: {name}: {c.detail}")

    def _require_queues(self) -> int:
        n = self.nic.rx_queue_count()
        if n < 2:
            raise CaseSkipped(f"{self.ifname} has {n} RX queue: devmem needs one besides the others "
                              f"({more_queues_hint(self.ifname, 2, self.backend.name)})")
        return n

    def _require_peer(self) -> tuple[str, str]:
        if not self.local_addr:
            raise CaseSkipped(f"{self.ifname} has no IP address")
        if not self.peer_addr:
            raise CaseSkipped("needs a traffic peer: pass --peer-netns NS (the other end of a veth), "
                              "or run on lo; a second host is not supported by this runner")
        return self.local_addr, self.peer_addr

    def _in_peer(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.peer_netns and self.ifname != "lo":
            return host_netns.run_in(self.peer_netns, fn, *args)
        return fn(*args)

    @contextlib.contextmanager
    def _dmabuf(self, memory: str | None = None) -> Iterator[Any]:
        from devmemtcp.memory import open_dmabuf

        buf = open_dmabuf(memory or self.memory, self.dmabuf_size)
        try:
            yield buf
        finally:
            buf.close()

    @contextlib.contextmanager
    def _changed(self, entry: Entry, change: Callable[[], None]) -> Iterator[None]:
        """Make ``change`` with ``entry`` journaled first; undo it afterwards."""
        j = Journal(self.ifname, self.journal_dir)
        j.meta = {"pid": os.getpid(), "created": time.time(), "backend": self.backend.name,
                  "netns": host_netns.inode(), "ifindex": self.ifindex, "selftest": True}
        j.append(entry)
        try:
            change()
            yield
        finally:
            result = undo_journal(j, self.nic)
            if not result.ok:
                raise DevmemError("could not restore the NIC after a selftest case: "
                                  + "; ".join(f"{s}: {d}" for s, d in result.failed),
                                  f"run 'devmemtcp restore {self.ifname}'")

    def _rings(self, split: str, hds: int) -> contextlib.AbstractContextManager[None]:
        r = self.nic.get_rings()
        entry = RingsStep(before={"tcp_data_split": r.tcp_data_split, "hds_thresh": r.hds_thresh})
        want_split = None if r.tcp_data_split == split else split
        want_hds = None if r.hds_thresh == hds else hds
        return self._changed(entry, lambda: self.nic.set_rings(tcp_data_split=want_split,
                                                               hds_thresh=want_hds))

    # -- cases ------------------------------------------------------------------------
    def _bind_case(self, case: BindRxCase) -> dict[str, Any]:
        """A catalogue case (devmemtcp.selftest.catalogue), with this NIC's rings changed as it asks."""
        self._require(*case.doctor)
        if not case.needs_queues:
            # the queue list is checked before the dma-buf: any memory shows the refusal
            memory = self.memory if self.memory in self._ok_memory() else "host"
            return check_bind_rx(case, self.backend, self.ifindex, self.nic.rx_queue_count(),
                                 lambda: self._dmabuf(memory))
        if self.memory == "udmabuf":
            self._require("udmabuf")
        n = self._require_queues()
        if case.hds_thresh:
            hmax = self.nic.get_rings().hds_thresh_max
            if not hmax:
                raise CaseSkipped("the driver reports no hds-thresh-max: hds-thresh cannot be raised")
            case = dataclasses.replace(case, hds_thresh=min(case.hds_thresh, hmax))
        with self._rings(case.tcp_data_split, case.hds_thresh):
            details = check_bind_rx(case, self.backend, self.ifindex, n, self._dmabuf)
        if case.hds_thresh:
            details["hds_thresh"] = case.hds_thresh
        if case.name == "bind-queue-out-of-range":
            details["queue"] = n
        return details

    def _ok_memory(self) -> set[str]:
        c = self.doctor.get("udmabuf")
        return {"host"} | ({"udmabuf"} if c is None or c.status != "fail" else set())

    def _bind_prereqs(self) -> int:
        self._require("kernel-bind-rx", "cap-net-admin", "queue-management-api", "header-split")
        if self.memory == "udmabuf":
            self._require("udmabuf")
        return self._require_queues()

    def case_channels_below_bound_queue(self) -> dict[str, Any]:
        n = self._bind_prereqs()
        self._require("rx-queues")
        ch = self.nic.get_channels()
        field_name = "combined" if ch.combined else "rx"
        with self._rings("enabled", 0), self._dmabuf() as b, self.backend.bind_rx(self.ifindex, b, [n - 1]):
            entry = ChannelsStep(before={"rx": ch.rx, "tx": ch.tx, "combined": ch.combined})
            seen: dict[str, Any] = {}

            def shrink() -> None:
                try:
                    self.nic.set_channels(**{field_name: n - 1})
                except (NetlinkError, OSError) as exc:
                    err, msg = netlink_errno(exc)
                    seen.update(errno=errno.errorcode.get(err or 0, str(err)), extack=msg)
            with self._changed(entry, shrink):
                after = self.nic.get_channels()
            if not seen:
                raise CaseFailed(f"{field_name} channels {getattr(ch, field_name)} -> {n - 1} succeeded "
                                 f"below bound queue {n - 1}; it must fail")
            if seen["errno"] != "EINVAL":
                raise CaseFailed(f"channels-set failed with {seen['errno']} ({seen['extack']}), "
                                 "expected EINVAL")
            if getattr(after, field_name) != getattr(ch, field_name):
                raise CaseFailed("the refused channel change changed the channel count")
            return seen

    def _stream_prereqs(self) -> tuple[str, str, int]:
        n = self._bind_prereqs()
        self._require("ntuple", "rss", "rx-queues")
        local, peer = self._require_peer()
        return local, peer, n

    def _receive(self, sizes: list[int], nodelay: bool) -> Any:
        """receive_stream on this NIC while the peer sends ``sizes`` pattern bytes."""
        from devmemtcp.pattern import pattern_bytes
        from devmemtcp.transfer import receive_stream

        local, _peer, n = self._stream_prereqs()
        total = sum(sizes)
        data = pattern_bytes(VALIDATE, 0, total).tobytes()
        errors: list[BaseException] = []

        def send(port: int) -> None:
            def go() -> None:
                with socket.create_connection((local, port), timeout=30) as s:
                    if nodelay:
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    off = 0
                    for size in sizes:
                        s.sendall(data[off: off + size])
                        off += size
            try:
                self._in_peer(go)
            except BaseException as exc:
                errors.append(exc)

        threads: list[threading.Thread] = []

        def on_ready(port: int) -> None:
            t = threading.Thread(target=send, args=(port,), daemon=True)
            t.start()
            threads.append(t)

        # NicSetup here (not receive_stream's) so the journal goes to this suite's journal_dir;
        # the rule needs the port, so listen on a fixed free port picked first
        port = self._free_port(local)
        try:
            with NicSetup(self.backend, self.ifname, queues=(n - 1, 1), flow=(local, port),
                          journal_dir=self.journal_dir):
                # told the length: a stream cut short is never a pass (a pattern prefix would be)
                result = receive_stream(local, port, ifname=self.ifname, queues=(n - 1, 1),
                                        validate=VALIDATE, memory=self.memory, size=self.dmabuf_size,
                                        backend=self.backend, nic_config=False, accept_timeout=30,
                                        expect_bytes=total, on_ready=on_ready)
        except IncompleteStreamError as exc:
            for t in threads:
                t.join(30)
            detail = f" (the peer: {_describe(errors[0])})" if errors else ""
            raise CaseFailed(exc.message + detail) from None
        for t in threads:
            t.join(30)
        if errors:
            raise CaseFailed(f"the peer could not send: {_describe(errors[0])}")
        if result.bytes != total:
            raise CaseFailed(f"received {result.bytes} bytes, sent {total}")
        if result.flow_steering_errors:
            raise CaseFailed(f"{result.flow_steering_errors} bytes landed on an ordinary queue "
                             "(flow steering failed)")
        if not result.validated or not result.complete:
            raise CaseFailed(result.error or "the stream was not validated")
        return result

    @staticmethod
    def _free_port(addr: str) -> int:
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.bind((addr, 0))
            return int(s.getsockname()[1])

    def case_rx(self) -> dict[str, Any]:
        size = 64 << 10
        sizes = [size] * max(1, self.nbytes // size)
        result = self._receive(sizes, nodelay=False)
        self._rx_result = result
        if result.frags == 0:
            raise CaseFailed("no devmem fragment arrived: every byte came as linear or readable data")
        return {"bytes": result.bytes, "complete": result.complete, "frags": result.frags,
                "linear_bytes": result.linear_bytes, "gbps": round(result.gbps, 3),
                "binding_id": result.binding_id}

    def _transmit(self, nbytes: int, chunk: int) -> dict[str, Any]:
        from devmemtcp.pattern import PatternChecker
        from devmemtcp.transfer import send_stream

        self._require("kernel-bind-tx", "netmem-tx")
        if self.memory == "udmabuf":
            self._require("udmabuf")
        _local, peer = self._require_peer()
        ready = threading.Event()
        box: dict[str, Any] = {}

        def serve() -> None:
            def go() -> None:
                fam = socket.AF_INET6 if ":" in peer else socket.AF_INET
                with socket.socket(fam, socket.SOCK_STREAM) as ls:
                    ls.bind((peer, 0))
                    ls.listen(1)
                    ls.settimeout(30)
                    box["port"] = ls.getsockname()[1]
                    ready.set()
                    conn, _ = ls.accept()
                    with conn:
                        conn.settimeout(30)
                        checker = PatternChecker(VALIDATE)
                        while True:
                            chunk_ = conn.recv(1 << 20)
                            if not chunk_:
                                break
                            checker.check(chunk_)
                        box["bytes"] = checker.offset
            try:
                self._in_peer(go)
            except BaseException as exc:
                box["error"] = exc
                ready.set()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        if not ready.wait(30) or "error" in box:
            raise CaseFailed(f"the peer could not listen: {_describe(box.get('error', TimeoutError()))}")
        try:
            result = send_stream(peer, box["port"], nbytes=nbytes, ifname=self.ifname, validate=VALIDATE,
                                 chunk=chunk, memory=self.memory, size=self.dmabuf_size, backend=self.backend)
        except ImportError as exc:
            raise CaseSkipped(f"devmem TX is not available in this build: {exc}") from None
        t.join(60)
        if "error" in box:
            raise CaseFailed(f"the peer saw: {_describe(box['error'])}")
        if box.get("bytes") != nbytes:
            raise CaseFailed(f"the peer received {box.get('bytes')} bytes, {nbytes} were sent")
        # complete: the peer received exactly nbytes (checked above), not only a pattern prefix
        return {"bytes": result.bytes, "complete": bool(result.complete), "frags": result.frags,
                "chunk": chunk, "completions": result.completions, "gbps": round(result.gbps, 3)}

    def case_tx(self) -> dict[str, Any]:
        return self._transmit(self.nbytes, 64 << 10)

    def case_tx_chunks(self) -> dict[str, Any]:
        return self._transmit(min(self.nbytes, 48 << 10), 3)

    def case_hds_sweep(self) -> dict[str, Any]:
        result = self._receive(list(HDS_SIZES), nodelay=True)
        if result.linear_bytes:
            raise CaseFailed(f"{result.linear_bytes} bytes arrived as linear data with hds-thresh 0")
        return {"sizes": f"{len(HDS_SIZES)} sizes, {HDS_SIZES[0]}..{HDS_SIZES[-1]} bytes",
                "bytes": result.bytes, "complete": result.complete, "frags": result.frags, "linear_bytes": 0}

    def case_tokens_returned(self) -> dict[str, Any]:
        r = self._rx_result
        if r is None:
            raise CaseSkipped("needs the rx case to have run")
        if r.tokens_released != r.frags:
            raise CaseFailed(f"{r.frags} frags received, {r.tokens_released} tokens given back")
        return {"frags": r.frags, "tokens_released": r.tokens_released,
                "release_syscalls": r.release_syscalls}

    def case_nic_restored(self) -> dict[str, Any]:
        after = self._snapshot()
        changed = [k for k in after if after[k] != self.before[k]]
        if Journal(self.ifname, self.journal_dir).exists():
            raise CaseFailed(f"an undo journal is left in {self.journal_dir}")
        if changed:
            raise CaseFailed("changed and not restored: " + ", ".join(changed))
        return {"compared": sorted(after)}

    CASES: tuple[tuple[str, str, str], ...] = (
        *((c.name, c.description, "bind:" + c.name) for c in BIND_RX_CASES),
        ("channels-below-bound-queue", "shrinking channels below a bound queue fails",
         "case_channels_below_bound_queue"),
        ("rx", "RX of a validated stream into the dma-buf", "case_rx"),
        ("tx", "TX of a validated stream from the dma-buf", "case_tx"),
        ("tx-chunks", "TX of a validated stream in 3-byte iovecs", "case_tx_chunks"),
        ("hds-sweep", "header split of payloads 1..8192 bytes: no linear data", "case_hds_sweep"),
        ("tokens-returned", "every RX token is given back", "case_tokens_returned"),
        ("nic-restored", "the NIC is as it was before the suite", "case_nic_restored"),
    )

    def _case(self, method: str) -> Callable[[], dict[str, Any]]:
        if method.startswith("bind:"):
            case = next(c for c in BIND_RX_CASES if c.name == method[5:])
            return lambda: self._bind_case(case)
        fn: Callable[[], dict[str, Any]] = getattr(self, method)
        return fn

    def run(self, only: list[str] | None = None) -> SelftestReport:
        """Run the cases (all, or those named in ``only``) and return the report.
        Raises DevmemError only for problems with the environment itself."""
        self._prepare()
        report = SelftestReport(self.ifname, self.backend.name, self.backend_reason, None, self.peer_netns,
                                self.local_addr, self.peer_addr)
        try:
            for name, description, method in self.CASES:
                if only and name not in only and name != "nic-restored":
                    continue
                case = CaseResult(name, description)
                t0 = time.perf_counter()
                try:
                    case.details = self._case(method)() or {}
                    case.status = "pass"
                except CaseSkipped as exc:
                    case.status, case.reason = "skip", str(exc)
                except CaseFailed as exc:
                    case.status, case.reason = "fail", str(exc)
                except (DevmemError, OSError, ValueError) as exc:
                    case.status, case.reason = "fail", _describe(exc)
                case.seconds = round(time.perf_counter() - t0, 3)
                report.cases.append(case)
                if self.on_case:
                    self.on_case(case)
        finally:
            if self.backend_choice is not self.backend:
                self.backend.close()
        return report


def run_selftest(ifname: str, *, netns: str | None = None, only: list[str] | None = None,
                 **kwargs: Any) -> SelftestReport:
    """Run :class:`Selftest` for ``ifname`` (``kwargs`` go to it), inside network
    namespace ``netns`` when given; ``only`` names the cases to run."""
    def go() -> SelftestReport:
        report = Selftest(ifname, **kwargs).run(only)
        report.netns = netns
        return report
    return host_netns.run_in(netns, go) if netns else go()
