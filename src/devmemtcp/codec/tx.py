"""TX codec: the SCM_DEVMEM_DMABUF cmsg of a devmem sendmsg (net/core/sock.c ``__sock_cmsg_send``).

:func:`build_tx_cmsg` writes the cmsg a devmem sendmsg carries;
:func:`parse_tx_cmsg` reads a sendmsg control buffer the way the kernel does
(the emulated NIC uses it), raising
:class:`~devmemtcp.codec.errors.TxControlError` (an ``OSError`` EINVAL) where
the kernel returns -EINVAL. Sans-I/O: pure functions of bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from devmemtcp import abi
from devmemtcp.codec.errors import ControlBufferError, TxControlError

__all__ = ["build_tx_cmsg", "parse_tx_cmsg"]

_HDR = abi.CMSGHDR_DTYPE.itemsize  # 16
_TX_LEN = abi.cmsg_len(abi.TX_CMSG_PAYLOAD_SIZE)  # CMSG_LEN(4) == 20
_TX_SPACE = abi.cmsg_space(abi.TX_CMSG_PAYLOAD_SIZE)  # 24


def build_tx_cmsg(binding_id: int) -> bytes:
    """The SCM_DEVMEM_DMABUF cmsg for a devmem sendmsg: level SOL_SOCKET,
    ``cmsg_len == CMSG_LEN(4)``, payload the bare u32 binding id, padded to
    CMSG_SPACE(4) (24 bytes). Raises ValueError if the id does not fit u32."""
    if not 0 <= binding_id <= 0xFFFFFFFF:
        raise ValueError(f"binding id {binding_id} does not fit in u32")
    return struct.pack("<QiiI4x", _TX_LEN, abi.SOL_SOCKET, abi.SCM_DEVMEM_DMABUF, binding_id)


# SOL_SOCKET cmsgs __sock_cmsg_send accepts and the payload size it demands
# (None: accepted without a length check).
_TX_SOL_SOCKET_LEN: dict[int, int | None] = {
    abi.SO_MARK: 4,
    abi.SO_TIMESTAMPING_OLD: 4,
    abi.SCM_TXTIME: 8,
    abi.SCM_TS_OPT_ID: 4,
    abi.SCM_RIGHTS: None,
    abi.SCM_CREDENTIALS: None,
    abi.SO_PRIORITY: 4,
    abi.SCM_DEVMEM_DMABUF: 4,
}


def _control_bytes(control: bytes | bytearray | memoryview | np.ndarray) -> bytes:
    try:
        if isinstance(control, np.ndarray):
            if control.dtype.hasobject:
                raise TypeError(f"dtype {control.dtype} holds Python objects")
            return np.ascontiguousarray(control).tobytes()
        return bytes(memoryview(control).cast("B")) if isinstance(control, memoryview) else bytes(control)
    except (TypeError, ValueError, BufferError) as exc:
        raise ControlBufferError(
            f"sendmsg control buffer of type {type(control).__name__} holds no bytes: {exc}",
            "pass the bytes build_tx_cmsg returned") from None


def parse_tx_cmsg(control: bytes | bytearray | memoryview | np.ndarray) -> int:
    """Return the devmem binding id a sendmsg control buffer selects (0: none).

    Walks the cmsgs as ``sock_cmsg_send`` does (``CMSG_OK`` on each,
    non-SOL_SOCKET cmsgs skipped) and applies ``__sock_cmsg_send``'s checks.
    Raises :class:`~devmemtcp.codec.errors.TxControlError` (``OSError``
    EINVAL, with the byte offset) exactly where the kernel returns -EINVAL: a
    cmsg_len below the header or past the buffer, an SCM_DEVMEM_DMABUF (or
    other u32/u64 option) whose cmsg_len is not CMSG_LEN(payload), or an
    unknown SOL_SOCKET type. Permission checks (SO_MARK, SO_PRIORITY: EPERM)
    and timestamping flag checks depend on the socket and are not modelled.
    The last SCM_DEVMEM_DMABUF wins, as in the kernel.
    """
    data = _control_bytes(control)
    total = len(data)
    pos = 0
    dmabuf_id = 0
    while total - pos >= _HDR:  # CMSG_FIRSTHDR / __CMSG_NXTHDR
        clen, level, ctype = struct.unpack_from("<Qii", data, pos)
        if clen < _HDR or clen > total - pos:  # CMSG_OK
            raise TxControlError(f"cmsg at byte offset {pos} has cmsg_len {clen}", pos)
        if level == abi.SOL_SOCKET:
            if ctype not in _TX_SOL_SOCKET_LEN:
                raise TxControlError(f"unknown SOL_SOCKET cmsg type {ctype} at byte offset {pos}", pos)
            need = _TX_SOL_SOCKET_LEN[ctype]
            if need is not None and clen != abi.cmsg_len(need):
                raise TxControlError(
                    f"cmsg type {ctype} at byte offset {pos}: cmsg_len {clen}, "
                    f"expected CMSG_LEN({need}) = {abi.cmsg_len(need)}", pos)
            if ctype == abi.SCM_DEVMEM_DMABUF:
                (dmabuf_id,) = struct.unpack_from("<I", data, pos + _HDR)
        pos += abi.cmsg_align(clen)
    return dmabuf_id
