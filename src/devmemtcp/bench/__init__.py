"""Benchmarks behind ``devmemtcp bench``.

- :mod:`devmemtcp.bench.frags`: the Receiver's per-batch fragment pipeline
  (parse, account, coalesce, SO_DEVMEM_DONTNEED on a real TCP socket) against
  C walks compiled at run time (:mod:`devmemtcp.bench.ctools`, ``cwalk.c``).
- :mod:`devmemtcp.bench.stream`: loopback throughput of raw Python TCP against
  the emulated devmem receiver and sender.
- :mod:`devmemtcp.bench.report`: both, with a PNG plot next to the JSON.

Benchmarks report numbers; they never assert speed. The unit tests check the
JSON schemas and that the figures agree with each other.
"""
