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

from collections.abc import Callable, Sequence
from pathlib import Path

from sdlens.analysis import matrix_plan
from sdlens.analysis.matrix_plan import KeyPlan, Plan, Task, _fingerprint, _ref_index, done_bytes, resumed
from sdlens.analysis.matrix_result import MatrixResult, finish
from sdlens.analysis.matrix_run import _chunked_sums, _kernel_sums, _wanted, run_plan, run_task
from sdlens.analysis.matrix_state import ModelInfo, Partial
from sdlens.choices import MatrixBy, MatrixMetric, TimeEmbed, check_choice, choices
from sdlens.errors import SdlensError

__all__ = [
    "METRICS", "KeyPlan", "MatrixResult", "ModelInfo", "Partial", "Plan", "SdlensError", "Task", "finish", "matrix",
    "plan", "run_task", "_chunked_sums", "_fingerprint", "_kernel_sums", "_wanted",
]  # fmt: skip

METRICS = choices(MatrixMetric)
_TASK_BYTES = matrix_plan._TASK_BYTES  # bytes per model per task (the resume granularity)


def plan(
    paths: Sequence[str | Path],
    *,
    metric: str = "l2",
    time_embed: str = "IN00",
    task_bytes: int | None = None,
    variant: str | None = None,
) -> Plan:
    """:func:`sdlens.analysis.matrix_plan.plan` with this module's default task size."""
    return matrix_plan.plan(
        paths, metric=metric, time_embed=time_embed, task_bytes=task_bytes or _TASK_BYTES, variant=variant
    )


def matrix(
    paths: Sequence[str | Path],
    *,
    metric: MatrixMetric = "l2",
    by: MatrixBy = "component",
    ref: str | Path | None = None,
    state: str | Path | None = None,
    resume: bool = False,
    chunk_bytes: int = 512 << 20,
    workers: int | None = None,
    device: str | None = None,
    time_embed: TimeEmbed = "IN00",
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
    check_choice(metric, "metric", MatrixMetric)
    check_choice(by, "by", MatrixBy)
    check_choice(time_embed, "time_embed", TimeEmbed)

    pl = plan(paths, metric=metric, time_embed=time_embed, task_bytes=task_bytes, variant=variant)
    if on_plan:
        on_plan(pl)
    fp = _fingerprint(pl, metric)
    ref_i = _ref_index(pl, ref)  # a wrong --ref is said before any file is read, not after
    state_path = Path(state) if state else None
    total = resumed(pl, state_path, fp) if resume else Partial(len(pl.models))
    reused = done_bytes(pl, total)
    if resume:
        if on_resume:
            on_resume(reused, pl.nbytes)
        if progress and reused:
            progress(reused)
    total = run_plan(
        pl,
        metric=metric,
        total=total,
        chunk_bytes=chunk_bytes,
        device=device,
        workers=workers,
        progress=progress,
        variant=variant,
        after_task=(lambda t: t.save(state_path, fp)) if state_path is not None else None,
        task_runner=run_task,  # this module's: what a cluster (or a test) replaces
    )
    result = finish(pl, total, metric=metric, by=by, ref=ref_i)
    result.resumed_bytes = reused
    return result
