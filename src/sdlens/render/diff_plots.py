"""Figures for ``sdlens diff`` from plain data: per-layer-type histograms and per-block bar charts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_TYPE_ORDER = ["attn1", "attn2", "attn", "ff", "proj", "norm", "resnet/conv", "embedding", "other"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_layer_histograms(per_tensor: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """The notebook's figure: one histogram of per-tensor L2 distances per layer type, log-scale counts.
    Denoiser tensors only when there are any; identical tensors are counted in the titles, not plotted."""
    plt = _plt()
    rows = [t for t in per_tensor if t.get("component") == "denoiser"] or list(per_tensor)
    types = sorted({t["layer_type"] for t in rows}, key=lambda x: _TYPE_ORDER.index(x) if x in _TYPE_ORDER else 99)
    types = types or ["other"]
    cols = min(3, len(types))
    nrows = math.ceil(len(types) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.4 * nrows), squeeze=False)
    for ax, lt in zip(axes.flat, types, strict=False):
        group = [t for t in rows if t["layer_type"] == lt]
        same = sum(1 for t in group if t.get("identical") or t["l2"] == 0)
        values = [t["l2"] for t in group if not (t.get("identical") or t["l2"] == 0)]
        norm = math.sqrt(sum(t["l2"] ** 2 for t in group))
        if values:
            ax.hist(values, bins=40, color="#4C72B0")
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "all identical", ha="center", va="center", transform=ax.transAxes, fontsize=12)
        ax.set_title(f"{lt}: {len(group)} tensors, {same} identical\n√Σ‖Δ‖² = {norm:.4g}", fontsize=9)
        ax.set_xlabel("L2 distance per tensor", fontsize=8)
        ax.set_ylabel("tensors (log)", fontsize=8)
    for ax in list(axes.flat)[len(types) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_block_bars(
    blocks: Mapping[str, Mapping[str, Mapping[str, Any]]], path: str | Path, *, metric: str = "rms", title: str = ""
) -> Path:
    """One bar chart row per component: the distance of each merge block, unchanged blocks in grey with '='."""
    plt = _plt()
    comps = [(c, b) for c, b in blocks.items() if b]
    width = max(8.0, 0.22 * max((len(b) for _, b in comps), default=1) + 2)
    fig, axes = plt.subplots(max(1, len(comps)), 1, figsize=(width, 2.8 * max(1, len(comps))), squeeze=False)
    for ax, (comp, groups) in zip(axes[:, 0], comps, strict=False):
        names = list(groups)
        vals = [groups[n][metric] for n in names]
        colours = ["#4C72B0" if groups[n]["changed"] else "#BBBBBB" for n in names]
        ax.bar(range(len(names)), vals, color=colours)
        top = max(vals) if any(vals) else 1.0
        if not any(vals):
            ax.set_ylim(0, 1)
        for i, n in enumerate(names):
            if not groups[n]["changed"]:
                ax.text(i, top * 0.02, "=", ha="center", va="bottom", fontsize=9, color="#555555")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_ylabel("RMS of Δ" if metric == "rms" else "√Σ‖Δ‖²", fontsize=8)
        ax.set_title(comp, fontsize=10, loc="left")
    if title:
        fig.suptitle(title + ("  (grey '=': unchanged)"), fontsize=11)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
