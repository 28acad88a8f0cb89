"""Credit flow control of a Channel, as pure arithmetic (no I/O).

Strategy: the receiver owns an RX dma-buf of ``pool_pages`` net_iovs
(PAGE_SIZE each) shared by its data flows, and grants the sender a window of
credit *pages*. The sender charges every chunk it puts on a data flow
:func:`chunk_pages` pages before sending it and never sends without them;
the receiver gives a chunk's pages back (a CREDIT frame on the control
connection) once the chunk's frags are gathered and their tokens released.

Why pages and not bytes: a net_iov holds at most one frag, and a frag can be
much shorter than a page (a 1448-byte packet at MTU 1500 on a NIC that puts
one packet per page, or the tail of a recvmsg on the emulated NIC). The
receiver announces ``bytes_per_page``, the payload bytes it counts on per
net_iov (PAGE_SIZE for the emulated NIC, which fills whole pages; the MSS
for a real NIC), and a chunk costs ``ceil(length / bytes_per_page) + 2``:
the two extra pages cover the partial pages at the chunk's two ends (the
receiver reads a chunk with recvmsg calls that stop at its end).

The window leaves room for what the credit count does not see: tokens a
Receiver has queued for its next SO_DEVMEM_DONTNEED (up to its release
threshold per flow) and a partial page per flow. Half the window at most is
spent on parked messages (received before anybody asked for their tag), so
a wanted message always finds credit; a chunk costs at most a quarter of the
window, so a message larger than the whole dma-buf streams through it.
"""

from __future__ import annotations

from dataclasses import dataclass

from devmemtcp import abi
from devmemtcp.errors import ChannelError

__all__ = ["CreditLedger", "CreditWindow", "chunk_pages", "max_unit", "message_pages", "plan_window"]

#: share of the window a receiver lets parked (unmatched) messages hold
PARK_SHARE = 2
#: a chunk costs at most window // UNIT_SHARE pages
UNIT_SHARE = 4
#: the receiver gives credit back once window // FLUSH_SHARE pages are owed (or when it waits)
FLUSH_SHARE = 8


def chunk_pages(length: int, bytes_per_page: int) -> int:
    """Credit pages a chunk of ``length`` payload bytes costs (0 for 0 bytes)."""
    if length <= 0:
        return 0
    return -(-length // bytes_per_page) + 2


def message_pages(nbytes: int, unit: int, bytes_per_page: int) -> int:
    """Credit pages a message of ``nbytes`` costs when sent in chunks of
    ``unit`` bytes (the last one shorter): the sum of :func:`chunk_pages`."""
    full, tail = divmod(max(nbytes, 0), unit)
    return full * chunk_pages(unit, bytes_per_page) + chunk_pages(tail, bytes_per_page)


def plan_window(pool_pages: int, nflows: int, release_threshold: int, readahead_pages: int = 0) -> int:
    """The credit window (pages) a receiver with an RX dma-buf of ``pool_pages``
    pages, ``nflows`` data flows and Receivers that queue up to
    ``release_threshold`` tokens each can grant; ``readahead_pages``: net_iovs
    per flow a receiver may hold beyond what it has credited back (the
    recvmsg read ahead for several small messages, its tokens given back when
    its last byte is taken).

    Raises ChannelError when the dma-buf is too small to leave any."""
    reserve = nflows * (release_threshold + 2 + readahead_pages) + 16
    window = pool_pages - reserve
    if window < 4 * UNIT_SHARE * 3:
        raise ChannelError(
            f"an RX dma-buf of {pool_pages} pages is too small for {nflows} data flow(s): "
            f"{reserve} pages are kept back for token release batching",
            f"use a dma-buf of at least {(reserve + 64) * abi.PAGE_SIZE} bytes (dmabuf_size=)",
        )
    return window


def max_unit(window_pages: int, bytes_per_page: int, cap: int = 4 << 20) -> int:
    """The largest stripe unit (bytes, a multiple of PAGE_SIZE, at most ``cap``)
    whose chunks cost at most a quarter of the window."""
    pages = window_pages // UNIT_SHARE - 2
    unit = min(cap, pages * bytes_per_page)
    unit -= unit % abi.PAGE_SIZE
    return max(unit, abi.PAGE_SIZE)


class CreditWindow:
    """The sender's view: ``available`` credit pages (starts at the window).

    Kept as two counters, ``taken`` (only the sending thread adds to it) and
    ``given`` (only the thread reading the control connection adds to it), so
    that neither needs the other's lock: ``available`` is
    ``window - taken + given``, and a reader that sees one of them stale
    sees less credit than there is, never more."""

    __slots__ = ("given", "taken", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.taken = 0
        self.given = 0

    @property
    def available(self) -> int:
        return self.window - self.taken + self.given

    def can_take(self, pages: int) -> bool:
        return self.window - self.taken + self.given >= pages

    def take(self, pages: int) -> None:
        if pages > self.available:
            raise ChannelError(
                f"sending {pages} credit pages with {self.available} available",
                "this is a bug in the channel's flow control",
            )
        self.taken += pages

    def give(self, pages: int) -> None:
        """Credit the receiver gave back; ChannelError if it gives more than was taken."""
        if self.given + pages > self.taken:
            raise ChannelError(
                f"the peer gave back {pages} credit pages, more than it was lent "
                f"({self.taken - self.given} outstanding)",
                "the peer is broken",
            )
        self.given += pages

    def __repr__(self) -> str:
        return f"CreditWindow(window={self.window}, available={self.available})"


@dataclass
class CreditLedger:
    """The receiver's view: pages owed back to the sender, pages held by
    parked messages."""

    window: int
    owed: int = 0
    parked: int = 0

    @property
    def flush_at(self) -> int:
        return max(1, self.window // FLUSH_SHARE)

    def consumed(self, pages: int) -> bool:
        """A chunk's frags were released; True when a CREDIT frame is due."""
        self.owed += pages
        return self.owed >= self.flush_at

    def take_owed(self) -> int:
        """Pages to put in a CREDIT frame now (0: nothing owed)."""
        n, self.owed = self.owed, 0
        return n

    def can_park(self, pages: int) -> bool:
        """Whether a message of ``pages`` may keep its frags in the dma-buf."""
        return self.parked + pages <= self.window // PARK_SHARE

    def park(self, pages: int) -> None:
        self.parked += pages

    def unpark(self, pages: int) -> None:
        self.parked -= pages
