"""Errors about the emulated NIC point at devmemtcp, not at ethtool (which cannot change it)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from devmemtcp import abi
from devmemtcp.backend.emulated import EmulatedBackend
from devmemtcp.errors import DevmemError, NetlinkError
from devmemtcp.memory.memfd import MemfdBuffer
from devmemtcp.transfer import receive_stream

LO = socket.if_nametoindex("lo")


@pytest.mark.parametrize("rings", [{"tcp_data_split": "disabled"},
                                   {"tcp_data_split": "enabled", "hds_thresh": 8}])
def test_bind_rx_refusals_suggest_devmemtcp(tmp_path: Any, rings: dict[str, Any]) -> None:
    be = EmulatedBackend(directory=str(tmp_path))
    be.nic("lo").set_rings(**rings)
    with MemfdBuffer(16 * abi.PAGE_SIZE) as buf, pytest.raises(NetlinkError) as ei:
        be.bind_rx(LO, buf, [3])
    assert ei.value.hint and "ethtool" not in ei.value.hint and "devmemtcp setup" in ei.value.hint


def test_too_few_queues_suggests_devmemtcp(tmp_path: Any) -> None:
    be = EmulatedBackend(directory=str(tmp_path), queues=1)
    with pytest.raises(DevmemError) as ei:
        receive_stream("127.0.0.1", 0, ifname="lo", backend=be, nic_config=False, accept_timeout=1)
    assert ei.value.hint and "ethtool" not in ei.value.hint and "--channels 2" in ei.value.hint
