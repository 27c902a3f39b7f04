"""lineage's merge tests: each model as a convex combination of the others, block by block (the smallest
set of parents that explains it as well), and add-difference relations ``M = C + α(B − A)``."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdlens.analysis.lineage_context import (
    ACCEPT,
    ADD_DIFF_MIN,
    ADD_DIFF_NEAR,
    ADD_DIFF_ONE,
    MAX_PARENTS,
    MAX_SUPPORT,
    NOISE,
    PARENT_WEIGHT,
    TRAINED_NEAREST,
    Context,
    Edge,
    candidates,
    distances,
    merge_edge,
)
from sdlens.analysis.merge_fit import TRAINED, fit_group, rounding, verdict


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

    def judge(self, ctx: Context, t: int, against: float, nearest: float) -> _Fit:
        self.share = self.residual / against if against > 0 else 0.0
        self.nearest_share = self.residual / nearest if nearest > 0 else 0.0
        floor = ctx.norms[t] * rounding(ctx.dtypes[t]) / against if against > 0 else 0.0
        self.verdict = verdict(self.share, floor, against)
        return self


def _convex_fit(ctx: Context, t: int, cands: list[int]) -> _Fit:
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


def _parents(ctx: Context, t: int, full: _Fit, dists: tuple[float, float], interior: set[int]) -> _Fit | None:
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


def find_merges(ctx: Context) -> dict[int, _Fit]:
    """Every node tested as a convex merge of the others; accepted merges, none making a cycle.

    First the merges the fit explains ("explained" against the nearest other model); then the merges
    trained further, judged against the nearest model that is no such merge (a model trained on from a
    merge lies farther from the merge's parents than from the merge) and leaving at most
    TRAINED_NEAREST of its distance to the nearest model of all unexplained."""
    fulls: dict[int, tuple[_Fit, list[int], float]] = {}
    for t in ctx.core:
        cands = candidates(ctx, t)
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


def add_differences(ctx: Context, skip: set[int]) -> list[Edge]:
    """``M = C + α(B − A)`` over the whole denoiser (affine fits on triples), one edge per relation."""
    den = ctx.total.group("denoiser")
    found: dict[tuple, Edge] = {}
    for t in ctx.core:
        if t in skip:
            continue
        cands = sorted((c for c in candidates(ctx, t) if c not in skip), key=lambda c: ctx.dist[t, c])
        cands = cands[:ADD_DIFF_NEAR]
        if len(cands) < 3:
            continue
        nearest = float(ctx.dist[t, cands[0]])
        every = fit_group("denoiser", den, t, cands, ctx.dtypes[t])  # no triple fits better than all of them
        if verdict(every.affine.residual / nearest, every.floor, nearest) not in ACCEPT:
            continue
        best = None
        for tri in _screen(den["d2"], t, cands, nearest):
            f = fit_group("denoiser", den, t, tri, ctx.dtypes[t])
            form = _add_diff_form(tri, f.affine.weights)
            if form is None:
                continue
            share = f.affine.residual / nearest if nearest else 0.0
            if verdict(share, f.floor, nearest) in ACCEPT and (best is None or share < best[0]):
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


def _add_diff_edge(ctx: Context, m: int, c: int, b: int, a: int) -> Edge:
    """The edge M — C with α per block (affine fits of M from C, B, A per block)."""
    per_block: dict[str, float | None] = {}  # None: the block tells nothing (two of them identical there)
    for g in ctx.blocks:
        f = fit_group(g[6:], ctx.total.group(g), m, [c, b, a], ctx.dtypes[m])
        per_block[g[6:]] = None if f.identical else float(f.affine.weights[1])
    f = fit_group("denoiser", ctx.total.group("denoiser"), m, [c, b, a], ctx.dtypes[m])
    alpha = float(f.affine.weights[1])
    nearest = float(min(ctx.dist[m, x] for x in candidates(ctx, m)))
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
        *distances(ctx, m, c),
        weights=per_block,
        residual_share=share,
        verdict=v,
        trained_further=v == "trained further",
        alpha=alpha,
        difference=[n[b], n[a]],
        found_by="fit",
        note=note,
    )


def merge_record(ctx: Context, t: int, f: _Fit) -> tuple[dict[str, Any], list[Edge]]:
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
        merge_edge(
            ctx,
            p,
            t,
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
