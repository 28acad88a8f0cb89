"""``devmemtcp bench report``: run both benchmarks, write the JSON and a PNG plot.

Files written into ``out_dir``: ``bench.json`` (``{"frags": ..., "stream": ...}``,
the objects of :func:`devmemtcp.bench.frags.run_frags` and
:func:`devmemtcp.bench.stream.run_stream`) and ``bench.png``: throughput over
time of every stream run (receive and send), fragments per second over time
of the Receiver's pipeline with the C walks and the 12 M frags/s target as
reference lines, and the headline ratios against their targets.

The plot needs matplotlib (the ``plot`` extra: ``pip install 'devmemtcp[plot]'``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from devmemtcp.errors import DevmemError

JSON_NAME = "bench.json"
PNG_NAME = "bench.png"


def require_matplotlib() -> Any:
    """Import matplotlib with the non-interactive Agg backend, or raise DevmemError."""
    try:
        import matplotlib
    except ImportError:
        raise DevmemError("bench report draws its plot with matplotlib, which is not installed",
                          "pip install 'devmemtcp[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def rate_series(samples: list[list[float]], scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Turn cumulative ``[seconds, amount]`` samples into ``(midpoint seconds,
    rate * scale)`` arrays; a sample less than 1 ms after the previous kept
    one is skipped (the last sample replaces its predecessor instead) so a
    burst does not spike the curve."""
    if len(samples) < 2:
        return np.empty(0), np.empty(0)
    arr = np.asarray(samples, dtype=np.float64)
    keep = [0]
    last = arr.shape[0] - 1
    for i in range(1, last + 1):
        if arr[i, 0] - arr[keep[-1], 0] >= 1e-3:
            keep.append(i)
        elif i == last and len(keep) > 1:
            keep[-1] = i  # the final sample closes the run: it replaces the one just before it
    a = arr[keep]
    dt = np.diff(a[:, 0])
    da = np.diff(a[:, 1])
    return (a[1:, 0] + a[:-1, 0]) / 2, da / dt * scale


_COLOURS = {
    "raw_recv": "tab:blue", "emulated_recv": "tab:orange", "emulated_recv_validated": "tab:red",
    "emulated_recv_quarter": "tab:gray", "raw_send": "tab:blue", "emulated_send": "tab:orange",
    "raw_recv_plain": "tab:cyan", "raw_send_plain": "tab:cyan",
}


def plot(result: dict[str, Any], path: Path) -> None:
    """Draw ``result`` (``{"frags": ..., "stream": ...}``, either may be absent) into a PNG at ``path``."""
    plt = require_matplotlib()
    frags = result.get("frags")
    stream = result.get("stream")
    panels = (2 if stream else 0) + (1 if frags else 0)
    if panels == 0:
        raise DevmemError("nothing to plot", "run at least one of the benchmarks")
    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 6.0), squeeze=False)
    ax_iter = iter(axes[0])
    if stream:
        for direction, title in (("recv", "receive"), ("send", "send")):
            ax = next(ax_iter)
            seen: set[str] = set()
            for run in stream["runs"]:
                kind = run["kind"]
                if f"_{direction}" not in kind or kind.endswith("_warmup"):
                    continue
                t, g = rate_series(run["samples"], 8 / 1e9)
                label = kind.replace("_", " ") if kind not in seen else None
                seen.add(kind)
                ax.plot(t, g, color=_COLOURS.get(kind, "black"), alpha=0.8, lw=1.2, label=label)
            ratio = stream.get(f"{direction}_ratio")
            ax.set_title(f"loopback {title}: emulated/raw = {ratio}  (target >= 0.85)", fontsize=10)
            ax.set_xlabel("seconds into the run")
            ax.set_ylabel("Gbit/s")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    if frags:
        ax = next(ax_iter)
        t, r = rate_series(frags.get("samples", []), 1e-6)
        ax.plot(t, r, color="tab:green", lw=1.5, label="Python Receiver pipeline")
        refs = [(12.0, "target 12 M/s (400 Gbit/s of 4 KiB)", "black", ":")]
        c = frags.get("c") or {}
        if "batched" in c:
            refs.append((c["batched"]["frags_per_s"] / 1e6, "C hand-batched DONTNEED", "tab:purple", "--"))
        if "perfrag" in c:
            refs.append((c["perfrag"]["frags_per_s"] / 1e6, "C one DONTNEED per frag (ncdevmem)",
                         "tab:brown", "--"))
        for y, label, colour, style in refs:
            ax.axhline(y, color=colour, ls=style, lw=1.2, label=f"{label}: {y:.1f} M/s")
        ax.set_title(f"fragment path: {frags['frags_per_s'] / 1e6:.1f} M frags/s, "
                     f"{frags['frags_per_release_syscall']} frags/syscall", fontsize=10)
        ax.set_xlabel("seconds into the timed pass")
        ax.set_ylabel("million fragments / s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    machine = (frags or stream or {}).get("machine", {})
    fig.suptitle(f"devmemtcp bench: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores\n"
                 f"Linux {machine.get('kernel', '?')}, load average {machine.get('loadavg', '?')}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_report(
    out_dir: Path,
    *,
    frags_kwargs: dict[str, Any] | None = None,
    stream_kwargs: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run both benchmarks (``None`` kwargs skip one: pass ``{}`` for defaults),
    write ``bench.json`` and ``bench.png`` into ``out_dir``; return the result
    with ``json_path`` and ``png_path`` added.

    Raises DevmemError when matplotlib is missing (checked before running
    anything) or the directory cannot be written.
    """
    from devmemtcp.bench.frags import run_frags
    from devmemtcp.bench.stream import run_stream

    require_matplotlib()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DevmemError(f"cannot create {out_dir}: {exc.strerror}", "pick another --out DIR") from None
    result: dict[str, Any] = {}
    if frags_kwargs is not None:
        result["frags"] = run_frags(progress=progress, **frags_kwargs)
    if stream_kwargs is not None:
        result["stream"] = run_stream(progress=progress, **stream_kwargs)
    json_path = out_dir / JSON_NAME
    png_path = out_dir / PNG_NAME
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, png_path)
    result["json_path"] = str(json_path)
    result["png_path"] = str(png_path)
    return result
