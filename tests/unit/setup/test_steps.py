"""Each setup step class on its own: apply journals a typed entry before the
change, undo puts the emulated NIC back exactly; the registry is the one list
of steps."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from devmemtcp.errors import DevmemError
from devmemtcp.setup import (
    DEFAULT_STEPS,
    SHARED_STEPS,
    STEPS,
    BindStep,
    ChannelsStep,
    Entry,
    Flow,
    Journal,
    RingsStep,
    RssStep,
    RuleStep,
    Step,
    step_class,
)
from devmemtcp.setup.journal import ENTRY_TYPES, entry_from_dict
from devmemtcp.types import NtupleRule

LO = "lo"


@pytest.fixture
def emu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from devmemtcp.backend.emulated import EmulatedBackend

    monkeypatch.setenv("DEVMEMTCP_EMU_DIR", str(tmp_path / "emu"))
    with EmulatedBackend() as backend:
        yield backend


@dataclasses.dataclass
class Ctx:
    """A minimal StepContext: what a step may use of its NicSetup."""

    backend: Any
    journal: Journal
    queues: tuple[int, int] = (3, 1)
    flow: Flow | None = None
    channels: int | None = None
    dmabuf: Any = None
    ifname: str = LO
    binding: Any = None
    rule: NtupleRule | None = None
    report: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stages: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    peers: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def nic(self) -> Any:
        return self.backend.nic(self.ifname)

    def record(self, entry: Any) -> Any:
        entry.owner = {"pid": 1, "start": 2, "id": "test"}
        self.journal.append(entry)
        self.hook("journaled", entry.step)
        return entry

    def hook(self, stage: str, step: str) -> None:
        self.stages.append((stage, step))

    def others(self) -> list[dict[str, Any]]:
        return self.peers


def _ctx(emu: Any, tmp_path: Path, **kw: Any) -> Ctx:
    return Ctx(emu, Journal(LO, tmp_path / "journal"), **kw)


def _apply_then_undo(ctx: Ctx, cls: type[Step]) -> Entry:
    """Apply ``cls``; check the journal on disk holds its typed entry, journaled
    before applied; undo the entry read back from disk; return it."""
    cls.apply(ctx)
    assert ctx.stages == [("journaled", cls.step), ("applied", cls.step)]
    (entry,) = Journal.load(ctx.journal.path).entries
    assert type(entry) is cls and entry == ctx.journal.entries[0]
    assert ctx.report[-1]["step"] == cls.step and ctx.report[-1]["changed"] is True
    entry.undo(ctx.nic, ctx.binding)
    return entry


def test_the_registry_is_the_list_of_steps() -> None:
    assert STEPS == ("channels", "rings", "rss", "rule", "bind")
    assert DEFAULT_STEPS == ("rings", "rss", "rule", "bind")
    assert {"channels", "rings", "rss"} == SHARED_STEPS
    assert [step_class(s) for s in STEPS] == [ChannelsStep, RingsStep, RssStep, RuleStep, BindStep]
    assert list(ENTRY_TYPES) == [*STEPS, "lease"]  # the lease entry (setup.lease) is journaled, not a step
    with pytest.raises(DevmemError, match="unknown setup step 'mtu'") as ei:
        step_class("mtu")
    assert "channels, rings, rss, rule, bind" in (ei.value.hint or "")


def test_channels_step(emu: Any, tmp_path: Path) -> None:
    ctx = _ctx(emu, tmp_path, channels=6, queues=(5, 1))
    before = ctx.nic.state()
    old = ctx.nic.get_channels().combined
    ChannelsStep.apply(ctx)
    assert ctx.nic.get_channels().combined == 6
    ctx.stages.clear()
    entry = Journal.load(ctx.journal.path).entries[0]
    assert isinstance(entry, ChannelsStep) and entry.before["combined"] == old
    assert entry.undo(ctx.nic, None) == "channels restored (combined 4)"
    assert ctx.nic.state() == before
    assert entry.undo(ctx.nic, None) == "channels already as before"


def test_channels_step_refuses_to_change_a_shared_count(emu: Any, tmp_path: Path) -> None:
    ctx = _ctx(emu, tmp_path, channels=6, peers=[{"pid": 77, "id": "other"}])
    with pytest.raises(DevmemError, match=r"another devmem flow \(pid 77\) with a different channel count"):
        ChannelsStep.apply(ctx)
    assert ctx.journal.entries == [] and ctx.nic.get_channels().combined == 4


def test_rings_step(emu: Any, tmp_path: Path) -> None:
    ctx = _ctx(emu, tmp_path)
    before = ctx.nic.state()
    old = ctx.nic.get_rings()
    RingsStep.apply(ctx)
    rings = ctx.nic.get_rings()
    assert (rings.tcp_data_split, rings.hds_thresh) == ("enabled", 0)
    ctx.stages.clear()
    ctx.nic.set_rings(tcp_data_split="disabled")  # undo must not care who changed it since
    ctx.nic.set_rings(tcp_data_split="enabled")
    (entry,) = Journal.load(ctx.journal.path).entries
    assert isinstance(entry, RingsStep)
    assert entry.before == {"tcp_data_split": old.tcp_data_split, "hds_thresh": old.hds_thresh}
    entry.undo(ctx.nic, None)
    assert ctx.nic.state() == before
    assert entry.undo(ctx.nic, None) == "header split already as before"


def test_rings_already_set_is_not_journaled(emu: Any, tmp_path: Path) -> None:
    ctx = _ctx(emu, tmp_path)
    ctx.nic.set_rings(tcp_data_split="enabled", hds_thresh=0)
    RingsStep.apply(ctx)
    assert ctx.report == [{"step": "rings", "changed": False}] and not ctx.journal.exists()


def test_rss_step(emu: Any, tmp_path: Path) -> None:
    ctx = _ctx(emu, tmp_path, queues=(3, 1))
    before = ctx.nic.state()
    entry = _apply_then_undo(ctx, RssStep)
    assert isinstance(entry, RssStep) and entry.default  # the emulated NIC starts at the default spread
    assert ctx.nic.state() == before


def test_rss_step_restores_a_user_table(emu: Any, tmp_path: Path) -> None:
    ctx = _ctx(emu, tmp_path, queues=(2, 1))
    table = [3, 2, 1, 0] * (len(ctx.nic.get_rss_indir()) // 4)
    ctx.nic.set_rss_indir(table)
    entry = _apply_then_undo(ctx, RssStep)
    assert isinstance(entry, RssStep) and not entry.default and entry.before == table
    assert ctx.nic.get_rss_indir() == table


def test_rss_step_needs_an_ordinary_queue(emu: Any, tmp_path: Path) -> None:
    with pytest.raises(DevmemError, match="devmem queues start at 0"):
        RssStep.apply(_ctx(emu, tmp_path, queues=(0, 1)))
    with pytest.raises(DevmemError, match=r"has 4 RX queue\(s\); queues 3..4 do not exist"):
        RssStep.apply(_ctx(emu, tmp_path, queues=(3, 2)))


def test_rule_step(emu: Any, tmp_path: Path) -> None:
    ctx = _ctx(emu, tmp_path, flow=Flow("127.0.0.1", 5201, "127.0.0.1", 4000))
    before = ctx.nic.state()
    RuleStep.apply(ctx)
    (rule,) = ctx.nic.list_rules()
    assert ctx.rule == rule and (rule.queue, rule.src_port) == (3, 4000)
    (entry,) = Journal.load(ctx.journal.path).entries
    assert isinstance(entry, RuleStep) and entry.location == rule.location and entry.pre_locations == []
    assert entry.rule == dataclasses.replace(rule, location=None)
    assert entry.undo(ctx.nic, None) == f"deleted rule {rule.location}"
    assert ctx.nic.state() == before


def test_bind_step(emu: Any, tmp_path: Path) -> None:
    from devmemtcp.memory import open_dmabuf

    with open_dmabuf("host", 1 << 20) as buf:
        ctx = _ctx(emu, tmp_path, queues=(2, 2), dmabuf=buf)
        ctx.nic.set_rings(tcp_data_split="enabled", hds_thresh=0)
        entry = _apply_then_undo(ctx, BindStep)
        assert isinstance(entry, BindStep) and entry.queues == [2, 3]
        assert ctx.binding is not None and getattr(ctx.binding, "closed", True)
        # unbound: the queues can be bound again
        with emu.bind_rx(ctx.nic.ifindex, buf, [2, 3]):
            pass
        assert BindStep(queues=[2]).undo(ctx.nic, None).startswith("nothing to do")


def test_bind_step_without_dmabuf_does_nothing(emu: Any, tmp_path: Path) -> None:
    ctx = _ctx(emu, tmp_path)
    BindStep.apply(ctx)
    assert ctx.binding is None and ctx.report == [] and not ctx.journal.exists()


@pytest.mark.parametrize("entry", [
    ChannelsStep(before={"rx": None, "tx": None, "combined": 4}),
    RingsStep(before={"tcp_data_split": "unknown", "hds_thresh": 256}),
    RssStep(before=[0, 1, 2, 3], default=True),
    RuleStep(rule=NtupleRule("2001:db8::1", 80, 2, src_ip="2001:db8::2", src_port=9, family=10),
             location=7, pre_locations=[1, 2]),
    BindStep(queues=[2, 3], owner={"pid": 5, "start": 6, "id": "x"}),
])
def test_every_entry_round_trips(entry: Entry) -> None:
    d = entry.to_dict()
    assert d["step"] == entry.step and "owner" in d
    assert entry_from_dict(d) == entry
