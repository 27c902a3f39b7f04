"""The recipes a model's metadata claims (A1111, supermerger, sd-mecha, ComfyUI: ``merge_claims``), checked
against the weights ``recipe`` fitted, where the named parents are among the candidates."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdlens.analysis.merge_claims import Claim, read_claims, weights_by_file

AGREE = 0.01  # largest weight difference (absolute) still "agreeing"


def _fitted(groups, block: str) -> dict[int, float] | None:
    """Candidate index (0-based) -> fitted weight in one block, or None when the block was not fitted."""
    g = next((x for x in groups if x.group == block), None)
    if g is None or g.fit is None:
        return None
    return {c - 1: w for c, w in zip(g.fit.candidates, g.fit.affine.weights, strict=True)}


def _folded(groups, block: str, weights: dict[int, float]) -> dict[int, float]:
    """Claimed weights as the fit holds them: candidates bit-identical in the block are one (their weights
    add, on the first), so B − C claims nothing where B = C."""
    g = next((x for x in groups if x.group == block), None)
    rep = {c - 1: s[0] - 1 for s in (g.fit.identical if g is not None and g.fit else []) for c in s}
    out: dict[int, float] = {}
    for i, w in weights.items():
        out[rep.get(i, i)] = out.get(rep.get(i, i), 0.0) + w
    return out


def _words(weights: dict[int, float], labels: Sequence[str]) -> str:
    parts = [f"{w:.3g} {labels[i]}" for i, w in sorted(weights.items()) if abs(w) >= 5e-4]
    return " + ".join(parts).replace("+ -", "- ") or "0"


TIME_HINT = (
    "; the disagreement is all in {block}, where the time embedding is counted: tools place it differently "
    "(A1111's MBW: IN00, sd-mecha: BASE, supermerger: OUT11) — try --time-embed"
)


def check_claim(
    claim: Claim,
    files: Sequence[str | Path],
    groups,
    labels: Sequence[str],
    time_embed: str = "IN00",
    by_block: bool = True,
) -> dict[str, Any]:
    """One claim and what the weights say of it: ``check`` is one line ("claimed …; the weights agree to
    0.1 %" / "the weights disagree: fitted …" / why it cannot be checked). ``time_embed``: the block the
    fit counted the time embedding in (a per-block claim that disagrees only there names it); without
    ``by_block`` (fits per component or tensor) only a claim with one ratio everywhere is checked, on the
    whole denoiser."""
    blocks = [g.group for g in groups if g.fit is not None]
    doc: dict[str, Any] = {"claim": claim.to_dict(), "agrees": None, "max_difference": None}
    head = f"by {claim.tool}: {claim.formula}"
    if not by_block and claim.block_alphas:
        doc["check"] = f"{head} (per-block weights: checked with --by block)"
        return doc
    claimed, missing = weights_by_file(claim, files, blocks)
    if claimed is None:
        doc["check"] = f"{head} (no weights to check: {claim.method})"
        return doc
    if missing:
        doc["check"] = f"{head} (cannot check: {', '.join(missing)} not among the candidates)"
        return doc
    worst, where, off = 0.0, None, 0
    for b in blocks:
        fitted = _fitted(groups, b)
        want = _folded(groups, b, claimed.get(b, {}))
        diffs = [abs(fitted.get(i, 0.0) - want.get(i, 0.0)) for i in set(fitted) | set(want)]
        off += max(diffs, default=0.0) > AGREE
        if max(diffs, default=0.0) > worst:
            worst, where = max(diffs), b
    doc["max_difference"] = worst
    doc["agrees"] = worst <= AGREE
    if doc["agrees"]:
        doc["check"] = f"{head}; the weights agree to {worst:.2g} (largest difference of a weight)"
    else:
        fitted = _fitted(groups, where)
        doc["check"] = (
            f"{head}; the weights disagree in {off} of {len(blocks)} groups (most in {where}: fitted "
            f"{_words(fitted, labels)}, claimed {_words(_folded(groups, where, claimed[where]), labels)})"
        )
        if off == 1 and where == time_embed and claim.block_alphas:
            doc["check"] += TIME_HINT.format(block=where)
    doc["worst_block"] = where
    return doc


def claims_of(
    model: str | Path,
    candidates: Sequence[str | Path],
    groups,
    labels,
    time_embed: str = "IN00",
    by_block: bool = True,
) -> list[dict[str, Any]]:
    """Every claim in the model's metadata, each checked against the fitted weights."""
    from sdlens.io.open import open_checkpoint

    with open_checkpoint(model) as ck:
        meta = dict(ck.metadata)
    return [check_claim(c, candidates, groups, labels, time_embed, by_block) for c in read_claims(meta)]
