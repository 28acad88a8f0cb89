"""Hypothesis over the journal and emulated-state loaders (issue 11, fuzzing):
any JSON in a journal or state file, or a valid one with any field replaced
by any JSON value, loads into checked types or raises the project's error
(JournalError / StateFileError, one line); never another exception."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from devmemtcp.emulation import state as st
from devmemtcp.emulation.nic import EmulatedNicControl
from devmemtcp.host import netns
from devmemtcp.setup.journal import Journal, JournalError

JSON = hs.recursive(
    hs.none() | hs.booleans() | hs.integers(-2**70, 2**70) | hs.floats(allow_nan=False)
    | hs.text(max_size=8),
    lambda inner: hs.lists(inner, max_size=4) | hs.dictionaries(hs.text(max_size=6), inner, max_size=4),
    max_leaves=12)

GOOD_JOURNAL: dict[str, Any] = {
    "version": 1, "ifname": "lo", "pid": 2**22 + 5, "created": 1.7e9, "backend": "emulated",
    "netns": 4026531840, "netns_cookie": 1, "emu_dir": "/tmp/x", "ifindex": 1, "queues": [3, 1],
    "spread": 3, "flow": None, "kept": True,
    "members": [{"pid": 2**22 + 5, "start": 1, "id": "a", "queues": [3], "bind": True}],
    "entries": [
        {"step": "rings", "before": {"tcp_data_split": "unknown", "hds_thresh": 256}, "owner": None},
        {"step": "rss", "before": [0, 1, 2, 3], "default": True, "owner": {"pid": 1}},
        {"step": "rule", "rule": {"dst_ip": "127.0.0.1", "dst_port": 5201, "queue": 3, "src_ip": None,
                                  "src_port": None, "location": 0, "family": 2},
         "location": 0, "pre_locations": [], "owner": None},
        {"step": "bind", "queues": [3], "owner": None},
    ],
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], new: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    d = doc
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = new
    return doc


JOURNAL_PATHS = _paths(GOOD_JOURNAL)
DIR = Path(tempfile.mkdtemp(prefix="dmt-fuzz-"))


@pytest.fixture(autouse=True, scope="module")
def _cleanup() -> Iterator[None]:
    yield
    shutil.rmtree(DIR, ignore_errors=True)


def _load_journal(doc: Any) -> None:
    d = Path(tempfile.mkdtemp(dir=DIR))
    path = d / "lo.json"
    path.write_text(json.dumps(doc))
    try:
        j = Journal.load(path)
    except JournalError as exc:
        assert "\n" not in exc.message and str(path) in exc.message
        return
    assert j.ifname == "lo" and all(hasattr(e, "undo") for e in j.entries)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_any_json_as_a_journal(doc: Any) -> None:
    _load_journal(doc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.sampled_from(JOURNAL_PATHS), JSON)
def test_a_journal_with_one_field_replaced(path: tuple[Any, ...], new: Any) -> None:
    _load_journal(_replace(GOOD_JOURNAL, path, new))


EMU = str(DIR / "emu")
os.makedirs(EMU, mode=0o700, exist_ok=True)
GOOD_NIC = st.default_nic("lo", socket.if_nametoindex("lo"), netns.cookie(), 4, EMU)
GOOD_NIC["rules"] = [{"location": 0, "dst_ip": "127.0.0.1", "dst_port": 5201, "queue": 3, "src_ip": None,
                      "src_port": None, "family": 2}]
GOOD_NIC["stats"] = {"3": {"rx-bytes": 1}}
NIC_PATHS = [p for p in _paths(GOOD_NIC) if p[0] != "rss" or len(p) < 3]  # not each of the 128 slots


def _load_nic(doc: Any) -> None:
    path = st.nic_path("lo", netns.cookie(), EMU)
    with open(path, "w") as f:
        json.dump(doc, f)
    nic = EmulatedNicControl("lo", directory=EMU)
    try:
        nic.get_rings(), nic.get_channels(), nic.get_rss_indir(), nic.list_rules()
    except st.StateFileError as exc:
        assert "\n" not in exc.message and path in exc.message and not os.path.exists(path)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_any_json_as_a_nic_state_file(doc: Any) -> None:
    _load_nic(doc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.sampled_from(NIC_PATHS), JSON)
def test_a_nic_state_file_with_one_field_replaced(path: tuple[Any, ...], new: Any) -> None:
    _load_nic(_replace(GOOD_NIC, path, new))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_any_json_as_the_binding_registry(doc: Any) -> None:
    path = st.registry_path(EMU)
    with open(path, "w") as f:
        json.dump(doc, f)
    try:
        reg = st.load_registry(EMU)
    except st.StateFileError as exc:
        assert "\n" not in exc.message and path in exc.message
        return
    assert isinstance(reg["next"], int) and isinstance(reg["live"], dict)
