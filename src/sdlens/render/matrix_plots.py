"""Figures for ``sdlens matrix``: clustered heatmap, weighted graph, distance from the reference, MDS map,
identity table. Each takes one N×N matrix (NaN where not comparable) and the model names."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from sdlens.render.diff_plots import _save


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _comparable(m: np.ndarray) -> np.ndarray:
    """Indices of the largest set of models that are all comparable with each other."""
    ok = ~np.isnan(m)
    best = max(range(len(m)), key=lambda i: ok[i].sum())
    return np.array([j for j in range(len(m)) if ok[best, j]])


def _short(names: list[str]) -> list[str]:
    stems = [Path(n).stem for n in names]
    return stems if len(set(stems)) == len(stems) else list(names)


def plot_heatmap(m: np.ndarray, names: list[str], title: str, path: Path) -> Path:
    """Heatmap ordered by average-linkage clustering, with its dendrogram (scipy) above."""
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    plt = _plt()
    keep = _comparable(m)
    sub = m[np.ix_(keep, keep)]
    labels = [_short(names)[i] for i in keep]
    n = len(keep)
    fig = plt.figure(figsize=(max(6, 0.5 * n + 3), max(6, 0.5 * n + 4)))
    if n > 2:
        ax_d = fig.add_axes((0.25, 0.77, 0.58, 0.15))
        tree = dendrogram(
            linkage(squareform(sub, checks=False), "average"), ax=ax_d, no_labels=True, color_threshold=0
        )
        ax_d.set_axis_off()
        order = tree["leaves"]
    else:
        order = list(range(n))
    ax = fig.add_axes((0.25, 0.22, 0.58, 0.54))
    im = ax.imshow(sub[np.ix_(order, order)], cmap="viridis", aspect="auto")  # columns under the leaves
    ax.set_xticks(range(n), [labels[i] for i in order], rotation=90, fontsize=8)
    ax.set_yticks(range(n), [labels[i] for i in order], fontsize=8)
    if n <= 12:
        mid = (np.nanmax(sub) + np.nanmin(sub)) / 2
        for i, a in enumerate(order):
            for j, b in enumerate(order):
                ax.text(
                    j,
                    i,
                    f"{sub[a, b]:.3g}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="black" if sub[a, b] > mid else "white",
                )  # dark on viridis' light end
    fig.colorbar(im, cax=fig.add_axes((0.86, 0.22, 0.02, 0.54)))
    left_out = [_short(names)[i] for i in range(len(names)) if i not in set(keep)]
    note = f"\nnot comparable, not shown: {', '.join(left_out)}" if left_out else ""
    fig.suptitle(title + note, fontsize=11, y=0.935, va="bottom")
    return _save(fig, plt, path)


def _classical_mds(d: np.ndarray) -> np.ndarray:
    """2-D coordinates whose distances best match ``d`` (Torgerson): exact for Euclidean (L2) distances."""
    n = len(d)
    if n == 1:
        return np.zeros((1, 2))
    j = np.eye(n) - 1.0 / n
    b = -0.5 * j @ (d**2) @ j
    w, v = np.linalg.eigh(b)
    top = np.argsort(w)[::-1][:2]
    return v[:, top] * np.sqrt(np.clip(w[top], 0, None))


def mds_explained(d: np.ndarray) -> float:
    """The share of the models' squared spread (Σ of the positive eigenvalues) the 2-D map holds."""
    if len(d) < 3:
        return 1.0
    j = np.eye(len(d)) - 1.0 / len(d)
    w = np.clip(np.linalg.eigvalsh(-0.5 * j @ (d**2) @ j), 0, None)
    return float(np.sort(w)[::-1][:2].sum() / w.sum()) if w.sum() > 0 else 1.0


def stress_layout(d: np.ndarray, start: np.ndarray, iterations: int = 300) -> np.ndarray:
    """2-D positions whose distances match ``d`` with weights 1/d² (the Kamada–Kawai energy, minimised by
    SMACOF's Guttman transform from ``start``): near pairs count most, so a tight cluster that classical MDS
    crushes into a point (beside two far models) opens up, while far pairs stay far."""
    n = len(d)
    with np.errstate(divide="ignore"):
        w = np.where(d > 0, 1.0 / d**2, 0.0)
    v = np.diag(w.sum(axis=1)) - w
    v_plus = np.linalg.pinv(v)
    x = start + 1e-9 * np.arange(2 * n).reshape(n, 2)  # no two start points coincide
    for _ in range(iterations):
        cur = np.hypot(*(x[:, None, :] - x[None, :, :]).transpose(2, 0, 1))
        with np.errstate(divide="ignore", invalid="ignore"):
            b = np.where(cur > 0, -w * d / cur, 0.0)
        b[np.diag_indices(n)] = -b.sum(axis=1)
        nxt = v_plus @ b @ x
        if np.abs(nxt - x).max() < 1e-7 * (np.abs(x).max() or 1.0):
            return nxt
        x = nxt
    return x


def identical_groups(m: np.ndarray, keep: list[int] | np.ndarray) -> list[list[int]]:
    """The models of ``keep`` grouped where their distance is exactly 0 (one node, one point), in model order."""
    groups: list[list[int]] = []
    for i in keep:
        for grp in groups:
            if m[grp[0], i] == 0.0:
                grp.append(int(i))
                break
        else:
            groups.append([int(i)])
    return groups


def group_label(grp: list[int], labels: list[str]) -> str:
    """ "base" for one model, "base (+2 identical)" for three at distance 0."""
    return labels[grp[0]] if len(grp) == 1 else f"{labels[grp[0]]} (+{len(grp) - 1} identical)"


def _footnote(ax, lines: list[str]) -> None:
    """Lines of text under the axes (kept in the saved figure by the tight bounding box)."""
    if lines:
        ax.annotate(
            "\n".join(lines),
            (0, 0),
            xycoords="axes fraction",
            xytext=(0, -24),
            textcoords="offset points",
            va="top",
            ha="left",
            fontsize=7,
            color="#444444",
            annotation_clip=False,
        )


def _notes(
    groups: list[list[int]], labels: list[str], key: list[tuple[int, str]], left_out: list[str]
) -> list[str]:
    out = []
    for grp in groups:
        if len(grp) > 1:
            out += textwrap.wrap(
                f"{group_label(grp, labels)}: {', '.join(labels[i] for i in grp)}",
                130,
                subsequent_indent="    ",
            )
    numbered = [f"{k} = {t}" for k, t in key if k]
    if numbered:
        out += textwrap.wrap("numbered: " + "; ".join(numbered), 130, subsequent_indent="    ")
    crowded = [t for k, t in key if not k]
    if crowded:
        out += textwrap.wrap("too crowded to label: " + ", ".join(crowded), 130, subsequent_indent="    ")
    if left_out:
        out += textwrap.wrap(
            f"not comparable, not shown: {', '.join(left_out)}", 130, subsequent_indent="    "
        )
    return out


def _map_axes(plt, xy: np.ndarray, n_labels: int):
    """A figure whose axes have the shape of the points' extent (equal scales on both axes), so that a map
    that is nearly a line is a short wide strip, not a square with empty bands above and below."""
    span = np.ptp(xy, axis=0) if len(xy) > 1 else np.zeros(2)
    big = float(span.max()) or 1.0
    w, h = span + 0.35 * big  # room around the points for their labels
    width = 7.5 if n_labels <= 12 else 10.0
    height = float(np.clip(width * h / w, 1.8, 1.1 * width))
    if width * h / w > 1.1 * width:  # taller than wide: narrow the figure instead
        width = float(np.clip(height * w / h, 4.5, width))
    fig, ax = plt.subplots(figsize=(width, height))
    fig.subplots_adjust(0.02, 0.02, 0.98, 0.92)
    ax.set_aspect("equal", adjustable="datalim")  # to scale: distances on the page match the matrix
    return fig, ax


def _points(m: np.ndarray, names: list[str]):
    keep = [int(i) for i in _comparable(m)]
    labels = _short(names)
    groups = identical_groups(m, keep)
    reps = [g[0] for g in groups]
    sub = m[np.ix_(reps, reps)]
    xy = _classical_mds(sub)
    left_out = [labels[i] for i in range(len(names)) if i not in keep]
    return labels, groups, sub, xy, left_out


def _bezier(a: np.ndarray, b: np.ndarray, bend: float, t: np.ndarray | float) -> np.ndarray:
    """Points at ``t`` of the quadratic curve from ``a`` to ``b`` bulging by ``bend`` × its length."""
    c = (a + b) / 2 + bend * np.array([a[1] - b[1], b[0] - a[0]])
    t = np.asarray(t, dtype=float)[..., None]
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * c + t**2 * b


def _overlapping(px: np.ndarray, radius: float) -> list[list[int]]:
    """Groups (≥ 2) of nodes drawn closer than a marker: they overlap on the page."""
    parent = list(range(len(px)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a in range(len(px)):
        for b in range(a + 1, len(px)):
            if np.hypot(*(px[a] - px[b])) < 2 * radius:
                parent[root(b)] = root(a)
    out: dict[int, list[int]] = {}
    for i in range(len(px)):
        out.setdefault(root(i), []).append(i)
    return [g for g in out.values() if len(g) > 1]


def graph_figure(m: np.ndarray, names: list[str], title: str):
    """(figure, node labels, edge labels) of :func:`plot_graph`, not saved."""
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MPath
    from scipy.sparse.csgraph import minimum_spanning_tree

    from sdlens.render.labels import Box, place_labels

    plt = _plt()
    labels, groups, sub, xy, left_out = _points(m, names)
    k = len(groups)
    tree = minimum_spanning_tree(sub).tocoo() if k > 1 else None
    straight = (
        {(min(a, b), max(a, b)) for a, b in zip(tree.row, tree.col, strict=True)}
        if tree is not None
        else set()
    )
    if k <= 8:  # every pair: the tree's edges straight, the others curved so that none hides another
        pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
        how = "every pair (the nearest-neighbour tree straight)"
    else:  # the nearest-neighbour tree only: what a complete graph of many models would bury
        pairs = sorted(straight)
        how = "the nearest-neighbour (minimum spanning) tree"
    if k > 2:
        xy = stress_layout(sub, xy)
    fig, ax = _map_axes(plt, xy, k)
    top = max((float(sub[a, b]) for a, b in pairs), default=1.0) or 1.0
    bends = {}
    for n, (a, b) in enumerate(pairs):
        bends[a, b] = 0.0 if (a, b) in straight else (0.18 if n % 2 else -0.18)
        mid = _bezier(xy[a], xy[b], bends[a, b], 0.5)
        c = 2 * mid - (xy[a] + xy[b]) / 2  # the control point
        path = MPath([xy[a], c, xy[b]], [MPath.MOVETO, MPath.CURVE3, MPath.CURVE3])
        ax.add_patch(
            PathPatch(
                path,
                fill=False,
                lw=0.5 + 3.5 * (1 - float(sub[a, b]) / top),
                ec="#b0b0b0",
                capstyle="round",
                zorder=1,
            )
        )
    ax.scatter(xy[:, 0], xy[:, 1], s=110, color="#8fb3de", edgecolors="#4a6f9c", linewidths=0.8, zorder=3)
    ax.set_title(
        f"{title}\nnode = models at distance 0, placed by distance (stress, near pairs first)\n"
        f"lines: {how}, thicker for closer pairs",
        fontsize=10,
    )
    ax.set_axis_off()
    ax.margins(0.1)
    ax.autoscale_view()
    scale = fig.dpi / 72
    texts = [group_label(grp, labels) for grp in groups]
    node_text, key, taken = place_labels(ax, xy, texts, fontsize=8, marker_px=6 * scale, background=True)
    px = ax.transData.transform(xy)
    ts = np.linspace(0.08, 0.92, 25)
    curves = {e: ax.transData.transform(_bezier(xy[e[0]], xy[e[1]], bends[e], ts)) for e in pairs}
    renderer = fig.canvas.get_renderer()
    edge_text = []
    for a, b in sorted(pairs, key=lambda e: -np.hypot(*(px[e[0]] - px[e[1]]))):
        at = _bezier(xy[a], xy[b], bends[a, b], 0.5)
        t = ax.text(
            *at,
            f"{sub[a, b]:.3g}",
            fontsize=6.5,
            ha="center",
            va="center",
            color="#555555",
            zorder=2,
            bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none"},
        )
        bb = Box(*t.get_window_extent(renderer).extents)
        crossed = any(
            (
                (c[:, 0] > bb.x0 - 2) & (c[:, 0] < bb.x1 + 2) & (c[:, 1] > bb.y0 - 2) & (c[:, 1] < bb.y1 + 2)
            ).any()
            for e, c in curves.items()
            if e != (a, b)
        )
        if (
            np.hypot(*(px[a] - px[b])) < (bb.x1 - bb.x0) + 16 * scale
            or crossed
            or any(bb.overlaps(o, pad=2) for o in taken)
        ):
            t.remove()  # does not fit on its edge: the CSV has every distance
            continue
        taken.append(bb)
        edge_text.append(t)
    notes = _notes(groups, labels, key, left_out)
    for grp in _overlapping(px, 6 * scale):
        far = max(float(sub[a, b]) for a in grp for b in grp)
        notes += textwrap.wrap(
            f"drawn on top of each other (at most {far:.3g} apart): " + ", ".join(texts[i] for i in grp),
            130,
            subsequent_indent="    ",
        )
    _footnote(ax, notes)
    return fig, node_text, edge_text


def plot_graph(m: np.ndarray, names: list[str], title: str, path: Path) -> Path:
    """The notebook's weighted graph: models at distance 0 merged into one node ("base (+2 identical)"), nodes
    placed to match the distances (stress layout from classical MDS), edges thicker for closer pairs (every
    pair up to 8 nodes, the nearest-neighbour tree beyond), distances written on the edges where they fit."""
    fig, _, _ = graph_figure(m, names, title)
    return _save(fig, _plt(), path)


def mds_figure(m: np.ndarray, names: list[str], title: str):
    """(figure, point labels) of :func:`plot_mds`, not saved."""
    from sdlens.render.labels import place_labels

    plt = _plt()
    labels, groups, sub, xy, left_out = _points(m, names)
    fig, ax = _map_axes(plt, xy, len(groups))
    sizes = [40 + 25 * (len(grp) - 1) for grp in groups]
    ax.scatter(xy[:, 0], xy[:, 1], s=sizes, color="#4C72B0", zorder=3)
    ax.set_title(
        f"{title}\npoint = models at distance 0; axes in distance units; the map holds "
        f"{100 * mds_explained(sub):.0f}% of the squared spread",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.margins(0.12)
    ax.tick_params(labelsize=7)
    scale = fig.dpi / 72
    names_ = [group_label(grp, labels) for grp in groups]
    texts, key, _ = place_labels(ax, xy, names_, fontsize=8, marker_px=5 * scale)
    notes = _notes(groups, labels, key, left_out)
    for grp in _overlapping(ax.transData.transform(xy), 5 * scale):
        far = max(float(sub[a, b]) for a in grp for b in grp)
        notes += textwrap.wrap(
            f"drawn on top of each other (at most {far:.3g} apart): " + ", ".join(names_[i] for i in grp),
            130,
            subsequent_indent="    ",
        )
    _footnote(ax, notes)
    return fig, texts


def plot_mds(m: np.ndarray, names: list[str], title: str, path: Path) -> Path:
    """A 2-D map of the models whose pairwise distances best match the matrix: classical (Torgerson) MDS,
    the optimal 2-D projection for L2 distances, deterministic and with no iterations. Identical models are
    one point; labels never overprint."""
    fig, _ = mds_figure(m, names, title)
    return _save(fig, _plt(), path)


def from_ref_figure(matrices: dict[str, np.ndarray], names: list[str], ref: int):
    """The figure of :func:`plot_from_ref`, not saved."""
    plt = _plt()
    labels = _short(names)
    others = np.arange(len(names)) != ref
    same = [g for g, m in matrices.items() if np.nan_to_num(m[ref], nan=1.0).max() == 0]
    alone = [g for g, m in matrices.items() if np.isnan(m[ref][others]).all()]
    matrices = {g: m for g, m in matrices.items() if g not in same + alone} or dict(
        list(matrices.items())[:1]
    )
    n, k = len(names), len(matrices)
    fig, axes = plt.subplots(
        1, k, figsize=(1.6 + 2.6 * k, 0.24 * n + 1.4), sharey=True, squeeze=False, layout="constrained"
    )
    y = np.arange(n)
    colours = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B2", "#937860"]
    for ax, (group, m), colour in zip(axes[0], matrices.items(), colours * 4, strict=False):
        d = m[ref]
        ok = ~np.isnan(d)
        ax.hlines(y[ok], 0, d[ok], color=colour, lw=1.5, alpha=0.6)
        zero = ok & (d == 0)
        ax.scatter(d[ok & ~zero], y[ok & ~zero], color=colour, s=22, zorder=3)
        ax.scatter(d[zero], y[zero], facecolors="white", edgecolors=colour, s=22, zorder=3)
        top = float(np.nanmax(d)) if ok.any() else 0.0
        for i in np.flatnonzero(~ok):
            ax.text(0, i, " n/a", va="center", fontsize=7, color="#888888")
        ax.set_xlim(-0.03 * (top or 1.0), (top or 1.0) * 1.08)
        ax.set_title(group, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("distance", fontsize=8)
    axes[0, 0].set_yticks(
        y, [f"{t} (reference)" if i == ref else t for i, t in enumerate(labels)], fontsize=8
    )
    axes[0, 0].set_ylim(n - 0.5, -0.5)
    heading = f"distance from {labels[ref]}, per component (open circle: identical; n/a: not comparable)"
    if same:
        heading += f"\nidentical to {labels[ref]} in every model, no panel: {', '.join(same)}"
    if alone:
        heading += f"\nnot comparable with {labels[ref]} (absent or another architecture), no panel: {', '.join(alone)}"
    fig.suptitle(heading, fontsize=10)
    return fig


def plot_from_ref(matrices: dict[str, np.ndarray], names: list[str], ref: int, path: Path) -> Path:
    """Each group's distance from the reference model, model by model: one panel per group (its own scale),
    a point and a bar from 0 per model, models listed down the side."""
    return _save(from_ref_figure(matrices, names, ref), _plt(), path)


def plot_identity(identity: dict[str, list[list[str]]], names: list[str], path: Path) -> Path:
    """Which models share bit-identical components: one column per component, a shared letter per group."""
    plt = _plt()
    comps = [c for c in identity if identity[c]] or list(identity)
    cells = [["" for _ in comps] for _ in names]
    for j, c in enumerate(comps):
        for k, grp in enumerate(identity[c]):
            for n in grp:
                cells[names.index(n)][j] = chr(ord("A") + k % 26)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(comps) + 3), 0.2 * (len(names) + 1) + 0.6))
    ax.set_axis_off()
    table = ax.table(
        cellText=cells or [[""]],
        rowLabels=_short(names),
        colLabels=comps or ["-"],
        loc="upper center",
        cellLoc="center",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    ax.set_title("bit-identical components (same letter = same bytes)", fontsize=10)
    return _save(fig, plt, path)
