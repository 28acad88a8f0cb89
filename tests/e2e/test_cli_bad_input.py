"""Every subcommand over a table of bad inputs: one-line message, exit status 2, no traceback.

Each row runs twice: as the user would (stderr: ``devmemtcp CMD: error: ...``
and one ``hint:`` line, nothing on stdout) and with ``--json`` (one JSON
object on stdout with error, hint, errno and exit_status). The table is run
in-process through :func:`devmemtcp.cli.main.main` (an uncaught exception
fails the test with its traceback); a few rows also run as processes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from devmemtcp.cli import main as cli_main

MISSING_NS = "devmemtcp-missing-ns"

# (argv, a piece of the message)
BAD: list[tuple[list[str], str]] = [
    (["nosuchcmd"], "invalid choice"),
    # info / doctor
    (["info", "--netns", MISSING_NS], "does not exist"),
    (["info", "bad/name"], "not an interface name"),
    (["info", "nosuch0"], "no interface named 'nosuch0'"),
    (["doctor", "--netns", MISSING_NS], "does not exist"),
    (["doctor", "x" * 16], "not an interface name"),
    # recv
    (["recv", "--listen", "127.0.0.1", "--port", "70000"], "port 70000 is out of range"),
    (["recv", "--listen", "127.0.0.1", "--port", "-1"], "port -1 is out of range"),
    (["recv", "--listen", "127.0.0.1", "--port", "http"], "must be an integer"),
    (["recv", "--listen", "127.0.0.1", "--port", "0", "--timeout", "-1"], "timeout -1"),
    (["recv", "--listen", "127.0.0.1", "--port", "0", "--timeout", "nan"], "finite"),
    (["recv", "--listen", "127.0.0.1", "--port", "0", "--size", "0"], "0 bytes"),
    (["recv", "--listen", "127.0.0.1", "--port", "0", "--size", "1000"], "multiple of 4096"),
    (["recv", "--listen", "127.0.0.1", "--port", "0", "--rcvlowat", "-1"], "invalid size"),
    (["recv", "--listen", "127.0.0.1", "--port", "0", "--queues", "1:0"], "COUNT >= 1"),
    (["recv", "--listen", "127.0.0.1", "--port", "0", "--validate", "1"], "between 2 and 256"),
    (["recv", "--listen", "999.1.1.1", "--port", "0"], "not an IP address"),
    (["recv", "--listen", "127.0.0.1", "--port", "0", "--backend", "gpu"], "invalid choice"),
    (["recv", "--port", "0"], "required: -l/--listen"),
    (["recv", "-l", "127.0.0.1", "-p", "0", "-f", "nosuch0"], "no interface named"),
    # send
    (["send", "127.0.0.1", "--port", "0"], "port 0 is out of range"),
    (["send", "127.0.0.1", "--port", "65536"], "port 65536 is out of range"),
    (["send", "127.0.0.1", "--port", "1", "--bytes", "0"], "0 bytes"),
    (["send", "127.0.0.1", "--port", "1", "--bytes", "-5"], "invalid size"),
    (["send", "127.0.0.1", "--port", "1", "--chunk", "0"], "0 bytes"),
    (["send", "127.0.0.1", "--port", "1", "--size", "3K"], "multiple of 4096"),
    (["send", "localhost", "--port", "1"], "not an IP address"),
    (["send", "--port", "1"], "no receiver address"),
    (["send", "127.0.0.1", "-s", "127.0.0.2", "--port", "1"], "two receivers"),
    # demo
    (["demo", "--bytes", "0"], "0 bytes"),
    (["demo", "--validate", "300"], "between 2 and 256"),
    (["demo", "--backend", "kernel"], "the kernel backend needs a devmem NIC"),
    # setup / restore / teardown
    (["setup", "lo", "--listen", "127.0.0.1", "--port", "70000"], "out of range"),
    (["setup", "lo", "--listen", "127.0.0.1", "--port", "5201", "--peer-port", "0"], "out of range"),
    (["setup", "lo", "--listen", "127.0.0.1", "--port", "5201", "--channels", "0"], "must be >= 1"),
    (["setup", "lo", "--listen", "127.0.0.1", "--port", "5201", "--netns", MISSING_NS], "does not exist"),
    (["setup", "lo", "--listen", "my-host", "--port", "5201"], "not an IP address"),
    (["setup", "lo", "--port", "5201"], "required: --listen"),
    (["setup", "lo", "--listen", "127.0.0.1", "--port", "5201", "--peer-port", "9"], "--peer-port needs"),
    (["restore", "--netns", MISSING_NS], "does not exist"),
    (["restore", "bad/name"], "not an interface name"),
    (["teardown", "--netns", MISSING_NS], "does not exist"),
    # lease
    (["lease", "--guest", "nk0", "--phys", "lo", "--queue", "-1"], "must be >= 0"),
    (["lease", "--guest", "nk0", "--phys", "lo", "--queue", "1", "--netns", MISSING_NS], "does not exist"),
    (["lease", "--phys", "lo", "--queue", "1"], "required: --guest"),
    # selftest
    (["selftest", "--ifname", "lo", "--peer-netns", MISSING_NS], "does not exist"),
    (["selftest", "--ifname", "lo", "--netns", MISSING_NS], "does not exist"),
    (["selftest", "--ifname", "lo", "--bytes", "0"], "0 bytes"),
    (["selftest", "--ifname", "lo", "--case", "nosuch"], "invalid choice"),
    (["selftest"], "required: --ifname"),
    # bench
    (["bench"], "required: BENCH"),
    (["bench", "frags", "--frags", "0"], "must be >= 1"),
    (["bench", "stream", "--bytes", "0"], "0 bytes"),
    (["bench", "stream", "--repeat", "0"], "must be >= 1"),
    (["bench", "stream", "--dmabuf-size", "1000"], "multiple of 4096"),
    (["bench", "report", "--per-call", "0"], "must be >= 1"),
    # completion / man
    (["completion", "fish"], "invalid choice"),
    (["completion"], "required: shell"),
    (["man", "nosuchpage"], "invalid choice"),
]


def _command(argv: list[str]) -> str:
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] not in cli_main.COMMANDS:
        return ""
    return words[0]


def _ids(row: tuple[list[str], str]) -> str:
    return " ".join(row[0])[:60]


@pytest.mark.parametrize(("argv", "needle"), BAD, ids=[_ids(r) for r in BAD])
def test_bad_input_one_line_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main.main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, err
    lines = err.strip().splitlines()
    command = _command(argv)
    prefix = rf"^devmemtcp {command}( \w+)?: error: " if command else r"^devmemtcp: error: "
    assert len(lines) == 2, err
    assert re.match(prefix, lines[0]) and needle in lines[0], err
    assert lines[1].startswith("hint: ") and len(lines[1]) > len("hint: "), err
    assert out == ""


@pytest.mark.parametrize(("argv", "needle"), BAD, ids=[_ids(r) for r in BAD])
def test_bad_input_json_error_object(argv: list[str], needle: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main.main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert rc == 2, err
    obj = json.loads(out)  # exactly one JSON object on stdout
    assert set(obj) >= {"error", "hint", "errno", "exit_status"}
    assert obj["exit_status"] == 2 and obj["hint"]
    assert obj["errno"] is None or isinstance(obj["errno"], int)
    # --json may itself be the bad argument for a command that has none before the error;
    # the message on stderr is the same one-line one
    assert obj["error"] in err.splitlines()[0]


@pytest.mark.parametrize("argv", [
    ["recv", "--listen", "127.0.0.1", "--port", "70000"],
    ["recv", "--listen", "127.0.0.1", "--port", "0", "--timeout", "-1"],
    ["send", "127.0.0.1", "--port", "1", "--bytes", "0"],
    ["selftest", "--ifname", "lo", "--peer-netns", MISSING_NS],
    ["demo", "--backend", "kernel"],
])
def test_bad_input_as_a_process_has_no_traceback(argv: list[str]) -> None:
    res = subprocess.run([sys.executable, "-m", "devmemtcp.cli.main", *argv], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 2, res.stderr
    assert res.stdout == ""


def test_interrupted_is_130_with_json(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from devmemtcp.cli import info

    def interrupted(_args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "run", interrupted)
    assert cli_main.main(["info", "--json"]) == 130
    out, err = capsys.readouterr()
    assert json.loads(out)["exit_status"] == 130 and "interrupted" in err


def test_every_help_has_examples_and_the_exit_status_table(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli_main.build_parser(full=True)
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():  # type: ignore[union-attr]
        text = p.format_help()
        assert "examples:" in text, name
        assert "exit status:" in text and "130" in text and "did not validate" in text, name
    assert "exit status:" in parser.format_help()


def test_stdout_closed_early_is_quiet() -> None:
    """A write to a stdout whose reader left (`devmemtcp ... | head -1`) raises BrokenPipeError:
    no error message, the status of a process SIGPIPE ended (141). (Made deterministic by a
    command that raises it; a real pipe only does when the output outruns the pipe buffer.)"""
    code = ("import sys\n"
            "from devmemtcp.cli import info, main\n"
            "def run(args):\n"
            "    raise BrokenPipeError(32, 'Broken pipe')\n"
            "info.run = run\n"
            "sys.exit(main.main(['info']))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 141, res.stderr
    assert res.stderr == ""
