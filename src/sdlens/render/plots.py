"""Matplotlib figures (written to PNG or SVG, readable as screenshots). Imported only when plotting."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sdlens.analysis.inspect import InspectReport, human_bytes

_COLOURS = {
    "controlnet": "#8172B2",
    "clip_l": "#DD8452",
    "openclip_h": "#C44E52",
    "clip_g": "#937860",
    "t5": "#DA8BC3",
    "vae_encoder": "#55A868",
    "vae_decoder": "#8DBF8B",
    "ema": "#8C8C8C",
    "schedule": "#E5E5E5",
}
# denoisers in shades of blue, one per display name (UNet, MMDiT, DiT, …) in order of appearance
_DENOISER_SHADES = ("#4C72B0", "#64B5CD", "#1F3A68", "#7F9CCF", "#2E6E8E")
_OTHER, _NO_COMPONENTS = "#D9D9D9", "#B0B0B0"


def _figure_module():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def component_segments(r: InspectReport, shades: dict[str, str]) -> list[tuple[str, str, float]]:
    """(legend label, colour, share of the file's tensor bytes) of each part of one file, in file order; the
    denoiser's label is the one its component record carries (from the registry: UNet, MMDiT, DiT, …).
    Bytes no component claims are one "other tensors" segment; a file without components (a LoRA) is one
    segment named after its kind."""
    total = r.tensor_bytes or sum(c.bytes for c in r.components or []) or 1
    segs: list[tuple[str, str, float]] = []
    for c in r.components or []:
        base = c.id.split("@")[0]
        if base == "markers" or not c.bytes:
            continue
        if base == "denoiser":
            colour = shades.setdefault(c.label, _DENOISER_SHADES[len(shades) % len(_DENOISER_SHADES)])
        else:
            colour = _COLOURS.get(base, _OTHER)
        segs.append((c.label, colour, c.bytes / total))
    if not segs:
        return [(f"{r.kind} (no model components)", _NO_COMPONENTS, 1.0)]
    rest = 1.0 - sum(s for _, _, s in segs)
    if rest > 1e-3:
        segs.append(("other tensors", _OTHER, rest))
    return segs


def plot_component_sizes(reports: Sequence[InspectReport], path: str | Path) -> Path:
    """One horizontal bar per file, each 100 % of its tensor bytes split into the share of each component
    (denoiser, text encoders, VAE, EMA), linear; the family, kind and total size at the end of the bar."""
    from sdlens.io.atomic import atomic_path

    plt = _figure_module()
    names = [Path(r.path).name for r in reports]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(reports) + 1.8), layout="constrained")
    shades: dict[str, str] = {"UNet": _DENOISER_SHADES[0]}
    legend: dict[str, str] = {}
    for i, r in enumerate(reports):
        left = 0.0
        for label, colour, share in component_segments(r, shades):
            ax.barh(
                i, 100 * share, left=100 * left, color=colour, edgecolor="white", linewidth=0.5, height=0.75
            )
            legend.setdefault(label, colour)
            left += share
        kind = "" if r.kind == "full model" else f" · {r.kind}"
        ax.text(
            101.5,
            i,
            f"{r.family_name}{kind} · {human_bytes(r.tensor_bytes)}",
            va="center",
            fontsize=8,
            clip_on=False,
        )
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(len(reports) - 0.5, -0.5)
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the file's tensor bytes (%)")
    ax.set_title("What each file holds: share of bytes per component")
    from matplotlib.patches import Patch

    order = [*shades.values(), *_COLOURS.values(), _OTHER, _NO_COMPONENTS]  # denoisers, encoders, VAE, …
    entries = sorted(legend.items(), key=lambda e: order.index(e[1]))
    handles = [Patch(facecolor=c, edgecolor="#777777", linewidth=0.5, label=lab) for lab, c in entries]
    fig.legend(
        handles=handles, loc="outside lower center", ncol=min(5, len(handles)), fontsize=8, frameon=False
    )
    out = Path(path)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format=out.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return out
