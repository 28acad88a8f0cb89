"""The NIC setup steps: one class each, apply and undo side by side.

The steps (Documentation/networking/devmem.rst, "NIC configuration";
tools/testing/selftests/drivers/net/hw/ncdevmem.c ``configure_*``), in the
order they run:

1. ``channels`` (optional): set the RX (or combined) channel count so the
   devmem queues exist.
2. ``rings``: header split on (tcp-data-split enabled) and hds-thresh 0;
   bind-rx refuses otherwise (net/core/devmem.c).
3. ``rss``: spread the RSS indirection table over the queues *below* the
   devmem queues (``ethtool -X IF equal START``), so other traffic stays off
   them.
4. ``rule``: an ntuple rule steering the flow (TCP to dst ip:port, from src
   ip:port when known) to the first devmem queue. RX_CLS_LOC_ANY for drivers
   that assign slots (bnxt), the lowest free slot for the others (mlx5).
5. ``bind`` (when a dma-buf is given): bind-rx of the dma-buf to the queues.

Each step class is a dataclass whose fields are its journal entry (what the
undo needs); :meth:`Step.apply` journals an entry *before* making the change
(through :meth:`StepContext.record`) and :meth:`~devmemtcp.setup.journal.Entry.undo`
puts it back. A setting already at the wanted value is not journaled. Adding
a step is one class here, decorated with :func:`~devmemtcp.setup.journal.register`.
"""

from __future__ import annotations

import abc
import dataclasses
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from devmemtcp.errors import DevmemError, more_queues_hint
from devmemtcp.setup.journal import ENTRY_TYPES, Entry, Journal, register
from devmemtcp.types import NtupleRule

if TYPE_CHECKING:
    from devmemtcp.backend.base import Backend, Binding, NicControl
    from devmemtcp.memory.base import DmaBuf

E = TypeVar("E", bound=Entry)


# ---------------------------------------------------------------------------
# Flow
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    """The TCP flow to steer: to ``dst_ip:dst_port`` (this host's address and
    port), optionally from ``src_ip``/``src_port`` (the peer). IPv4 or IPv6."""

    dst_ip: str
    dst_port: int
    src_ip: str | None = None
    src_port: int | None = None

    def __post_init__(self) -> None:
        dst = ipaddress.ip_address(self.dst_ip)
        if self.src_ip is not None and ipaddress.ip_address(self.src_ip).version != dst.version:
            raise DevmemError(f"flow source {self.src_ip} and destination {self.dst_ip} differ in IP "
                              "version", "give both as IPv4 or both as IPv6")
        for port in (self.dst_port, self.src_port):
            if port is not None and not 0 < port <= 0xFFFF:
                raise DevmemError(f"port {port} is out of range", "use a TCP port in 1..65535")

    @classmethod
    def of(cls, flow: Flow | tuple[Any, ...]) -> Flow:
        """A Flow from a Flow or a tuple ``(dst_ip, dst_port[, src_ip[, src_port]])``."""
        if isinstance(flow, Flow):
            return flow
        return cls(*flow)

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ipaddress.ip_address(self.dst_ip).version == 6 else socket.AF_INET

    def rule(self, queue: int) -> NtupleRule:
        """The ntuple rule steering this flow to ``queue`` (5-tuple when the
        peer is known, 3-tuple otherwise)."""
        return NtupleRule(dst_ip=self.dst_ip, dst_port=self.dst_port, queue=queue, src_ip=self.src_ip,
                          src_port=self.src_port, family=self.family)


def same_rule(a: NtupleRule, b: NtupleRule) -> bool:
    """Do ``a`` and ``b`` steer the same flow to the same queue (location aside)?"""
    def key(r: NtupleRule) -> tuple[Any, ...]:
        def ip(x: str | None) -> str | None:
            return str(ipaddress.ip_address(x)) if x else None
        return (ip(r.dst_ip), r.dst_port, r.queue, ip(r.src_ip), r.src_port)
    return key(a) == key(b)


# ---------------------------------------------------------------------------
# What a step sees of the setup
# ---------------------------------------------------------------------------


class StepContext(Protocol):
    """The NicSetup a step runs in (see :class:`devmemtcp.setup.NicSetup`)."""

    backend: Backend
    ifname: str
    queues: tuple[int, int]
    flow: Flow | None
    channels: int | None
    dmabuf: DmaBuf | None
    journal: Journal
    binding: Binding | None
    rule: NtupleRule | None
    report: list[dict[str, Any]]

    @property
    def nic(self) -> NicControl: ...

    def record(self, entry: E) -> E:
        """Journal ``entry`` (owned by this setup) before the change is made."""
        ...

    def hook(self, stage: str, step: str) -> None:
        """Tell the ``on_step`` callback: stage "journaled" or "applied"."""
        ...

    def others(self) -> list[dict[str, Any]]:
        """The other live setups sharing this NIC's journal."""
        ...


def _conflict(ctx: StepContext, what: str) -> DevmemError:
    pids = sorted({int(m["pid"]) for m in ctx.others()})
    return DevmemError(
        f"{ctx.ifname} is set up for another devmem flow (pid {', '.join(map(str, pids))}) with "
        f"a different {what}",
        "use the same --queues (and channel count) as that flow, or stop it first")


def _check_queues(ctx: StepContext) -> None:
    start, count = ctx.queues
    n = ctx.nic.rx_queue_count()
    if start + count > n:
        raise DevmemError(
            f"{ctx.ifname} has {n} RX queue(s); queues {start}..{start + count - 1} do not exist",
            f"pick queues below {n}, or " + more_queues_hint(ctx.ifname, start + count, ctx.backend.name))


@dataclass(kw_only=True)
class Step(Entry):
    """A setup step; its dataclass fields are its journal entry."""

    #: Part of the steps NicSetup runs when none are named.
    by_default: ClassVar[bool] = True

    @classmethod
    @abc.abstractmethod
    def apply(cls, ctx: StepContext) -> None:
        """Make this step's change on ``ctx.nic`` (journaled first), or record in
        ``ctx.report`` that it was already in place. Raises DevmemError, or the
        backend's error (errno, extack) when the driver refuses."""


# ---------------------------------------------------------------------------
# The steps, in the order they run
# ---------------------------------------------------------------------------


@register
@dataclass(kw_only=True)
class ChannelsStep(Step):
    """Set the RX (or combined, when the NIC reports combined channels) channel count."""

    step: ClassVar[str] = "channels"
    shared: ClassVar[bool] = True
    by_default: ClassVar[bool] = False
    #: the counts before: {"rx", "tx", "combined"} (None: not reported)
    before: dict[str, int | None]

    @classmethod
    def apply(cls, ctx: StepContext) -> None:
        assert ctx.channels is not None
        ch = ctx.nic.get_channels()
        field_name = "combined" if ch.combined else "rx"
        if getattr(ch, field_name) == ctx.channels:
            ctx.report.append({"step": "channels", "changed": False, field_name: ctx.channels})
            return
        if ctx.others():
            raise _conflict(ctx, "channel count")
        ctx.record(cls(before={"rx": ch.rx, "tx": ch.tx, "combined": ch.combined}))
        ctx.nic.set_channels(**{field_name: ctx.channels})
        ctx.hook("applied", "channels")
        ctx.report.append({"step": "channels", "changed": True, "before": getattr(ch, field_name),
                           "after": ctx.channels, "field": field_name})

    def undo(self, nic: NicControl, binding: Binding | None) -> str:
        chan = nic.get_channels()
        kw = {k: v for k in ("rx", "tx", "combined")
              if (v := self.before.get(k)) is not None and getattr(chan, k) != v}
        if not kw:
            return "channels already as before"
        nic.set_channels(**kw)
        return "channels restored (" + ", ".join(f"{k} {v}" for k, v in kw.items()) + ")"


@register
@dataclass(kw_only=True)
class RingsStep(Step):
    """Header split on (tcp-data-split enabled) and hds-thresh 0."""

    step: ClassVar[str] = "rings"
    shared: ClassVar[bool] = True
    #: the settings before: {"tcp_data_split": "enabled"/"disabled"/"unknown", "hds_thresh": bytes}
    before: dict[str, str | int | None]

    @classmethod
    def apply(cls, ctx: StepContext) -> None:
        rings = ctx.nic.get_rings()
        if rings.tcp_data_split == "enabled" and rings.hds_thresh in (0, None):
            ctx.report.append({"step": "rings", "changed": False})
            return
        before = {"tcp_data_split": rings.tcp_data_split, "hds_thresh": rings.hds_thresh}
        ctx.record(cls(before=dict(before)))
        split = "enabled" if rings.tcp_data_split != "enabled" else None
        hds = 0 if rings.hds_thresh not in (0, None) else None
        ctx.nic.set_rings(tcp_data_split=split, hds_thresh=hds)
        ctx.hook("applied", "rings")
        ctx.report.append({"step": "rings", "changed": True, "before": before,
                           "after": {"tcp_data_split": "enabled", "hds_thresh": 0}})

    def undo(self, nic: NicControl, binding: Binding | None) -> str:
        now = nic.get_rings()
        split = self.before.get("tcp_data_split")
        hds = self.before.get("hds_thresh")
        want_split = str(split) if split is not None and now.tcp_data_split != split else None
        want_hds = int(hds) if hds is not None and now.hds_thresh != hds else None
        if want_split is None and want_hds is None:
            return "header split already as before"
        nic.set_rings(tcp_data_split=want_split, hds_thresh=want_hds)
        return f"rings restored (tcp-data-split {split}, hds-thresh {hds})"


@register
@dataclass(kw_only=True)
class RssStep(Step):
    """Spread the RSS indirection table over the queues below the devmem queues."""

    step: ClassVar[str] = "rss"
    shared: ClassVar[bool] = True
    #: the indirection table before
    before: list[int]
    #: the table before was the driver's default spread (undo resets to default)
    default: bool = False

    @classmethod
    def apply(cls, ctx: StepContext) -> None:
        start, _count = ctx.queues
        if start < 1:
            raise DevmemError("devmem queues start at 0: RSS has no ordinary queue left for other traffic",
                              "use devmem queues above 0 (e.g. --queues 1 on a 2-queue NIC)")
        _check_queues(ctx)
        table = ctx.nic.get_rss_indir()
        if not table:
            raise DevmemError(f"{ctx.ifname} reports no RSS indirection table",
                              "this driver cannot keep other traffic off the devmem queues; "
                              "leave out the rss step only if nothing else receives on this NIC")
        want = [i % start for i in range(len(table))]
        if table == want:
            ctx.report.append({"step": "rss", "changed": False, "queues": start})
            return
        if ctx.others():
            raise _conflict(ctx, "RSS spread (devmem queues)")
        nq = ctx.nic.rx_queue_count()
        ctx.record(cls(before=table, default=table == [i % nq for i in range(len(table))]))
        ctx.nic.set_rss_indir(want)
        ctx.hook("applied", "rss")
        ctx.report.append({"step": "rss", "changed": True, "spread_over": start, "table_size": len(table)})

    def undo(self, nic: NicControl, binding: Binding | None) -> str:
        if nic.get_rss_indir() == self.before:
            return "RSS indirection table already as before"
        if self.default:
            nic.set_rss_indir([])  # back to the driver's default spread (not "user configured")
            return "RSS indirection table reset to the driver default"
        nic.set_rss_indir(list(self.before))
        return "RSS indirection table restored"


@register
@dataclass(kw_only=True)
class RuleStep(Step):
    """An ntuple rule steering the flow to the first devmem queue."""

    step: ClassVar[str] = "rule"
    #: the rule asked for
    rule: NtupleRule
    #: where the driver put it (None until the insert is confirmed)
    location: int | None = None
    #: the rule locations in use before the insert (to find an unconfirmed one)
    pre_locations: list[int] = field(default_factory=list)

    @classmethod
    def apply(cls, ctx: StepContext) -> None:
        assert ctx.flow is not None
        _check_queues(ctx)
        rule = ctx.flow.rule(ctx.queues[0])
        existing = ctx.nic.list_rules()
        for r in existing:
            if same_rule(r, rule):
                ctx.rule = r
                ctx.report.append({"step": "rule", "changed": False, "location": r.location})
                return
        entry = ctx.record(cls(rule=rule, pre_locations=[r.location for r in existing
                                                          if r.location is not None]))
        placed = ctx.nic.add_rule(rule)
        entry.location = placed.location
        ctx.journal.save()
        ctx.rule = placed
        ctx.hook("applied", "rule")
        ctx.report.append({"step": "rule", "changed": True, "location": placed.location,
                           "rule": dataclasses.asdict(placed)})

    def undo(self, nic: NicControl, binding: Binding | None) -> str:
        rules = nic.list_rules()
        if self.location is not None:
            at = [r for r in rules if r.location == self.location]
            if at and same_rule(at[0], self.rule):
                nic.delete_rule(self.location)
                return f"deleted rule {self.location}"
            return f"rule {self.location} is gone or is not ours any more: left alone"
        pre = set(self.pre_locations)
        ours = [r for r in rules if r.location is not None and r.location not in pre
                and same_rule(r, self.rule)]
        for r in ours:
            assert r.location is not None
            nic.delete_rule(r.location)
        if ours:
            return f"deleted rule {ours[0].location} (insert was not confirmed before the crash)"
        return "the rule was never inserted"


@register
@dataclass(kw_only=True)
class BindStep(Step):
    """bind-rx of the dma-buf to the devmem queues (only when a dma-buf is given)."""

    step: ClassVar[str] = "bind"
    #: the queues bound
    queues: list[int]

    @classmethod
    def apply(cls, ctx: StepContext) -> None:
        if ctx.dmabuf is None:
            return
        start, count = ctx.queues
        queues = list(range(start, start + count))
        ctx.record(cls(queues=queues))
        ctx.binding = ctx.backend.bind_rx(ctx.nic.ifindex, ctx.dmabuf, queues)
        ctx.hook("applied", "bind")
        ctx.report.append({"step": "bind", "changed": True, "binding_id": ctx.binding.id,
                           "queues": list(ctx.binding.queues)})

    def undo(self, nic: NicControl, binding: Binding | None) -> str:
        if binding is not None:
            binding.close()
            return f"closed binding {binding.id} (unbinds queues {list(binding.queues)})"
        return "nothing to do: a binding ends with the process that made it"


def step_class(name: str) -> type[Step]:
    """The step class named ``name``; DevmemError for an unknown name."""
    cls = ENTRY_TYPES.get(name)
    if cls is None or not issubclass(cls, Step):
        raise DevmemError(f"unknown setup step {name!r}", f"choose from {', '.join(STEPS)}")
    return cls


#: Every step, in the order they run.
STEPS: tuple[str, ...] = tuple(n for n, c in ENTRY_TYPES.items() if issubclass(c, Step))
#: The steps run when none are named (``channels`` is added when a channel count is given).
DEFAULT_STEPS: tuple[str, ...] = tuple(n for n in STEPS if step_class(n).by_default)
#: Steps whose setting every flow on the NIC depends on; a flow's own are "rule" and "bind".
SHARED_STEPS: frozenset[str] = frozenset(n for n in STEPS if step_class(n).shared)
