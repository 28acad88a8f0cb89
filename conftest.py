"""Shared pytest fixtures and capability skips (each skip says why)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# no per-example deadline: timing belongs in benchmarks, and a loaded 2-core machine
# makes hypothesis' 200 ms default fail tests that are correct
settings.register_profile("devmemtcp", deadline=None)
settings.load_profile("devmemtcp")

# tests/ on the path: shared test helpers import as ``unit.codec.oracles`` (import-mode=importlib)
sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))


def _can_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not shutil.which("ip"):
        return "needs iproute2's ip command (apt-get install iproute2)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    netns_reason = _can_netns()
    nic = os.environ.get("DEVMEMTCP_NIC")
    for item in items:
        if "root" in item.keywords and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="needs root (CAP_NET_ADMIN)"))
        if "netns" in item.keywords and netns_reason:
            item.add_marker(pytest.mark.skip(reason=netns_reason))
        if "devmem_nic" in item.keywords and not nic:
            item.add_marker(pytest.mark.skip(
                reason="needs a devmem-capable NIC: set DEVMEMTCP_NIC=IFNAME "
                "(devmemtcp doctor IFNAME tells whether it qualifies)"))
        if "gpu" in item.keywords and not os.path.exists("/dev/nvidia0"):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (/dev/nvidia0 absent)"))


@pytest.fixture(autouse=True)
def _private_state_dirs(tmp_path_factory: pytest.TempPathFactory,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Give each test its own undo-journal and emulated-NIC state directories.

    The variables reach the CLI subprocesses a test starts, so test runs (and
    any devmemtcp run by a person on the same machine) never see each other's
    NIC set-ups through /run/devmemtcp.
    """
    base = tmp_path_factory.mktemp("devmemtcp-run")
    monkeypatch.setenv("DEVMEMTCP_JOURNAL_DIR", str(base / "journal"))
    monkeypatch.setenv("DEVMEMTCP_EMU_DIR", str(base / "emu"))


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The CUDA driver and CuPy test doubles (tests/unit/memory/fake_cuda.py,
    fake_cupy.py) in place of cuda-python and CuPy; yields the FakeDriver."""
    from devmemtcp.memory import cuda as mcuda
    from devmemtcp.memory import cuda_ops
    from unit.memory import fake_cupy
    from unit.memory.fake_cuda import FakeDriver

    drv = FakeDriver()
    monkeypatch.setattr(mcuda, "driver", lambda: drv)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy.make_module())
    cuda_ops._module.cache_clear()
    fake_cupy.RawModule.launches.clear()
    yield drv
    cuda_ops._module.cache_clear()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class NetnsPair:
    """Two namespaces joined by a veth pair: ``a`` (addr_a on veth_a) and ``b``."""

    ns_a: str
    ns_b: str
    veth_a: str
    veth_b: str
    addr_a: str
    addr_b: str


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    """Create two namespaces joined by a veth pair (MTU 1500), removed afterwards."""
    reason = _can_netns()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    pair = NetnsPair(f"dmt-a-{tag}", f"dmt-b-{tag}", "veth0", "veth1",
                     "192.0.2.1", "192.0.2.2")
    _ip("netns", "add", pair.ns_a)
    try:
        _ip("netns", "add", pair.ns_b)
        _ip("-n", pair.ns_a, "link", "add", pair.veth_a, "mtu", "1500", "type", "veth",
            "peer", "name", pair.veth_b, "netns", pair.ns_b)
        for ns, dev, addr in ((pair.ns_a, pair.veth_a, pair.addr_a),
                              (pair.ns_b, pair.veth_b, pair.addr_b)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        for ns in (pair.ns_a, pair.ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
