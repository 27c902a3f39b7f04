"""``recipe``: what a model is merged from — which candidates, at which per-block ratios, by which method.

One pass over the model and its candidates (the matrix engine's ``run_plan``: each file read once, in offset order)
adds,
per group (merge block, component, or key), the pairwise sums a least-squares fit needs (``merge_fit``) and
a sampled element-level signature of the method (``merge_signature``). The fits' weights are then read in
the community's words (``recipe_words``) and checked against any recipe the model's metadata claims."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdlens.analysis import matrix_plan
from sdlens.analysis.matrix_plan import KeyPlan, Plan
from sdlens.analysis.matrix_run import run_plan
from sdlens.analysis.matrix_state import ModelInfo, Partial
from sdlens.analysis.merge_fit import EXPLAINED, GroupFit, affine_residual, fit_group, residual_with, verdict
from sdlens.analysis.merge_signature import NONLINEAR, Signature, nonlinear_formula, probe_key, read_signature
from sdlens.analysis.recipe_words import Mbw, Term, describe, whole_model
from sdlens.arch.blocks import block_names
from sdlens.choices import RecipeBy, check_choice
from sdlens.errors import SdlensError
from sdlens.io.open import open_checkpoint

LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FIT_NOISE = 3e-4  # residual the pairwise sums' float32 precision leaves, relative to the distance fitted
_SIG_OUT, _SIG_HIST = "sig_out", "sig_hist"


@dataclass
class GroupRecipe:
    group: str  # block name, component, or canonical key
    fit: GroupFit | None
    term: Term | None
    signature: Signature
    note: str | None = None  # why it was not fitted
    sums: str = ""  # the plan's name of the group (``block:IN04``)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "fit": self.fit.to_dict() if self.fit else None,
            "term": self.term.to_dict() if self.term else None,
            "signature": self.signature.to_dict(),
            "note": self.note,
        }


@dataclass
class RecipeResult:
    model: ModelInfo
    candidates: list[ModelInfo]
    labels: list[str]  # A, B, C… per candidate
    by: str
    groups: list[GroupRecipe]  # of the kind asked for (``by``)
    components: list[GroupRecipe]
    formula: str  # the recipe, in the community's words
    mbw: Mbw | None
    method: Signature  # over the denoiser
    residual_share: float | None  # of the whole denoiser: √Σ residual² / ‖M − nearest‖
    verdict: str
    equal_shares: dict[str, float]  # label -> share of M's sampled values equal to that candidate
    claims: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "candidates": [
                {"label": lab, **c.to_dict()} for lab, c in zip(self.labels, self.candidates, strict=True)
            ],
            "by": self.by,
            "formula": self.formula,
            "mbw": self.mbw.to_dict() if self.mbw else None,
            "method": self.method.to_dict(),
            "residual_share": self.residual_share,
            "verdict": self.verdict,
            "equal_shares": self.equal_shares,
            "groups": [g.to_dict() for g in self.groups],
            "components": [g.to_dict() for g in self.components],
            "claims": self.claims,
            "skipped": self.skipped,
            "notes": self.notes,
        }


def _probe(sample: int) -> Callable:
    """The element-signature sums of one key (model = row 0, candidates = rows 1…n−1)."""

    def probe(cks, kp: KeyPlan) -> dict[str, np.ndarray] | None:
        got = probe_key(cks, kp.refs, kp.numel, sample)
        return None if got is None else {_SIG_OUT: got[0], _SIG_HIST: got[1]}

    return probe


def _model_dtype(pl: Plan) -> str:
    """The model's most common storage, a dtype or a quantisation scheme (for the rounding floor)."""
    from sdlens.io.quant import dominant_storage

    with open_checkpoint(pl.models[0].path) as ck:
        return dominant_storage(ck.tensors.values())


def _group(
    pl: Plan, total: Partial, g: str, names: dict[int, str], dtype: str, only: set[int] | None = None
) -> GroupRecipe:
    sig = pl.signatures[g]
    acc = total.group(g)
    n = len(pl.models)
    display = g.split(":", 1)[1] if ":" in g else g
    labels = {i: LABELS[i - 1] for i in range(1, n)}
    if sig[0] is None:
        return GroupRecipe(
            display, None, None, Signature("no evidence", "not in the model"), "not in the model"
        )
    cands = [i for i in range(1, n) if sig[i] == sig[0] and (only is None or i in only)]
    left = [names[i] for i in range(1, n) if sig[i] != sig[0]]
    note = f"left out here (missing or another key set): {', '.join(left)}" if left else None
    if not cands:
        return GroupRecipe(display, None, None, Signature("no evidence", "no candidate has it"), note)
    rows = [0, *cands]
    if not all(np.isfinite(acc[f][np.ix_(rows, rows)]).all() for f in ("d2", "dp", "sq")):
        bad = [names[i] for i in rows if acc["bad"][i, i] > 0] or ["a model"]
        why = f"NaN or Inf values in {', '.join(bad)}: not fitted"
        return GroupRecipe(display, None, None, Signature("no evidence", why), why, g)
    fit = fit_group(display, acc, 0, cands, dtype)
    term = describe(fit.affine.weights, [labels[c] for c in cands], labels.get(fit.copy_of))
    out, hist = acc.get(_SIG_OUT), acc.get(_SIG_HIST)
    rows = list(range(1, n))
    if out is not None:  # the signature's rows are all candidates; keep those fitted here
        keep = [rows.index(c) for c in cands]
        out, hist = out[np.ix_(keep, keep)], hist[np.ix_(keep, keep)]
    signature = read_signature(out, hist, cands, fit, names)
    return GroupRecipe(display, fit, term, signature, note, g)


def recipe(
    model: str | Path,
    candidates: Sequence[str | Path],
    *,
    by: RecipeBy = "block",
    time_embed: str = "IN00",
    sample: int = 4,
    workers: int | None = None,
    chunk_bytes: int = 256 << 20,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
) -> RecipeResult:
    """How ``model`` is made from ``candidates`` (files or folders), per merge block (``by="block"``),
    component or key. ``sample``: the element signature looks at about this many blocks of 1024 values
    of each tensor, spread over it (0: every value)."""
    check_choice(by, "by", RecipeBy)
    if not candidates:
        raise SdlensError(model, "recipe needs at least one candidate (--from)")
    paths = [model, *candidates]
    pl = matrix_plan.plan(
        paths, metric="gram", time_embed=time_embed, per_key=by == "key", base_block=True, first_keys=True
    )
    if not pl.models or Path(pl.models[0].path) != Path(model):
        why = next((s["error"] for s in pl.skipped if Path(s["path"]) == Path(model)), "cannot be read")
        raise SdlensError(model, why)
    if on_plan:
        on_plan(pl)
    total = run_plan(
        pl,
        metric="gram",
        device="cpu",
        probe=_probe(sample),
        progress=progress,
        workers=workers,
        chunk_bytes=chunk_bytes,
    )
    result = summarise(pl, total, by=by)
    from sdlens.analysis.recipe_claims import claims_of

    groups = result.groups if by == "block" else [c for c in result.components if c.group == "denoiser"]
    result.claims = claims_of(
        pl.models[0].path,
        [c.path for c in result.candidates],
        groups,
        result.labels,
        time_embed,
        by == "block",
    )
    return result


def summarise(pl: Plan, total: Partial, *, by: str = "block") -> RecipeResult:
    """The recipe from a plan and its summed sums."""
    n = len(pl.models)
    labels = [LABELS[i] for i in range(n - 1)]
    names = {i: f"{labels[i - 1]} ({pl.models[i].name})" if i else pl.models[0].name for i in range(n)}
    dtype = _model_dtype(pl)
    prefix = {"block": "block:", "key": "key:"}.get(by)
    kind = [g for g in pl.groups if (g.startswith(prefix) if prefix else ":" not in g)]
    search = [g for g in pl.groups if g.startswith("block:")] or [g for g in pl.groups if ":" not in g]
    only, why = _fewest(
        pl, total, search
    )  # by block whatever `by` is: per tensor would be thousands of groups
    groups = [_group(pl, total, g, names, dtype, only) for g in kind]
    components = [_group(pl, total, g, names, dtype, only) for g in pl.groups if ":" not in g]
    den = next((c for c in components if c.group == "denoiser"), components[0] if components else None)
    family = pl.models[0].family
    terms = {g.group: g.term for g in groups if g.term is not None}
    order = block_names(family) if by == "block" else [g.group for g in groups]
    formula, mbw = _one_formula(total, groups, den) or whole_model(terms, order)
    share, overall = _overall(groups if by == "block" else [], den)
    if overall == "not a merge":
        near = names[den.fit.nearest] if den and den.fit else "?"
        formula, mbw = f"not a merge of these candidates (nearest: {near})", None
    method = _model_signature(
        total, groups if by != "component" else [den] if den else [], by, den, names, overall
    )
    if method.method in NONLINEAR:  # not linear: the fit's weights are only averages
        formula, mbw, overall = (
            nonlinear_formula(method, dict(enumerate(["M", *labels])), den.fit if den else None),
            None,
            method.method,
        )
    return RecipeResult(
        pl.models[0],
        pl.models[1:],
        labels,
        by,
        groups,
        components,
        formula,
        mbw,
        method,
        share,
        overall,
        _equal_shares(total, den, labels),
        skipped=list(pl.skipped),
        notes=[why] if why else [],
    )


def _fewest(pl: Plan, total: Partial, groups: list[str]) -> tuple[set[int] | None, str | None]:
    """The fewest candidates that rebuild the model as well as all of them do, when there are more than
    three: a folder of candidates holds merges of each other (linearly dependent), and the fit of all of
    them spreads weights over every way to write the same model. Subsets of up to four of the twelve
    nearest candidates are tried, smallest first. A subset is as good when its residual over the groups
    (√Σ r²) is within 5 % of all of them's, or within what the sums' precision leaves (``FIT_NOISE`` of the
    distance to the nearest candidate). A near miss is not as good: 0.3·(B + 0.7(F − A)) + 0.7·A is within
    0.1 % of 0.5·A + 0.3·B + 0.2·F when F is a 5 % fine-tune of A. Of the subsets of one size that are as
    good, the one the model copies most blocks from bit for bit, then the one with the smallest weights
    (Σ|w| over the denoiser), then the smallest residual, is kept:
    with merges among the candidates a model can be written exactly in several ways, and the plain one has
    no large weights."""
    n = len(pl.models)
    # the candidates like the model in every group (another architecture is left out of the search)
    every = [i for i in range(1, n) if all(_comparable(pl, total, g, [0, i]) for g in groups)]
    fitted = [g for g in groups if _comparable(pl, total, g, [0, *every])]
    if len(every) <= 3 or not fitted:
        return None, None
    den = "denoiser" if _comparable(pl, total, "denoiser", [0, *every]) else fitted[0]

    def residual(cands: Sequence[int]) -> float:
        return float(np.sqrt(sum(affine_residual(total.group(g), 0, cands) ** 2 for g in fitted)))

    d2 = total.group(den)["d2"]
    nearest = float(np.sqrt(max(min(d2[0, c] for c in every), 0.0)))
    full = residual(every)
    ranked = sorted(every, key=lambda c: d2[0, c])[:12]  # the nearest twelve (all of a dozen or fewer)
    subsets = {k: [(c, residual(c)) for c in itertools.combinations(ranked, k)] for k in range(1, 5)}
    # as good as all of them to the sums' precision; failing that (the precision of a residual also
    # depends on how far apart the candidates are), merely "explained" where all of them explain it
    limits = [max(1.05 * full, full + FIT_NOISE * nearest)]
    if nearest and verdict(full / nearest, 0.0, nearest) == "explained":
        limits.append(EXPLAINED * nearest)
    for ok in limits:
        for k, found in subsets.items():
            good = [(c, r) for c, r in found if r <= ok]
            if not good:
                continue
            if k == len(every):
                return None, None
            best, _ = min(
                good,
                key=lambda cr: (
                    -_copies(total, fitted, cr[0]),
                    round(_weight_size(total.group(den), cr[0]), 2),
                    cr[1],
                ),
            )
            used = ", ".join(LABELS[c - 1] for c in sorted(best))
            return set(best), (
                f"the {len(every)} candidates are not independent (some are merges of others): the recipe "
                f"uses the fewest that rebuild the model as well as all of them, {used}; the others get 0"
            )
    return None, None


def _copies(total: Partial, groups: list[str], cands: Sequence[int]) -> int:
    """In how many groups the model is bit-identical to one of ``cands`` (a block copied whole names its
    source, where a near-duplicate of it fits as well)."""
    n = 0
    for g in groups:
        acc = total.group(g)
        n += any(acc["both"][0, c] > 0 and acc["same"][0, c] == acc["both"][0, c] for c in cands)
    return n


def _weight_size(sums, cands: Sequence[int]) -> float:
    """Σ|w| of the affine fit of the model from ``cands``: the plain way to write a model has no large weights."""
    return sum(abs(w) for w in fit_group("", sums, 0, cands).affine.weights)


def _comparable(pl: Plan, total: Partial, g: str, models: Sequence[int]) -> bool:
    """``models`` all have group ``g`` alike, with finite sums between them."""
    sig = pl.signatures.get(g, [])
    if not sig or sig[models[0]] is None or any(sig[i] != sig[models[0]] for i in models):
        return False
    return bool(np.isfinite(total.group(g)["d2"][np.ix_(models, models)]).all())


def _one_formula(
    total: Partial, groups: list[GroupRecipe], den: GroupRecipe | None
) -> tuple[str, None] | None:
    """The whole denoiser's term, when its weights fit every group as well as the group's own fit does
    (explained, or within 5 % of its residual) — blocks that look like copies included (in BASE, a
    fine-tune's text encoder is its base's: B − C = 0 there)."""
    if den is None or den.fit is None or den.term is None or not groups:
        return None
    weights = den.fit.affine.weights
    for g in groups:
        if g.fit is None:
            continue
        if g.fit.candidates != den.fit.candidates:
            return None
        res = residual_with(total.group(g.sums), 0, g.fit.candidates, weights)
        dist = g.fit.distance
        if (
            dist
            and verdict(res / dist, g.fit.floor, dist) != "explained"
            and res > 1.05 * g.fit.affine.residual
        ):
            return None
    return den.term.text, None


def _model_signature(
    total: Partial, groups: list[GroupRecipe], by: str, den: GroupRecipe | None, names, overall: str
) -> Signature:
    """The method over the denoiser: the element counts of its groups added, leaving out groups copied
    whole (a copied block's values all equal one parent, which is not a sign of DARE or crossover)."""
    if den is None or den.fit is None:
        return Signature("no evidence", "no denoiser")
    if by == "block":
        groups = [g for g in groups if g.group != "BASE"]
    elif by == "key":
        groups = [g for g in groups if g.group.startswith("denoiser/")]
    used = [g for g in groups if g.fit is not None and g.fit.copy_of is None]
    if groups and not used:
        return Signature("copy", "every block copied whole from a candidate")
    sums = [total.group(g.sums) for g in used if _SIG_OUT in total.group(g.sums)]
    if not sums:
        return Signature("no evidence", "no values to sample")
    out = sum(s[_SIG_OUT] for s in sums)
    hist = sum(s[_SIG_HIST] for s in sums)
    cands = list(range(1, len(names)))
    return read_signature(
        out, hist, cands, den.fit, names, linear=overall in ("explained", "trained further")
    )


def _overall(blocks: list[GroupRecipe], den: GroupRecipe | None) -> tuple[float | None, str]:
    """The denoiser's residual share: the blocks' residuals together over its distance to the nearest
    candidate (each block fitted on its own), or the denoiser's own fit when not by block."""
    if den is None or den.fit is None:
        return None, "not comparable"
    fits = [b.fit for b in blocks if b.fit is not None and b.group != "BASE"]
    if not fits:
        return den.fit.affine.share, den.fit.verdict
    res = float(np.sqrt(sum(f.affine.residual**2 for f in fits)))
    dist = den.fit.distance
    share = res / dist if dist else 0.0
    if all(f.verdict == "copy" for f in fits):
        return 0.0, "copy"
    return share, verdict(share, den.fit.floor, dist)


def _equal_shares(total: Partial, den: GroupRecipe | None, labels: list[str]) -> dict[str, float]:
    """Per candidate, the share of the model's sampled (resolvable) denoiser values equal to it."""
    if den is None:
        return {}
    out = total.group("denoiser").get(_SIG_OUT)
    if out is None:
        return {}
    from sdlens.analysis.merge_signature import EQ_BASE, VALUES

    shares = {}
    for b, lab in enumerate(labels):
        n = out[b, :, VALUES].sum()
        shares[lab] = float(out[b, :, EQ_BASE].sum() / n) if n else 0.0
    return shares
