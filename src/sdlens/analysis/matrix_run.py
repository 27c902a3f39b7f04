"""The matrix engine's run: one task's sums, every file read once in offset order through its memory map.

Per key (or chunk of a large key), the fused kernel (``kernels.pair_rows``) reads the N models' stored values
and sums every pair's (a−b)², |a−b| or (a−b)(a+b) directly; models whose tensor is bit-identical share one
row. GPUs, float64 tensors and tensors with NaN / Inf take torch's float64 pairwise distances instead."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdlens.analysis.matrix_plan import KeyPlan, Plan, Task
from sdlens.analysis.matrix_state import Partial
from sdlens.arch.canonical import CanonRef
from sdlens.io.base import Checkpoint
from sdlens.io.dtypes import DTYPES
from sdlens.io.open import open_checkpoint


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
    from sdlens.io.quant import quant_of

    q = quant_of(ck.tensors[ref.key])
    if q is not None:  # a quantised tensor: its whole stored bytes, the companions' included (same stored
        # tensor => same canonical slice of it)
        parts = [np.ascontiguousarray(ck.stored(p)).view(np.uint8).reshape(-1) for p in q.stored]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
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
    """The kernel sums a metric needs (``_jit`` bits: D2 = 1, DP = 2, L1 = 4, SQ = 8); ``gram``: what a
    least-squares fit of one model from others needs (recipe, lineage)."""
    return {"l2": 1, "cos": 1 | 2 | 8, "l1": 4, "gram": 1 | 8}[metric]


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
    probe: Callable[[Sequence[Checkpoint], KeyPlan], dict[str, np.ndarray] | None] | None = None,
) -> Partial:
    """The sums of one task. Pure: depends only on the files and the task (safe to run anywhere).

    ``probe(checkpoints, key)``: more sums of a key (named arrays, such as recipe's element counts), added
    into every group of the key like the distances, but its own ``key:`` group (kept small)."""
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
        return (
            present,
            np.array([row_of[rep[i]] for i in present]),
            _key_sums(cks, kp, uniq, want, per_key, device),
            probe(cks, kp) if probe else None,
        )

    # two keys at a time: while one key's bytes are compared or its small kernel runs on one core, the next
    # one's use the other (the kernels release the GIL); the sums are added here, in key order
    pending = [_key_pool().submit(key_sums, kp) for kp in task.keys] if concurrent else None
    try:
        for k, kp in enumerate(task.keys):
            present, idx, sums, extra = pending[k].result() if pending else key_sums(kp)
            contrib = _contribution(n, present, idx, sums)
            for g_name in kp.groups:
                acc = part.group(g_name)
                for f, v in contrib.items():
                    acc[f] += v
                for name, value in (extra or {}).items() if not g_name.startswith("key:") else ():
                    part.add(g_name, name, value)
            if progress:
                progress(kp.nbytes)
    finally:
        for f in pending or []:
            f.cancel()
        if owned:
            for ck in cks:
                ck.close()
    return part


def _contribution(n: int, present: list[int], idx: np.ndarray, sums) -> dict[str, np.ndarray]:
    """One key's additions to every ``Partial`` field (N×N), from the sums between its unique rows: made
    once per key, then added to each of its groups."""
    d2n, dpn, l1n = (t[np.ix_(idx, idx)] for t in sums[:3])
    rows = sums[3][idx]
    parts = {
        "d2": d2n,
        "dp": dpn,
        "sq": np.repeat(rows[:, None], len(present), axis=1),
        "l1": l1n,
        "same": (idx[:, None] == idx[None, :]).astype(np.float64),
        "both": np.ones((len(present), len(present))),
        "bad": np.diag((~np.isfinite(rows)).astype(np.float64)),  # the exact path's Σx² of each row
    }
    if len(present) == n:
        return parts
    sel = np.ix_(present, present)
    out = {}
    for f, v in parts.items():
        out[f] = np.zeros((n, n))
        out[f][sel] = v
    return out


def run_plan(
    pl: Plan,
    *,
    metric: str,
    total: Partial | None = None,
    chunk_bytes: int = 512 << 20,
    device: str | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    probe: Callable[[Sequence[Checkpoint], KeyPlan], dict[str, np.ndarray] | None] | None = None,
    variant: str | None = None,
    after_task: Callable[[Partial], None] | None = None,
    task_runner: Callable[..., Partial] | None = None,
) -> Partial:
    """Every task of a plan that ``total`` (default: nothing yet) has not done, each file opened once and
    read in offset order, the sums added; ``after_task(total)`` after each (matrix saves its state there,
    for ``resume``). ``workers``: threads for the arithmetic; ``probe``: see :func:`run_task`;
    ``task_runner``: what runs one task (default :func:`run_task`)."""
    from sdlens.analysis import kernels

    paths = [m.path for m in pl.models]
    total = total if total is not None else Partial(len(paths))
    cks = [open_checkpoint(p, variant) for p in paths]
    previous = kernels.set_threads(workers) if workers else None
    try:
        for task in pl.tasks:
            if task.id in total.done:
                continue
            total = total + (task_runner or run_task)(
                paths,
                task,
                metric=metric,
                chunk_bytes=chunk_bytes,
                device=device,
                progress=progress,
                checkpoints=cks,
                **({"probe": probe} if probe else {}),
            )
            if after_task:
                after_task(total)
    finally:
        if workers:
            kernels.set_threads(previous)
        for ck in cks:
            ck.close()
    return total


def _key_sums(
    cks: Sequence[Checkpoint], kp: KeyPlan, uniq: list[int], want: int, chunk_bytes: int, device: str
):
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


def _chunked_sums(
    cks: Sequence[Checkpoint],
    kp: KeyPlan,
    uniq: list[int],
    want: int,
    chunk_bytes: int,
    device: str,
    *,
    exact: bool,
):
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
        _add(
            sums, _pairs_torch(x.to(device), want) if exact else pair_rows(list(x.numpy()), "F32", 0, c, want)
        )
    return sums


def _default_device() -> str:
    """ "cuda" when torch sees a GPU, else "cpu" (without importing torch on machines with no NVIDIA driver)."""
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
