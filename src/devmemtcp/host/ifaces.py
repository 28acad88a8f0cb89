"""Interfaces of the calling thread's network namespace: name to ifindex, the
addresses of an interface, the interface owning an address, the interface of
the route to an address.

Addresses and routes come from rtnetlink (RTM_GETLINK, RTM_GETADDR,
RTM_GETROUTE) through pyroute2's ``IPRoute``, which opens its socket in the
calling thread's namespace; names resolve with ``if_nametoindex(3)``. An
unknown interface always raises the one error of :func:`unknown_interface`,
naming the namespace it was looked up in.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from devmemtcp import abi
from devmemtcp.errors import DevmemError
from devmemtcp.host import netns

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# rtnetlink address scopes (include/uapi/linux/rtnetlink.h, enum rt_scope_t)
_RT_SCOPE_UNIVERSE = 0
_RT_SCOPE_HOST = 254


def unknown_interface(ifname: str) -> DevmemError:
    """The error for an interface name the calling thread's namespace does not
    have (every command reports an unknown interface with this text)."""
    name = netns.current() or netns.name_of()
    listing = f"ip -n {name} link" if name else "ip link"
    return DevmemError(f"no interface named {ifname!r} in {netns.describe()}",
                       f"`{listing}` lists them; give one of those, or --netns NAME for an interface "
                       "in another namespace")


def ifindex(ifname: str) -> int:
    """ifindex of ``ifname`` in the calling thread's network namespace
    (``if_nametoindex(3)``). Raises :func:`unknown_interface`'s DevmemError
    when there is none (an empty name, one with ``/`` or one of IFNAMSIZ or
    more bytes included)."""
    if not ifname or "/" in ifname or len(ifname.encode()) >= abi.IFNAMSIZ:
        raise unknown_interface(ifname)
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise unknown_interface(ifname) from None


def family_of(addr: str) -> socket.AddressFamily:
    """AF_INET or AF_INET6 for the numeric address ``addr``; DevmemError when it
    is not one (a host name included)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise DevmemError(f"not an IP address: {addr!r}",
                          "give a numeric IPv4 or IPv6 address, e.g. 127.0.0.1 or ::1") from None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _ipr() -> Any:
    from pyroute2 import IPRoute  # lazy: importing pyroute2 is slow

    return IPRoute()


def _link_name(ipr: Any, index: int) -> str | None:
    links = ipr.get_links(index)
    return str(links[0].get_attr("IFLA_IFNAME")) if links else None


def addresses(ifname: str | None = None) -> list[IPInterface]:
    """Global and host-scope addresses, with prefix, of ``ifname`` (every
    interface but ``lo`` when None), in RTM_GETADDR order; link-local ones
    are left out. Raises :func:`unknown_interface`'s error for an unknown
    ``ifname``."""
    index = ifindex(ifname) if ifname is not None else None
    out: list[IPInterface] = []
    with _ipr() as ipr:
        lo = None if ifname is not None else socket.if_nametoindex("lo")
        msgs = ipr.get_addr(index=index) if index is not None else ipr.get_addr()
        for msg in msgs:
            if lo is not None and msg["index"] == lo:
                continue
            if msg["scope"] not in (_RT_SCOPE_UNIVERSE, _RT_SCOPE_HOST):
                continue
            addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if addr:
                out.append(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))
    return out


def local_address(ifname: str) -> str | None:
    """An address of ``ifname`` (IPv4 first), or None when it has none."""
    addrs = addresses(ifname)
    v4 = [a for a in addrs if a.version == 4]
    return str((v4 or addrs)[0].ip) if addrs else None


def address_of_interface(ifname: str, family: int = socket.AF_INET) -> str:
    """The first ``family`` address of ``ifname`` that is not link-local
    (RTM_GETADDR), for the ntuple rule of a receiver listening on a wildcard
    address. Raises DevmemError when the interface is unknown or has none."""
    index = ifindex(ifname)
    with _ipr() as ipr:
        for msg in ipr.get_addr(family=family, index=index):
            addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if addr and not ipaddress.ip_address(addr).is_link_local:
                return str(addr)
    raise DevmemError(f"{ifname} has no {'IPv6' if family == socket.AF_INET6 else 'IPv4'} address "
                      "to steer the flow to",
                      f"add one (ip addr add ADDR/LEN dev {ifname}) or --listen on a specific address")


def interface_of_address(addr: str) -> str:
    """The interface that owns local address ``addr`` (``lo`` for 127.0.0.0/8
    and ::1), from RTM_GETADDR. Raises DevmemError when ``addr`` is not an IP
    address, is a wildcard, or no interface has it."""
    family = family_of(addr)
    ip = ipaddress.ip_address(addr)
    if ip.is_unspecified:
        raise DevmemError(
            f"cannot tell the interface from the wildcard address {addr}",
            "give --ifname IF (the devmem NIC), or --listen with that NIC's own address")
    if ip.is_loopback:
        return "lo"
    with _ipr() as ipr:
        for msg in ipr.get_addr(family=family):
            if str(ip) in (msg.get_attr("IFA_ADDRESS"), msg.get_attr("IFA_LOCAL")):
                name = _link_name(ipr, msg["index"])
                if name:
                    return name
    raise DevmemError(f"no interface in {netns.describe()} has address {addr}",
                      "check `ip -br addr`, or give --ifname IF")


def route_ifindex(addr: str) -> int | None:
    """ifindex of the output device of the kernel's route to ``addr``
    (RTM_GETROUTE, like ``ip route get ADDR``), or None when there is no
    route. Raises DevmemError when ``addr`` is not an IP address."""
    from pyroute2.netlink.exceptions import NetlinkError as PyrNetlinkError

    family = family_of(addr)
    with _ipr() as ipr:
        try:
            routes = ipr.route("get", dst=str(ipaddress.ip_address(addr)), family=family)
        except PyrNetlinkError:
            return None
    for r in routes:
        oif = r.get_attr("RTA_OIF")
        if oif:
            return int(oif)
    return None


def interface_of_route(addr: str) -> str:
    """The name of the interface the kernel routes ``addr`` through
    (RTM_GETROUTE). Raises DevmemError when there is no route."""
    oif = route_ifindex(addr)
    if oif is not None:
        try:
            return socket.if_indextoname(oif)
        except OSError:
            pass
    raise DevmemError(f"no route to {addr} in {netns.describe()}",
                      "check `ip route get " + addr + "`, or give --ifname IF")
