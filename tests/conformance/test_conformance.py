"""Conformance: the emulated NIC and the kernel give the same answers.

Each case runs against every backend of its fixture (see conftest.py). The
socket-level cases run against the real kernel on any machine; the NIC cases
run against the kernel only on a devmem NIC (DEVMEMTCP_NIC).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from devmemtcp import abi, codec
from devmemtcp.errors import NetlinkError
from devmemtcp.selftest.catalogue import BIND_RX_CASES, BindRxCase, CaseFailed, check_bind_rx

PS = abi.PAGE_SIZE


@pytest.fixture
def tcp() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, accepted server side) over loopback."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        cli = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
    with cli, conn:
        yield cli, conn


def raw_dontneed(backend: Any, sock: socket.socket, raw: bytes) -> int:
    """SO_DEVMEM_DONTNEED with an arbitrary optval (any optlen)."""
    if backend.name == "kernel":
        from devmemtcp.backend.kernel import libc_setsockopt

        return int(libc_setsockopt(sock.fileno(), abi.SOL_SOCKET, abi.SO_DEVMEM_DONTNEED, raw))
    return int(backend.dontneed(sock, raw))


def errno_of(fn: Any, *args: Any) -> int:
    with pytest.raises(OSError) as oe:
        fn(*args)
    assert oe.value.errno is not None
    return int(oe.value.errno)


# ---------------------------------------------------------------------------
# SO_DEVMEM_DONTNEED (net/core/sock.c)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("optlen", [0, 4, 12, 8 * 129])
def test_dontneed_bad_optlen_is_einval(sock_backend: Any, tcp: Any, optlen: int) -> None:
    assert errno_of(raw_dontneed, sock_backend, tcp[1], b"\0" * optlen) == errno.EINVAL


@pytest.mark.parametrize("nranges", [1, 128])
def test_dontneed_unknown_tokens_free_nothing(sock_backend: Any, tcp: Any, nranges: int) -> None:
    ranges = np.zeros(nranges, dtype=abi.DMABUF_TOKEN_DTYPE)
    ranges["token_start"] = np.arange(1, nranges + 1) * 1000
    ranges["token_count"] = 5
    assert raw_dontneed(sock_backend, tcp[1], ranges.tobytes()) == 0
    assert sock_backend.dontneed(tcp[1], ranges) == 0


def test_dontneed_on_udp_is_ebadf(sock_backend: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        one = np.array([(1, 1)], dtype=abi.DMABUF_TOKEN_DTYPE)
        assert errno_of(sock_backend.dontneed, udp, one) == errno.EBADF


# ---------------------------------------------------------------------------
# recvmsg and the error queue on an ordinary flow
# ---------------------------------------------------------------------------
def test_readable_flow_under_msg_sock_devmem(sock_backend: Any, tcp: Any) -> None:
    cli, conn = tcp
    cli.sendall(b"readable bytes")
    buf = bytearray(64)
    n, clen, _fl = sock_backend.recvmsg(conn, memoryview(buf), memoryview(bytearray(400)),
                                        abi.MSG_SOCK_DEVMEM)
    assert (bytes(buf[:n]), clen) == (b"readable bytes", 0)


def test_errqueue_empty_is_eagain(sock_backend: Any, tcp: Any) -> None:
    assert errno_of(sock_backend.recv_errqueue, tcp[0], memoryview(bytearray(128))) == errno.EAGAIN


# ---------------------------------------------------------------------------
# TX checks made before the binding is needed (net/ipv4/tcp.c, net/core/sock.c)
# ---------------------------------------------------------------------------
IOV = np.array([[0, 100]], dtype=np.uint64)
UNKNOWN_ID = 0x7FFFFFF0


def test_tx_unknown_binding_is_einval(sock_backend: Any, tcp: Any) -> None:
    cli = tcp[0]
    cli.setsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
    ctl = codec.build_tx_cmsg(UNKNOWN_ID)
    assert errno_of(sock_backend.sendmsg, cli, IOV, ctl, abi.MSG_ZEROCOPY) == errno.EINVAL


def test_tx_binding_without_msg_zerocopy_is_einval(sock_backend: Any, tcp: Any) -> None:
    cli = tcp[0]
    cli.setsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
    assert errno_of(sock_backend.sendmsg, cli, IOV, codec.build_tx_cmsg(UNKNOWN_ID), 0) == errno.EINVAL


def test_tx_binding_without_so_zerocopy_is_einval(sock_backend: Any, tcp: Any) -> None:
    ctl = codec.build_tx_cmsg(UNKNOWN_ID)
    assert errno_of(sock_backend.sendmsg, tcp[0], IOV, ctl, abi.MSG_ZEROCOPY) == errno.EINVAL


@pytest.mark.parametrize("cmsg_len", [16, 24, 28])
def test_tx_cmsg_len_must_be_cmsg_len_4(sock_backend: Any, tcp: Any, cmsg_len: int) -> None:
    cli = tcp[0]
    cli.setsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
    raw = bytearray(codec.build_tx_cmsg(1)) + bytes(8)
    raw[0:8] = cmsg_len.to_bytes(8, "little")
    assert errno_of(sock_backend.sendmsg, cli, IOV, bytes(raw), abi.MSG_ZEROCOPY) == errno.EINVAL


@pytest.mark.parametrize("flags", [0, abi.MSG_ZEROCOPY])
def test_tx_offsets_without_devmem_cmsg_are_efault(sock_backend: Any, tcp: Any, flags: int) -> None:
    cli = tcp[0]
    cli.setsockopt(socket.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
    assert errno_of(sock_backend.sendmsg, cli, IOV, b"", flags) == errno.EFAULT


# ---------------------------------------------------------------------------
# bind-rx / bind-tx refusals any kernel gives on lo (net/core/netdev-genl.c)
# ---------------------------------------------------------------------------
LO = socket.if_nametoindex("lo")


def test_bind_rx_without_queue_api_is_eopnotsupp(plain_nic_backend: Any) -> None:
    from devmemtcp.memory.memfd import MemfdBuffer

    with MemfdBuffer(4 * PS) as buf:
        e = nl_errno(plain_nic_backend.bind_rx, LO, buf, [0])
    assert (e.errno, e.extack, e.bad_attr) == (errno.EOPNOTSUPP, None, "ifindex")


def test_bind_tx_without_netmem_tx_is_eopnotsupp(plain_nic_backend: Any) -> None:
    from devmemtcp.memory.memfd import MemfdBuffer

    with MemfdBuffer(4 * PS) as buf:
        e = nl_errno(plain_nic_backend.bind_tx, LO, buf)
    assert (e.errno, e.extack) == (errno.EOPNOTSUPP, "Driver does not support netmem TX")


def test_bind_missing_queues_and_unknown_ifindex(plain_nic_backend: Any) -> None:
    from devmemtcp.memory.memfd import MemfdBuffer

    bad = max(i for i, _ in socket.if_nameindex()) + 1000
    with MemfdBuffer(4 * PS) as buf:
        e = nl_errno(plain_nic_backend.bind_rx, LO, buf, [])
        assert (e.errno, e.bad_attr) == (errno.EINVAL, "queues (missing)")
        e = nl_errno(plain_nic_backend.bind_rx, bad, buf, [0])
        assert (e.errno, e.bad_attr) == (errno.ENODEV, None)
        e = nl_errno(plain_nic_backend.bind_tx, bad, buf)
        assert (e.errno, e.bad_attr) == (errno.ENODEV, None)


# ---------------------------------------------------------------------------
# bind-rx / bind-tx (needs a devmem NIC for the kernel variant)
# ---------------------------------------------------------------------------
def nl_errno(fn: Any, *args: Any) -> NetlinkError:
    with pytest.raises(NetlinkError) as ei:
        fn(*args)
    return ei.value


@pytest.mark.parametrize("case", BIND_RX_CASES, ids=[c.name for c in BIND_RX_CASES])
def test_bind_rx_catalogue(nic_backend: Any, case: BindRxCase) -> None:
    """The selftest catalogue's bind-rx cases (one definition, both runners)."""
    nic = nic_backend.backend.nic(nic_backend.ifname)
    hds = min(case.hds_thresh, nic.get_rings().hds_thresh_max or case.hds_thresh)
    nic.set_rings(tcp_data_split=case.tcp_data_split, hds_thresh=hds)
    try:
        seen = check_bind_rx(case, nic_backend.backend, nic_backend.ifindex, nic_backend.queues,
                             lambda: nic_backend.dmabuf(16 * PS))
    except CaseFailed as exc:
        pytest.fail(f"{case.name}: {exc}")
    if case.must_fail:
        assert errno.errorcode[case.errnos[0]] == seen["errno"] or nic_backend.backend.name == "kernel"
    else:
        assert seen["binding_id"] >= 1 and seen["queues"] == case.queues(nic_backend.queues)


def test_bound_queue_blocks_disabling_header_split(nic_backend: Any) -> None:
    nic = nic_backend.backend.nic(nic_backend.ifname)
    with nic_backend.dmabuf(16 * PS) as buf, \
            nic_backend.backend.bind_rx(nic_backend.ifindex, buf, [nic_backend.queues - 1]):
        with pytest.raises(NetlinkError) as ei:
            nic.set_rings(tcp_data_split="disabled")
        assert ei.value.errno == errno.EINVAL
        assert ei.value.extack == "can't disable tcp-data-split while device has memory provider enabled"


def test_bind_unknown_ifindex_is_enodev(nic_backend: Any) -> None:
    bad = max(i for i, _ in socket.if_nameindex()) + 1000
    with nic_backend.dmabuf(16 * PS) as buf:
        assert nl_errno(nic_backend.backend.bind_rx, bad, buf, [0]).errno == errno.ENODEV
        assert nl_errno(nic_backend.backend.bind_tx, bad, buf).errno == errno.ENODEV


def test_binding_ids_rx_tx_share_one_space(nic_backend: Any) -> None:
    be = nic_backend.backend
    with nic_backend.dmabuf(16 * PS) as a, nic_backend.dmabuf(16 * PS) as b, \
            be.bind_rx(nic_backend.ifindex, a, [nic_backend.queues - 1]) as rx, \
            be.bind_tx(nic_backend.ifindex, b) as tx:
        assert rx.id != tx.id and min(rx.id, tx.id) >= 1
        assert (rx.kind, tx.kind) == ("rx", "tx")
