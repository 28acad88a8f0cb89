"""Fixtures of the emulated-NIC tests: a backend with its own state directory, a dma-buf."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devmemtcp import abi
from devmemtcp.backend.emulated import EmulatedBackend
from devmemtcp.memory.memfd import MemfdBuffer

PS = abi.PAGE_SIZE


@pytest.fixture
def emu(tmp_path: Any) -> Iterator[EmulatedBackend]:
    be = EmulatedBackend(directory=str(tmp_path))
    yield be
    be.close()


@pytest.fixture
def buf() -> Iterator[MemfdBuffer]:
    with MemfdBuffer(64 * PS) as b:
        yield b

