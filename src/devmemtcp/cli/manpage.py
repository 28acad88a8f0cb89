"""``devmemtcp man``: the devmemtcp(1) and ncdevmem(1) manual pages.

The pages are generated from the argparse parsers by argparse-manpage
(``devmemtcp man --write DIR``, a development step that
``python3 tools/gen_cli_docs.py`` runs), shipped inside the package
(``devmemtcp/cli/man/*.1``) and installed into ``share/man/man1`` of the
environment, where ``man devmemtcp`` finds them once the environment's
``bin`` is on PATH (man-db derives its search path from PATH). ``devmemtcp
man`` shows the shipped page with ``man -l`` on a terminal, and prints the
roff source otherwise.

Exit status: 0 shown or written, 2 no such page or argparse-manpage missing
for ``--write``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from devmemtcp import __version__
from devmemtcp.cli import common
from devmemtcp.errors import DevmemError

PAGES = ("devmemtcp", "ncdevmem")
#: The date printed in the pages' footer: the release's (a fixed date keeps the
#: generated pages reproducible, so the shipped ones can be checked against the parser).
RELEASE_DATE = "2026-12-01"
URL = "https://docs.kernel.org/networking/devmem.html"

EXAMPLES = """\
examples:
  devmemtcp man                        the devmemtcp(1) page (man -l on a terminal, roff on a pipe)
  devmemtcp man ncdevmem               the ncdevmem(1) page
  devmemtcp man --write docs/man       regenerate both pages from the parsers (needs argparse-manpage)
  man devmemtcp                        after pip install, with the environment's bin on PATH
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("page", nargs="?", choices=PAGES, default="devmemtcp", help="which page")
    parser.add_argument("--write", type=Path, metavar="DIR",
                        help="generate every page from the parsers into DIR (argparse-manpage)")
    common.add_output_args(parser)


def render(page: str) -> str:
    """The roff source of ``page`` ("devmemtcp" or "ncdevmem"), generated from
    its parser now. Raises DevmemError when argparse-manpage is missing."""
    try:
        from argparse_manpage.manpage import Manpage
    except ImportError:
        raise DevmemError("generating man pages needs argparse-manpage",
                          "pip install -e '.[dev]' (or pip install argparse-manpage)") from None
    if page == "ncdevmem":
        from devmemtcp.cli.ncdevmem import DESCRIPTION
        from devmemtcp.cli.ncdevmem import build_parser as nc_parser

        parser = nc_parser()
        description = DESCRIPTION
    else:
        from devmemtcp.cli.main import build_parser

        parser = build_parser(full=True)
        description = parser.description or ""
    data = {"date": RELEASE_DATE, "project_name": "devmemtcp", "version": __version__,
            "manual_title": "devmemtcp manual", "description": description, "url": URL}
    # argparse-manpage reads the date from SOURCE_DATE_EPOCH when no date is given; ours is fixed,
    # and so is the width argparse wraps at (it reads COLUMNS), so the page is reproducible
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        return str(Manpage(parser, _data=data))
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def shipped(page: str) -> str:
    """The roff source of ``page`` as shipped in the package."""
    return resources.files("devmemtcp.cli").joinpath("man", f"{page}.1").read_text()


def run(args: argparse.Namespace) -> int:
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        written = []
        for page in PAGES:
            path = args.write / f"{page}.1"
            path.write_text(render(page))
            written.append(str(path))
        if args.json:
            common.print_json({"written": written})
        else:
            common.note("wrote " + ", ".join(written))
        return 0
    try:
        text = shipped(args.page)
    except FileNotFoundError:
        raise DevmemError(f"no {args.page}(1) page in this installation",
                          "regenerate it: devmemtcp man --write src/devmemtcp/cli/man") from None
    if args.json:
        common.print_json({"page": args.page, "roff": text})
        return 0
    if sys.stdout.isatty() and shutil.which("man"):
        with resources.as_file(resources.files("devmemtcp.cli").joinpath("man", f"{args.page}.1")) as p:
            return subprocess.call(["man", "-l", os.fspath(p)])
    sys.stdout.write(text)
    return 0
