"""``sdlens lineage``: the family tree of a folder of models, from one pass over all of them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdlens.render.safe_text import safe


def run(
    paths: Annotated[
        list[Path],
        typer.Argument(metavar="PATH...", help="Checkpoint files, diffusers folders, or folders of models."),
    ],
    out_dir: Annotated[
        Path,
        typer.Option("--out", metavar="DIR", help="Where to write lineage.json, lineage.txt, lineage.png."),
    ] = Path("lineage-out"),
    workers: Annotated[
        int | None, typer.Option(help="Threads for the arithmetic (default: one per core).")
    ] = None,
    chunk_mb: Annotated[int, typer.Option(help="Memory for one key's rows of all models, in MB.")] = 256,
    plots: Annotated[bool, typer.Option(help="Write the figure.")] = True,
) -> None:
    """Which of these models are merges, fine-tunes or copies of which? The family tree, from one pass.

    Evidence (merges and their weights, add-difference relations, fine-tunes, bit-identical parts) is told
    apart from links that are only the nearest neighbour. An input that cannot be read is reported in one
    line and left out; the others are analysed, and the exit status is then 2 (after the results)."""
    from sdlens.console import output_path
    from sdlens.io.open import expand_paths
    from sdlens.io.outputs import OutFolder, check_outputs, remove_created_on_failure
    from sdlens.render.lineage_view import WRITES

    output_path(out_dir, "--out")
    files = expand_paths(paths)
    check_outputs([*paths, *files], [OutFolder("--out", out_dir, WRITES)])
    with remove_created_on_failure([out_dir]):
        some_left_out = _run(files, out_dir, workers=workers, chunk_mb=chunk_mb, plots=plots)
    if some_left_out:  # the results are written; the status says some inputs were not read
        raise typer.Exit(2)


def _run(files: list[Path], out_dir: Path, *, workers: int | None, chunk_mb: int, plots: bool) -> bool:
    """Compute and write; True when some inputs could not be read (and were left out)."""
    from sdlens.analysis.lineage import lineage
    from sdlens.console import err, fail, out, progress_bar
    from sdlens.errors import SdlensError
    from sdlens.render.lineage_view import render_lineage, write_outputs
    from sdlens.render.text import plural

    bar = {}

    def on_plan(pl) -> None:
        for s in pl.skipped:
            fail(SdlensError(s["path"], f"{s['error']} (left out)"))
        err.print(f"{plural(len(pl.models), 'model')}, {pl.nbytes / 1e9:.2f} GB to read", highlight=False)
        bar["p"], bar["advance"] = progress_bar(pl.nbytes, "lineage")
        bar["p"].start()

    try:
        result = lineage(
            files,
            workers=workers,
            chunk_bytes=chunk_mb << 20,
            on_plan=on_plan,
            progress=lambda n: bar["advance"](n) if bar else None,
        )
    finally:
        if bar:
            bar["p"].stop()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = write_outputs(result, out_dir, plots=plots, while_drawing=lambda: render_lineage(result, out))
    out.print(
        f"written to {safe(out_dir)}: " + ", ".join(safe(p.name) for p in written),
        highlight=False,
        soft_wrap=True,
    )
    return bool(result.skipped)
