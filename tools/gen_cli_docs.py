#!/usr/bin/env python3
"""Generate the CLI reference (docs/cli.md) and the man pages (src/devmemtcp/cli/man/*.1)
from the argparse parsers, so the documents say what the commands accept.

    python3 tools/gen_cli_docs.py           # write them
    python3 tools/gen_cli_docs.py --check   # exit 1, naming the stale files, if they differ

The man pages need argparse-manpage (in the dev extra); without it only
docs/cli.md is written (or checked) and the tool says so.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ["COLUMNS"] = "100"  # argparse wraps help at the terminal width: fix it

from devmemtcp.cli import main as cli_main  # noqa: E402
from devmemtcp.cli import ncdevmem  # noqa: E402

CLI_MD = ROOT / "docs" / "cli.md"
MAN_DIR = ROOT / "src" / "devmemtcp" / "cli" / "man"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _section(title: str, parser: argparse.ArgumentParser, level: int = 2) -> list[str]:
    out = [f"{'#' * level} `{title}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in _subparsers(parser).items():
        if sub.prog.count(" ") >= 2:  # nested (bench frags ...)
            out += _section(f"{title} {name}", sub, level + 1)
    return out


def cli_markdown() -> str:
    """docs/cli.md: the --help of devmemtcp, of every subcommand and of ncdevmem."""
    parser = cli_main.build_parser(full=True)
    lines = ["# Command-line reference", "",
             "Generated from the argparse parsers by `tools/gen_cli_docs.py`; do not edit by hand",
             "(run `python3 tools/gen_cli_docs.py` after changing an option). The same text is",
             "`devmemtcp COMMAND --help`; the man pages (`man devmemtcp`, `man ncdevmem`) come from",
             "the same parsers. Exit statuses are in every section's epilog.", "",
             "Commands: " + ", ".join(f"[{n}](#devmemtcp-{n})" for n in cli_main.COMMANDS)
             + ", and [ncdevmem](#ncdevmem).", ""]
    lines += _section("devmemtcp", parser)[: 6]
    for name, sub in _subparsers(parser).items():
        lines += _section(f"devmemtcp {name}", sub)
    lines += _section("ncdevmem", ncdevmem.build_parser())
    return "\n".join(lines).rstrip() + "\n"


def outputs() -> dict[Path, str]:
    files = {CLI_MD: cli_markdown()}
    try:
        from devmemtcp.cli import manpage

        for page in manpage.PAGES:
            files[MAN_DIR / f"{page}.1"] = manpage.render(page)
    except Exception as exc:  # argparse-manpage missing: say so, keep going
        print(f"gen_cli_docs: man pages skipped ({exc})", file=sys.stderr)
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated file is out of date")
    args = ap.parse_args()
    stale = []
    for path, text in outputs().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("out of date (run python3 tools/gen_cli_docs.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
