"""Conformance: the netkit story (queue leasing, bind through a leased queue,
netmem TX modes, nk_devmem.py's streams) from the selftest catalogue.

Each case of :data:`devmemtcp.selftest.catalogue.NETKIT_CASES` runs against
the emulated NIC in a :class:`~devmemtcp.selftest.container.ContainerEnv`
(peer, host and container namespaces with an emulated netkit pair). The
kernel variant needs the netdev family's queue-create op (Linux 7.1) and a
netkit pair over a devmem NIC: it is skipped with the reason where the
kernel lacks the op (this machine: 6.18).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import Any

import pytest

from devmemtcp.selftest.catalogue import NETKIT_CASES, CaseFailed, NetkitCase, check_netkit

pytestmark = [pytest.mark.root, pytest.mark.netns]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from devmemtcp.selftest.container import ContainerEnv

    with ContainerEnv(directory=str(tmp_path_factory.mktemp("emu-netkit"))) as e:
        yield e


def _kernel_has_queue_create() -> str | None:
    from devmemtcp.netlink.netdev import NetdevClient

    with NetdevClient() as client:
        ops = client.ops()
    if "queue-create" in ops:
        return None
    return f"this kernel ({platform.release()}) has no netdev queue-create op (netkit leasing is Linux 7.1)"


@pytest.mark.parametrize("case", NETKIT_CASES, ids=[c.name for c in NETKIT_CASES])
def test_netkit_catalogue_emulated(env: Any, case: NetkitCase) -> None:
    try:
        seen = check_netkit(case, env, nbytes=2 << 20)
    except CaseFailed as exc:
        pytest.fail(f"{case.name}: {exc}")
    if case.errno is not None:
        assert seen["errno"] and (case.extack is None or seen["extack"] == case.extack)
    if case.name == "nk-rx":
        # MTU 1500 veths: frags of MSS bytes packed into 4096-byte buffers, validated
        assert seen["non_page_aligned_frags"] > 0 and seen["frags"] > seen["bytes"] // 4096


@pytest.mark.parametrize("case", NETKIT_CASES[:1], ids=["kernel"])
def test_netkit_catalogue_kernel(case: NetkitCase) -> None:
    reason = _kernel_has_queue_create()
    if reason:
        pytest.skip(reason)
    pytest.skip("the kernel variant needs a netkit pair over a devmem NIC: set DEVMEMTCP_NIC and build "
                "it with NetDrvContEnv (not available on this machine)")
