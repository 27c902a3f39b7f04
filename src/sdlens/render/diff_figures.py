"""The plots of a DiffResult: per-layer-type histograms and per-block bars for each component."""

from __future__ import annotations

from pathlib import Path

from sdlens.analysis.diff import DiffResult, component_label
from sdlens.render.safe_text import plot_label


def diff_plot_paths(path: str | Path | None) -> list[Path]:
    """The files ``write_diff_plots(r, path)`` writes: the histograms, then the per-block bars (none for None)."""
    if path is None:
        return []
    path = Path(path)
    return [path, path.with_name(f"{path.stem}-blocks{path.suffix}")]


def write_diff_plots(r: DiffResult, path: str | Path) -> list[Path]:
    """``path`` (.png or .svg) gets the histograms; ``<stem>-blocks<suffix>`` the per-block bar chart. Parts with
    nothing changed get no panel or row, only a mention in one line of text."""
    from sdlens.render.diff_plots import plot_block_bars, plot_layer_histograms

    path = Path(path)
    fam = r.family_a if r.family_a != "unknown" else r.family_b
    per_tensor = [
        {
            "key": t.key,
            "component": t.component,
            "layer_type": t.layer_type,
            "l2": t.l2,
            "rms": t.rms,
            "identical": not t.changed,
            "numel": t.numel,
        }
        for t in r.tensors
    ]
    title = plot_label(f"{Path(r.a).name} vs {Path(r.b).name}")
    hist = plot_layer_histograms(per_tensor, path, title=title)
    blocks: dict[str, dict[str, dict]] = {}
    whole: dict[str, dict] = {}  # components that are one block (text encoders, VAE): one bar each, one row
    for c, groups in r.by_block.items():
        if c in ("schedule", "markers"):
            continue
        if len(groups) > 1:
            blocks[component_label(c, fam)] = {b: g.to_dict() for b, g in groups.items()}
        else:
            whole[component_label(c, fam)] = r.by_component[c].to_dict()
    changed = {c: g for c, g in whole.items() if g.get("changed")}
    if changed:
        blocks["other components (whole)"] = changed
    bars = plot_block_bars(
        blocks,
        diff_plot_paths(path)[1],
        metric="rms",
        title=title,
        identical=[c for c in whole if c not in changed],
    )
    return [hist, bars]
