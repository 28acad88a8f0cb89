"""Backends: the kernel and the emulated devmem NIC behind one protocol."""
