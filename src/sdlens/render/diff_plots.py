"""Figures for ``sdlens diff`` from plain data: per-layer-type histograms and per-block bar charts.

Both functions write PNG or SVG (chosen by the file suffix; SVG keeps text as text), create parent
directories, close the figure and return the written path. Matplotlib is imported only when plotting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_TYPE_ORDER = ["attn1", "attn2", "attn", "ff", "proj", "norm", "resnet/conv", "embedding", "other"]
_TYPE_NAMES = {"attn1": "attn1 (self-attention)", "attn2": "attn2 (cross-attention)"}
_BAR_COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B2", "#937860", "#DA8BC3"]
_UNCHANGED = "#BBBBBB"
_METRIC_LABELS = {
    "rms": "RMS of Δ (size-normalised)",
    "l2": "L2 = √Σ‖Δ‖²",
}
_RC = {"svg.fonttype": "none"}  # SVG text stays searchable text instead of glyph paths


def _count_formatter(minor: bool = False) -> Any:
    from matplotlib.ticker import FuncFormatter

    def fmt(v: float, _pos: int | None) -> str:
        if minor and str(int(round(v)))[0] not in "25":
            return ""
        return f"{v:.0f}" if v >= 1 else ""

    return FuncFormatter(fmt)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _type_rank(layer_type: str) -> tuple[int, str]:
    return (_TYPE_ORDER.index(layer_type) if layer_type in _TYPE_ORDER else len(_TYPE_ORDER), layer_type)


def _is_identical(t: Mapping[str, Any]) -> bool:
    return bool(t.get("identical")) or not float(t.get("l2", 0.0))


def _folded_line(head: str, items: Sequence[str], per_line: int = 5) -> str:
    """``head`` then the items, a few per line: the groups that get no panel of their own."""
    lines = [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
    return head + "\n".join(lines)


def plot_layer_histograms(
    per_tensor: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = ""
) -> Path:
    """One histogram of per-tensor L2 distances per layer type that changed (linear x, log-scale counts).

    Only denoiser tensors when there are any, else all. Identical tensors (l2 == 0) are counted in the panel
    titles but not plotted; layer types with nothing changed get no panel: they are listed on one line of text
    under the title ("identical: attn1 (80 tensors), ff (64 tensors)")."""
    plt = _plt()
    rows = [t for t in per_tensor if t.get("component") == "denoiser"] or list(per_tensor)
    types = sorted({str(t.get("layer_type", "other")) for t in rows}, key=_type_rank)
    by_type = {lt: [t for t in rows if str(t.get("layer_type", "other")) == lt] for lt in types}
    changed = [lt for lt in types if not all(_is_identical(t) for t in by_type[lt])]
    same = [f"{_TYPE_NAMES.get(lt, lt)} ({len(by_type[lt])} tensors)" for lt in types if lt not in changed]
    with plt.rc_context(_RC):
        if not changed:
            fig, ax = plt.subplots(figsize=(8, 1.3), layout="constrained")
            text = _folded_line("all identical: ", same) if same else "no tensors to compare"
            ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11)
            ax.axis("off")
        else:
            cols = min(3, len(changed))
            nrows = math.ceil(len(changed) / cols)
            fig, axes = plt.subplots(
                nrows, cols, figsize=(max(8.0, 5.0 * cols), 3.4 * nrows), squeeze=False, layout="constrained"
            )
            for ax, lt in zip(axes.flat, changed, strict=False):
                _histogram_panel(ax, lt, by_type[lt])
            for ax in list(axes.flat)[len(changed) :]:
                ax.axis("off")
        heading = [title] if title else []
        if changed and same:
            heading.append(_folded_line("identical, no panel: ", same, per_line=4))
        if heading:
            fig.suptitle("\n".join(heading), fontsize=11)
        return _save(fig, plt, path)


def _histogram_panel(ax: Any, layer_type: str, group: Sequence[Mapping[str, Any]]) -> None:
    same = sum(1 for t in group if _is_identical(t))
    values = [float(t["l2"]) for t in group if not _is_identical(t) and math.isfinite(float(t["l2"]))]
    norm = math.sqrt(sum(v * v for v in values))
    if values:
        ax.hist(values, bins=40, color="#4C72B0", edgecolor="white", linewidth=0.3)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.7)  # single-tensor bins stay visible
        ax.yaxis.set_major_formatter(_count_formatter())
        ax.yaxis.set_minor_formatter(_count_formatter(minor=True))
        ax.set_ylabel("tensors (log)", fontsize=8)
    else:
        ax.text(0.5, 0.5, "all identical", ha="center", va="center", transform=ax.transAxes, fontsize=12)
        ax.set_yticks([])
    ax.set_xlabel("L2 distance per tensor", fontsize=8)
    ax.tick_params(which="both", labelsize=7)
    name = _TYPE_NAMES.get(layer_type, layer_type)
    ax.set_title(f"{name}: {len(group)} tensors, {same} identical\n√Σ‖Δ‖² = {norm:.4g}", fontsize=9)


def plot_block_bars(
    blocks: Mapping[str, Mapping[str, Mapping[str, Any]]],
    path: str | Path,
    *,
    metric: str = "rms",
    title: str = "",
    identical: Sequence[str] = (),
) -> Path:
    """One bar chart row per component that changed: the distance of each block, in the given order.

    ``metric`` is ``"rms"`` (size-normalised RMS of Δ) or ``"l2"`` (√Σ‖Δ‖²). Unchanged blocks of a changed
    component are grey with an "=" above; components with no block changed get no row but one line of text
    under the title, with ``identical`` (names of other unchanged parts); components with no blocks are
    skipped."""
    if metric not in _METRIC_LABELS:
        raise ValueError(f"metric must be one of {sorted(_METRIC_LABELS)}, not {metric!r}")
    plt = _plt()
    comps = [(c, b) for c, b in blocks.items() if b]
    rows = [(c, b) for c, b in comps if any(_block_changed(g) for g in b.values())]
    same = [f"{c} ({len(b)} blocks)" if len(b) > 1 else c for c, b in comps if (c, b) not in rows] + list(
        identical
    )
    most = max((len(b) for _, b in rows), default=1)
    width = max(8.0, 0.24 * most + 2.5)
    with plt.rc_context(_RC):
        if not rows:
            fig, ax = plt.subplots(figsize=(8, 1.3), layout="constrained")
            text = _folded_line("nothing changed: ", same) if same else "no blocks to compare"
            ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11)
            ax.axis("off")
        else:
            fig, axes = plt.subplots(
                len(rows), 1, figsize=(width, 2.9 * len(rows)), squeeze=False, layout="constrained"
            )
            for i, (ax, (comp, groups)) in enumerate(zip(axes[:, 0], rows, strict=True)):
                _bar_row(ax, comp, groups, metric, _BAR_COLOURS[i % len(_BAR_COLOURS)])
        heading = [f"{title}  (grey '=' : block unchanged)" if rows else title]
        if rows and same:
            heading.append(_folded_line("identical, no row: ", same, per_line=4))
        if any(heading):
            fig.suptitle("\n".join(h for h in heading if h), fontsize=11)
        return _save(fig, plt, path)


def _block_changed(g: Mapping[str, Any]) -> bool:
    v = float(g.get("l2", 0.0) or g.get("rms", 0.0) or 0.0)
    return bool(g.get("changed", 1 if v else 0))


def _bar_row(ax: Any, comp: str, groups: Mapping[str, Mapping[str, Any]], metric: str, colour: str) -> None:
    names = list(groups)
    vals = [float(groups[n].get(metric, 0.0) or 0.0) for n in names]
    vals = [v if math.isfinite(v) else 0.0 for v in vals]
    changed = [bool(groups[n].get("changed", 1 if v else 0)) for n, v in zip(names, vals, strict=True)]
    ax.bar(range(len(names)), vals, color=[colour if c else _UNCHANGED for c in changed], width=0.8)
    top = max(vals, default=0.0) or 1.0
    ax.set_ylim(0, top * 1.12)
    for i, (v, c) in enumerate(zip(vals, changed, strict=True)):
        if not c:
            ax.text(
                i,
                v + top * 0.02,
                "=",
                ha="center",
                va="bottom",
                fontsize=10,
                fontweight="bold",
                color="#555555",
            )
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel(_METRIC_LABELS[metric], fontsize=8)
    n_changed = sum(changed)
    ax.set_title(f"{comp}: {n_changed} of {len(names)} blocks changed", fontsize=10, loc="left")


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    """Save atomically (a temporary file beside the target, then rename) and close the figure."""
    from sdlens.io.atomic import atomic_path

    out = Path(path)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(
                tmp, dpi=120, bbox_inches="tight", pad_inches=0.15, format=out.suffix.lstrip(".") or "png"
            )
    finally:
        plt.close(fig)
    return out
