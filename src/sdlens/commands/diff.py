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
    from sdlens.commands._outputs import planned_outputs, said_written, write_json
    from sdlens.io.open import open_checkpoint
    from sdlens.io.outputs import remove_created_on_failure
    from sdlens.render.diff_figures import diff_plot_paths
    from sdlens.render.diff_view import render_diff

    if plot is not None:
        console.output_path(plot, "--plot")
    outputs = planned_outputs([a, b], {"--json": json_file, "--plot": diff_plot_paths(plot)})
    with open_checkpoint(a, variant) as ck:
        total = ck.tensor_bytes
    bar, progress = console.progress_bar(total, f"diff {a.name}")
    with bar:
        result = run_diff(a, b, time_embed=time_embed, progress=progress, variant=variant)
    render_diff(result, console.out, by=by, metric=metric)
    with remove_created_on_failure(files=[o.path for o in outputs]):
        write_json(result, json_file)
        if plot is not None:
            from sdlens.render.diff_figures import write_diff_plots

            for p in write_diff_plots(result, plot):
                said_written("plot", p)
