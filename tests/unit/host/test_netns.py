"""netns.enter and the per-namespace sysfs view, against real namespaces."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from devmemtcp.errors import DevmemError
from devmemtcp.host import netns


def _ns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_missing_namespace_names_it_and_the_fix():
    with pytest.raises(DevmemError) as ei, netns.enter("devmemtcp-no-such-ns"):
        pass
    assert "'devmemtcp-no-such-ns' does not exist" in ei.value.message
    assert "ip netns add devmemtcp-no-such-ns" in (ei.value.hint or "")
    assert "ip netns list" in (ei.value.hint or "")


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "."])
def test_bad_names(bad):
    with pytest.raises(DevmemError, match="ip netns list"):
        netns.path_of(bad)


@pytest.mark.root
@pytest.mark.netns
def test_enter_and_come_back(netns_pair):
    home = _ns_inode()
    fds = len(os.listdir("/proc/self/fd"))
    with netns.enter(netns_pair.ns_a) as path:
        assert path == f"/run/netns/{netns_pair.ns_a}"
        assert netns.current() == netns_pair.ns_a
        assert _ns_inode() == os.stat(path).st_ino != home
        names = {n for _, n in socket.if_nameindex()}
        assert names == {"lo", netns_pair.veth_a}
        with netns.enter(netns_pair.ns_b):  # nesting
            assert netns.current() == netns_pair.ns_b
            assert {n for _, n in socket.if_nameindex()} == {"lo", netns_pair.veth_b}
        assert netns.current() == netns_pair.ns_a
    assert netns.current() is None
    assert _ns_inode() == home
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.root
@pytest.mark.netns
def test_back_home_after_an_exception(netns_pair):
    home = _ns_inode()
    with pytest.raises(RuntimeError), netns.enter(netns_pair.ns_a):
        raise RuntimeError("boom")
    assert _ns_inode() == home and netns.current() is None


@pytest.mark.root
@pytest.mark.netns
def test_sysfs_queue_counts_match_ip_netns_exec(netns_pair):
    out = subprocess.run(["ip", "netns", "exec", netns_pair.ns_a, "sh", "-c",
                          "for d in /sys/class/net/*; do echo ${d##*/} $(ls $d/queues | grep -c ^rx-) "
                          "$(ls $d/queues | grep -c ^tx-); done"], capture_output=True, text=True, check=True)
    expected = {name: {"rx": int(rx), "tx": int(tx)}
                for name, rx, tx in (line.split() for line in out.stdout.splitlines())}
    assert netns.sysfs_queue_counts(netns_pair.ns_a) == expected
    with netns.enter(netns_pair.ns_a):
        assert netns.sysfs_queue_counts() == expected
    # the root namespace view is the mounted /sys
    root = netns.sysfs_queue_counts()
    assert set(root) == {n for _, n in socket.if_nameindex()}


def test_run_in_a_missing_namespace_is_the_enter_error():
    with pytest.raises(DevmemError) as ei:
        netns.run_in("devmemtcp-no-such-ns", lambda: None)
    assert "'devmemtcp-no-such-ns' does not exist" in ei.value.message


def test_inode_and_name_of_this_namespace():
    assert netns.inode() == _ns_inode()
    assert netns.name_of(1) is None  # no namespace has inode 1
    here = netns.name_of()
    assert netns.describe() == (f"network namespace {here!r}" if here else "this process's network namespace")


@pytest.mark.root
@pytest.mark.netns
def test_run_in_runs_in_the_namespace_and_leaves_the_caller_alone(netns_pair):
    home = _ns_inode()
    inode, name, current = netns.run_in(netns_pair.ns_a, lambda: (netns.inode(), netns.name_of(),
                                                                  netns.current()))
    assert inode == os.stat(f"/run/netns/{netns_pair.ns_a}").st_ino != home
    assert name == current == netns_pair.ns_a
    assert netns.name_of(inode) == netns_pair.ns_a
    assert _ns_inode() == home and netns.current() is None
    with pytest.raises(KeyError, match="inside"):  # the function's exception comes back as is
        netns.run_in(netns_pair.ns_b, lambda: {}["inside"])
    assert netns.run_in(netns_pair.ns_b, lambda x, *, y: x + y, 2, y=3) == 5
