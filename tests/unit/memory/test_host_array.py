"""memory.base.host_array: a uint8 array over host memory at an address, owning nothing."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from devmemtcp.memory.base import host_array


def test_host_array_aliases_the_memory_both_ways() -> None:
    src = np.arange(64, dtype=np.uint8)
    a = host_array(src.__array_interface__["data"][0] + 8, 16)
    assert a.dtype == np.uint8 and a.shape == (16,) and a.flags.writeable
    assert a.tolist() == list(range(8, 24))
    a[:] = 7
    assert src[8:24].tolist() == [7] * 16
    assert src[7] == 7 and src[24] == 24  # nothing outside the range


def test_host_array_keeps_nothing_alive() -> None:
    class Owner:
        def __init__(self) -> None:
            self.buf = np.zeros(32, np.uint8)

    o = Owner()
    ref = weakref.ref(o)
    a = host_array(o.buf.__array_interface__["data"][0], 32)
    del o
    gc.collect()
    assert ref() is None and a.shape == (32,)  # the array lives on; its bytes are not read again


def test_host_array_of_no_bytes_is_empty() -> None:
    a = host_array(0, 0)
    assert a.shape == (0,) and a.dtype == np.uint8
