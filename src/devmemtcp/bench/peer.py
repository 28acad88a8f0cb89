"""The far end of ``devmemtcp bench stream``, run in its own process.

The same peer serves every run of a comparison, so raw Python TCP and the
emulated devmem path face an identical sender (receive runs) or an identical
sink (send runs); a separate process keeps it off the measured process's GIL.

Run as ``python -m devmemtcp.bench.peer``:

- ``send HOST PORT NBYTES PERIOD CHUNK``: connect, send ``NBYTES`` of
  ncdevmem's pattern of period ``PERIOD`` (:mod:`devmemtcp.pattern`) with
  plain ``socket.send`` from a fixed buffer of about ``CHUNK`` bytes, shut
  down, print one JSON line ``{"bytes", "seconds"}``.
- ``sink HOST COUNT``: listen on ``HOST`` port 0, print the port on the first
  line, then accept ``COUNT`` connections one after the other; each is read
  with ``recv_into`` a fixed 1 MiB buffer until EOF and answered with one JSON
  line ``{"bytes", "seconds", "samples"}`` on stdout (``seconds``: first byte
  to EOF; ``samples``: ``[seconds, bytes]`` pairs every ~20 ms).
"""

from __future__ import annotations

import json
import socket
import sys
import time

import numpy as np

SAMPLE_EVERY_S = 0.02
RECV_BUF = 1 << 20


def pattern_buffer(period: int, chunk: int) -> np.ndarray:
    """A uint8 buffer of ncdevmem's pattern, a whole number of periods long
    (at least ``chunk`` bytes), so it can be sent round and round."""
    from devmemtcp.pattern import pattern_bytes

    n = max(period, ((chunk + period - 1) // period) * period)
    return np.frombuffer(pattern_bytes(period, 0, n), dtype=np.uint8).copy()


def send(host: str, port: int, nbytes: int, period: int, chunk: int) -> dict[str, float | int]:
    """Send ``nbytes`` of the pattern to ``host:port``; return bytes and seconds."""
    buf = memoryview(pattern_buffer(period, chunk).data)
    n = len(buf)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.connect((host, port))
        t0 = time.perf_counter()
        sent = 0
        pos = 0  # position in the pattern buffer
        while sent < nbytes:
            k = s.send(buf[pos:min(n, pos + nbytes - sent)])
            sent += k
            pos = (pos + k) % n
        s.shutdown(socket.SHUT_WR)
        # wait for the receiver to close: the transfer is over when it has everything
        s.recv(1)
        seconds = time.perf_counter() - t0
    return {"bytes": sent, "seconds": seconds}


def drain(conn: socket.socket, buf: memoryview) -> dict[str, object]:
    """Read ``conn`` until EOF into ``buf``; bytes, seconds and throughput samples."""
    total = 0
    samples: list[list[float]] = []
    k = conn.recv_into(buf)
    t0 = time.perf_counter()
    next_sample = t0 + SAMPLE_EVERY_S
    while k:
        total += k
        k = conn.recv_into(buf)
        now = time.perf_counter()
        if now >= next_sample:
            samples.append([now - t0, total])
            next_sample = now + SAMPLE_EVERY_S
    seconds = time.perf_counter() - t0
    if not samples or samples[-1][1] != total:
        samples.append([seconds, total])
    return {"bytes": total, "seconds": seconds, "samples": samples}


def sink(host: str, count: int) -> None:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    buf = memoryview(bytearray(RECV_BUF))
    with socket.socket(fam, socket.SOCK_STREAM) as lsock:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((host, 0))
        lsock.listen(1)
        print(lsock.getsockname()[1], flush=True)
        for _ in range(count):
            conn, _peer = lsock.accept()
            with conn:
                result = drain(conn, buf)
            print(json.dumps(result), flush=True)


def main(argv: list[str]) -> int:
    if len(argv) == 6 and argv[0] == "send":
        result = send(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5]))
        print(json.dumps(result), flush=True)
        return 0
    if len(argv) == 3 and argv[0] == "sink":
        sink(argv[1], int(argv[2]))
        return 0
    print("usage: python -m devmemtcp.bench.peer send HOST PORT NBYTES PERIOD CHUNK\n"
          "       python -m devmemtcp.bench.peer sink HOST COUNT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
