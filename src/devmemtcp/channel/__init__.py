"""The data API: arrays and tensors over devmem TCP (see :mod:`devmemtcp.channel.core`).

Layer: above rx/tx/setup, below cli/bench/torch integration. Modules:
``header`` (sans-I/O control protocol), ``credits`` (flow control
arithmetic), ``gather`` (frags to a contiguous destination), ``core``
(Listener, Channel, listen, connect).
"""

from devmemtcp.channel.core import DEFAULT_DMABUF_SIZE, Channel, Listener, Message, connect, listen
from devmemtcp.errors import ChannelClosed, ChannelError

__all__ = [
    "DEFAULT_DMABUF_SIZE",
    "Channel",
    "ChannelClosed",
    "ChannelError",
    "Listener",
    "Message",
    "connect",
    "listen",
]
