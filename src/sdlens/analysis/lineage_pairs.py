"""lineage's pairwise evidence: components shared bit for bit, bases named in metadata, close pairs that
share a text encoder or VAE (fine-tunes), and the minimum spanning tree that joins the rest (nearest only)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from sdlens.analysis.lineage_context import (
    BASE_FIELDS,
    FINE_TUNE,
    SHARED_PARTS,
    Context,
    Edge,
    distances,
    near_dup_limit,
    part_label,
    shared_between,
)
from sdlens.arch import registry as R


def same_component_edges(ctx: Context, parts: dict[str, list[list[int]]]) -> list[Edge]:
    """One edge per pair of models sharing a bit-identical part, each group of a part linked as a star (its
    first model and the rest), every edge naming all the parts its two models share."""
    pairs: dict[tuple[int, int], list[str]] = {}
    for groups in parts.values():
        for g in groups:
            for j in g[1:]:
                pairs.setdefault((g[0], j), shared_between(parts, g[0], j))
    edges = []
    for (i, j), comps in pairs.items():
        copy = set(parts) <= set(comps)
        labels = ", ".join(part_label(c) for c in comps)
        note = f"bit-identical {labels}" + (" (a copy: every part is identical)" if copy else "")
        edges.append(
            Edge(
                "same-component",
                ctx.names[i],
                ctx.names[j],
                False,
                True,
                *distances(ctx, i, j),
                components=comps,
                copy=copy,
                found_by="identity",
                note=note,
            )
        )
    return edges


def named_bases(ctx: Context, metas: list[dict[str, str]]) -> dict[int, tuple[str, int | None]]:
    """Per model whose metadata names a base: (the name as written, the input it matches or None)."""
    keys: dict[str, int] = {}
    for i, m in enumerate(ctx.pl.models):
        p = Path(m.path)
        for k in (p.name, p.stem, m.name):
            keys.setdefault(k.lower(), i)
    out = {}
    for i, meta in enumerate(metas):
        named = next((meta[f] for f in BASE_FIELDS if meta.get(f) not in (None, "", "None")), None)
        if named is None:
            continue
        tail = Path(named.replace("\\", "/")).name.lower()
        hit = keys.get(tail, keys.get(Path(tail).stem))
        out[i] = (named, hit if hit != i else None)
    return out


def _pair_edge(ctx: Context, parts, i: int, j: int, found_by: str, *, nearest: bool) -> Edge | None:
    """The edge of two close models: near-duplicates (relative distance ≤ NEAR_DUP), a fine-tune (≤
    FINE_TUNE and a shared bit-identical text encoder or VAE); else, with ``nearest``, a nearest-only edge."""
    i, j = sorted((i, j))
    d, rel = distances(ctx, i, j)
    shared = [
        c
        for c in shared_between(parts, i, j)
        if R.COMPONENT_PARTS.get(c.split("@")[0], "VAE") in SHARED_PARTS
    ]
    a, b = ctx.names[i], ctx.names[j]
    if rel is not None and rel <= near_dup_limit(ctx.dtypes, i, j):
        note = (
            f"near-duplicates (relative distance {rel:.2g}): a re-save at another precision, or barely "
            "trained (which of them came first is not known)"
        )
        return Edge(
            "fine-tune", a, b, False, True, d, rel, components=shared, near_duplicate=True, found_by=found_by,
            note=note,
        )  # fmt: skip
    if rel is not None and rel <= FINE_TUNE and shared:
        labels = ", ".join(part_label(c) for c in shared)
        note = (
            f"relative distance {rel:.3g}, bit-identical {labels}: one is a fine-tune of the other (which of "
            "them is not known), or both are fine-tunes of a base not among these"
        )
        return Edge("fine-tune", a, b, False, True, d, rel, components=shared, found_by=found_by, note=note)
    if not nearest:
        return None
    why = f"relative distance {rel:.3g}" if rel is not None else "no distance"
    note = f"only the nearest neighbour ({why}): no evidence of a relation"
    return Edge("nearest", a, b, False, False, d, rel, components=shared, found_by=found_by, note=note)


def close_pairs(ctx: Context, parts, linked: set[frozenset[int]]) -> list[Edge]:
    """Each node with its nearest other node, where the two are near-duplicates or a fine-tune and no edge
    links them yet (the spanning tree would miss the pair where other evidence already joins them)."""
    edges, done = [], set(linked)
    for t in ctx.reps:
        others = [c for c in ctx.reps if c != t and np.isfinite(ctx.dist[t, c])]
        if not others:
            continue
        n = min(others, key=lambda c: ctx.dist[t, c])
        pair = frozenset((t, n))
        if pair not in done and (e := _pair_edge(ctx, parts, t, n, "nearest neighbour", nearest=False)):
            edges.append(e)
        done.add(pair)
    return edges


def spanning_edges(ctx: Context, joined: list[tuple[int, int]], parts) -> list[Edge]:
    """Minimum spanning tree on denoiser distances over the nodes, the evidence pairs ``joined`` already
    linked: each new edge a near-duplicate or ``fine-tune`` (``_pair_edge``), or only ``nearest``."""
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(ctx.reps)
    for i, j in itertools.combinations(ctx.reps, 2):
        if np.isfinite(ctx.dist[i, j]):
            g.add_edge(i, j, weight=float(ctx.dist[i, j]))
    for i, j in joined:
        if g.has_edge(ctx.rep_of[i], ctx.rep_of[j]):
            g[ctx.rep_of[i]][ctx.rep_of[j]]["weight"] = 0.0
    tree = sorted(nx.minimum_spanning_tree(g).edges(data="weight"), key=lambda e: e[2])
    return [_pair_edge(ctx, parts, i, j, "spanning tree", nearest=True) for i, j, w in tree if w != 0.0]
