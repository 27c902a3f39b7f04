"""``sdlens schedule``: noise schedules and prediction type — of named schedules, released families and
checkpoints, side by side. Heavy imports happen inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdlens.choices import Spacing, metavar
from sdlens.console import checked

ITEMS_HELP = (
    "Named schedules (linear, scaled_linear, squaredcos_cap_v2, each also +ztsnr; edm; flow, flow-shift3, "
    "flow-dynamic), families (sd1, sdxl, sd3, flux, playground …) or checkpoints. Default: every named schedule."
)


def run(
    items: Annotated[
        list[str] | None, typer.Argument(metavar="[NAME|CHECKPOINT]...", help=ITEMS_HELP)
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Sampling steps (default: the family's pipeline's, else 50).")
    ] = None,
    spacing: Annotated[
        str | None,
        typer.Option(
            metavar=metavar(Spacing),
            callback=checked("spacing", Spacing),
            help="Timestep spacing shown in the step tables (default: each schedule's own; JSON has all three).",
        ),
    ] = None,
    res: Annotated[
        str | None,
        typer.Option(
            metavar="WxH", help="Image size, for FLUX's resolution-dependent shift (default: the model's)."
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON (every curve and step) instead of tables.")
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Write ᾱ, log-SNR and σ of all of them to FILE (.png or .svg)."),
    ] = None,
) -> None:
    """β, ᾱ, SNR and σ of each schedule, the steps a sampler visits, DDIM's σ(η), and — for a checkpoint — its
    own schedule buffers, markers and prediction type with the evidence."""
    from sdlens.analysis.cost import parse_res
    from sdlens.analysis.schedule_report import schedule_report
    from sdlens.console import err, out, output_path
    from sdlens.io.outputs import OutFile, check_outputs
    from sdlens.render.jsonout import dumps
    from sdlens.render.safe_text import safe

    if plot is not None:
        output_path(plot, "--plot")
    items = list(items or [])
    check_outputs([Path(i) for i in items if Path(i).exists()], [OutFile("--plot", plot)] if plot else [])
    views = schedule_report(items, steps=steps, res=parse_res(res))
    if json_out:
        print(dumps(views))
    else:
        from sdlens.render.schedule_view import render_schedules

        render_schedules(views, out, spacing=spacing)
    if plot is not None:
        from sdlens.render.schedule_plot import plot_schedules

        written = plot_schedules(views, plot)
        (err if json_out else out).print(f"plot written to {safe(written)}", soft_wrap=True, highlight=False)
