"""Every number devmemtcp takes from the Linux kernel, in one place.

Each group names the kernel header (or source file) it comes from. Struct
layouts are numpy dtypes (for vectorised parsing) with explicit offsets, so a
layout test can compare them with the C compiler's ``offsetof``/``sizeof``.

Nothing here does I/O. Values are for the generic architectures (x86_64,
arm64, riscv64, ...); parisc and sparc number the devmem socket options
differently and are handled by :data:`SOCKET_OPTS_BY_ARCH`.
"""

from __future__ import annotations

import platform
from typing import Final

import numpy as np

# ---------------------------------------------------------------------------
# include/linux/socket.h, include/uapi/asm-generic/socket.h
# ---------------------------------------------------------------------------
SOL_SOCKET: Final = 1
SOL_IP: Final = 0
SOL_IPV6: Final = 41
SOL_TCP: Final = 6
SOL_NETLINK: Final = 270
NETLINK_EXT_ACK: Final = 11
NETLINK_GET_STRICT_CHK: Final = 12

SO_ZEROCOPY: Final = 60
SO_BINDTODEVICE: Final = 25
SO_RCVBUF: Final = 8

# (SO_DEVMEM_LINEAR, SO_DEVMEM_DMABUF, SO_DEVMEM_DONTNEED) per architecture:
# arch/parisc/include/uapi/asm/socket.h, arch/sparc/include/uapi/asm/socket.h.
SOCKET_OPTS_BY_ARCH: Final[dict[str, tuple[int, int, int]]] = {
    "generic": (78, 79, 80),
    "parisc": (0x404E, 0x404F, 0x4050),
    "sparc": (0x0057, 0x0058, 0x0059),
}


def _arch_family(machine: str) -> str:
    if machine.startswith("parisc"):
        return "parisc"
    if machine.startswith("sparc"):
        return "sparc"
    return "generic"


SO_DEVMEM_LINEAR, SO_DEVMEM_DMABUF, SO_DEVMEM_DONTNEED = SOCKET_OPTS_BY_ARCH[
    _arch_family(platform.machine())
]
SCM_DEVMEM_LINEAR: Final = SO_DEVMEM_LINEAR
SCM_DEVMEM_DMABUF: Final = SO_DEVMEM_DMABUF

# recvmsg/sendmsg flags (include/linux/socket.h)
MSG_PEEK: Final = 0x2
MSG_CTRUNC: Final = 0x8
MSG_TRUNC: Final = 0x20
MSG_DONTWAIT: Final = 0x40
MSG_WAITALL: Final = 0x100
MSG_ERRQUEUE: Final = 0x2000
MSG_NOSIGNAL: Final = 0x4000
MSG_SOCK_DEVMEM: Final = 0x2000000
MSG_ZEROCOPY: Final = 0x4000000

# include/uapi/linux/errqueue.h
SO_EE_ORIGIN_ZEROCOPY: Final = 5
SO_EE_CODE_ZEROCOPY_COPIED: Final = 1
IP_RECVERR: Final = 11
IPV6_RECVERR: Final = 25

# ---------------------------------------------------------------------------
# net/ipv4/tcp.c (tcp_recvmsg_dmabuf), net/core/sock.c (sock_devmem_dontneed)
# ---------------------------------------------------------------------------
PAGE_SIZE: Final = 4096  # net_iov size on 6.12-7.2 (include/net/netmem.h)
MAX_DONTNEED_TOKENS: Final = 128  # ranges per SO_DEVMEM_DONTNEED call
MAX_DONTNEED_FRAGS: Final = 1024  # frags freed per call before it stops
TOKEN_LIMIT: Final = (1 << 31) - 1  # xa_limit_31b: tokens fit in 31 bits
FIRST_TOKEN: Final = 1  # sk_user_frags is XA_FLAGS_ALLOC1

# ---------------------------------------------------------------------------
# Struct layouts (include/uapi/linux/uio.h, include/linux/socket.h,
# include/uapi/linux/errqueue.h). 64-bit layouts.
# ---------------------------------------------------------------------------
CMSGHDR_DTYPE: Final = np.dtype(
    {
        "names": ["cmsg_len", "cmsg_level", "cmsg_type"],
        "formats": ["<u8", "<i4", "<i4"],
        "offsets": [0, 8, 12],
        "itemsize": 16,
    }
)
CMSG_ALIGN_TO: Final = 8  # sizeof(size_t) on 64-bit

# struct dmabuf_cmsg: payload of SCM_DEVMEM_DMABUF and SCM_DEVMEM_LINEAR on RX.
DMABUF_CMSG_DTYPE: Final = np.dtype(
    {
        "names": ["frag_offset", "frag_size", "frag_token", "dmabuf_id", "flags"],
        "formats": ["<u8", "<u4", "<u4", "<u4", "<u4"],
        "offsets": [0, 8, 12, 16, 20],
        "itemsize": 24,
    }
)

# struct dmabuf_token: one range in the SO_DEVMEM_DONTNEED array.
DMABUF_TOKEN_DTYPE: Final = np.dtype(
    {
        "names": ["token_start", "token_count"],
        "formats": ["<u4", "<u4"],
        "offsets": [0, 4],
        "itemsize": 8,
    }
)

# struct sock_extended_err (include/uapi/linux/errqueue.h)
SOCK_EXTENDED_ERR_DTYPE: Final = np.dtype(
    {
        "names": ["ee_errno", "ee_origin", "ee_type", "ee_code", "ee_pad", "ee_info", "ee_data"],
        "formats": ["<u4", "u1", "u1", "u1", "u1", "<u4", "<u4"],
        "offsets": [0, 4, 5, 6, 7, 8, 12],
        "itemsize": 16,
    }
)

# TX: the SCM_DEVMEM_DMABUF cmsg carries a bare u32 binding id
# (net/core/sock.c __sock_cmsg_send); cmsg_len must equal CMSG_LEN(4).
TX_CMSG_PAYLOAD_SIZE: Final = 4


def cmsg_align(n: int) -> int:
    """CMSG_ALIGN: round ``n`` bytes up to the cmsg alignment (8 on 64-bit)."""
    return (n + CMSG_ALIGN_TO - 1) & ~(CMSG_ALIGN_TO - 1)


def cmsg_len(payload: int) -> int:
    """CMSG_LEN: cmsghdr size plus ``payload`` bytes (no trailing padding)."""
    return cmsg_align(CMSGHDR_DTYPE.itemsize) + payload


def cmsg_space(payload: int) -> int:
    """CMSG_SPACE: bytes one cmsg with ``payload`` bytes occupies in a control buffer."""
    return cmsg_align(CMSGHDR_DTYPE.itemsize) + cmsg_align(payload)


DMABUF_CMSG_SPACE: Final = cmsg_space(DMABUF_CMSG_DTYPE.itemsize)  # 40 bytes

# ---------------------------------------------------------------------------
# Documentation/netlink/specs/netdev.yaml, include/uapi/linux/netdev.h
# ---------------------------------------------------------------------------
NETDEV_FAMILY_NAME: Final = "netdev"
NETDEV_FAMILY_VERSION: Final = 1
NETDEV_MCGRP_MGMT: Final = "mgmt"
NETDEV_MCGRP_PAGE_POOL: Final = "page-pool"

NETDEV_CMD_DEV_GET: Final = 1
NETDEV_CMD_DEV_ADD_NTF: Final = 2
NETDEV_CMD_DEV_DEL_NTF: Final = 3
NETDEV_CMD_DEV_CHANGE_NTF: Final = 4
NETDEV_CMD_PAGE_POOL_GET: Final = 5
NETDEV_CMD_PAGE_POOL_ADD_NTF: Final = 6
NETDEV_CMD_PAGE_POOL_DEL_NTF: Final = 7
NETDEV_CMD_PAGE_POOL_CHANGE_NTF: Final = 8
NETDEV_CMD_PAGE_POOL_STATS_GET: Final = 9
NETDEV_CMD_QUEUE_GET: Final = 10
NETDEV_CMD_NAPI_GET: Final = 11
NETDEV_CMD_QSTATS_GET: Final = 12
NETDEV_CMD_BIND_RX: Final = 13
NETDEV_CMD_NAPI_SET: Final = 14
NETDEV_CMD_BIND_TX: Final = 15
NETDEV_CMD_QUEUE_CREATE: Final = 16

NETDEV_OP_NAMES: Final[dict[int, str]] = {
    NETDEV_CMD_DEV_GET: "dev-get",
    NETDEV_CMD_PAGE_POOL_GET: "page-pool-get",
    NETDEV_CMD_PAGE_POOL_STATS_GET: "page-pool-stats-get",
    NETDEV_CMD_QUEUE_GET: "queue-get",
    NETDEV_CMD_NAPI_GET: "napi-get",
    NETDEV_CMD_QSTATS_GET: "qstats-get",
    NETDEV_CMD_BIND_RX: "bind-rx",
    NETDEV_CMD_NAPI_SET: "napi-set",
    NETDEV_CMD_BIND_TX: "bind-tx",
    NETDEV_CMD_QUEUE_CREATE: "queue-create",
}

# attribute-set dev
NETDEV_A_DEV_IFINDEX: Final = 1
NETDEV_A_DEV_PAD: Final = 2
NETDEV_A_DEV_XDP_FEATURES: Final = 3
NETDEV_A_DEV_XDP_ZC_MAX_SEGS: Final = 4
NETDEV_A_DEV_XDP_RX_METADATA_FEATURES: Final = 5
NETDEV_A_DEV_XSK_FEATURES: Final = 6

# attribute-set page-pool
NETDEV_A_PAGE_POOL_ID: Final = 1
NETDEV_A_PAGE_POOL_IFINDEX: Final = 2
NETDEV_A_PAGE_POOL_NAPI_ID: Final = 3
NETDEV_A_PAGE_POOL_INFLIGHT: Final = 4
NETDEV_A_PAGE_POOL_INFLIGHT_MEM: Final = 5
NETDEV_A_PAGE_POOL_DETACH_TIME: Final = 6
NETDEV_A_PAGE_POOL_DMABUF: Final = 7
NETDEV_A_PAGE_POOL_IO_URING: Final = 8

# attribute-set page-pool-stats
NETDEV_A_PAGE_POOL_STATS_INFO: Final = 1
NETDEV_A_PAGE_POOL_STATS_ALLOC_FAST: Final = 8
NETDEV_A_PAGE_POOL_STATS_ALLOC_SLOW: Final = 9
NETDEV_A_PAGE_POOL_STATS_ALLOC_SLOW_HIGH_ORDER: Final = 10
NETDEV_A_PAGE_POOL_STATS_ALLOC_EMPTY: Final = 11
NETDEV_A_PAGE_POOL_STATS_ALLOC_REFILL: Final = 12
NETDEV_A_PAGE_POOL_STATS_ALLOC_WAIVE: Final = 13
NETDEV_A_PAGE_POOL_STATS_RECYCLE_CACHED: Final = 14
NETDEV_A_PAGE_POOL_STATS_RECYCLE_CACHE_FULL: Final = 15
NETDEV_A_PAGE_POOL_STATS_RECYCLE_RING: Final = 16
NETDEV_A_PAGE_POOL_STATS_RECYCLE_RING_FULL: Final = 17
NETDEV_A_PAGE_POOL_STATS_RECYCLE_RELEASED_REFCNT: Final = 18

# attribute-set napi
NETDEV_A_NAPI_IFINDEX: Final = 1
NETDEV_A_NAPI_ID: Final = 2
NETDEV_A_NAPI_IRQ: Final = 3
NETDEV_A_NAPI_PID: Final = 4
NETDEV_A_NAPI_DEFER_HARD_IRQS: Final = 5
NETDEV_A_NAPI_GRO_FLUSH_TIMEOUT: Final = 6
NETDEV_A_NAPI_IRQ_SUSPEND_TIMEOUT: Final = 7
NETDEV_A_NAPI_THREADED: Final = 8

# attribute-set queue
NETDEV_A_QUEUE_ID: Final = 1
NETDEV_A_QUEUE_IFINDEX: Final = 2
NETDEV_A_QUEUE_TYPE: Final = 3
NETDEV_A_QUEUE_NAPI_ID: Final = 4
NETDEV_A_QUEUE_DMABUF: Final = 5
NETDEV_A_QUEUE_IO_URING: Final = 6
NETDEV_A_QUEUE_XSK: Final = 7
NETDEV_A_QUEUE_LEASE: Final = 8

NETDEV_QUEUE_TYPE_RX: Final = 0
NETDEV_QUEUE_TYPE_TX: Final = 1

# attribute-set queue-id (nested in bind-rx "queues" and lease "queue")
NETDEV_A_QUEUE_ID_ID: Final = 1
NETDEV_A_QUEUE_ID_TYPE: Final = 3

# attribute-set lease
NETDEV_A_LEASE_IFINDEX: Final = 1
NETDEV_A_LEASE_QUEUE: Final = 2
NETDEV_A_LEASE_NETNS_ID: Final = 3

# attribute-set qstats
NETDEV_A_QSTATS_IFINDEX: Final = 1
NETDEV_A_QSTATS_QUEUE_TYPE: Final = 2
NETDEV_A_QSTATS_QUEUE_ID: Final = 3
NETDEV_A_QSTATS_SCOPE: Final = 4
NETDEV_QSTATS_SCOPE_QUEUE: Final = 1

# attribute-set dmabuf (bind-rx / bind-tx)
NETDEV_A_DMABUF_IFINDEX: Final = 1
NETDEV_A_DMABUF_QUEUES: Final = 2
NETDEV_A_DMABUF_FD: Final = 3
NETDEV_A_DMABUF_ID: Final = 4
NETDEV_A_DMABUF_RX_PAGE_SIZE: Final = 5

# include/uapi/linux/netlink.h
NLA_F_NESTED: Final = 1 << 15

# ---------------------------------------------------------------------------
# include/uapi/linux/udmabuf.h, include/uapi/linux/fcntl.h, memfd.h
# ---------------------------------------------------------------------------
UDMABUF_CREATE_DTYPE: Final = np.dtype(
    {
        "names": ["memfd", "flags", "offset", "size"],
        "formats": ["<u4", "<u4", "<u8", "<u8"],
        "offsets": [0, 4, 8, 16],
        "itemsize": 24,
    }
)
UDMABUF_FLAGS_CLOEXEC: Final = 0x01
# _IOW('u', 0x42, struct udmabuf_create)
UDMABUF_CREATE: Final = (1 << 30) | (UDMABUF_CREATE_DTYPE.itemsize << 16) | (ord("u") << 8) | 0x42
UDMABUF_SIZE_LIMIT_PARAM: Final = "/sys/module/udmabuf/parameters/size_limit_mb"
MFD_CLOEXEC: Final = 0x0001
MFD_ALLOW_SEALING: Final = 0x0002
F_ADD_SEALS: Final = 1033
F_SEAL_SHRINK: Final = 0x0002
