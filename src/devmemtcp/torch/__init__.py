"""torch.distributed backend "devmem": tensors between ranks over devmem TCP.

Importing this module registers the backend (devices: ``cpu``, and
``cuda`` where the CUDA provider can be used: cuda-python imports; CUDA
tensors then need ``memory="cuda:N"`` / ``DEVMEMTCP_MEMORY=cuda:N``)::

    import devmemtcp.torch  # noqa: F401  (registers "devmem")
    import torch.distributed as dist
    dist.init_process_group("devmem")          # env:// as set by torchrun

Point-to-point operations (send, recv, recv from any source, isend, irecv,
batch_isend_irecv, tags) and the collectives that only move bytes
(broadcast, all_gather and its into-tensor and coalesced forms, gather,
scatter, all_to_all and all_to_all_single) run on devmem Channels, one per
pair of ranks, opened on first use. Reductions (all_reduce, reduce,
reduce_scatter) and barrier run on an inner Gloo group built from the same
store: they need arithmetic next to the data, and devmem moves the data.
Configuration: :class:`Options` (``pg_options=``) or the ``DEVMEMTCP_*``
environment variables; see docs/torch.md.

``import devmemtcp`` never imports torch; only this subpackage does.
"""

from __future__ import annotations

import torch.distributed as dist

from devmemtcp.torch.config import Options
from devmemtcp.torch.process_group import BACKEND_NAME, DevmemProcessGroup, create
from devmemtcp.torch.work import DevmemTorchError, DevmemWork

__all__ = ["BACKEND_NAME", "DevmemProcessGroup", "DevmemTorchError", "DevmemWork", "Options", "register"]


def register(name: str = BACKEND_NAME) -> None:
    """Register the backend as ``name`` (done on import for "devmem"; again is a no-op)."""
    if name.upper() in dist.Backend._plugins:
        return
    from devmemtcp.channel.device import cuda_provider_usable

    devices = ["cpu", "cuda"] if cuda_provider_usable() else ["cpu"]
    dist.Backend.register_backend(name, create, extended_api=True, devices=devices)


register()
