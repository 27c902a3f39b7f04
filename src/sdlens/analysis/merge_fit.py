"""Which weights of candidate models best rebuild a model, from pairwise sums alone.

For a model M and candidates P₀…P_k, everything a linear fit needs is in the sums the matrix engine adds
per group (merge block, component or key): ``d2[i, j]`` = ‖xᵢ − xⱼ‖² (each pair differenced directly) and
``sq[i, i]`` = ‖xᵢ‖². With uᵢ = Pᵢ − P₀ and m = M − P₀,

    ⟨uᵢ, uⱼ⟩ = (d2[i,0] + d2[j,0] − d2[i,j]) / 2,   ⟨m, uᵢ⟩ = (d2[M,0] + d2[i,0] − d2[M,i]) / 2,

and with P₀ itself as a regressor (for a fit whose weights need not sum to 1)
⟨P₀, uᵢ⟩ = (‖Pᵢ‖² − ‖P₀‖² − d2[i,0]) / 2 (from ``dp[i, 0]`` = ‖xᵢ‖² − ‖x₀‖² summed term by term where the sums
have it, else from ``sq``: a relative error of about 1e-7 of ‖P‖², harmless for this diagnostic fit). Three fits are made: **affine** (weights sum to 1: every merge tool's
weighted sum, add-difference and average), **free** (no constraint: says whether the weights sum to 1) and
**convex** (non-negative, summing to 1) where the affine one has a negative weight. The origin P₀ is the
candidate nearest to M, so the residual share ‖M − fit‖ / ‖M − P₀‖ is "how much of M's distance to its
nearest candidate the candidates do not explain". Candidates whose tensors are bit-identical in a group are
one column (their weights add); a block bit-identical to one candidate is a copy (weight exactly 1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

EXPLAINED = 0.02  # residual share at or below which a fit "explains" the model (or the storage floor)
TRAINED = 0.5  # ... below which it is a merge trained further; above, not a merge of these
# the pairwise sums are exact to about 1e-7 relative (float32 within blocks of 1024, float64 across), and a
# fit's weights can be off by that times the condition number of the candidates' Gram matrix
SUM_PRECISION = 1e-7
ILL_COND = 1e5  # above: weights may be off by 1e-2 or more ("low" confidence); above 1e3 by 1e-4 ("medium")
_NULL = 1e-12  # relative eigenvalue below which a direction is not identifiable at all

# RMS rounding error of one stored value relative to its size: half an ulp over √3 (mantissa bits + 1)
ROUNDING = {"F16": 2.0**-11 / 3**0.5, "BF16": 2.0**-8 / 3**0.5, "F32": 2.0**-24 / 3**0.5, "F64": 2.0**-53}


def rounding(storage: str) -> float:
    """The relative RMS rounding of a storage: a float dtype's (:data:`ROUNDING`), a quantisation scheme's
    typical error (``Q4_K``: about 8%), else float32's."""
    from sdlens.io.quant import SCHEMES, typical_error

    if storage in SCHEMES:
        return typical_error(storage)
    return ROUNDING.get(storage, ROUNDING["F32"])


@dataclass
class Fit:
    weights: list[float]  # one per candidate, in the candidates' order
    residual: float  # ‖M − Σ wᵢ Pᵢ‖
    share: float  # residual / ‖M − P_nearest‖ (0 where M is its nearest candidate)

    @property
    def total(self) -> float:
        return float(sum(self.weights))


@dataclass
class GroupFit:
    """The fits of one group (merge block, component or key)."""

    group: str
    candidates: list[int]  # model indices, in the order of the weights
    affine: Fit
    free: Fit | None  # weights free to sum to anything
    convex: Fit | None  # non-negative weights summing to 1; only where the affine fit has a negative weight
    nearest: int  # the candidate nearest to M (model index)
    distance: float  # ‖M − P_nearest‖
    floor: float  # the residual share storage rounding alone would leave
    copy_of: int | None  # the candidate M is bit-identical (or equal in every value) to here
    identical: list[list[int]] = field(default_factory=list)  # candidates bit-identical to each other here
    condition: float = 1.0  # λmax / λmin of the candidates' Gram matrix about their centroid
    closest: tuple[int, int, float] | None = None  # the two nearest distinct candidates, d / largest d
    verdict: str = ""  # "copy", "explained", "trained further", "not a merge", "identical"

    @property
    def confidence(self) -> str:
        if self.condition >= ILL_COND:
            return "low"
        return "high" if self.condition < 1e3 else "medium"

    @property
    def weight_error(self) -> float:
        """How far the weights may be off from the sums' own precision alone."""
        return SUM_PRECISION * self.condition

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["confidence"] = self.confidence
        d["weight_error"] = self.weight_error
        return d


def _inner(d2: np.ndarray, i: int, j: int, o: int) -> float:
    """⟨xᵢ − x_o, xⱼ − x_o⟩ from squared distances."""
    return 0.5 * (d2[i, o] + d2[j, o] - d2[i, j])


def _solve(g: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares weights for Gram matrix ``g`` and right side ``b``, and the condition number of ``g``
    normalised to unit diagonal; directions with no extent are given weight 0 (minimum-norm solution)."""
    if not len(b):
        return np.zeros(0), 1.0
    scale = np.sqrt(np.clip(np.diag(g), 0, None))
    scale[scale == 0] = 1.0
    gn = g / np.outer(scale, scale)
    vals, vecs = np.linalg.eigh(gn)
    top = max(vals.max(), 1e-300)
    keep = vals > _NULL * top
    inv = np.where(keep, 1.0 / np.where(keep, vals, 1.0), 0.0)
    w = vecs @ (inv * (vecs.T @ (b / scale)))
    cond = float(top / vals.min()) if vals.min() > _NULL * top else float("inf")
    return w / scale, cond


def _residual(mm: float, b: np.ndarray, g: np.ndarray, w: np.ndarray) -> float:
    return float(np.sqrt(max(mm - 2 * b @ w + w @ g @ w, 0.0)))


def _convex(d2: np.ndarray, t: int, cols: list[int]) -> tuple[np.ndarray, float]:
    """Non-negative weights summing to 1 minimising ‖M − Σ vᵢ Pᵢ‖ (= vᵀHv with Hᵢⱼ = ⟨Pᵢ − M, Pⱼ − M⟩):
    non-negative least squares with the sum as a heavily weighted extra row, then the exact equality-
    constrained solution on the support it finds."""
    from scipy.optimize import nnls

    h = np.array([[_inner(d2, i, j, t) for j in cols] for i in cols])
    vals, vecs = np.linalg.eigh(h)
    a = np.sqrt(np.clip(vals, 0, None))[:, None] * vecs.T
    lam = 1e3 * np.sqrt(max(np.trace(h), 1e-300))
    v, _ = nnls(np.vstack([a, lam * np.ones(len(cols))]), np.r_[np.zeros(len(cols)), lam], maxiter=2000)
    support = np.flatnonzero(v > 1e-9)
    if len(support):
        hs = h[np.ix_(support, support)]
        kkt = np.block([[2 * hs, np.ones((len(support), 1))], [np.ones((1, len(support))), np.zeros((1, 1))]])
        try:
            exact = np.linalg.solve(kkt, np.r_[np.zeros(len(support)), 1.0])[:-1]
            if (exact >= 0).all():
                v = np.zeros(len(cols))
                v[support] = exact
        except np.linalg.LinAlgError:
            pass
    v = v / v.sum() if v.sum() > 0 else np.full(len(cols), 1.0 / len(cols))
    return v, float(np.sqrt(max(v @ h @ v, 0.0)))


def _columns(sums: Mapping[str, np.ndarray], cands: Sequence[int]) -> tuple[list[int], list[list[int]]]:
    """One column per set of candidates bit-identical in this group (the first of each set stands for it)."""
    same = (sums["same"] == sums["both"]) & (sums["both"] > 0)
    cols: list[int] = []
    sets: list[list[int]] = []
    for c in cands:
        for s in sets:
            if same[c, s[0]]:
                s.append(c)
                break
        else:
            sets.append([c])
            cols.append(c)
    return cols, [s for s in sets if len(s) > 1]


def _spread(col_w: np.ndarray, cols: list[int], cands: Sequence[int]) -> list[float]:
    """Column weights back onto the candidates: a set of identical candidates' weight goes to its first."""
    by = dict(zip(cols, col_w, strict=True))
    return [float(by.get(c, 0.0)) for c in cands]


def fit_group(
    group: str, sums: Mapping[str, np.ndarray], target: int, cands: Sequence[int], dtype: str = "F32"
) -> GroupFit:
    """The fits of model ``target`` from models ``cands`` in one group's sums (N×N arrays ``d2``, ``dp``,
    ``sq``, ``same``, ``both``). ``dtype``: the target's storage, for the rounding floor."""
    d2 = sums["d2"]
    cands = list(cands)
    same = (sums["same"] == sums["both"]) & (sums["both"] > 0)
    cols, identical = _columns(sums, cands)
    near = min(cols, key=lambda c: d2[target, c])
    dist = float(np.sqrt(max(d2[target, near], 0.0)))
    norm = float(np.sqrt(max(sums["sq"][target, target], 0.0)))
    floor = norm * rounding(dtype) / dist if dist > 0 else 0.0
    copy_of = next((c for c in cands if same[target, c]), None)
    if copy_of is None and d2[target, near] == 0:  # equal values, other bits (−0 for +0: α = 0 in a tool)
        copy_of = near
    others = [c for c in cols if c != near]
    g = np.array([[_inner(d2, i, j, near) for j in others] for i in others]).reshape(len(others), len(others))
    b = np.array([_inner(d2, target, i, near) for i in others])
    mm = float(d2[target, near])
    w, _ = _solve(g, b)
    res = _residual(mm, b, g, w)
    col_w = np.r_[1.0 - w.sum(), w]
    affine = Fit(_spread(col_w, [near, *others], cands), res, res / dist if dist else 0.0)
    free = _free_fit(sums, target, near, others, g, b, mm, cands, dist)
    convex = None
    if (np.array(affine.weights) < -1e-6).any():
        v, r = _convex(d2, target, cols)
        convex = Fit(_spread(v, cols, cands), r, r / dist if dist else 0.0)
    cond, closest = _conditioning(d2, cols)
    fit = GroupFit(group, cands, affine, free, convex, near, dist, floor, copy_of, identical, cond, closest)
    if copy_of is not None:
        fit.affine = Fit([1.0 if c == copy_of else 0.0 for c in cands], 0.0, 0.0)
        fit.verdict = "copy"
    else:
        fit.verdict = verdict(fit.affine.share, floor, dist)
    return fit


def verdict(share: float, floor: float, dist: float) -> str:
    """What a residual share means."""
    if dist == 0:
        return "identical"
    if share <= max(EXPLAINED, 4 * floor):
        return "explained"
    return "trained further" if share <= TRAINED else "not a merge"


def _free_fit(sums, target, near, others, g, b, mm, cands, dist) -> Fit | None:
    """The fit with P_nearest itself as an extra regressor: weights free to sum to anything."""
    d2, sq = sums["d2"], sums["sq"]
    dp = sums["dp"] if sums["dp"].any() else np.diag(sq)[:, None] - np.diag(sq)[None, :]
    p0u = np.array([0.5 * (dp[i, near] - d2[i, near]) for i in others])
    gf = np.block([[np.array([[sq[near, near]]]), p0u[None, :]], [p0u[:, None], g]])
    bf = np.r_[0.5 * (dp[target, near] - d2[target, near]), b]
    if not np.isfinite(gf).all() or sq[near, near] <= 0:
        return None
    w, _ = _solve(gf, bf)
    res = _residual(mm, bf, gf, w)
    s, wi = w[0], w[1:]
    col_w = np.r_[1.0 + s - wi.sum(), wi]
    return Fit(_spread(col_w, [near, *others], cands), res, res / dist if dist else 0.0)


def _conditioning(d2: np.ndarray, cols: list[int]) -> tuple[float, tuple[int, int, float] | None]:
    """How well the candidates pin down weights: λmax / λmin of their Gram matrix about their centroid
    (classical double centring of the squared distances; ∞ where one lies in the span of the others) and
    the closest pair, with its distance relative to the largest one."""
    k = len(cols)
    if k < 2:
        return 1.0, None
    d = d2[np.ix_(cols, cols)]
    j = np.eye(k) - 1.0 / k
    vals = np.sort(np.linalg.eigvalsh(-0.5 * j @ d @ j))[::-1][: k - 1]
    cond = float(vals[0] / vals[-1]) if vals[-1] > _NULL * max(vals[0], 1e-300) else float("inf")
    far = float(np.sqrt(max(d.max(), 1e-300)))
    iu = np.triu_indices(k, 1)
    n = int(np.argmin(d[iu]))
    a, b = iu[0][n], iu[1][n]
    return cond, (cols[a], cols[b], float(np.sqrt(max(d[a, b], 0.0))) / far)


def residual_with(
    sums: Mapping[str, np.ndarray], target: int, cands: Sequence[int], weights: Sequence[float]
) -> float:
    """‖M − Σ wᵢ Pᵢ‖ for given weights summing to 1 (= √(wᵀHw), Hᵢⱼ = ⟨Pᵢ − M, Pⱼ − M⟩): does another
    group's recipe hold here too?"""
    d2 = sums["d2"]
    w = np.asarray(weights, dtype=np.float64)
    h = np.array([[_inner(d2, i, j, target) for j in cands] for i in cands])
    return float(np.sqrt(max(w @ h @ w, 0.0)))


def affine_residual(sums: Mapping[str, np.ndarray], target: int, cands: Sequence[int]) -> float:
    """‖M − fit‖ of the affine fit alone (no free / convex fits, no conditioning): for searching candidate
    subsets quickly."""
    d2 = sums["d2"]
    near = min(cands, key=lambda c: d2[target, c])
    others = [c for c in cands if c != near]
    g = np.array([[_inner(d2, i, j, near) for j in others] for i in others]).reshape(len(others), len(others))
    b = np.array([_inner(d2, target, i, near) for i in others])
    w, _ = _solve(g, b)
    return _residual(float(d2[target, near]), b, g, w)
