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
    from devmemtcp.backend import open_backend
    from devmemtcp.channel.core import Channel, Listener, connect, listen
    from devmemtcp.errors import ChannelClosed, ChannelError, DevmemError
    from devmemtcp.memory import open_dmabuf
    from devmemtcp.rx import Receiver
    from devmemtcp.tx import Sender


def __getattr__(name: str) -> Any:
    # static imports on first use (no import by name: tools/check_layers.py)
    if name in ("listen", "connect", "Channel", "Listener"):
        from devmemtcp.channel import core as mod
    elif name in ("ChannelError", "ChannelClosed", "DevmemError"):
        from devmemtcp import errors as mod  # type: ignore[no-redef]
    elif name == "Receiver":
        from devmemtcp import rx as mod  # type: ignore[no-redef]
    elif name == "Sender":
        from devmemtcp import tx as mod  # type: ignore[no-redef]
    elif name == "open_dmabuf":
        from devmemtcp import memory as mod  # type: ignore[no-redef]
    elif name == "open_backend":
        from devmemtcp import backend as mod  # type: ignore[no-redef]
    else:
        raise AttributeError(f"module 'devmemtcp' has no attribute {name!r}")
    value = getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
