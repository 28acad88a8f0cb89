"""devmemtcp: Python toolkit for Linux Device Memory TCP."""

__version__ = "0.1.0"
