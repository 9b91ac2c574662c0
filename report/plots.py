"""The report's pictures, as inline SVG text (matplotlib, no files, no network). Each takes plain report.json
data and returns one ``<svg>`` element, or None when there is nothing to draw."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
           "#64B5CD")


def _figure(width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9})
    fig, ax = plt.subplots(figsize=(width, height), dpi=96)
    return fig, ax


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def kib(n: float) -> float:
    return n / 1024


def mcu_live(steps: Sequence[Mapping[str, Any]], arena: int, sram: int | None) -> str | None:
    """Live arena bytes at each step of the call sequence, with the arena and the board's SRAM as lines."""
    if not steps:
        return None
    fig, ax = _figure(7.0, 2.8)
    xs = [s["step"] for s in steps]
    ax.step(xs, [kib(s["live_bytes"]) for s in steps], where="mid", color=_COLORS[0], label="live tensors")
    ax.axhline(kib(arena), color=_COLORS[1], linestyle="--", label=f"arena {kib(arena):.1f} KiB")
    if sram is not None and sram < 4 * max(arena, 1):
        ax.axhline(kib(sram), color=_COLORS[3], linestyle=":", label=f"SRAM {kib(sram):.0f} KiB")
    ax.set_xlabel("step of the call sequence")
    ax.set_ylabel("KiB")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    if sram is not None and sram >= 4 * max(arena, 1):
        ax.set_title(f"board SRAM {kib(sram):.0f} KiB (off the scale: the arena uses {arena / sram:.1%})", fontsize=9)
    return _svg(fig)


def mcu_buffers(buffers: Sequence[Mapping[str, Any]], arena: int, n_steps: int) -> str | None:
    """The arena as buffer-by-time: each tensor a box from its first to its last step, at its offset."""
    placed = [b for b in buffers if b.get("offset", -1) >= 0 and b["bytes"] > 0]
    if not placed or arena <= 0:
        return None
    fig, ax = _figure(7.0, 3.2)
    for i, b in enumerate(placed):
        ax.add_patch(_rect(b["first"] - 0.45, kib(b["offset"]), b["last"] - b["first"] + 0.9, kib(b["bytes"]),
                           _COLORS[i % len(_COLORS)]))
        if b["last"] - b["first"] >= 2 and b["bytes"] >= arena / 12:
            ax.text(b["first"] + (b["last"] - b["first"]) / 2, kib(b["offset"] + b["bytes"] / 2), b["name"],
                    ha="center", va="center", fontsize=7, clip_on=True)
    ax.set_xlim(-0.5, max(n_steps, 1) - 0.5)
    ax.set_ylim(0, kib(arena) * 1.02)
    ax.set_xlabel("step of the call sequence")
    ax.set_ylabel("arena offset (KiB)")
    ax.grid(alpha=0.2)
    return _svg(fig)


def _rect(x: float, y: float, w: float, h: float, color: str) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, facecolor=color, edgecolor="white", linewidth=0.5, alpha=0.85)


def flash_split(weights: int, code: int | None, flash: int | None) -> str | None:
    """Flash as one bar: weights and code, against the board's flash."""
    if not weights and not code:
        return None
    fig, ax = _figure(7.0, 1.9)
    left = 0.0
    for label, n, color in (("weights", weights, _COLORS[0]), ("code", code or 0, _COLORS[1])):
        ax.barh([0], [kib(n)], left=left, height=0.6, color=color, label=f"{label} {kib(n):.1f} KiB")
        left += kib(n)
    if flash:
        ax.axvline(kib(flash), color=_COLORS[3], linestyle=":", label=f"board flash {kib(flash):.0f} KiB")
        ax.set_xlim(0, max(kib(flash), left) * 1.02)
        ax.set_title(f"{left / kib(flash):.1%} of the board's flash", fontsize=9)
    ax.set_yticks([])
    ax.set_ylim(-0.5, 0.5)
    ax.set_xlabel("KiB")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _svg(fig)


def kernel_latency(kernels: Sequence[Mapping[str, Any]], most: int = 20) -> str | None:
    """Time per kernel (median per inference), the slowest ``most`` as horizontal bars."""
    rows = sorted(kernels, key=lambda k: -k["ms"])[:most]
    if not rows:
        return None
    fig, ax = _figure(7.0, 0.8 + 0.22 * len(rows))
    names = [_short(k["kernel"]) for k in rows][::-1]
    ax.barh(names, [k["ms"] for k in rows][::-1], color=_COLORS[0])
    total = sum(k["ms"] for k in kernels)
    ax.set_xlabel(f"ms per inference (all kernels: {total:.3f} ms)")
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def quant_policy(policy: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Each layer's measured sensitivity at every candidate width, the chosen width marked."""
    layers = [(k, v) for k, v in policy.items() if v.get("candidates")]
    if not layers:
        return None
    fig, ax = _figure(7.0, 0.9 + 0.24 * len(layers))
    widths = sorted({int(b) for _, v in layers for b in v["candidates"]}, reverse=True)
    ys = list(range(len(layers)))[::-1]
    for j, b in enumerate(widths):
        xs = [max(float(v["candidates"].get(str(b), math.nan)), 1e-12) for _, v in layers]
        ax.scatter(xs, ys, marker="o", s=18, color=_COLORS[j % len(_COLORS)], label=f"int{b}", zorder=3)
    chosen = [max(float(v["candidates"][str(v["bits"])]), 1e-12) for _, v in layers]
    ax.scatter(chosen, ys, marker="s", s=70, facecolors="none", edgecolors="black", label="chosen", zorder=4)
    ax.set_yticks(ys)
    ax.set_ylim(-0.7, len(layers) - 0.3)
    ax.set_yticklabels([_short(k, 40) for k, _ in layers], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("sensitivity (output error with this layer alone quantized)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _svg(fig)


def prune_groups(groups: Sequence[Mapping[str, Any]], most: int = 30) -> str | None:
    """Units kept and removed per channel group."""
    rows = [g for g in groups if g.get("units")][:most]
    if not rows:
        return None
    fig, ax = _figure(7.0, 0.9 + 0.22 * len(rows))
    names = [_short(str(g.get("name") or g.get("scope") or g["id"]), 40) for g in rows][::-1]
    kept = [g["kept"] for g in rows][::-1]
    removed = [g["removed"] for g in rows][::-1]
    ax.barh(names, kept, color=_COLORS[2], label="kept")
    ax.barh(names, removed, left=kept, color=_COLORS[3], alpha=0.6, label="removed")
    ax.set_xlabel("channels / units")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def recover_history(history: Sequence[Mapping[str, Any]]) -> str | None:
    """The held-out loss of a recover run against its training steps."""
    held = [(h["step"], h["held_loss"]) for h in history if "held_loss" in h]
    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    if len(held) < 2:
        return None
    fig, ax = _figure(7.0, 2.4)
    ax.plot([p[0] for p in held], [p[1] for p in held], marker="o", markersize=3, color=_COLORS[0], label="held-out")
    if train:
        ax.plot([p[0] for p in train], [p[1] for p in train], color=_COLORS[1], alpha=0.7, label="training (running)")
    ax.legend(fontsize=8)
    ax.set_xlabel("training step")
    ax.set_ylabel("distillation loss")
    ax.grid(alpha=0.3)
    return _svg(fig)


def pareto(points: Sequence[Mapping[str, Any]], quality: str, cost: str, chosen: int | None) -> str | None:
    """A search's front: quality against one cost, the chosen point marked."""
    pts = [p for p in points if quality in p["values"] and cost in p["values"]]
    if not pts:
        return None
    fig, ax = _figure(7.0, 3.0)
    scale = 1024 if cost.endswith("bytes") else 1
    xs = [p["values"][cost] / scale for p in pts]
    ys = [p["values"][quality] for p in pts]
    ax.scatter(xs, ys, color=_COLORS[0], label="front", zorder=3)
    pick = [p for p in pts if p.get("trial") == chosen]
    if pick:
        ax.scatter([pick[0]["values"][cost] / scale], [pick[0]["values"][quality]], s=120, facecolors="none",
                   edgecolors=_COLORS[3], linewidths=2, label=f"this build (trial {chosen})", zorder=4)
    ax.set_xlabel(cost.replace("_bytes", " (KiB)") if scale > 1 else cost)
    ax.set_ylabel(quality)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(fig)
