"""Backends: the kernel and the emulated devmem NIC behind one protocol.

:func:`open_backend` chooses and makes one; :mod:`devmemtcp.backend.base`
holds the protocols both implement.
"""

from devmemtcp.backend.factory import open_backend

__all__ = ["open_backend"]
