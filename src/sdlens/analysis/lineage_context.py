"""What lineage works on: its thresholds, the nodes and edges it reports, and the context every test of a
relation reads (the denoisers' distances and norms, bit-identical and near-duplicate models, components
shared bit for bit)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sdlens.analysis.matrix_plan import Plan
from sdlens.analysis.matrix_result import finish
from sdlens.analysis.matrix_state import Partial
from sdlens.analysis.merge_fit import rounding
from sdlens.arch import registry as R
from sdlens.io.open import open_checkpoint
from sdlens.io.quant import SCHEMES, dominant_storage

PARENT_WEIGHT = 0.05  # a candidate weighing at least this (overall, or in half the blocks) may be a parent
MAX_PARENTS = 4  # parent sets searched up to this size (smallest first)
MAX_SUPPORT = 6  # ... among at most this many candidates (the heaviest)
FINE_TUNE = 0.1  # ‖M − P‖ / ‖P‖ at or below which an MST edge sharing a TE / VAE is a fine-tune
NEAR_DUP = 1e-3  # relative distance at or below which two models are near-duplicates (one node for the fits)
NEAR_DUP_ROUNDINGS = 10  # ... or at most this many times the RMS rounding of the coarser storage of the two
QUANT_ROUNDINGS = 1.5  # ... or this many times a quantised storage's typical error
NOISE = 3e-4  # residual the pairwise sums' float32 precision leaves, relative to the distance fitted
TRAINED_NEAREST = 0.8  # a merge trained further leaves at most this of its distance to the nearest model
ADD_DIFF_NEAR = 10  # add-difference triples are sought among the nearest this many models
ADD_DIFF_ONE = 0.02  # |w − 1| within which a weight is the "1" of C + α(B − A)
ADD_DIFF_MIN = 0.05  # |α| below which it is no add-difference
BASE_FIELDS = ("ss_sd_model_name", "modelspec.base_model")  # metadata fields naming a base model
SHARED_PARTS = ("text encoders", "VAE")  # parts whose identity marks a fine-tune (registry.COMPONENT_PARTS)
ACCEPT = ("explained", "trained further")


@dataclass
class Node:
    name: str
    path: str
    family: str
    index: int
    norm: float | None  # ‖denoiser‖
    same_denoiser_as: str | None = None  # the node standing for this one (bit-identical denoiser)
    near_duplicate_of: str | None = None  # the node the fits use instead (relative distance ≤ NEAR_DUP)
    explained_by: list[str] | None = None  # merge parents, or the base its metadata names
    named_base: str | None = None  # the base the metadata names (as written)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Edge:
    kind: str  # merge / add-difference / fine-tune / same-component / nearest
    source: str  # the parent where ``directed``
    target: str  # the child where ``directed``
    directed: bool
    evidence: bool  # False: only the nearest neighbour in the spanning tree
    distance: float | None = None  # ‖a − b‖ over the denoiser
    relative_distance: float | None = None  # distance / the smaller norm
    weight: float | None = None  # merge: the parent's overall weight (by parameter count)
    weights: dict[str, float] | None = (
        None  # merge: the parent's weight per block; add-difference: α per block
    )
    residual_share: float | None = None  # the child's (merge) or the relation's (add-difference)
    verdict: str | None = None
    trained_further: bool = False
    alpha: float | None = None  # add-difference
    difference: list[str] | None = None  # add-difference: [B, A] of source = target + α(B − A)
    components: list[str] = field(default_factory=list)  # same-component / fine-tune: the shared parts
    copy: bool = False  # same-component: every part bit-identical
    near_duplicate: bool = False  # fine-tune: within a few storage roundings of each other
    method: str | None = None  # merge: DARE / TIES / crossover where element evidence found it (else linear)
    found_by: str | None = None  # fit, element evidence, metadata, identity, nearest neighbour, spanning tree
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    pl: Plan
    total: Partial
    names: list[str]
    dtypes: list[str]
    blocks: list[str]  # "block:*" groups
    numel: dict[str, int]  # block group -> parameters
    dist: np.ndarray  # denoiser L2 distances, NaN where not comparable
    norms: np.ndarray  # ‖denoiser‖ (NaN where none)
    reps: list[int]  # one model per set of bit-identical denoisers
    rep_of: dict[int, int]
    twin_of: dict[int, int]  # a near-duplicate node -> the node the fits use (finer storage, else earlier)

    @property
    def core(self) -> list[int]:
        """The nodes the fits use: near-duplicates are one (the first)."""
        return [r for r in self.reps if r not in self.twin_of]


def merge_edge(ctx: Context, parent: int, child: int, **fields: Any) -> Edge:
    """The directed evidence edge parent → child of a merge (``fields``: weights, verdict, method, note…)."""
    return Edge(
        "merge", ctx.names[parent], ctx.names[child], True, True, *distances(ctx, parent, child), **fields
    )


def read_headers(pl: Plan) -> tuple[list[dict[str, str]], list[str]]:
    """Per model: its metadata and most common stored float dtype (headers only)."""
    metas, dtypes = [], []
    for m in pl.models:
        with open_checkpoint(m.path) as ck:
            metas.append(dict(ck.metadata))
            dtypes.append(dominant_storage(ck.tensors.values()))
    return metas, dtypes


def build_context(pl: Plan, total: Partial, dtypes: list[str]) -> Context:
    n = len(pl.models)
    blocks = [g for g in pl.groups if g.startswith("block:")]
    numel = {g: 0 for g in blocks}
    for task in pl.tasks:
        for kp in task.keys:
            for g in kp.groups:
                if g in numel:
                    numel[g] += kp.numel
    sig = pl.signatures.get("denoiser", [None] * n)
    acc = total.group("denoiser")
    ok = np.array([[sig[i] is not None and sig[i] == sig[j] for j in range(n)] for i in range(n)])
    dist = np.where(ok, np.sqrt(np.clip(acc["d2"], 0, None)), np.nan)
    norms = np.array([np.sqrt(max(acc["sq"][i, i], 0.0)) if sig[i] else np.nan for i in range(n)])
    same = ok & (acc["same"] == acc["both"]) & (acc["both"] > 0)
    reps: list[int] = []
    rep_of: dict[int, int] = {}
    for i in range(n):
        r = next((r for r in reps if same[i, r]), None) if sig[i] else None
        if r is None:
            reps.append(i)
            rep_of[i] = i
        else:
            rep_of[i] = r
    twin_of: dict[int, int] = {}
    finest = sorted(reps, key=lambda i: (rounding(dtypes[i]), i))  # fp32 before fp16 before Q8_0
    for k, j in enumerate(finest):
        for i in finest[:k]:
            low = min(norms[i], norms[j])
            if i not in twin_of and low > 0 and dist[i, j] <= near_dup_limit(dtypes, i, j) * low:
                twin_of[j] = i
                break
    names = [m.name for m in pl.models]
    return Context(pl, total, names, dtypes, blocks, numel, dist, norms, reps, rep_of, twin_of)


def near_dup_limit(dtypes: list[str], i: int, j: int) -> float:
    """The relative distance at or below which models ``i`` and ``j`` are near-duplicates."""
    return max(NEAR_DUP, _dup_limit(dtypes[i]), _dup_limit(dtypes[j]))


def _dup_limit(storage: str) -> float:
    """How far a re-save in this storage may be from its source: many times a float dtype's rounding, a bit
    more than a quantisation scheme's typical error (itself large: 0.5% for Q8_0, 8% for Q4_K)."""
    if storage in SCHEMES:
        return QUANT_ROUNDINGS * rounding(storage)
    return NEAR_DUP_ROUNDINGS * rounding(storage)


def candidates(ctx: Context, t: int) -> list[int]:
    """The other nodes comparable with ``t`` over the whole denoiser."""
    return [c for c in ctx.core if c != t and np.isfinite(ctx.dist[t, c])]


def distances(ctx: Context, i: int, j: int) -> tuple[float | None, float | None]:
    d = ctx.dist[i, j]
    if not np.isfinite(d):
        return None, None
    low = np.nanmin([ctx.norms[i], ctx.norms[j]])
    return float(d), float(d / low) if low > 0 else None


def shared_parts(pl: Plan, total: Partial) -> dict[str, list[list[int]]]:
    """Part -> groups (≥ 2 models) bit-identical in it: text encoders, VAE (as a whole where both halves
    are), denoiser."""
    res = finish(pl, total, metric="l2", by="component")
    index = {m.name: i for i, m in enumerate(pl.models)}
    out: dict[str, list[list[int]]] = {}
    for comp, groups in res.identity.items():
        part = R.COMPONENT_PARTS.get(comp.split("@")[0], "VAE" if comp == "vae" else None)
        if part is None:
            continue
        out[comp] = [[index[n] for n in g] for g in groups]
    if "vae" in out:
        for half in ("vae_encoder", "vae_decoder"):
            if out.get(half) == out["vae"]:
                del out[half]
    return out


def part_label(comp: str) -> str:
    """A part's name for people: CLIP-L, VAE, denoiser ..."""
    return "VAE" if comp == "vae" else R.COMPONENT_LABELS.get(comp.split("@")[0], comp)


def shared_between(parts: dict[str, list[list[int]]], i: int, j: int) -> list[str]:
    return [c for c, groups in parts.items() if any(i in g and j in g for g in groups)]
