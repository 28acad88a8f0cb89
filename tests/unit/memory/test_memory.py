"""dma-buf providers: memfd host buffer and the udmabuf error paths."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmemtcp import abi
from devmemtcp.codec import FragBatch
from devmemtcp.errors import DevmemError
from devmemtcp.memory import MemfdBuffer, UdmabufBuffer, open_dmabuf
from devmemtcp.memory.base import DmaBuf


def open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


def batch(offs: list[int], sizes: list[int]) -> FragBatch:
    n = len(offs)
    return FragBatch(np.array(offs, np.uint64), np.array(sizes, np.uint32),
                     np.arange(1, n + 1, dtype=np.uint32), np.ones(n, np.uint32))


def test_memfd_is_a_shared_mapping_of_the_fd() -> None:
    before = open_fds()
    with MemfdBuffer(3 * 4096) as b:
        assert isinstance(b, DmaBuf)
        assert b.kind == "memfd" and b.size == 12288 and b.page_size == 4096
        v = b.host_view()
        assert v.dtype == np.uint8 and v.shape == (12288,) and v.flags.writeable
        v[100:105] = [1, 2, 3, 4, 5]
        # the bytes are in the memfd itself (what a bind hands to the NIC)
        assert os.pread(b.fd, 5, 100) == bytes([1, 2, 3, 4, 5])
        os.pwrite(b.fd, b"xyz", 5000)
        assert bytes(b.copy_out(5000, 3)) == b"xyz"
        # host_view is a view, not a copy
        assert np.shares_memory(b.host_view(), v)
        del v
    assert b.closed
    assert open_fds() == before


def test_size_must_be_page_multiple() -> None:
    with pytest.raises(DevmemError, match="multiple of the page size 4096") as ei:
        MemfdBuffer(5000)
    assert "8192" in (ei.value.hint or "")
    with pytest.raises(DevmemError):
        MemfdBuffer(0)
    with pytest.raises(DevmemError, match="power of two"):
        MemfdBuffer(8192, page_size=3000)
    with MemfdBuffer(3 * 16384, page_size=16384) as b:
        assert b.size == 49152


def test_copy_in_out_and_bounds() -> None:
    with MemfdBuffer(8192) as b:
        b.copy_in(10, b"hello")
        b.copy_in(20, np.arange(4, dtype=np.uint16))  # raw bytes of the array
        assert bytes(b.copy_out(10, 5)) == b"hello"
        assert b.copy_out(20, 8).tolist() == [0, 0, 1, 0, 2, 0, 3, 0]
        out = b.copy_out(10, 5)
        out[:] = 0
        assert bytes(b.copy_out(10, 5)) == b"hello"  # copy_out copies
        with pytest.raises(DevmemError, match="outside"):
            b.copy_in(8190, b"abc")
        with pytest.raises(DevmemError, match="outside"):
            b.copy_out(-1, 2)


def test_use_after_close_is_a_clear_error() -> None:
    b = MemfdBuffer(4096)
    b.close()
    b.close()  # idempotent
    with pytest.raises(DevmemError, match="closed"):
        b.host_view()


def test_close_with_live_views_closes_fd() -> None:
    gc.collect()  # garbage an earlier test left (its fds) must not count as this buffer's
    before = open_fds()
    b = MemfdBuffer(4096)
    v = b.host_view()
    fd = b.fd
    b.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    v[0] = 7  # the mapping stays valid while the view lives
    assert v[0] == 7
    del v
    gc.collect()
    assert open_fds() == before  # the mapping (and mmap's own fd) went with the last view


def test_gather_full_pages_in_batch_order() -> None:
    with MemfdBuffer(8 * 4096) as b:
        v = b.host_view()
        v[:] = np.repeat(np.arange(8, dtype=np.uint8), 4096)
        g = b.gather(batch([5 * 4096, 0, 7 * 4096], [4096] * 3))
        assert g.shape == (3 * 4096,)
        assert (g[:4096] == 5).all() and (g[4096:8192] == 0).all() and (g[8192:] == 7).all()


def test_gather_into_out_and_errors() -> None:
    with MemfdBuffer(4 * 4096) as b:
        b.host_view()[:] = np.arange(4 * 4096) % 251
        out = np.full(200, 0xAA, np.uint8)
        g = b.gather(batch([10, 4096 * 3 + 4000], [20, 96]), out=out)
        assert np.shares_memory(g, out) and g.shape == (116,)
        expect = np.concatenate([np.arange(10, 30), np.arange(4096 * 3 + 4000, 4096 * 4)]) % 251
        assert g.tolist() == expect.tolist()
        with pytest.raises(DevmemError, match="at least 116"):
            b.gather(batch([10, 20], [100, 16]), out=np.empty(10, np.uint8))
        with pytest.raises(DevmemError, match="outside"):
            b.gather(batch([4 * 4096 - 10], [20]))
        assert b.gather(FragBatch.empty()).shape == (0,)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4 * 4096 - 1), st.integers(0, 4096)), max_size=40))
def test_gather_matches_slicing(frags: list[tuple[int, int]]) -> None:
    size = 4 * 4096
    frags = [(o, min(s, size - o)) for o, s in frags]
    with MemfdBuffer(size) as b:
        b.host_view()[:] = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8)
        got = b.gather(batch([o for o, _ in frags], [s for _, s in frags]))
        v = b.host_view()
        want = np.concatenate([v[o:o + s] for o, s in frags]) if frags else np.empty(0, np.uint8)
        assert got.tobytes() == want.tobytes()


def test_open_dmabuf_factory() -> None:
    with open_dmabuf("host", 4096) as b:
        assert isinstance(b, MemfdBuffer)
    with pytest.raises(DevmemError, match="unknown memory kind") as ei:
        open_dmabuf("gpu", 4096)
    assert "host" in (ei.value.hint or "")


@pytest.mark.skipif(os.path.exists("/dev/udmabuf"), reason="this machine has udmabuf")
def test_udmabuf_missing_names_the_module() -> None:
    before = open_fds()
    with pytest.raises(DevmemError, match="/dev/udmabuf is missing") as ei:
        open_dmabuf("udmabuf", 4096)
    assert "modprobe udmabuf" in (ei.value.hint or "") and "CONFIG_UDMABUF" in (ei.value.hint or "")
    assert open_fds() == before


def test_udmabuf_size_limit(tmp_path: os.PathLike[str]) -> None:
    dev = os.path.join(tmp_path, "udmabuf")
    open(dev, "w").close()
    limit = os.path.join(tmp_path, "size_limit_mb")
    with open(limit, "w") as f:
        f.write("1\n")
    before = open_fds()
    with pytest.raises(DevmemError, match="exceeds udmabuf's size_limit_mb \\(1 MiB\\)") as ei:
        UdmabufBuffer(2 * 1024 * 1024, device=dev, size_limit_path=limit)
    assert "echo 2 >" in (ei.value.hint or "")
    assert open_fds() == before


def test_udmabuf_ioctl_failure_leaks_nothing() -> None:
    # /dev/null exists but is not udmabuf: the ioctl fails (ENOTTY) after the
    # memfd was created and sealed; every fd must be closed again.
    before = open_fds()
    with pytest.raises(DevmemError, match="UDMABUF_CREATE on /dev/null failed"):
        UdmabufBuffer(8192, device="/dev/null", size_limit_path="/nonexistent")
    assert open_fds() == before


def test_udmabuf_create_ioctl_number() -> None:
    # _IOW('u', 0x42, struct udmabuf_create) from include/uapi/linux/udmabuf.h
    assert abi.UDMABUF_CREATE == 0x40187542
