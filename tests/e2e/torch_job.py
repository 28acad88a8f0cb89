"""Launch a multi-rank torch.distributed job of torch_worker.py scenarios (env:// rendezvous,
as torchrun sets it up), optionally each rank in its own network namespace."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKER = Path(os.environ.get("TORCH_TEST_WORKER", Path(__file__).with_name("torch_worker.py")))
SRC = Path(__file__).resolve().parents[2] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class JobResult:
    returncodes: list[int]
    results: dict[int, dict[str, Any]]
    outputs: list[str] = field(default_factory=list)

    def ok(self, ranks: list[int] | None = None) -> bool:
        ranks = list(range(len(self.returncodes))) if ranks is None else ranks
        return all(self.returncodes[r] == 0 and r in self.results for r in ranks)

    def describe(self) -> str:
        return "\n".join(f"--- rank {r} (exit {rc}) ---\n{out[-6000:]}"
                         for r, (rc, out) in enumerate(zip(self.returncodes, self.outputs, strict=True)))


def run_job(scenario: str, world: int, *, transport: str = "channel", env: dict[str, str] | None = None,
            netns: list[str] | None = None, master_addr: str = "127.0.0.1",
            rank_env: list[dict[str, str]] | None = None, timeout: float = 240.0) -> JobResult:
    """Run ``world`` ranks of ``scenario``; every rank is killed after ``timeout`` seconds."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="torchjob-") as tmp:
        # Private NIC state unless the caller (pytest's fixture) set it: the job's emulated
        # NICs and journals are its own.
        private = {"DEVMEMTCP_EMU_DIR": os.path.join(tmp, "emu"),
                   "DEVMEMTCP_JOURNAL_DIR": os.path.join(tmp, "journal")}
        out = os.path.join(tmp, "res")
        procs = []
        logs = []
        for r in range(world):
            e = dict(os.environ)
            for k, v in private.items():
                e.setdefault(k, v)
            e.update(env or {})
            if rank_env:
                e.update(rank_env[r])
            e.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), MASTER_ADDR=master_addr,
                     MASTER_PORT=str(port), TORCH_TEST_TRANSPORT=transport, TORCH_TEST_OUT=out,
                     PYTHONPATH=f"{SRC}{os.pathsep}{e.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
            cmd = [sys.executable, str(WORKER), scenario]
            if netns:
                cmd = ["ip", "netns", "exec", netns[r], *cmd]
            log = open(os.path.join(tmp, f"log.{r}"), "w+")  # noqa: SIM115 (closed below)
            logs.append(log)
            procs.append(subprocess.Popen(cmd, env=e, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
            log.close()
        results = {}
        for r in range(world):
            try:
                with open(f"{out}.{r}") as f:
                    results[r] = json.loads(f.read())
            except FileNotFoundError:
                pass
        return JobResult([p.returncode for p in procs], results, outputs)
