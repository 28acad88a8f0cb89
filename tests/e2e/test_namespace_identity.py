"""Issue 11 item 5: a namespace is named by its netns cookie, not its inode.

The kernel reuses a deleted namespace's inode for the next one; a new
namespace must inherit nothing (header split, RSS, rules) from a deleted
one, a journal of a deleted namespace is set aside while the others are
still replayed, and restore undoes the emulated NIC its journal names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from devmemtcp.emulation import state as st
from devmemtcp.emulation.nic import EmulatedNicControl
from devmemtcp.host import netns as host_netns

CLI = [sys.executable, "-m", "devmemtcp.cli.main"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=120)


def _setup(port: int, *extra: str, env: dict[str, str] | None = None) -> None:
    proc = run_cli("setup", "lo", "--backend", "emulated", "--listen", "127.0.0.1", "--port", str(port),
                   "--queues", "3:1", *extra, env=env)
    assert proc.returncode == 0, proc.stderr


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _lo_state(directory: str | None = None) -> dict[str, Any]:
    s = EmulatedNicControl("lo", directory=directory).state()
    return {k: s[k] for k in ("channels", "rings", "rss", "rules")}


@pytest.mark.root
@pytest.mark.netns
def test_a_new_namespace_inherits_nothing_and_a_dead_ones_journal_is_set_aside() -> None:
    name = f"dmt-id-{uuid.uuid4().hex[:6]}"
    jdir = Path(os.environ["DEVMEMTCP_JOURNAL_DIR"])
    emu_dir = os.environ["DEVMEMTCP_EMU_DIR"]
    root_before = _lo_state()
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        fresh = host_netns.run_in(name, _lo_state)
        _setup(5201, "--netns", name)  # kept: header split, RSS and a rule on the namespace's lo
        configured = host_netns.run_in(name, _lo_state)
        assert configured != fresh and configured["rules"]
        old_ino = os.stat(f"/run/netns/{name}").st_ino
        (ns_journal,) = [p for p in jdir.glob("lo@*.json")]
        old_cookie = json.loads(ns_journal.read_text())["netns_cookie"]
        assert os.path.exists(st.nic_path("lo", old_cookie, emu_dir))
        _setup(5202)  # and one in this namespace, which restore must still replay
        assert _lo_state() != root_before
        _ip("netns", "del", name)
        reused = False
        for _ in range(64):  # the kernel hands a freed inode to the next namespace: force a repeat
            _ip("netns", "add", name)
            if os.stat(f"/run/netns/{name}").st_ino == old_ino:
                reused = True
                break
            _ip("netns", "del", name)
        else:
            _ip("netns", "add", name)
        print(f"inode of the deleted namespace reused by the new one: {reused}")
        _ip("-n", name, "link", "set", "lo", "up")
        assert host_netns.run_in(name, _lo_state) == fresh  # inherits nothing
        # the new namespace's first state file collects the dead one's
        host_netns.run_in(name, lambda: EmulatedNicControl("lo").set_rings(hds_thresh=0))
        assert not os.path.exists(st.nic_path("lo", old_cookie, emu_dir))

        out = run_cli("restore", "--json")
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        by_journal = {Path(r["journal"]).name: r for r in report["interfaces"]}
        stale = by_journal[ns_journal.name]
        assert stale.get("stale") is True and stale["restored"] is False and not stale["done"]
        assert stale["moved_to"] and Path(stale["moved_to"]).parent == jdir / "stale"
        assert by_journal["lo.json"]["restored"] is True
        assert _lo_state() == root_before
        assert not ns_journal.exists() and not (jdir / "lo.json").exists()
        assert "no longer exists" in out.stderr
        # the new namespace's NIC was not touched by the dead one's journal
        assert host_netns.run_in(name, _lo_state)["rings"]["hds_thresh"] == 0
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_restore_undoes_the_emulated_nic_its_journal_names(tmp_path: Path) -> None:
    x, y = str(tmp_path / "emu-x"), str(tmp_path / "emu-y")
    env_x = dict(os.environ, DEVMEMTCP_EMU_DIR=x)
    env_y = dict(os.environ, DEVMEMTCP_EMU_DIR=y)
    before = _lo_state(x)
    _setup(5201, env=env_x)
    assert _lo_state(x) != before
    out = run_cli("restore", "--json", env=env_y)  # another state directory than the journal's
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["interfaces"][0]["restored"] is True
    assert _lo_state(x) == before  # the NIC the journal was written for
    assert not os.path.exists(st.nic_path("lo", host_netns.cookie(), y))  # the other was not touched

    _setup(5201, env=env_x)
    for f in Path(x).iterdir():
        if f.is_file():
            f.unlink()
    Path(x).rmdir()
    gone = run_cli("restore", env=env_y)
    assert gone.returncode == 2, gone.stderr
    assert f"the emulated NIC kept in {x}, which is gone" in gone.stderr
    assert "restored" not in gone.stdout
    assert Path(os.environ["DEVMEMTCP_JOURNAL_DIR"], "lo.json").exists()  # not deleted
