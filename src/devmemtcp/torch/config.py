"""Configuration of the "devmem" torch.distributed backend: options, environment, defaults.

Strategy: one frozen dataclass, :class:`Options`, filled in three layers, each
overriding the one before: built-in defaults, then ``DEVMEMTCP_*`` environment
variables, then the fields a user set on the ``pg_options`` object given to
``init_process_group``. The data interface and address default to those of
the kernel's route to ``MASTER_ADDR`` (RTM_GETROUTE, as ``ip route get``
prints them), so a torchrun job needs no devmem-specific setting at all.
This module imports neither torch nor the transport: it is plain data.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Mapping
from typing import Any

from devmemtcp.errors import DevmemError
from devmemtcp.host import ifaces
from devmemtcp.memory import is_memory_kind

#: Environment variables read by :func:`resolve` (name -> Options field).
ENV_VARS: dict[str, str] = {
    "DEVMEMTCP_IFNAME": "ifname",
    "DEVMEMTCP_ADDR": "addr",
    "DEVMEMTCP_QUEUES": "queues",
    "DEVMEMTCP_STREAMS": "streams",
    "DEVMEMTCP_BACKEND": "backend",
    "DEVMEMTCP_MEMORY": "memory",
    "DEVMEMTCP_DMABUF_SIZE": "dmabuf_size",
    "DEVMEMTCP_TX_DMABUF_SIZE": "tx_dmabuf_size",
}

BACKENDS = ("auto", "kernel", "emulated")
MEMORIES = ("host", "udmabuf", "cuda", "cuda:N")
#: Default TX dma-buf bytes per channel: every send is copied through the staging ring
#: (half of it), and a ring that stays in the CPU caches makes that copy, and the NIC's
#: read of it, much cheaper than cycling through the Channel's default 64 MiB ring.
TX_DMABUF_SIZE = 16 << 20


@dataclasses.dataclass(frozen=True)
class Options:
    """Options of the devmem process group (pass as ``pg_options=`` to
    ``torch.distributed.init_process_group``; fields left ``None`` come from
    the environment, then from the defaults).

    Attributes:
        ifname: interface for the devmem data flows (``DEVMEMTCP_IFNAME``;
            default: the interface of the route to ``MASTER_ADDR``).
        addr: this rank's data address that peers connect to
            (``DEVMEMTCP_ADDR``; default: the source address of that route).
        queues: devmem RX queues, ``"START[:COUNT]"`` (``DEVMEMTCP_QUEUES``;
            default: the Channel's choice).
        streams: data flows per direction per channel (``DEVMEMTCP_STREAMS``,
            default 1).
        backend: ``"auto"``, ``"kernel"`` or ``"emulated"`` (``DEVMEMTCP_BACKEND``;
            default ``"auto"``: the kernel backend on a devmem NIC, else the
            emulated NIC).
        memory: ``"host"``, ``"udmabuf"``, ``"cuda"`` or ``"cuda:N"``
            (``DEVMEMTCP_MEMORY``, default ``"host"``; CUDA memory moves CUDA
            tensors device to device).
        dmabuf_size: RX dma-buf bytes per channel (``DEVMEMTCP_DMABUF_SIZE``;
            default: the Channel's).
        tx_dmabuf_size: TX dma-buf bytes per channel (``DEVMEMTCP_TX_DMABUF_SIZE``;
            default :data:`TX_DMABUF_SIZE`). Half of it is the staging ring every
            send is copied through (the group never sends from ``Channel.empty()``
            arrays, the other half).
        gloo_ifname: interface of the inner Gloo group (default
            ``GLOO_SOCKET_IFNAME``, else ``ifname``).
    """

    ifname: str | None = None
    addr: str | None = None
    queues: str | None = None
    streams: int | None = None
    backend: str | None = None
    memory: str | None = None
    dmabuf_size: int | None = None
    tx_dmabuf_size: int | None = None
    gloo_ifname: str | None = None


def _parse(field: str, value: Any, source: str) -> Any:
    if value is None:
        return None
    if field in ("streams", "dmabuf_size", "tx_dmabuf_size"):
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise DevmemError(f"{source}: {field} must be a positive integer, got {value!r}",
                              f"set {source} to a number such as 4") from None
        if n < 1:
            raise DevmemError(f"{source}: {field} must be >= 1, got {n}",
                              f"set {source} to a number such as 4")
        return n
    value = str(value).strip()
    if field == "backend" and value not in BACKENDS:
        raise DevmemError(f"{source}: unknown backend {value!r}",
                          f"use one of {', '.join(BACKENDS)}")
    if field == "memory" and not is_memory_kind(value):
        raise DevmemError(f"{source}: unknown memory {value!r}",
                          f"use one of {', '.join(MEMORIES)}")
    if field == "queues":
        start, _, count = value.partition(":")
        if not start.isdigit() or (count and not count.isdigit()):
            raise DevmemError(f"{source}: queues must be START[:COUNT], got {value!r}",
                              "for example DEVMEMTCP_QUEUES=8:4")
    return value or None


def parse_queues(spec: str | None) -> tuple[int, int] | None:
    """``"START[:COUNT]"`` -> ``(start, count)`` (count 1 when omitted); None stays None."""
    if spec is None:
        return None
    start, _, count = spec.partition(":")
    return int(start), int(count or 1)


def route_to(addr: str) -> tuple[str, str]:
    """``(ifname, local address)`` for reaching ``addr`` (MASTER_ADDR): the
    interface that owns ``addr`` when it is this host's own address (rank 0:
    the kernel routes that via lo, but the data flows belong on the NIC),
    else the interface of the kernel's route to it (RTM_GETROUTE, as ``ip route
    get``) and that interface's address.

    ``addr`` may be a host name (resolved with getaddrinfo). Raises
    DevmemError when the name does not resolve or there is no route.
    """
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.getaddrinfo(addr, None, proto=socket.IPPROTO_TCP)[0][4][0])
        except (socket.gaierror, IndexError) as exc:
            raise DevmemError(f"cannot resolve MASTER_ADDR {addr!r}: {exc}",
                              "set MASTER_ADDR to an IP address, or DEVMEMTCP_IFNAME and DEVMEMTCP_ADDR") \
                from None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    if ip.is_loopback:
        return "lo", str(ip)
    try:
        return ifaces.interface_of_address(str(ip)), str(ip)
    except DevmemError:
        pass  # not one of ours: follow the route
    ifname = ifaces.interface_of_route(str(ip))
    return ifname, ifaces.address_of_interface(ifname, family)


def address_of(ifname: str) -> str:
    """The first IPv4 (else IPv6) non-link-local address of ``ifname`` (RTM_GETADDR).
    Raises DevmemError when the interface is missing or has none."""
    ifaces.ifindex(ifname)  # the unknown-interface error, with its hint
    try:
        return ifaces.address_of_interface(ifname, socket.AF_INET)
    except DevmemError:
        return ifaces.address_of_interface(ifname, socket.AF_INET6)


def resolve(options: Options | None = None, env: Mapping[str, str] | None = None) -> Options:
    """Fill every field: ``options`` first, then ``env`` (default ``os.environ``),
    then the defaults. Raises DevmemError naming the bad variable or field."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {f.name: None for f in dataclasses.fields(Options)}
    for var, field in ENV_VARS.items():
        if env.get(var):
            values[field] = _parse(field, env[var], var)
    if options is not None:
        for f in dataclasses.fields(Options):
            v = getattr(options, f.name)
            if v is not None:
                values[f.name] = _parse(f.name, v, f"Options.{f.name}")
    if values["ifname"] is None or values["addr"] is None:
        if values["ifname"] is not None:
            values["addr"] = address_of(values["ifname"])
        else:
            master = env.get("MASTER_ADDR") or "127.0.0.1"
            ifname, src = route_to(master)
            values["ifname"] = ifname
            if values["addr"] is None:
                values["addr"] = src
    values["streams"] = values["streams"] or 1
    values["backend"] = values["backend"] or "auto"
    values["memory"] = values["memory"] or "host"
    values["tx_dmabuf_size"] = values["tx_dmabuf_size"] or TX_DMABUF_SIZE
    values["gloo_ifname"] = values["gloo_ifname"] or env.get("GLOO_SOCKET_IFNAME") or values["ifname"]
    return Options(**values)
