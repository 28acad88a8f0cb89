"""devmemtcp: Python toolkit for Linux Device Memory TCP (devmem TCP).

TCP payloads move between the NIC and a dma-buf (GPU or host memory)
without a host bounce buffer; on machines without a devmem NIC an emulated
NIC stands in, with the kernel's rules.

Data API (arrays and tensors over one or many devmem flows)::

    import devmemtcp, numpy as np
    with devmemtcp.listen("127.0.0.1", 5201) as lis, lis.accept() as ch:   # one host
        arr = ch.recv()                              # numpy array of the sender's dtype/shape
    with devmemtcp.connect("127.0.0.1", 5201) as ch:                       # the other
        ch.send(np.arange(10, dtype=np.float32), tag=0)

    listen(addr, port, *, ifname, backend, memory, streams, queues, dmabuf_size) -> Listener
    connect(addr, port, ...) -> Channel
    Channel.send / recv / recv_into / recv_frags / empty / stats / close
    ChannelError: peer gone mid-message (tag, bytes), bad destination, version mismatch

Library underneath: Receiver (devmem RX loop, batched token release),
Sender (devmem TX with completions), open_dmabuf (host / udmabuf memory),
open_backend (kernel or emulated backend). Command line: ``devmemtcp --help``.

Names are imported on first use, so ``import devmemtcp`` stays light (no
numpy, no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_LAZY = {
    "listen": ("devmemtcp.channel.core", "listen"),
    "connect": ("devmemtcp.channel.core", "connect"),
    "Channel": ("devmemtcp.channel.core", "Channel"),
    "Listener": ("devmemtcp.channel.core", "Listener"),
    "ChannelError": ("devmemtcp.errors", "ChannelError"),
    "ChannelClosed": ("devmemtcp.errors", "ChannelClosed"),
    "DevmemError": ("devmemtcp.errors", "DevmemError"),
    "Receiver": ("devmemtcp.rx", "Receiver"),
    "Sender": ("devmemtcp.tx", "Sender"),
    "open_dmabuf": ("devmemtcp.memory", "open_dmabuf"),
    "open_backend": ("devmemtcp.transfer", "select_backend"),
}

__all__ = [
    "Channel",
    "ChannelClosed",
    "ChannelError",
    "DevmemError",
    "Listener",
    "Receiver",
    "Sender",
    "__version__",
    "connect",
    "listen",
    "open_backend",
    "open_dmabuf",
]

if TYPE_CHECKING:
    from devmemtcp.channel.core import Channel, Listener, connect, listen
    from devmemtcp.errors import ChannelClosed, ChannelError, DevmemError
    from devmemtcp.memory import open_dmabuf
    from devmemtcp.rx import Receiver
    from devmemtcp.transfer import select_backend as open_backend
    from devmemtcp.tx import Sender


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'devmemtcp' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
