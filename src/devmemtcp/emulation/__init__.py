"""The emulated devmem NIC: a software model of the kernel's devmem rules."""
