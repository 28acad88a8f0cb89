"""open_backend: the one factory, its choices and the reasons it gives."""

from __future__ import annotations

import inspect

import pytest

from devmemtcp.backend import base, open_backend
from devmemtcp.backend.emulated import EmulatedBackend
from devmemtcp.backend.kernel import KernelBackend
from devmemtcp.errors import DevmemError


def test_named_backends_and_their_reasons() -> None:
    be, why = open_backend("emulated")
    with be:
        assert isinstance(be, EmulatedBackend) and be.name == "emulated"
        assert why == "asked for (--backend emulated)"
    be, why = open_backend("kernel")
    with be:
        assert isinstance(be, KernelBackend) and be.name == "kernel"
        assert why == "asked for (--backend kernel)"


def test_a_backend_object_is_given_back_as_is() -> None:
    with EmulatedBackend() as mine:
        be, why = open_backend(mine, "lo", "tx")
        assert be is mine and why == "given by the caller"


def test_unknown_name_and_auto_without_an_interface_are_clear_errors() -> None:
    with pytest.raises(DevmemError) as ei:
        open_backend("fpga")
    assert "unknown backend 'fpga'" in ei.value.message and "auto, kernel or emulated" in str(ei.value.hint)
    with pytest.raises(DevmemError) as ei:
        open_backend("auto")
    assert "--ifname" in str(ei.value.hint)


@pytest.mark.root
def test_auto_on_an_unknown_interface_falls_back_to_the_emulated_nic_and_says_why() -> None:
    be, why = open_backend("auto", "nosuchif0", "rx")
    with be:
        assert be.name == "emulated"
        assert why.startswith("doctor could not check nosuchif0 (")


@pytest.mark.parametrize("cls", [KernelBackend, EmulatedBackend])
def test_both_backends_have_every_member_of_the_protocol(cls: type) -> None:
    # mypy checks the signatures (kernel.py / emulated.py _conforms); this checks the names at run time
    members = {n for n, _ in inspect.getmembers(base.Backend) if not n.startswith("_")}
    assert {"name", "close", "recvmsg", "wait_errqueue"} <= members
    members |= {"__enter__", "__exit__"}
    missing = {n for n in members if not hasattr(cls, n)}
    assert not missing, f"{cls.__name__} lacks {sorted(missing)}"
