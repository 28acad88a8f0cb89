"""Issue 11 items 2, 3 and 5 on the emulated NIC's state files and the
undo journal: private directories and files, no symlinks followed, the
state root made private, state of gone namespaces collected, and "restored"
only for changes put back."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from devmemtcp.backend.emulated import EmulatedBackend
from devmemtcp.emulation import state as st
from devmemtcp.errors import DevmemError
from devmemtcp.host import files, netns
from devmemtcp.setup import Journal, RuleStep, undo_journal
from devmemtcp.types import NtupleRule


def _mode(p: Path | str) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_state_directory_lock_and_files_are_private(tmp_path: Path) -> None:
    d = tmp_path / "emu"
    with EmulatedBackend(directory=str(d)) as be:
        be.nic("lo").set_rings(hds_thresh=0)
    assert _mode(d) == 0o700
    for f in d.iterdir():
        assert _mode(f) == 0o600, f  # the lock too: a read-only fd of another user could flock it


def test_a_directory_writable_by_others_or_a_symlink_is_refused(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    wide = tmp_path / "wide"
    wide.mkdir()
    wide.chmod(0o777)
    monkeypatch.setenv("DEVMEMTCP_EMU_DIR", str(wide))
    with pytest.raises(DevmemError, match="writable by group or others") as exc:
        st.state_dir()
    assert str(wide) in exc.value.message and "chmod 700" in (exc.value.hint or "")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv("DEVMEMTCP_EMU_DIR", str(link))
    with pytest.raises(DevmemError, match="symbolic link"):
        st.state_dir()


def test_a_planted_lock_symlink_is_not_followed(tmp_path: Path) -> None:
    d = tmp_path / "emu"
    d.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    (d / ".lock").symlink_to(victim)
    with pytest.raises(DevmemError, match="symbolic link"), st.locked(str(d)):
        pass
    assert not victim.exists()


def test_the_default_state_root_is_made_private_again(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "run-devmemtcp"
    (root / "emu").mkdir(parents=True)
    root.chmod(0o755)  # as an older devmemtcp left /run/devmemtcp
    (root / "emu").chmod(0o755)
    monkeypatch.delenv("DEVMEMTCP_EMU_DIR")
    monkeypatch.setattr(files, "state_root", lambda: root)
    assert st.state_dir() == str(root / "emu")
    assert _mode(root) == _mode(root / "emu") == 0o700


def test_state_of_a_gone_namespace_is_collected(tmp_path: Path) -> None:
    d = str(tmp_path / "emu")
    os.makedirs(d, mode=0o700)
    here = st.nic_path("lo", netns.cookie(), d)
    gone_cookie = netns.cookie() + 10_000_000  # cookies are never reused: no namespace has it
    gone = st.nic_path("lo", gone_cookie, d)
    nic = st.default_nic("lo", 1, gone_cookie, directory=d)
    nic["netns_inode"] = 1  # no namespace has inode 1 either
    files.atomic_write(gone, json.dumps(nic).encode())
    old = os.path.join(d, "4026531999-lo.json")  # an older devmemtcp's inode-keyed file: left alone
    files.atomic_write(old, json.dumps(dict(nic, version=1, netns=4026531999)).encode())
    with st.locked(d):
        st.save_nic(st.load_nic("lo", directory=d), d)  # the first file of this namespace collects
    assert os.path.exists(here) and not os.path.exists(gone) and os.path.exists(old)


def test_journal_files_are_private_and_a_symlinked_journal_is_refused(tmp_path: Path) -> None:
    j = Journal("lo", tmp_path / "journal")
    j.meta = {"backend": "emulated"}
    j.save()
    assert _mode(j.dir) == 0o700 and _mode(j.path) == 0o600
    os.unlink(j.path)
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    j.path.symlink_to(victim)
    with pytest.raises(DevmemError, match="symbolic link"):
        Journal.load(j.path)
    j.save()  # a fresh O_EXCL file renamed over the link: the link goes, its target is not written
    assert not j.path.is_symlink() and _mode(j.path) == 0o600
    assert victim.read_text() == "{}"


def test_an_undo_that_finds_nothing_to_put_back_is_not_reported_restored(tmp_path: Path) -> None:
    with EmulatedBackend(directory=str(tmp_path / "emu")) as be:
        nic = be.nic("lo")
        j = Journal("lo", tmp_path / "journal")
        j.meta = {"backend": "emulated"}
        j.append(RuleStep(rule=NtupleRule("127.0.0.1", 7000, 2), location=5))  # a rule that is not there
        result = undo_journal(j, nic)
    assert result.ok and not result.restored and result.done == []
    assert [s for s, _ in result.unchanged] == ["rule"]


def test_a_0_1_registry_is_upgraded_not_refused(tmp_path: Path) -> None:
    """devmemtcp 0.1 wrote bindings.json without a version: after an upgrade the
    first run keeps its id cursor instead of failing on the old file."""
    d = str(tmp_path)
    (tmp_path / "bindings.json").write_text('{"live": {}, "next": 397}')
    (tmp_path / "bindings.json").chmod(0o600)
    reg = st.load_registry(d)
    assert reg["next"] == 397 and reg["live"] == {}
    assert not (tmp_path / "corrupt").exists()


def test_a_0_1_registry_in_use_by_a_live_process_is_left_alone(tmp_path: Path) -> None:
    from devmemtcp.host import procs

    pid, start = procs.me()
    text = json.dumps({"live": {"5": {"pid": pid, "start": start, "kind": "rx"}}, "next": 6})
    p = tmp_path / "bindings.json"
    p.write_text(text)
    p.chmod(0o600)
    with pytest.raises(DevmemError, match=f"older devmemtcp \\(pid {os.getpid()}\\)"):
        st.load_registry(str(tmp_path))
    assert p.read_text() == text
