"""Backends for the conformance suite: the same cases against every backend.

* ``sock_backend``: cases that only need TCP sockets (SO_DEVMEM_DONTNEED
  limits, TX cmsg and flag checks, readable data, the error queue). They run
  against the emulated NIC *and* the real kernel on any machine: the kernel
  checks these before it needs a devmem NIC.
* ``nic_backend``: cases that need a devmem-capable NIC (bind-rx/bind-tx).
  The kernel variant runs only with ``DEVMEMTCP_NIC=IFNAME`` (marker
  ``devmem_nic``) on a dma-buf from udmabuf; it sets header split and
  hds-thresh on that NIC and restores them afterwards.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devmemtcp.backend.emulated import EmulatedBackend


def _kernel() -> Any:
    from devmemtcp.backend.kernel import KernelBackend  # lazy: only when the kernel variant runs

    return KernelBackend()


@pytest.fixture(params=["emulated", "kernel"])
def sock_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    if request.param == "kernel":
        yield _kernel()
        return
    be = EmulatedBackend(directory=str(tmp_path))
    yield be
    be.close()


@pytest.fixture(params=["emulated", pytest.param("kernel", marks=pytest.mark.root)])
def plain_nic_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    """A backend whose ``lo`` is an ordinary NIC: no queue management API, no
    netmem TX. The real kernel's lo is exactly that; the emulated NIC is told
    so with ``set_capabilities``."""
    if request.param == "kernel":
        yield _kernel()
        return
    be = EmulatedBackend(directory=str(tmp_path))
    be.nic("lo").set_capabilities(queue_mgmt=False, netmem_tx="none")
    yield be
    be.close()


@dataclass
class NicCase:
    """A backend plus the interface, a dma-buf factory and the RX queue count."""

    backend: Any
    ifname: str
    ifindex: int
    queues: int
    dmabuf_kind: str

    def dmabuf(self, size: int) -> Any:
        from devmemtcp.memory import open_dmabuf

        return open_dmabuf(self.dmabuf_kind, size)


@pytest.fixture(params=["emulated", pytest.param("kernel", marks=pytest.mark.devmem_nic)])
def nic_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[NicCase]:
    if request.param == "kernel":
        be = _kernel()
        ifname = os.environ["DEVMEMTCP_NIC"]
        kind = "udmabuf"
    else:
        be = EmulatedBackend(directory=str(tmp_path))
        ifname = "lo"
        kind = "host"
    nic = be.nic(ifname)
    before = nic.get_rings()
    nic.set_rings(tcp_data_split="enabled", hds_thresh=0)
    try:
        yield NicCase(be, ifname, socket.if_nametoindex(ifname), nic.rx_queue_count(), kind)
    finally:
        restore: dict[str, Any] = {}
        if before.tcp_data_split in ("enabled", "disabled", "unknown"):
            restore["tcp_data_split"] = before.tcp_data_split
        if before.hds_thresh is not None:
            restore["hds_thresh"] = before.hds_thresh
        if restore:
            nic.set_rings(**restore)
        be.close()
