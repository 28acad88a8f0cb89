"""The data API across two network namespaces over veth (MTU 1500 and 9000).

Each end is its own process started with ``ip netns exec NS``: the listener
on veth0 of namespace a, the connector on veth1 of namespace b, each setting
up the emulated devmem NIC of its own veth (header split, RSS, one ntuple rule
per data flow, bind). Messages go both ways and are compared by value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.root]

SRC = str(Path(__file__).resolve().parents[2] / "src")

_END = textwrap.dedent("""
    import json, sys, numpy as np, devmemtcp
    role, addr, port, streams = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(7)
    msgs = [rng.integers(0, 2**31, n, dtype=np.int32).reshape(shape) for n, shape in
            ((1, ()), (1000, (10, 100)), (3 << 20, (3, 1 << 20)), (5, (5,)), (9 << 20, (9 << 20,)))]
    if role == "listen":
        with devmemtcp.listen(addr, 0, backend="emulated", streams=streams, dmabuf_size=16 << 20) as lis:
            print(json.dumps({"port": lis.port, "ifname": lis.ifname}), flush=True)
            with lis.accept(timeout=60) as ch:
                ok = [bool(np.array_equal(ch.recv(tag=i), m)) for i, m in enumerate(msgs)]
                ch.send(msgs[-1][::-1].copy(), tag=99)
                ch.recv(tag=100)  # the connector's "done": everything arrived
                st = ch.stats
        print(json.dumps({"ok": ok, "rx": st["rx"], "streams": st["streams_rx"]}), flush=True)
    else:
        with devmemtcp.connect(addr, port, backend="emulated", streams=streams, dmabuf_size=16 << 20) as ch:
            for i, m in enumerate(msgs):
                ch.send(m, tag=i)
            back = ch.recv(tag=99)
            ch.send(np.zeros(1), tag=100)
            print(json.dumps({"back_ok": bool(np.array_equal(back, msgs[-1][::-1])), "ifname": ch.ifname,
                              "rx_flows": ch.stats["streams_rx"]}), flush=True)
""")


def _run_in(ns: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", _END, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("mtu", [1500, 9000])
@pytest.mark.parametrize("streams", [1, 4])
def test_channel_across_namespaces(netns_pair, mtu: int, streams: int) -> None:  # type: ignore[no-untyped-def]
    p = netns_pair
    for ns, dev in ((p.ns_a, p.veth_a), (p.ns_b, p.veth_b)):
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "mtu", str(mtu)], check=True)
    lis = _run_in(p.ns_a, "listen", p.addr_a, "0", str(streams))
    try:
        assert lis.stdout is not None
        first = lis.stdout.readline()
        assert first, lis.stderr.read() if lis.stderr else ""
        info = json.loads(first)
        assert info["ifname"] == p.veth_a
        con = _run_in(p.ns_b, "connect", p.addr_a, str(info["port"]), str(streams))
        cout, cerr = con.communicate(timeout=300)
        assert con.returncode == 0, cerr
        lout, lerr = lis.communicate(timeout=120)
        assert lis.returncode == 0, lerr
    finally:
        lis.kill()
    c = json.loads(cout.strip().splitlines()[-1])
    r = json.loads(lout.strip().splitlines()[-1])
    assert c["back_ok"] and c["ifname"] == p.veth_b and c["rx_flows"] == streams
    assert r["ok"] == [True] * 5 and r["streams"] == streams
    assert r["rx"]["flow_steering_errors"] == 0 and r["rx"]["frags"] > 0
