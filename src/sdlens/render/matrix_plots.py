"""Figures for ``sdlens matrix``: clustered heatmap, weighted graph, distance from the reference, MDS map,
identity table. Each takes one N×N matrix (NaN where not comparable) and the model names."""

from __future__ import annotations

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
        tree = dendrogram(linkage(squareform(sub, checks=False), "average"), ax=ax_d, no_labels=True,
                          color_threshold=0)
        ax_d.set_axis_off()
        order = tree["leaves"]
    else:
        order = list(range(n))
    ax = fig.add_axes((0.25, 0.22, 0.58, 0.54))
    im = ax.imshow(sub[np.ix_(order, order)], cmap="viridis", aspect="auto")  # columns under the leaves
    ax.set_xticks(range(n), [labels[i] for i in order], rotation=90, fontsize=8)
    ax.set_yticks(range(n), [labels[i] for i in order], fontsize=8)
    if n <= 12:
        for i, a in enumerate(order):
            for j, b in enumerate(order):
                ax.text(j, i, f"{sub[a, b]:.3g}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, cax=fig.add_axes((0.86, 0.22, 0.02, 0.54)))
    fig.suptitle(title, fontsize=11)
    return _save(fig, plt, path)


def _classical_mds(d: np.ndarray) -> np.ndarray:
    """2-D coordinates whose distances best match ``d`` (Torgerson): exact for Euclidean (L2) distances."""
    n = len(d)
    j = np.eye(n) - 1.0 / n
    b = -0.5 * j @ (d**2) @ j
    w, v = np.linalg.eigh(b)
    top = np.argsort(w)[::-1][:2]
    return v[:, top] * np.sqrt(np.clip(w[top], 0, None))


def plot_graph(m: np.ndarray, names: list[str], title: str, path: Path) -> Path:
    """The notebook's weighted graph: models at distance 0 merged into one node, nodes placed from the
    distances (classical MDS), edges thicker for closer pairs and labelled when there are few."""
    import networkx as nx

    plt = _plt()
    keep = list(_comparable(m))
    labels = _short(names)
    nodes: list[list[int]] = []
    for i in keep:
        for grp in nodes:
            if m[grp[0], i] == 0.0:
                grp.append(i)
                break
        else:
            nodes.append([i])
    reps = [grp[0] for grp in nodes]
    text = [" = ".join(labels[i] for i in grp) for grp in nodes]
    sub = m[np.ix_(reps, reps)]
    xy = _classical_mds(sub) if len(reps) > 1 else np.zeros((1, 2))
    g = nx.Graph()
    for k, t in enumerate(text):
        g.add_node(t, pos=tuple(xy[k]))
    top = float(np.nanmax(sub)) or 1.0
    for a in range(len(reps)):
        for b in range(a + 1, len(reps)):
            g.add_edge(text[a], text[b], weight=float(sub[a, b]))
    pos = nx.get_node_attributes(g, "pos")
    fig, ax = plt.subplots(figsize=(8, 7))
    widths = [0.5 + 3.5 * (1 - g[u][v]["weight"] / top) for u, v in g.edges]
    nx.draw_networkx(g, pos, ax=ax, node_color="#8fb3de", width=widths, edge_color="#aaaaaa", font_size=8)
    if len(reps) <= 10:
        nx.draw_networkx_edge_labels(g, pos, ax=ax, font_size=6,
                                     edge_labels={(u, v): f"{d['weight']:.3g}" for u, v, d in g.edges(data=True)})
    ax.set_title(title)
    ax.set_axis_off()
    ax.set_aspect("equal", adjustable="datalim")  # to scale: distances on the page match the matrix
    ax.margins(0.15)
    return _save(fig, plt, path)


def plot_from_ref(matrices: dict[str, np.ndarray], names: list[str], ref: int, path: Path) -> Path:
    """The notebook's line chart: each group's distance from the reference model, model by model."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(7, 0.45 * len(names) + 3), 4.5))
    x = np.arange(len(names))
    for group, m in matrices.items():
        ax.plot(x, m[ref], marker="o", label=group)
    ax.set_xticks(x, _short(names), rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("distance")
    ax.set_title(f"distance from {_short(names)[ref]}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, plt, path)


def plot_mds(m: np.ndarray, names: list[str], title: str, path: Path) -> Path:
    """A 2-D map of the models whose pairwise distances best match the matrix: classical (Torgerson) MDS,
    the optimal 2-D projection for L2 distances, deterministic and with no iterations."""
    plt = _plt()
    keep = _comparable(m)
    sub = m[np.ix_(keep, keep)]
    xy = _classical_mds(sub)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(xy[:, 0], xy[:, 1], s=40)
    for (px, py), i in zip(xy, keep, strict=True):
        ax.annotate(_short(names)[i], (px, py), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_title(title)
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    return _save(fig, plt, path)


def plot_identity(identity: dict[str, list[list[str]]], names: list[str], path: Path) -> Path:
    """Which models share bit-identical components: one column per component, a shared letter per group."""
    plt = _plt()
    comps = [c for c in identity if identity[c]] or list(identity)
    cells = [["" for _ in comps] for _ in names]
    for j, c in enumerate(comps):
        for k, grp in enumerate(identity[c]):
            for n in grp:
                cells[names.index(n)][j] = chr(ord("A") + k % 26)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(comps) + 3), 0.35 * len(names) + 1.2))
    ax.set_axis_off()
    table = ax.table(cellText=cells or [[""]], rowLabels=_short(names), colLabels=comps or ["-"], loc="center",
                     cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    ax.set_title("bit-identical components (same letter = same bytes)", fontsize=10)
    return _save(fig, plt, path)
