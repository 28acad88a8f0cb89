"""`devmemtcp setup` / `restore` / `lease` end to end, and journal replay after
a setup process is killed with SIGKILL at every step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from devmemtcp.host import netns as host_netns
from devmemtcp.setup import Journal, journals

CLI = [sys.executable, "-m", "devmemtcp.cli.main"]

# A setup process that SIGKILLs itself when NicSetup reports (stage, step).
KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from devmemtcp.setup import NicSetup
    backend_name, ifname, jdir, stage, step = sys.argv[1:6]
    start, count, channels = (int(x) for x in sys.argv[6:9])
    if backend_name == "emulated":
        from devmemtcp.backend.emulated import EmulatedBackend as B
    else:
        from devmemtcp.backend.kernel import KernelBackend as B
    from devmemtcp.memory import open_dmabuf

    def on_step(st, sp):
        if (st, sp) == (stage, step):
            os.kill(os.getpid(), signal.SIGKILL)

    steps = sys.argv[9].split(",")
    with open_dmabuf("host", 1 << 20) as buf:
        NicSetup(B(), ifname, queues=(start, count), channels=channels, flow=("127.0.0.1", 5201),
                 journal_dir=jdir, dmabuf=buf, steps=steps, on_step=on_step).apply()
    print("not killed", flush=True)
""")


def run_cli(*args: str, env: dict[str, str] | None = None, netns: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = (["ip", "netns", "exec", netns] if netns else []) + CLI + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def emu_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("DEVMEMTCP_EMU_DIR", str(tmp_path / "emu"))
    return dict(os.environ)


def emu_state() -> dict[str, Any]:
    from devmemtcp.emulation.nic import EmulatedNicControl

    state = EmulatedNicControl("lo").state()
    state.pop("stats", None)
    return state


EMU_STEPS = ["channels", "rings", "rss", "rule", "bind"]


@pytest.mark.parametrize("stage", ["journaled", "applied"])
@pytest.mark.parametrize("step", EMU_STEPS)
def test_sigkill_at_each_step_then_restore_emulated(tmp_path: Path, emu_env: dict[str, str],
                                                    step: str, stage: str) -> None:
    jdir = tmp_path / "journal"
    before = emu_state()
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, "emulated", "lo", str(jdir), stage, step,
                           "5", "1", "6", ",".join(EMU_STEPS)],
                          capture_output=True, text=True, env=emu_env, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert Journal("lo", jdir).exists()
    if step != "channels" or stage == "applied":
        assert emu_state() != before  # the killed run did change the NIC
    out = run_cli("restore", "lo", "--journal-dir", str(jdir), "--json", env=emu_env, check=True)
    report = json.loads(out.stdout)
    assert report["restored"] is True and report["interfaces"][0]["failed"] == []
    assert emu_state() == before
    assert not Journal("lo", jdir).exists()


def test_setup_and_restore_cli_on_the_emulated_nic(tmp_path: Path, emu_env: dict[str, str]) -> None:
    jdir = tmp_path / "journal"
    before = emu_state()
    out = run_cli("setup", "lo", "--backend", "emulated", "--listen", "127.0.0.1", "--port", "5201",
                  "--peer", "127.0.0.1", "--queues", "3:1", "--journal-dir", str(jdir), "--json",
                  env=emu_env, check=True)
    report = json.loads(out.stdout)
    assert report["changed"] and report["journal"] == str(jdir / "lo.json")
    assert [s["step"] for s in report["steps"]] == ["rings", "rss", "rule"]
    state = emu_state()
    assert state["rings"]["tcp_data_split"] == "enabled" and state["rules"][0]["queue"] == 3
    # a second setup is refused, with the way out
    again = run_cli("setup", "lo", "--backend", "emulated", "--listen", "127.0.0.1", "--port", "5201",
                    "--queues", "3:1", "--journal-dir", str(jdir), env=emu_env)
    assert again.returncode == 2 and "devmemtcp restore lo" in again.stderr
    table = run_cli("teardown", "--journal-dir", str(jdir), env=emu_env, check=True)
    assert "rule" in table.stdout
    assert emu_state() == before and not Journal("lo", jdir).exists()
    nothing = run_cli("restore", "--journal-dir", str(jdir), env=emu_env, check=True)
    assert "nothing to restore" in nothing.stderr


def test_setup_refuses_queue_zero_for_rss(tmp_path: Path, emu_env: dict[str, str]) -> None:
    proc = run_cli("setup", "lo", "--backend", "emulated", "--listen", "127.0.0.1", "--port", "5201",
                   "--queues", "0:1", "--journal-dir", str(tmp_path), env=emu_env)
    assert proc.returncode == 2
    assert "RSS has no ordinary queue left" in proc.stderr and "hint:" in proc.stderr


# -- a real veth -------------------------------------------------------------------------

def veth_channels(ns: str, dev: str) -> Any:
    from devmemtcp.backend.kernel import KernelBackend

    return host_netns.run_in(ns, lambda: KernelBackend().nic(dev).get_channels())


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.parametrize("stage", ["journaled", "applied"])
def test_sigkill_during_setup_then_restore_on_a_real_veth(netns_pair: Any, tmp_path: Path,
                                                          stage: str) -> None:
    ns, dev = netns_pair.ns_a, netns_pair.veth_a
    jdir = tmp_path / "journal"
    before = veth_channels(ns, dev)
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", KILL_SCRIPT, "kernel", dev,
                           str(jdir), stage, "channels", "1", "1", "2", "channels"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert (veth_channels(ns, dev).rx == 2) == (stage == "applied")
    (journal,) = journals(jdir)  # named after the namespace: veth0@<netns inode>.json
    assert journal.name.startswith(f"{dev}@")
    # restore from the root namespace: it finds the journal's namespace by itself
    out = run_cli("restore", dev, "--journal-dir", str(jdir), "--json", check=True)
    report = json.loads(out.stdout)["interfaces"][0]
    assert report["netns"] == ns and report["failed"] == []
    assert veth_channels(ns, dev) == before
    assert journals(jdir) == []


@pytest.mark.root
@pytest.mark.netns
def test_setup_cli_on_a_veth_reports_the_refusal_and_changes_nothing(netns_pair: Any,
                                                                     tmp_path: Path) -> None:
    ns, dev = netns_pair.ns_a, netns_pair.veth_a
    before = veth_channels(ns, dev)
    proc = run_cli("setup", dev, "--netns", ns, "--listen", netns_pair.addr_a, "--port", "5201",
                   "--queues", "1", "--channels", "2", "--journal-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "rings-get failed" in proc.stderr and "Operation not supported" in proc.stderr
    assert veth_channels(ns, dev) == before
    assert journals(tmp_path) == []
    ok = run_cli("setup", dev, "--netns", ns, "--listen", netns_pair.addr_a, "--port", "5201",
                 "--queues", "1", "--channels", "2", "--skip", "rings", "--skip", "rss", "--skip", "rule",
                 "--journal-dir", str(tmp_path), "--json", check=True)
    assert json.loads(ok.stdout)["steps"][0] == {"step": "channels", "changed": True, "before": 1,
                                                 "after": 2, "field": "rx"}
    assert veth_channels(ns, dev).rx == 2
    run_cli("restore", dev, "--netns", ns, "--journal-dir", str(tmp_path), check=True)
    assert veth_channels(ns, dev) == before


# -- lease ----------------------------------------------------------------------------------

def test_lease_says_queue_leasing_needs_linux_7_1() -> None:
    from devmemtcp.netlink.netdev import NetdevClient

    with NetdevClient() as client:
        has_op = "queue-create" in client.ops()
    if has_op:
        pytest.skip("this kernel has queue-create (Linux 7.1+): the refusal path cannot be shown")
    proc = run_cli("lease", "--guest", "lo", "--phys", "lo", "--queue", "0")
    assert proc.returncode == 2
    assert "has no netdev queue-create op: queue leasing to netkit needs Linux 7.1" in proc.stderr
    assert "hint: upgrade the host kernel to 7.1" in proc.stderr


@pytest.mark.root
@pytest.mark.netns
def test_lease_peer_namespace_id(netns_pair: Any) -> None:
    from devmemtcp.cli.lease import _peer_nsid
    from devmemtcp.errors import DevmemError

    # moving veth1 from ns_a to ns_b made the kernel assign ids between the two
    fd = os.open(f"/run/netns/{netns_pair.ns_b}", os.O_RDONLY)
    try:
        assert host_netns.run_in(netns_pair.ns_a, _peer_nsid, fd) >= 0
    finally:
        os.close(fd)
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        with pytest.raises(DevmemError, match="has no id for the host namespace"):
            host_netns.run_in(netns_pair.ns_a, _peer_nsid, fd)
    finally:
        os.close(fd)
