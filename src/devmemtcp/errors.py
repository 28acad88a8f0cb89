"""Exception types. Every error says what went wrong and what to do about it."""

from __future__ import annotations

import errno as _errno
import os


class DevmemError(Exception):
    """Base of devmemtcp's errors.

    ``hint`` is one sentence telling the user how to fix the cause; the CLI
    prints ``error: <message>`` then ``hint: <hint>`` and exits with
    ``exit_status`` (2; 1 for data that did not validate or was incomplete).
    """

    exit_status = 2

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

    exit_status = 1

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


class IncompleteStreamError(DevmemError):
    """A stream whose length was known ended short of it, or ran past it.

    Attributes: ``expected`` (bytes the stream had to have), ``received``
    (bytes read before the receiver stopped), ``overrun_at`` (stream offset
    of the first byte past ``expected``; ``None`` when the stream was short),
    ``result`` (the transfer's summary object, filled in, when a caller has
    one). The CLI reports it as "did not validate or was incomplete" (exit 1).
    """

    exit_status = 1

    def __init__(self, expected: int, received: int, *, overrun_at: int | None = None,
                 result: object = None) -> None:
        self.expected = expected
        self.received = received
        self.overrun_at = overrun_at
        self.result = result
        if overrun_at is None:
            message = f"stream ended after {received} of {expected} bytes"
            hint = ("the sender stopped early (killed, or closed before its end): check its output "
                    "and send the whole stream again")
        else:
            message = (f"stream overran its expected length: byte at stream offset {overrun_at} is past "
                       f"the {expected} bytes expected ({received} bytes received)")
            hint = "give recv the same --bytes N as the sender"
        super().__init__(message, hint)


class StreamError(DevmemError):
    """A socket error on a stream's data path (reset, broken pipe, timeout).

    Attributes: ``errno`` (positive errno value, or ``None``), ``bytes_done``
    (bytes received or sent before the error). The CLI reports it as an
    error (exit 2), one line and a hint, never a traceback.
    """

    def __init__(self, message: str, hint: str | None, *, err: int | None, bytes_done: int) -> None:
        self.errno = err
        self.bytes_done = bytes_done
        super().__init__(message, hint)


def stream_error(exc: OSError, *, role: str, peer: str, bytes_done: int,
                 timeout: float | None = None) -> StreamError:
    """The :class:`StreamError` for an OSError a stream's socket raised.

    ``role`` is ``"recv"`` or ``"send"``; ``peer`` ``ADDR:PORT`` (may be
    empty); ``bytes_done`` the bytes moved before it; ``timeout`` the stall
    limit in seconds, named when the error is EAGAIN / a timeout. A socket
    whose peer reset it before the first read answers ENOTCONN
    (tcp_recvmsg_locked on a TCP_CLOSE socket, net/ipv4/tcp.c); it is
    reported as the reset it is."""
    err = exc.errno
    who = f"the peer {peer}" if peer else "the peer"
    if isinstance(exc, TimeoutError) or err in (_errno.EAGAIN, _errno.EWOULDBLOCK, _errno.ETIMEDOUT):
        limit = f" for {timeout:g} s" if timeout is not None else ""
        what = f"no data from {who}{limit}" if role == "recv" else f"{who} took no data{limit}"
        return StreamError(
            f"{what} after {bytes_done} bytes: gave up",
            "check that the other end is running and not stopped (or raise --timeout for a slow peer)",
            err=err, bytes_done=bytes_done)
    if err in (_errno.ECONNRESET, _errno.ENOTCONN, _errno.ECONNABORTED):
        message = f"connection reset by {who} after {bytes_done} bytes"
    elif err == _errno.EPIPE:
        message = f"connection closed by {who} after {bytes_done} bytes (broken pipe)"
    else:
        name = _errno.errorcode.get(err or 0, str(err))
        message = (f"{'recvmsg' if role == 'recv' else 'sendmsg'} failed after {bytes_done} bytes: "
                   f"{name} ({exc.strerror or exc})")
    hint = ("check the sender's output; the stream was cut before its end" if role == "recv" else
            "check the receiver's output (a receiver that finds a validation error or an overrun "
            "closes the connection)")
    return StreamError(message, hint, err=err, bytes_done=bytes_done)


def more_queues_hint(ifname: str, count: int, backend: str) -> str:
    """How to give ``ifname`` ``count`` RX queues: ethtool on a real NIC; on
    the emulated NIC (whose settings ethtool cannot change) devmemtcp itself,
    or a lease for an emulated netkit guest."""
    if backend == "emulated":
        return (f"raise the emulated NIC's channel count (devmemtcp setup {ifname} --channels {count} "
                "--backend emulated ...), or lease it a queue if it is a netkit guest (devmemtcp lease "
                "--backend emulated)")
    return f"raise the channel count (ethtool -L {ifname} combined {count})"
