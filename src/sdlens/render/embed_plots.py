"""Figures of ``sdlens embed``: one PCA (or t-SNE) panel per model, and how each prompt moved relative to the
reference model (Procrustes-aligned PCA with arrows). The same colour and marker mean the same prompt (or group)
in every panel. Figures are written to a temporary file and renamed into place."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sdlens.analysis.embed import EmbedResult, EncoderEmbedding
from sdlens.io.prompts import Prompt
from sdlens.render.safe_text import plot_label

_AUTO_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


# --------------------------------------------------------------------------- projections


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N×2 scores, the 2 explained-variance ratios, the 2×D basis) of ``x`` (N×D), centred on its mean.
    Signs are fixed so that the prompt with the largest |score| on each axis is positive."""
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(axis=0)
    # economy SVD through the N×N Gram matrix: cheap for wide embeddings (flattened sequences)
    gram = xc @ xc.T
    w, u = np.linalg.eigh(gram)
    order = np.argsort(w)[::-1]
    w, u = np.clip(w[order], 0, None), u[:, order]
    total = w.sum()
    k = min(2, x.shape[0])
    s = np.sqrt(w[:k])
    scores = u[:, :k] * s
    basis = (u[:, :k] / np.where(s == 0, 1, s)).T @ xc
    for j in range(k):
        i = int(np.argmax(np.abs(scores[:, j])))
        if scores[i, j] < 0:
            scores[:, j] *= -1
            basis[j] *= -1
    if k < 2:
        scores = np.hstack([scores, np.zeros((x.shape[0], 2 - k))])
        basis = np.vstack([basis, np.zeros((2 - k, x.shape[1]))])
    ratios = w[:2] / total if total > 0 else np.zeros(2)
    return scores, np.pad(ratios, (0, 2 - len(ratios))), basis


def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE

    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if x.shape[1] > 50 and n > 2:  # the usual PCA pre-reduction
        xc = x - x.mean(axis=0)
        u, s, _ = np.linalg.svd(xc, full_matrices=False)
        x = u[:, : min(50, n)] * s[: min(50, n)]
    perplexity = float(max(1.0, min(30.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def procrustes_align(model: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, float]:
    """``model`` embeddings rotated (orthogonal Procrustes, in the span of both sets) onto ``ref``'s; and the
    residual disparity ‖aligned − ref‖² / ‖ref − mean‖²."""
    from scipy.linalg import orthogonal_procrustes

    a = np.asarray(model, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    ac, bc = a - ma, b - mb
    # work in the joint span (at most 2N dims), so wide embeddings stay cheap
    q, _ = np.linalg.qr(np.vstack([ac, bc]).T)
    ya, yb = ac @ q, bc @ q
    r, _ = orthogonal_procrustes(ya, yb)
    aligned = (ya @ r) @ q.T + mb
    denom = float((bc**2).sum())
    disparity = float(((aligned - b) ** 2).sum() / denom) if denom > 0 else 0.0
    return aligned, disparity


# --------------------------------------------------------------------------- styles


def styles(prompts: Sequence[Prompt]) -> tuple[list[tuple], list[str], dict[str, tuple]]:
    """Per prompt (colour, marker), and the legend entries: by group when the prompts have groups (a colour
    and marker per group), else a colour per label (markers cycle so that > 10 labels stay distinct)."""
    import matplotlib

    groups = list(dict.fromkeys(p.group for p in prompts if p.group))
    cmap = matplotlib.colormaps["tab10" if (len(groups) or len(prompts)) <= 10 else "tab20"]
    colours: list[tuple] = []
    markers: list[str] = []
    legend: dict[str, tuple] = {}
    if groups:
        for p in prompts:
            g = groups.index(p.group) if p.group else len(groups)
            c = cmap(g % cmap.N)
            m = p.marker or _AUTO_MARKERS[g % len(_AUTO_MARKERS)]
            colours.append(c)
            markers.append(m)
            legend.setdefault(p.group or "(no group)", (c, m))
    else:
        for i, p in enumerate(prompts):
            c = cmap(i % cmap.N)
            m = p.marker or _AUTO_MARKERS[(i // cmap.N) % len(_AUTO_MARKERS)]
            colours.append(c)
            markers.append(m)
            legend[p.label] = (c, m)
    return colours, markers, legend


def _save(fig, path: Path) -> Path:
    from sdlens.io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


def _grid(n: int, cols: int = 3):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols + 2.2, 4.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n]), plt


def _legend(fig, legend: dict[str, tuple], title: str) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], linestyle="", marker=m, color=c, markersize=7, label=plot_label(name))
        for name, (c, m) in legend.items()
    ]
    ncol = 1 if len(handles) <= 25 else 2
    fig.legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=7,
        title=title,
        ncol=ncol,
        frameon=False,
    )


def _scatter(ax, xy: np.ndarray, prompts: Sequence[Prompt], colours, markers, annotate: bool) -> None:
    for (x, y), c, m in zip(xy, colours, markers, strict=True):
        ax.scatter([x], [y], color=[c], marker=m, s=34, linewidths=1.2)
    if annotate:
        for (x, y), p in zip(xy, prompts, strict=True):
            ax.annotate(
                plot_label(p.label), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points", alpha=0.8
            )


def _title(e: EncoderEmbedding) -> str:
    return f"{plot_label(e.model)}\n{plot_label(e.label)} · {plot_label(e.layer.split(' (')[0])} · {e.pool}"


# --------------------------------------------------------------------------- figures


def plot_maps(result: EmbedResult, encoder: str, path: str | Path, method: str = "pca") -> Path:
    """One panel per model: PCA (axes with explained variance %) or t-SNE of the prompts' embeddings."""
    embs = result.by_encoder(encoder)
    if not embs:
        raise ValueError(f"no embeddings for encoder {encoder!r}")
    prompts = result.prompts
    colours, markers, legend = styles(prompts)
    groups = any(p.group for p in prompts)
    fig, axes, plt = _grid(len(embs))
    try:
        for ax, e in zip(axes, embs, strict=True):
            if method == "tsne":
                xy = tsne_2d(e.vectors)
                ax.set_xlabel("t-SNE 1")
                ax.set_ylabel("t-SNE 2")
            else:
                xy, ratios, _ = pca_2d(e.vectors)
                ax.set_xlabel(f"PC1 ({100 * ratios[0]:.1f}% of variance)")
                ax.set_ylabel(f"PC2 ({100 * ratios[1]:.1f}% of variance)")
            _scatter(ax, xy, prompts, colours, markers, annotate=groups or len(prompts) <= 60)
            ax.set_title(_title(e), fontsize=9)
            ax.grid(alpha=0.25)
        kind = "t-SNE" if method == "tsne" else "PCA"
        fig.suptitle(f"{kind} of {len(prompts)} prompts · {embs[0].label} ({encoder})", fontsize=11, y=1.03)
        _legend(fig, legend, "group" if groups else "prompt")
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


QUIET_DRIFT = 1e-5  # a largest drift (1 − cos) at or below this is rounding: the model gets no panel


def plot_drift(result: EmbedResult, encoder: str, path: str | Path) -> Path | None:
    """Per model other than the reference: the reference's PCA map with an arrow from each prompt's reference
    position to its position in the model (the model's embeddings Procrustes-aligned onto the reference's).
    Models whose largest drift is at rounding level (≤ ``QUIET_DRIFT``) get no panel, only a mention in the
    title; when no model moved the figure is that one line."""
    ref = result.get(result.ref, encoder) if result.ref else None
    others = [
        e for e in result.by_encoder(encoder) if ref is not None and e.model != ref.model and e.dim == ref.dim
    ]
    if ref is None or not others:
        return None
    drift = {d.model: d for d in result.drift if d.encoder == encoder}
    quiet = [e for e in others if e.model in drift and drift[e.model].max_drift <= QUIET_DRIFT]
    moved = [e for e in others if e not in quiet]
    quiet_line = (
        (
            "no drift (rounding level): "
            + ", ".join(f"{plot_label(e.model)} (largest {drift[e.model].max_drift:.1e})" for e in quiet)
        )
        if quiet
        else ""
    )
    if not moved:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 1.2))
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            f"relative to {plot_label(ref.model)} · {plot_label(ref.label)} ({encoder}), no prompt moved:\n{quiet_line}",
            ha="center",
            va="center",
            fontsize=10,
            transform=ax.transAxes,
        )
        try:
            return _save(fig, Path(path))
        finally:
            plt.close(fig)
    prompts = result.prompts
    colours, markers, legend = styles(prompts)
    groups = any(p.group for p in prompts)
    ref_xy, ratios, basis = pca_2d(ref.vectors)
    mean = ref.vectors.astype(np.float64).mean(axis=0)
    fig, axes, plt = _grid(len(moved))
    try:
        for ax, e in zip(axes, moved, strict=True):
            aligned, disparity = procrustes_align(e.vectors, ref.vectors)
            xy = (aligned - mean) @ basis.T
            span = float(np.ptp(ref_xy, axis=0).max()) or 1.0
            for (x0, y0), (x1, y1), c in zip(ref_xy, xy, colours, strict=True):
                if np.hypot(x1 - x0, y1 - y0) > 0.002 * span:  # shorter moves would be all arrowhead
                    ax.annotate(
                        "",
                        xy=(x1, y1),
                        xytext=(x0, y0),
                        arrowprops={"arrowstyle": "->", "color": c, "lw": 1.0, "alpha": 0.85},
                    )
            for (x, y), c, m in zip(ref_xy, colours, markers, strict=True):
                ax.scatter([x], [y], color=[c], marker=m, s=22, alpha=0.35)
            _scatter(ax, xy, prompts, colours, markers, annotate=groups or len(prompts) <= 60)
            d = drift.get(e.model)
            extra = f"mean cos {d.mean_cosine:.4f} · max drift {d.max_drift:.2g}" if d else ""
            ax.set_title(
                f"{plot_label(e.model)} vs {plot_label(ref.model)}\n{extra} · Procrustes disparity {disparity:.2g}",
                fontsize=9,
            )
            ax.set_xlabel(f"reference PC1 ({100 * ratios[0]:.1f}%)")
            ax.set_ylabel(f"reference PC2 ({100 * ratios[1]:.1f}%)")
            ax.grid(alpha=0.25)
        heading = (
            f"how each prompt moved relative to {plot_label(ref.model)} · {plot_label(ref.label)} ({encoder})\n"
            "faint marker: reference position; arrows under 0.2% of the map not drawn"
        )
        heading += f"\n{quiet_line}" if quiet_line else ""
        rows = math.ceil(len(moved) / 3)
        fig.suptitle(heading, fontsize=11, y=1.0 + (0.045 * (heading.count("\n") + 1)) / rows)
        _legend(fig, legend, "group" if groups else "prompt")
        return _save(fig, Path(path))
    finally:
        plt.close(fig)
