#!/usr/bin/env python3
"""Check the Markdown files' links: every relative link resolves inside the repository.

    python3 tools/check_links.py            # README.md, CHANGELOG.md, docs/**/*.md, bench/README.md ...
    python3 tools/check_links.py FILE...    # just these

A relative link must name a file or directory that exists, inside the
repository (a clone has nothing above it), and its ``#anchor``, if any, must
be a heading of the target (GitHub's anchor rules: lower case, punctuation
dropped, spaces to hyphens). Absolute http(s) and mailto links are not
fetched (CI has no network); they are listed with ``--verbose``.
Exit status: 0 all good, 1 broken links (each printed as FILE:LINE: problem).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "node_modules", "build", "dist", ".mypy_cache", ".ruff_cache",
             ".pytest_cache", ".hypothesis"}
LINK = re.compile(r"(?<!!)\[(?:[^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|!\[[^\]]*\]\(\s*([^)\s]+)")
REF_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)
FENCE = re.compile(r"^(```|~~~)")


def markdown_files() -> list[Path]:
    files = []
    for path in sorted(ROOT.rglob("*.md")):
        if not SKIP_DIRS.intersection(path.relative_to(ROOT).parts):
            files.append(path)
    return files


def anchors(path: Path) -> set[str]:
    """The heading anchors of a Markdown file, as GitHub makes them."""
    out: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = False
    for line in path.read_text(errors="replace").splitlines():
        if FENCE.match(line.strip()):
            in_fence = not in_fence
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if in_fence or not m:
            continue
        text = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(text, 0)
        seen[text] = n + 1
        out.add(text if n == 0 else f"{text}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """``(line number, target)`` of every inline link, image and reference definition
    outside code fences and inline code."""
    found = []
    in_fence = False
    for no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if FENCE.match(line.strip()):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        line = re.sub(r"`[^`]*`", "", line)
        for m in LINK.finditer(line):
            found.append((no, m.group(1) or m.group(2)))
        for m in REF_DEF.finditer(line):
            found.append((no, m.group(1)))
    return found


def check(path: Path, verbose: bool = False) -> list[str]:
    problems = []
    rel = path.relative_to(ROOT)
    for no, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            if verbose:
                print(f"{rel}:{no}: external {target} (not fetched)")
            continue
        file_part, _, anchor = target.partition("#")
        dest = path if not file_part else (path.parent / file_part).resolve()
        try:
            dest.relative_to(ROOT)
        except ValueError:
            problems.append(f"{rel}:{no}: {target} points outside the repository")
            continue
        if not dest.exists():
            problems.append(f"{rel}:{no}: {target}: no such file {dest.relative_to(ROOT)}")
            continue
        if anchor and dest.suffix == ".md" and anchor.lower() not in anchors(dest):
            problems.append(f"{rel}:{no}: {target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path, help="Markdown files (default: every *.md in the repo)")
    ap.add_argument("--verbose", action="store_true", help="also list the external links")
    args = ap.parse_args()
    files = [f.resolve() for f in args.files] or markdown_files()
    problems = [p for f in files for p in check(f, args.verbose)]
    for p in problems:
        print(p, file=sys.stderr)
    print(f"check_links: {len(files)} files, {len(problems)} broken links", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
