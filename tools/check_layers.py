#!/usr/bin/env python3
"""Layering check: imports inside src/devmemtcp point down the layer order only.

Reads every module's imports with :mod:`ast` (no import is executed) and
fails on:

* an import of a module on a higher floor than the importer's (imports within
  one floor are allowed);
* ``importlib.import_module`` or ``__import__`` anywhere except the CLI's lazy
  subcommand loading (``cli/main.py``).

Imports under ``if TYPE_CHECKING:`` are checked too: a type an upper floor
defines is still a dependency on that floor.

Usage: ``python3 tools/check_layers.py [SRC_ROOT]`` (default: src/ beside
this script's folder). Exit status 0 when clean, 1 with one line per
violation.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "devmemtcp"

# Top floor first. A module's floor is the first entry whose name is a prefix
# of its dotted path below the package ("channel.core" -> "channel").
FLOORS: list[tuple[str, ...]] = [
    ("cli",),
    ("bench", "selftest", "torch"),
    ("channel", "transfer"),
    ("rx", "tx", "setup", "validate"),
    ("backend", "doctor"),
    ("netlink", "memory", "emulation"),
    ("codec", "host", "pattern"),
    ("abi", "errors", "types"),
]

# The one place lazy imports by name are allowed: the CLI loads subcommands on demand.
DYNAMIC_IMPORT_ALLOWED = {"cli.main"}
DYNAMIC_IMPORTERS = {"import_module", "__import__", "spec_from_file_location", "module_from_spec"}


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text}"


def floor_of(module: str) -> int | None:
    """Floor index (0 = top) of a module path below the package, None if unknown."""
    if module in ("", "__init__", "__main__"):
        return 0  # the package's own __init__ re-exports from every floor, lazily
    head = module.split(".")[0]
    for i, names in enumerate(FLOORS):
        if head in names:
            return i
    return None


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root / PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


_SRC: Path = Path()


def _is_submodule(name: str) -> bool:
    pkg = _SRC / PACKAGE
    return (pkg / f"{name}.py").exists() or (pkg / name / "__init__.py").exists()


def _resolve(node: ast.ImportFrom, current: str, is_pkg: bool) -> list[str]:
    """Absolute module paths (below the package) named by a from-import."""
    if node.level:
        base = current.split(".") if current else []
        if not is_pkg:
            base = base[:-1]
        up = node.level - 1
        base = base[: len(base) - up] if up else base
        mod = ".".join([*base, node.module] if node.module else base)
    else:
        if not node.module or not (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
            return []
        mod = node.module[len(PACKAGE) + 1:] if node.module != PACKAGE else ""
    if mod:
        return [mod]
    # "from devmemtcp import abi, cmsg": the names that are submodules
    return [a.name for a in node.names if _is_submodule(a.name)]


def check_file(path: Path, root: Path) -> list[Violation]:
    module = _module_name(path, root)
    is_pkg = path.name == "__init__.py"
    own = floor_of(module)
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[Violation] = []
    if own is None:
        return [Violation(path, 1, f"module {PACKAGE}.{module} has no floor in tools/check_layers.py FLOORS")]
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == PACKAGE or a.name.startswith(PACKAGE + "."):
                    targets.append(a.name[len(PACKAGE) + 1:])
        elif isinstance(node, ast.ImportFrom):
            targets = _resolve(node, module, is_pkg)
        elif isinstance(node, ast.Call) and module not in DYNAMIC_IMPORT_ALLOWED:
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if name in DYNAMIC_IMPORTERS:
                out.append(Violation(path, node.lineno,
                                     f"calls {name}() (only cli.main may load modules by name)"))
        for t in targets:
            if not t:
                continue
            f = floor_of(t)
            if f is None:
                out.append(Violation(path, node.lineno, f"imports {PACKAGE}.{t}, which has no floor"))
            elif f < own:
                out.append(Violation(
                    path, node.lineno,
                    f"{PACKAGE}.{module} ({'/'.join(FLOORS[own])}) imports {PACKAGE}.{t} "
                    f"({'/'.join(FLOORS[f])}), a higher floor: move the shared piece down or invert the call",
                ))
    return out


def check_tree(root: Path) -> list[Violation]:
    global _SRC
    _SRC = root
    pkg = root / PACKAGE
    out: list[Violation] = []
    for path in sorted(pkg.rglob("*.py")):
        out.extend(check_file(path, root))
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "src"
    violations = check_tree(root)
    for v in violations:
        print(v)
    if violations:
        print(f"layering check: {len(violations)} violation(s)", file=sys.stderr)
        return 1
    print(f"layering check: {sum(1 for _ in (root / PACKAGE).rglob('*.py'))} modules, imports point down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
