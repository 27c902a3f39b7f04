"""``sdlens delta``: is a checkpoint a base with low-rank updates baked in (a LoRA), or a real fine-tune?

One streaming pass over the tensors model and base share (:mod:`sdlens.analysis.delta_pairs`, one pair in memory
at a time): bit-identical pairs are "unchanged" without a float conversion; for the others Δ = M − B in float32,
its rounding-noise energy (:func:`sdlens.analysis.spectrum.noise_energy`) and, for 2-D weights and conv kernels,
its singular spectrum (:func:`sdlens.analysis.spectrum.spectrum`). Each tensor gets a kind:

* ``unchanged`` — bit-identical (or equal values in another dtype);
* ``rounding`` — ‖Δ‖² within what rounding the stored values gives;
* ``low-rank`` — a 2-D Δ whose singular values above the noise edge number at most half its smaller side and at
  most :data:`sdlens.analysis.spectrum.LOW_RANK_MAX` (what a LoRA leaves);
* ``high-rank`` — any other changed 2-D Δ (what full fine-tuning leaves);
* ``changed`` — a changed 1-D tensor (bias, norm): LoRAs leave these alone;
* ``non-finite`` — NaN or Inf in either file where the bytes differ: not compared (a NaN has no spectrum).

Groups (merge blocks, layer types or tensors) and components sum them up; :mod:`sdlens.analysis.delta_words`
says what it means.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdlens.analysis.delta_pairs import Alignment, Buffers, Pair, aligned, paths_differ, read_pair, same_bytes
from sdlens.analysis.spectrum import free_threads
from sdlens.arch.blocks import block_of
from sdlens.arch.layers import layer_type
from sdlens.choices import DeltaBy, check_choice
from sdlens.io.dtypes import DTYPES
from sdlens.io.open import open_checkpoint
from sdlens.io.quant import quant_of, stored_dtype

KINDS = ("unchanged", "rounding", "low-rank", "high-rank", "changed", "non-finite")
SIGMA_KEPT = 48  # singular values kept per tensor for the report and the figures
_LAYER = re.compile(r"\.(?:layers|block|blocks)\.(\d+)\.")


@dataclass
class TensorDelta:
    key: str  # canonical name
    component: str
    block: str  # merge block (denoiser), "layer N" (text encoders), else the component
    layer_type: str
    shape: list[int]
    dtype_model: str
    dtype_base: str
    kind: str
    rel: float = 0.0  # ‖Δ‖ / ‖B‖
    energy: float = 0.0  # ‖Δ‖²
    noise: float = 0.0  # ‖Δ‖² from rounding alone
    rank: int | None = None  # 2-D only: singular values above the noise edge
    size: int | None = None  # 2-D only: the smaller side
    at_least: bool = False  # rank and effective ranks are lower bounds (sketched)
    effective_rank_90: int | None = None
    effective_rank_99: int | None = None
    stable_rank: float | None = None
    sigma: list[float] = field(default_factory=list)  # largest singular values

    @property
    def changed(self) -> bool:
        return self.kind not in ("unchanged", "rounding")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GroupDelta:
    """Tensors of one group (merge block, layer type or tensor) by kind; ranks of its low-rank weights."""

    name: str
    component: str
    tensors: int = 0
    kinds: Counter = field(default_factory=Counter)
    ranks: Counter = field(default_factory=Counter)  # rank -> low-rank weights
    effective_90: list[int] = field(default_factory=list)  # of its high-rank weights where measured
    sizes: list[int] = field(default_factory=list)  # of its high-rank weights
    sketched: list[int] = field(default_factory=list)  # ranks (lower bounds) of high-rank weights sketched
    energy: float = 0.0
    base_energy: float = 0.0  # of the tensors that changed
    layer_types: Counter = field(default_factory=Counter)  # of its changed tensors

    def add(self, t: TensorDelta, base_energy: float) -> None:
        self.tensors += 1
        self.kinds[t.kind] += 1
        self.energy += t.energy
        self.base_energy += base_energy
        if t.changed:
            self.layer_types[t.layer_type] += 1
        if t.kind == "low-rank" and t.rank is not None:
            self.ranks[t.rank] += 1
        elif t.kind == "high-rank" and t.size:
            self.sizes.append(t.size)
            if t.effective_rank_90 is not None:
                self.effective_90.append(t.effective_rank_90)
            else:
                self.sketched.append(t.rank or 0)

    @property
    def kind(self) -> str:
        """The group's kind: the most telling of its tensors' kinds (high-rank > low-rank > changed > ...)."""
        for k in ("high-rank", "low-rank", "changed", "non-finite", "rounding"):
            if self.kinds[k]:
                return k
        return "unchanged"

    @property
    def rel(self) -> float:
        return math.sqrt(self.energy / self.base_energy) if self.base_energy else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "component": self.component,
            "kind": self.kind,
            "tensors": self.tensors,
            "kinds": dict(self.kinds),
            "ranks": {str(k): v for k, v in sorted(self.ranks.items())},
            "median_effective_rank_90": statistics.median(self.effective_90) if self.effective_90 else None,
            "median_size": statistics.median(self.sizes) if self.sizes else None,
            "sketched_rank_at_least": min(self.sketched) if self.sketched else None,
            "rel": self.rel,
            "layer_types": dict(self.layer_types),
        }


@dataclass
class DeltaResult:
    model: str
    base: str
    family: str
    by: str
    verdict: list[str]
    components: dict[str, GroupDelta]
    groups: list[GroupDelta]
    tensors: list[TensorDelta]
    only_model: list[str]
    only_base: list[str]
    mismatched: list[dict]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "base": self.base,
            "family": self.family,
            "by": self.by,
            "verdict": self.verdict,
            "components": {c: g.to_dict() for c, g in self.components.items()},
            "groups": [g.to_dict() for g in self.groups],
            "tensors": [t.to_dict() for t in self.tensors],
            "only_model": self.only_model,
            "only_base": self.only_base,
            "mismatched": self.mismatched,
        }


def group_of(t: TensorDelta, by: str) -> str:
    """The group a tensor belongs to for ``--by``."""
    if by == "key":
        return t.key
    if by == "layer":
        return t.layer_type
    return t.block


def _block(name: str, component: str, family: str) -> str:
    if component == "denoiser":
        return block_of(name, family)
    m = _LAYER.search(name)
    return f"layer {int(m.group(1))}" if m and component not in ("vae_encoder", "vae_decoder") else component


def measure(
    model: Any, base: Any, pair: Pair, family: str, buffers: Buffers | None = None, *, exact: bool = False
) -> tuple[TensorDelta, float]:
    """One pair's TensorDelta and ‖B‖² (0 when Δ = 0: group sizes are relative to the weights changed)."""

    from sdlens.analysis import spectrum as S

    comp = pair.component
    t = TensorDelta(
        key=pair.name,
        component=comp,
        block=_block(pair.name, comp, family),
        layer_type=layer_type(pair.key),
        shape=list(pair.shape),
        dtype_model=stored_dtype(model.tensors[pair.model.key]),
        dtype_base=stored_dtype(base.tensors[pair.base.key]),
        kind="unchanged",
    )
    if len(pair.shape) >= 2:
        t.size = min(pair.shape[0], math.prod(pair.shape[1:]))
    if same_bytes(model, base, pair):
        return t, 0.0
    import torch

    buffers = buffers or Buffers()
    d, scratch = buffers.get(pair.shape)[2:]
    quantised = quant_of(model.tensors[pair.model.key]) or quant_of(base.tensors[pair.base.key])
    sums = None if quantised else _kernel_sums(model, base, pair, d)
    if quantised:  # the noise is the quantisation's: Σ step² / 12 of the quantised side(s)
        from sdlens.analysis.diff_quant import check_pair

        m, b = read_pair(model, base, pair, buffers)
        torch.sub(m, b, out=d)
        t.energy, base_energy = S.sumsq(d), S.sumsq(b)
        qc = check_pair(model, base, pair.model, pair.base, m.reshape(-1), b.reshape(-1))
        t.noise = qc.noise
        if t.energy and qc.within and math.isfinite(t.energy) and math.isfinite(base_energy):
            t.rel = math.sqrt(t.energy / base_energy) if base_energy else math.inf
            t.kind = "rounding"
            return t, base_energy
    elif sums is None:
        m, b = read_pair(model, base, pair, buffers)
        torch.sub(m, b, out=d)
        t.energy, base_energy = S.sumsq(d), S.sumsq(b)
        t.noise = S.noise_energy(m, pair.dtype_model, b, pair.dtype_base, scratch)
    else:
        m = b = None  # read below only if the rounding check needs them
        t.energy, base_energy, pow2 = sums
        t.noise = S.noise_from_exponents(pow2, pair.dtype_model, pair.dtype_base)
    if t.energy == 0.0:
        return t, 0.0
    if not (math.isfinite(t.energy) and math.isfinite(base_energy)):
        t.kind, t.energy, t.noise = "non-finite", 0.0, 0.0
        return t, 0.0
    t.rel = math.sqrt(t.energy / base_energy) if base_energy else math.inf
    # within one step everywhere implies ‖Δ‖² ≤ Σ step² ≤ 12 × the noise: only then is it worth checking
    if t.energy <= 12.5 * t.noise and m is None and not quantised:
        m, b = read_pair(model, base, pair, buffers)
    if (
        not quantised
        and t.energy <= 12.5 * t.noise
        and S.rounding_only(d, m, pair.dtype_model, b, pair.dtype_base)
    ):
        t.kind = "rounding"
        return t, base_energy
    mat = S.as_matrix(d)
    if mat is None or min(mat.shape) < 2:
        t.kind = "changed"
        return t, base_energy
    spec = S.spectrum(mat, t.noise, t.energy, exact=exact)
    if spec.rank == 0:  # a few values off by more than a step, no direction above the noise
        t.kind = "rounding"
        return t, base_energy
    t.rank = spec.rank
    t.at_least = spec.at_least
    t.effective_rank_90 = spec.effective_rank(0.9)
    t.effective_rank_99 = spec.effective_rank(0.99)
    t.stable_rank = spec.stable_rank
    t.sigma = [float(s) for s in spec.sigma[:SIGMA_KEPT]]
    if not spec.at_least and t.rank <= min(spec.size // 2, S.LOW_RANK_MAX):
        t.kind = "low-rank"
    else:
        t.kind = "high-rank"
    return t, base_energy


def _kernel_sums(model: Any, base: Any, pair: Pair, d: Any) -> tuple[float, float, float] | None:
    """(‖Δ‖², ‖B‖², Σ (2^⌊log₂|B|⌋)²) with Δ written into ``d``, from the stored bytes in one fused pass
    (:func:`sdlens.analysis.kernels.delta_stats`) for large same-dtype fp16 / bf16 / fp32 pairs; None: the
    caller's torch path."""
    from sdlens.analysis.diff import raw_view
    from sdlens.analysis.kernels import KERNEL_DELTA_MIN, KERNEL_DTYPES, delta_stats

    if (
        pair.dtype_model != pair.dtype_base
        or pair.dtype_model not in KERNEL_DTYPES
        or pair.numel < KERNEL_DELTA_MIN
    ):
        return None
    xm, xb = raw_view(model, pair.model), raw_view(base, pair.base)
    if xm is None or xb is None:
        return None
    return delta_stats(xm, xb, pair.dtype_model, d.numpy())


def _float(pair: Pair) -> bool:
    return DTYPES[pair.dtype_model].is_float and DTYPES[pair.dtype_base].is_float


def delta(
    model_path: str | Path,
    base_path: str | Path,
    *,
    by: DeltaBy = "block",
    variant: str | None = None,
    exact: bool = False,
    progress: Callable[[int], None] | None = None,
) -> DeltaResult:
    """Compare ``model_path`` with ``base_path`` tensor by tensor and say what kind of change it is;
    ``exact``: every singular value of every weight (large high-rank weights are otherwise sketched: their rank
    a lower bound, their effective ranks unknown)."""
    from sdlens.analysis.delta_words import verdict

    check_choice(by, "by", DeltaBy)
    paths_differ(model_path, base_path)
    with (
        open_checkpoint(model_path, variant) as model,
        open_checkpoint(base_path, variant) as base,
        free_threads(),
    ):
        al: Alignment = aligned(model, base)
        tensors: list[TensorDelta] = []
        groups: dict[tuple[str, str], GroupDelta] = {}
        comps: dict[str, GroupDelta] = {}
        buffers = Buffers()
        for pair in al.pairs:
            if not _float(pair):
                continue
            t, base_energy = measure(model, base, pair, al.family, buffers, exact=exact)
            tensors.append(t)
            comps.setdefault(t.component, GroupDelta(t.component, t.component)).add(t, base_energy)
            g = group_of(t, by)
            groups.setdefault((t.component, g), GroupDelta(g, t.component)).add(t, base_energy)
            if progress:
                progress(pair.numel * model.tensors[pair.model.key].itemsize)  # row slices: their share
    result = DeltaResult(
        model=str(model_path),
        base=str(base_path),
        family=al.family,
        by=by,
        verdict=[],
        components=comps,
        groups=list(groups.values()),
        tensors=tensors,
        only_model=al.only_model,
        only_base=al.only_base,
        mismatched=al.mismatched,
    )
    result.verdict = verdict(result)
    return result
