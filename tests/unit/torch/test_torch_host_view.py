"""The Channel transport's host views of CPU tensors (channel_transport._host_view):
they alias the tensor's bytes, are made once per (address, length), keep no
tensor alive and stay bounded in number."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is an optional extra: pip install 'devmemtcp[torch]'")

from devmemtcp.torch import channel_transport as ct  # noqa: E402
from devmemtcp.torch.process_group import _payload  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_views() -> None:
    ct._views.clear()


def test_view_aliases_the_tensor_both_ways() -> None:
    t = torch.arange(16, dtype=torch.uint8)
    v = ct._host_view(t)
    assert isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.shape == (16,)
    assert v.flags.writeable and v.flags.c_contiguous
    assert v.tolist() == list(range(16))
    v[3] = 200  # a receive writes through it
    assert int(t[3]) == 200
    t[5] = 77  # and a send reads what the tensor holds now
    assert int(v[5]) == 77


def test_the_same_bytes_give_the_same_array() -> None:
    f = torch.ones(64, dtype=torch.float32, requires_grad=True)
    a = ct._host_view(_payload(f))  # the process group's flat uint8 view, a new tensor each call
    b = ct._host_view(_payload(f))
    assert a is b
    assert a.shape == (256,)
    assert np.frombuffer(a.tobytes(), np.float32).tolist() == [1.0] * 64
    # another length at the same address, or another tensor, is another array
    assert ct._host_view(_payload(f)[:128]) is not a
    assert ct._host_view(_payload(torch.ones(64))) is not a


def test_a_view_keeps_no_tensor_alive() -> None:
    t = torch.zeros(1 << 20, dtype=torch.uint8)
    ref = weakref.ref(t)
    v = ct._host_view(t)
    del t
    gc.collect()
    assert ref() is None, "the cached view must not hold the tensor (it would keep its memory)"
    assert v.base is not None and not isinstance(v.base, torch.Tensor)


def test_views_are_bounded_oldest_first() -> None:
    keep = [torch.zeros(8, dtype=torch.uint8) for _ in range(ct.HOST_VIEWS_MAX + 10)]
    first = ct._host_view(keep[0])
    for t in keep[1:]:
        ct._host_view(t)
    assert len(ct._views) == ct.HOST_VIEWS_MAX
    assert ct._host_view(keep[0]) is not first  # the oldest was dropped and made again
    assert ct._host_view(keep[-1]) is ct._host_view(keep[-1])


def test_empty_and_device_tensors() -> None:
    assert ct._host_view(torch.empty(0, dtype=torch.uint8)).shape == (0,)
    meta = torch.empty(4, dtype=torch.uint8, device="meta")
    assert ct._host_view(meta) is meta


def test_other_tensors_get_their_own_numpy_view() -> None:
    """Outside the Link's contract (not uint8, not contiguous) a tensor is its own
    numpy view, as t.numpy() gives it, and nothing is cached for it."""
    f = torch.arange(6, dtype=torch.float32, requires_grad=True)
    v = ct._host_view(f)
    assert v.dtype == np.float32 and v.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    strided = torch.arange(12, dtype=torch.uint8)[::3]
    w = ct._host_view(strided)
    assert w.tolist() == [0, 3, 6, 9]
    assert not ct._views
