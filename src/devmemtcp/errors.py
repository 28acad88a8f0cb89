"""Exception types. Every error says what went wrong and what to do about it."""

from __future__ import annotations

import errno as _errno
import os


class DevmemError(Exception):
    """Base of devmemtcp's errors.

    ``hint`` is one sentence telling the user how to fix the cause; the CLI
    prints ``error: <message>`` then ``hint: <hint>`` and exits with status 2.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class NetlinkError(DevmemError):
    """A netlink request the kernel (or the emulated NIC) refused.

    Attributes:
        errno: positive errno value (e.g. ``errno.EOPNOTSUPP``).
        extack: the kernel's extack message, or ``None`` when it gave none.
        bad_attr: name or number of the attribute the kernel pointed at, if any.
        op: the netlink operation, e.g. ``"bind-rx"``.
    """

    def __init__(
        self,
        err: int,
        op: str,
        extack: str | None = None,
        bad_attr: str | int | None = None,
        hint: str | None = None,
    ) -> None:
        self.errno = err
        self.op = op
        self.extack = extack
        self.bad_attr = bad_attr
        # glibc names errno 95 ENOTSUP; the kernel (and its docs) say EOPNOTSUPP.
        name = "EOPNOTSUPP" if err == _errno.EOPNOTSUPP else _errno.errorcode.get(err, str(err))
        text = f"{op} failed: {name} ({os.strerror(err)})"
        if extack:
            text += f": {extack}"
        if bad_attr is not None:
            text += f" [attribute {bad_attr}]"
        super().__init__(text, hint)


class ValidationError(DevmemError):
    """Received bytes differ from the expected pattern.

    Attributes: ``offset`` (stream offset in bytes), ``expected`` and
    ``received`` (byte values).
    """

    def __init__(self, offset: int, expected: int, received: int) -> None:
        self.offset = offset
        self.expected = expected
        self.received = received
        super().__init__(
            f"validation failed at stream offset {offset}: expected 0x{expected:02x}, "
            f"received 0x{received:02x}",
            "check the sender uses the same --validate N, or look for corruption on the path",
        )


class ChannelError(DevmemError):
    """A :class:`devmemtcp.channel.Channel` failed: the peer went away or broke the
    protocol, a message does not fit its destination, or a data flow missed its
    devmem queue.

    Attributes (``None`` when they do not apply): ``tag`` (the message's tag),
    ``received`` / ``expected`` (payload bytes received or sent of the bytes the
    message has).
    """

    def __init__(self, message: str, hint: str | None = None, *, tag: int | None = None,
                 received: int | None = None, expected: int | None = None) -> None:
        super().__init__(message, hint)
        self.tag = tag
        self.received = received
        self.expected = expected


class ChannelClosed(ChannelError):
    """The peer closed the channel in an orderly way (no message was cut short)."""
