"""The journal format: a version, and a schema check on load whose error names
the file, the field and the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devmemtcp.errors import DevmemError
from devmemtcp.setup import JOURNAL_VERSION, Journal, RingsStep, RssStep, RuleStep
from devmemtcp.types import NtupleRule

#: A journal as the nic.py of before the setup/ package wrote it (version 1).
OLD_JOURNAL: dict[str, Any] = {
    "pid": 4242, "created": 1764578000.5, "backend": "emulated", "netns": 4026531840, "ifindex": 1,
    "queues": [3, 1], "flow": {"dst_ip": "127.0.0.1", "dst_port": 5201, "src_ip": None, "src_port": None},
    "members": [{"pid": 4242, "start": 987654, "id": "0123abcd"}], "kept": True,
    "version": 1, "ifname": "lo",
    "entries": [
        {"step": "rings", "before": {"tcp_data_split": "unknown", "hds_thresh": 256},
         "owner": {"pid": 4242, "start": 987654, "id": "0123abcd"}},
        {"step": "rss", "before": [0, 1, 2, 3], "default": True,
         "owner": {"pid": 4242, "start": 987654, "id": "0123abcd"}},
        {"step": "rule", "rule": {"dst_ip": "127.0.0.1", "dst_port": 5201, "queue": 3, "src_ip": None,
                                  "src_port": None, "location": None, "family": 2},
         "location": 0, "pre_locations": [], "owner": {"pid": 4242, "start": 987654, "id": "0123abcd"}},
    ],
}


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "lo.json"
    path.write_text(json.dumps(data))
    return path


def _load_error(tmp_path: Path, data: Any) -> DevmemError:
    path = _write(tmp_path, data)
    with pytest.raises(DevmemError) as ei:
        Journal.load(path)
    assert ei.value.message.startswith(f"cannot read undo journal {path}: ")
    return ei.value


def test_a_journal_of_the_old_format_loads_typed(tmp_path: Path) -> None:
    j = Journal.load(_write(tmp_path, OLD_JOURNAL))
    assert [type(e) for e in j.entries] == [RingsStep, RssStep, RuleStep]
    rule = j.entries[2]
    assert isinstance(rule, RuleStep) and rule.rule == NtupleRule("127.0.0.1", 5201, 3) and rule.location == 0
    assert j.meta["kept"] is True and j.meta["members"][0]["pid"] == 4242
    j.save()  # and writes the same thing back
    assert json.loads(j.path.read_text()) == OLD_JOURNAL


def test_a_journal_without_version_is_version_1(tmp_path: Path) -> None:
    data = {k: v for k, v in OLD_JOURNAL.items() if k != "version"}
    j = Journal.load(_write(tmp_path, data))
    assert len(j.entries) == 3
    j.save()
    assert json.loads(j.path.read_text())["version"] == JOURNAL_VERSION == 1


def test_old_entries_without_owner_or_optional_fields_load(tmp_path: Path) -> None:
    data = {"ifname": "lo", "pid": 7, "entries": [
        {"step": "rss", "before": [0, 1]},
        {"step": "rule", "rule": {"dst_ip": "127.0.0.1", "dst_port": 80, "queue": 1}},
    ]}
    rss, rule = Journal.load(_write(tmp_path, data)).entries
    assert isinstance(rss, RssStep) and rss.default is False and rss.owner is None
    assert isinstance(rule, RuleStep) and rule.location is None and rule.pre_locations == []


def test_a_newer_version_is_refused_with_the_way_out(tmp_path: Path) -> None:
    err = _load_error(tmp_path, dict(OLD_JOURNAL, version=2))
    assert "field 'version' is 2, this devmemtcp reads version 1" in err.message
    assert "devmemtcp restore" in (err.hint or "") and "wrote it" in (err.hint or "")


@pytest.mark.parametrize(("change", "field", "problem"), [
    (lambda d: d.pop("ifname"), "ifname", "is missing"),
    (lambda d: d.pop("entries"), "entries", "is missing"),
    (lambda d: d.update(version="1"), "version", "must be an integer, not a string"),
    (lambda d: d.update(pid="4242"), "pid", "must be an integer or null, not a string"),
    (lambda d: d.update(netns=1.5), "netns", "must be an integer or null, not a number"),
    (lambda d: d.update(kept="yes"), "kept", "must be true or false, not a string"),
    (lambda d: d.update(entries={}), "entries", "must be a list of objects, not an object"),
    (lambda d: d.update(members=[{"start": 1}]), "members[0].pid", "is missing"),
    (lambda d: d["entries"][0].pop("step"), "entries[0].step", "is missing"),
    (lambda d: d["entries"][0].update(step="mtu"), "entries[0].step",
     "names an unknown step 'mtu' (known: channels, rings, rss, rule, bind, lease; "
     "a newer devmemtcp may have written it)"),
    (lambda d: d["entries"][0].pop("before"), "entries[0].before", "is missing"),
    (lambda d: d["entries"][0]["before"].update(hds_thresh=[1]), "entries[0].before.hds_thresh",
     "must be a string or an integer or null, not a list"),
    (lambda d: d["entries"][1].update(before="0 1 2 3"), "entries[1].before",
     "must be a list of integers, not a string"),
    (lambda d: d["entries"][1].update(before=[0, "1"]), "entries[1].before[1]",
     "must be an integer, not a string"),
    (lambda d: d["entries"][1].update(default=1), "entries[1].default",
     "must be true or false, not an integer"),
    (lambda d: d["entries"][2]["rule"].pop("dst_port"), "entries[2].rule.dst_port", "is missing"),
    (lambda d: d["entries"][2]["rule"].update(queue=True), "entries[2].rule.queue",
     "must be an integer, not true/false"),
    (lambda d: d["entries"][2].update(owner=[4242]), "entries[2].owner",
     "must be an object or null, not a list"),
    (lambda d: d["entries"].append(7), "entries[3]", "must be an object, not an integer"),
])
def test_a_bad_field_is_named_with_the_fix(tmp_path: Path, change: Any, field: str, problem: str) -> None:
    data = json.loads(json.dumps(OLD_JOURNAL))
    change(data)
    err = _load_error(tmp_path, data)
    assert err.message.endswith(f"field {field!r} {problem}"), err.message
    assert "fix or remove that field" in (err.hint or "") and "delete the file" in (err.hint or "")


def test_not_a_json_object(tmp_path: Path) -> None:
    err = _load_error(tmp_path, [1, 2])
    assert "field '(top level)' must be an object, not a list" in err.message
