"""``sdlens matrix``: N×N distance matrices over a folder of models, each file read once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdlens.choices import MatrixBy, MatrixMetric, metavar
from sdlens.commands._options import VariantOption
from sdlens.console import checked
from sdlens.render.safe_text import safe


def run(
    paths: Annotated[
        list[Path],
        typer.Argument(metavar="PATH...", help="Checkpoint files, diffusers folders, or folders of models."),
    ],
    metric: Annotated[
        str,
        typer.Option(
            metavar=metavar(MatrixMetric),
            callback=checked("metric", MatrixMetric),
            help="L2, cosine (1 − cos) or L1 distance.",
        ),
    ] = "l2",
    by: Annotated[
        str,
        typer.Option(
            metavar=metavar(MatrixBy),
            callback=checked("by", MatrixBy),
            help="Per component, or per merge block of the denoiser.",
        ),
    ] = "component",
    ref: Annotated[
        str | None,
        typer.Option(
            metavar="MODEL", help="Reference model (file name or path) for the distance line chart."
        ),
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Where to write CSV, JSON and plots.")
    ] = Path("matrix-out"),
    workers: Annotated[
        int | None, typer.Option(help="Threads for the arithmetic (default: one per core).")
    ] = None,
    chunk_mb: Annotated[int, typer.Option(help="Memory for one key's rows of all models, in MB.")] = 512,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run from its saved partial results.")
    ] = False,
    plots: Annotated[bool, typer.Option(help="Write the figures.")] = True,
    variant: VariantOption = None,
) -> None:
    """How do these models relate? Distance matrices per component or merge block, identity groups, plots.

    An input that cannot be read is reported in one line and left out; the others are compared, and the exit
    status is then 2 (after the results)."""
    from sdlens.console import output_path
    from sdlens.io.open import expand_paths
    from sdlens.io.outputs import OutFolder, check_outputs, remove_created_on_failure
    from sdlens.render.matrix_view import WRITES, FigureWorkers

    output_path(out_dir, "--out")
    files = expand_paths(paths)
    check_outputs([*paths, *files], [OutFolder("--out", out_dir, WRITES)])
    figures = FigureWorkers() if plots else None  # forked now, before any thread: they import while we read
    # a failed run removes the folder it created, unless it holds partial results to --resume from
    with remove_created_on_failure([out_dir], keep=(out_dir / ".matrix-partial.npz").exists):
        try:
            some_left_out = _run(
                files,
                out_dir,
                figures,
                metric=metric,
                by=by,
                ref=ref,
                workers=workers,
                chunk_mb=chunk_mb,
                resume=resume,
                plots=plots,
                variant=variant,
            )
        finally:
            if figures is not None:
                figures.close()
    if some_left_out:  # the results are written (and kept); the status says some inputs were not read
        raise typer.Exit(2)


def _run(
    files,
    out_dir: Path,
    figures,
    *,
    metric: str,
    by: str,
    ref: str | None,
    workers: int | None,
    chunk_mb: int,
    resume: bool,
    plots: bool,
    variant: str | None = None,
) -> bool:
    """Compute and write; True when some inputs could not be read (and were left out)."""
    from sdlens.analysis.matrix import matrix as run_matrix
    from sdlens.console import err, fail, out, progress_bar
    from sdlens.errors import SdlensError
    from sdlens.render.matrix_view import render_matrix, write_outputs
    from sdlens.render.text import plural, wrap_items

    state = out_dir / ".matrix-partial.npz"
    bar = {}

    def on_plan(pl) -> None:
        for s in pl.skipped:
            fail(SdlensError(s["path"], f"{s['error']} (left out)"))
        err.print(
            f"{plural(len(pl.models), 'model')}, {plural(len(pl.tasks), 'task')}, {pl.nbytes / 1e9:.2f} GB to read",
            highlight=False,
        )
        bar["p"], bar["advance"] = progress_bar(pl.nbytes, "matrix")
        bar["p"].start()

    def on_resume(done: int, total: int) -> None:
        err.print(resumed_line(done, total, state), highlight=False, soft_wrap=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = run_matrix(
            files,
            metric=metric,
            by=by,
            ref=ref,
            state=state,
            resume=resume,
            workers=workers,
            chunk_bytes=chunk_mb << 20,
            on_plan=on_plan,
            on_resume=on_resume,
            variant=variant,
            progress=lambda n: bar["advance"](n) if bar else None,
        )
    except KeyboardInterrupt:
        if bar:
            bar["p"].stop()
        if state.exists():
            err.print(
                f"interrupted: partial results saved in {safe(state)}; run again with --resume to continue"
            )
        else:
            err.print("interrupted before the first task was done: nothing saved")
        raise typer.Exit(130) from None
    finally:
        if bar:
            bar["p"].stop()
    written = write_outputs(
        result, out_dir, plots=plots, figures=figures, while_drawing=lambda: render_matrix(result, out)
    )
    state.unlink(missing_ok=True)
    wrap_items(
        out,
        [f"written to {safe(out_dir)}:", *(f"{safe(p.name)}," for p in written[:-1]), safe(written[-1].name)],
        0,
        " ",
    )
    return bool(result.skipped)


def resumed_line(done: int, total: int, state: Path) -> str:
    """E.g. ``resumed: 9.3 of 23.0 GB already done``."""
    if not done:
        return f"nothing to resume (no saved partial results in {safe(state)}): starting from the beginning"
    div, unit = next((d, u) for d, u in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1, "bytes")) if total >= d)
    return f"resumed: {done / div:.1f} of {total / div:.1f} {unit} already done"
