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
#: tcp_info.tcpi_state of a socket that is closed (reset by the peer, or done):
#: TCP_CLOSE in include/net/tcp_states.h
TCP_STATE_CLOSE: Final = 7
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

# Other SOL_SOCKET cmsg types __sock_cmsg_send accepts on sendmsg
# (include/uapi/asm-generic/socket.h, include/linux/socket.h; net/core/sock.c).
SCM_RIGHTS: Final = 1
SCM_CREDENTIALS: Final = 2
SO_PRIORITY: Final = 12
SO_MARK: Final = 36
SO_TIMESTAMPING_OLD: Final = 37
SCM_TXTIME: Final = 61
SCM_TS_OPT_ID: Final = 81

# recvmsg/sendmsg flags (include/linux/socket.h)
MSG_PEEK: Final = 0x2
MSG_CTRUNC: Final = 0x8
MSG_TRUNC: Final = 0x20
MSG_DONTWAIT: Final = 0x40
MSG_WAITALL: Final = 0x100
MSG_ERRQUEUE: Final = 0x2000
MSG_NOSIGNAL: Final = 0x4000
MSG_MORE: Final = 0x8000
MSG_SOCK_DEVMEM: Final = 0x2000000
MSG_ZEROCOPY: Final = 0x4000000

# include/uapi/linux/errqueue.h
SO_EE_ORIGIN_ZEROCOPY: Final = 5
SO_EE_CODE_ZEROCOPY_COPIED: Final = 1
IP_RECVERR: Final = 11
IPV6_RECVERR: Final = 25
# net/ipv4/ip_sockglue.c ip_recv_error / net/ipv6/datagram.c ipv6_recv_error:
# the IP_RECVERR / IPV6_RECVERR cmsg payload is sock_extended_err followed by
# the offender address (sockaddr_in, 16 bytes / sockaddr_in6, 28 bytes).
SOCKADDR_IN_SIZE: Final = 16
SOCKADDR_IN6_SIZE: Final = 28

# ---------------------------------------------------------------------------
# net/ipv4/tcp.c (tcp_recvmsg_dmabuf), net/core/sock.c (sock_devmem_dontneed)
# ---------------------------------------------------------------------------
PAGE_SIZE: Final = 4096  # net_iov size on 6.12-7.2 (include/net/netmem.h)
MAX_DONTNEED_TOKENS: Final = 128  # ranges per SO_DEVMEM_DONTNEED call
MAX_DONTNEED_FRAGS: Final = 1024  # frags freed per call before it stops
TOKEN_LIMIT: Final = (1 << 31) - 1  # xa_limit_31b: tokens fit in 31 bits

# include/linux/errno.h (kernel-internal, not in glibc's errno): recvmsg with
# MSG_SOCK_DEVMEM whose control buffer cannot hold one cmsg, nothing consumed
# ("tcp: Expose real errno for devmem recvmsg", 6.18; EFAULT before)
ETOOSMALL: Final = 525
ETOOSMALL_SINCE: Final = (6, 18)
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
UIO_MAXIOV: Final = 1024  # include/uapi/linux/uio.h: more iovecs per sendmsg is EMSGSIZE

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

# ---------------------------------------------------------------------------
# include/uapi/linux/netlink.h, include/uapi/linux/genetlink.h
# ---------------------------------------------------------------------------
NETLINK_GENERIC: Final = 16  # netlink protocol number
NETLINK_CAP_ACK: Final = 10
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLM_F_DUMP: Final = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR: Final = 0x2
NLMSG_DONE: Final = 0x3
NLM_F_CAPPED: Final = 0x100  # on NLMSG_ERROR: request body not echoed
NLM_F_ACK_TLVS: Final = 0x200  # on NLMSG_ERROR: extack TLVs follow
# enum nlmsgerr_attrs: TLVs after struct nlmsgerr when NETLINK_EXT_ACK is on
NLMSGERR_ATTR_MSG: Final = 1
NLMSGERR_ATTR_OFFS: Final = 2
NLMSGERR_ATTR_COOKIE: Final = 3
NLMSGERR_ATTR_POLICY: Final = 4
NLMSGERR_ATTR_MISS_TYPE: Final = 5
NLMSGERR_ATTR_MISS_NEST: Final = 6
GENL_ID_CTRL: Final = 0x10
CTRL_CMD_GETFAMILY: Final = 3

# ---------------------------------------------------------------------------
# include/uapi/linux/ethtool_netlink_generated.h (family "ethtool", v1)
# ---------------------------------------------------------------------------
ETHTOOL_FAMILY_NAME: Final = "ethtool"
ETHTOOL_FAMILY_VERSION: Final = 1

ETHTOOL_MSG_STRSET_GET: Final = 1
ETHTOOL_MSG_FEATURES_GET: Final = 11
ETHTOOL_MSG_RINGS_GET: Final = 15
ETHTOOL_MSG_RINGS_SET: Final = 16
ETHTOOL_MSG_CHANNELS_GET: Final = 17
ETHTOOL_MSG_CHANNELS_SET: Final = 18
ETHTOOL_MSG_RSS_GET: Final = 38
ETHTOOL_MSG_RSS_SET: Final = 48  # 6.17+ (probe the family's op list)

# attribute-set header
ETHTOOL_A_HEADER_DEV_INDEX: Final = 1
ETHTOOL_A_HEADER_DEV_NAME: Final = 2
ETHTOOL_A_HEADER_FLAGS: Final = 3
ETHTOOL_A_HEADER_PHY_INDEX: Final = 4
# enum ethtool_header_flags
ETHTOOL_FLAG_COMPACT_BITSETS: Final = 1
ETHTOOL_FLAG_OMIT_REPLY: Final = 2
ETHTOOL_FLAG_STATS: Final = 4

# attribute-set rings
ETHTOOL_A_RINGS_HEADER: Final = 1
ETHTOOL_A_RINGS_RX_MAX: Final = 2
ETHTOOL_A_RINGS_RX_MINI_MAX: Final = 3
ETHTOOL_A_RINGS_RX_JUMBO_MAX: Final = 4
ETHTOOL_A_RINGS_TX_MAX: Final = 5
ETHTOOL_A_RINGS_RX: Final = 6
ETHTOOL_A_RINGS_RX_MINI: Final = 7
ETHTOOL_A_RINGS_RX_JUMBO: Final = 8
ETHTOOL_A_RINGS_TX: Final = 9
ETHTOOL_A_RINGS_RX_BUF_LEN: Final = 10
ETHTOOL_A_RINGS_TCP_DATA_SPLIT: Final = 11
ETHTOOL_A_RINGS_CQE_SIZE: Final = 12
ETHTOOL_A_RINGS_TX_PUSH: Final = 13
ETHTOOL_A_RINGS_RX_PUSH: Final = 14
ETHTOOL_A_RINGS_TX_PUSH_BUF_LEN: Final = 15
ETHTOOL_A_RINGS_TX_PUSH_BUF_LEN_MAX: Final = 16
ETHTOOL_A_RINGS_HDS_THRESH: Final = 17
ETHTOOL_A_RINGS_HDS_THRESH_MAX: Final = 18

# enum ethtool_tcp_data_split
ETHTOOL_TCP_DATA_SPLIT_UNKNOWN: Final = 0
ETHTOOL_TCP_DATA_SPLIT_DISABLED: Final = 1
ETHTOOL_TCP_DATA_SPLIT_ENABLED: Final = 2
TCP_DATA_SPLIT_NAMES: Final[dict[int, str]] = {0: "unknown", 1: "disabled", 2: "enabled"}

# attribute-set channels
ETHTOOL_A_CHANNELS_HEADER: Final = 1
ETHTOOL_A_CHANNELS_RX_MAX: Final = 2
ETHTOOL_A_CHANNELS_TX_MAX: Final = 3
ETHTOOL_A_CHANNELS_OTHER_MAX: Final = 4
ETHTOOL_A_CHANNELS_COMBINED_MAX: Final = 5
ETHTOOL_A_CHANNELS_RX_COUNT: Final = 6
ETHTOOL_A_CHANNELS_TX_COUNT: Final = 7
ETHTOOL_A_CHANNELS_OTHER_COUNT: Final = 8
ETHTOOL_A_CHANNELS_COMBINED_COUNT: Final = 9

# attribute-set features (bitsets)
ETHTOOL_A_FEATURES_HEADER: Final = 1
ETHTOOL_A_FEATURES_HW: Final = 2
ETHTOOL_A_FEATURES_WANTED: Final = 3
ETHTOOL_A_FEATURES_ACTIVE: Final = 4
ETHTOOL_A_FEATURES_NOCHANGE: Final = 5
# attribute-set bitset / bitset-bits / bitset-bit
ETHTOOL_A_BITSET_NOMASK: Final = 1
ETHTOOL_A_BITSET_SIZE: Final = 2
ETHTOOL_A_BITSET_BITS: Final = 3
ETHTOOL_A_BITSET_VALUE: Final = 4
ETHTOOL_A_BITSET_MASK: Final = 5
ETHTOOL_A_BITSET_BITS_BIT: Final = 1
ETHTOOL_A_BITSET_BIT_INDEX: Final = 1
ETHTOOL_A_BITSET_BIT_NAME: Final = 2
ETHTOOL_A_BITSET_BIT_VALUE: Final = 3
NTUPLE_FEATURE_NAME: Final = "rx-ntuple-filter"  # netdev_features_strings[NETIF_F_NTUPLE_BIT]

# attribute-set rss
ETHTOOL_A_RSS_HEADER: Final = 1
ETHTOOL_A_RSS_CONTEXT: Final = 2
ETHTOOL_A_RSS_HFUNC: Final = 3
ETHTOOL_A_RSS_INDIR: Final = 4
ETHTOOL_A_RSS_HKEY: Final = 5
ETHTOOL_A_RSS_INPUT_XFRM: Final = 6
ETHTOOL_A_RSS_START_CONTEXT: Final = 7

# ---------------------------------------------------------------------------
# include/uapi/linux/netdev.h: further netdev attributes used by the client
# ---------------------------------------------------------------------------
# attribute-set qstats: counters (all "uint"), numbered from 8
NETDEV_A_QSTATS_COUNTERS: Final[dict[int, str]] = {
    8: "rx-packets", 9: "rx-bytes", 10: "tx-packets", 11: "tx-bytes",
    12: "rx-alloc-fail", 13: "rx-hw-drops", 14: "rx-hw-drop-overruns",
    15: "rx-csum-complete", 16: "rx-csum-unnecessary", 17: "rx-csum-none", 18: "rx-csum-bad",
    19: "rx-hw-gro-packets", 20: "rx-hw-gro-bytes", 21: "rx-hw-gro-wire-packets",
    22: "rx-hw-gro-wire-bytes", 23: "rx-hw-drop-ratelimits", 24: "tx-hw-drops",
    25: "tx-hw-drop-errors", 26: "tx-csum-none", 27: "tx-needs-csum", 28: "tx-hw-gso-packets",
    29: "tx-hw-gso-bytes", 30: "tx-hw-gso-wire-packets", 31: "tx-hw-gso-wire-bytes",
    32: "tx-hw-drop-ratelimits", 33: "tx-stop", 34: "tx-wake",
}
# attribute-set xsk-info / io-uring-provider-info are empty nests (presence = in use)
NETDEV_QUEUE_TYPE_NAMES: Final[dict[int, str]] = {NETDEV_QUEUE_TYPE_RX: "rx", NETDEV_QUEUE_TYPE_TX: "tx"}

# ---------------------------------------------------------------------------
# linux/ethtool.h (ioctl): include/uapi/linux/ethtool.h, include/uapi/linux/sockios.h,
# include/uapi/linux/if.h; handled by net/ethtool/ioctl.c (dev_ethtool).
# ntuple rules have no ethtool-netlink op; channels and RSS are the fallbacks
# for kernels/drivers without the netlink ops. Structs: 64-bit layouts.
# ---------------------------------------------------------------------------
SIOCETHTOOL: Final = 0x8946
IFNAMSIZ: Final = 16
IFREQ_SIZE: Final = 40  # struct ifreq; ifr_data (a user pointer) at offset 16
IFREQ_DATA_OFFSET: Final = 16

ETHTOOL_GDRVINFO: Final = 0x03
ETHTOOL_GRXRINGS: Final = 0x2D
ETHTOOL_GRXCLSRLCNT: Final = 0x2E
ETHTOOL_GRXCLSRULE: Final = 0x2F
ETHTOOL_GRXCLSRLALL: Final = 0x30
ETHTOOL_SRXCLSRLDEL: Final = 0x31
ETHTOOL_SRXCLSRLINS: Final = 0x32
ETHTOOL_GRXFHINDIR: Final = 0x38
ETHTOOL_SRXFHINDIR: Final = 0x39
ETHTOOL_GCHANNELS: Final = 0x3C
ETHTOOL_SCHANNELS: Final = 0x3D

ETHTOOL_IOCTL_NAMES: Final[dict[int, str]] = {
    ETHTOOL_GDRVINFO: "ETHTOOL_GDRVINFO",
    ETHTOOL_GRXRINGS: "ETHTOOL_GRXRINGS",
    ETHTOOL_GRXCLSRLCNT: "ETHTOOL_GRXCLSRLCNT",
    ETHTOOL_GRXCLSRULE: "ETHTOOL_GRXCLSRULE",
    ETHTOOL_GRXCLSRLALL: "ETHTOOL_GRXCLSRLALL",
    ETHTOOL_SRXCLSRLDEL: "ETHTOOL_SRXCLSRLDEL",
    ETHTOOL_SRXCLSRLINS: "ETHTOOL_SRXCLSRLINS",
    ETHTOOL_GRXFHINDIR: "ETHTOOL_GRXFHINDIR",
    ETHTOOL_SRXFHINDIR: "ETHTOOL_SRXFHINDIR",
    ETHTOOL_GCHANNELS: "ETHTOOL_GCHANNELS",
    ETHTOOL_SCHANNELS: "ETHTOOL_SCHANNELS",
}

# flow types (ethtool_rx_flow_spec.flow_type) and flags
TCP_V4_FLOW: Final = 0x01
TCP_V6_FLOW: Final = 0x05
FLOW_EXT: Final = 0x80000000
FLOW_MAC_EXT: Final = 0x40000000
FLOW_RSS: Final = 0x20000000
FLOW_TYPE_FLAGS: Final = FLOW_EXT | FLOW_MAC_EXT | FLOW_RSS

# rule locations (ethtool_rx_flow_spec.location) and actions (ring_cookie)
RX_CLS_LOC_SPECIAL: Final = 0x80000000  # GRXCLSRLCNT data flag: driver picks slots
RX_CLS_LOC_ANY: Final = 0xFFFFFFFF
RX_CLS_LOC_FIRST: Final = 0xFFFFFFFE
RX_CLS_LOC_LAST: Final = 0xFFFFFFFD
RX_CLS_FLOW_DISC: Final = 0xFFFFFFFFFFFFFFFF
RX_CLS_FLOW_WAKE: Final = 0xFFFFFFFFFFFFFFFE
ETHTOOL_RX_FLOW_SPEC_RING: Final = 0x00000000FFFFFFFF
ETHTOOL_RX_FLOW_SPEC_RING_VF: Final = 0x000000FF00000000
ETH_RXFH_INDIR_NO_CHANGE: Final = 0xFFFFFFFF

# struct ethtool_tcpip4_spec / ethtool_tcpip6_spec (addresses and ports big-endian)
ETHTOOL_TCPIP4_SPEC_DTYPE: Final = np.dtype(
    {
        "names": ["ip4src", "ip4dst", "psrc", "pdst", "tos"],
        "formats": [("u1", (4,)), ("u1", (4,)), ">u2", ">u2", "u1"],
        "offsets": [0, 4, 8, 10, 12],
        "itemsize": 16,
    }
)
ETHTOOL_TCPIP6_SPEC_DTYPE: Final = np.dtype(
    {
        "names": ["ip6src", "ip6dst", "psrc", "pdst", "tclass"],
        "formats": [("u1", (16,)), ("u1", (16,)), ">u2", ">u2", "u1"],
        "offsets": [0, 16, 32, 34, 36],
        "itemsize": 40,
    }
)
ETHTOOL_FLOW_UNION_SIZE: Final = 52  # union ethtool_flow_union (hdata[52])
# struct ethtool_flow_ext
ETHTOOL_FLOW_EXT_DTYPE: Final = np.dtype(
    {
        "names": ["h_dest", "vlan_etype", "vlan_tci", "data"],
        "formats": [("u1", (6,)), ">u2", ">u2", (">u4", (2,))],
        "offsets": [2, 8, 10, 12],
        "itemsize": 20,
    }
)
# struct ethtool_rx_flow_spec: the h_u/m_u unions appear once per member
# (overlapping fields at the same offset).
ETHTOOL_RX_FLOW_SPEC_DTYPE: Final = np.dtype(
    {
        "names": ["flow_type", "h_tcp4", "h_tcp6", "h_ext", "m_tcp4", "m_tcp6", "m_ext",
                  "ring_cookie", "location"],
        "formats": ["<u4", ETHTOOL_TCPIP4_SPEC_DTYPE, ETHTOOL_TCPIP6_SPEC_DTYPE, ETHTOOL_FLOW_EXT_DTYPE,
                    ETHTOOL_TCPIP4_SPEC_DTYPE, ETHTOOL_TCPIP6_SPEC_DTYPE, ETHTOOL_FLOW_EXT_DTYPE,
                    "<u8", "<u4"],
        "offsets": [0, 4, 4, 56, 76, 76, 128, 152, 160],
        "itemsize": 168,
    }
)
# struct ethtool_rxnfc; rule_locs[] (u32, GRXCLSRLALL) starts at offset 188.
ETHTOOL_RXNFC_DTYPE: Final = np.dtype(
    {
        "names": ["cmd", "flow_type", "data", "fs", "rule_cnt"],
        "formats": ["<u4", "<u4", "<u8", ETHTOOL_RX_FLOW_SPEC_DTYPE, "<u4"],
        "offsets": [0, 4, 8, 16, 184],
        "itemsize": 192,
    }
)
ETHTOOL_RXNFC_RULE_LOCS_OFFSET: Final = 188
# struct ethtool_rxfh_indir; ring_index[] (u32) follows at offset 8.
ETHTOOL_RXFH_INDIR_DTYPE: Final = np.dtype(
    {"names": ["cmd", "size"], "formats": ["<u4", "<u4"], "offsets": [0, 4], "itemsize": 8}
)
# struct ethtool_channels
ETHTOOL_CHANNELS_DTYPE: Final = np.dtype(
    {
        "names": ["cmd", "max_rx", "max_tx", "max_other", "max_combined",
                  "rx_count", "tx_count", "other_count", "combined_count"],
        "formats": ["<u4"] * 9,
        "offsets": [0, 4, 8, 12, 16, 20, 24, 28, 32],
        "itemsize": 36,
    }
)
# struct ethtool_drvinfo
ETHTOOL_DRVINFO_DTYPE: Final = np.dtype(
    {
        "names": ["cmd", "driver", "version", "fw_version", "bus_info", "erom_version",
                  "n_priv_flags", "n_stats", "testinfo_len", "eedump_len", "regdump_len"],
        "formats": ["<u4", "S32", "S32", "S32", "S32", "S32", "<u4", "<u4", "<u4", "<u4", "<u4"],
        "offsets": [0, 4, 36, 68, 100, 132, 176, 180, 184, 188, 192],
        "itemsize": 196,
    }
)

# SIOCETHTOOL, ETHTOOL_GDRVINFO, IFNAMSIZ and ETHTOOL_DRVINFO_DTYPE are defined once, in the
# "linux/ethtool.h (ioctl)" section above.

# ---------------------------------------------------------------------------
# include/uapi/linux/sched.h, include/uapi/linux/mount.h (netns entry, private sysfs)
# ---------------------------------------------------------------------------
CLONE_NEWNS: Final = 0x00020000
CLONE_NEWNET: Final = 0x40000000
MS_REC: Final = 0x4000
MS_PRIVATE: Final = 1 << 18
NETNS_RUN_DIR: Final = "/run/netns"  # iproute2's named namespaces (ip netns add)
# include/uapi/linux/sockios.h, include/uapi/linux/if.h
SIOCGIFFLAGS: Final = 0x8913
IFF_UP: Final = 0x1

# ---------------------------------------------------------------------------
# include/uapi/linux/capability.h
# ---------------------------------------------------------------------------
CAP_NET_ADMIN: Final = 12
