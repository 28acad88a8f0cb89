"""The C baselines: compiled from package data, walking cmsg-encoded buffers on the real kernel."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from devmemtcp import abi
from devmemtcp.bench import ctools
from devmemtcp.codec import encode_rx_control

pytestmark = pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc (apt-get install gcc)")


def _records(nbuf: int, per: int, first_token: int = 1, linear: int = 0) -> list[tuple[bytes, int]]:
    out = []
    for i in range(nbuf):
        ctl = np.zeros((per + 1) * abi.DMABUF_CMSG_SPACE, np.uint8)
        tokens = np.arange(first_token, first_token + per, dtype=np.uint32)
        offsets = (np.arange(per, dtype=np.uint64) + i * per) * abi.PAGE_SIZE
        sizes = np.full(per, abi.PAGE_SIZE, np.uint32)
        n = encode_rx_control(ctl, offsets, sizes, tokens, 1, linear_size=linear)
        out.append((ctl[:n].tobytes(), per * abi.PAGE_SIZE + linear))
    return out


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ctools.build_cwalk(tmp_path_factory.mktemp("cache"))


def test_build_is_cached(binary: Path) -> None:
    assert binary.exists()
    assert ctools.build_cwalk(binary.parent.parent) == binary


def test_walks_count_frags_bytes_and_syscalls(binary: Path, tmp_path: Path) -> None:
    per, nbuf = 1600, 3
    path = tmp_path / "ctl.bin"
    ctools.write_records(path, _records(nbuf, per))
    frags = 2 * nbuf * per  # two passes over the records
    res = {m: ctools.run_cwalk(binary, m, path, frags) for m in ("parse", "batched", "perfrag")}
    for r in res.values():
        assert r.frags == frags
        assert r.bytes == frags * abi.PAGE_SIZE
        assert r.buffers == 2 * nbuf
        assert r.release_errors == 0
        assert r.frags_freed == 0  # no devmem binding: the kernel knows none of the tokens
        assert r.seconds > 0 and r.cpu_seconds >= 0
    assert res["parse"].release_syscalls == 0
    assert res["perfrag"].release_syscalls == frags
    # partial chunks carry over into the next buffer: one call per 1024 frags, one for the rest at the end
    assert res["batched"].release_syscalls == -(-frags // 1024)


def test_batched_walk_honours_the_range_limit(binary: Path, tmp_path: Path) -> None:
    # every other token: 300 one-token ranges per buffer -> calls at 128, 256, then the rest
    per = 300
    ctl = np.zeros(per * abi.DMABUF_CMSG_SPACE, np.uint8)
    tokens = np.arange(1, 2 * per, 2, dtype=np.uint32)
    n = encode_rx_control(ctl, np.zeros(per, np.uint64), np.full(per, 100, np.uint32), tokens, 1)
    path = tmp_path / "ctl.bin"
    ctools.write_records(path, [(ctl[:n].tobytes(), per * 100)])
    r = ctools.run_cwalk(binary, "batched", path, per)
    assert (r.frags, r.bytes, r.release_syscalls) == (per, per * 100, 3)


def test_linear_cmsg_is_not_a_fragment(binary: Path, tmp_path: Path) -> None:
    path = tmp_path / "ctl.bin"
    ctools.write_records(path, _records(1, 10, linear=66))
    r = ctools.run_cwalk(binary, "perfrag", path, 10)
    assert (r.frags, r.release_syscalls, r.bytes) == (10, 10, 10 * abi.PAGE_SIZE)


def test_bad_mode_is_a_clear_error(binary: Path, tmp_path: Path) -> None:
    from devmemtcp.errors import DevmemError

    path = tmp_path / "ctl.bin"
    ctools.write_records(path, _records(1, 4))
    with pytest.raises(DevmemError, match="unknown mode"):
        ctools.run_cwalk(binary, "sideways", path, 4)  # type: ignore[arg-type]


def test_missing_compiler_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from devmemtcp.errors import DevmemError

    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(DevmemError) as exc:
        ctools.build_cwalk(tmp_path)
    assert exc.value.hint and "gcc" in exc.value.hint
