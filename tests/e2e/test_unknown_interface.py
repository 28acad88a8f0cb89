"""An unknown interface is reported with one text by every command that takes
one (host.ifaces.unknown_interface): info, doctor, recv, send, setup,
restore, lease and selftest, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devmemtcp.host import netns

CLI = [sys.executable, "-m", "devmemtcp.cli.main"]
NAME = "nosuch0"


def _expected() -> tuple[str, str]:
    here = netns.name_of()
    where = f"network namespace {here!r}" if here else "this process's network namespace"
    listing = f"ip -n {here} link" if here else "ip link"
    return (f"no interface named {NAME!r} in {where}",
            f"`{listing}` lists them; give one of those, or --netns NAME for an interface in another "
            "namespace")


def _journal_of_a_gone_interface(d: Path) -> None:
    """What a setup of an interface that has gone since leaves behind."""
    d.mkdir()
    (d / f"{NAME}.json").write_text(json.dumps({
        "version": 1, "ifname": NAME, "pid": 2**22 + 4321, "backend": "emulated",
        "netns": os.stat("/proc/thread-self/ns/net").st_ino, "kept": True,
        "entries": [{"step": "rss", "before": [0, 1]}]}))


@pytest.mark.parametrize("argv", [
    ["info", NAME],
    ["doctor", NAME],
    ["recv", "--listen", "127.0.0.1", "--port", "0", "--ifname", NAME, "--backend", "emulated"],
    ["send", "127.0.0.1", "--port", "1", "--ifname", NAME, "--bytes", "1M", "--backend", "emulated"],
    ["setup", NAME, "--listen", "127.0.0.1", "--port", "5201", "--backend", "emulated"],
    ["restore", NAME],
    ["lease", "--guest", "lo", "--phys", NAME, "--queue", "0"],
    ["selftest", "--ifname", NAME, "--backend", "emulated"],
], ids=lambda a: a[0])
def test_one_text_for_an_unknown_interface(argv: list[str], tmp_path: Path) -> None:
    env = dict(os.environ, DEVMEMTCP_JOURNAL_DIR=str(tmp_path / "journal"),
               DEVMEMTCP_EMU_DIR=str(tmp_path / "emu"))
    if argv[0] == "restore":
        _journal_of_a_gone_interface(tmp_path / "journal")
    res = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=120, env=env)
    message, hint = _expected()
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [f"devmemtcp {argv[0]}: error: {message}", f"hint: {hint}"]
