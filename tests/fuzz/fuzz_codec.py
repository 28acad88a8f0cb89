"""Coverage-guided fuzzing of the decoders: RX and TX cmsgs, MSG_ZEROCOPY completions, netlink.

Run by hand for as long as you like (libFuzzer options pass through)::

    python tests/fuzz/fuzz_codec.py -max_total_time=600
    python tests/fuzz/fuzz_codec.py CORPUS_DIR -max_total_time=600

``tools/fuzz.sh`` runs it for a bounded time from a seed corpus (what
``.ci/run`` calls). Each input's first byte picks the decoder, the rest feeds
it. An input is *handled cleanly* when the decoder returns a value that is
what the kernel could have written (checked here) or raises the project's own
error (:class:`devmemtcp.errors.DevmemError`); anything else (a foreign
exception, or garbage accepted silently) is a crash, and libFuzzer keeps the
input (``crash-*``). Counts go to ``$FUZZ_STATS`` (JSON) every 500 inputs
and at exit.

Without atheris (``pip install atheris``, the ``fuzz`` extra) the same checks
run over random mutations of the seeds for ``-max_total_time`` seconds.
"""

from __future__ import annotations

import json
import os
import random
import struct
import sys
import time
from pathlib import Path

try:
    import atheris
except ImportError:  # the fallback below
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["devmemtcp"]):
        from devmemtcp import abi
        from devmemtcp.codec import (
            build_tx_cmsg,
            encode_rx_control,
            encode_zerocopy_completion,
            parse_rx_batch,
            parse_tx_cmsg,
            parse_zerocopy_completions,
            plan_runs,
        )
        from devmemtcp.errors import DevmemError
        from devmemtcp.netlink.genl import attr_name_at, decode_uint, parse_extack
        from devmemtcp.netlink.netdev import DmabufMsg
else:
    from devmemtcp import abi
    from devmemtcp.codec import (
        build_tx_cmsg,
        encode_rx_control,
        encode_zerocopy_completion,
        parse_rx_batch,
        parse_tx_cmsg,
        parse_zerocopy_completions,
        plan_runs,
    )
    from devmemtcp.errors import DevmemError
    from devmemtcp.netlink.genl import attr_name_at, decode_uint, parse_extack
    from devmemtcp.netlink.netdev import DmabufMsg

import numpy as np

TARGETS = ("rx", "tx", "zerocopy", "genl", "planner")
STATS: dict[str, dict[str, int]] = {t: {"tried": 0, "accepted": 0, "refused": 0} for t in TARGETS}
_STATS_PATH = os.environ.get("FUZZ_STATS")
_START = time.monotonic()


def _write_stats() -> None:
    if not _STATS_PATH:
        return
    tried = sum(s["tried"] for s in STATS.values())
    clean = sum(s["accepted"] + s["refused"] for s in STATS.values())
    Path(_STATS_PATH).write_text(json.dumps({"tried": tried, "handled_cleanly": clean,
                                             "seconds": round(time.monotonic() - _START, 1),
                                             "targets": STATS}, indent=1))


def _u(data: bytes, at: int, fmt: str) -> int:
    size = struct.calcsize(fmt)
    chunk = data[at:at + size].ljust(size, b"\0")
    return int(struct.unpack(fmt, chunk)[0])


# -- one decoder each: return True if it accepted the input, False if it refused it cleanly ----
def fuzz_rx(data: bytes) -> bool:
    # 12 bytes of parameters, then the control buffer
    mode = data[0] if data else 0
    clen = _u(data, 1, "<h")
    nbytes = _u(data, 3, "<I") if mode & 1 else None
    dmabuf_size = _u(data, 7, "<I") if mode & 2 else None
    flags = abi.MSG_CTRUNC if mode & 4 else 0
    ctl = data[12:]
    if not mode & 8:
        clen = len(ctl)  # mostly: the whole buffer
    view: object = ctl
    if mode & 16 and len(ctl) >= 8:  # strided and odd dtypes: a uint32 view with a stride
        arr = np.frombuffer(ctl[: len(ctl) // 4 * 4], np.uint32)
        wide = np.zeros(arr.shape[0] * 2, np.uint32)
        wide[::2] = arr
        view = wide[::2]
        clen = min(clen, arr.shape[0] * 4)
    try:
        batch, _id, runs = parse_rx_batch(view, clen, flags, nbytes, dmabuf_size)  # type: ignore[arg-type]
    except DevmemError:
        return False
    t = batch.token.tolist()
    sizes = batch.size.tolist()
    assert all(0 < x < 2**31 for x in t), "token outside 1 .. 2**31 - 1 accepted"
    assert len(set(t)) == len(t), "duplicate token accepted"
    assert all(s > 0 for s in sizes) and all(s > 0 for s in batch.linear_sizes.tolist()), "empty frag"
    if nbytes is not None and (t or batch.linear_sizes.shape[0]):
        assert sum(sizes) + batch.linear_bytes == nbytes, "sizes do not add up"
    if dmabuf_size is not None:
        assert all(o + s <= dmabuf_size for o, s in zip(batch.offset.tolist(), sizes, strict=True)), \
            "fragment past the dma-buf accepted"
    if runs is not None:
        assert [s + i for s, c in zip(runs[0::2], runs[1::2], strict=True) for i in range(c)] == t
    return True


def fuzz_tx(data: bytes) -> bool:
    try:
        bid = parse_tx_cmsg(data)
    except OSError as exc:  # TxControlError: EINVAL with the offset, also a DevmemError
        assert isinstance(exc, DevmemError) and exc.errno == 22, repr(exc)
        return False
    assert 0 <= bid < 2**32
    return True


def fuzz_zerocopy(data: bytes) -> bool:
    clen = _u(data, 0, "<h")
    ctl = data[2:]
    if clen % 3:
        clen = len(ctl)
    try:
        out = parse_zerocopy_completions(ctl, clen)
    except DevmemError:
        return False
    assert all(0 <= lo < 2**32 and 0 <= hi < 2**32 for lo, hi in out)
    return True


def fuzz_genl(data: bytes) -> bool:
    offset = _u(data, 0, "<h")
    body = data[2:]
    name = attr_name_at(body, offset, DmabufMsg)
    assert name is None or isinstance(name, str)
    err, msg, offs, miss = parse_extack(body, bool(offset & 1), bool(offset & 2))
    assert isinstance(err, int) and (msg is None or isinstance(msg, str))
    assert (offs is None or 0 <= offs < 2**32) and (miss is None or 0 <= miss < 2**32)
    try:
        decode_uint(body[:offset % 10])
    except DevmemError:
        return False
    return True


def fuzz_planner(data: bytes) -> bool:
    # ascending, disjoint, non-adjacent runs anywhere in u32 (they may reach past 2**32 - 1)
    starts, counts = [], []
    pos = 0
    for i in range(0, min(len(data), 48) - 5, 6):
        gap = _u(data, i, "<I") % 5000 + 1
        count = _u(data, i + 4, "<H") % 1500 + 1
        starts.append((pos + gap) % 2**32)
        counts.append(count)
        pos += gap + count + 1
    if not starts or pos > 2**32:
        return False
    chunks, ends = plan_runs(starts, counts)
    got = [(int(r["token_start"]) + j) % 2**32
           for c in chunks for r in c for j in range(int(r["token_count"]))]
    want = [(s + j) % 2**32 for s, c in zip(starts, counts, strict=True) for j in range(c)]
    assert got == want and (not ends or ends[-1] == len(want))
    for c in chunks:
        assert c.shape[0] <= abi.MAX_DONTNEED_TOKENS and int(c["token_count"].sum()) <= abi.MAX_DONTNEED_FRAGS
    return True


_FNS = (fuzz_rx, fuzz_tx, fuzz_zerocopy, fuzz_genl, fuzz_planner)


def test_one_input(data: bytes) -> None:
    """libFuzzer's entry: byte 0 picks the decoder."""
    if not data:
        return
    k = data[0] % len(_FNS)
    st = STATS[TARGETS[k]]
    st["tried"] += 1
    ok = _FNS[k](data[1:])
    st["accepted" if ok else "refused"] += 1
    if sum(s["tried"] for s in STATS.values()) % 500 == 0:
        _write_stats()


# -- seeds ------------------------------------------------------------------------------------
def seeds() -> list[bytes]:
    """Valid inputs for every decoder (what the kernel writes), to start from."""
    out = []
    for n, lin in ((1, 0), (3, 100), (40, 0)):
        ctl = bytearray(40 * (n + 1))
        clen = encode_rx_control(ctl, np.arange(n, dtype=np.uint64) * 4096, np.full(n, 4096, np.uint32),
                                 np.arange(1, n + 1, dtype=np.uint32), 5, linear_size=lin)
        params = bytes([3]) + struct.pack("<hII", clen, n * 4096 + lin, 1 << 24) + bytes(1)  # 12 bytes
        out.append(bytes([0]) + params + bytes(ctl[:clen]))
    out.append(bytes([1]) + build_tx_cmsg(7) + struct.pack("<QiiI4x", 20, abi.SOL_SOCKET, abi.SO_MARK, 1))
    zc = encode_zerocopy_completion(1, 5) + encode_zerocopy_completion(6, 6, family=10)
    out.append(bytes([2]) + struct.pack("<h", len(zc) * 3) + zc)
    req = struct.pack("=IHHII", 36, 0x20, 5, 1, 0) + bytes(4) + struct.pack("=HHI", 8, 1, 3) + \
        struct.pack("=HHHHI", 12, 0x8003, 8, 1, 0)
    out.append(bytes([3]) + struct.pack("<h", 24) + req)
    out.append(bytes([4]) + struct.pack("<IH", 1, 1500) + struct.pack("<IH", 3, 2000))
    return out


def _fallback(argv: list[str]) -> None:
    """Random mutation of the seeds for -max_total_time seconds (no atheris)."""
    limit = 60.0
    for a in argv:
        if a.startswith("-max_total_time="):
            limit = float(a.split("=", 1)[1])
    rng = random.Random(int(os.environ.get("FUZZ_SEED", "1")))
    pool = seeds()
    end = time.monotonic() + limit
    while time.monotonic() < end:
        b = bytearray(rng.choice(pool))
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(4)
            if op == 0 and b:
                b[rng.randrange(len(b))] = rng.randrange(256)
            elif op == 1:
                b[rng.randrange(len(b) + 1):0] = os.urandom(rng.randint(1, 16))
            elif op == 2 and len(b) > 2:
                del b[rng.randrange(1, len(b)):]
            else:
                i = rng.randrange(len(b) + 1)
                b[i:i] = b[:rng.randint(0, len(b))]
        test_one_input(bytes(b))
    _write_stats()
    print(json.dumps({"fallback": True, **{k: v for k, v in json.loads(Path(_STATS_PATH).read_text()).items()
                                          if k != "targets"}} if _STATS_PATH else STATS))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--make-seeds":
        d = Path(sys.argv[2])
        d.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(seeds()):
            (d / f"seed-{i}").write_bytes(s)
        return
    import atexit
    atexit.register(_write_stats)
    if atheris is None:
        _fallback(sys.argv[1:])
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
