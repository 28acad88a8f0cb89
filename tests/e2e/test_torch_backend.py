"""The "devmem" torch.distributed backend, end to end: multi-process jobs of
torch_worker.py scenarios on lo, and with every rank in its own network
namespace (veth pairs on a bridge), each on its own emulated devmem NIC.

Every scenario checks its own results (against Gloo in the same job, or
values all ranks compute) and exits non-zero on a mismatch; these tests
assert on the exit codes and on the results the ranks report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch is an optional extra: "
                    "pip install 'devmemtcp[torch]' (torch==2.13.0 CPU)")

sys.path.insert(0, str(Path(__file__).parent))
from torch_job import JobResult, run_job

# The scenarios' reference Gloo groups (new_group(backend="gloo")) find their interface here;
# the devmem group's inner Gloo group finds it by itself (the route to MASTER_ADDR).
NS_ENV = {"GLOO_SOCKET_IFNAME": "eth0"}


def _ok(r: JobResult, ranks: list[int] | None = None) -> None:
    assert r.ok(ranks), r.describe()


def test_p2p_two_ranks_on_lo() -> None:
    r = run_job("p2p", 2)
    _ok(r)
    assert r.results[0]["cases"] == r.results[1]["cases"] > 100  # 17 dtypes x 6 shapes, both ways


def test_p2p_logic_on_the_plain_socket_transport() -> None:
    # The same process group over the test transport: matching, tags, any-source and
    # the mismatch errors do not depend on the Channel.
    r = run_job("p2p", 2, transport="tcp")
    _ok(r)


def test_collectives_four_ranks_equal_gloo() -> None:
    r = run_job("collectives", 4)  # 6 channels, 12 ends on RX queues of their own, one lo
    _ok(r)
    links = r.results[0]["links"]
    assert sorted(links) == ["1", "2", "3"]
    assert all(v["transport"] == "channel" and v["backend"] == "emulated" and v["ifname"] == "lo"
               and v["rx_bytes"] > 0 and v["tx_bytes"] > 0 for v in links.values()), links


def test_ddp_twenty_steps_bit_identical_to_gloo() -> None:
    _ok(run_job("ddp", 2))


def test_pipeline_gpipe_two_stages_equal_gloo() -> None:
    r = run_job("pipeline", 2)
    _ok(r)
    assert r.results[1]["tensors"] == 3  # last stage: weight and bias gradients, and the losses


def test_simultaneous_bidirectional_256mib() -> None:
    r = run_job("bidir", 2, env={"TORCH_TEST_BYTES": str(256 << 20)})
    _ok(r)
    assert all(r.results[k]["bytes"] == 256 << 20 for k in (0, 1))


def test_killed_rank_is_named_within_the_timeout() -> None:
    r = run_job("kill", 3, env={"TORCH_TEST_TIMEOUT": "20"})
    assert r.returncodes[2] == -9, r.describe()
    _ok(r, [0, 1])
    for k in (0, 1):
        assert "rank 2" in r.results[k]["error"]
        # EOF on the victim's flows, not the watchdog: well inside the 20 s timeout
        assert r.results[k]["seconds"] < 10, r.results[k]
    assert _journals() == []  # the survivors restored what the killed rank left


def _journals() -> list[str]:
    d = Path(os.environ["DEVMEMTCP_JOURNAL_DIR"])  # private to the test (conftest)
    return sorted(p.name for p in d.glob("*.json")) if d.exists() else []


def _journal_text() -> str:
    d = Path(os.environ["DEVMEMTCP_JOURNAL_DIR"])
    return "\n".join(p.read_text()[:3000] for p in d.glob("*.json"))


def test_sigterm_undoes_the_nic_setup_and_the_peer_names_the_rank() -> None:
    r = run_job("kill", 2, env={"TORCH_TEST_SIGNAL": "15", "TORCH_TEST_TIMEOUT": "20"})
    assert r.returncodes[1] == -15, r.describe()  # the handler closes, then dies of the signal
    _ok(r, [0])
    assert "rank 1" in r.results[0]["error"]
    assert r.results[0]["seconds"] < 10, r.results[0]  # the victim closed its channel on the way out
    assert _journals() == [], _journal_text()  # every rule, RSS and header-split change undone


def test_unanswered_receive_times_out_naming_the_peer() -> None:
    r = run_job("timeout", 2, env={"TORCH_TEST_TIMEOUT": "3"})
    _ok(r)
    assert "timed out after 3s waiting for rank 1" in r.results[0]["error"]


# ---------------------------------------------------------------------------
# Ranks in separate network namespaces
# ---------------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def bridged_namespaces(request: pytest.FixtureRequest) -> Iterator[tuple[list[str], list[str]]]:
    """``n`` namespaces, each with eth0 (198.51.100.(10+k)/24, MTU 1500) on a veth
    pair whose other end is on a bridge in a hub namespace; removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    n = int(getattr(request, "param", 3))
    tag = uuid.uuid4().hex[:6]
    hub = f"dmt-hub-{tag}"
    names = [f"dmt-r{k}-{tag}" for k in range(n)]
    addrs = [f"198.51.100.{10 + k}" for k in range(n)]
    created = []
    try:
        _ip("netns", "add", hub)
        created.append(hub)
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "link", "set", "br0", "up")
        for k, (ns, addr) in enumerate(zip(names, addrs, strict=True)):
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", hub, "link", "add", f"v{k}", "mtu", "1500", "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _ip("-n", hub, "link", "set", f"v{k}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield names, addrs
    finally:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.parametrize("bridged_namespaces", [3], indirect=True)
def test_collectives_ranks_in_separate_namespaces(bridged_namespaces: tuple[list[str], list[str]]) -> None:
    names, addrs = bridged_namespaces
    r = run_job("collectives", len(names), netns=names, master_addr=addrs[0],
                env={**NS_ENV, "TORCH_TEST_SUBGROUP": "1"}, timeout=180)
    _ok(r)
    for k in range(len(names)):
        links = r.results[k]["links"]
        assert len(links) == len(names) - 1  # the default group's; the subgroup has its own
        # each rank's flows on its own namespace's NIC (eth0 there), emulated devmem
        assert all(v["ifname"] == "eth0" and v["backend"] == "emulated" and v["rx_bytes"] > 0
                   for v in links.values()), links


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.parametrize("bridged_namespaces", [2], indirect=True)
def test_ddp_ranks_in_separate_namespaces(bridged_namespaces: tuple[list[str], list[str]]) -> None:
    names, addrs = bridged_namespaces
    _ok(run_job("ddp", 2, netns=names, master_addr=addrs[0], env=NS_ENV, timeout=180))


# ---------------------------------------------------------------------------
# torchrun, the example, the bench command
# ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_example_runs_under_torchrun() -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "examples" / "torch_p2p.py")]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout + p.stderr
    assert "rank 1: received 16 MiB from rank 0, equal to what was sent" in out
    assert "rank 0: ring got 1 from rank 1" in out and "rank 1: ring got 0 from rank 0" in out
    assert "all_reduce -> [3.0, 3.0, 3.0, 3.0]" in out
    assert "using the emulated NIC" in out  # said once per process, at INFO


def test_bench_torch_command_reports_both_backends() -> None:
    import json

    cmd = [sys.executable, "-m", "devmemtcp.cli.main", "bench", "torch", "--sizes", "64K,1M", "--bytes", "2M",
           "--repeat", "3", "--json", "--quiet"]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(p.stdout)
    assert [(x["op"], x["size"]) for x in r["rows"]] == [
        (op, size) for size in (64 << 10, 1 << 20) for op in ("sendrecv", "broadcast", "allgather")]
    for x in r["rows"]:
        assert x["devmem_gbps"] > 0 and x["gloo_gbps"] > 0
        # the figures are rounded to 3 decimals: bound the ratio's error by their rounding
        # (a Gloo run that collapsed to 0.1 Gbit/s makes it more than 0.01)
        d, g = x["devmem_gbps"], x["gloo_gbps"]
        assert abs(x["ratio"] - d / g) <= 0.0006 + x["ratio"] * (0.0006 / d + 0.0006 / g)
        # every run is reported; the figure is the best of them, the median ratio is of the medians
        dr, gr = x["devmem_runs_gbps"], x["gloo_runs_gbps"]
        assert len(dr) == len(gr) == 3 and max(dr) == d and max(gr) == g
        dm, gm = sorted(dr)[1], sorted(gr)[1]
        assert abs(x["median_ratio"] - dm / gm) <= 0.0006 + x["median_ratio"] * (0.0006 / dm + 0.0006 / gm)
    assert list(r["targets"]) == ["send/recv devmem/gloo, >= 1M (worst size)"]
    assert r["links"]["1"]["backend"] == "emulated"
    # the Channel's counters ride along, so a slow figure can be told from a stalled flow
    assert {k: type(r["links"]["1"][k]) for k in ("rx_timeouts", "credit_waits")} == {
        "rx_timeouts": int, "credit_waits": int}
