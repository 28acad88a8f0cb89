"""MSG_ZEROCOPY completions: the ``sock_extended_err`` records ``recvmsg(MSG_ERRQUEUE)`` returns.

net/core/skbuff.c ``__msg_zerocopy_callback`` queues one completion per range
of sendmsg sequence numbers; net/ipv4/ip_sockglue.c ``ip_recv_error`` (and
net/ipv6/datagram.c ``ipv6_recv_error``) write it as an IP_RECVERR /
IPV6_RECVERR cmsg. Sans-I/O: pure functions of bytes.
"""

from __future__ import annotations

import socket
import struct

import numpy as np

from devmemtcp import abi
from devmemtcp.codec.errors import ControlBufferError
from devmemtcp.codec.rx import as_u8

__all__ = ["encode_zerocopy_completion", "parse_zerocopy_completions"]

_HDR = abi.CMSGHDR_DTYPE.itemsize  # 16


def _recverr_layout(family: int) -> tuple[int, int, int]:
    if family == socket.AF_INET:
        return abi.SOL_IP, abi.IP_RECVERR, abi.SOCKADDR_IN_SIZE
    if family == socket.AF_INET6:
        return abi.SOL_IPV6, abi.IPV6_RECVERR, abi.SOCKADDR_IN6_SIZE
    raise ValueError(f"unsupported address family {family}")


def encode_zerocopy_completion(lo: int, hi: int, copied: bool = False, family: int = socket.AF_INET) -> bytes:
    """One MSG_ZEROCOPY completion cmsg as ``recvmsg(MSG_ERRQUEUE)`` returns it.

    Level/type SOL_IP/IP_RECVERR (AF_INET) or SOL_IPV6/IPV6_RECVERR
    (AF_INET6); payload a ``sock_extended_err`` (ee_errno 0, ee_origin
    SO_EE_ORIGIN_ZEROCOPY, ee_code SO_EE_CODE_ZEROCOPY_COPIED if ``copied``,
    ee_info = ``lo``, ee_data = ``hi``: sendmsg sequence numbers ``lo..hi``
    inclusive, u32) followed by a zeroed offender address; padded to
    CMSG_SPACE.
    """
    level, ctype, addr = _recverr_layout(family)
    ee = np.zeros(1, abi.SOCK_EXTENDED_ERR_DTYPE)
    ee["ee_origin"] = abi.SO_EE_ORIGIN_ZEROCOPY
    ee["ee_code"] = abi.SO_EE_CODE_ZEROCOPY_COPIED if copied else 0
    ee["ee_info"] = lo & 0xFFFFFFFF
    ee["ee_data"] = hi & 0xFFFFFFFF
    payload = ee.tobytes() + bytes(addr)
    clen = abi.cmsg_len(len(payload))
    pad = abi.cmsg_space(len(payload)) - clen
    return struct.pack("<Qii", clen, level, ctype) + payload + bytes(pad)


_RECVERR = ((abi.SOL_IP, abi.IP_RECVERR), (abi.SOL_IPV6, abi.IPV6_RECVERR))
_EE = struct.Struct("<IBBBBII")  # sock_extended_err: errno, origin, type, code, pad, info, data


def parse_zerocopy_completions(control: bytes | bytearray | memoryview | np.ndarray, controllen: int,
                               msg_flags: int = 0) -> list[tuple[int, int]]:
    """Completed sendmsg sequence ranges ``(lo, hi)`` (inclusive, u32; ``hi``
    may be below ``lo`` after 32-bit wraparound) found in an error-queue
    control buffer of which ``controllen`` bytes are used. Other cmsgs and
    non-zerocopy errors are skipped.

    Raises :class:`~devmemtcp.codec.errors.ControlBufferError` for a
    ``controllen`` that is negative or past the buffer, MSG_CTRUNC in
    ``msg_flags``, a malformed cmsg_len, or an IP_RECVERR cmsg too short for
    a ``sock_extended_err`` (the kernel always writes the whole struct),
    naming the byte offset."""
    if msg_flags & abi.MSG_CTRUNC:
        raise ControlBufferError(
            f"error-queue control data truncated (MSG_CTRUNC set, controllen {controllen})",
            "enlarge the control buffer: a completion takes CMSG_SPACE(sizeof(struct "
            "sock_extended_err) + sizeof(struct sockaddr_in6)) bytes")
    raw = as_u8(control)
    if not isinstance(controllen, int | np.integer) or not 0 <= controllen <= raw.shape[0]:
        raise ControlBufferError(
            f"controllen {controllen!r} outside the {raw.shape[0]}-byte control buffer",
            "pass the msg_controllen recvmsg(MSG_ERRQUEUE) returned and the buffer it wrote into")
    data = raw[:controllen].tobytes()
    total = len(data)
    pos = 0
    out: list[tuple[int, int]] = []
    while total - pos >= _HDR:
        clen, level, ctype = struct.unpack_from("<Qii", data, pos)
        if clen < _HDR or clen > total - pos:
            raise ControlBufferError(
                f"malformed error-queue cmsg at byte offset {pos}: cmsg_len {clen}",
                "pass the msg_controllen recvmsg(MSG_ERRQUEUE) returned",
                offset=pos,
            )
        if (level, ctype) in _RECVERR:
            if clen < _HDR + _EE.size:
                raise ControlBufferError(
                    f"IP_RECVERR cmsg at byte offset {pos}: cmsg_len {clen} is too short for a "
                    f"sock_extended_err ({_EE.size} bytes)",
                    "pass the msg_controllen recvmsg(MSG_ERRQUEUE) returned", offset=pos)
            ee_errno, origin, _t, _c, _p, info, ee_data = _EE.unpack_from(data, pos + _HDR)
            if origin == abi.SO_EE_ORIGIN_ZEROCOPY and ee_errno == 0:
                out.append((info, ee_data))
        pos += abi.cmsg_align(clen)
    if pos < total and total - pos < _HDR and any(data[pos:]):
        raise ControlBufferError(
            f"{total - pos} stray bytes at byte offset {pos} after the last error-queue cmsg",
            "pass the msg_controllen recvmsg(MSG_ERRQUEUE) returned", offset=pos)
    return out
