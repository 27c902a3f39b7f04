"""The matrix engine's plan, from the headers alone: which files (unreadable ones listed and left out),
which tensors (aligned by canonical name, grouped by component and merge block), cut into tasks of about a
fixed size per model; and the resume check (the fingerprint a saved state must match)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlens.analysis.matrix_state import ModelInfo, Partial
from sdlens.arch import registry as R
from sdlens.arch.blocks import block_of
from sdlens.arch.canonical import CanonRef, canonical_index
from sdlens.errors import SdlensError
from sdlens.io.dtypes import DTYPES
from sdlens.io.open import open_checkpoint

_VAE = ("vae_encoder", "vae_decoder")
_TASK_BYTES = 256 << 20  # bytes per model per task (the resume granularity)


@dataclass
class KeyPlan:
    name: str  # canonical name, component/key
    groups: tuple[str, ...]  # every group this key adds to
    refs: list[CanonRef | None]  # per model; None where missing or of another shape
    numel: int
    nbytes: int  # all models together


@dataclass
class Task:
    id: int
    keys: list[KeyPlan]

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes for k in self.keys)


@dataclass
class Plan:
    models: list[ModelInfo]
    tasks: list[Task]
    groups: list[str]
    signatures: dict[
        str, list[str | None]
    ]  # group -> per-model digest of its (key, shape) set, None = absent
    metric: str
    skipped: list[dict[str, str]] = field(default_factory=list)  # inputs that could not be read: path, error

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tasks)


def _component_groups(name: str) -> tuple[str, ...]:
    comp = name.split("/", 1)[0].split("@")[0]
    return (comp, "vae") if comp in _VAE else (comp,)


def _read_headers(paths: Sequence[str | Path], variant: str | None):
    """Per readable input: its facts, canonical index, tensor table and in-file order; and the inputs that
    could not be read (path, error)."""
    skipped: list[dict[str, str]] = []
    models: list[ModelInfo] = []
    indexes: list[dict[str, CanonRef]] = []
    infos: list[dict[str, Any]] = []
    orders: list[dict[str, int]] = []
    layouts: dict[str, tuple[dict[str, CanonRef], str]] = {}  # a folder of fine-tunes shares one key layout
    for p in paths:
        try:
            ck = open_checkpoint(p, variant)
        except SdlensError as e:
            skipped.append({"path": str(p), "error": e.problem})
            continue
        with ck:
            entries = sorted((k, t.dtype, list(t.shape), t.offset) for k, t in ck.tensors.items())
            configs = ck.configs
            layout = None if configs else json.dumps([e[:3] for e in entries])
            if layout not in layouts:
                layouts[layout] = canonical_index(ck.tensors, configs)
            idx, fam = layouts[layout] if layout is not None else layouts.pop(None)
            table = json.dumps(entries)
            size = sum(Path(s).stat().st_size for s in {t.source for t in ck.tensors.values()})
            models.append(
                ModelInfo(str(p), Path(p).name, fam, size, hashlib.sha256(table.encode()).hexdigest())
            )
            indexes.append(idx)
            infos.append(dict(ck.tensors))
            orders.append({k: i for i, k in enumerate(ck.in_file_order())})
    return models, indexes, infos, orders, skipped


def plan(
    paths: Sequence[str | Path],
    *,
    metric: str = "l2",
    time_embed: str = "IN00",
    task_bytes: int | None = None,
    variant: str | None = None,
    per_key: bool = False,
    base_block: bool = False,
    first_keys: bool = False,
) -> Plan:
    """Headers only: align every model's tensors by canonical name and cut the work into tasks of about
    ``task_bytes`` per model. An input that cannot be read is left out and listed in ``Plan.skipped``.
    ``variant``: diffusers folders' variant files (``fp16`` ...); ``per_key``: every tensor is a group of
    its own too (``key:<canonical name>``); ``base_block``: tensors outside the denoiser form the merge block
    ``block:BASE`` (text encoders, VAE: what merging tools weight with their BASE ratio); ``first_keys``: only
    the first model's float tensors that at least half the others have too (recipe: a stray buffer such as
    ``logvar``, or ``position_ids`` stored as fp16 by one tool and int64 by another, must not make a whole
    group incomparable; a model of another architecture still is, group by group)."""
    if len(paths) < 2:
        raise SdlensError(None, "matrix needs at least two models")
    task_bytes = task_bytes or _TASK_BYTES
    models, indexes, infos, orders, skipped = _read_headers(paths, variant)
    if len(models) < 2:
        why = "; ".join(f"{s['path']}: {s['error']}" for s in skipped[:2])
        more = f"; +{len(skipped) - 2} more" if len(skipped) > 2 else ""
        raise SdlensError(
            None,
            f"matrix needs at least two readable models, {len(models)} of {len(paths)} could "
            f"be read ({why}{more})",
        )
    names = {n for idx in indexes for n in idx}
    # the family that names the merge blocks: the most common one among the models
    fams = [m.family for m in models if m.family != "unknown"]
    family = max(set(fams), key=fams.count) if fams else "unknown"
    plans: list[tuple[tuple[int, int], KeyPlan]] = []
    members: dict[str, list[list[str]]] = {}
    for name in names:
        refs: list[CanonRef | None] = [idx.get(name) for idx in indexes]
        shapes = [tuple(r.shape) for r in refs if r is not None]
        shape = max(set(shapes), key=shapes.count)
        ok = []
        for i, r in enumerate(refs):
            if r is None or tuple(r.shape) != shape or not DTYPES[infos[i][r.key].dtype].is_float:
                refs[i] = None
            else:
                ok.append(i)
        if not ok or first_keys and (0 not in ok or 2 * (len(ok) - 1) < len(models) - 1):
            continue
        groups = _component_groups(name)
        if name.startswith("denoiser/"):
            groups += (f"block:{block_of(name, family, time_embed=time_embed)}",)
        elif base_block:
            groups += ("block:BASE",)
        if per_key:
            groups += (f"key:{name}",)
        numel = math.prod(shape)
        nbytes = sum(infos[i][refs[i].key].nbytes * numel // max(1, infos[i][refs[i].key].numel) for i in ok)
        first = ok[0]
        plans.append(
            ((first, orders[first].get(refs[first].key, 0)), KeyPlan(name, groups, refs, numel, nbytes))
        )
        for g in groups:
            per_model = members.setdefault(g, [[] for _ in models])
            for i in ok:
                per_model[i].append(f"{name}:{shape}")
    plans.sort(key=lambda x: x[0])
    tasks: list[Task] = []
    cur: list[KeyPlan] = []
    cur_bytes = 0
    for _, kp in plans:
        cur.append(kp)
        cur_bytes += kp.nbytes
        if cur_bytes >= task_bytes * len(models):
            tasks.append(Task(len(tasks), cur))
            cur, cur_bytes = [], 0
    if cur:
        tasks.append(Task(len(tasks), cur))
    signatures = {
        g: [
            hashlib.sha256("\n".join(sorted(ks)).encode("utf-8", "surrogatepass")).hexdigest() if ks else None
            for ks in per
        ]
        for g, per in members.items()
    }
    groups = sorted(members, key=_group_order)
    return Plan(models, tasks, groups, signatures, metric, skipped)


def _group_order(g: str) -> tuple[int, str]:
    if g.startswith("key:"):
        return (10_000, g)
    if g.startswith("block:"):
        from sdlens.analysis.diff import _block_order

        r, i = _block_order(g[6:])
        return (100 + r * 100 + i, g)
    return (R.component_rank(g), g)


def _fingerprint(p: Plan, metric: str) -> str:
    doc = {
        "models": [(m.path, m.size, m.header_sha256) for m in p.models],
        "tasks": [[k.name for k in t.keys] for t in p.tasks],
        "metric": metric,
    }
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def _ref_index(pl: Plan, ref: str | Path | None) -> int:
    if ref is None:
        return 0
    for i, m in enumerate(pl.models):
        if str(ref) in (m.path, m.name, Path(m.path).stem):
            return i
    raise SdlensError(ref, "--ref is not one of the models")


def resumed(pl: Plan, state: Path | None, fingerprint: str) -> Partial:
    """The sums an interrupted run saved in ``state`` (none yet: empty); the state of another run is refused."""
    if state is None or not state.exists():
        return Partial(len(pl.models))
    return Partial.load(state, len(pl.models), fingerprint)


def done_bytes(pl: Plan, total: Partial) -> int:
    """Bytes of the plan's work that ``total`` holds already."""
    return sum(t.nbytes for t in pl.tasks if t.id in total.done)
