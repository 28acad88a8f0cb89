"""Flow steering of the emulated NIC: which RX queue a TCP flow lands on.

A NIC picks the RX queue of each packet in this order: an ntuple rule that
matches the packet (lowest location first), else RSS: the Toeplitz hash of
the 4-tuple indexes the indirection table. The emulated NIC decides the same
way for the flow of a connected socket, with the receiver's view of the
packets: ``dst`` is the socket's local address, ``src`` its peer.

The NIC a socket's packets arrive on is the device of the route to its peer
(``ip route get PEER``), or its SO_BINDTODEVICE device; loopback peers and
local addresses arrive on ``lo``.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from devmemtcp.errors import DevmemError
from devmemtcp.host import ifaces

# The default Toeplitz key most NICs ship with (Microsoft RSS specification).
TOEPLITZ_KEY = bytes.fromhex(
    "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
)


def toeplitz_hash(data: bytes, key: bytes = TOEPLITZ_KEY) -> int:
    """32-bit Toeplitz hash of ``data`` (the RSS hash NICs compute)."""
    k = int.from_bytes(key, "big")
    klen = len(key) * 8
    result = 0
    nbits = len(data) * 8
    if nbits + 32 > klen:
        raise ValueError(f"key of {len(key)} bytes too short for {len(data)} bytes of input")
    val = int.from_bytes(data, "big")
    for i in range(nbits):
        if val >> (nbits - 1 - i) & 1:
            result ^= (k >> (klen - 32 - i)) & 0xFFFFFFFF
    return result


@dataclass(frozen=True)
class Flow:
    """A TCP flow as the receiving NIC sees its packets."""

    family: int
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int

    def rss_input(self) -> bytes:
        """Toeplitz input for TCP: src addr, dst addr, src port, dst port."""
        s = ipaddress.ip_address(self.src_ip).packed
        d = ipaddress.ip_address(self.dst_ip).packed
        return s + d + self.src_port.to_bytes(2, "big") + self.dst_port.to_bytes(2, "big")


def _norm_ip(ip: str) -> str:
    a = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return str(a.ipv4_mapped)
    return str(a)


def flow_of(sock: socket.socket) -> Flow:
    """The flow of a connected TCP socket, seen from the receiving side.

    Raises OSError(ENOTCONN) when the socket has no peer."""
    local = sock.getsockname()
    peer = sock.getpeername()
    src, dst = _norm_ip(peer[0]), _norm_ip(local[0])
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    return Flow(fam, src, int(peer[1]), dst, int(local[1]))


def rule_matches(rule: dict[str, Any], flow: Flow) -> bool:
    """Does the stored ntuple rule (flow-type tcp4/tcp6) match ``flow``?"""
    if int(rule.get("family", socket.AF_INET)) != flow.family:
        return False
    if _norm_ip(rule["dst_ip"]) != flow.dst_ip or int(rule["dst_port"]) != flow.dst_port:
        return False
    if rule.get("src_ip") is not None and _norm_ip(rule["src_ip"]) != flow.src_ip:
        return False
    return not (rule.get("src_port") is not None and int(rule["src_port"]) != flow.src_port)


def steer(nic: dict[str, Any], flow: Flow) -> tuple[int, str]:
    """RX queue of ``flow`` on the NIC state ``nic`` and how it was chosen:
    ``(queue, "rule@<location>")`` or ``(queue, "rss")``."""
    for rule in sorted(nic["rules"], key=lambda r: int(r["location"])):
        if rule_matches(rule, flow):
            return int(rule["queue"]), f"rule@{rule['location']}"
    indir = nic["rss"]["indir"]
    h = toeplitz_hash(flow.rss_input())
    return int(indir[h % len(indir)]), "rss"


def _route_dev(peer: str) -> int:
    """ifindex of the route's output device toward ``peer`` (in the calling
    thread's namespace). Raises OSError(EHOSTUNREACH) without a route."""
    oif = ifaces.route_ifindex(peer)
    if oif is None:
        raise OSError(errno.EHOSTUNREACH, f"no route to {peer}")
    return oif


def ingress_ifindex(sock: socket.socket) -> int:
    """ifindex of the device ``sock``'s traffic goes through: its
    SO_BINDTODEVICE device, else the route to its peer (``lo`` for loopback
    and local peers). Raises OSError(ENOTCONN) if unconnected,
    OSError(EHOSTUNREACH) without a route."""
    dev = sock.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).split(b"\0", 1)[0]
    if dev:
        try:
            return socket.if_nametoindex(dev.decode())
        except OSError:
            pass
    peer = _norm_ip(sock.getpeername()[0])
    if ipaddress.ip_address(peer).is_loopback:
        return socket.if_nametoindex("lo")
    return _route_dev(peer)


def ifname_of(ifindex: int) -> str:
    """Name of ``ifindex`` in the calling thread's namespace; DevmemError if absent."""
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        raise DevmemError(
            f"no network interface with ifindex {ifindex} in this network namespace",
            "check 'ip link' in the namespace the socket lives in",
        ) from None
