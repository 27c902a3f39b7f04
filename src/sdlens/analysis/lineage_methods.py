"""lineage's test for merges no linear fit can see — DARE, TIES, crossover — with ``recipe``'s element
evidence (``merge_signature``): for each model no other explains, a few blocks of 1024 values of every
denoiser tensor (the ones ``recipe --sample`` reads) are compared with its nearest models'. The values are
read again from the memory maps, a small second read (about 0.3 % of an SD1 model per model tested).

Direction comes from the evidence: a DARE child equals its base where a delta was dropped, whatever the
delta's size; read the other way round (the base as a DARE of the child), the dropped deltas would be the
large ones, which no method does. A crossover child equals one parent or the other nearly everywhere; a
parent does not."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdlens.analysis.lineage_context import Context, Edge, candidates, merge_edge
from sdlens.analysis.merge_fit import fit_group
from sdlens.analysis.merge_signature import NONLINEAR, Signature, nonlinear_formula, probe_key, read_signature
from sdlens.io.open import open_checkpoint

NEAREST = 2  # candidates per model: its nearest this many, and
EQUAL = 0.02  # ... every model it equals in at least this share of the sampled values (bases, parents)
MAX_CANDIDATES = 5
SAMPLE = 4  # blocks of 1024 values per tensor (recipe's default)


def _evidence(ctx: Context, cks: dict, rows: list[int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The element counts of model ``rows[0]`` against ``rows[1:]`` over the denoiser's tensors."""
    out = hist = None
    for task in ctx.pl.tasks:
        for kp in task.keys:
            if "denoiser" not in kp.groups or any(kp.refs[i] is None for i in rows):
                continue
            for i in rows:
                if i not in cks:
                    cks[i] = open_checkpoint(ctx.pl.models[i].path)
            got = probe_key([cks[i] for i in rows], [kp.refs[i] for i in rows], kp.numel, SAMPLE)
            if got is not None:
                out, hist = got if out is None else (out + got[0], hist + got[1])
    return out, hist


def _equal_shares(ctx: Context, cks: dict, t: int, others: list[int]) -> dict[int, float]:
    """Per other model, the share of ``t``'s sampled denoiser values (in tensors not taken whole) that equal
    it: the parents of DARE, TIES and crossover merges stand out (a base equals a DARE child where deltas were
    dropped), while a weighted sum equals no parent anywhere."""
    from sdlens.analysis.diff import _raw_view
    from sdlens.analysis.merge_signature import stride_for

    equal = dict.fromkeys(others, 0)
    seen = 0
    for task in ctx.pl.tasks:
        for kp in task.keys:
            rt = kp.refs[t]
            if "denoiser" not in kp.groups or rt is None:
                continue
            for i in (t, *others):
                if i not in cks:
                    cks[i] = open_checkpoint(ctx.pl.models[i].path)
            mine = _raw_view(cks[t], rt)
            if mine is None or not mine.size:
                continue
            item = cks[t].tensors[rt.key].nbytes // max(1, cks[t].tensors[rt.key].numel)
            view = {2: np.uint16, 4: np.uint32}.get(item)
            if view is None:
                continue
            step = 1024 * stride_for(kp.numel, SAMPLE)
            pick = (np.arange(0, kp.numel, step)[:, None] + np.arange(min(1024, kp.numel))).ravel()
            pick = pick[pick < kp.numel]
            m = mine.view(view)[pick]
            rows = {}
            for o in others:
                r = kp.refs[o]
                raw = (
                    None
                    if r is None or cks[o].tensors[r.key].dtype != cks[t].tensors[rt.key].dtype
                    else _raw_view(cks[o], r)
                )
                rows[o] = None if raw is None else raw.view(view)[pick]
            if any(x is not None and np.array_equal(x, m) for x in rows.values()):
                continue  # a tensor taken whole: no evidence of how values were merged
            seen += m.size
            for o, x in rows.items():
                if x is not None:
                    equal[o] += int(np.count_nonzero(x == m))
    return {o: v / seen for o, v in equal.items()} if seen else {}


def _candidates(ctx: Context, cks: dict, t: int) -> list[int]:
    """The models to test ``t`` against: its nearest, and those it equals in a share of its values."""
    others = sorted(candidates(ctx, t), key=lambda c: ctx.dist[t, c])
    shares = _equal_shares(ctx, cks, t, others)
    equal = sorted((o for o in others if shares.get(o, 0) >= EQUAL), key=lambda o: -shares[o])
    picked = list(dict.fromkeys([*equal[: MAX_CANDIDATES - NEAREST], *others[:NEAREST]]))
    return picked[:MAX_CANDIDATES]


def _parents(ctx: Context, t: int, near: list[int], sig: Signature) -> list[int]:
    """The base, then the models whose deltas the method took (TIES: every near model the whole denoiser's
    fit weighs ≥ 0.05 besides the base)."""
    e = sig.evidence
    if sig.method != "TIES":
        return [e.base, e.candidate]
    fit = fit_group("denoiser", ctx.total.group("denoiser"), t, near, ctx.dtypes[t])
    tasks = [c for c, w in zip(fit.candidates, fit.affine.weights, strict=True) if c != e.base and w >= 0.05]
    return [e.base, *(tasks or [e.candidate])]


def _strength(sig: Signature) -> float:
    """How clearly the counts show the method (for accepting the clearest first)."""
    e = sig.evidence
    if sig.method == "crossover":
        return e.dropped + e.taken
    if sig.method == "DARE":
        return e.at_ratio
    return 1.0 - (e.magnitude or 1.0)


def _ancestors(parents_of: dict[int, list[int]], start: int) -> set[int]:
    seen: set[int] = set()
    todo = list(parents_of.get(start, []))
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += parents_of.get(p, [])
    return seen


def nonlinear_merges(
    ctx: Context, tested: list[int], linear: dict[int, list[int]] | None = None
) -> tuple[list[dict[str, Any]], list[Edge]]:
    """Merge records and edges (``found_by="element evidence"``) for the models in ``tested`` that the element
    counts against their candidates show to be DARE, TIES or crossover merges. Related models echo each other
    (a base equals its TIES child where deltas were trimmed), so the clearest findings are accepted first and
    one that would make a model its own ancestor (given ``linear``: child -> parents found by the fits) is
    not."""
    found: list[tuple[float, int, Signature, list[int]]] = []
    cks: dict[int, Any] = {}
    try:
        for t in tested:
            near = _candidates(ctx, cks, t)
            if len(near) < 2:
                continue
            out, hist = _evidence(ctx, cks, [t, *near])
            sig = read_signature(out, hist, near, None, ctx.names, linear=False)
            if sig.method in NONLINEAR:
                found.append((_strength(sig), t, sig, _parents(ctx, t, near, sig)))
    finally:
        for ck in cks.values():
            ck.close()
    parents_of = {k: list(v) for k, v in (linear or {}).items()}
    records: list[dict[str, Any]] = []
    edges: list[Edge] = []
    for _, t, sig, parents in sorted(found, key=lambda x: -x[0]):
        if any(t == p or t in _ancestors(parents_of, p) for p in parents):
            continue
        parents_of[t] = parents
        rec, es = _record(ctx, t, sig, parents)
        records.append(rec)
        edges += es
    return records, edges


def _record(ctx: Context, t: int, sig: Signature, parents: list[int]) -> tuple[dict[str, Any], list[Edge]]:
    n = ctx.names
    formula = nonlinear_formula(sig, n, None)
    rec = {
        "model": n[t],
        "parents": {n[p]: None for p in parents},
        "blocks": {},
        "method": sig.method,
        "drop_rate": sig.drop_rate,
        "scale": sig.scale,
        "formula": formula,
        "evidence": sig.to_dict(),
        "residual_share": None,
        "verdict": sig.method,
    }
    edges = [
        merge_edge(
            ctx,
            p,
            t,
            verdict=sig.method,
            method=sig.method,
            found_by="element evidence",
            note=f"{n[t]} = {formula}: {sig.text}",
        )
        for p in parents
    ]
    return rec, edges
