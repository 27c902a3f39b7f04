"""A merge family whose truth is known exactly, for ``recipe`` / ``lineage`` tests and the demo.

Tiny SD1-layout models (real key names and shapes, :func:`sdlens.testing.zoo_unet.build_single_file`) and
merges of them made the way the community's tools make them, each with its recipe as plain data
(:attr:`MergeFamily.truth`, also written as ``truth.json`` beside the files):

=================  ===========================================================================================
``base_a``         a base (seed 0); ``base_b`` another, independent everywhere (seed 1)
``finetune_a``     base_a's UNet + a small random change (``FT_A_REL`` of each tensor's RMS); TE / VAE kept
``finetune_b``     base_a's UNet + a large random change (``FT_B_REL``)
``mbw_ab``         per-block weighted sum ``A*(1-α_b) + B*α_b`` (A = base_a, B = base_b), α per merge block
                   (:data:`MBW_ALPHA`; three blocks copied whole from A (α = 0), three from B (α = 1));
                   the text encoder and VAE (block BASE) at :data:`MBW_BASE_ALPHA`
``adddiff``        add difference ``A + α(B − C)``: A = base_b, B = finetune_a, C = base_a, α = 0.7
``avg3``           ``0.5·base_a + 0.3·base_b + 0.2·finetune_a``
``dare``           DARE: ``base_a + λ·m⊙(finetune_b − base_a)/(1 − p)``, m ~ Bernoulli(1 − p), p = 0.3, λ = 1
``ties``           TIES of finetune_a and finetune_b over base_a: per tensor the top 20 % of each delta by
                   magnitude kept, sign elected by the sum, disjoint mean, λ = 1
``crossover``      per element base_b's value with probability q = 0.4, else base_a's
``merge_trained``  ``0.5·base_a + 0.5·base_b`` then a random change on the UNet (per tensor 0.3 × the
                   merge's distance to base_a)
``unrelated``      independent weights everywhere (seed 2)
``near_dup_b``     base_b with a tiny change (1e-6 relative in float32; 2e-3 in float16: 1e-6 rounds away)
=================  ===========================================================================================

Each truth has ``kind`` and ``file``, the recipe's parameters as given (``alpha``, ``weights`` per candidate,
``drop_rate`` ...), and ``measured_*`` figures read back from the stored values (DARE's drop share among the
UNet values finetune_b moves, crossover's share from B, TIES's element shares, fine-tunes' relative change).
``merge_trained`` and ``unrelated`` carry residual shares of the affine least-squares fit on [base_a, base_b]
(float64, numpy, stored values): ``residual_share`` (over ‖M − base_a‖), ``residual_share_vs_nearest``,
``residual_share_blockwise`` (every UNet block fitted on its own, as ``recipe`` reports the denoiser) and
``by_group`` (the matrix engine's components and ``block:*`` groups).

"Weights" are every float tensor of the denoiser, text encoder and VAE; the noise schedule buffers and
integer tensors are base_a's in every file (identical anyway; float ones stored at ``dtype`` too). Every file
is stored at ``dtype``; merges are computed in float64 from the parents' *stored* values and rounded once, as
real tools do, so a block copy is bit-equal to its source and dropped DARE values are bit-equal to the base
in float16 too. Building takes about 0.5 s (plus the tiny models' one-off build, about 2.5 s per process).
Merge blocks are the matrix engine's (:func:`sdlens.analysis.matrix_plan.plan`, ``time_embed="IN00"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdlens.arch.blocks import block_names
from sdlens.io.dtypes import st_name
from sdlens.testing.writers import save_safetensors, write_sparse_safetensors
from sdlens.testing.zoo_unet import build_single_file

FAMILY = "sd1"
TIME_EMBED = "IN00"  # where the UNet's time embedding sits (the matrix engine's default)
SEEDS = {"base_a": 0, "base_b": 1, "unrelated": 2}
FT_A_REL, FT_B_REL = 0.05, 0.5  # fine-tune change per tensor, relative to the tensor's RMS
MBW_BASE_ALPHA = 0.35
MBW_ALPHA: dict[str, float] = {
    "IN00": 0.1, "IN01": 0.2, "IN02": 0.3, "IN03": 1.0, "IN04": 0.0, "IN05": 0.45, "IN06": 0.55,
    "IN07": 0.65, "IN08": 0.0, "IN09": 0.8, "IN10": 0.9, "IN11": 0.25, "M00": 1.0,
    "OUT00": 0.15, "OUT01": 0.35, "OUT02": 0.5, "OUT03": 0.7, "OUT04": 0.85, "OUT05": 1.0, "OUT06": 0.05,
    "OUT07": 0.6, "OUT08": 0.4, "OUT09": 0.0, "OUT10": 0.75, "OUT11": 0.95,
}  # fmt: skip
ADDDIFF_ALPHA = 0.7
AVG3_WEIGHTS = {"base_a": 0.5, "base_b": 0.3, "finetune_a": 0.2}
DARE_P, DARE_LAMBDA, DARE_SEED = 0.3, 1.0, 1234
TIES_K, TIES_LAMBDA = 0.2, 1.0
CROSSOVER_Q, CROSSOVER_SEED = 0.4, 4321
TRAINED_NOISE_RATIO = 0.3  # per UNet tensor: ‖noise‖ = 0.3 · ‖merge − base_a‖
NEAR_REL = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@dataclass
class MergeFamily:
    """The family's files, each member's truth (JSON-able) and the shared facts (``meta``)."""

    paths: dict[str, Path]
    truth: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    truth_path: Path | None = None


@dataclass
class _Layout:
    """Every weight of a model as one flat float64 vector: the keys in order, their shapes and offsets, the
    component and merge block of each key (the matrix engine's grouping), and the tensors kept as they are."""

    keys: list[str]
    shapes: list[tuple[int, ...]]
    offsets: np.ndarray  # start of each key; offsets[-1] = total
    component: list[str]  # per key: denoiser / clip_l / vae_encoder / vae_decoder
    block: list[str]  # per key: BASE / IN00 ...
    rest: dict[str, torch.Tensor]  # schedule buffers, integer tensors: written unchanged

    @property
    def seg(self) -> np.ndarray:
        """Key index of every element."""
        return np.repeat(np.arange(len(self.keys)), np.diff(self.offsets))

    def mask(self, pred) -> np.ndarray:
        """Element mask of the keys whose index satisfies ``pred(i)``."""
        return np.repeat(np.array([bool(pred(i)) for i in range(len(self.keys))]), np.diff(self.offsets))

    def groups(self) -> dict[str, np.ndarray]:
        """The matrix engine's groups as element masks: components (``vae`` = encoder + decoder) and
        ``block:*`` of the UNet."""
        names: dict[str, list[int]] = {}
        for i, c in enumerate(self.component):
            names.setdefault(c, []).append(i)
            if c.startswith("vae_"):
                names.setdefault("vae", []).append(i)
            if c == "denoiser":
                names.setdefault(f"block:{self.block[i]}", []).append(i)
        return {g: self.mask(set(idx).__contains__) for g, idx in names.items()}

    def flat(self, sd: dict[str, torch.Tensor]) -> np.ndarray:
        return np.concatenate([sd[k].double().numpy().ravel() for k in self.keys])

    def per_key(self, x: np.ndarray, fn=np.add) -> np.ndarray:
        return fn.reduceat(x, self.offsets[:-1])


def _layout(sd: dict[str, torch.Tensor], probe: Path) -> _Layout:
    from sdlens.analysis.matrix_plan import plan

    pl = plan([probe, probe], time_embed=TIME_EMBED)
    where: dict[str, tuple[str, str]] = {}
    for task in pl.tasks:
        for kp in task.keys:
            comp = kp.name.split("/", 1)[0]
            ref = kp.refs[0]
            if ref is None or comp in ("schedule", "other") or not sd[ref.key].is_floating_point():
                continue
            blocks = [g[6:] for g in kp.groups if g.startswith("block:")]
            where[ref.key] = (comp, blocks[0] if blocks else "BASE")
    keys = sorted(where)
    shapes = [tuple(sd[k].shape) for k in keys]
    offsets = np.concatenate([[0], np.cumsum([sd[k].numel() for k in keys])])
    rest = {k: v for k, v in sd.items() if k not in where}
    return _Layout(keys, shapes, offsets, [where[k][0] for k in keys], [where[k][1] for k in keys], rest)


def _round(x: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Round once to the stored dtype; keep float64 so later arithmetic starts from the stored values."""
    return torch.from_numpy(x).to(dtype).double().numpy()


def _normal(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n)


def _noise(lay: _Layout, x: np.ndarray, where: np.ndarray, rel: float, seed: int) -> np.ndarray:
    """Per tensor: ``rel · RMS(tensor) · N(0, 1)`` on the elements of ``where``, zero elsewhere."""
    rms = np.sqrt(lay.per_key(x * x) / np.diff(lay.offsets))
    return np.where(where, rel * rms[lay.seg] * _normal(x.size, seed), 0.0)


def _top_share(d: np.ndarray, k: float) -> np.ndarray:
    """Mask of the ``max(1, round(k·n))`` largest magnitudes of ``d``."""
    n = max(1, round(k * d.size))
    mask = np.zeros(d.size, dtype=bool)
    mask[np.argpartition(np.abs(d), d.size - n)[d.size - n :]] = True
    return mask


def _ties(lay: _Layout, base: np.ndarray, models: list[np.ndarray], k: float, lam: float):
    """TIES-merging (Yadav et al. 2023): trim each delta to its top-k magnitudes per tensor, elect the sign
    of the summed trimmed deltas, average the trimmed deltas that agree with it, add λ times that. Returns
    the merge, and per element how many deltas were averaged and which (``agree``, one row per model)."""
    trimmed = np.zeros((len(models), base.size))
    for i, m in enumerate(models):
        d = m - base
        for a, b in zip(lay.offsets[:-1], lay.offsets[1:], strict=True):
            keep = _top_share(d[a:b], k)
            trimmed[i, a:b] = np.where(keep, d[a:b], 0.0)
    sign = np.sign(trimmed.sum(0))
    agree = (np.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0)
    merged = (trimmed * agree).sum(0) / np.maximum(count, 1)
    return base + lam * merged, count, agree


def _residual(m: np.ndarray, cands: list[np.ndarray], sel: np.ndarray) -> float:
    """‖r‖: M less its least-squares affine fit Σ wᵢ Pᵢ (Σ wᵢ = 1) over ``sel``, float64. The same for any
    choice of the reference P0 among the candidates."""
    p0 = cands[0][sel]
    d = m[sel] - p0
    a = np.stack([p[sel] - p0 for p in cands[1:]], axis=1)
    coef, *_ = np.linalg.lstsq(a, d, rcond=None)
    return float(np.linalg.norm(d - a @ coef))


def _shares(m: np.ndarray, cands: dict[str, np.ndarray], groups: dict[str, np.ndarray]) -> dict[str, Any]:
    """Residual shares of M against ``cands`` (affine fit), per group and over the denoiser: against the
    first candidate (P0) and against the candidate nearest to M in that group; and the denoiser's share
    with every UNet block fitted on its own (√Σ residual_b² / ‖M − nearest‖ over the denoiser)."""
    names, arrays = list(cands), list(cands.values())
    per: dict[str, dict[str, Any]] = {}
    for g, sel in groups.items():
        r = _residual(m, arrays, sel)
        dist = {n: float(np.linalg.norm((m - x)[sel])) for n, x in cands.items()}
        near = min(dist, key=dist.__getitem__)
        per[g] = {
            "residual": r,
            "vs_p0": r / dist[names[0]] if dist[names[0]] else 0.0,
            "nearest": near,
            "vs_nearest": r / dist[near] if dist[near] else 0.0,
        }
    blocks = [v["residual"] for g, v in per.items() if g.startswith("block:")]
    den = per["denoiser"]
    dist = den["residual"] / den["vs_nearest"] if den["vs_nearest"] else 0.0
    return {
        "P0": names[0],
        "candidates": names,
        "residual_share": den["vs_p0"],
        "residual_share_vs_nearest": den["vs_nearest"],
        "residual_share_blockwise": float(np.sqrt(sum(x * x for x in blocks))) / dist if dist else 0.0,
        "by_group": per,
    }


def _share(hit: np.ndarray, sel: np.ndarray) -> float:
    return float(hit[sel].mean()) if sel.any() else 0.0


def _rel_norm(a: np.ndarray, b: np.ndarray, sel: np.ndarray) -> float:
    """‖a − b‖ / ‖b‖ over the elements of ``sel``."""
    return float(np.linalg.norm((a - b)[sel]) / np.linalg.norm(b[sel]))


# the family tree: child -> (kind, parents); "merge" edges carry the parents in the recipe's order
EDGES: list[dict[str, Any]] = [
    {"child": "finetune_a", "kind": "fine-tune", "parents": ["base_a"]},
    {"child": "finetune_b", "kind": "fine-tune", "parents": ["base_a"]},
    {"child": "mbw_ab", "kind": "merge", "method": "weighted sum per block", "parents": ["base_a", "base_b"]},
    {"child": "adddiff", "kind": "merge", "method": "add difference", "parents": ["base_b", "finetune_a", "base_a"]},
    {"child": "avg3", "kind": "merge", "method": "weighted sum", "parents": ["base_a", "base_b", "finetune_a"]},
    {"child": "dare", "kind": "merge", "method": "DARE", "parents": ["base_a", "finetune_b"]},
    {"child": "ties", "kind": "merge", "method": "TIES", "parents": ["base_a", "finetune_a", "finetune_b"]},
    {"child": "crossover", "kind": "merge", "method": "crossover", "parents": ["base_a", "base_b"]},
    {"child": "merge_trained", "kind": "merge+fine-tune", "method": "weighted sum", "parents": ["base_a", "base_b"]},
    {"child": "near_dup_b", "kind": "fine-tune", "parents": ["base_b"]},
]  # fmt: skip
ROOTS = ["base_a", "base_b", "unrelated"]


def _identity(m: dict[str, np.ndarray], parts: dict[str, np.ndarray]) -> dict[str, list[list[str]]]:
    """Per component, the groups (two or more) of models whose stored values there are bit-identical."""
    out: dict[str, list[list[str]]] = {}
    for comp, sel in parts.items():
        by: dict[bytes, list[str]] = {}
        for name, x in m.items():
            by.setdefault(x[sel].tobytes(), []).append(name)
        out[comp] = sorted(sorted(g) for g in by.values() if len(g) > 1)
    return out


def _write(lay: _Layout, x: np.ndarray, dtype: torch.dtype, path: Path) -> Path:
    """A safetensors file: the weights (in ``lay.keys`` order, from one flat vector) then the rest."""
    st = st_name(dtype)
    rest = {k: t.to(dtype) if t.is_floating_point() else t for k, t in lay.rest.items()}
    specs = {k: (s, st) for k, s in zip(lay.keys, lay.shapes, strict=True)}
    specs.update({k: (tuple(t.shape), st_name(t.dtype)) for k, t in rest.items()})
    tmp = path.with_name(path.name + ".tmp")
    write_sparse_safetensors(specs, tmp, None, rest)
    with open(tmp, "r+b") as f:
        f.seek(8 + int.from_bytes(f.read(8), "little"))
        f.write(torch.from_numpy(x).to(dtype).view(torch.uint8).numpy().tobytes())
    tmp.replace(path)
    return path


def build_merge_family(out_dir: str | Path, dtype: torch.dtype = torch.float32) -> MergeFamily:
    """Write the family (``<name>.safetensors``) and ``truth.json`` into ``out_dir``; paths and truth."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = {name: build_single_file(FAMILY, seed=s) for name, s in SEEDS.items()}
    probe = save_safetensors(raw["base_a"], out / ".layout_probe.safetensors")
    lay = _layout(raw["base_a"], probe)
    probe.unlink()
    groups = lay.groups()
    unet = groups["denoiser"]
    m = {name: _round(lay.flat(sd), dtype) for name, sd in raw.items()}
    a, b = m["base_a"], m["base_b"]
    truth: dict[str, dict[str, Any]] = {
        "base_a": {"kind": "base", "seed": SEEDS["base_a"]},
        "base_b": {"kind": "base", "seed": SEEDS["base_b"], "independent_of": ["base_a"]},
        "unrelated": {
            "kind": "unrelated",
            "seed": SEEDS["unrelated"],
            "independent_of": ["base_a", "base_b"],
        },
    }

    for name, rel, seed in (("finetune_a", FT_A_REL, 11), ("finetune_b", FT_B_REL, 12)):
        m[name] = _round(a + _noise(lay, a, unet, rel, seed), dtype)
        truth[name] = {
            "kind": "fine-tune",
            "parent": "base_a",
            "changed": ["denoiser"],
            "identical_to_parent": ["clip_l", "vae"],
            "relative_change": rel,
            "measured_relative_change": _rel_norm(m[name], a, unet),
        }
    fa, fb = m["finetune_a"], m["finetune_b"]

    order = block_names(FAMILY)
    alpha = {blk: {"BASE": MBW_BASE_ALPHA, **MBW_ALPHA}[blk] for blk in order}
    al = np.array([alpha[blk] for blk in lay.block])[lay.seg]
    m["mbw_ab"] = _round(a * (1 - al) + b * al, dtype)
    truth["mbw_ab"] = {
        "kind": "weighted_sum",
        "formula": "A*(1-alpha)+B*alpha",
        "A": "base_a",
        "B": "base_b",
        "alpha": alpha,
        "mbw": [alpha[blk] for blk in order],
        "block_order": order,
        "block_copies": {blk: ("base_a" if v == 0 else "base_b") for blk, v in alpha.items() if v in (0, 1)},
        "weights": {blk: {"base_a": 1 - v, "base_b": v} for blk, v in alpha.items()},
    }

    m["adddiff"] = _round(b + ADDDIFF_ALPHA * (fa - a), dtype)
    truth["adddiff"] = {
        "kind": "add_difference",
        "formula": "A+alpha*(B-C)",
        "A": "base_b",
        "B": "finetune_a",
        "C": "base_a",
        "alpha": ADDDIFF_ALPHA,
        "weights": {"base_b": 1.0, "finetune_a": ADDDIFF_ALPHA, "base_a": -ADDDIFF_ALPHA},
    }

    m["avg3"] = _round(sum(w * m[n] for n, w in AVG3_WEIGHTS.items()), dtype)
    truth["avg3"] = {"kind": "weighted_average", "n_models": 3, "weights": dict(AVG3_WEIGHTS)}

    keep = np.random.default_rng(DARE_SEED).random(a.size) < 1 - DARE_P
    m["dare"] = _round(a + DARE_LAMBDA * np.where(keep, fb - a, 0.0) / (1 - DARE_P), dtype)
    truth["dare"] = {
        "kind": "dare",
        "base": "base_a",
        "parents": ["base_a", "finetune_b"],
        "drop_rate": DARE_P,
        "lambda": DARE_LAMBDA,
        "rescale": DARE_LAMBDA / (1 - DARE_P),
        "mask_seed": DARE_SEED,
        "measured_drop_share": _share(m["dare"] == a, unet & (fb != a)),
    }

    ties, count, agree = _ties(lay, a, [fa, fb], TIES_K, TIES_LAMBDA)
    m["ties"] = _round(ties, dtype)
    truth["ties"] = {
        "kind": "ties",
        "base": "base_a",
        "models": ["finetune_a", "finetune_b"],
        "density": TIES_K,
        "lambda": TIES_LAMBDA,
        "sign": "sum",
        "merge": "disjoint_mean",
        "element_shares": {  # over the UNet: which trimmed deltas the merged value took
            "equal_base": _share(count == 0, unet),
            "finetune_a_alone": _share((count == 1) & agree[0], unet),
            "finetune_b_alone": _share((count == 1) & agree[1], unet),
            "mean_of_both": _share(count == 2, unet),
        },
        "measured_equal_base_share": _share(m["ties"] == a, unet),
    }

    pick = np.random.default_rng(CROSSOVER_SEED).random(a.size) < CROSSOVER_Q
    m["crossover"] = np.where(pick, b, a)
    truth["crossover"] = {
        "kind": "crossover",
        "A": "base_a",
        "B": "base_b",
        "share_from_B": CROSSOVER_Q,
        "mask_seed": CROSSOVER_SEED,
        "measured_share_from_B": _share(m["crossover"] == b, unet),
        "measured_share_from_A": _share(m["crossover"] == a, unet),
    }

    half = 0.5 * a + 0.5 * b
    z = _normal(a.size, 21)
    scale = TRAINED_NOISE_RATIO * np.sqrt(lay.per_key((half - a) ** 2) / lay.per_key(z * z))
    noise = np.where(unet, z * scale[lay.seg], 0.0)
    m["merge_trained"] = _round(half + noise, dtype)
    truth["merge_trained"] = {
        "kind": "merge+fine-tune",
        "merge": {
            "kind": "weighted_sum",
            "formula": "A*(1-alpha)+B*alpha",
            "A": "base_a",
            "B": "base_b",
            "alpha": 0.5,
            "weights": {"base_a": 0.5, "base_b": 0.5},
        },
        "trained": ["denoiser"],
        "noise_ratio_per_tensor": TRAINED_NOISE_RATIO,
        "noise_norm": float(np.linalg.norm(noise)),
        "residual_share_definition": (
            "||r|| / ||M - P0||, r = M less its least-squares affine fit w0*P0 + w1*P1 (w0 + w1 = 1) over "
            "the candidates [base_a, base_b], P0 = base_a, over the stored values of the denoiser, float64 "
            "(numpy); also against the candidate nearest to M (vs_nearest), per group (by_group: the matrix "
            "engine's components and blocks), and with every UNet block fitted on its own (blockwise)"
        ),
        **_shares(m["merge_trained"], {"base_a": a, "base_b": b}, groups),
    }
    truth["unrelated"].update(_shares(m["unrelated"], {"base_a": a, "base_b": b}, groups))  # same fits
    rel = NEAR_REL.get(dtype, 1e-6)
    m["near_dup_b"] = _round(b + _noise(lay, b, np.ones(b.size, dtype=bool), rel, 31), dtype)
    truth["near_dup_b"] = {
        "kind": "near-duplicate",
        "of": "base_b",
        "relative_change": rel,
        "measured_relative_change": _rel_norm(m["near_dup_b"], b, unet),
    }

    paths = {name: _write(lay, x, dtype, out / f"{name}.safetensors") for name, x in m.items()}
    parts = {"denoiser": unet, "clip_l": groups["clip_l"], "vae": groups["vae"]}
    for name, t in truth.items():
        t["file"] = paths[name].name
    meta = {
        "family": FAMILY,
        "dtype": str(dtype).removeprefix("torch."),
        "time_embed": TIME_EMBED,
        "block_order": order,
        "groups": {g: int(sel.sum()) for g, sel in groups.items()},
        "weights": "every float tensor of denoiser, clip_l, vae_encoder, vae_decoder; the rest is base_a's",
        "merges": "computed in float64 from the parents' stored values, rounded once to dtype",
        "edges": EDGES,
        "roots": ROOTS,
        "identity": _identity(m, parts),
    }
    truth_path = out / "truth.json"
    truth_path.write_text(json.dumps({"meta": meta, "models": truth}, indent=2))
    return MergeFamily(paths, truth, meta, truth_path)
