"""tools/check_layers.py: passes on the real tree, fails on upward and dynamic imports."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]
TOOL = REPO / "tools" / "check_layers.py"


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layers", TOOL)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_layers", mod)
    spec.loader.exec_module(mod)
    return mod


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "src" / "devmemtcp"
    for rel, text in {"__init__.py": "", "abi.py": "X = 1\n", **files}.items():
        p = pkg / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path / "src"


def test_real_tree_is_clean() -> None:
    res = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_downward_and_same_floor_imports_pass(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "rx.py": "from devmemtcp import abi\nfrom devmemtcp.tx import T\n",
        "tx.py": "from devmemtcp.abi import X\nT = X\n",
    })
    assert _tool().check_tree(root) == []


@pytest.mark.parametrize("importer, text", [
    ("abi.py", "from devmemtcp.rx import R\n"),                      # ground floor imports a middle one
    ("codec/__init__.py", "import devmemtcp.cli.main\n"),            # plain import, upward
    ("backend/kernel.py", "from ..channel import core\n"),           # relative, upward
    ("netlink/genl.py",
     "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from devmemtcp.setup import S\n"),
])
def test_upward_import_fails(tmp_path: Path, importer: str, text: str) -> None:
    root = _tree(tmp_path, {importer: text, "rx.py": "R = 1\n", "channel/core.py": "", "cli/main.py": "",
                            "setup/__init__.py": "S = 1\n"})
    violations = _tool().check_tree(root)
    assert len(violations) == 1
    assert "higher floor" in violations[0].text
    # the command line fails too
    res = subprocess.run([sys.executable, str(TOOL), str(root)], capture_output=True, text=True)
    assert res.returncode == 1 and importer.split("/")[-1] in res.stdout


def test_dynamic_import_outside_cli_main_fails(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "backend/kernel.py": "import importlib\nm = importlib.import_module('devmemtcp.netlink.ntuple')\n",
        "cli/main.py": "import importlib\nm = importlib.import_module('devmemtcp.cli.recv')\n",
        "netlink/ntuple.py": "",
    })
    violations = _tool().check_tree(root)
    assert [v.path.name for v in violations] == ["kernel.py"]
    assert "import_module" in violations[0].text


def test_module_without_a_floor_is_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"misc.py": ""})
    violations = _tool().check_tree(root)
    assert len(violations) == 1 and "no floor" in violations[0].text
