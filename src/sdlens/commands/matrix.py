"""``sdlens matrix``: N×N distance matrices over a folder of models, each file read once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


def matrix(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH...", help="Checkpoint files, diffusers folders, or folders of models.")],
    metric: Annotated[str, typer.Option(metavar="l2|cos|l1", help="L2, cosine (1 − cos) or L1 distance.")] = "l2",
    by: Annotated[str, typer.Option(metavar="component|block", help="Per component, or per merge block of the denoiser.")] = "component",
    ref: Annotated[str | None, typer.Option(metavar="MODEL", help="Reference model (file name or path) for the distance line chart.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", metavar="DIR", help="Where to write CSV, JSON and plots.")] = Path("matrix-out"),
    workers: Annotated[int | None, typer.Option(help="Threads for the arithmetic (default: one per core).")] = None,
    chunk_mb: Annotated[int, typer.Option(help="Memory for one key's rows of all models, in MB.")] = 512,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its saved partial results.")] = False,
    plots: Annotated[bool, typer.Option(help="Write the figures.")] = True,
) -> None:
    """How do these models relate? Distance matrices per component or merge block, identity groups, plots."""
    from sdlens.cli import choice, output_path
    from sdlens.io.open import expand_paths
    from sdlens.render.matrix_view import FigureWorkers

    choice(metric, "--metric", ("l2", "cos", "l1"))
    choice(by, "--by", ("component", "block"))
    output_path(out_dir, "--out")
    files = expand_paths(paths)
    figures = FigureWorkers() if plots else None  # forked now, before any thread: they import while we read
    try:
        _run(files, out_dir, figures, metric=metric, by=by, ref=ref, workers=workers, chunk_mb=chunk_mb,
             resume=resume, plots=plots)
    finally:
        if figures is not None:
            figures.close()


def _run(files, out_dir: Path, figures, *, metric: str, by: str, ref: str | None, workers: int | None,
         chunk_mb: int, resume: bool, plots: bool) -> None:
    from sdlens.analysis.matrix import matrix as run_matrix
    from sdlens.cli import _progress_bar, err, out
    from sdlens.render.matrix_view import render_matrix, write_outputs
    from sdlens.render.text import plural, wrap_items

    state = out_dir / ".matrix-partial.npz"
    bar = {}

    def on_plan(pl) -> None:
        err.print(f"{plural(len(pl.models), 'model')}, {plural(len(pl.tasks), 'task')}, {pl.nbytes / 1e9:.2f} GB to read",
                  highlight=False)
        bar["p"], bar["advance"] = _progress_bar(pl.nbytes, "matrix")
        bar["p"].start()

    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = run_matrix(files, metric=metric, by=by, ref=ref, state=state, resume=resume, workers=workers,
                            chunk_bytes=chunk_mb << 20, on_plan=on_plan,
                            progress=lambda n: bar["advance"](n) if bar else None)
    except KeyboardInterrupt:
        if bar:
            bar["p"].stop()
        err.print(f"interrupted: partial results saved in {state}; run again with --resume to continue")
        raise typer.Exit(130) from None
    finally:
        if bar:
            bar["p"].stop()
    written = write_outputs(result, out_dir, plots=plots, figures=figures,
                            while_drawing=lambda: render_matrix(result, out))
    state.unlink(missing_ok=True)
    wrap_items(out, [f"written to {out_dir}:", *(f"{p.name}," for p in written[:-1]), written[-1].name], 0, " ")


def register(app: typer.Typer) -> None:
    app.command()(matrix)


def demo_section(zoo_dir: Path, out_dir: Path, console: Console) -> None:
    """matrix over a family with known relations (fine-tunes, a merge at 0.3, a VAE swap, fp16, SDXL)."""
    import time

    from sdlens.analysis.matrix import matrix as run_matrix
    from sdlens.render.matrix_view import render_matrix, write_outputs
    from sdlens.testing.zoo_matrix import MERGE_ALPHA, build_matrix_zoo

    console.rule("[bold]sdlens matrix")
    models = build_matrix_zoo(zoo_dir / "matrix-family")
    t0 = time.perf_counter()
    result = run_matrix(list(models.values()))
    dt = time.perf_counter() - t0
    render_matrix(result, console)
    written = write_outputs(result, out_dir / "matrix")
    m = result.matrix("denoiser")
    i = {Path(n).stem: k for k, n in enumerate(result.names)}
    ratio = m[i["base"], i["merge"]] / m[i["base"], i["unet_ft"]]
    console.print(f"merge at α={MERGE_ALPHA}: d(base, merge) / d(base, unet_ft) = {ratio:.6f} "
                  f"(expected {1 - MERGE_ALPHA:.6f}); {len(models)} models in {dt:.1f} s; "
                  f"{len(written)} files in {out_dir / 'matrix'}", soft_wrap=True)
