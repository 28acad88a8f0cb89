"""Point-to-point and collectives over the "devmem" torch.distributed backend.

Run it under torchrun (one host, or one process per host with --nnodes)::

    torchrun --nproc-per-node 2 examples/torch_p2p.py

or on its own, which starts two ranks on this machine (127.0.0.1)::

    python examples/torch_p2p.py

Needs ``pip install 'devmemtcp[torch]'`` and root (the devmem set-up changes
NIC settings; on a machine without a devmem NIC the emulated NIC stands in).
"""

from __future__ import annotations

import logging
import os
import sys

import torch
import torch.distributed as dist

import devmemtcp.torch  # registers the "devmem" backend


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    dist.init_process_group("devmem")  # env://: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    peer = (rank + 1) % world

    # send / recv: rank 0 sends 16 MiB of float32 to rank 1 (devmem flows)
    x = torch.arange(4 << 20, dtype=torch.float32)
    if rank == 0:
        dist.send(x, 1)
    elif rank == 1:
        y = torch.empty_like(x)
        dist.recv(y, 0)
        assert torch.equal(x, y)
        print(f"rank 1: received {y.numel() * 4 >> 20} MiB from rank 0, equal to what was sent")

    # a ring with batch_isend_irecv: every rank sends to the next and receives from the previous
    send = torch.full((1024,), float(rank))
    recv = torch.empty(1024)
    reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, send, peer),
                                   dist.P2POp(dist.irecv, recv, (rank - 1) % world)])
    for req in reqs:
        req.wait()
    print(f"rank {rank}: ring got {recv[0].item():.0f} from rank {(rank - 1) % world}")

    # a collective that moves bytes (devmem) and one that computes (the inner Gloo group)
    t = torch.full((4,), float(rank))
    dist.broadcast(t, src=0)
    s = torch.ones(4) * (rank + 1)
    dist.all_reduce(s)
    print(f"rank {rank}: broadcast -> {t.tolist()}, all_reduce -> {s.tolist()}")

    pg = dist.distributed_c10d._get_default_group()
    if isinstance(pg, devmemtcp.torch.DevmemProcessGroup):
        for r, st in pg.link_stats().items():
            print(f"rank {rank}: link to rank {r}: {st.get('backend')} on {st.get('ifname')}, "
                  f"{st.get('tx_bytes')} bytes sent, {st.get('rx_bytes')} received")
    dist.destroy_process_group()


def _spawned(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    main()


if __name__ == "__main__":
    if "RANK" in os.environ:
        main()
    else:
        import socket

        import torch.multiprocessing as mp

        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            free = sk.getsockname()[1]
        mp.spawn(_spawned, args=(2, free), nprocs=2)
        sys.exit(0)
