"""Matplotlib figures (written to PNG or SVG, readable as screenshots). Imported only when plotting."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sdlens.analysis.inspect import InspectReport

_COLOURS = {
    "denoiser": "#4C72B0",
    "controlnet": "#8172B2",
    "clip_l": "#DD8452",
    "openclip_h": "#C44E52",
    "clip_g": "#937860",
    "t5": "#DA8BC3",
    "vae_encoder": "#55A868",
    "vae_decoder": "#8DBF8B",
    "ema": "#8C8C8C",
}


def _figure_module():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_component_sizes(reports: Sequence[InspectReport], path: str | Path) -> Path:
    """One horizontal stacked bar per file: bytes of each component (denoiser, text encoders, VAE, EMA)."""
    plt = _figure_module()
    names = [Path(r.path).name for r in reports]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(reports) + 1.6))
    seen: set[str] = set()
    for i, r in enumerate(reports):
        left = 0.0
        comps = r.components or []
        for c in comps:
            base = c.id.split("@")[0]
            if base in ("schedule", "markers"):
                continue
            width = c.bytes / 1e6
            label = c.label if base not in seen else None
            seen.add(base)
            ax.barh(i, width, left=left, color=_COLOURS.get(base, "#CCCCCC"), label=label, edgecolor="white", linewidth=0.5)
            left += width
        if not comps:
            ax.barh(i, r.tensor_bytes / 1e6, color="#BBBBBB", label=None)
            left = r.tensor_bytes / 1e6
        ax.text(left, i, f"  {r.family_name}" + (f" ({r.kind})" if r.kind != "full model" else ""), va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("MB (log scale)")
    ax.set_title("What each file holds: bytes per component")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
