"""KernelBackend's four socket calls against this machine's real kernel.

The expected errnos were measured on Linux 6.18 (CONFIG_NET_DEVMEM=y) and match
net/core/sock.c (sock_devmem_dontneed, __sock_cmsg_send) and net/ipv4/tcp.c.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmemtcp import abi
from devmemtcp.backend.kernel import KernelBackend, libc_recvmsg, libc_setsockopt
from devmemtcp.codec import build_tx_cmsg

kb = KernelBackend()


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    client = socket.create_connection(srv.getsockname())
    server, _ = srv.accept()
    srv.close()
    yield client, server
    client.close()
    server.close()


def tokens(*ranges: tuple[int, int]) -> np.ndarray:
    arr = np.zeros(len(ranges), dtype=abi.DMABUF_TOKEN_DTYPE)
    for i, (start, count) in enumerate(ranges):
        arr[i] = (start, count)
    return arr


def recv_all(sock: socket.socket, n: int, flags: int) -> tuple[bytes, int]:
    buf = bytearray(n)
    ctl = bytearray(4096)
    got = 0
    ctl_total = 0
    while got < n:
        k, clen, _ = kb.recvmsg(sock, memoryview(buf)[got:], memoryview(ctl), flags)
        assert k > 0
        got += k
        ctl_total += clen
    return bytes(buf), ctl_total


# -- SO_DEVMEM_DONTNEED -------------------------------------------------------

def test_dontneed_unknown_tokens_frees_nothing(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    _, server = tcp_pair
    assert kb.dontneed(server, tokens((1, 5))) == 0
    assert kb.dontneed(server, tokens((1, 1), (100, 3), (2**31 - 2, 1))) == 0


def test_dontneed_128_ranges_accepted_129_einval(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    _, server = tcp_pair
    assert kb.dontneed(server, tokens(*[(i + 1, 1) for i in range(abi.MAX_DONTNEED_TOKENS)])) == 0
    with pytest.raises(OSError) as exc:
        kb.dontneed(server, tokens(*[(i + 1, 1) for i in range(abi.MAX_DONTNEED_TOKENS + 1)]))
    assert exc.value.errno == errno.EINVAL


def test_dontneed_takes_any_layout_of_the_ranges(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    # the fast path sends the ranges' bytes: strided, read-only and plain (n, 2) uint32 arrays
    # reach the kernel as the same struct dmabuf_token array (129 ranges: EINVAL either way)
    _, server = tcp_pair
    every_other = tokens(*[(i + 1, 1) for i in range(2 * abi.MAX_DONTNEED_TOKENS)])[::2]
    assert not every_other.flags.c_contiguous
    assert kb.dontneed(server, every_other) == 0
    frozen = tokens((1, 3), (9, 1))
    frozen.flags.writeable = False
    assert kb.dontneed(server, frozen) == 0
    plain = np.array([[1, 3], [9, 1]], np.uint32).view(abi.DMABUF_TOKEN_DTYPE).reshape(-1)
    assert kb.dontneed(server, plain) == 0
    with pytest.raises(OSError) as exc:
        kb.dontneed(server, tokens(*[(i + 1, 1) for i in range(2 * abi.MAX_DONTNEED_TOKENS + 2)])[::2])
    assert exc.value.errno == errno.EINVAL


def test_dontneed_empty_array_einval(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    _, server = tcp_pair
    with pytest.raises(OSError) as exc:
        kb.dontneed(server, tokens())
    assert exc.value.errno == errno.EINVAL


@given(st.integers(min_value=1, max_value=1024).filter(lambda n: n % 8))
@settings(max_examples=25, deadline=None)
def test_dontneed_length_not_multiple_of_8_einval(n: int) -> None:
    with socket.socket() as s:
        with pytest.raises(OSError) as exc:
            libc_setsockopt(s.fileno(), abi.SOL_SOCKET, abi.SO_DEVMEM_DONTNEED, b"\x01" * n)
        assert exc.value.errno == errno.EINVAL


def test_dontneed_on_udp_is_ebadf() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        with pytest.raises(OSError) as exc:
            kb.dontneed(u, tokens((1, 1)))
        assert exc.value.errno == errno.EBADF


def test_dontneed_on_unconnected_tcp_returns_zero() -> None:
    with socket.socket() as s:
        assert kb.dontneed(s, tokens((1, 1))) == 0


# -- recvmsg with MSG_SOCK_DEVMEM ---------------------------------------------

def test_recvmsg_sock_devmem_on_ordinary_data_copies_without_cmsg(
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = tcp_pair
    payload = bytes(range(256)) * 64
    client.sendall(payload)
    data, ctl_total = recv_all(server, len(payload), abi.MSG_SOCK_DEVMEM)
    assert data == payload
    assert ctl_total == 0  # readable skbs produce no devmem cmsg (tcp_recvmsg_locked)


def test_recvmsg_reports_eof_and_flags(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = tcp_pair
    client.sendall(b"abc")
    client.shutdown(socket.SHUT_WR)
    buf = bytearray(16)
    n, clen, flags = kb.recvmsg(server, memoryview(buf), memoryview(bytearray(64)),
                                abi.MSG_SOCK_DEVMEM | abi.MSG_WAITALL)
    assert (n, clen, bytes(buf[:n])) == (3, 0, b"abc")
    assert flags & abi.MSG_CTRUNC == 0
    assert kb.recvmsg(server, memoryview(buf), memoryview(bytearray(64)), 0)[0] == 0


def test_recvmsg_nonblocking_and_timeout(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    _, server = tcp_pair
    buf = memoryview(bytearray(16))
    with pytest.raises(BlockingIOError):
        kb.recvmsg(server, buf, memoryview(bytearray(64)), abi.MSG_SOCK_DEVMEM | abi.MSG_DONTWAIT)
    server.settimeout(0.05)
    with pytest.raises(TimeoutError) as exc:
        kb.recvmsg(server, buf, memoryview(bytearray(64)), abi.MSG_SOCK_DEVMEM)
    assert exc.value.errno == errno.EAGAIN


def test_recvmsg_timeout_socket_still_receives(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = tcp_pair
    server.settimeout(5)
    timer = threading.Timer(0.05, client.sendall, args=(b"late",))
    timer.start()
    buf = bytearray(8)
    n, _, _ = kb.recvmsg(server, memoryview(buf), memoryview(bytearray(64)), abi.MSG_SOCK_DEVMEM)
    timer.join()
    assert bytes(buf[:n]) == b"late"


def test_recvmsg_numpy_buffers(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = tcp_pair
    client.sendall(b"\x07" * 100)
    buf = np.zeros(100, np.uint8)
    got = 0
    while got < 100:
        got += libc_recvmsg(server, buf[got:], np.zeros(64, np.uint8), 0)[0]
    assert (buf == 7).all()


# -- sendmsg ------------------------------------------------------------------

def test_tx_cmsg_layout() -> None:
    raw = build_tx_cmsg(7)
    assert len(raw) == abi.cmsg_space(4) == 24
    hdr = np.frombuffer(raw[:16], dtype=abi.CMSGHDR_DTYPE)[0]
    assert (int(hdr["cmsg_len"]), int(hdr["cmsg_level"]), int(hdr["cmsg_type"])) == (
        abi.cmsg_len(4), abi.SOL_SOCKET, abi.SCM_DEVMEM_DMABUF)
    assert int.from_bytes(raw[16:20], "little") == 7


@pytest.mark.parametrize("zerocopy_sockopt", [False, True])
def test_sendmsg_unknown_binding_id_einval(tcp_pair: tuple[socket.socket, socket.socket],
                                           zerocopy_sockopt: bool) -> None:
    client, _ = tcp_pair
    if zerocopy_sockopt:
        client.setsockopt(abi.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
    iov = np.array([[0, 4096]], dtype=np.uint64)
    with pytest.raises(OSError) as exc:
        kb.sendmsg(client, iov, build_tx_cmsg(424242), abi.MSG_ZEROCOPY)
    assert exc.value.errno == errno.EINVAL


def test_sendmsg_bad_cmsg_len_einval(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = tcp_pair
    client.setsockopt(abi.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
    bad = (abi.cmsg_len(4) + 4).to_bytes(8, "little") + build_tx_cmsg(1)[8:] + b"\0" * 8
    with pytest.raises(OSError) as exc:
        kb.sendmsg(client, np.array([[0, 16]], dtype=np.uint64), bad, abi.MSG_ZEROCOPY)
    assert exc.value.errno == errno.EINVAL


def test_sendmsg_binding_id_zero_is_plain_zerocopy(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    # id 0 is no binding: the kernel treats iov_base as a user address, and 0 faults.
    client, _ = tcp_pair
    client.setsockopt(abi.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
    with pytest.raises(OSError) as exc:
        kb.sendmsg(client, np.array([[0, 16]], dtype=np.uint64), build_tx_cmsg(0), abi.MSG_ZEROCOPY)
    assert exc.value.errno == errno.EFAULT


def test_sendmsg_gathers_host_iovecs_and_zerocopy_completion(
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = tcp_pair
    client.setsockopt(abi.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
    a = np.frombuffer(b"hello ", np.uint8)
    b = np.frombuffer(b"world", np.uint8)
    iov = np.array([[a.ctypes.data, a.size], [b.ctypes.data, b.size]], dtype=np.uint64)
    assert kb.sendmsg(client, iov, b"", abi.MSG_ZEROCOPY) == 11
    data, _ = recv_all(server, 11, 0)
    assert data == b"hello world"
    ctl = bytearray(256)
    clen, flags = kb.recv_errqueue(client, memoryview(ctl))
    assert flags & abi.MSG_ERRQUEUE
    hdr = np.frombuffer(bytes(ctl[:16]), dtype=abi.CMSGHDR_DTYPE)[0]
    assert int(hdr["cmsg_level"]) in (abi.SOL_IP, abi.SOL_IPV6)
    ee = np.frombuffer(bytes(ctl[16:32]), dtype=abi.SOCK_EXTENDED_ERR_DTYPE)[0]
    assert int(ee["ee_origin"]) == abi.SO_EE_ORIGIN_ZEROCOPY
    assert (int(ee["ee_errno"]), int(ee["ee_info"]), int(ee["ee_data"])) == (0, 0, 0)
    assert clen >= 32
    with pytest.raises(BlockingIOError):
        kb.recv_errqueue(client, memoryview(ctl))


def test_wait_errqueue_polls_for_the_zerocopy_completion(
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = tcp_pair
    client.setsockopt(abi.SOL_SOCKET, abi.SO_ZEROCOPY, 1)
    t0 = time.monotonic()
    assert kb.wait_errqueue(client, 0.05) is False  # nothing sent: the timeout runs out
    assert time.monotonic() - t0 >= 0.04
    a = np.frombuffer(b"ping", np.uint8)
    iov = np.array([[a.ctypes.data, a.size]], dtype=np.uint64)
    assert kb.sendmsg(client, iov, b"", abi.MSG_ZEROCOPY) == 4
    assert recv_all(server, 4, 0)[0] == b"ping"
    assert kb.wait_errqueue(client, 5.0) is True
    clen, flags = kb.recv_errqueue(client, memoryview(bytearray(256)))
    assert clen >= 32 and flags & abi.MSG_ERRQUEUE


def test_kernel_backend_close_is_idempotent_and_keeps_bindings_to_their_owners() -> None:
    with KernelBackend() as be:
        be.close()
    be.close()


def test_sendmsg_rejects_bad_iov_shape(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = tcp_pair
    with pytest.raises(ValueError, match="shape"):
        kb.sendmsg(client, np.zeros(3, dtype=np.uint64), b"", 0)


def test_receiver_over_kernel_backend_counts_ordinary_data_as_flow_steering_errors(
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    """The Receiver's preallocated (mmap-backed) buffers through the libc path: a flow
    that landed on an ordinary queue arrives as readable bytes, no devmem frags."""
    from devmemtcp.memory import open_dmabuf
    from devmemtcp.rx import Receiver

    client, server = tcp_pair
    payload = bytes(range(251)) * 1000

    class FakeBinding:  # the socket is ordinary: no bind-rx is possible on lo
        id, ifindex, kind, queues = 1, 1, "rx", (1,)

    sender = threading.Thread(target=lambda: (client.sendall(payload), client.shutdown(socket.SHUT_WR)))
    with open_dmabuf("host", 1 << 20) as buf:
        binding = FakeBinding()
        binding.dmabuf = buf  # type: ignore[attr-defined]
        sender.start()
        with Receiver(kb, server, binding) as rx:
            batches = sum(1 for _ in iter(rx.recv, None))
        sender.join()
    assert batches >= 1
    stats = rx.stats.as_dict()
    assert (stats["bytes"], stats["flow_steering_errors"], stats["frags"]) == (len(payload), len(payload), 0)
    assert stats["tokens_released"] == 0


@pytest.mark.root
def test_binds_delegate_to_netlink_and_carry_the_kernels_refusal() -> None:
    from devmemtcp.errors import NetlinkError
    from devmemtcp.memory import open_dmabuf

    lo = socket.if_nametoindex("lo")
    with open_dmabuf("host", 1 << 20) as buf:
        with pytest.raises(NetlinkError) as rx:
            kb.bind_rx(lo, buf, [0])
        assert (rx.value.errno, rx.value.op) == (errno.EOPNOTSUPP, "bind-rx")
        with pytest.raises(NetlinkError) as tx:
            kb.bind_tx(lo, buf)
        assert (tx.value.errno, tx.value.extack) == (errno.EOPNOTSUPP, "Driver does not support netmem TX")
        with pytest.raises(NetlinkError) as empty:
            kb.bind_rx(lo, buf, [])
        assert empty.value.errno == errno.EINVAL


def test_kernel_nic_control_of_an_unknown_interface() -> None:
    from devmemtcp.errors import DevmemError

    with pytest.raises(DevmemError, match="no interface named 'nosuch0'"):
        kb.nic("nosuch0")
    nic = kb.nic("lo")
    assert (nic.ifname, nic.ifindex, nic.driver()) == ("lo", 1, "")
    assert nic.rx_queue_count() == 1
