"""`devmemtcp info --backend emulated` shows the emulated NIC in the kernel path's JSON shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _info(*args: str) -> dict:  # type: ignore[type-arg]
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "devmemtcp.cli.main", "info", "lo", "--json", *args],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_emulated_info_has_the_kernel_shape_plus_the_emulated_nic() -> None:
    kernel, emu = _info(), _info("--backend", "emulated")
    assert set(kernel) <= set(emu)
    (kd,), (ed,) = kernel["devices"], emu["devices"]
    assert set(kd) <= set(ed)
    assert {"rss", "rules", "bindings", "tx_dropped", "netmem_tx", "kind"} <= set(ed)
    assert kd["queues"] and set(kd["queues"][0]) == set(ed["queues"][0])
    assert ed["driver"] == "devmemtcp-emulated" and ed["channels"]["combined"] >= 1
    assert {"queue-create", "bind-rx", "page-pool-get"} <= set(emu["ops"])
