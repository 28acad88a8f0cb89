"""The wheel carries the package and its data, never the test suite."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=300)
    if res.returncode:
        pytest.skip(f"pip wheel could not build here: {res.stderr.strip()[-300:]}")
    (whl,) = out.glob("devmemtcp-*.whl")
    return zipfile.ZipFile(whl)


def test_wheel_has_no_test_modules(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    tests = [n for n in names if "/tests/" in n or Path(n).name.startswith("test_") or n.startswith("tests/")]
    assert tests == []
    assert "devmemtcp/abi.py" in names and "devmemtcp/codec/rx.py" in names
