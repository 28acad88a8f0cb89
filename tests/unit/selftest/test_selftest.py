"""devmemtcp selftest: every case passes on the emulated NIC (lo, and a veth pair
across namespaces); on the real kernel each case passes or is skipped with
doctor's reason; a misbehaving NIC makes cases fail with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devmemtcp.errors import DevmemError
from devmemtcp.selftest import HDS_SIZES, Selftest
from devmemtcp.setup import Journal, RssStep

ALL_CASES = [name for name, _d, _m in Selftest.CASES]
CLI = [sys.executable, "-m", "devmemtcp.cli.main", "selftest"]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A private emulated-NIC state directory (also for child processes)."""
    monkeypatch.setenv("DEVMEMTCP_EMU_DIR", str(tmp_path / "emu"))
    return dict(os.environ)


@pytest.fixture
def lone_netns() -> Iterator[str]:
    """A namespace of our own with lo up (no other test shares its lo)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace")
    name = f"dmt-st-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def selftest_cli(*args: str, env: dict[str, str], journal: Path) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([*CLI, *args, "--journal-dir", str(journal), "--json"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["cases"]}


def test_hds_sweep_sizes_cover_1_to_8192_and_the_page_boundaries() -> None:
    assert HDS_SIZES[0] == 1 and HDS_SIZES[-1] == 8192
    assert set(range(1, 65)) <= set(HDS_SIZES)
    assert {4095, 4096, 4097, 8191, 8192} <= set(HDS_SIZES)
    assert list(HDS_SIZES) == sorted(set(HDS_SIZES))


@pytest.mark.root
@pytest.mark.netns
def test_emulated_lo_passes_every_case(lone_netns: str, env: dict[str, str], tmp_path: Path) -> None:
    rc, report = selftest_cli("--ifname", "lo", "--netns", lone_netns, "--backend", "emulated", env=env,
                              journal=tmp_path / "j")
    assert statuses(report) == dict.fromkeys(ALL_CASES, "pass"), report
    assert rc == 0 and report["ok"] is True and report["counts"] == {"pass": 13, "fail": 0, "skip": 0}
    cases = {c["name"]: c for c in report["cases"]}
    assert cases["rx"]["details"]["bytes"] == 4 << 20
    assert cases["tokens-returned"]["details"]["tokens_released"] == cases["rx"]["details"]["frags"]
    assert cases["bind-twice"]["details"]["errno"] == "EEXIST"
    assert cases["hds-sweep"]["details"]["linear_bytes"] == 0


@pytest.mark.root
@pytest.mark.netns
def test_emulated_veth_pair_across_namespaces_passes_every_case(netns_pair: Any, env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    rc, report = selftest_cli("--ifname", netns_pair.veth_a, "--netns", netns_pair.ns_a, "--peer-netns",
                              netns_pair.ns_b, "--backend", "emulated", "--bytes", "2M", env=env,
                              journal=tmp_path / "j")
    assert statuses(report) == dict.fromkeys(ALL_CASES, "pass"), report
    assert rc == 0
    assert (report["local_addr"], report["peer_addr"]) == (netns_pair.addr_a, netns_pair.addr_b)


@pytest.mark.root
@pytest.mark.netns
def test_kernel_backend_on_a_veth_reports_each_case_honestly(netns_pair: Any, env: dict[str, str],
                                                             tmp_path: Path) -> None:
    rc, report = selftest_cli("--ifname", netns_pair.veth_a, "--netns", netns_pair.ns_a, "--peer-netns",
                              netns_pair.ns_b, "--backend", "kernel", env=env, journal=tmp_path / "j")
    assert rc == 0 and report["backend"] == "kernel"
    cases = {c["name"]: c for c in report["cases"]}
    # the kernel's real answer to an empty queue list, and the NIC untouched
    assert cases["bind-empty-queues"]["status"] == "pass"
    assert cases["bind-empty-queues"]["details"]["errno"] == "EINVAL"
    assert cases["nic-restored"]["status"] == "pass"
    for name in ("bind-header-split-off", "bind-twice", "bind-ok", "rx", "hds-sweep",
                 "channels-below-bound-queue"):
        assert cases[name]["status"] == "skip"
        assert cases[name]["reason"].startswith("doctor: queue-management-api: "), cases[name]
        assert "EOPNOTSUPP" in cases[name]["reason"]
    for name in ("tx", "tx-chunks"):
        assert cases[name]["status"] == "skip"
        assert cases[name]["reason"].startswith("doctor: netmem-tx: ")
        assert "Driver does not support netmem TX" in cases[name]["reason"]


def test_kernel_backend_on_lo(env: dict[str, str], tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs CAP_NET_ADMIN for the bind-rx probes")
    rc, report = selftest_cli("--ifname", "lo", "--backend", "kernel", env=env, journal=tmp_path / "j")
    assert rc == 0 and report["counts"]["fail"] == 0
    assert statuses(report)["bind-empty-queues"] == "pass"
    assert all(c["reason"] for c in report["cases"] if c["status"] == "skip")


class LyingNic:
    """An emulated NIC whose header-split setting silently does nothing."""

    def __init__(self, nic: Any) -> None:
        self._nic = nic

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nic, name)

    def set_rings(self, **kw: Any) -> None:
        return None


class LyingBackend:
    def __init__(self, inner: Any) -> None:
        self.inner, self.name = inner, inner.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def nic(self, ifname: str) -> Any:
        return LyingNic(self.inner.nic(ifname))


def test_a_misbehaving_nic_fails_with_the_reason(env: dict[str, str], tmp_path: Path) -> None:
    from devmemtcp.backend.emulated import EmulatedBackend

    with EmulatedBackend() as emu:
        emu.nic("lo").set_rings(tcp_data_split="enabled", hds_thresh=0)
        report = Selftest("lo", backend=LyingBackend(emu), journal_dir=tmp_path).run(
            ["bind-header-split-off", "bind-hds-thresh-nonzero", "bind-ok"])
    cases = {c.name: c for c in report.cases}
    # the NIC never turned header split off nor raised hds-thresh: the binds succeed and that is reported
    assert cases["bind-header-split-off"].status == "fail"
    assert cases["bind-header-split-off"].reason.startswith("bind-rx of queues [3] succeeded")
    assert cases["bind-hds-thresh-nonzero"].status == "fail"
    assert "must fail" in cases["bind-hds-thresh-nonzero"].reason
    assert cases["bind-ok"].status == "pass"
    assert not report.ok and [c.name for c in report.cases][-1] == "nic-restored"


@pytest.mark.root
@pytest.mark.netns
def test_stream_cases_need_a_peer_off_loopback(netns_pair: Any, env: dict[str, str], tmp_path: Path) -> None:
    rc, report = selftest_cli("--ifname", netns_pair.veth_a, "--netns", netns_pair.ns_a, "--backend",
                              "emulated", "--case", "rx", "--case", "tx", env=env, journal=tmp_path)
    assert rc == 0
    for c in report["cases"][:2]:
        assert c["status"] == "skip" and c["reason"].startswith("needs a traffic peer: pass --peer-netns")


def test_refuses_to_run_over_an_existing_setup(env: dict[str, str], tmp_path: Path) -> None:
    j = Journal("lo", tmp_path)
    j.meta = {"kept": True}
    j.append(RssStep(before=[0]))
    with pytest.raises(DevmemError, match="set up by devmemtcp already"):
        Selftest("lo", backend="emulated", journal_dir=tmp_path).run()
