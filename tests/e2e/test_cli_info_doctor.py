"""``devmemtcp info`` and ``devmemtcp doctor`` as a user runs them (a
subprocess), against the real kernel: JSON schemas, agreement with sysfs in
the root namespace and inside a namespace with a veth pair, exit statuses,
and one-line errors without tracebacks."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

ROOT_CAPS_DROPPED = ["setpriv", "--bounding-set=-net_admin,-sys_admin", "--inh-caps=-net_admin,-sys_admin"]


def cli(*args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), sys.executable, "-m", "devmemtcp.cli.main", *args],
                          capture_output=True, text=True, timeout=60)


def _has(ifname: str) -> bool:
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


def _sysfs_counts(ns: str | None = None) -> dict[str, dict[str, int]]:
    script = ("for d in /sys/class/net/*; do [ -d $d/queues ] && echo ${d##*/} "
              "$(ls $d/queues | grep -c ^rx-) $(ls $d/queues | grep -c ^tx-); done")
    cmd = ["ip", "netns", "exec", ns, "sh", "-c", script] if ns else ["sh", "-c", script]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {name: {"rx": int(rx), "tx": int(tx)} for name, rx, tx in (ln.split() for ln in out.splitlines())}


def _assert_agrees(info: dict, counts: dict[str, dict[str, int]]) -> None:
    assert {d["ifname"] for d in info["devices"]} == set(counts)
    for dev in info["devices"]:
        assert set(dev) >= {"ifname", "ifindex", "driver", "queues", "page_pools", "rings", "channels"}
        for kind in ("rx", "tx"):
            ids = [q["id"] for q in dev["queues"] if q["type"] == kind]
            assert ids == list(range(counts[dev["ifname"]][kind])), (dev["ifname"], kind)
        for q in dev["queues"]:
            assert set(q) >= {"type", "id", "napi_id", "dmabuf"}
            assert q["dmabuf"] is None


def test_info_json_agrees_with_sysfs_in_the_root_namespace():
    res = cli("info", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["netns"] is None
    assert "bind-rx" in info["ops"]
    _assert_agrees(info, _sysfs_counts())
    by_name = {d["ifname"]: d for d in info["devices"]}
    assert all(by_name[n]["ifindex"] == i for i, n in socket.if_nameindex())
    if "eth0" in by_name:
        eth0 = by_name["eth0"]
        assert eth0["driver"] == os.path.basename(os.readlink("/sys/class/net/eth0/device/driver"))
        assert eth0["rings"]["tcp_data_split"] in ("unknown", "disabled", "enabled")
        assert set(eth0["channels"]) == {"rx", "tx", "combined", "rx_max", "tx_max", "combined_max"}
    assert by_name["lo"]["rings"] is None and by_name["lo"]["driver"] is None


@pytest.mark.root
@pytest.mark.netns
def test_info_json_agrees_with_sysfs_inside_a_netns(netns_pair):
    subprocess.run(["ip", "-n", netns_pair.ns_a, "link", "set", netns_pair.veth_a, "down"], check=True)
    res = cli("info", "--json", "--netns", netns_pair.ns_a)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["netns"] == netns_pair.ns_a
    _assert_agrees(info, _sysfs_counts(netns_pair.ns_a))
    (veth,) = [d for d in info["devices"] if d["ifname"] == netns_pair.veth_a]
    assert veth["driver"] == "veth" and veth["up"] is False
    res = cli("info", "--json", "--netns", netns_pair.ns_b, netns_pair.veth_b)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    _assert_agrees(info, {netns_pair.veth_b: _sysfs_counts(netns_pair.ns_b)[netns_pair.veth_b]})
    assert info["devices"][0]["up"] is True
    assert info["devices"][0]["channels"]["rx"] == 1


def test_info_tables():
    res = cli("info", "lo")
    assert res.returncode == 0, res.stderr
    assert "network devices" in res.stdout and "lo queues" in res.stdout
    assert "netdev ops:" in res.stdout


@pytest.mark.root
@pytest.mark.skipif(not _has("eth0"), reason="needs this VM's eth0 (virtio_net)")
def test_doctor_eth0_json_fails_in_the_kernels_words():
    res = cli("doctor", "eth0", "--json")
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    assert set(report) == {"ifname", "rx_supported", "tx_supported", "checks"}
    assert report["ifname"] == "eth0"
    assert report["rx_supported"] is False and report["tx_supported"] is False
    checks = {c["name"]: c for c in report["checks"]}
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in report["checks"])
    q = checks["queue-management-api"]
    assert q["status"] == "fail"
    assert "virtio_net" in q["detail"]
    assert "EOPNOTSUPP (Operation not supported), pointing at attribute 'ifindex'" in q["detail"]
    assert "gve" in q["fix"]
    assert checks["netmem-tx"]["status"] == "fail"
    assert '"Driver does not support netmem TX"' in checks["netmem-tx"]["detail"]


@pytest.mark.root
@pytest.mark.skipif(not _has("eth0"), reason="needs this VM's eth0")
def test_doctor_table_says_why():
    res = cli("doctor", "eth0")
    assert res.returncode == 1
    assert "devmem RX on eth0: not possible" in res.stdout
    assert "why: driver virtio_net has no queue management API" in res.stdout


@pytest.mark.root
@pytest.mark.netns
def test_doctor_in_netns(netns_pair):
    res = cli("doctor", "--netns", netns_pair.ns_a, netns_pair.veth_a, "--json")
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    assert report["ifname"] == netns_pair.veth_a
    assert {c["name"]: c["status"] for c in report["checks"]}["queue-management-api"] == "fail"


@pytest.mark.parametrize("args, message, hint", [
    (("info", "nosuchdev0"), "no interface named 'nosuchdev0'", "ip link"),
    (("doctor", "nosuchdev0"), "no interface named 'nosuchdev0'", "ip link"),
    (("info", "--netns", "devmemtcp-no-such-ns"), "network namespace 'devmemtcp-no-such-ns' does not exist",
     "ip netns add devmemtcp-no-such-ns"),
    (("doctor", "--netns", "devmemtcp-no-such-ns", "lo"),
     "network namespace 'devmemtcp-no-such-ns' does not exist", "ip netns list"),
])
def test_errors_are_one_line_with_a_hint(args, message, hint):
    res = cli(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2, res.stderr
    assert lines[0].startswith(f"devmemtcp {args[0]}: error: ") and message in lines[0]
    assert lines[1].startswith("hint: ") and hint in lines[1]
    assert "Traceback" not in res.stderr
    assert res.stdout == ""


@pytest.mark.root
@pytest.mark.netns
def test_no_permission_is_one_line(netns_pair):
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv to drop capabilities")
    res = cli("info", "--netns", netns_pair.ns_a, prefix=ROOT_CAPS_DROPPED)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "permission denied" in res.stderr and "hint: run as root" in res.stderr


@pytest.mark.root
def test_doctor_without_cap_net_admin_cannot_conclude():
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv to drop capabilities")
    res = cli("doctor", "lo", "--json", prefix=ROOT_CAPS_DROPPED)
    assert res.returncode == 1, res.stderr
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["cap-net-admin"]["status"] == "fail"
    assert checks["queue-management-api"]["status"] == "unknown"
    assert "EPERM" in checks["queue-management-api"]["detail"]


def test_debug_shows_the_traceback():
    res = cli("info", "--debug", "nosuchdev0")
    assert res.returncode != 0
    assert "Traceback" in res.stderr
