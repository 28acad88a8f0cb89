"""NicSetup and its undo journal: on the emulated NIC (any machine) and on a
real veth inside a namespace (root), where the driver refuses most steps."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from devmemtcp import abi
from devmemtcp.errors import DevmemError, NetlinkError
from devmemtcp.host import netns
from devmemtcp.memory.memfd import MemfdBuffer
from devmemtcp.setup import (
    Flow,
    Journal,
    NicSetup,
    RingsStep,
    RssStep,
    RuleStep,
    journals,
    restore,
    undo_journal,
)
from devmemtcp.types import NtupleRule

PS = abi.PAGE_SIZE

LO = "lo"


@pytest.fixture
def emu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An EmulatedBackend whose NIC state lives under tmp_path (also for restore())."""
    from devmemtcp.backend.emulated import EmulatedBackend

    monkeypatch.setenv("DEVMEMTCP_EMU_DIR", str(tmp_path / "emu"))
    with EmulatedBackend() as backend:
        yield backend


@pytest.fixture
def jdir(tmp_path: Path) -> Path:
    return tmp_path / "journal"


def snapshot(nic: Any) -> dict[str, Any]:
    """Everything NicSetup may change, read back through the NicControl."""
    def safe(fn: Any) -> Any:
        try:
            return fn()
        except (NetlinkError, OSError) as exc:
            return ("refused", getattr(exc, "errno", None))
    return {"channels": safe(nic.get_channels), "rings": safe(nic.get_rings),
            "rss": safe(nic.get_rss_indir), "rules": safe(nic.list_rules)}


# -- journal and flow -----------------------------------------------------------

def test_journal_is_written_atomically_and_removed(jdir: Path) -> None:
    j = Journal("eth9", jdir)
    assert not j.exists()
    j.meta = {"pid": 1, "netns": 2}
    j.append(RingsStep(before={"tcp_data_split": "disabled", "hds_thresh": 256}))
    j.append(RssStep(before=[0, 1, 2, 3]))
    assert sorted(p.name for p in jdir.iterdir()) == ["eth9.json"]  # no temporary left behind
    loaded = Journal.load(j.path)
    assert loaded.entries == j.entries and loaded.meta["pid"] == 1 and loaded.ifname == "eth9"
    assert (j.path.stat().st_mode & 0o777) == 0o600
    j.remove()
    assert not j.exists() and list(jdir.iterdir()) == []


def test_journal_rejects_garbage(jdir: Path) -> None:
    jdir.mkdir()
    (jdir / "eth9.json").write_text("{not json")
    with pytest.raises(DevmemError, match="cannot read undo journal"):
        Journal.load(jdir / "eth9.json")
    with pytest.raises(DevmemError):
        Journal("../etc", jdir)


def test_flow_checks() -> None:
    assert Flow.of(("192.0.2.1", 80)).family == socket.AF_INET
    f = Flow.of(("2001:db8::1", 443, "2001:db8::2", 5555))
    assert f.family == socket.AF_INET6
    assert f.rule(3) == NtupleRule("2001:db8::1", 443, 3, "2001:db8::2", 5555, None, socket.AF_INET6)
    with pytest.raises(DevmemError, match="differ in IP version"):
        Flow("192.0.2.1", 80, "2001:db8::1")
    with pytest.raises(DevmemError, match="out of range"):
        Flow("192.0.2.1", 70000)


def test_bad_arguments(emu: Any, jdir: Path) -> None:
    with pytest.raises(DevmemError, match="needs the flow"):
        NicSetup(emu, LO, queues=(1, 1), journal_dir=jdir)
    with pytest.raises(DevmemError, match="unknown setup steps"):
        NicSetup(emu, LO, queues=(1, 1), flow=("127.0.0.1", 1), steps=["nope"], journal_dir=jdir)
    with pytest.raises(DevmemError, match="bad queue range"):
        NicSetup(emu, LO, queues=(1, 0), flow=("127.0.0.1", 1), journal_dir=jdir)


# -- the emulated NIC -----------------------------------------------------------

def test_setup_then_undo_restores_the_emulated_nic_exactly(emu: Any, jdir: Path) -> None:
    nic = emu.nic(LO)
    before = nic.state()
    with NicSetup(emu, LO, queues=(5, 1), channels=6, flow=("127.0.0.1", 5201, "127.0.0.1", 4000),
                  journal_dir=jdir) as s:
        assert nic.get_channels().combined == 6
        rings = nic.get_rings()
        assert (rings.tcp_data_split, rings.hds_thresh) == ("enabled", 0)
        table = nic.get_rss_indir()
        assert set(table) == {0, 1, 2, 3, 4} and table == [i % 5 for i in range(len(table))]
        (rule,) = nic.list_rules()
        assert (rule.dst_ip, rule.dst_port, rule.src_ip, rule.src_port, rule.queue) == (
            "127.0.0.1", 5201, "127.0.0.1", 4000, 5)
        assert s.rule is not None and s.rule.location == rule.location
        steps = [e["step"] for e in json.loads(s.journal.path.read_text())["entries"]]
        assert steps == ["channels", "rings", "rss", "rule"]
    assert nic.state() == before
    assert not Journal(LO, jdir).exists()


def test_ipv6_flow_gets_a_tcp6_rule(emu: Any, jdir: Path) -> None:
    nic = emu.nic(LO)
    with NicSetup(emu, LO, queues=(3, 1), flow=("::1", 5201), journal_dir=jdir):
        (rule,) = nic.list_rules()
        assert rule.family == socket.AF_INET6 and rule.dst_ip == "::1" and rule.src_ip is None
    assert nic.list_rules() == []


def test_settings_already_in_place_are_not_journaled(emu: Any, jdir: Path) -> None:
    nic = emu.nic(LO)
    nic.set_rings(tcp_data_split="enabled", hds_thresh=0)
    with NicSetup(emu, LO, queues=(3, 1), flow=("127.0.0.1", 5201), journal_dir=jdir) as s:
        assert [r["step"] for r in s.report if r["changed"]] == ["rss", "rule"]
    rings = nic.get_rings()
    assert (rings.tcp_data_split, rings.hds_thresh) == ("enabled", 0)  # not ours to undo


def test_bind_step_binds_and_unbinds(emu: Any, jdir: Path) -> None:
    from devmemtcp.memory import open_dmabuf

    with open_dmabuf("host", 1 << 20) as buf:
        with NicSetup(emu, LO, queues=(2, 2), flow=("127.0.0.1", 5201), dmabuf=buf,
                      journal_dir=jdir) as s:
            assert s.binding is not None and tuple(s.binding.queues) == (2, 3)
            binding = s.binding
            with pytest.raises(NetlinkError) as exc:  # the queues are taken while set up
                emu.bind_rx(socket.if_nametoindex(LO), buf, [2])
            assert exc.value.errno == errno.EEXIST
        assert getattr(binding, "closed", True)
        with pytest.raises(NetlinkError) as exc:  # unbound, and header split is off again
            emu.bind_rx(socket.if_nametoindex(LO), buf, [2])
        assert (exc.value.errno, exc.value.extack) == (errno.EINVAL, "tcp-data-split is disabled")


class FailingNic:
    """Wraps a NicControl; ``fail`` maps a method name to the exception it raises."""

    def __init__(self, nic: Any, fail: dict[str, BaseException]) -> None:
        self._nic, self.fail = nic, fail

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._nic, name)
        if name in self.fail:
            def boom(*a: Any, **kw: Any) -> Any:
                raise self.fail[name]
            return boom
        return target


class WrappedBackend:
    def __init__(self, inner: Any, fail: dict[str, BaseException]) -> None:
        self.inner, self.fail, self.name = inner, fail, inner.name

    def nic(self, ifname: str) -> Any:
        return FailingNic(self.inner.nic(ifname), self.fail)

    def bind_rx(self, *a: Any) -> Any:
        return self.inner.bind_rx(*a)


@pytest.mark.parametrize("method,exc", [
    ("add_rule", OSError(errno.ENOSPC, "No space left on device")),
    ("set_rss_indir", NetlinkError(errno.EINVAL, "rss-set", "indirection table refused")),
    ("set_rings", NetlinkError(errno.EOPNOTSUPP, "rings-set", "tcp-data-split not supported")),
    ("add_rule", KeyboardInterrupt()),
])
def test_a_refused_step_undoes_what_was_done(emu: Any, jdir: Path, method: str, exc: BaseException) -> None:
    nic = emu.nic(LO)
    before = nic.state()
    with pytest.raises(type(exc)) as raised:
        NicSetup(WrappedBackend(emu, {method: exc}), LO, queues=(3, 1), channels=5,
                 flow=("127.0.0.1", 5201), journal_dir=jdir, handle_signals=False).apply()
    assert raised.value is exc  # the refusal itself comes back, errno and message intact
    assert nic.state() == before
    assert not Journal(LO, jdir).exists()


def test_failed_undo_stays_in_the_journal_for_restore(emu: Any, jdir: Path) -> None:
    nic = emu.nic(LO)
    before = nic.state()
    s = NicSetup(WrappedBackend(emu, {"delete_rule": OSError(errno.EBUSY, "busy")}), LO, queues=(3, 1),
                 flow=("127.0.0.1", 5201), journal_dir=jdir)
    s.apply()
    with pytest.raises(DevmemError, match="could not undo everything") as exc:
        s.undo()
    assert "devmemtcp restore lo" in (exc.value.hint or "")
    j = Journal.load(Journal(LO, jdir).path)
    assert [e.step for e in j.entries] == ["rule"]  # rss and rings were undone
    result = restore(LO, journal_dir=jdir)
    assert result.ok and nic.state() == before and not Journal(LO, jdir).exists()


def test_only_rules_this_tool_made_are_removed(emu: Any, jdir: Path) -> None:
    nic = emu.nic(LO)
    foreign = nic.add_rule(NtupleRule("127.0.0.1", 80, 1))
    same = nic.add_rule(NtupleRule("127.0.0.1", 5202, 3))
    with NicSetup(emu, LO, queues=(3, 1), flow=("127.0.0.1", 5202), journal_dir=jdir) as s:
        assert s.rule == same  # an identical rule already steers the flow: reused, not journaled
    assert nic.list_rules() == [foreign, same]
    s2 = NicSetup(emu, LO, queues=(3, 1), flow=("127.0.0.1", 5201), journal_dir=jdir)
    s2.apply()
    assert s2.rule is not None and s2.rule.location is not None
    # someone replaces our rule at the same location: restore must leave theirs alone
    nic.delete_rule(s2.rule.location)
    theirs = nic.add_rule(NtupleRule("127.0.0.1", 9999, 2, location=s2.rule.location))
    s2.undo()
    assert theirs in nic.list_rules() and foreign in nic.list_rules()


def test_replay_of_entries_journaled_but_never_applied(emu: Any, jdir: Path) -> None:
    """A crash right after writing an entry: restore must not undo what never happened."""
    nic = emu.nic(LO)
    foreign = nic.add_rule(NtupleRule("127.0.0.1", 5201, 3))  # identical to ours, but pre-existing
    before = nic.state()
    j = Journal(LO, jdir)
    j.meta = {"pid": 2**22 + 12345, "backend": "emulated", "netns": os.stat("/proc/self/ns/net").st_ino}
    j.append(RingsStep(before={"tcp_data_split": "unknown", "hds_thresh": 256}))
    j.append(RssStep(before=nic.get_rss_indir(), default=True))
    assert foreign.location is not None
    j.append(RuleStep(rule=NtupleRule("127.0.0.1", 5201, 3), location=None, pre_locations=[foreign.location]))
    result = restore(LO, journal_dir=jdir)
    assert result.ok, result.failed
    assert nic.state() == before
    assert not j.exists()


def test_unconfirmed_rule_insert_is_found_and_deleted(emu: Any, jdir: Path) -> None:
    nic = emu.nic(LO)
    j = Journal(LO, jdir)
    j.meta = {"backend": "emulated"}
    j.append(RuleStep(rule=NtupleRule("127.0.0.1", 7000, 2), location=None, pre_locations=[]))
    nic.add_rule(NtupleRule("127.0.0.1", 7000, 2))  # inserted, then the process died
    result = undo_journal(Journal.load(j.path), nic)
    assert result.ok and nic.list_rules() == []


def test_two_flows_share_the_nic_and_the_last_one_out_restores_it(emu: Any, jdir: Path) -> None:
    nic = emu.nic(LO)
    before = nic.state()
    a = NicSetup(emu, LO, queues=(3, 1), flow=("127.0.0.1", 5201), journal_dir=jdir).apply()
    b = NicSetup(emu, LO, queues=(3, 1), flow=("127.0.0.1", 5202), journal_dir=jdir).apply()
    assert b.joined == [os.getpid()]
    assert [r["step"] for r in b.report if r["changed"]] == ["rule"]  # header split and RSS shared
    assert sorted(r.dst_port for r in nic.list_rules()) == [5201, 5202]
    with pytest.raises(DevmemError, match="running devmemtcp"):
        restore(LO, journal_dir=jdir)  # both owners are alive: they restore themselves
    a.undo()
    assert [r.dst_port for r in nic.list_rules()] == [5202]
    assert nic.get_rings().tcp_data_split == "enabled" and nic.get_rss_indir() != before["rss"]["indir"]
    b.undo()
    assert nic.state() == before
    assert not Journal(LO, jdir).exists()


def test_a_flow_on_a_lower_queue_narrows_the_shared_rss_spread(emu: Any, jdir: Path) -> None:
    """Issue 11 item 7: flows on one NIC share the RSS spread; it stays below every flow's queues."""
    nic = emu.nic(LO)
    before = nic.state()
    with NicSetup(emu, LO, queues=(3, 1), flow=("127.0.0.1", 5201), journal_dir=jdir):
        assert nic.get_rss_indir() == [i % 3 for i in range(128)]
        with NicSetup(emu, LO, queues=(2, 1), flow=("127.0.0.1", 5202), journal_dir=jdir) as b:
            assert b.spread == 2 and nic.get_rss_indir() == [i % 2 for i in range(128)]
            assert Journal.load(b.journal.path).meta["spread"] == 2
        assert nic.get_rss_indir() == [i % 2 for i in range(128)]  # shared: kept for the first flow
    assert nic.state() == before and not Journal(LO, jdir).exists()


def test_a_queue_another_flow_binds_is_refused(emu: Any, jdir: Path) -> None:
    nic = emu.nic(LO)
    with (MemfdBuffer(64 * PS) as buf1, MemfdBuffer(64 * PS) as buf2,
          NicSetup(emu, LO, queues=(3, 1), flow=("127.0.0.1", 5201), journal_dir=jdir, dmabuf=buf1)):
        during = nic.state()
        with pytest.raises(DevmemError, match="queue 3 is held by another devmem flow") as exc:
            NicSetup(emu, LO, queues=(3, 1), flow=("127.0.0.1", 5202), journal_dir=jdir, dmabuf=buf2).apply()
        assert "leave out --queues" in (exc.value.hint or "")
        assert nic.state() == during  # the refused flow changed nothing
        auto = NicSetup(emu, LO, queues=None, flow=("127.0.0.1", 5203), journal_dir=jdir, dmabuf=buf2)
        with auto:
            assert auto.queues == (2, 1) and auto.held == {3: os.getpid()}
            assert auto.binding is not None and list(auto.binding.queues) == [2]


def test_restore_after_a_member_is_killed_keeps_what_the_live_one_uses(emu: Any, jdir: Path) -> None:
    nic = emu.nic(LO)
    before = nic.state()
    proc = subprocess.Popen([sys.executable, "-c", SIGNAL_SCRIPT, str(jdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with NicSetup(emu, LO, queues=(3, 1), flow=("127.0.0.1", 5202), journal_dir=jdir) as b:
            assert b.joined == [proc.pid]
            proc.kill()
            proc.wait()
            result = restore(LO, journal_dir=jdir)
            assert [s for s, _ in result.done] == ["rule"]  # the dead flow's rule only
            assert [r.dst_port for r in nic.list_rules()] == [5202]
            rings = nic.get_rings()
            assert (rings.tcp_data_split, rings.hds_thresh) == ("enabled", 0)  # still in use by b
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert nic.state() == before
    assert not Journal(LO, jdir).exists()


def test_keep_leaves_the_nic_configured(emu: Any, jdir: Path) -> None:
    nic = emu.nic(LO)
    before = nic.state()
    s = NicSetup(emu, LO, queues=(3, 1), flow=("127.0.0.1", 5201), journal_dir=jdir).apply()
    path = s.keep()
    assert path is not None and json.loads(path.read_text())["kept"] is True
    assert nic.get_rings().tcp_data_split == "enabled"
    assert restore(LO, journal_dir=jdir).ok
    assert nic.state() == before


SIGNAL_SCRIPT = textwrap.dedent("""
    import sys, time
    from devmemtcp.backend.emulated import EmulatedBackend
    from devmemtcp.setup import NicSetup
    with NicSetup(EmulatedBackend(), "lo", queues=(3, 1), flow=("127.0.0.1", 5201),
                  journal_dir=sys.argv[1]):
        print("ready", flush=True)
        time.sleep(60)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_undoes_the_setup(emu: Any, jdir: Path, sig: int) -> None:
    nic = emu.nic(LO)
    before = nic.state()
    proc = subprocess.Popen([sys.executable, "-c", SIGNAL_SCRIPT, str(jdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        assert nic.get_rings().tcp_data_split == "enabled"
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == (143 if sig == signal.SIGTERM else 1) or proc.returncode == -sig
    assert nic.state() == before
    assert not Journal(LO, jdir).exists()


# -- a real veth in a namespace (kernel backend) -------------------------------------

def _kernel_setup(steps: list[str], ifname: str, jdir: Path, **kw: Any) -> BaseException | None:
    from devmemtcp.backend.kernel import KernelBackend

    try:
        NicSetup(KernelBackend(), ifname, queues=(1, 1), flow=("192.0.2.1", 5201), journal_dir=jdir,
                 steps=steps, **kw).apply().undo()
    except BaseException as exc:
        return exc
    return None


@pytest.mark.root
@pytest.mark.netns
def test_veth_refusals_come_back_with_the_kernel_errno_and_nothing_changes(netns_pair: Any,
                                                                          jdir: Path) -> None:
    from devmemtcp.backend.kernel import KernelBackend
    from devmemtcp.memory import open_dmabuf

    ns, dev = netns_pair.ns_a, netns_pair.veth_a
    kb = KernelBackend()
    before = netns.run_in(ns, lambda: snapshot(kb.nic(dev)))
    assert before["channels"].rx == 1
    expected_ops = {"rings": "rings-get", "rss": "ETHTOOL_GRXFHINDIR", "rule": "ETHTOOL_GRXCLSRLCNT",
                    "bind": "bind-rx"}
    with open_dmabuf("host", 1 << 20) as buf:
        for step, op in expected_ops.items():
            exc = netns.run_in(ns, _kernel_setup, ["channels", step], dev, jdir, channels=2, dmabuf=buf)
            assert isinstance(exc, NetlinkError), (step, exc)
            assert exc.errno == errno.EOPNOTSUPP and exc.op.startswith(op), (step, exc)
            assert netns.run_in(ns, lambda: snapshot(kb.nic(dev))) == before, step
            assert journals(jdir) == [], step
    # a step veth accepts (channels) is made and undone for real
    seen: list[Any] = []

    def setup_channels() -> None:
        with NicSetup(kb, dev, queues=(1, 1), channels=2, steps=["channels"], journal_dir=jdir):
            seen.append(kb.nic(dev).get_channels().rx)
    netns.run_in(ns, setup_channels)
    assert seen == [2]
    assert netns.run_in(ns, lambda: snapshot(kb.nic(dev))) == before
    assert journals(jdir) == []


@pytest.mark.root
@pytest.mark.netns
def test_veth_channel_count_above_maximum_is_einval(netns_pair: Any, jdir: Path) -> None:
    from devmemtcp.backend.kernel import KernelBackend

    ns, dev = netns_pair.ns_a, netns_pair.veth_a
    exc = netns.run_in(ns, _kernel_setup, ["channels"], dev, jdir, channels=3)
    assert isinstance(exc, NetlinkError) and exc.errno == errno.EINVAL, exc
    assert netns.run_in(ns, lambda: KernelBackend().nic(dev).get_channels().rx) == 1
    assert journals(jdir) == []


def test_restore_refuses_a_journal_of_another_namespace(emu: Any, jdir: Path) -> None:
    j = Journal(LO, jdir)
    j.meta = {"backend": "emulated", "netns": 1, "kept": True}
    j.append(RssStep(before=[0, 1]))
    with pytest.raises(DevmemError, match="another network namespace"):
        restore(LO, journal_dir=jdir)
    assert j.exists()


def test_restore_without_journal_is_a_no_op(jdir: Path) -> None:
    start = time.monotonic()
    assert restore("eth9", journal_dir=jdir).ok
    assert time.monotonic() - start < 5


CONCURRENT_SCRIPT = textwrap.dedent("""
    import sys, time
    from devmemtcp.backend.emulated import EmulatedBackend
    from devmemtcp.setup import NicSetup
    port = int(sys.argv[2])
    with NicSetup(EmulatedBackend(), "lo", queues=(3, 1), flow=("127.0.0.1", port), journal_dir=sys.argv[1]):
        time.sleep(0.3)
    print("done", flush=True)
""")


def test_concurrent_setups_of_one_nic_leave_it_as_it_was(emu: Any, jdir: Path) -> None:
    nic = emu.nic(LO)
    before = nic.state()
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_SCRIPT, str(jdir), str(6000 + i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [o[1] for o in outs]
    assert all(o[0].strip() == "done" for o in outs)
    assert nic.state() == before
    assert not Journal(LO, jdir).exists()


def test_an_automatic_queue_avoids_a_queue_bound_outside_any_setup(emu: Any, jdir: Path) -> None:
    """A binding made without NicSetup (recv --no-nic-config) holds its queue too."""
    with MemfdBuffer(64 * PS) as buf1, MemfdBuffer(64 * PS) as buf2:
        emu.nic(LO).set_rings(tcp_data_split="enabled", hds_thresh=0)
        with (emu.bind_rx(emu.nic(LO).ifindex, buf1, [3]),
              NicSetup(emu, LO, queues=None, flow=("127.0.0.1", 5204), journal_dir=jdir, dmabuf=buf2) as s):
            assert s.queues == (2, 1) and 3 in s.held
        emu.nic(LO).set_rings(tcp_data_split="unknown", hds_thresh=256)


def test_the_kernel_nic_reports_queues_bound_by_any_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from devmemtcp.backend import kernel
    from devmemtcp.netlink import netdev as nl

    class FakeClient:
        def __enter__(self) -> FakeClient:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def queue_get(self, ifindex: int, qtype: str) -> list[dict[str, Any]]:
            assert qtype == "rx"
            return [{"id": 0, "type": "rx", "dmabuf": None}, {"id": 3, "type": "rx", "dmabuf": 17}]

    monkeypatch.setattr(nl, "NetdevClient", FakeClient)
    assert kernel.KernelNicControl(LO).bound_queues() == {3: 17}


def test_the_last_live_setup_undoes_what_a_killed_one_left(emu: Any, jdir: Path) -> None:
    """Two flows share the NIC; one is killed with -9 holding its rule. The
    survivor's undo is the last one: it takes the dead flow's rule too, so the
    shared settings come back and nothing is left for `restore`."""
    nic = emu.nic(LO)
    before = snapshot(nic)
    survivor = NicSetup(emu, LO, queues=(3, 1), flow=("127.0.0.1", 5301), journal_dir=jdir).apply()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the flow that dies: applies its set-up, reports, waits for SIGKILL
        try:
            os.close(r)
            NicSetup(emu, LO, queues=(2, 1), flow=("127.0.0.1", 5302), journal_dir=jdir).apply()
            os.write(w, b"x")
            time.sleep(60)
        finally:
            os._exit(1)
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert {x.dst_port for x in nic.list_rules()} == {5301, 5302}
    survivor.undo()
    assert snapshot(nic) == before
    assert not Journal(LO, jdir).exists()
