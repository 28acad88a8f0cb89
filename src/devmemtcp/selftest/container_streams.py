"""nk_devmem.py's stream cases in a :class:`~devmemtcp.selftest.container.ContainerEnv`.

RX (check_nk_rx, check_nk_rx_hds): the physical NIC is set up in the host
namespace (header split, hds-thresh 0, an ntuple rule steering the
container's flow to the leased queue), the container receives with
``receive_stream(..., nic_config=False)`` on the guest (bind-rx binds the
leased physical queue) while the peer sends ncdevmem's pattern. TX
(check_nk_tx, check_nk_tx_chunks): the container sends from a dma-buf bound
on the guest (bind-tx's DMA device is the physical NIC) to a validating peer.
"""

from __future__ import annotations

import socket
from typing import Any

from devmemtcp.selftest.catalogue import CaseFailed

VALIDATE = 7


def _describe(exc: BaseException) -> str:
    from devmemtcp.errors import DevmemError

    return exc.message if isinstance(exc, DevmemError) else f"{type(exc).__name__}: {exc}"


def container_rx(env: Any, sizes: list[int], nodelay: bool) -> dict[str, Any]:
    """Receive ``sizes`` pattern bytes in the container through the leased queue."""
    from devmemtcp.pattern import pattern_bytes
    from devmemtcp.transfer import receive_stream

    gq = env.lease()
    total = sum(sizes)
    data = pattern_bytes(VALIDATE, 0, total).tobytes()
    port = env.free_port(env.ctr_ns, env.ctr_addr)
    senders: list[Any] = []

    def send() -> None:
        with socket.create_connection((env.ctr_addr, port), timeout=30) as s:
            if nodelay:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            off = 0
            for size in sizes:
                s.sendall(data[off:off + size])
                off += size

    def on_ready(_port: int) -> None:
        senders.append(env.start_in(env.peer_ns, send))

    def recv() -> Any:
        return receive_stream(env.ctr_addr, port, ifname=env.guest, queues=(gq, 1), validate=VALIDATE,
                              memory="host", size=16 << 20, backend=env.backend, nic_config=False,
                              accept_timeout=30, rcvlowat=0, on_ready=on_ready)

    with env.phys_ready(port=port):
        result = env.run_in(env.ctr_ns, recv)
    for t, box in senders:
        t.join(30)
        if "e" in box:
            raise CaseFailed(f"the peer could not send: {_describe(box['e'])}")
    if result.bytes != total:
        raise CaseFailed(f"received {result.bytes} bytes, sent {total}")
    if result.flow_steering_errors or result.frags == 0:
        raise CaseFailed(f"the flow did not land on the leased queue ({result.frags} frags, "
                         f"{result.flow_steering_errors} readable bytes)")
    if not result.validated:
        raise CaseFailed(result.error or "the stream was not validated")
    return {"bytes": result.bytes, "frags": result.frags, "linear_bytes": result.linear_bytes,
            "non_page_aligned_frags": result.non_page_aligned_frags, "frag_sizes": result.frag_sizes,
            "guest_queue": gq, "phys_queue": env.lease_queue, "binding_id": result.binding_id}


def container_tx(env: Any, nbytes: int, chunk: int) -> dict[str, Any]:
    """Send ``nbytes`` of the pattern from the container (``chunk`` bytes per iovec)."""
    from devmemtcp.pattern import PatternChecker
    from devmemtcp.transfer import send_stream

    env.lease()
    port = env.free_port(env.peer_ns, env.peer_addr)
    ls = env.run_in(env.peer_ns, lambda: socket.create_server((env.peer_addr, port)))
    box: dict[str, Any] = {}

    def serve() -> None:
        ls.settimeout(30)
        conn, _ = ls.accept()
        with conn:
            conn.settimeout(30)
            checker = PatternChecker(VALIDATE)
            while chunk_ := conn.recv(1 << 20):
                checker.check(chunk_)
            box["bytes"] = checker.offset

    t, err = env.start_in(env.peer_ns, serve)
    try:
        result = env.run_in(env.ctr_ns, lambda: send_stream(
            env.peer_addr, port, nbytes=nbytes, ifname=env.guest, validate=VALIDATE, chunk=chunk,
            memory="host", size=16 << 20, backend=env.backend))
        t.join(60)
    finally:
        ls.close()
    if "e" in err:
        raise CaseFailed(f"the peer saw: {_describe(err['e'])}")
    if box.get("bytes") != nbytes:
        raise CaseFailed(f"the peer received {box.get('bytes')} bytes, {nbytes} were sent")
    return {"bytes": result.bytes, "chunk": chunk, "completions": result.completions,
            "binding_id": result.binding_id}
