"""The singular spectrum of a weight delta Δ = M − B, and what storage rounding alone would give.

* :func:`as_matrix` — the 2-D form LoRAs see: linears as they are, conv kernels [out, in, kh, kw] as
  [out, in·kh·kw] (LoCon's down / up factorisation, 1×1 and 3×3 alike).
* :func:`noise_energy` — the ‖Δ‖²_F that rounding each stored value to its dtype would give: a value x stored
  with p mantissa bits is off by at most half a step 2^(⌊log₂|x|⌋−p), uniformly, so by ulp²/12 on average;
  both files' rounding counts (an upper bound: values rounded once from one source differ by less).
* :func:`spectrum` — singular values: exact when the smaller side is at most :data:`EXACT_MAX` (eigenvalues
  of the float64 Gram matrix on the smaller side: one GEMM, ten times faster than LAPACK's SVD, and σ resolved
  to 1e-7 of σ₁, far below any storage's rounding); else a randomized range finder
  (``torch.svd_lowrank``: Gaussian sketch with oversampling, seeded) of width 40 (a LoRA of rank ≤ 32 lies in its range whole, so no power iteration is needed to see
  it), widened once to :data:`LOW_RANK_MAX` + 8 with a power iteration when it ended above the noise and the
  energy it missed could still fit in that many singular values (a LoRA of rank 64 or 128); beyond, the
  delta is high-rank and its rank and effective ranks are lower bounds.
* The noise edge: rounding errors are close to an i.i.d. matrix of variance s² = noise / (m·n), whose largest
  singular value is s·(√m + √n) (Marchenko–Pastur); singular values above :data:`EDGE_MARGIN` times that are
  signal, and their count is the delta's rank.
* :func:`factorize` — the truncated SVD a LoRA extractor keeps: at a rank, or at the smallest rank keeping a
  share of ‖Δ‖²_F (sd-scripts' resize_lora ``sv_fro``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

EXACT_MAX = 320  # smaller side up to which the spectrum is computed exactly
SKETCH = 40  # first randomized sketch width (rank 32 + oversampling 8)
OVERSAMPLE = 8
LOW_RANK_MAX = 128  # ranks up to this are measured exactly; a sketch ending above the noise says "more"
SCREEN_ITERATIONS = (
    0  # the first sketch: a LoRA of rank ≤ 32 lies in its range whole; a dense Δ shows in its tail
)
POWER_ITERATIONS = 1  # the widened sketch, and factorize (2)
WIDEN_SLACK = 4.0
EDGE_MARGIN = 1.25  # a singular value is signal above this multiple of the rounding-noise edge
FLOAT32_FLOOR = 1e-5  # float32 sketches resolve singular values down to this share of the largest
GRAM_FLOOR = 1e-7  # and the float64 Gram matrix down to this share (its eigenvalues to 1e-14 of σ₁²)
ROUNDING_SHARE = 2.0  # ‖Δ‖²_F within this multiple of the rounding energy: the delta is rounding alone
SEED = 20240

# explicit mantissa bits of each float dtype (unit roundoff 2^-(p+1)); ints have no rounding noise
MANTISSA = {"F64": 52, "F32": 23, "F16": 10, "BF16": 7, "F8_E4M3": 3, "F8_E5M2": 2}


@contextmanager
def free_threads() -> Iterator[None]:
    """Run torch on the cores nobody else is using (one at least): OpenMP threads spin-wait for each other, so
    on shared cores small factorisations and skinny sketches run 10–30× slower on two threads than on one."""
    import os

    import torch

    n = torch.get_num_threads()
    try:
        free = int((os.cpu_count() or 1) - os.getloadavg()[0] + 0.5)
    except OSError:  # no load average on this platform
        free = n
    use = max(1, min(n, free))
    if use != n:
        torch.set_num_threads(use)
    try:
        yield
    finally:
        if use != n:
            torch.set_num_threads(n)


def as_matrix(t: torch.Tensor) -> torch.Tensor | None:
    """The 2-D view of a weight: [out, in] linears as they are, conv kernels as [out, in·kh·kw]; None for
    1-D tensors and scalars."""
    if t.dim() < 2:
        return None
    return t if t.dim() == 2 else t.reshape(t.shape[0], -1)


def _pow2_sumsq(x: torch.Tensor, scratch: torch.Tensor | None = None) -> float:
    """Σ (2^⌊log₂|x|⌋)² over a float32 tensor: the exponent bits alone, squared and summed (``scratch``: a
    float32 tensor of x's size to work in)."""
    import torch

    ints = x.reshape(-1).view(torch.int32)
    out = None if scratch is None else scratch.reshape(-1).view(torch.int32)
    bits = torch.bitwise_and(ints, 0x7F800000, out=out) if out is not None else ints & 0x7F800000
    return sumsq(bits.view(torch.float32))


def noise_energy(
    m: torch.Tensor, dtype_m: str, b: torch.Tensor, dtype_b: str, scratch: torch.Tensor | None = None
) -> float:
    """The expected ‖M − B‖²_F from rounding alone: Σ ulp²/12 of the values at each file's stored dtype
    (``F16``, ``BF16``, ...), both files counted; 0 for integer dtypes. One pass: B's exponents stand for M's
    (the two differ by a few per cent at most where this matters), ``m`` is read only when B is not float."""
    if not any(dt in MANTISSA for dt in (dtype_m, dtype_b)):
        return 0.0
    ref = b if dtype_b in MANTISSA else m
    return noise_from_exponents(_pow2_sumsq(ref, scratch), dtype_m, dtype_b)


def noise_from_exponents(pow2_sumsq: float, dtype_m: str, dtype_b: str) -> float:
    """:func:`noise_energy` from Σ (2^⌊log₂|x|⌋)² of the values (as the delta kernel sums it)."""
    steps = sum(4.0 ** -MANTISSA[dt] for dt in (dtype_m, dtype_b) if dt in MANTISSA)
    return pow2_sumsq * steps / 12.0


# the smallest normal exponent of each float dtype (below it, steps stay at 2^(emin - p))
MIN_EXPONENT = {"F64": -1022, "F32": -126, "F16": -14, "BF16": -126, "F8_E4M3": -6, "F8_E5M2": -14}


def rounding_only(d: torch.Tensor, m: torch.Tensor, dtype_m: str, b: torch.Tensor, dtype_b: str) -> bool:
    """Every element of Δ = M − B is at most one step of the coarser stored dtype at that value: the two differ
    by nothing but rounding (to nearest: half a step; twice-rounded copies: one)."""
    import torch

    coarse = min((dtype_m, dtype_b), key=lambda dt: MANTISSA.get(dt, 99))
    if coarse not in MANTISSA:
        return False
    x = torch.maximum(m.abs(), b.abs()).reshape(-1)
    step = (x.view(torch.int32) & 0x7F800000).view(torch.float32)
    step.clamp_(min=2.0 ** MIN_EXPONENT[coarse]).mul_(2.0 ** -MANTISSA[coarse])
    return bool((d.reshape(-1).abs() <= step).all())


@dataclass
class Spectrum:
    """The singular values of one delta (descending; all of them when ``exact``, else the largest) and what
    they say next to the rounding noise."""

    shape: tuple[int, int]
    energy: float  # ‖Δ‖²_F (exact)
    sigma: np.ndarray
    exact: bool
    noise: float  # ‖Δ‖²_F rounding alone would give
    edge: float  # singular values above this are signal

    @property
    def size(self) -> int:
        """The most a rank can be: the smaller side."""
        return min(self.shape)

    @property
    def below_noise(self) -> bool:
        """Δ is no larger than rounding the stored values would make it."""
        return self.energy <= ROUNDING_SHARE * self.noise

    @property
    def at_least(self) -> bool:
        """The sketch ended above the noise: the rank is at least what it found, effective ranks it did not
        reach are unknown (None)."""
        return not self.exact and len(self.sigma) > 0 and bool(self.sigma[-1] > self.edge)

    @property
    def rank(self) -> int:
        """Singular values above the noise edge (a lower bound when ``at_least``: a sketch's singular values
        are at most the true ones)."""
        if self.energy == 0.0 or self.below_noise:
            return 0
        return int(np.count_nonzero(self.sigma > self.edge))

    @property
    def stable_rank(self) -> float:
        """‖Δ‖²_F / σ₁²: how many directions the energy spreads over."""
        top = float(self.sigma[0]) if len(self.sigma) else 0.0
        return self.energy / (top * top) if top > 0 else 0.0

    def effective_rank(self, share: float) -> int | None:
        """The fewest singular values holding ``share`` of ‖Δ‖²_F; None when a sketch holds less than that."""
        if self.energy == 0.0 or not len(self.sigma):
            return 0
        cum = np.cumsum(self.sigma.astype(np.float64) ** 2)
        k = int(np.searchsorted(cum, share * self.energy * (1 - 1e-12)))
        return k + 1 if k < len(cum) else None

    def to_dict(self, top: int = 64) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "energy": self.energy,
            "noise": self.noise,
            "rank": self.rank,
            "at_least": self.at_least,
            "effective_rank_90": self.effective_rank(0.9),
            "effective_rank_99": self.effective_rank(0.99),
            "stable_rank": self.stable_rank,
            "exact": self.exact,
            "sigma": [float(s) for s in self.sigma[:top]],
        }


ROW = 1 << 14  # float32 partial sums over rows of this length, then float64 across rows: exact to ~1e-8


def sumsq(x: torch.Tensor) -> float:
    """‖x‖²_F of a float32 tensor: float32 norms of rows of :data:`ROW` values summed in float64 (one pass;
    to ~1e-8 relative, where one float32 reduction over millions of values drifts by 1e-4)."""
    import torch

    flat = x.reshape(-1)
    rows = flat.numel() // ROW
    body, tail = flat[: rows * ROW].view(rows, ROW), flat[rows * ROW :]
    s = float(torch.linalg.vector_norm(body, dim=1).double().pow(2).sum()) if rows else 0.0
    return s + float(tail.double().pow(2).sum())


def _sketch_svd(d: torch.Tensor, width: int, niter: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomized SVD with a fixed seed (the same file gives the same report)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return torch.svd_lowrank(d, q=width, niter=niter)


def _edge(shape: tuple[int, int], noise: float) -> float:
    m, n = shape
    s = math.sqrt(noise / (m * n)) if noise > 0 else 0.0
    return EDGE_MARGIN * s * (math.sqrt(m) + math.sqrt(n))


def spectrum(d: torch.Tensor, noise: float, energy: float | None = None, *, exact: bool = False) -> Spectrum:
    """The spectrum of a 2-D float32 delta ``d`` whose rounding energy is ``noise`` (``energy``: ‖d‖²_F when
    the caller has it); ``exact``: every singular value whatever the size (the Gram matrix: slower)."""
    shape = (int(d.shape[0]), int(d.shape[1]))
    energy = sumsq(d) if energy is None else energy
    edge = _edge(shape, noise)
    if energy == 0.0 or energy <= ROUNDING_SHARE * noise:
        return Spectrum(shape, energy, np.zeros(0), True, noise, edge)
    small = min(shape)
    if exact or small <= EXACT_MAX:
        sigma = _gram_svd(d, vectors=False)[1].numpy()
        return Spectrum(shape, energy, sigma, True, noise, max(edge, GRAM_FLOOR * float(sigma[0])))
    _, s, _ = _sketch_svd(d, min(SKETCH, small), SCREEN_ITERATIONS)
    sig, floor = _signal(s)
    k = len(sig)
    if k == min(SKETCH, small) and sig[-1] > max(edge, floor) and small > 2 * SKETCH:
        # the sketch ended above the noise: the rank may still be at most LOW_RANK_MAX, unless the energy it
        # missed is more than WIDEN_SLACK times what that many more singular values of its last size would
        # hold (slack: without a power iteration the last one is underestimated)
        tail = max(energy - float(np.sum(sig**2)), 0.0)
        if tail <= WIDEN_SLACK * (LOW_RANK_MAX - k) * float(sig[-1]) ** 2:
            _, s, _ = _sketch_svd(d, min(LOW_RANK_MAX + OVERSAMPLE, small), POWER_ITERATIONS)
            sig, floor = _signal(s)
    return Spectrum(shape, energy, sig, False, noise, max(edge, floor))


def _signal(s: torch.Tensor) -> tuple[np.ndarray, float]:
    """A sketch's singular values above float32's resolution, and that resolution."""
    sigma = s.double().numpy()
    floor = FLOAT32_FLOOR * float(sigma[0]) if len(sigma) else 0.0
    return sigma[sigma > floor], floor


@dataclass
class Factors:
    """A truncated SVD Δ ≈ up @ down: ``up`` [m, r] = U·S, ``down`` [r, n] = Vᵀ."""

    up: torch.Tensor
    down: torch.Tensor
    rank: int
    kept: float  # share of ‖Δ‖²_F the rank-r product holds
    rel_error: float  # ‖Δ − up @ down‖_F / ‖Δ‖_F


def _gram_svd(d: torch.Tensor, *, vectors: bool = True) -> tuple[Any, torch.Tensor, Any]:
    """The SVD from the eigen-decomposition of the float64 Gram matrix on the smaller side: (U, σ, V) with σ
    descending; U and V only for the singular values above :data:`GRAM_FLOOR` (None when not ``vectors``)."""
    import torch

    x = d.double()
    wide = x.shape[0] <= x.shape[1]
    gram = x @ x.mT if wide else x.mT @ x
    if not vectors:
        ev = torch.linalg.eigvalsh(gram).flip(0)
        return None, ev.clamp(min=0).sqrt(), None
    ev, vec = torch.linalg.eigh(gram)
    ev, vec = ev.flip(0), vec.flip(1)
    s = ev.clamp(min=0).sqrt()
    keep = int(torch.count_nonzero(s > GRAM_FLOOR * s[0])) if len(s) and s[0] > 0 else 0
    s, vec = s[:keep], vec[:, :keep]
    other = (x.mT @ vec if wide else x @ vec) / s  # the other side's singular vectors
    return (vec, s, other) if wide else (other, s, vec)


def _choose(s2: np.ndarray, energy: float, rank: int | None, share: float | None, cap: int) -> int:
    if rank is not None:
        return max(1, min(rank, cap, len(s2)))
    cum = np.cumsum(s2)
    k = int(np.searchsorted(cum, (share or 1.0) * energy * (1 - 1e-12))) + 1
    return max(1, min(k, cap, len(s2)))


def factorize(
    d: torch.Tensor,
    *,
    rank: int | None = None,
    energy: float | None = None,
    max_rank: int | None = None,
) -> Factors:
    """The truncated SVD of a 2-D float32 delta at ``rank``, or at the fewest singular values keeping the
    share ``energy`` of ‖Δ‖²_F (capped at ``max_rank``)."""
    import torch

    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank / energy")
    total = sumsq(d)
    small = min(d.shape)
    cap = min(small, max_rank or small)
    width = min(small, (rank or SKETCH) + OVERSAMPLE)
    while True:
        exact = small <= EXACT_MAX or width >= small // 2
        u, s, v = _gram_svd(d) if exact else _sketch_svd(d, width, 2)
        s2 = s.double().numpy() ** 2
        if not exact and len(s2):  # a sketch's numerical zeros are no directions to write
            s2 = s2[: max(1, int(np.count_nonzero(s2 > (FLOAT32_FLOOR**2) * s2[0])))]
        k = _choose(s2, total, rank, energy, cap)
        reached = rank is not None or float(np.sum(s2[:k])) >= (energy or 0) * total * (1 - 1e-9)
        if exact or reached or k >= cap:
            break
        width = min(small, width * 4)
    up = (u[:, :k] * s[:k]).to(torch.float32).contiguous()
    down = v[:, :k].mT.to(torch.float32).contiguous()
    resid = sumsq(d - up @ down) if total else 0.0
    kept = 1.0 - resid / total if total else 1.0
    return Factors(up, down, k, max(0.0, kept), math.sqrt(resid / total) if total else 0.0)
