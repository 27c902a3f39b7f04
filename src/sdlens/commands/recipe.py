"""``sdlens recipe``: what a model is merged from — which candidates, at which per-block ratios, by which method."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdlens.choices import RecipeBy, metavar
from sdlens.commands._options import JsonOption, TimeEmbedOption
from sdlens.console import checked


def run(
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="MODEL [CANDIDATE]",
            help="The model to explain (any format or layout), then (after --from) the candidates.",
        ),
    ],
    first: Annotated[
        list[Path] | None,
        typer.Option(
            "--from",
            metavar="CANDIDATE...",
            help="The models it may be made from (files, model folders, or a folder of models): MODEL --from A B C.",
        ),
    ] = None,
    by: Annotated[
        str,
        typer.Option(
            metavar=metavar(RecipeBy),
            callback=checked("by", RecipeBy),
            help="Fit per merge block, component or tensor.",
        ),
    ] = "block",
    json_file: JsonOption = None,
    plot: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Write the weights per group as a figure (.png / .svg)."),
    ] = None,
    sample: Annotated[
        int,
        typer.Option(
            min=0,
            help="Element evidence from about this many blocks of 1024 values per tensor (0: every value).",
        ),
    ] = 4,
    workers: Annotated[
        int | None, typer.Option(help="Threads for the arithmetic (default: one per core).")
    ] = None,
    time_embed: TimeEmbedOption = "IN00",
) -> None:
    """What is this merged from? Weights per merge block (least squares from one pass over all files), the
    recipe in the community's words (MBW vector, add difference, …), the method (weighted sum, DARE, TIES,
    crossover) and any recipe the file's metadata claims, checked against the weights."""
    from sdlens import console
    from sdlens.analysis.recipe import recipe
    from sdlens.commands._outputs import planned_outputs, said_written, write_json
    from sdlens.errors import SdlensError
    from sdlens.io.open import expand_paths
    from sdlens.io.outputs import remove_created_on_failure
    from sdlens.render.recipe_view import plot_recipe, render_recipe

    model = paths[0]
    # a plain folder of models stands for every model in it (but the model itself)
    candidates = [c for c in expand_paths([*(first or []), *paths[1:]]) if c.resolve() != model.resolve()]
    if not candidates:
        console.fail(SdlensError(model, "recipe needs candidates: sdlens recipe MODEL --from A B ..."))
        raise typer.Exit(console.EXIT_USAGE)
    outputs = planned_outputs([model, *candidates], {"--json": json_file, "--plot": plot})
    bar = {}

    def on_plan(pl) -> None:
        for s in pl.skipped:
            console.fail(SdlensError(s["path"], f"{s['error']} (left out)"))
        bar["p"], bar["advance"] = console.progress_bar(pl.nbytes, "recipe")
        bar["p"].start()

    try:
        result = recipe(
            model,
            candidates,
            by=by,
            time_embed=time_embed,
            sample=sample,
            workers=workers,
            on_plan=on_plan,
            progress=lambda n: bar["advance"](n) if bar else None,
        )
    finally:
        if bar:
            bar["p"].stop()
    render_recipe(result, console.out)
    with remove_created_on_failure(files=[o.path for o in outputs]):
        write_json(result, json_file)
        if plot is not None:
            said_written("plot", plot_recipe(result, plot))
    if result.skipped:
        raise typer.Exit(2)
