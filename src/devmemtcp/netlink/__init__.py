"""Netlink clients: the netdev family and the ethtool pieces devmem needs."""
