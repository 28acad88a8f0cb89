"""The undo journal entry of a queue lease (``devmemtcp lease --backend emulated``).

A lease (queue-create) is journaled in the physical NIC's undo journal, so
``devmemtcp restore PHYS`` (or ``teardown``) ends it with the other changes
made to that NIC, in reverse order. On the emulated NIC the lease is undone
directly (:func:`devmemtcp.emulation.netkit.unlease_queue`); the kernel has
no op that ends a lease (``netdev_rx_queue_unlease`` runs only while the
netkit device unregisters), so the kernel path is not journaled here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from devmemtcp.host import netns, procs
from devmemtcp.setup import steps as _steps  # noqa: F401  (the steps register first, in run order)
from devmemtcp.setup.journal import Entry, Journal, journal_lock, register

if TYPE_CHECKING:
    from devmemtcp.backend.base import Binding, NicControl


@register
@dataclass(kw_only=True)
class LeaseEntry(Entry):
    """Queue ``phys_queue`` of the journal's NIC leased to ``guest`` (queue ``guest_queue``)."""

    step: ClassVar[str] = "lease"
    guest: str
    guest_queue: int
    phys_queue: int
    guest_netns: str | None = None

    def undo(self, nic: NicControl, binding: Binding | None) -> str:
        from devmemtcp.emulation import netkit
        from devmemtcp.emulation.nic import EmulatedNicControl

        if not isinstance(nic, EmulatedNicControl):
            return (f"a kernel lease ends when the netkit device goes: delete {self.guest} "
                    f"(ip link del {self.guest}) to end it")
        done = netkit.unlease_queue(nic.ifname, self.phys_queue, directory=nic.directory)
        if done is None:
            return f"queue {self.phys_queue} is not leased any more: nothing to do"
        return f"ended the lease of queue {self.phys_queue} to {done['ifname']} (queue {done['queue']})"


def journal_lease(phys: str, phys_ifindex: int, entry: LeaseEntry, backend: str,
                  journal_dir: Path | str | None = None) -> Path:
    """Append ``entry`` to ``phys``'s undo journal (created if missing); returns its path."""
    j = Journal(phys, journal_dir)
    with journal_lock(j):
        if j.exists():
            j = Journal.load(j.path)
        else:
            j.meta = {"pid": os.getpid(), "created": time.time(), "backend": backend,
                      "netns": netns.inode(), "ifindex": phys_ifindex, "members": [], "kept": True}
        pid, start = procs.me()
        entry.owner = {"pid": pid, "start": start, "id": None}
        j.append(entry)
    return j.path
