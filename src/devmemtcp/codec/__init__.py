"""Sans-I/O codecs for the devmem socket control messages and token release.

Pure functions of bytes, no sockets: they parse and build exactly the bytes
the kernel reads and writes, so the Receiver, the emulated NIC and the
benchmarks all run the same code.

* :mod:`~devmemtcp.codec.rx`: the RX control buffer (``tcp_recvmsg_dmabuf``,
  net/ipv4/tcp.c) to and from a :class:`FragBatch`.
* :mod:`~devmemtcp.codec.tx`: the SCM_DEVMEM_DMABUF cmsg of a devmem sendmsg
  (``__sock_cmsg_send``, net/core/sock.c).
* :mod:`~devmemtcp.codec.zerocopy`: MSG_ZEROCOPY completions from the error
  queue (net/core/skbuff.c ``__msg_zerocopy_callback``,
  net/ipv4/ip_sockglue.c ``ip_recv_error``).
* :mod:`~devmemtcp.codec.tokens`: the token run algebra, the
  SO_DEVMEM_DONTNEED planner (``sock_devmem_dontneed``, net/core/sock.c) and
  the Receiver's :class:`ReleaseQueue`.
* :mod:`~devmemtcp.codec.errors`: what the decoders raise.

Imports only :mod:`devmemtcp.abi`, :mod:`devmemtcp.errors` and numpy.
"""

from devmemtcp.codec.errors import ControlBufferError, FragRecordError, KernelInvariantError, TxControlError
from devmemtcp.codec.rx import (
    FragBatch,
    encode_rx_control,
    parse_rx_batch,
    parse_rx_control,
    parse_rx_uniform,
    rx_cmsgs_written,
    rx_control_space,
)
from devmemtcp.codec.tokens import ReleaseQueue, drop_tokens, merge_runs, plan_dontneed, plan_runs, token_runs
from devmemtcp.codec.tx import build_tx_cmsg, parse_tx_cmsg
from devmemtcp.codec.zerocopy import encode_zerocopy_completion, parse_zerocopy_completions

__all__ = [
    "ControlBufferError",
    "FragBatch",
    "FragRecordError",
    "KernelInvariantError",
    "ReleaseQueue",
    "TxControlError",
    "build_tx_cmsg",
    "drop_tokens",
    "encode_rx_control",
    "encode_zerocopy_completion",
    "merge_runs",
    "parse_rx_batch",
    "parse_rx_control",
    "parse_rx_uniform",
    "parse_tx_cmsg",
    "parse_zerocopy_completions",
    "plan_dontneed",
    "plan_runs",
    "rx_cmsgs_written",
    "rx_control_space",
    "token_runs",
]
