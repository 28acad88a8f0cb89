"""The emulated devmem NIC: a software model of the kernel's devmem rules.

``netdev`` (bind-rx/bind-tx, the binding registry), ``rx`` (steering
decision, fill, cmsgs, SO_DEVMEM_DONTNEED), ``tx`` (sendmsg checks, zerocopy
completions), ``nic`` (ethtool), and their building blocks ``tokens``,
``pool``, ``steering``, ``state``. Nothing here imports :mod:`devmemtcp.backend`;
:class:`devmemtcp.backend.emulated.EmulatedBackend` puts these behind the
Backend protocol.
"""
