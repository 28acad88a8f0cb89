"""The byte transport under the devmem process group: what it needs from a Channel.

Strategy: the process group moves tensors as flat byte payloads with a u64
tag and nothing else (dtype, op and user tag are packed into the tag by
:mod:`devmemtcp.torch.process_group`), so its needs fit in four calls:
listen, connect, send a payload, receive the next message whatever its tag
into a destination chosen from its header.
:class:`ChannelTransport` maps them onto the data API (devmemtcp.listen /
connect / Channel); tests substitute a plain-socket transport with the same
shape to drive the matching, timeout and failure logic without NIC set-up.

Threading contract the process group relies on: per link, one thread at a
time sends and one thread at a time receives, both at once; which thread
that is may change between calls (a link's worker threads, or the caller's
thread for an eager send or a receive it waits for).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch


class Link(Protocol):
    """A bidirectional connection to one peer rank."""

    def send(self, payload: torch.Tensor, tag: int) -> None:
        """Send ``payload`` (1-D contiguous torch.uint8) with ``tag``; blocks until
        handed to the transport. Raises on a broken connection."""

    def ready_to_send(self, nbytes: int) -> bool:
        """True when a send of ``nbytes`` would not wait for the peer's
        application (credit there now): the process group then sends it in the
        calling thread."""

    def recv_next(self, choose: Callable[[int, int], torch.Tensor], timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the next message of any tag (False:
        none started, nothing consumed); ``choose(tag, nbytes)`` returns its
        destination (1-D contiguous torch.uint8 of exactly ``nbytes``) and the
        payload is written there before this returns True. Raises when the
        peer closes or resets."""

    def close(self) -> None: ...


class Acceptor(Protocol):
    address: dict[str, Any]

    def accept(self, timeout: float) -> Link | int | None:
        """The next incoming link; or the rank of a peer that asked to be connected
        to (:meth:`Transport.ask`); or None after ``timeout`` seconds."""

    def close(self) -> None: ...


class Transport(Protocol):
    name: str

    def listen(self) -> Acceptor: ...

    def connect(self, address: dict[str, Any], timeout: float) -> Link: ...

    def ask(self, address: dict[str, Any], rank: int, timeout: float) -> None:
        """Ask the rank listening at ``address`` to connect to ``rank`` (the higher
        rank always connects; the lower one asks when it needs the link first)."""
