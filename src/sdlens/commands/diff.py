"""``sdlens diff``: what changed between two checkpoints, in any formats or layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdlens.choices import DiffBy, DiffMetric, metavar
from sdlens.commands._options import JsonOption, TimeEmbedOption, VariantOption
from sdlens.console import checked


def run(
    a: Annotated[Path, typer.Argument(metavar="A", help="First checkpoint (any format or layout).")],
    b: Annotated[Path, typer.Argument(metavar="B", help="Second checkpoint.")],
    metric: Annotated[
        str,
        typer.Option(
            metavar=metavar(DiffMetric),
            callback=checked("metric", DiffMetric),
            help="Metric shown per tensor with --by key.",
        ),
    ] = "all",
    by: Annotated[
        str, typer.Option(metavar=metavar(DiffBy), callback=checked("by", DiffBy), help="Table granularity.")
    ] = "component",
    json_file: JsonOption = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="Write plots: FILE.png/.svg (histograms) and FILE-blocks.png/.svg."
        ),
    ] = None,
    time_embed: TimeEmbedOption = "IN00",
    variant: VariantOption = None,
) -> None:
    """What changed between two checkpoints: verdict in plain words, then per component / block / type / tensor."""
    from sdlens import console
    from sdlens.analysis.diff import diff as run_diff
    from sdlens.io.open import open_checkpoint
    from sdlens.io.outputs import OutFile, check_outputs, remove_created_on_failure
    from sdlens.render.diff_figures import diff_plot_paths
    from sdlens.render.diff_view import render_diff
    from sdlens.render.safe_text import safe

    for path, option in ((json_file, "--json"), (plot, "--plot")):
        if path is not None:
            console.output_path(path, option)
    outputs = ([OutFile("--json", json_file)] if json_file else []) + [
        OutFile("--plot", p) for p in diff_plot_paths(plot)
    ]
    check_outputs([a, b], outputs)
    with open_checkpoint(a, variant) as ck:
        total = ck.tensor_bytes
    bar, progress = console.progress_bar(total, f"diff {a.name}")
    with bar:
        result = run_diff(a, b, time_embed=time_embed, progress=progress, variant=variant)
    render_diff(result, console.out, by=by, metric=metric)
    with remove_created_on_failure(files=[o.path for o in outputs]):
        if json_file is not None:
            from sdlens.io.atomic import write_text_atomic
            from sdlens.render.jsonout import dumps

            write_text_atomic(json_file, dumps(result))
            console.out.print(f"JSON written to {safe(json_file)}", soft_wrap=True, highlight=False)
        if plot is not None:
            from sdlens.render.diff_figures import write_diff_plots

            for p in write_diff_plots(result, plot):
                console.out.print(f"plot written to {safe(p)}", soft_wrap=True, highlight=False)
