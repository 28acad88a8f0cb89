"""CLI helpers without a network: argparse types, the backend line, the stream writer,
shell completion and the man pages."""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess

import numpy as np
import pytest

from devmemtcp.cli import common
from devmemtcp.codec import FragBatch
from devmemtcp.transfer import StreamWriter


@pytest.mark.parametrize(("fn", "good", "bad"), [
    (common.port_arg, [("0", 0), ("5201", 5201), ("65535", 65535), ("0x10", 16)],
     ["-1", "65536", "x", ""]),
    (common.peer_port_arg, [("1", 1), ("65535", 65535)], ["0", "65536", "-3"]),
    (common.timeout_arg, [("0", 0.0), ("2.5", 2.5)], ["-1", "nan", "inf", "soon"]),
    (common.positive_size, [("1", 1), ("4K", 4096)], ["0", "0K", "-1", "1X"]),
    (common.dmabuf_size, [("4096", 4096), ("64M", 64 << 20)], ["0", "1000", "6K"]),
    (common.nonneg_int, [("0", 0), ("15", 15)], ["-1", "one"]),
    (common.ip_arg, [("127.0.0.1", "127.0.0.1"), ("::1", "::1")], ["localhost", "1.2.3", "", "::g"]),
    (common.ifname_arg, [("eth0", "eth0"), ("veth-a.100", "veth-a.100")],
     ["", "a/b", "x" * 16, "a b", ".."]),
])
def test_argparse_types(fn, good, bad) -> None:  # type: ignore[no-untyped-def]
    for text, value in good:
        assert fn(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            fn(text)


def test_netns_arg_names_the_missing_namespace() -> None:
    with pytest.raises(argparse.ArgumentTypeError,
                       match=r"(?s)devmemtcp-nope-ns.*does not exist.*ip netns list"):
        common.netns_arg("devmemtcp-nope-ns")


@pytest.mark.parametrize(("reason", "short"), [
    ("doctor: no devmem RX on lo (queue-management-api: lo has no queue management ops (EOPNOTSUPP))",
     "lo has no devmem queue API; `devmemtcp doctor lo` says why"),
    ("doctor: no devmem TX on veth0 (netmem-tx: the driver does not declare netmem_tx)",
     "veth0 has no devmem TX; `devmemtcp doctor veth0` says why"),
    ("doctor: no devmem RX on eth1 (something-new: ...)",
     "no devmem RX on eth1; `devmemtcp doctor eth1` says why"),
    ("asked for (--backend emulated)", "asked for (--backend emulated)"),
    ("doctor: devmem RX is possible on eth1", "devmem RX is possible on eth1"),
    ("doctor could not check eth9 (no interface named 'eth9')",
     "could not check eth9; `devmemtcp doctor eth9` says why"),
])
def test_short_backend_reason(reason: str, short: str) -> None:
    ifname = reason.split(" on ")[-1].split(" ")[0] if " on " in reason else "eth9"
    assert common.short_backend_reason(reason, ifname) == short
    line = common.backend_line("emulated", reason, ifname=ifname)
    assert line == f"backend: emulated — {short}" and len(line) < 100
    assert common.backend_line("emulated", reason, verbose=True) == f"backend: emulated — {reason}"


def _batch(offsets: list[int], sizes: list[int], *, linear: bytes = b"",
           linear_sizes: list[int] | None = None, linear_at: list[int] | None = None,
           readable: bytes = b"") -> FragBatch:
    n = len(offsets)
    return FragBatch(np.array(offsets, np.uint64), np.array(sizes, np.uint32),
                     np.arange(n, dtype=np.uint32), np.zeros(n, np.uint32), linear_bytes=len(linear),
                     linear_sizes=np.array(linear_sizes or [], np.uint32),
                     linear_at=np.array(linear_at or [], np.int64),
                     linear=np.frombuffer(linear, np.uint8), readable=np.frombuffer(readable, np.uint8))


def test_stream_writer_keeps_stream_order() -> None:
    """Frags scattered in the dma-buf, linear pieces between them, readable bytes first:
    the output is the stream, in order."""
    view = np.frombuffer(bytes(range(256)) * 64, np.uint8).copy()  # 16 KiB "dma-buf"
    out = io.BytesIO()
    w = StreamWriter(out, view)
    # frags: [8192, +100), [8292, +50) (contiguous: one write), then [0, +10); linear "LIN" after frag 2
    w(_batch([8192, 8292, 0], [100, 50, 10], linear=b"LIN", linear_sizes=[3], linear_at=[2], readable=b"R"))
    expected = b"R" + view[8192:8342].tobytes() + b"LIN" + view[0:10].tobytes()
    assert out.getvalue() == expected and w.bytes == len(expected)
    w(FragBatch.empty())
    assert out.getvalue() == expected


def test_completion_scripts_cover_every_subcommand() -> None:
    pytest.importorskip("shtab")
    from devmemtcp.cli import completion, main

    bash = completion.script("bash")
    for name in main.COMMANDS:
        assert name in bash
    assert "--listen" in bash and "--validate" in bash
    assert "compdef" in completion.script("zsh") or "#compdef" in completion.script("zsh")
    nc = completion.script("bash", "ncdevmem")
    assert "-l" in nc and "-z" in nc


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
def test_bash_completion_loads_and_completes() -> None:
    pytest.importorskip("shtab")
    from devmemtcp.cli import completion

    script = completion.script("bash")
    # load the script, then ask it what `devmemtcp re<TAB>` completes to
    probe = script + '\nCOMP_WORDS=(devmemtcp re); COMP_CWORD=1; COMP_LINE="devmemtcp re"; ' \
        'COMP_POINT=${#COMP_LINE}; _shtab_devmemtcp; printf "%s\\n" "${COMPREPLY[@]}"\n'
    res = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    words = set(res.stdout.split())
    assert {"recv", "restore"} <= words


@pytest.mark.parametrize("page", ["devmemtcp", "ncdevmem"])
def test_shipped_man_pages_match_the_parsers(page: str) -> None:
    """The pages in the package are what argparse-manpage makes of today's parsers
    (regenerate: devmemtcp man --write src/devmemtcp/cli/man)."""
    pytest.importorskip("argparse_manpage")
    from devmemtcp.cli import manpage

    assert manpage.shipped(page) == manpage.render(page)


@pytest.mark.skipif(not shutil.which("man"), reason="needs man-db (apt-get install man-db)")
def test_man_renders_the_shipped_page(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from devmemtcp.cli import manpage

    src = tmp_path / "devmemtcp.1"
    src.write_text(manpage.shipped("devmemtcp"))
    res = subprocess.run(["man", "-l", str(src)], capture_output=True, text=True, timeout=30,
                         env={"MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "100", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr, res.stderr  # e.g. a text line that troff reads as a macro
    assert "DEVMEMTCP(1)" in res.stdout and "recv" in res.stdout and "exit status" in res.stdout.lower()


def test_ncdevmem_batch_checks_fail_on_linear_and_readable_data() -> None:
    """-L: linear data is an error; readable data (the flow missed the devmem queue) always is,
    as ncdevmem's "flow steering error"; otherwise the frags are counted as ncdevmem counts."""
    from devmemtcp.cli.ncdevmem import _FragCounter
    from devmemtcp.errors import DevmemError

    counter = _FragCounter(fail_on_linear=False, sink=None)
    counter(_batch([0, 4096], [4096, 100], linear=b"abc", linear_sizes=[3], linear_at=[1]))
    assert (counter.page_aligned, counter.non_page_aligned) == (1, 1)
    with pytest.raises(DevmemError, match="SCM_DEVMEM_LINEAR"):
        _FragCounter(fail_on_linear=True, sink=None)(_batch([0], [10], linear=b"ab", linear_sizes=[2],
                                                            linear_at=[0]))
    with pytest.raises(DevmemError, match="flow steering error"):
        counter(_batch([], [], readable=b"plain"))
