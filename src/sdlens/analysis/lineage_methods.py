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

from sdlens.analysis.lineage_context import Context, Edge, candidates, distances
from sdlens.analysis.merge_fit import fit_group
from sdlens.analysis.merge_signature import NONLINEAR, Signature, nonlinear_formula, probe_key, read_signature
from sdlens.io.open import open_checkpoint

NEAREST = 3  # candidates per model: its nearest this many
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


def _parents(ctx: Context, t: int, near: list[int], sig: Signature) -> list[int]:
    """The base, then the models whose deltas the method took (TIES: every near model the whole denoiser's
    fit weighs ≥ 0.05 besides the base)."""
    e = sig.evidence
    if sig.method != "TIES":
        return [e.base, e.candidate]
    fit = fit_group("denoiser", ctx.total.group("denoiser"), t, near, ctx.dtypes[t])
    tasks = [c for c, w in zip(fit.candidates, fit.affine.weights, strict=True) if c != e.base and w >= 0.05]
    return [e.base, *(tasks or [e.candidate])]


def nonlinear_merges(ctx: Context, tested: list[int]) -> tuple[list[dict[str, Any]], list[Edge]]:
    """Merge records and edges (``found_by="element evidence"``) for the models in ``tested`` that the element
    counts against their nearest models show to be DARE, TIES or crossover merges."""
    records: list[dict[str, Any]] = []
    edges: list[Edge] = []
    cks: dict[int, Any] = {}
    n = ctx.names
    try:
        for t in tested:
            near = sorted(candidates(ctx, t), key=lambda c: ctx.dist[t, c])[:NEAREST]
            if len(near) < 2:
                continue
            out, hist = _evidence(ctx, cks, [t, *near])
            sig = read_signature(out, hist, near, None, n, linear=False)
            if sig.method not in NONLINEAR:
                continue
            parents = _parents(ctx, t, near, sig)
            formula = nonlinear_formula(sig, n, None)
            records.append(
                {
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
            )
            edges += [
                Edge(
                    "merge",
                    n[p],
                    n[t],
                    True,
                    True,
                    *distances(ctx, p, t),
                    verdict=sig.method,
                    method=sig.method,
                    found_by="element evidence",
                    note=f"{n[t]} = {formula}: {sig.text}",
                )
                for p in parents
            ]
    finally:
        for ck in cks.values():
            ck.close()
    return records, edges
