"""Helpers shared by the Channel tests: a background call, a connected
pair of channels on the emulated NIC over lo, and the check that a pair
left nothing on the NIC."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import devmemtcp

HOST = "127.0.0.1"


class Bg:
    """Run ``fn`` in a thread; ``result()`` joins and re-raises."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.value = fn()
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 120) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background call did not finish"
        if self.error is not None:
            raise self.error
        return self.value


def nic_clean(peer_killed: bool = False) -> None:
    """Nothing left on lo: no journal, no ntuple rule, no live binding. After
    a peer was killed (-9) its own set-up is left, journaled: ``restore``
    (what ``devmemtcp restore lo`` runs) undoes it, nothing of ours is left."""
    from devmemtcp.backend.emulated import EmulatedBackend
    from devmemtcp.emulation import state as st
    from devmemtcp.setup import Journal, restore

    if peer_killed:
        j = Journal("lo")
        if j.exists():
            j = Journal.load(j.path)
            assert all((e.owner or {}).get("pid") != os.getpid() for e in j.entries)
        assert restore("lo", backend=EmulatedBackend()).ok

    jdir = Path(os.environ["DEVMEMTCP_JOURNAL_DIR"])
    assert not list(jdir.glob("*.json")) if jdir.exists() else True
    nic = EmulatedBackend().nic("lo")
    assert nic.list_rules() == []
    reg = st.load_registry(None)
    assert not [b for b in reg.get("live", {}).values() if b.get("pid") == os.getpid()]


@contextlib.contextmanager
def pair(streams: int = 1, lstreams: int | None = None, dmabuf_size: int | None = None, host: str = HOST,
         clean: bool = True, **kw: Any) -> Iterator[tuple[devmemtcp.Channel, devmemtcp.Channel]]:
    lis = devmemtcp.listen(host, 0, backend="emulated", streams=lstreams or streams, dmabuf_size=dmabuf_size,
                           **kw)
    try:
        acc = Bg(lambda: lis.accept(timeout=30))
        cli = devmemtcp.connect(host, lis.port, backend="emulated", streams=streams, dmabuf_size=dmabuf_size,
                                **kw)
        srv = acc.result()
        try:
            yield srv, cli
        finally:
            cli.close()
            srv.close()
    finally:
        lis.close()
    if clean:
        nic_clean()


def roundtrip(a: devmemtcp.Channel, b: devmemtcp.Channel, obj: Any, **recv_kw: Any) -> Any:
    snd = Bg(lambda: a.send(obj))
    got = b.recv(**recv_kw)
    snd.result()
    return got
