"""Plain value types shared by netlink, the backends, the emulated NIC and NIC setup.

The ground floor: this module imports nothing of the project, so every layer
can name these types without importing upward.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

__all__ = ["Channels", "NicState", "NtupleRule", "Rings"]


@dataclass(frozen=True)
class Rings:
    """ethtool rings state that devmem RX depends on (ETHTOOL_MSG_RINGS_GET).

    ``tcp_data_split``: "unknown" | "disabled" | "enabled";
    ``hds_thresh`` / ``hds_thresh_max`` in bytes, ``None`` when not reported.
    """

    rx: int | None = None
    rx_max: int | None = None
    tx: int | None = None
    tcp_data_split: str = "unknown"
    hds_thresh: int | None = None
    hds_thresh_max: int | None = None


@dataclass(frozen=True)
class Channels:
    """ethtool channel counts (ETHTOOL_MSG_CHANNELS_GET); ``None`` = not reported."""

    rx: int | None = None
    tx: int | None = None
    combined: int | None = None
    rx_max: int | None = None
    tx_max: int | None = None
    combined_max: int | None = None


@dataclass(frozen=True)
class NtupleRule:
    """A flow-steering rule: TCP to ``dst_ip:dst_port`` (optionally from
    ``src_ip:src_port``) lands on RX queue ``queue``. ``location`` is the
    rule slot the driver reports (assigned on insert)."""

    dst_ip: str
    dst_port: int
    queue: int
    src_ip: str | None = None
    src_port: int | None = None
    location: int | None = None
    family: int = socket.AF_INET


@dataclass
class NicState:
    """A snapshot of what NicSetup changes and must restore."""

    rings: Rings = field(default_factory=Rings)
    channels: Channels = field(default_factory=Channels)
    rss_indir: list[int] = field(default_factory=list)
    rules: list[NtupleRule] = field(default_factory=list)
