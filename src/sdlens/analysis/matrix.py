"""N×N distance matrices over many checkpoints, each file read once, memory bounded.

One pass over the aligned tensors (diff's canonical names): per key (or chunk of a large key), the fused
kernel (``kernels.pair_rows``) reads the N models' stored values from their memory maps and sums every pair's
(a−b)², |a−b| or (a−b)(a+b) directly (exact to float32 rounding for every pair, float64 across blocks), and the
sums are added into every group the key belongs to (component, merge block). Models whose tensor is
bit-identical share one row (found by comparing bytes, stopping at the first difference), so "same VAE as
model 7" is exactly 0. GPUs, float64 tensors and tensors with NaN / Inf take torch's float64 pairwise
distances instead.

The work is a list of independent :class:`Task` s whose :class:`Partial` results add: ``run_task`` is a pure
function of (model paths, task), so the same tasks can be mapped over a Dask cluster and summed. The driver
saves the running sum atomically after every task, and ``resume=True`` continues from it."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdlens.analysis.notes import listing, note, plural
from sdlens.arch.blocks import block_of
from sdlens.arch.canonical import CanonRef, canonical_index
from sdlens.errors import SdlensError
from sdlens.io.base import Checkpoint
from sdlens.io.dtypes import DTYPES
from sdlens.io.open import open_checkpoint

METRICS = ("l2", "cos", "l1")
_VAE = ("vae_encoder", "vae_decoder")
_TASK_BYTES = 256 << 20  # bytes per model per task (the resume granularity)


@dataclass
class ModelInfo:
    path: str
    name: str
    family: str
    size: int
    header_sha256: str  # of the key/shape/dtype/offset table: cheap, changes whenever the layout does

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
    signatures: dict[str, list[str | None]]  # group -> per-model digest of its (key, shape) set, None = absent
    metric: str
    skipped: list[dict[str, str]] = field(default_factory=list)  # inputs that could not be read: path, error

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tasks)


@dataclass
class Partial:
    """Additive sums per group, each an N×N float64 array, over the keys both models have: ``d2`` Σ‖xi−xj‖²,
    ``dp`` Σ(‖xi‖²−‖xj‖²) (summed term by term, without cancellation), ``sq`` Σ‖xi‖², ``l1`` Σ|xi−xj|,
    ``same`` keys bit-identical, ``both`` keys both have; on the diagonal, ``bad`` counts a model's tensors
    holding NaN or Inf. Only the sums the metric needs are filled."""

    n: int
    sums: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)

    FIELDS = ("d2", "dp", "sq", "l1", "same", "both", "bad")

    def group(self, g: str) -> dict[str, np.ndarray]:
        if g not in self.sums:
            self.sums[g] = {f: np.zeros((self.n, self.n)) for f in self.FIELDS}
        return self.sums[g]

    def __add__(self, other: Partial) -> Partial:
        out = Partial(self.n, done=self.done | other.done)
        for src in (self, other):
            for g, fs in src.sums.items():
                acc = out.group(g)
                for f, v in fs.items():
                    acc[f] += v
        return out

    def save(self, path: Path, fingerprint: str) -> None:
        """Atomically: write beside, then rename."""
        arrays = {f"{g}|{f}": v for g, fs in self.sums.items() for f, v in fs.items()}
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, __meta__=np.array(json.dumps({"fingerprint": fingerprint, "done": sorted(self.done)})),
                 **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, n: int, fingerprint: str) -> Partial:
        with np.load(path) as z:
            meta = json.loads(str(z["__meta__"]))
            if meta["fingerprint"] != fingerprint:
                raise SdlensError(path, "saved partial results belong to another run (models or options differ)")
            p = cls(n, done=set(meta["done"]))
            for k in z.files:
                if k != "__meta__":
                    g, f = k.rsplit("|", 1)
                    p.group(g)[f] = z[k].copy()
        return p


@dataclass
class MatrixResult:
    models: list[ModelInfo]
    metric: str
    by: str
    ref: int
    matrices: dict[str, list[list[float | None]]]  # group -> N×N, None where not comparable
    notes: dict[str, str]  # group -> who was left out and why
    identity: dict[str, list[list[str]]]  # component -> groups (≥ 2 models) with bit-identical tensors
    keys: dict[str, int]  # group -> number of tensors compared
    skipped: list[dict[str, str]] = field(default_factory=list)  # inputs that could not be read: path, error
    resumed_bytes: int = 0  # of the work, bytes already done by an interrupted run (``resume``)
    total_bytes: int = 0

    def note_lines(self) -> list[str]:
        """The notes, one line per distinct note: groups with the same note (blocks, usually) share one."""
        by_text: dict[str, list[str]] = {}
        for g, text in self.notes.items():
            by_text.setdefault(text, []).append(g.removeprefix("block:"))
        lines = []
        for text, groups in by_text.items():
            where = groups[0] if len(groups) == 1 else listing(groups, "block" if self.by == "block" else "group")
            lines.append(f"{where}: {text}")
        if self.skipped:
            lines.append(note("not read (see the errors)", [Path(s["path"]).name for s in self.skipped], "input"))
        return lines

    def matrix(self, group: str) -> np.ndarray:
        return np.array([[np.nan if v is None else v for v in row] for row in self.matrices[group]])

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": [m.to_dict() for m in self.models],
            "metric": self.metric,
            "by": self.by,
            "ref": self.models[self.ref].name,
            "matrices": self.matrices,
            "notes": self.notes,
            "identity": self.identity,
            "keys": self.keys,
            "skipped": self.skipped,
            "resumed_bytes": self.resumed_bytes,
            "total_bytes": self.total_bytes,
        }


# ----------------------------------------------------------------------------------------------- planning


def _component_groups(name: str) -> tuple[str, ...]:
    comp = name.split("/", 1)[0].split("@")[0]
    return (comp, "vae") if comp in _VAE else (comp,)


def plan(paths: Sequence[str | Path], *, metric: str = "l2", time_embed: str = "IN00",
         task_bytes: int | None = None, variant: str | None = None) -> Plan:
    """Headers only: align every model's tensors by canonical name and cut the work into tasks of about
    ``task_bytes`` per model. An input that cannot be read is left out and listed in ``Plan.skipped``.
    ``variant``: diffusers folders' variant files (``fp16`` ...)."""
    if len(paths) < 2:
        raise SdlensError(None, "matrix needs at least two models")
    skipped: list[dict[str, str]] = []
    task_bytes = task_bytes or _TASK_BYTES
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
            models.append(ModelInfo(str(p), Path(p).name, fam, size, hashlib.sha256(table.encode()).hexdigest()))
            indexes.append(idx)
            infos.append(dict(ck.tensors))
            orders.append({k: i for i, k in enumerate(ck.in_file_order())})
    if len(models) < 2:
        why = "; ".join(f"{s['path']}: {s['error']}" for s in skipped[:2])
        more = f"; +{len(skipped) - 2} more" if len(skipped) > 2 else ""
        raise SdlensError(None, f"matrix needs at least two readable models, {len(models)} of {len(paths)} could "
                                f"be read ({why}{more})")
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
        if not ok:
            continue
        groups = _component_groups(name)
        if name.startswith("denoiser/"):
            groups += (f"block:{block_of(name, family, time_embed=time_embed)}",)
        numel = math.prod(shape)
        nbytes = sum(infos[i][refs[i].key].nbytes * numel // max(1, infos[i][refs[i].key].numel) for i in ok)
        first = ok[0]
        plans.append(((first, orders[first].get(refs[first].key, 0)), KeyPlan(name, groups, refs, numel, nbytes)))
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
        g: [hashlib.sha256("\n".join(sorted(ks)).encode("utf-8", "surrogatepass")).hexdigest() if ks else None for ks in per]
        for g, per in members.items()
    }
    groups = sorted(members, key=_group_order)
    return Plan(models, tasks, groups, signatures, metric, skipped)


def _group_order(g: str) -> tuple[int, str]:
    if g.startswith("block:"):
        from sdlens.analysis.diff import _block_order

        r, i = _block_order(g[6:])
        return (100 + r * 100 + i, g)
    order = ["denoiser", "clip_l", "clip_g", "openclip_h", "t5", "vae", "vae_encoder", "vae_decoder", "ema"]
    return (order.index(g) if g in order else 50, g)


# ----------------------------------------------------------------------------------------------- tasks


def _flat(ck: Checkpoint, ref: CanonRef):
    """A torch view (no copy where the bytes allow) of one canonical tensor, flat."""
    import torch

    from sdlens.analysis.diff import _raw_view
    from sdlens.io.dtypes import torch_dtype

    raw = _raw_view(ck, ref)
    if raw is None:
        from sdlens.arch.canonical import read_canonical

        return read_canonical(ck, ref, copy=False).reshape(-1)
    return torch.frombuffer(raw, dtype=torch_dtype(ck.tensors[ref.key].dtype)) if raw.size else torch.empty(0)


def _identity_bytes(ck: Checkpoint, ref: CanonRef):
    from sdlens.analysis.diff import _raw_view

    raw = _raw_view(ck, ref)
    return raw if raw is not None else ck.raw_bytes(ref.key)


def _identity_rows(raws: list[Any], dtypes: list[str | None]) -> list[int]:
    """For each model, the index of the first model whose stored tensor (dtype and bytes) is identical (itself
    if none). Candidates are first bucketed by dtype, size and a few sampled bytes, so N different models cost
    N cheap look-ups, not N² comparisons; within a bucket, bytes are compared (exact, no hash collisions)."""
    from sdlens.analysis.kernels import bits_equal

    buckets: dict[tuple, list[int]] = {}
    rep: list[int] = []
    for i, r in enumerate(raws):
        if r is None:
            rep.append(i)
            continue
        mid = r.size // 2
        key = (dtypes[i], r.size, r[:64].tobytes(), r[mid : mid + 64].tobytes(), r[-64:].tobytes())
        same = buckets.setdefault(key, [])
        rep.append(next((j for j in same if bits_equal(raws[j], r)), i))
        if rep[-1] == i:
            same.append(i)
    return rep


@functools.cache
def _key_pool():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(2, thread_name_prefix="sdlens-matrix-key")


def _wanted(metric: str) -> int:
    """The kernel sums a metric needs (``_jit`` bits: D2 = 1, DP = 2, L1 = 4, SQ = 8)."""
    return {"l2": 1, "cos": 1 | 2 | 8, "l1": 4}[metric]


def run_task(
    paths: Sequence[str | Path],
    task: Task,
    *,
    metric: str = "l2",
    chunk_bytes: int = 512 << 20,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
    checkpoints: Sequence[Checkpoint] | None = None,
    variant: str | None = None,
) -> Partial:
    """The sums of one task. Pure: depends only on the files and the task (safe to run anywhere)."""
    n = len(paths)
    owned = checkpoints is None
    cks = list(checkpoints) if checkpoints is not None else [open_checkpoint(p, variant) for p in paths]
    want = _wanted(metric)
    part = Partial(n, done={task.id})
    device = device or _default_device()  # once per task, not per key
    from sdlens.analysis.kernels import threads

    concurrent = threads() > 1
    per_key = chunk_bytes // 2 if concurrent else chunk_bytes  # two keys in flight share the chunk budget

    def key_sums(kp: KeyPlan):
        present = [i for i, r in enumerate(kp.refs) if r is not None]
        # the bytes that decide identity: the canonical slice, or the whole stored tensor when the slice is
        # transposed (same stored tensor => same canonical tensor)
        raws = [_identity_bytes(cks[i], kp.refs[i]) if i in present else None for i in range(n)]
        dtypes = [cks[i].tensors[kp.refs[i].key].dtype if i in present else None for i in range(n)]
        rep = _identity_rows(raws, dtypes)
        uniq = sorted({rep[i] for i in present})
        row_of = {m: r for r, m in enumerate(uniq)}
        return present, np.array([row_of[rep[i]] for i in present]), \
            _key_sums(cks, kp, uniq, want, per_key, device)

    # two keys at a time: while one key's bytes are compared or its small kernel runs on one core, the next
    # one's use the other (the kernels release the GIL); the sums are added here, in key order
    pending = [_key_pool().submit(key_sums, kp) for kp in task.keys] if concurrent else None
    try:
        for k, kp in enumerate(task.keys):
            present, idx, sums = pending[k].result() if pending else key_sums(kp)
            sel = np.ix_(present, present)
            d2n, dpn, l1n = (t[np.ix_(idx, idx)] for t in sums[:3])
            sq = np.repeat(sums[3][idx][:, None], len(present), axis=1)
            same = (idx[:, None] == idx[None, :]).astype(np.float64)
            bad = np.diag((~np.isfinite(sums[3][idx])).astype(np.float64))  # the exact path's Σx² of each row
            for g_name in kp.groups:
                acc = part.group(g_name)
                acc["d2"][sel] += d2n
                acc["dp"][sel] += dpn
                acc["sq"][sel] += sq
                acc["l1"][sel] += l1n
                acc["same"][sel] += same
                acc["both"][sel] += 1.0
                acc["bad"][sel] += bad
            if progress:
                progress(kp.nbytes)
    finally:
        for f in pending or []:
            f.cancel()
        if owned:
            for ck in cks:
                ck.close()
    return part


def _key_sums(cks: Sequence[Checkpoint], kp: KeyPlan, uniq: list[int], want: int, chunk_bytes: int,
              device: str):
    """(d2, dp, l1, sq) between the unique rows of one key: u × u float64 (``dp`` antisymmetric, the others
    symmetric) and the u row sums Σx².

    On the CPU the fused kernel (``kernels.pair_rows``) does the arithmetic: rows stored alike as fp16 / bf16 /
    fp32 (nearly every key) straight from the mapped bytes, other rows (mixed dtypes, such as an fp16 copy
    beside fp32 models; transposed open_clip slices) after torch has widened them to float32. On a GPU, for
    float64 rows, and for tensors holding NaN / Inf (whose float32 sums are not finite), torch computes the
    direct pairwise distances in float64."""
    sums = _kernel_sums(cks, kp, uniq, want, chunk_bytes) if device == "cpu" else None
    if sums is None or not all(np.isfinite(x).all() for x in sums):
        sums = _chunked_sums(cks, kp, uniq, want, chunk_bytes, device, exact=True)
    d2, dp, l1, sq = sums
    return d2 + d2.T, dp - dp.T, l1 + l1.T, sq  # the kernels fill the upper triangles


def _zero_sums(u: int) -> list[np.ndarray]:
    return [np.zeros((u, u)), np.zeros((u, u)), np.zeros((u, u)), np.zeros(u)]


def _add(sums: list[np.ndarray], part) -> None:
    for acc, x in zip(sums, part, strict=True):
        acc += x


def _kernel_sums(cks: Sequence[Checkpoint], kp: KeyPlan, uniq: list[int], want: int, chunk_bytes: int):
    from sdlens.analysis.diff import _raw_view
    from sdlens.analysis.kernels import KERNEL_DTYPES, pair_rows

    dtypes = {cks[m].tensors[kp.refs[m].key].dtype for m in uniq}
    if "F64" in dtypes:
        return None
    raws = [_raw_view(cks[m], kp.refs[m]) for m in uniq]
    if len(dtypes) > 1 or next(iter(dtypes)) not in KERNEL_DTYPES or any(r is None for r in raws):
        return _chunked_sums(cks, kp, uniq, want, chunk_bytes, "cpu", exact=False)
    dtype = next(iter(dtypes))
    sums = _zero_sums(len(uniq))
    step = max(1 << 16, chunk_bytes // (len(uniq) * DTYPES[dtype].itemsize))
    for s in range(0, kp.numel, step):
        _add(sums, pair_rows(raws, dtype, s, min(kp.numel, s + step), want))
    return sums


def _chunked_sums(cks: Sequence[Checkpoint], kp: KeyPlan, uniq: list[int], want: int, chunk_bytes: int,
                  device: str, *, exact: bool):
    """Rows widened by torch chunk by chunk: to float32 for the CPU kernel, or (``exact``) to float64 for
    torch's direct pairwise distances on ``device``."""
    import torch

    from sdlens.analysis.kernels import pair_rows

    u = len(uniq)
    wide = torch.float64 if exact else torch.float32
    flats = [_flat(cks[m], kp.refs[m]) for m in uniq]
    sums = _zero_sums(u)
    step = max(1 << 16, chunk_bytes // (u * 8))
    for s in range(0, kp.numel, step):
        c = min(step, kp.numel - s)
        x = torch.empty(u, c, dtype=wide)
        for r, f in enumerate(flats):
            x[r].copy_(f[s : s + c])
        _add(sums, _pairs_torch(x.to(device), want) if exact else pair_rows(list(x.numpy()), "F32", 0, c, want))
    return sums


def _default_device() -> str:
    """"cuda" when torch sees a GPU, else "cpu" (without importing torch on machines with no NVIDIA driver)."""
    if not Path("/proc/driver/nvidia").exists():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _pairs_torch(x, want: int):
    """The kernel's sums with torch in float64 (CPU or GPU), each pair differenced directly; upper triangles
    like the kernel's."""
    import torch

    x = x.double()
    zero = torch.zeros(len(x), len(x), dtype=x.dtype, device=x.device)
    direct = "donot_use_mm_for_euclid_dist"
    d2 = torch.cdist(x[None], x[None], compute_mode=direct)[0] ** 2 if want & 1 else zero
    l1 = torch.cdist(x[None], x[None], p=1)[0] if want & 4 else zero
    sq = (x * x).sum(1)
    dp = sq[:, None] - sq[None, :] if want & 2 else zero
    return tuple(np.triu(t.cpu().numpy(), 1) for t in (d2, dp, l1)) + (sq.cpu().numpy(),)


# ----------------------------------------------------------------------------------------------- driver


def _fingerprint(p: Plan, metric: str) -> str:
    doc = {"models": [(m.path, m.size, m.header_sha256) for m in p.models],
           "tasks": [[k.name for k in t.keys] for t in p.tasks], "metric": metric}
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def matrix(
    paths: Sequence[str | Path],
    *,
    metric: str = "l2",
    by: str = "component",
    ref: str | Path | None = None,
    state: str | Path | None = None,
    resume: bool = False,
    chunk_bytes: int = 512 << 20,
    workers: int | None = None,
    device: str | None = None,
    time_embed: str = "IN00",
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    on_resume: Callable[[int, int], None] | None = None,
    task_bytes: int | None = None,
    variant: str | None = None,
) -> MatrixResult:
    """Distance matrices between ``paths`` (any formats / layouts), per component or merge block.

    ``workers``: threads for the arithmetic (default: one per core); ``device``: "cpu", "cuda", … (default:
    the GPU when torch sees one).

    ``state``: file for the running sums (saved atomically after each task); with ``resume`` an
    interrupted run continues from it and gives the same matrices, and ``on_resume(done, total)`` is told
    how many of the bytes to read it did already (``MatrixResult.resumed_bytes``). ``variant``: diffusers
    folders' variant files (``fp16`` ...).

    Inputs that cannot be read are left out (``MatrixResult.skipped``); the others are compared."""
    if metric not in METRICS:
        raise SdlensError(None, f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    if by not in ("component", "block"):
        raise SdlensError(None, f"unknown --by {by!r}: use component or block")
    from sdlens.analysis import kernels

    pl = plan(paths, metric=metric, time_embed=time_embed, task_bytes=task_bytes, variant=variant)
    if on_plan:
        on_plan(pl)
    paths = [m.path for m in pl.models]
    n = len(pl.models)
    fp = _fingerprint(pl, metric)
    ref_i = _ref_index(pl, ref)  # a wrong --ref is said before any file is read, not after
    state_path = Path(state) if state else None
    total = Partial(n)
    reused = 0
    if resume:
        if state_path is not None and state_path.exists():
            total = Partial.load(state_path, n, fp)
            reused = sum(t.nbytes for t in pl.tasks if t.id in total.done)
        if on_resume:
            on_resume(reused, pl.nbytes)
        if progress and reused:
            progress(reused)
    cks = [open_checkpoint(p, variant) for p in paths]
    previous = kernels.set_threads(workers) if workers else None
    try:
        for task in pl.tasks:
            if task.id in total.done:
                continue
            total = total + run_task(paths, task, metric=metric, chunk_bytes=chunk_bytes, device=device,
                                     progress=progress, checkpoints=cks)
            if state_path is not None:
                total.save(state_path, fp)
    finally:
        if workers:
            kernels.set_threads(previous)
        for ck in cks:
            ck.close()
    result = finish(pl, total, metric=metric, by=by, ref=ref_i)
    result.resumed_bytes = reused
    return result


def _cosine_distance(acc: dict[str, np.ndarray]) -> np.ndarray:
    """1 − cos from sums that keep their precision for nearly identical models:
    1 − cos = (‖a−b‖² − (‖a‖−‖b‖)²) / (2‖a‖‖b‖), with ‖a‖−‖b‖ = (Σ‖a‖²−‖b‖² term by term) / (‖a‖+‖b‖)."""
    na, nb = np.sqrt(acc["sq"]), np.sqrt(acc["sq"].T)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = acc["dp"] / (na + nb)
        m = np.clip((acc["d2"] - gap * gap) / (2 * na * nb), 0.0, 2.0)
    m[np.diag_indices(len(m))] = 0.0
    return m


def _ref_index(pl: Plan, ref: str | Path | None) -> int:
    if ref is None:
        return 0
    for i, m in enumerate(pl.models):
        if str(ref) in (m.path, m.name, Path(m.path).stem):
            return i
    raise SdlensError(ref, "--ref is not one of the models")


def finish(pl: Plan, total: Partial, *, metric: str, by: str, ref: int = 0) -> MatrixResult:
    """Matrices, notes and identity groups from the summed partial results."""
    names = [m.name for m in pl.models]
    n = len(names)
    matrices: dict[str, list[list[float | None]]] = {}
    notes: dict[str, str] = {}
    identity: dict[str, list[list[str]]] = {}
    keys: dict[str, int] = {}
    wanted = [g for g in pl.groups if g.startswith("block:") == (by == "block")]
    for g in wanted:
        sig = pl.signatures[g]
        acc = total.group(g)
        present = [i for i in range(n) if sig[i] is not None]
        common = max({sig[i] for i in present}, key=[sig[i] for i in present].count)
        valid = np.array([[sig[i] is not None and sig[i] == sig[j] for j in range(n)] for i in range(n)])
        if metric == "l2":
            m = np.sqrt(acc["d2"])
        elif metric == "l1":
            m = acc["l1"].copy()
        else:
            m = _cosine_distance(acc)
        broken = [f"{names[i]}: {plural(int(acc['bad'][i, i]), 'tensor')}" for i in range(n) if acc["bad"][i, i] > 0]
        m[~valid | ~np.isfinite(m)] = np.nan
        matrices[g] = [[None if math.isnan(v) else float(v) for v in row] for row in m]
        absent = [names[i] for i in range(n) if sig[i] is None]
        other = [names[i] for i in present if sig[i] != common]
        parts = []
        if broken:
            parts.append(note("NaN or Inf weights, distances left empty", broken))
        if absent:
            parts.append(note("missing", absent))
        if other:
            parts.append(note("other architecture or key set, compared only with each other", other))
        if parts:
            notes[g] = "; ".join(parts)
        keys[g] = int(acc["both"].max()) if acc["both"].size else 0
    for g in pl.groups:
        if g.startswith("block:"):
            continue
        acc = total.group(g)
        sig = pl.signatures[g]
        same = (acc["same"] == acc["both"]) & (acc["both"] > 0)
        seen: set[int] = set()
        groups: list[list[str]] = []
        for i in range(n):
            if i in seen or sig[i] is None:
                continue
            members = [j for j in range(n) if sig[j] == sig[i] and same[i, j]]
            seen.update(members)
            if len(members) > 1:
                groups.append([names[j] for j in members])
        identity[g] = groups
    return MatrixResult(pl.models, metric, by, ref, matrices, notes, identity, keys, list(pl.skipped),
                        total_bytes=pl.nbytes)
