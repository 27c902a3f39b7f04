"""``sdlens delta`` outputs: the verdict, a table per group, and a figure of the spectra and ranks."""

from __future__ import annotations

import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sdlens.analysis.delta import SIGMA_KEPT, DeltaResult, GroupDelta, TensorDelta
from sdlens.analysis.delta_words import ranks_phrase
from sdlens.analysis.diff import component_label
from sdlens.arch.blocks import block_names
from sdlens.render.safe_text import plot_label, safe
from sdlens.render.text import bullets

ROWS = 60  # table rows shown; the rest are counted (every row is in --json)
_KIND_COLOUR = {
    "unchanged": "#bdbdbd",
    "rounding": "#9ecae1",
    "low-rank": "#31a354",
    "high-rank": "#de2d26",
    "changed": "#fd8d3c",
}


def _rank_cell(g: GroupDelta) -> str:
    """ "8" / "≈ 8" / "4–32" for low-rank weights, "eff. 106 of 128" for high-rank ones (median)."""
    cells = []
    if g.ranks:
        cells.append(ranks_phrase(g.ranks).removeprefix("ranks ").removeprefix("rank "))
    if g.effective_90:
        cells.append(f"eff. {statistics.median(g.effective_90):.0f} of {statistics.median(g.sizes):.0f}")
    elif g.sketched:
        cells.append(f"≥ {min(g.sketched)} of {statistics.median(g.sizes):.0f}")
    return "; ".join(cells)


def _no(name: str) -> int:
    """The number in a group name ("layer 10" -> 10), so layers sort 0, 1, 2, …, 10."""
    digits = "".join(c for c in name if c.isdigit())
    return int(digits) if digits else -1


def group_name(g: GroupDelta, family: str, by: str) -> str:
    """A group as the table names it: merge blocks bare, other components' groups with their label."""
    if by == "key":
        return g.name
    if by == "block" and g.component == "denoiser":
        return g.name
    label = component_label(g.component, family)
    return label if g.name == g.component else f"{label} {g.name}"


def group_table(result: DeltaResult) -> tuple[Table, int]:
    """One row per group that changed beyond rounding (all groups when none did); the rows left out."""
    groups = [g for g in result.groups if g.kind not in ("unchanged", "rounding")] or result.groups
    order = {b: i for i, b in enumerate(block_names(result.family))}
    if result.by == "block":
        groups = sorted(
            groups, key=lambda g: (g.component != "denoiser", g.component, order.get(g.name, 999))
        )
    elif result.by == "key":
        groups = sorted(groups, key=lambda g: -g.energy)
    title = {
        "block": "per merge block / layer",
        "layer": "per layer type",
        "key": "per tensor, largest Δ first",
    }
    t = Table(title=f"Δ {title[result.by]}", title_justify="left", show_edge=False, pad_edge=False)
    t.add_column("group", overflow="fold")
    t.add_column("kind", no_wrap=True)
    t.add_column("changed", justify="right", no_wrap=True)
    t.add_column("rank", justify="right", no_wrap=True)
    t.add_column("‖Δ‖/‖W‖", justify="right", no_wrap=True)
    for g in groups[:ROWS]:
        changed = g.tensors - g.kinds["unchanged"] - g.kinds["rounding"]
        t.add_row(
            safe(group_name(g, result.family, result.by)),
            g.kind,
            f"{changed}/{g.tensors}",
            _rank_cell(g),
            f"{g.rel:.3g}" if g.energy else "0",
        )
    return t, max(0, len(groups) - ROWS)


def render_delta(result: DeltaResult, console: Console) -> None:
    console.print(
        f"[bold]{safe(Path(result.model).name)}[/] against base [bold]{safe(Path(result.base).name)}[/] "
        f"({safe(result.family)})",
        highlight=False,
    )
    bullets(console, [safe(line) for line in result.verdict])
    table, left = group_table(result)
    console.print(table)
    unchanged = sum(1 for g in result.groups if g.kind == "unchanged")
    if left:
        console.print(f"… {left} more rows (every group is in --json)", highlight=False)
    if unchanged and result.by != "key":
        console.print(f"{unchanged} groups unchanged", highlight=False)


# --------------------------------------------------------------------------- figure


def _largest_per_type(result: DeltaResult) -> list[TensorDelta]:
    """The 2-D tensor with the largest Δ of each changed layer type (component-qualified)."""
    best: dict[tuple[str, str], TensorDelta] = {}
    for t in result.tensors:
        if t.sigma and t.kind in ("low-rank", "high-rank"):
            k = (t.component, t.layer_type)
            if k not in best or t.energy > best[k].energy:
                best[k] = t
    return sorted(best.values(), key=lambda t: -t.energy)[:8]


def _per_block(result: DeltaResult) -> tuple[list[str], list[float], list[str], list[float]]:
    """Denoiser blocks (and other components' layers) in order: median rank of the changed weights (low-rank:
    their rank; high-rank: effective rank at 90 %), the block's kind, and the median size."""
    order = {b: i for i, b in enumerate(block_names(result.family))}
    groups: dict[tuple[str, str], list[TensorDelta]] = {}
    for t in result.tensors:
        if t.size is not None:
            groups.setdefault((t.component, t.block), []).append(t)
    keys = sorted(groups, key=lambda k: (k[0] != "denoiser", k[0], order.get(k[1], 999), _no(k[1])))
    keys = [k for k in keys if k[0] == "denoiser" or any(t.changed for t in groups[k])]
    names, ranks, kinds, sizes = [], [], [], []
    for comp, block in keys:
        ts = groups[(comp, block)]
        hit = [t for t in ts if t.kind in ("low-rank", "high-rank")]
        values = [(t.rank if t.kind == "low-rank" else t.effective_rank_90 or t.rank) or 0 for t in hit]
        names.append(block if comp == "denoiser" else f"{component_label(comp, result.family)} {block}")
        ranks.append(statistics.median(values) if values else 0.0)
        kinds.append(
            "high-rank" if any(t.kind == "high-rank" for t in hit) else hit[0].kind if hit else "unchanged"
        )
        sizes.append(statistics.median(t.size or 0 for t in (hit or ts)))
    return names, ranks, kinds, sizes


def delta_figure(result: DeltaResult):
    """Left: normalised singular values σᵢ/σ₁ of the largest changed weight of each layer type (log scale: a
    LoRA's drop to the noise after its rank, a fine-tune's slow decay). Right: the rank per block (bars coloured
    by kind) next to the size of its weights (ticks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, ranks, kinds, sizes = _per_block(result)
    width = min(20.0, max(11.0, 0.3 * len(names) + 6))
    fig, (left, right) = plt.subplots(1, 2, figsize=(width, 4.8), gridspec_kw={"width_ratios": [1, 1.6]})
    tops = _largest_per_type(result)
    for t in tops:
        s = [v / t.sigma[0] for v in t.sigma if t.sigma[0] > 0]
        label = f"{component_label(t.component, result.family)} {t.layer_type}: {t.shape[0]}×{t.size}"
        left.semilogy(range(1, len(s) + 1), s, marker=".", ms=3, label=plot_label(label, 40))
    left.set_xlabel("singular value index")
    left.set_ylabel("σᵢ / σ₁")
    left.set_title(f"largest {SIGMA_KEPT} singular values of Δ, largest weight per layer type", fontsize=10)
    if tops:
        left.legend(fontsize=7, loc="upper right")
    else:
        left.text(0.5, 0.5, "no weight changed beyond rounding", ha="center", transform=left.transAxes)
    x = list(range(len(names)))
    right.bar(x, ranks, color=[_KIND_COLOUR[k] for k in kinds], width=0.8)
    right.scatter(x, sizes, marker="_", s=120, color="#333333", label="size (smaller side)", zorder=3)
    right.set_xticks(x, [plot_label(n, 24) for n in names], rotation=90, fontsize=7)
    right.set_ylabel("rank (low-rank) / effective rank 90 % (high-rank)")
    right.set_yscale("symlog", linthresh=8)
    right.set_title("rank per block", fontsize=10)
    handles = [
        matplotlib.patches.Patch(color=c, label=k)
        for k, c in _KIND_COLOUR.items()
        if k in kinds or k == "low-rank"
    ]
    right.legend(
        handles=[*handles, *right.get_legend_handles_labels()[0]],
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    fig.suptitle(
        plot_label(f"{Path(result.model).name} − {Path(result.base).name}: {result.verdict[0]}", 110)
    )
    fig.tight_layout()
    return fig


def plot_delta(result: DeltaResult, path: str | Path) -> Path:
    """Write :func:`delta_figure` to ``path`` (PNG or SVG by its suffix), atomically."""
    from sdlens.render.figure_file import save_figure

    return save_figure(delta_figure(result), path)
