"""Element-level evidence of a merge method, gathered in the same pass as the fit's sums.

Per key, a sample of positions (``sample`` blocks of 1024 values spread evenly over the tensor) goes through
``kernels.element_signature``: for every ordered pair (base b, candidate j), where the candidate's delta
δ = Pⱼ − P_b is large enough to be told from rounding, how often M equals the base, equals the candidate,
and otherwise the ratio (M − P_b) / δ. The counts add per group like the fit's sums, and read as:

* **weighted sum** — no value kept from either parent; one ratio (the weight) everywhere;
* **DARE** — a share p of the deltas dropped (M equals the base) whatever their size, the rest rescaled
  by λ / (1 − p) (one ratio above the weight);
* **TIES** — dropped deltas are the small ones (trim by magnitude), the kept ones taken at one ratio;
* **crossover** — every value is one parent's (M equals the base or the candidate);
* **copy** — the whole group is bit-identical to one candidate (the fit's identity sums say so)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sdlens.analysis.kernels import KERNEL_DTYPES, SIG_BINS
from sdlens.analysis.merge_fit import GroupFit

SIG_LO, SIG_WIDTH = -1.0, 0.01  # = _jit.SIG_LO, _jit.SIG_WIDTH (without importing numba)
EPS = {"F16": 2.0**-10, "BF16": 2.0**-7, "F32": 2.0**-23, "F64": 2.0**-52}  # ulp at 1
RESOLVE = 32  # a delta counts when it exceeds this many ulps of the values it changes
_PEAK = 3  # bins either side of the ratio histogram's mode that count as "the same ratio"
_MIN_VALUES = 200  # fewer resolvable values than this: no verdict
_CHUNK = 1 << 22  # values widened at a time on the torch path

NONLINEAR = ("DARE", "TIES", "crossover")  # methods a linear fit cannot rebuild
# mean |δ| of dropped over kept deltas: DARE drops whatever the size (≈ 1); TIES trims the small ones (a top-k
# trim of normal deltas gives 0.13 at density 0.8 to 0.31 at 0.2; sign election raises it); below that, the
# "drops" are another model's values, not a trim
DARE_MAGNITUDE = (0.8, 1.25)
TIES_MAGNITUDE = (0.12, 0.6)

# field indices of the kernel's counts (_jit.SIG_FIELDS)
VALUES, EQ_BASE, EQ_CAND, DELTA_DROPPED, DELTA_KEPT, OUTSIDE, AGREE = range(7)


def stride_for(numel: int, sample: int) -> int:
    """The stride (in blocks of 1024 values) that visits about ``sample`` blocks spread over a tensor of
    ``numel`` values (every block when ``sample`` is 0 or the tensor is small)."""
    blocks = -(-numel // 1024)
    return 1 if sample <= 0 or blocks <= sample else -(-blocks // sample)


def probe_key(cks: Sequence[Any], refs: Sequence[Any], numel: int, sample: int):
    """(out, hist) of one key for rows [model, candidates…] (``refs`` in that order), or None when a row is
    missing. Rows stored alike are read where they lie; mixed dtypes are widened to float32 by torch, and
    then "equal" means within half an ulp of the model's storage."""
    from sdlens.analysis.diff import _raw_view
    from sdlens.analysis.kernels import element_signature
    from sdlens.analysis.matrix_run import _flat

    if any(r is None for r in refs):
        return None
    dtypes = [ck.tensors[r.key].dtype for ck, r in zip(cks, refs, strict=True)]
    mdt = dtypes[0]
    if mdt not in EPS:
        return None
    resolve = RESOLVE * EPS[mdt]
    stride = stride_for(numel, sample)
    raws = [_raw_view(ck, r) for ck, r in zip(cks, refs, strict=True)]
    if len(set(dtypes)) == 1 and mdt in KERNEL_DTYPES and all(r is not None for r in raws):
        return _unless_copied(element_signature(raws, mdt, stride, 0.0, resolve))
    import torch

    flats = [_flat(ck, r) for ck, r in zip(cks, refs, strict=True)]
    tol = 0.0 if len(set(dtypes)) == 1 else EPS[mdt] / 2
    out = hist = None
    block = 1024 * stride
    step = max(block, _CHUNK // block * block)
    for s in range(0, numel, step):
        rows = [f[s : s + step].to(torch.float32).numpy() for f in flats]
        o, h = element_signature(rows, "F32", stride, tol, resolve)
        out, hist = (o, h) if out is None else (out + o, hist + h)
    return _unless_copied((out, hist)) if out is not None else None


def _unless_copied(got):
    """A tensor the model took whole from one candidate (every sampled value equal to it) says nothing of
    how values were merged — a partial fine-tune keeps some tensors, DARE drops values inside each: None."""
    out, hist = got
    n, eq = out[..., VALUES].sum(axis=1), out[..., EQ_BASE].sum(axis=1)
    return None if ((n > 0) & (eq == n)).any() else got


@dataclass
class Evidence:
    base: int  # model index of the base of the pair
    candidate: int  # model index of the candidate whose delta is examined
    values: int  # resolvable values sampled
    dropped: float  # share where M equals the base
    taken: float  # share where M equals the candidate
    ratio: float | None  # the ratio (M − base) / δ most values share
    at_ratio: float  # share of the other values at that ratio (± 0.03)
    magnitude: float | None  # mean |δ| where dropped / mean |δ| where kept (1: regardless of size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Signature:
    method: str  # "weighted sum", "DARE", "TIES", "crossover", "copy", "unknown", "no evidence"
    text: str
    drop_rate: float | None = None
    scale: float | None = None  # λ / (1 − p) for DARE, the kept deltas' ratio for TIES
    evidence: Evidence | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["evidence"] = self.evidence.to_dict() if self.evidence else None
        return d


def _evidence(out: np.ndarray, hist: np.ndarray, b: int, j: int, cands: Sequence[int]) -> Evidence:
    o, h = out[b, j], hist[b, j]
    n = o[VALUES]
    drop, take = o[EQ_BASE] / n, o[EQ_CAND] / n
    ratio, at = None, 0.0
    rest = h.sum() + o[OUTSIDE]
    if rest > 0 and h.sum() > 0:
        k = int(np.argmax(h))
        lo, hi = max(0, k - _PEAK), min(SIG_BINS, k + _PEAK + 1)
        window = h[lo:hi]
        centres = SIG_LO + SIG_WIDTH * (np.arange(lo, hi) + 0.5)
        at = float(window.sum() / rest)
        ratio = float((window * centres).sum() / window.sum())
    kept = n - o[EQ_BASE]
    magnitude = None
    if o[EQ_BASE] > 0 and kept > 0 and o[DELTA_KEPT] > 0:
        magnitude = float((o[DELTA_DROPPED] / o[EQ_BASE]) / (o[DELTA_KEPT] / kept))
    return Evidence(cands[b], cands[j], int(n), float(drop), float(take), ratio, at, magnitude)


def read_signature(
    out: np.ndarray | None,
    hist: np.ndarray | None,
    cands: Sequence[int],
    fit: GroupFit | None,
    names,
    linear: bool | None = None,
) -> Signature:
    """The method the element counts of one group point to (``cands``: model indices of the candidates, in
    the rows' order; ``names``: model index -> display name; ``linear``: whether a linear fit explains the
    model — by default, ``fit``'s verdict)."""
    if fit is not None and fit.copy_of is not None:
        return Signature("copy", f"copied whole from {names[fit.copy_of]}")
    if out is None or not out[..., VALUES].any():
        return Signature("no evidence", "no values to sample")
    pairs = [(b, j) for b in range(len(cands)) for j in range(len(cands)) if b != j]
    pairs = [p for p in pairs if out[p][VALUES] >= _MIN_VALUES]
    if not pairs:
        return Signature("no evidence", "too few values that differ clearly between candidates")
    ev = [_evidence(out, hist, b, j, cands) for b, j in pairs]
    # the pair whose values are most often a parent's, read from the side of the base the model equals more
    # (a pair and its reverse share that total, with dropped and taken swapped), then the clearest ratio
    best = max(ev, key=lambda e: (round(e.dropped + e.taken, 2), round(e.dropped, 2), e.at_ratio))
    if best.dropped + best.taken >= 0.95 and min(best.dropped, best.taken) >= 0.02:
        share = best.taken
        text = (
            f"crossover: each value taken from one parent, {share:.0%} from {names[best.candidate]}, "
            f"{best.dropped:.0%} from {names[best.base]}"
        )
        return Signature("crossover", text, evidence=best)
    if best.dropped >= 0.05 and best.magnitude is not None:
        if TIES_MAGNITUDE[0] <= best.magnitude < TIES_MAGNITUDE[1]:
            return _ties(best, names)
        if DARE_MAGNITUDE[0] <= best.magnitude <= DARE_MAGNITUDE[1] and best.taken < 0.02:
            return _dare(best, names)
    if best.dropped + best.taken < 0.01:
        ws = _weighted(ev, fit, names, linear)
        if ws is not None:
            return ws
    return Signature(
        "unknown", "unknown method: the element counts match no method sdlens knows", evidence=best
    )


def _dare(e: Evidence, names) -> Signature:
    p = e.dropped
    text = f"DARE: {p:.0%} of the delta {names[e.base]} → {names[e.candidate]} dropped at random"
    scale = None
    if e.ratio is not None and e.at_ratio >= 0.5:
        scale = e.ratio
        text += f", the rest rescaled ×{scale:.3g} (λ ≈ {scale * (1 - p):.3g})"
    return Signature("DARE", text, drop_rate=p, scale=scale, evidence=e)


def _ties(e: Evidence, names) -> Signature:
    text = (
        f"TIES: the smallest {e.dropped:.0%} of the delta {names[e.base]} → {names[e.candidate]} trimmed "
        f"(dropped deltas are {e.magnitude:.2g}× the size of kept ones)"
    )
    scale = e.ratio if e.ratio is not None and e.at_ratio >= 0.3 else None
    if scale is not None:
        text += f", kept ones taken ×{scale:.3g}"
    return Signature("TIES", text, drop_rate=e.dropped, scale=scale, evidence=e)


def _weighted(ev: list[Evidence], fit: GroupFit | None, names, linear: bool | None) -> Signature | None:
    """No value is either parent's and the fit explains the group: a linear merge (weighted sum, average,
    add difference); the ratio the pair the fit weights most shares is quoted where one holds."""
    if fit is None or not (fit.verdict in ("explained", "trained further") if linear is None else linear):
        return None
    top = sorted(zip(fit.candidates, fit.affine.weights, strict=True), key=lambda x: -abs(x[1]))[:2]
    e = None
    if len(top) == 2:
        (a, _), (b, _) = top
        e = next((x for x in ev if x.base == a and x.candidate == b), None)
    text = "no value kept from any parent: a linear merge (weighted sum / add difference / average)"
    if e is not None and e.ratio is not None and e.at_ratio >= 0.5:
        text += f"; every value at one ratio ({e.ratio:.3g}) between {names[e.base]} and {names[e.candidate]}"
    return Signature("weighted sum", text, evidence=e)


def nonlinear_formula(sig: Signature, names, fit: GroupFit | None = None) -> str:
    """A DARE / TIES / crossover signature as a formula (``names``: model index -> label, A, B…); ``fit``
    (of the whole denoiser) names every task model of a TIES merge (weight ≥ 0.05 besides the base)."""
    e = sig.evidence
    a, b = names[e.base], names[e.candidate]
    if sig.method == "crossover":
        return f"crossover({a}, {b}): {e.taken:.0%} of values from {b}"
    if sig.method == "TIES" and fit is not None:
        tasks = [
            c for c, w in zip(fit.candidates, fit.affine.weights, strict=True) if c != e.base and w >= 0.05
        ]
        b = ", ".join(names[c] for c in tasks or [e.candidate])
        return f"TIES({b} over {a}, trimmed {e.dropped:.0%})"
    lam = (
        ""
        if sig.scale is None
        else f"{sig.scale * (1 - e.dropped) if sig.method == 'DARE' else sig.scale:.3g}*"
    )
    return f"{a} + {lam}{sig.method}({b} - {a}, drop {e.dropped:.2f})"
