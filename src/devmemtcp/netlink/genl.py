"""Generic-netlink plumbing shared by the netdev and ethtool clients.

Messages are declared as :mod:`pyroute2` ``genlmsg`` classes (``nla_map``
tables) and encoded/decoded by pyroute2; the transport is one plain
``AF_NETLINK``/``NETLINK_GENERIC`` socket per :class:`GenlSocket` with
``NETLINK_EXT_ACK`` and ``NETLINK_CAP_ACK`` on, so every refusal comes back
with the kernel's extack text, the offset of the attribute it rejected
(``NLMSGERR_ATTR_OFFS``) or the attribute it missed (``NLMSGERR_ATTR_MISS_TYPE``,
include/uapi/linux/netlink.h). We own the socket (and its fd) so that a bind
can keep it open for exactly as long as the binding must live: the kernel
unbinds when the socket that created the binding is closed
(net/core/netdev-genl.c, ``netdev_nl_sock_priv_destroy``).

Errors: :class:`~devmemtcp.errors.NetlinkError` (errno, op, extack, bad_attr);
a missing family raises it with ``ENOENT`` and a hint.
"""

from __future__ import annotations

import errno as _errno
import os
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any

from pyroute2.netlink import ctrlmsg, genlmsg, nla, nla_base_string

from devmemtcp import abi
from devmemtcp.errors import DevmemError, NetlinkError

HintFn = Callable[[int, str | None, str | int | None], str | None]  # (errno, extack, bad_attr)

_NLMSGHDR = struct.Struct("=IHHII")
_NLA_HDR = struct.Struct("=HH")


class nla_uint(nla_base_string):
    """Netlink ``NLA_UINT`` (a "uint" in the YNL specs): 4 bytes when the
    value fits in 32 bits, else 8 (include/net/netlink.h ``nla_put_uint``).
    Decodes either width to a Python int; encodes the narrowest width."""

    __slots__ = ()
    sql_type = "BIGINT"

    def encode(self) -> None:
        self["value"] = encode_uint(int(self.value))
        nla_base_string.encode(self)

    def decode(self) -> None:
        nla_base_string.decode(self)
        self.value = decode_uint(bytes(self["value"]))  # type: ignore[misc]


def encode_uint(value: int) -> bytes:
    """Payload bytes of an ``NLA_UINT`` (narrowest of 4 or 8 bytes, host order)."""
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"uint attribute out of range: {value}")
    return struct.pack("=I" if value < 1 << 32 else "=Q", value)


class AttrDecodeError(DevmemError, ValueError):
    """A netlink attribute payload that cannot be what its type says (a
    ValueError too, which pyroute2's decoder expects)."""


def decode_uint(payload: bytes) -> int:
    """Inverse of :func:`encode_uint` (accepts 1, 2, 4 or 8 bytes); raises
    :class:`AttrDecodeError` for any other length."""
    fmt = {1: "=B", 2: "=H", 4: "=I", 8: "=Q"}.get(len(payload))
    if fmt is None:
        raise AttrDecodeError(f"uint attribute of {len(payload)} bytes (expected 1, 2, 4 or 8)",
                              "the kernel's reply is malformed or the attribute is not an NLA_UINT")
    return int(struct.unpack(fmt, payload)[0])


def _key(name: str, prefix: str) -> str:
    if prefix and name.startswith(prefix):
        return name[len(prefix):].lower()
    low = name.lower()
    return low.split("_a_", 1)[1] if "_a_" in low else low


def attrs_to_dict(msg: nla | genlmsg, multi: Iterable[str] = ()) -> dict[str, Any]:
    """A decoded pyroute2 message or nest as a plain dict.

    Keys are the attribute names without the class ``prefix``, lower case
    (``NETDEV_A_QUEUE_NAPI_ID`` -> ``napi_id``). Nested attributes become
    dicts; attributes named in ``multi`` (multi-attr in the YNL spec) become
    lists, in the kernel's order.
    """
    prefix = msg.prefix or ""
    multi = set(multi)
    out: dict[str, Any] = {}
    for name, value in msg["attrs"]:
        if name.endswith("_UNSPEC") or name.endswith("_PAD"):
            continue
        key = _key(name, prefix)
        if isinstance(value, nla):
            value = attrs_to_dict(value, multi)
        if key in multi:
            out.setdefault(key, []).append(value)
        else:
            out[key] = value
    return out


def attr_name_at(request: bytes, offset: int, cmd_class: type[genlmsg]) -> str | None:
    """Name of the attribute starting at byte ``offset`` of ``request`` (as
    NLMSGERR_ATTR_OFFS gives it: from the start of the nlmsghdr), walking
    nests; ``None`` when the offset does not start an attribute."""
    pos = _NLMSGHDR.size + 4  # genlmsghdr
    end = len(request)
    cls: Any = cmd_class
    path: list[str] = []
    while pos + 4 <= end:
        length, atype = _NLA_HDR.unpack_from(request, pos)
        if length < 4 or length > end - pos:  # a length past the message (or its nest): malformed
            return None
        num = atype & ~(abi.NLA_F_NESTED | 0x4000)
        name = _nla_name(cls, num)
        if pos == offset:
            return ".".join([*path, name])
        if pos < offset < pos + length:
            sub = _nla_class(cls, num)
            if sub is None:
                return ".".join([*path, name])
            path.append(name)
            cls = sub
            end = pos + length
            pos += 4
            continue
        pos += (length + 3) & ~3
    return None


def _map_entry(cls: Any, num: int) -> tuple[str, str] | None:
    """(name, type) of attribute number ``num`` in a pyroute2 class's nla_map."""
    nla_map = getattr(cls, "nla_map", ())
    if not isinstance(nla_map, tuple | list) or not nla_map:
        return None
    if isinstance(nla_map[0][0], int):
        for item in nla_map:
            if item[0] == num:
                return str(item[1]), str(item[2])
        return None
    if 0 <= num < len(nla_map):
        return str(nla_map[num][0]), str(nla_map[num][1])
    return None


def _nla_name(cls: Any, num: int) -> str:
    entry = _map_entry(cls, num)
    if entry is None:
        return str(num)
    return _key(entry[0], getattr(cls, "prefix", "") or "")


def _nla_class(cls: Any, num: int) -> Any:
    entry = _map_entry(cls, num)
    if entry is None:
        return None
    sub = getattr(cls, entry[1].lstrip("*"), None)
    if isinstance(sub, type) and issubclass(sub, nla) and getattr(sub, "nla_map", None):
        return sub
    return None


def parse_extack(payload: bytes, capped: bool = True,
                 done: bool = False) -> tuple[int, str | None, int | None, int | None]:
    """Split an ``NLMSG_ERROR`` (or dump-ending ``NLMSG_DONE``) payload into
    (errno, extack message, offending-attribute offset, missing attribute type).

    ``payload`` starts at the ``struct nlmsgerr`` (error code, then the
    original request header, followed by the whole request unless the reply
    carries ``NLM_F_CAPPED``); the TLVs after it are ``NLMSGERR_ATTR_*``
    (include/uapi/linux/netlink.h, net/netlink/af_netlink.c netlink_ack).
    A dump that fails ends with ``NLMSG_DONE`` (``done=True``) whose payload
    is the error code followed directly by the TLVs (netlink_dump_done).
    errno is returned positive (0 for an ACK).
    """
    if len(payload) < 4:
        return 0, None, None, None
    (code,) = struct.unpack_from("=i", payload, 0)
    pos = 4 if done else 4 + _NLMSGHDR.size
    if not done and not capped and len(payload) >= 4 + _NLMSGHDR.size:
        (orig_total,) = struct.unpack_from("=I", payload, 4)
        pos = 4 + ((orig_total + 3) & ~3)
    msg: str | None = None
    offs: int | None = None
    miss_type: int | None = None
    while pos + 4 <= len(payload):
        length, atype = _NLA_HDR.unpack_from(payload, pos)
        if length < 4:
            break
        body = payload[pos + 4: pos + length]
        atype &= 0x3FFF
        if atype == abi.NLMSGERR_ATTR_MSG:
            msg = body.split(b"\0", 1)[0].decode(errors="replace") or None
        elif atype == abi.NLMSGERR_ATTR_OFFS and len(body) >= 4:
            (offs,) = struct.unpack_from("=I", body)
        elif atype == abi.NLMSGERR_ATTR_MISS_TYPE and len(body) >= 4:
            (miss_type,) = struct.unpack_from("=I", body)
        pos += (length + 3) & ~3
    return -code, msg, offs, miss_type


class GenlSocket:
    """One generic-netlink socket bound to one family.

    ``family``: the genl family name ("netdev", "ethtool"). Opening resolves
    the family id and its op list through the controller (CTRL_CMD_GETFAMILY,
    net/netlink/genetlink.c). Context manager; ``close()`` is idempotent.

    Raises :class:`NetlinkError` (``ENOENT`` when the kernel lacks the family).
    """

    def __init__(self, family: str, hint: HintFn | None = None) -> None:
        self.family = family
        self._hint = hint
        self._seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, abi.NETLINK_GENERIC)
        try:
            self.sock.setsockopt(abi.SOL_NETLINK, abi.NETLINK_EXT_ACK, 1)
            self.sock.setsockopt(abi.SOL_NETLINK, abi.NETLINK_CAP_ACK, 1)
            self.sock.bind((0, 0))
            self.family_id, self.op_ids, self.version = self._resolve(family)
        except BaseException:
            self.sock.close()
            raise

    # -- lifecycle ---------------------------------------------------------
    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> GenlSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- controller --------------------------------------------------------
    def _resolve(self, family: str) -> tuple[int, set[int], int]:
        msg = ctrlmsg()
        msg["cmd"] = abi.CTRL_CMD_GETFAMILY
        msg["version"] = 1
        msg["attrs"] = [["CTRL_ATTR_FAMILY_NAME", family]]
        try:
            (reply,) = self._transact(msg, abi.GENL_ID_CTRL, ctrlmsg, dump=False, op="getfamily",
                                      cmd_class=ctrlmsg)
        except NetlinkError as exc:
            if exc.errno == _errno.ENOENT:
                raise NetlinkError(
                    exc.errno, f"{family} family lookup", exc.extack,
                    hint=f"this kernel has no '{family}' generic-netlink family: "
                    "use a kernel >= 6.12 built with CONFIG_NET_DEVMEM=y",
                ) from None
            raise
        ops = {op.get_attr("CTRL_ATTR_OP_ID") for op in reply.get_attr("CTRL_ATTR_OPS") or ()}
        return (int(reply.get_attr("CTRL_ATTR_FAMILY_ID")), {int(o) for o in ops if o is not None},
                int(reply.get_attr("CTRL_ATTR_VERSION") or 1))

    # -- requests ----------------------------------------------------------
    def request(self, cmd: int, attrs: list[Any], msg_class: type[genlmsg], *, op: str,
                dump: bool = False, version: int | None = None) -> list[genlmsg]:
        """Send one ``cmd`` request (``attrs`` in pyroute2 form) and return the
        decoded replies (all parts of a dump). Raises NetlinkError."""
        msg = msg_class()
        msg["cmd"] = cmd
        msg["version"] = self.version if version is None else version
        msg["attrs"] = attrs
        return self._transact(msg, self.family_id, msg_class, dump=dump, op=op, cmd_class=msg_class)

    def _transact(self, msg: genlmsg, msg_type: int, reply_class: type[genlmsg], *, dump: bool,
                  op: str, cmd_class: type[genlmsg]) -> list[genlmsg]:
        self._seq += 1
        seq = self._seq
        flags = abi.NLM_F_REQUEST | abi.NLM_F_ACK | (abi.NLM_F_DUMP if dump else 0)
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = seq
        msg["header"]["pid"] = 0
        msg.encode()
        request = bytes(msg.data)
        self.sock.send(request)
        replies: list[genlmsg] = []
        while True:
            data = self._recv()
            pos = 0
            while pos + _NLMSGHDR.size <= len(data):
                length, mtype, mflags, mseq, _pid = _NLMSGHDR.unpack_from(data, pos)
                capped = bool(mflags & abi.NLM_F_CAPPED)
                if length < _NLMSGHDR.size:
                    break
                body = data[pos + _NLMSGHDR.size: pos + length]
                chunk = data[pos: pos + length]
                pos += (length + 3) & ~3
                if mseq != seq:
                    continue
                if mtype == abi.NLMSG_ERROR:
                    err, extack, offs, miss = parse_extack(body, capped)
                    if err == 0:
                        return replies
                    raise self._error(err, op, extack, offs, miss, request, cmd_class)
                if mtype == abi.NLMSG_DONE:
                    (code,) = struct.unpack_from("=i", body, 0) if len(body) >= 4 else (0,)
                    if code < 0:
                        err, extack, offs, miss = parse_extack(body, capped, done=True)
                        raise self._error(err, op, extack, offs, miss, request, cmd_class)
                    # end of a dump (the kernel sends no separate ACK after it)
                    return replies
                if mtype == msg_type:
                    reply = reply_class(chunk)
                    reply.decode()
                    replies.append(reply)

    def _recv(self) -> bytes:
        while True:
            try:
                return self.sock.recv(1 << 20)
            except InterruptedError:
                continue

    def _error(self, err: int, op: str, extack: str | None, offs: int | None, miss: int | None,
               request: bytes, cmd_class: type[genlmsg]) -> NetlinkError:
        bad: str | int | None = None
        if offs is not None:
            bad = attr_name_at(request, offs, cmd_class) or offs
        if miss is not None:
            bad = f"{_nla_name(cmd_class, miss)} (missing)"
        hint = self._hint(err, extack, bad) if self._hint else None
        return NetlinkError(err, op, extack=extack, bad_attr=bad, hint=hint)


def errno_name(err: int) -> str:
    """``errno.errorcode`` name (``"EOPNOTSUPP"``) or the number as text."""
    return _errno.errorcode.get(err, str(err)) if err else "OK"


def strerror(err: int) -> str:
    return os.strerror(err)
