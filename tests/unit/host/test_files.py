"""host.files: private directories, O_NOFOLLOW state files, locks that time out."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from devmemtcp.errors import DevmemError
from devmemtcp.host import files

NOBODY = 65534


def test_private_dir_is_created_0700(tmp_path: Path) -> None:
    d = files.private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o700


def test_world_writable_dir_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(DevmemError) as ei:
        files.private_dir(d)
    assert "writable by group or others" in ei.value.message and str(d) in ei.value.message


def test_symlinked_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(DevmemError, match="symbolic link"):
        files.private_dir(tmp_path / "link")


@pytest.mark.root
def test_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(DevmemError, match=f"owned by uid {NOBODY}"):
        files.private_dir(d)


def test_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("keep")
    (tmp_path / "state.json").symlink_to(target)
    with pytest.raises(DevmemError, match="symbolic link"):
        files.open_private(tmp_path / "state.json")
    with pytest.raises(DevmemError, match="symbolic link"), \
            files.lock_file(tmp_path / "state.json", timeout=0):
        pass
    assert target.read_text() == "keep"


def test_atomic_write_replaces_and_is_0600(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    files.atomic_write(p, b"one")
    files.atomic_write(p, b"two")
    assert files.read_private(p) == b"two"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert sorted(x.name for x in tmp_path.iterdir()) == ["s.json"]


def _hold(path: str, ready: mp.synchronize.Event, done: mp.synchronize.Event) -> None:
    with files.lock_file(path):
        ready.set()
        done.wait(30)


def test_lock_timeout_names_the_holder(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(str(tmp_path / ".lock"), ready, done))
    p.start()
    try:
        assert ready.wait(10)
        t0 = time.monotonic()
        with pytest.raises(files.LockTimeout) as ei, \
                files.lock_file(tmp_path / ".lock", timeout=0.3, what="the emulated NIC"):
            pass
        assert 0.25 <= time.monotonic() - t0 < 5
        assert ei.value.holder == p.pid
        assert f"process {p.pid}" in ei.value.message and "gave up after 0.3 s" in ei.value.message
    finally:
        done.set()
        p.join(10)
    with files.lock_file(tmp_path / ".lock", timeout=1):  # free again once the holder is gone
        pass


@pytest.mark.root
@pytest.mark.parametrize("dir_mode", [0o700, 0o711])  # 0711: the files' own modes must refuse too
def test_another_uid_cannot_open_read_or_lock(dir_mode: int) -> None:
    top = Path(tempfile.mkdtemp(prefix="dmt-files-"))
    top.chmod(0o755)  # nobody can reach the state directory's entry
    d = files.private_dir(top / "state")
    files.atomic_write(d / "nic.json", b"{}")
    with files.lock_file(d / ".lock"):
        pass
    d.chmod(dir_mode)
    reach = subprocess.run(["/usr/bin/python3", "-c", f"import os; os.stat({str(d)!r})"], user=NOBODY,
                           group=NOBODY, capture_output=True, timeout=30)
    assert reach.returncode == 0, "the probe must at least see the directory"
    probe = (
        "import fcntl, os, sys\n"
        "for name in ('nic.json', '.lock'):\n"
        "    for flags in (os.O_RDONLY, os.O_RDWR):\n"
        "        try:\n"
        "            fd = os.open(os.path.join(sys.argv[1], name), flags)\n"
        "        except PermissionError:\n"
        "            continue\n"
        "        print('opened', name, flags); sys.exit(1)\n"
        "try:\n"
        "    os.open(os.path.join(sys.argv[1], 'planted'), os.O_CREAT | os.O_WRONLY, 0o644)\n"
        "except PermissionError:\n"
        "    sys.exit(0)\n"
        "print('created a file'); sys.exit(1)\n"
    )
    try:
        res = subprocess.run(["/usr/bin/python3", "-c", probe, str(d)], user=NOBODY, group=NOBODY,
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        shutil.rmtree(top)


def test_state_root_for_ordinary_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1 if os.getuid() == 0 else os.getuid())
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if os.getuid() != 0:
        assert files.state_root() == run / "devmemtcp"
    run.chmod(0o777)  # a runtime dir that is not private is not used
    assert files.state_root() == tmp_path / "cache" / "devmemtcp"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert files.state_root() == tmp_path / "cache" / "devmemtcp"


def test_state_root_for_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert files.state_root() == Path("/run/devmemtcp")
