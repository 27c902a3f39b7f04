"""``lineage``: the family tree of a set of models, from one pass over all of them.

The evidence, in order (each file read once, by the matrix engine with the sums ``merge_fit`` needs):

1. **identity**: models whose text encoder, VAE or denoiser are bit-identical (``same-component``); models
   bit-identical in the denoiser, and near-duplicates, are one node for the fits;
2. **merges**: every model is fitted, block by block, as a convex combination (non-negative weights summing
   to 1) of the others; where that explains it ("explained", or "trained further" against the nearest
   model that is no merge) the smallest set of parents that does as well is kept — convexity gives the
   direction, since a parent cannot be a convex combination of its child and another parent;
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

import itertools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sdlens.analysis import matrix_plan
from sdlens.analysis.matrix_plan import Plan
from sdlens.analysis.matrix_result import finish
from sdlens.analysis.matrix_state import Partial
from sdlens.analysis.merge_fit import EXPLAINED, ROUNDING, TRAINED, fit_group, verdict
from sdlens.analysis.recipe import one_pass
from sdlens.arch import registry as R
from sdlens.errors import SdlensError
from sdlens.io.open import open_checkpoint

PARENT_WEIGHT = 0.05  # a candidate weighing at least this (overall, or in half the blocks) may be a parent
MAX_PARENTS = 4  # parent sets searched up to this size (smallest first)
MAX_SUPPORT = 6  # ... among at most this many candidates (the heaviest)
FINE_TUNE = 0.1  # ‖M − P‖ / ‖P‖ at or below which an MST edge sharing a TE / VAE is a fine-tune
NEAR_DUP = 1e-3  # relative distance at or below which two models are near-duplicates (one node for the fits)
NEAR_DUP_ROUNDINGS = 10  # ... or at most this many times the RMS rounding of the coarser storage of the two
NOISE = 3e-4  # residual the pairwise sums' float32 precision leaves, relative to the distance fitted
TRAINED_NEAREST = 0.8  # a merge trained further leaves at most this of its distance to the nearest model
ADD_DIFF_NEAR = 10  # add-difference triples are sought among the nearest this many models
ADD_DIFF_ONE = 0.02  # |w − 1| within which a weight is the "1" of C + α(B − A)
ADD_DIFF_MIN = 0.05  # |α| below which it is no add-difference
BASE_FIELDS = ("ss_sd_model_name", "modelspec.base_model")  # metadata fields naming a base model
_SHARED_PARTS = ("text encoders", "VAE")  # parts whose identity marks a fine-tune (registry.COMPONENT_PARTS)
_ACCEPT = ("explained", "trained further")


@dataclass
class Node:
    name: str
    path: str
    family: str
    index: int
    norm: float | None  # ‖denoiser‖
    same_denoiser_as: str | None = None  # the node standing for this one (bit-identical denoiser)
    near_duplicate_of: str | None = None  # the node the fits use instead (relative distance ≤ NEAR_DUP)
    explained_by: list[str] | None = None  # merge parents, or the base its metadata names
    named_base: str | None = None  # the base the metadata names (as written)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Edge:
    kind: str  # merge / add-difference / fine-tune / same-component / nearest
    source: str  # the parent where ``directed``
    target: str  # the child where ``directed``
    directed: bool
    evidence: bool  # False: only the nearest neighbour in the spanning tree
    distance: float | None = None  # ‖a − b‖ over the denoiser
    relative_distance: float | None = None  # distance / the smaller norm
    weight: float | None = None  # merge: the parent's overall weight (by parameter count)
    weights: dict[str, float] | None = (
        None  # merge: the parent's weight per block; add-difference: α per block
    )
    residual_share: float | None = None  # the child's (merge) or the relation's (add-difference)
    verdict: str | None = None
    trained_further: bool = False
    alpha: float | None = None  # add-difference
    difference: list[str] | None = None  # add-difference: [B, A] of source = target + α(B − A)
    components: list[str] = field(default_factory=list)  # same-component / fine-tune: the shared parts
    copy: bool = False  # same-component: every part bit-identical
    near_duplicate: bool = False  # fine-tune: within a few storage roundings of each other
    found_by: str | None = None  # fit, metadata, identity, nearest neighbour, spanning tree
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    total = one_pass(pl, progress=progress, workers=workers, chunk_bytes=chunk_bytes)
    return build(pl, total)


# --------------------------------------------------------------------------- the pieces


@dataclass
class _Ctx:
    pl: Plan
    total: Partial
    names: list[str]
    dtypes: list[str]
    blocks: list[str]  # "block:*" groups
    numel: dict[str, int]  # block group -> parameters
    dist: np.ndarray  # denoiser L2 distances, NaN where not comparable
    norms: np.ndarray  # ‖denoiser‖ (NaN where none)
    reps: list[int]  # one model per set of bit-identical denoisers
    rep_of: dict[int, int]
    twin_of: dict[int, int]  # a near-duplicate node -> the node the fits use (finer storage, else earlier)

    @property
    def core(self) -> list[int]:
        """The nodes the fits use: near-duplicates are one (the first)."""
        return [r for r in self.reps if r not in self.twin_of]


def _headers(pl: Plan) -> tuple[list[dict[str, str]], list[str]]:
    """Per model: its metadata and most common stored float dtype (headers only)."""
    metas, dtypes = [], []
    for m in pl.models:
        with open_checkpoint(m.path) as ck:
            metas.append(dict(ck.metadata))
            counts: dict[str, int] = {}
            for t in ck.tensors.values():
                counts[t.dtype] = counts.get(t.dtype, 0) + t.numel
            dtypes.append(max(counts, key=counts.get) if counts else "F32")
    return metas, dtypes


def _context(pl: Plan, total: Partial, dtypes: list[str]) -> _Ctx:
    n = len(pl.models)
    blocks = [g for g in pl.groups if g.startswith("block:")]
    numel = {g: 0 for g in blocks}
    for task in pl.tasks:
        for kp in task.keys:
            for g in kp.groups:
                if g in numel:
                    numel[g] += kp.numel
    sig = pl.signatures.get("denoiser", [None] * n)
    acc = total.group("denoiser")
    ok = np.array([[sig[i] is not None and sig[i] == sig[j] for j in range(n)] for i in range(n)])
    dist = np.where(ok, np.sqrt(np.clip(acc["d2"], 0, None)), np.nan)
    norms = np.array([np.sqrt(max(acc["sq"][i, i], 0.0)) if sig[i] else np.nan for i in range(n)])
    same = ok & (acc["same"] == acc["both"]) & (acc["both"] > 0)
    reps: list[int] = []
    rep_of: dict[int, int] = {}
    for i in range(n):
        r = next((r for r in reps if same[i, r]), None) if sig[i] else None
        if r is None:
            reps.append(i)
            rep_of[i] = i
        else:
            rep_of[i] = r
    twin_of: dict[int, int] = {}
    finest = sorted(reps, key=lambda i: (ROUNDING.get(dtypes[i], ROUNDING["F32"]), i))  # fp32 before fp16
    for k, j in enumerate(finest):
        for i in finest[:k]:
            low = min(norms[i], norms[j])
            if i not in twin_of and low > 0 and dist[i, j] <= _near_dup(dtypes, i, j) * low:
                twin_of[j] = i
                break
    names = [m.name for m in pl.models]
    return _Ctx(pl, total, names, dtypes, blocks, numel, dist, norms, reps, rep_of, twin_of)


def _near_dup(dtypes: list[str], i: int, j: int) -> float:
    """The relative distance at or below which models ``i`` and ``j`` are near-duplicates."""
    rounding = max(ROUNDING.get(dtypes[i], ROUNDING["F32"]), ROUNDING.get(dtypes[j], ROUNDING["F32"]))
    return max(NEAR_DUP, NEAR_DUP_ROUNDINGS * rounding)


def _cands(ctx: _Ctx, t: int) -> list[int]:
    """The other nodes comparable with ``t`` over the whole denoiser."""
    return [c for c in ctx.core if c != t and np.isfinite(ctx.dist[t, c])]


@dataclass
class _Fit:
    parents: list[int]
    weights: dict[str, dict[int, float] | None]  # block -> parent -> weight (None: parents identical there)
    overall: dict[int, float]  # parent -> weight by parameter count, over the blocks that tell
    residual: float  # √Σ blocks' residual²
    noise: float  # what the sums' precision leaves of a residual: NOISE × √Σ blocks' distance² to the nearest
    share: float = 0.0  # residual / the distance it is judged against (set by ``judge``)
    verdict: str = ""
    nearest_share: float = 0.0  # residual / the distance to the nearest other model

    def judge(self, ctx: _Ctx, t: int, against: float, nearest: float) -> _Fit:
        self.share = self.residual / against if against > 0 else 0.0
        self.nearest_share = self.residual / nearest if nearest > 0 else 0.0
        floor = ctx.norms[t] * ROUNDING.get(ctx.dtypes[t], ROUNDING["F32"]) / against if against > 0 else 0.0
        self.verdict = verdict(self.share, floor, against)
        return self


def _convex_fit(ctx: _Ctx, t: int, cands: list[int]) -> _Fit:
    """The blocks' convex fits of ``t`` from ``cands``: weights per block and overall, the residual."""
    weights: dict[str, dict[int, float] | None] = {}
    res2 = near2 = 0.0
    for g in ctx.blocks:
        f = fit_group(g[6:], ctx.total.group(g), t, cands, ctx.dtypes[t])
        best = f.convex or f.affine
        # where some candidates are bit-identical here, how their weight splits cannot be told: no weights
        weights[g] = None if f.identical else dict(zip(cands, best.weights, strict=True))
        res2 += best.residual**2
        near2 += f.distance**2
    told = [g for g, w in weights.items() if w is not None]
    size = sum(ctx.numel[g] for g in told) or 1
    overall = {c: sum(weights[g][c] * ctx.numel[g] for g in told) / size for c in cands}
    return _Fit(list(cands), weights, overall, float(np.sqrt(res2)), NOISE * float(np.sqrt(near2)))


def _support(fit: _Fit) -> list[int]:
    """The candidates that may be parents: a weight of at least PARENT_WEIGHT overall or in half the blocks."""
    told = [w for w in fit.weights.values() if w is not None]
    keep = [
        c
        for c in fit.parents
        if fit.overall[c] >= PARENT_WEIGHT
        or sum(w[c] >= PARENT_WEIGHT for w in told) * 2 >= max(len(told), 1)
    ]
    return sorted(keep, key=lambda c: -fit.overall[c])[:MAX_SUPPORT]


def _parents(ctx: _Ctx, t: int, full: _Fit, dists: tuple[float, float], interior: set[int]) -> _Fit | None:
    """The smallest parent set that explains ``t`` as well as all candidates do — a residual within 25 % of
    theirs, or within the sums' precision. Ties (several sets explain it: one parent an add-difference of
    the others, say): fewer parents that are merges themselves, then the larger smallest weight (a parent
    with 1 % is barely one), then the smaller residual. None where fewer than two parents would do."""
    support = _support(full)
    if len(support) < 2:
        return None
    for k in range(2, min(len(support), MAX_PARENTS) + 1):
        tried = [
            _convex_fit(ctx, t, list(s)).judge(ctx, t, *dists) for s in itertools.combinations(support, k)
        ]
        ok = [
            f
            for f in tried
            if f.verdict == full.verdict and f.residual <= max(1.25 * full.residual, full.residual + f.noise)
        ]
        if ok:
            return min(
                ok, key=lambda f: (len(interior & set(f.parents)), -min(f.overall.values()), f.residual)
            )
    refit = _convex_fit(ctx, t, support).judge(ctx, t, *dists)
    return refit if refit.verdict == full.verdict else None


def _merges(ctx: _Ctx) -> dict[int, _Fit]:
    """Every node tested as a convex merge of the others; accepted merges, none making a cycle.

    First the merges the fit explains ("explained" against the nearest other model); then the merges
    trained further, judged against the nearest model that is no such merge (a model trained on from a
    merge lies farther from the merge's parents than from the merge) and leaving at most
    TRAINED_NEAREST of its distance to the nearest model of all unexplained."""
    fulls: dict[int, tuple[_Fit, list[int], float]] = {}
    for t in ctx.core:
        cands = _cands(ctx, t)
        if len(cands) >= 2 and ctx.blocks:
            nearest = float(min(ctx.dist[t, c] for c in cands))
            fulls[t] = (_convex_fit(ctx, t, cands).judge(ctx, t, nearest, nearest), cands, nearest)
    exact = {t for t, (f, _, _) in fulls.items() if f.verdict == "explained"}
    accepted: dict[int, tuple[_Fit, tuple[float, float]]] = {}
    for t, (f, cands, nearest) in fulls.items():
        if t in exact:
            accepted[t] = (f, (nearest, nearest))
            continue
        plain = [c for c in cands if c not in exact]
        if not plain:
            continue
        against = float(min(ctx.dist[t, c] for c in plain))
        f.judge(ctx, t, against, nearest)
        if f.verdict == "trained further" and f.nearest_share <= TRAINED_NEAREST:
            accepted[t] = (f, (against, nearest))
    found: dict[int, _Fit] = {}
    for t, (f, dists) in accepted.items():
        got = _parents(ctx, t, f, dists, set(accepted))
        if got is not None and len(got.parents) >= 2:
            got.parents.sort()  # in input order: A, B as in A*(1-α) + B*α
            found[t] = got
    # direction from convexity; a cycle (possible only among merges trained further) keeps the better fit
    kept: dict[int, _Fit] = {}
    for t in sorted(found, key=lambda t: found[t].share):
        if not any(_reaches(kept, t, p) for p in found[t].parents):
            kept[t] = found[t]
    return kept


def _reaches(merges: dict[int, _Fit], start: int, goal: int) -> bool:
    """Whether ``goal`` descends from ``start`` through the accepted merges (parent → child)."""
    seen, todo = set(), [start]
    while todo:
        x = todo.pop()
        if x == goal:
            return True
        seen.add(x)
        todo += [c for c, f in merges.items() if x in f.parents and c not in seen]
    return False


def _add_differences(ctx: _Ctx, skip: set[int]) -> list[Edge]:
    """``M = C + α(B − A)`` over the whole denoiser (affine fits on triples), one edge per relation."""
    den = ctx.total.group("denoiser")
    found: dict[tuple, Edge] = {}
    for t in ctx.core:
        if t in skip:
            continue
        cands = sorted((c for c in _cands(ctx, t) if c not in skip), key=lambda c: ctx.dist[t, c])
        cands = cands[:ADD_DIFF_NEAR]
        if len(cands) < 3:
            continue
        nearest = float(ctx.dist[t, cands[0]])
        every = fit_group("denoiser", den, t, cands, ctx.dtypes[t])  # no triple fits better than all of them
        if verdict(every.affine.residual / nearest, every.floor, nearest) not in _ACCEPT:
            continue
        best = None
        for tri in _screen(den["d2"], t, cands, nearest):
            f = fit_group("denoiser", den, t, tri, ctx.dtypes[t])
            form = _add_diff_form(tri, f.affine.weights)
            if form is None:
                continue
            share = f.affine.residual / nearest if nearest else 0.0
            if verdict(share, f.floor, nearest) in _ACCEPT and (best is None or share < best[0]):
                best = (share, form)
        if best is None:
            continue
        c, b, a, alpha = best[1]
        m = t
        if abs(alpha) > 1:  # the same relation read the other way: B = A + (M − C)/α
            m, c, b, a, alpha = b, a, m, c, 1 / alpha
        if alpha < 0:
            b, a, alpha = a, b, -alpha
        key = (frozenset((m, c)), frozenset((b, a)))
        if key not in found:
            found[key] = _add_diff_edge(ctx, m, c, b, a)
    return list(found.values())


def _screen(d2: np.ndarray, t: int, cands: list[int], nearest: float) -> list[tuple[int, int, int]]:
    """The triples of ``cands`` whose affine fit of ``t`` may read as C + α(B − A) (loose tolerances; each is
    then fitted by ``merge_fit``): all triples at once, from the squared distances (origin: the first)."""
    tri = np.array(list(itertools.combinations(cands, 3)), dtype=int).reshape(-1, 3)
    if not len(tri) or nearest <= 0:
        return []
    i, j, k = tri.T
    g11, g22 = d2[j, i], d2[k, i]
    g12 = 0.5 * (d2[j, i] + d2[k, i] - d2[j, k])
    b1 = 0.5 * (d2[t, i] + d2[j, i] - d2[t, j])
    b2 = 0.5 * (d2[t, i] + d2[k, i] - d2[t, k])
    with np.errstate(divide="ignore", invalid="ignore"):
        det = g11 * g22 - g12 * g12
        wj = (g22 * b1 - g12 * b2) / det
        wk = (g11 * b2 - g12 * b1) / det
        share = np.sqrt(np.clip(d2[t, i] - wj * b1 - wk * b2, 0, None)) / nearest
    w = np.stack([1 - wj - wk, wj, wk], axis=1)
    one = (np.abs(w - 1) <= 5 * ADD_DIFF_ONE).sum(axis=1) >= 1
    rest = (np.abs(w) >= 0.5 * ADD_DIFF_MIN).sum(axis=1) == 3
    keep = one & rest & (share <= 1.2 * TRAINED) & np.isfinite(share)
    return [tuple(int(x) for x in row) for row in tri[keep]]


def _add_diff_form(tri: Sequence[int], w: Sequence[float]) -> tuple[int, int, int, float] | None:
    """(C, B, A, α) where weights ``w`` over ``tri`` read as C + α(B − A), else None."""
    ones = [i for i in range(3) if abs(w[i] - 1) <= ADD_DIFF_ONE]
    if len(ones) != 1:
        return None
    i = ones[0]
    j, k = (x for x in range(3) if x != i)
    if abs(w[j] + w[k]) > ADD_DIFF_ONE or min(abs(w[j]), abs(w[k])) < ADD_DIFF_MIN:
        return None
    return tri[i], tri[j], tri[k], float(w[j])


def _add_diff_edge(ctx: _Ctx, m: int, c: int, b: int, a: int) -> Edge:
    """The edge M — C with α per block (affine fits of M from C, B, A per block)."""
    per_block: dict[str, float | None] = {}  # None: the block tells nothing (two of them identical there)
    for g in ctx.blocks:
        f = fit_group(g[6:], ctx.total.group(g), m, [c, b, a], ctx.dtypes[m])
        per_block[g[6:]] = None if f.identical else float(f.affine.weights[1])
    f = fit_group("denoiser", ctx.total.group("denoiser"), m, [c, b, a], ctx.dtypes[m])
    alpha = float(f.affine.weights[1])
    nearest = float(min(ctx.dist[m, x] for x in _cands(ctx, m)))
    share = f.affine.residual / nearest if nearest else 0.0
    v = verdict(share, f.floor, nearest)
    n = ctx.names
    note = (
        f"{n[m]} = {n[c]} + {alpha:.3g}·({n[b]} − {n[a]}), or equally "
        f"{n[c]} = {n[m]} + {alpha:.3g}·({n[a]} − {n[b]}): which was made from which is not known"
    )
    return Edge(
        "add-difference",
        n[m],
        n[c],
        False,
        True,
        *_distances(ctx, m, c),
        weights=per_block,
        residual_share=share,
        verdict=v,
        trained_further=v == "trained further",
        alpha=alpha,
        difference=[n[b], n[a]],
        found_by="fit",
        note=note,
    )


def _distances(ctx: _Ctx, i: int, j: int) -> tuple[float | None, float | None]:
    d = ctx.dist[i, j]
    if not np.isfinite(d):
        return None, None
    low = np.nanmin([ctx.norms[i], ctx.norms[j]])
    return float(d), float(d / low) if low > 0 else None


def _parts(pl: Plan, total: Partial) -> dict[str, list[list[int]]]:
    """Part -> groups (≥ 2 models) bit-identical in it: text encoders, VAE (as a whole where both halves
    are), denoiser."""
    res = finish(pl, total, metric="l2", by="component")
    index = {m.name: i for i, m in enumerate(pl.models)}
    out: dict[str, list[list[int]]] = {}
    for comp, groups in res.identity.items():
        part = R.COMPONENT_PARTS.get(comp.split("@")[0], "VAE" if comp == "vae" else None)
        if part is None:
            continue
        out[comp] = [[index[n] for n in g] for g in groups]
    if "vae" in out:
        for half in ("vae_encoder", "vae_decoder"):
            if out.get(half) == out["vae"]:
                del out[half]
    return out


def part_label(comp: str) -> str:
    """A part's name for people: CLIP-L, VAE, denoiser ..."""
    return "VAE" if comp == "vae" else R.COMPONENT_LABELS.get(comp.split("@")[0], comp)


def _shared(parts: dict[str, list[list[int]]], i: int, j: int) -> list[str]:
    return [c for c, groups in parts.items() if any(i in g and j in g for g in groups)]


def _same_component_edges(ctx: _Ctx, parts: dict[str, list[list[int]]]) -> list[Edge]:
    """One edge per pair of models sharing a bit-identical part, each group of a part linked as a star (its
    first model and the rest), every edge naming all the parts its two models share."""
    pairs: dict[tuple[int, int], list[str]] = {}
    for groups in parts.values():
        for g in groups:
            for j in g[1:]:
                pairs.setdefault((g[0], j), _shared(parts, g[0], j))
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
                *_distances(ctx, i, j),
                components=comps,
                copy=copy,
                found_by="identity",
                note=note,
            )
        )
    return edges


def _named_bases(ctx: _Ctx, metas: list[dict[str, str]]) -> dict[int, tuple[str, int | None]]:
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


def _pair_edge(ctx: _Ctx, parts, i: int, j: int, found_by: str, *, nearest: bool) -> Edge | None:
    """The edge of two close models: near-duplicates (relative distance ≤ NEAR_DUP), a fine-tune (≤
    FINE_TUNE and a shared bit-identical text encoder or VAE); else, with ``nearest``, a nearest-only edge."""
    i, j = sorted((i, j))
    d, rel = _distances(ctx, i, j)
    shared = [
        c for c in _shared(parts, i, j) if R.COMPONENT_PARTS.get(c.split("@")[0], "VAE") in _SHARED_PARTS
    ]
    a, b = ctx.names[i], ctx.names[j]
    if rel is not None and rel <= _near_dup(ctx.dtypes, i, j):
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


def _close_pairs(ctx: _Ctx, parts, linked: set[frozenset[int]]) -> list[Edge]:
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


def _spanning(ctx: _Ctx, joined: list[tuple[int, int]], parts) -> list[Edge]:
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


def _merge_record(ctx: _Ctx, t: int, f: _Fit) -> tuple[dict[str, Any], list[Edge]]:
    n = ctx.names
    trained = f.verdict == "trained further"
    rec = {
        "model": n[t],
        "parents": {n[p]: f.overall[p] for p in f.parents},
        "blocks": {
            g[6:]: None if w is None else {n[p]: w[p] for p in f.parents} for g, w in f.weights.items()
        },
        "residual_share": f.share,
        "residual_vs_nearest": f.nearest_share,
        "verdict": f.verdict,
    }
    text = " + ".join(f"{f.overall[p]:.3g}·{n[p]}" for p in f.parents)
    edges = [
        Edge(
            "merge",
            n[p],
            n[t],
            True,
            True,
            *_distances(ctx, p, t),
            weight=f.overall[p],
            weights={g[6:]: None if w is None else w[p] for g, w in f.weights.items()},
            residual_share=f.share,
            verdict=f.verdict,
            trained_further=trained,
            found_by="fit",
            note=f"{n[t]} ≈ {text}" + (" (then trained further)" if trained else ""),
        )
        for p in f.parents
    ]
    return rec, edges


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
    metas, dtypes = _headers(pl)
    ctx = _context(pl, total, dtypes)
    names = ctx.names
    parts = _parts(pl, total)
    nodes = [
        Node(m.name, m.path, m.family, i, None if np.isnan(ctx.norms[i]) else float(ctx.norms[i]))
        for i, m in enumerate(pl.models)
    ]
    for i, r in ctx.rep_of.items():
        if r != i:
            nodes[i].same_denoiser_as = names[r]
    for j, i in ctx.twin_of.items():
        nodes[j].near_duplicate_of = names[i]
    merges = _merges(ctx)
    edges: list[Edge] = _same_component_edges(ctx, parts)
    records = []
    joined: list[tuple[int, int]] = []
    for t, f in merges.items():
        rec, es = _merge_record(ctx, t, f)
        records.append(rec)
        edges += es
        joined += [(p, t) for p in f.parents]
        nodes[t].explained_by = [names[p] for p in f.parents]
    adds = _add_differences(ctx, set(merges))
    edges += adds
    index = {nm: i for i, nm in enumerate(names)}
    joined += [(index[e.source], index[e.target]) for e in adds]
    for i, (named, base) in _named_bases(ctx, metas).items():
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
                *_distances(ctx, base, i),
                components=_shared(parts, base, i),
                found_by="metadata",
                note=f"the metadata of {names[i]} names its base: {named}",
            )
        )
    close = _close_pairs(ctx, parts, {frozenset((ctx.rep_of[i], ctx.rep_of[j])) for i, j in joined})
    edges += close
    joined += [(index[e.source], index[e.target]) for e in close]
    edges += _spanning(ctx, joined, parts)
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
