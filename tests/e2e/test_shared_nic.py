"""Issue 11 item 7: two `devmemtcp recv` on one interface at once.

Without --queues each recv takes a devmem queue no other flow holds (and
says which); the flows share the NIC's RSS spread; the last one out undoes
the shared settings, so the NIC is as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from transfer_helpers import plain_send, wait_listening

CLI = [sys.executable, "-m", "devmemtcp.cli.main"]


def _lo() -> dict[str, Any]:
    from devmemtcp.emulation.nic import EmulatedNicControl

    s = EmulatedNicControl("lo").state()
    return {k: s[k] for k in ("channels", "rings", "rss", "rules")}


def test_two_recvs_on_one_interface_at_once_are_both_validated(tmp_path: Path) -> None:
    before = _lo()
    n = 32 << 20

    def recv() -> subprocess.Popen[str]:
        return subprocess.Popen([*CLI, "recv", "--backend", "emulated", "--listen", "127.0.0.1",
                                 "--port", "0", "--timeout", "60", "--validate", "7", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    a = recv()
    port_a, early_a = wait_listening(a)
    b = recv()
    port_b, early_b = wait_listening(b)
    try:
        assert "devmem queue 3 on lo" in early_a, early_a
        assert "devmem queue 2 on lo" in early_b, early_b
        assert f"held by other flows: 3 (pid {a.pid})" in early_b, early_b
        during = _lo()
        assert during["rss"]["indir"] == [i % 2 for i in range(128)]  # shared spread, below both queues
        assert sorted(r["queue"] for r in during["rules"]) == [2, 3]
        senders = [threading.Thread(target=plain_send, args=("127.0.0.1", p, 7, n)) for p in (port_a, port_b)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(120)
        out_a, err_a = a.communicate(timeout=120)
        out_b, err_b = b.communicate(timeout=120)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    ra, rb = json.loads(out_a), json.loads(out_b)
    assert ra["validated"] is True and rb["validated"] is True
    assert ra["bytes"] == rb["bytes"] == n
    assert (ra["queues"], rb["queues"]) == ([3], [2])
    assert ra["flow_steering_errors"] == rb["flow_steering_errors"] == 0
    assert _lo() == before  # the last one out undid the shared settings
    assert not (Path(os.environ["DEVMEMTCP_JOURNAL_DIR"]) / "lo.json").exists()


def test_a_flow_with_no_free_queue_is_told_why() -> None:
    from devmemtcp.backend.emulated import EmulatedBackend
    from devmemtcp.errors import DevmemError
    from devmemtcp.memory.memfd import MemfdBuffer
    from devmemtcp.setup import NicSetup

    with EmulatedBackend(queues=4) as be, MemfdBuffer(1 << 16) as b1, MemfdBuffer(1 << 16) as b2, \
            MemfdBuffer(1 << 16) as b3, MemfdBuffer(1 << 16) as b4:
        setups = [NicSetup(be, "lo", queues=None, flow=("127.0.0.1", 6000 + i), dmabuf=buf).apply()
                  for i, buf in enumerate((b1, b2, b3))]
        assert [s.queues for s in setups] == [(3, 1), (2, 1), (1, 1)]
        with pytest.raises(DevmemError, match=r"no free devmem queue on lo: queues 1\.\.3 are held") as exc:
            NicSetup(be, "lo", queues=None, flow=("127.0.0.1", 6009), dmabuf=b4).apply()
        assert "ethtool -L lo combined 5" in (exc.value.hint or "")
        for s in reversed(setups):
            s.undo()
