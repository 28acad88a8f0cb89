"""devmemtcp.torch.config: options, environment, defaults; and the wire tag layout."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devmemtcp.errors import DevmemError


def test_import_devmemtcp_never_imports_torch() -> None:
    code = ("import sys, devmemtcp, devmemtcp.channel; devmemtcp.listen; devmemtcp.Channel; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True)


pytest.importorskip("torch", reason="torch is an optional extra: pip install 'devmemtcp[torch]'")
from devmemtcp.torch.config import TX_DMABUF_SIZE, Options, parse_queues, resolve, route_to  # noqa: E402


def test_defaults_follow_the_route_to_master_addr() -> None:
    o = resolve(None, {"MASTER_ADDR": "127.0.0.1"})
    assert (o.ifname, o.addr, o.streams, o.backend, o.memory) == ("lo", "127.0.0.1", 1, "auto", "host")
    assert o.gloo_ifname == "lo" and o.queues is None and o.dmabuf_size is None
    assert o.tx_dmabuf_size == TX_DMABUF_SIZE == 16 << 20


def test_tx_dmabuf_size_from_the_environment_and_options_reaches_the_channels() -> None:
    from devmemtcp.torch.channel_transport import ChannelTransport

    env = {"MASTER_ADDR": "127.0.0.1", "DEVMEMTCP_TX_DMABUF_SIZE": str(4 << 20)}
    assert resolve(None, env).tx_dmabuf_size == 4 << 20
    o = resolve(Options(tx_dmabuf_size=32 << 20), env)
    assert o.tx_dmabuf_size == 32 << 20
    kw = ChannelTransport(o)._kwargs()
    assert kw["tx_dmabuf_size"] == 32 << 20 and "dmabuf_size" not in kw


def test_master_addr_as_a_host_name() -> None:
    assert route_to("localhost")[0] == "lo"


def test_environment_then_options_override() -> None:
    env = {"MASTER_ADDR": "127.0.0.1", "DEVMEMTCP_IFNAME": "lo", "DEVMEMTCP_STREAMS": "4",
           "DEVMEMTCP_BACKEND": "emulated", "DEVMEMTCP_QUEUES": "2:6", "DEVMEMTCP_DMABUF_SIZE": "8388608",
           "GLOO_SOCKET_IFNAME": "lo"}
    o = resolve(None, env)
    assert (o.ifname, o.addr, o.streams, o.backend, o.queues, o.dmabuf_size) == \
        ("lo", "127.0.0.1", 4, "emulated", "2:6", 8 << 20)
    o = resolve(Options(streams=2, memory="udmabuf"), env)
    assert (o.streams, o.memory, o.backend) == (2, "udmabuf", "emulated")


@pytest.mark.parametrize(("var", "value", "words"), [
    ("DEVMEMTCP_STREAMS", "zero", "positive integer"),
    ("DEVMEMTCP_STREAMS", "0", ">= 1"),
    ("DEVMEMTCP_BACKEND", "magic", "unknown backend"),
    ("DEVMEMTCP_MEMORY", "gpu", "unknown memory"),
    ("DEVMEMTCP_QUEUES", "a:b", "START[:COUNT]"),
    ("DEVMEMTCP_TX_DMABUF_SIZE", "-1", ">= 1"),
])
def test_bad_environment_names_the_variable(var: str, value: str, words: str) -> None:
    with pytest.raises(DevmemError) as ei:
        resolve(None, {"MASTER_ADDR": "127.0.0.1", var: value})
    assert var in str(ei.value) and words in str(ei.value) and ei.value.hint


def test_unknown_interface_is_a_clear_error() -> None:
    with pytest.raises(DevmemError, match="no interface named 'nope0'"):
        resolve(None, {"DEVMEMTCP_IFNAME": "nope0"})


def test_parse_queues() -> None:
    assert parse_queues("3") == (3, 1)
    assert parse_queues("8:4") == (8, 4)
    assert parse_queues(None) is None


def test_tag_layout_round_trips() -> None:
    from devmemtcp.torch.process_group import DTYPES, KIND_COLL, pack_tag, unpack_tag

    for kind, code, tag in ((1, 0, 0), (KIND_COLL, len(DTYPES) - 1, 0xFFFFFFFF), (3, 7, 12345)):
        t = pack_tag(kind, code, tag)
        assert 0 <= t < 1 << 64
        assert unpack_tag(t) == (kind, code, tag)
    # a negative torch tag (C++ int) maps into the 32 bits the wire carries
    assert unpack_tag(pack_tag(1, 0, -1))[2] == 0xFFFFFFFF
