"""NIC setup for a devmem flow, always undone.

- :mod:`~devmemtcp.setup.journal`: the undo journal (file, flock, versioned
  format checked on load);
- :mod:`~devmemtcp.setup.steps`: one class per step (channels, rings, rss,
  rule, bind), apply and undo side by side, each its own typed journal entry;
- :mod:`~devmemtcp.setup.nic_setup`: :class:`NicSetup`, which runs the steps
  and undoes them on exit, on signals and on failures;
- :mod:`~devmemtcp.setup.restore`: ``devmemtcp restore``: replaying what
  crashed or kept setups left;
- :mod:`~devmemtcp.setup.lease`: the journal entry of a queue lease.
"""

from devmemtcp.setup.journal import (
    DEFAULT_JOURNAL_DIR,
    JOURNAL_VERSION,
    Entry,
    Journal,
    default_journal_dir,
    journal_lock,
    journal_name,
)
from devmemtcp.setup.lease import LeaseEntry, journal_lease
from devmemtcp.setup.nic_setup import NicSetup, Terminated
from devmemtcp.setup.restore import (
    UndoResult,
    entry_owner,
    journals,
    live_members,
    owner_alive,
    restore,
    undo_journal,
)
from devmemtcp.setup.steps import (
    DEFAULT_STEPS,
    SHARED_STEPS,
    STEPS,
    BindStep,
    ChannelsStep,
    Flow,
    RingsStep,
    RssStep,
    RuleStep,
    Step,
    step_class,
)

__all__ = [
    "DEFAULT_JOURNAL_DIR",
    "DEFAULT_STEPS",
    "JOURNAL_VERSION",
    "SHARED_STEPS",
    "STEPS",
    "BindStep",
    "ChannelsStep",
    "Entry",
    "Flow",
    "Journal",
    "LeaseEntry",
    "NicSetup",
    "RingsStep",
    "RssStep",
    "RuleStep",
    "Step",
    "Terminated",
    "UndoResult",
    "default_journal_dir",
    "entry_owner",
    "journal_lease",
    "journal_lock",
    "journal_name",
    "journals",
    "live_members",
    "owner_alive",
    "restore",
    "step_class",
    "undo_journal",
]
