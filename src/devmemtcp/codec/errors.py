"""The codec's errors: what a decoder raises instead of returning garbage.

Every decoder of :mod:`devmemtcp.codec` either returns a value that matches
the bytes it was given or raises one of these, naming the byte offset of the
offending cmsg (``None`` when the whole buffer is at fault) and the reason.
"""

from __future__ import annotations

import errno

import numpy as np

from devmemtcp.errors import DevmemError

__all__ = ["ControlBufferError", "FragRecordError", "KernelInvariantError", "TxControlError"]

_EMPTY_U32 = np.empty(0, np.uint32)


class ControlBufferError(DevmemError):
    """A control buffer the codec cannot accept.

    ``offset`` is the byte offset of the offending cmsg in the control buffer
    (``None`` when the whole buffer is at fault, e.g. MSG_CTRUNC).
    """

    def __init__(self, message: str, hint: str | None = None, offset: int | None = None) -> None:
        super().__init__(message, hint)
        self.offset = offset


class FragRecordError(ControlBufferError):
    """A well-formed devmem RX record whose values the kernel never writes.

    ``tcp_recvmsg_dmabuf`` (net/ipv4/tcp.c) hands out tokens from the socket's
    ``sk_user_frags`` xarray (``XA_FLAGS_ALLOC1``, ``xa_limit_31b``: each
    token in ``1 .. 2**31 - 1``, distinct while held), and every fragment is
    a non-empty piece of one net_iov inside the dma-buf; the sizes of the
    cmsgs add up to the bytes recvmsg returns.

    Attributes:
        offset: byte offset of the first offending cmsg (``None`` when the
            batch as a whole is wrong, e.g. sizes not adding up).
        reason: the broken rule, one short phrase.
        record: the raw 40 bytes of that cmsg (``None`` with ``offset``).
        tokens: the batch's tokens that the kernel may have registered (in
            ``1 .. 2**31 - 1``, each once), uint32, shape ``(k,)``: what the
            caller must still give back with SO_DEVMEM_DONTNEED.
    """

    def __init__(self, reason: str, offset: int | None, record: bytes | None,
                 tokens: np.ndarray = _EMPTY_U32, hint: str | None = None) -> None:
        where = f"at byte offset {offset}" if offset is not None else "in the control buffer"
        rec = f" (record {record.hex()})" if record is not None else ""
        super().__init__(
            f"invalid devmem RX record {where}: {reason}{rec}",
            hint or "the control buffer was not written by tcp_recvmsg_dmabuf; pass the buffer, "
            "msg_controllen and byte count recvmsg returned",
            offset,
        )
        self.reason = reason
        self.record = record
        self.tokens = tokens


class KernelInvariantError(FragRecordError):
    """A record from the real kernel that breaks the kernel's own invariants:
    a kernel or NIC driver fault, reported with the raw record. The Receiver
    raises it (from :class:`FragRecordError`) after giving back the tokens
    the batch carried."""

    def __init__(self, err: FragRecordError, driver: str | None = None) -> None:
        who = f"the {driver} driver" if driver else "the NIC driver"
        super().__init__(
            err.reason, err.offset, err.record, err.tokens,
            hint=f"this is a kernel or {who} fault, not an application error: report it to the "
            "driver maintainers with the record bytes and the kernel version (uname -r)",
        )
        self.message = f"kernel fault: {self.message}"


class TxControlError(ControlBufferError, OSError):
    """A sendmsg control buffer ``__sock_cmsg_send`` (net/core/sock.c) refuses:
    an ``OSError`` with ``errno`` EINVAL (what sendmsg returns) that is also a
    :class:`ControlBufferError` with the byte offset."""

    def __init__(self, message: str, offset: int | None) -> None:
        ControlBufferError.__init__(
            self, message,
            "build the control buffer with devmemtcp.codec.build_tx_cmsg (one SCM_DEVMEM_DMABUF "
            "cmsg, cmsg_len CMSG_LEN(4))", offset)
        self.errno = errno.EINVAL
        self.strerror = f"Invalid argument: {message}"
        self.args = (errno.EINVAL, self.strerror)

    def __str__(self) -> str:
        return f"[Errno {errno.EINVAL}] {self.strerror}"
