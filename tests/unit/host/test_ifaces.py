"""host.ifaces: names, addresses and routes of the calling thread's namespace,
and the one error text for an unknown interface."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from devmemtcp.errors import DevmemError
from devmemtcp.host import ifaces, netns


def test_interface_of_address_and_route() -> None:
    assert ifaces.interface_of_address("127.0.0.1") == "lo"
    assert ifaces.interface_of_address("::1") == "lo"
    assert ifaces.interface_of_route("127.0.0.1") == "lo"
    with pytest.raises(DevmemError, match="wildcard"):
        ifaces.interface_of_address("0.0.0.0")
    with pytest.raises(DevmemError, match="no interface"):
        ifaces.interface_of_address("198.51.100.77")
    with pytest.raises(DevmemError, match="not an IP address"):
        ifaces.interface_of_address("localhost")


def test_ifindex_and_addresses_of_lo() -> None:
    assert ifaces.ifindex("lo") == socket.if_nametoindex("lo")
    assert ipaddress.ip_interface("127.0.0.1/8") in ifaces.addresses("lo")
    assert ifaces.local_address("lo") == "127.0.0.1"
    assert ifaces.address_of_interface("lo") == "127.0.0.1"
    assert all(not a.ip.is_loopback for a in ifaces.addresses())  # lo is left out of "every interface"
    assert ifaces.route_ifindex("127.0.0.1") == socket.if_nametoindex("lo")


@pytest.mark.parametrize("name", ["nosuch0", "", "a/b", "x" * 16])
def test_unknown_interface_is_one_error_naming_the_namespace(name: str) -> None:
    with pytest.raises(DevmemError) as ei:
        ifaces.ifindex(name)
    here = netns.name_of()
    where = f"network namespace {here!r}" if here else "this process's network namespace"
    assert ei.value.message == f"no interface named {name!r} in {where}"
    assert ei.value.hint == (f"`{'ip -n ' + here + ' link' if here else 'ip link'}` lists them; give one of "
                             "those, or --netns NAME for an interface in another namespace")
    with pytest.raises(DevmemError) as again:
        ifaces.addresses(name)
    assert again.value.message == ei.value.message


@pytest.mark.root
@pytest.mark.netns
def test_unknown_interface_inside_a_namespace_names_it(netns_pair) -> None:
    with netns.enter(netns_pair.ns_a), pytest.raises(DevmemError) as ei:
        ifaces.ifindex("nosuch0")
    assert ei.value.message == f"no interface named 'nosuch0' in network namespace {netns_pair.ns_a!r}"
    assert f"ip -n {netns_pair.ns_a} link" in (ei.value.hint or "")
    err = netns.run_in(netns_pair.ns_b, lambda: ifaces.unknown_interface("eth9"))
    assert err.message == f"no interface named 'eth9' in network namespace {netns_pair.ns_b!r}"
    assert netns.run_in(netns_pair.ns_a, ifaces.interface_of_address, netns_pair.addr_a) == netns_pair.veth_a
    assert netns.run_in(netns_pair.ns_a, ifaces.local_address, netns_pair.veth_a) == netns_pair.addr_a
