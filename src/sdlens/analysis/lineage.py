"""``lineage``: the family tree of a set of models, from one pass over all of them.

The evidence, in order (each file read once, by the matrix engine with the sums ``merge_fit`` needs):

1. **identity**: models whose text encoder, VAE or denoiser are bit-identical (``same-component``); models
   bit-identical in the denoiser, and near-duplicates, are one node for the fits;
2. **merges**: every model is fitted, block by block, as a convex combination (non-negative weights summing
   to 1) of the others; where that explains it ("explained", or "trained further" against the nearest
   model that is no merge) the smallest set of parents that does as well is kept — convexity gives the
   direction, since a parent cannot be a convex combination of its child and another parent; a model no
   fit explains is tested for DARE, TIES and crossover with recipe's element evidence against its nearest
   models (``lineage_methods``);
3. **add-difference**: ``M = C + α(B − A)`` (affine, weights 1, α, −α) links M and C, without a direction
   (it is also ``C = M + α(A − B)``);
4. **metadata**: a base named in the metadata (kohya ``ss_sd_model_name``, ``modelspec.base_model``) that is
   among the inputs is a directed ``fine-tune`` edge;
5. **close pairs**: a model and its nearest neighbour, close in relative distance and sharing a
   bit-identical text encoder or VAE, are a ``fine-tune`` (direction unknown);
6. the rest is joined by a **minimum spanning tree** on the denoisers' L2 distances: an edge that is no
   fine-tune by 5's rule is only ``nearest`` (no evidence of a relation).

See ``docs/lineage.md``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sdlens.analysis import matrix_plan
from sdlens.analysis.lineage_context import (
    FINE_TUNE,
    NEAR_DUP,
    NOISE,
    PARENT_WEIGHT,
    TRAINED_NEAREST,
    Edge,
    Node,
    build_context,
    distances,
    part_label,
    read_headers,
    shared_between,
    shared_parts,
)
from sdlens.analysis.lineage_merges import add_differences, find_merges, merge_record
from sdlens.analysis.lineage_methods import nonlinear_merges
from sdlens.analysis.lineage_pairs import close_pairs, named_bases, same_component_edges, spanning_edges
from sdlens.analysis.matrix_plan import Plan
from sdlens.analysis.matrix_run import run_plan
from sdlens.analysis.matrix_state import Partial
from sdlens.analysis.merge_fit import EXPLAINED, TRAINED
from sdlens.errors import SdlensError


@dataclass
class Lineage:
    nodes: list[Node]
    edges: list[Edge]
    roots: list[str]
    identity: dict[str, list[list[str]]]  # component -> groups of models bit-identical in it
    merges: list[dict[str, Any]]
    family: str
    thresholds: dict[str, float]
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [e.to_dict() for e in self.edges],
            "roots": self.roots,
            "identity": self.identity,
            "merges": self.merges,
            "thresholds": self.thresholds,
            "skipped": self.skipped,
            "notes": self.notes,
        }

    def edges_of(self, kind: str) -> list[Edge]:
        return [e for e in self.edges if e.kind == kind]


def lineage(
    paths: Sequence[str | Path],
    *,
    time_embed: str = "IN00",
    workers: int | None = None,
    chunk_bytes: int = 256 << 20,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
) -> Lineage:
    """The family tree of ``paths`` (files; see ``io.open.expand_paths`` for folders). Inputs that cannot be
    read are left out and listed in ``skipped``."""
    try:
        pl = matrix_plan.plan(paths, metric="cos", time_embed=time_embed)
    except SdlensError as e:  # the engine's words name matrix
        if e.problem.startswith("matrix needs"):
            raise SdlensError(e.path, "lineage" + e.problem.removeprefix("matrix")) from None
        raise
    if on_plan:
        on_plan(pl)
    total = run_plan(
        pl, metric="gram", device="cpu", progress=progress, workers=workers, chunk_bytes=chunk_bytes
    )
    return build(pl, total)


def _uniquely_named(pl: Plan) -> Plan:
    """The plan with its models' names told apart (``a/model.safetensors`` beside ``b/model.safetensors``)."""
    names = [m.name for m in pl.models]
    if len(set(names)) == len(names):
        return pl
    out = []
    for m in pl.models:
        parts = Path(m.path).parts
        k = 1
        while (
            k < len(parts) and sum(Path(*Path(o.path).parts[-k:]) == Path(*parts[-k:]) for o in pl.models) > 1
        ):
            k += 1
        out.append(replace(m, name=str(Path(*parts[-k:]))))
    return replace(pl, models=out)


def build(pl: Plan, total: Partial) -> Lineage:
    """The lineage from a plan (``metric="cos"``) and its summed sums."""
    pl = _uniquely_named(pl)
    metas, dtypes = read_headers(pl)
    ctx = build_context(pl, total, dtypes)
    names = ctx.names
    parts = shared_parts(pl, total)
    nodes = [
        Node(m.name, m.path, m.family, i, None if np.isnan(ctx.norms[i]) else float(ctx.norms[i]))
        for i, m in enumerate(pl.models)
    ]
    for i, r in ctx.rep_of.items():
        if r != i:
            nodes[i].same_denoiser_as = names[r]
    for j, i in ctx.twin_of.items():
        nodes[j].near_duplicate_of = names[i]
    merges = find_merges(ctx)
    edges: list[Edge] = same_component_edges(ctx, parts)
    records = []
    joined: list[tuple[int, int]] = []
    for t, f in merges.items():
        rec, es = merge_record(ctx, t, f)
        records.append(rec)
        edges += es
        joined += [(p, t) for p in f.parents]
        nodes[t].explained_by = [names[p] for p in f.parents]
    adds = add_differences(ctx, set(merges))
    edges += adds
    index = {nm: i for i, nm in enumerate(names)}
    linked = {index[nm] for e in adds for nm in (e.source, e.target)}
    tested = [t for t in ctx.core if t not in merges and t not in linked]
    more, es = nonlinear_merges(ctx, tested, {t: list(f.parents) for t, f in merges.items()})
    for rec in more:
        t = index[rec["model"]]
        nodes[t].explained_by = list(rec["parents"])
        joined += [(index[p], t) for p in rec["parents"]]
    records += more
    edges += es
    joined += [(index[e.source], index[e.target]) for e in adds]
    for i, (named, base) in named_bases(ctx, metas).items():
        nodes[i].named_base = named
        if base is None or nodes[i].explained_by:
            continue
        nodes[i].explained_by = [names[base]]
        joined.append((base, i))
        edges.append(
            Edge(
                "fine-tune",
                names[base],
                names[i],
                True,
                True,
                *distances(ctx, base, i),
                components=shared_between(parts, base, i),
                found_by="metadata",
                note=f"the metadata of {names[i]} names its base: {named}",
            )
        )
    close = close_pairs(ctx, parts, {frozenset((ctx.rep_of[i], ctx.rep_of[j])) for i, j in joined})
    edges += close
    joined += [(index[e.source], index[e.target]) for e in close]
    edges += spanning_edges(ctx, joined, parts)
    identity = {
        part_label(c): [[names[i] for i in g] for g in groups] for c, groups in parts.items() if groups
    }
    fams = [m.family for m in pl.models if m.family != "unknown"]
    lin = Lineage(
        nodes,
        edges,
        [],
        identity,
        records,
        max(set(fams), key=fams.count) if fams else "unknown",
        {
            "explained_share": EXPLAINED,
            "trained_further_share": TRAINED,
            "trained_further_vs_nearest": TRAINED_NEAREST,
            "parent_weight": PARENT_WEIGHT,
            "fine_tune_relative_distance": FINE_TUNE,
            "near_duplicate_relative_distance": NEAR_DUP,
            "fit_noise": NOISE,
        },
        skipped=list(pl.skipped),
    )
    lin.roots = roots(lin)
    if not ctx.blocks:
        lin.notes.append("no merge blocks (no denoiser the family's block map knows): merges not tested")
    return lin


def roots(lin: Lineage) -> list[str]:
    """Where the tree starts, per connected part of the evidence: the bases metadata names and the parents of
    merges, that are themselves neither, else its first model with the most evidence edges; a model
    with no evidence of any relation is a root of its own."""
    import networkx as nx

    g = nx.Graph()
    reps = [n.name for n in lin.nodes if n.same_denoiser_as is None]
    g.add_nodes_from(reps)
    directed_in = {e.target for e in lin.edges if e.directed}
    tree = [e for e in lin.edges if e.evidence and e.kind != "same-component"]
    g.add_edges_from((e.source, e.target) for e in tree if e.source in g and e.target in g)
    named = {n.explained_by[0] for n in lin.nodes if n.named_base and n.explained_by}
    parents = {e.source for e in lin.edges if e.kind == "merge"}
    order = {n.name: n.index for n in lin.nodes}
    out = []
    for comp in sorted(nx.connected_components(g), key=lambda c: min(order[x] for x in c)):
        free = [x for x in comp if x not in directed_in]
        pick = [x for x in free if x in named or x in parents]
        if not pick:
            pool = free or list(comp)
            pick = [max(pool, key=lambda x: (g.degree(x), -order[x]))]
        out += sorted(pick, key=order.get)
    return out
