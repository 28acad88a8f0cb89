"""open_backend: the one place a backend is chosen and made."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from devmemtcp.errors import DevmemError

if TYPE_CHECKING:
    from devmemtcp.backend.base import Backend
    from devmemtcp.doctor import DoctorReport

__all__ = ["open_backend"]


def open_backend(name: str | Backend = "auto", ifname: str | None = None,
                 direction: Literal["rx", "tx"] = "rx") -> tuple[Backend, str]:
    """Make the backend ``name`` names: returns ``(backend, reason)``.

    ``name`` is ``"kernel"``, ``"emulated"``, ``"auto"`` or a Backend object
    (returned as is, "given by the caller"). ``auto`` asks
    :func:`devmemtcp.doctor.diagnose` whether devmem ``direction`` (``"rx"``
    or ``"tx"``) is possible on ``ifname`` and picks the kernel when it is,
    the emulated NIC otherwise; ``reason`` says why (for the stderr line and
    the JSON's ``backend_reason``). The caller owns the backend: close it (or
    use it as a context manager) when done.

    Raises DevmemError for an unknown name, and for ``auto`` without ``ifname``.
    """
    if not isinstance(name, str):
        return name, "given by the caller"
    if name == "emulated":
        from devmemtcp.backend.emulated import EmulatedBackend

        return EmulatedBackend(), "asked for (--backend emulated)"
    if name == "kernel":
        from devmemtcp.backend.kernel import KernelBackend

        return KernelBackend(), "asked for (--backend kernel)"
    if name != "auto":
        raise DevmemError(f"unknown backend {name!r}", "use auto, kernel or emulated")
    if ifname is None:
        raise DevmemError("choosing the backend (auto) needs the interface to check",
                          "give the interface (--ifname IF), or --backend kernel|emulated")
    if direction not in ("rx", "tx"):
        raise ValueError(f"direction must be 'rx' or 'tx', not {direction!r}")
    reason: str
    try:
        from devmemtcp.doctor import diagnose

        report = diagnose(ifname)
        ok = bool(report.rx_supported if direction == "rx" else report.tx_supported)
        if ok:
            from devmemtcp.backend.kernel import KernelBackend

            return KernelBackend(), f"doctor: devmem {direction.upper()} is possible on {ifname}"
        why = _doctor_reason(report, direction)
        reason = f"doctor: no devmem {direction.upper()} on {ifname} ({why})"
    except DevmemError as exc:
        reason = f"doctor could not check {ifname} ({exc.message})"
    except ImportError as exc:
        reason = f"doctor unavailable ({exc})"
    from devmemtcp.backend.emulated import EmulatedBackend

    return EmulatedBackend(), reason


def _doctor_reason(report: DoctorReport, direction: str) -> str:
    """The most telling failed doctor check that decides devmem ``direction``."""
    from devmemtcp.doctor import RX_REQUIRED, TX_REQUIRED

    failed = {c.name: c for c in report.checks if c.status == "fail"}
    for name in RX_REQUIRED if direction == "rx" else TX_REQUIRED:
        if name in failed:
            return f"{name}: {failed[name].detail}"
    return "not supported"
