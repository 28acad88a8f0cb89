"""``devmemtcp completion bash|zsh|tcsh``: a shell completion script, generated
from the same argparse parser the command runs (by shtab), so it never goes
stale: every subcommand, option and choice completes.

    eval "$(devmemtcp completion bash)"                        # this shell
    devmemtcp completion bash > ~/.local/share/bash-completion/completions/devmemtcp
    devmemtcp completion zsh > "${fpath[1]}/_devmemtcp"

Exit status: 0 printed, 2 shtab missing (pip install shtab) or bad input.
"""

from __future__ import annotations

import argparse

from devmemtcp.cli import common
from devmemtcp.errors import DevmemError

SHELLS = ("bash", "zsh", "tcsh")

EXAMPLES = """\
examples:
  eval "$(devmemtcp completion bash)"          complete devmemtcp in this bash
  devmemtcp completion bash > ~/.local/share/bash-completion/completions/devmemtcp
  devmemtcp completion zsh > ~/.zfunc/_devmemtcp   (with fpath+=(~/.zfunc) in ~/.zshrc)
  devmemtcp completion bash --prog ncdevmem    the ncdevmem script's completion
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    parser.add_argument("--prog", choices=("devmemtcp", "ncdevmem"), default="devmemtcp",
                        help="the command to complete (default devmemtcp)")
    common.add_output_args(parser)


def script(shell: str, prog: str = "devmemtcp") -> str:
    """The completion script for ``prog`` in ``shell`` (text). Raises DevmemError
    when shtab is not installed."""
    try:
        import shtab
    except ImportError:
        raise DevmemError("shell completion needs the shtab package",
                          "pip install shtab (it comes with `pip install devmemtcp`)") from None
    if prog == "ncdevmem":
        from devmemtcp.cli.ncdevmem import build_parser as nc_parser

        parser = nc_parser()
    else:
        from devmemtcp.cli.main import build_parser

        parser = build_parser(full=True)
    return str(shtab.complete(parser, shell=shell))


def run(args: argparse.Namespace) -> int:
    text = script(args.shell, args.prog)
    if args.json:
        common.print_json({"shell": args.shell, "prog": args.prog, "script": text})
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0
