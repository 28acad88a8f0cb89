"""``devmemtcp selftest``: the qualification suite for a devmem NIC.

* :mod:`.catalogue`: the bind-rx cases, each defined once and shared with
  tests/conformance;
* :mod:`.runner`: :class:`Selftest` runs the catalogue and the stream cases
  on one interface, every NIC change journaled and undone.
"""

from devmemtcp.selftest.catalogue import BIND_RX_CASES, BindRxCase, CaseFailed, CaseSkipped, check_bind_rx
from devmemtcp.selftest.runner import HDS_SIZES, VALIDATE, CaseResult, Selftest, SelftestReport, run_selftest

__all__ = ["BIND_RX_CASES", "HDS_SIZES", "VALIDATE", "BindRxCase", "CaseFailed", "CaseResult", "CaseSkipped",
           "Selftest", "SelftestReport", "check_bind_rx", "run_selftest"]
