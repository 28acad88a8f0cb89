"""The lease's undo journal entry: journaled by `devmemtcp lease --backend emulated`, ended by restore."""

from __future__ import annotations

from pathlib import Path

from devmemtcp.emulation import state as st
from devmemtcp.emulation.nic import EmulatedNicControl
from devmemtcp.setup import Journal, LeaseEntry, journal_lease


def test_lease_entry_round_trips_and_undoes_on_the_emulated_nic(tmp_path: Path) -> None:
    emu = str(tmp_path / "emu")
    nic = EmulatedNicControl("lo", directory=emu)
    # a lease record on both sides, as queue_create leaves them (guest in this namespace)
    with st.locked(emu) as d:
        s = st.load_nic("lo", directory=d)
        s["leases"] = {"3": {"ifname": "lo", "ifindex": 1, "netns": s["netns"], "queue": 1}}
        st.save_nic(s, d)
    path = journal_lease("lo", 1, LeaseEntry(guest="nk0", guest_queue=1, phys_queue=3), "emulated",
                         tmp_path / "journal")
    j = Journal.load(path)
    (e,) = j.entries
    assert isinstance(e, LeaseEntry) and (e.guest, e.guest_queue, e.phys_queue) == ("nk0", 1, 3)
    assert j.meta["backend"] == "emulated" and e.owner is not None
    assert "ended the lease of queue 3" in e.undo(nic, None)
    assert nic.state()["leases"] == {}
    assert "not leased any more" in e.undo(nic, None)
