"""``sdlens delta``: a base with a LoRA baked in, or a real fine-tune? The singular spectrum of each weight's Δ."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdlens.choices import DeltaBy, metavar
from sdlens.commands._options import JsonOption, VariantOption
from sdlens.console import checked


def run(
    model: Annotated[
        Path, typer.Argument(metavar="MODEL", help="The checkpoint to explain (any format or layout).")
    ],
    base: Annotated[
        Path,
        typer.Option("--base", metavar="BASE", help="The model it was made from (any format or layout)."),
    ],
    by: Annotated[
        str,
        typer.Option(
            metavar=metavar(DeltaBy),
            callback=checked("by", DeltaBy),
            help="Group by merge block (text encoders: by layer), layer type, or tensor.",
        ),
    ] = "block",
    json_file: JsonOption = None,
    plot: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Write spectra per layer type and ranks per block (.png / .svg)."),
    ] = None,
    exact: Annotated[
        bool,
        typer.Option(
            "--exact",
            help="Every singular value of every weight (slower); by default large high-rank weights are "
            "sketched: their rank a lower bound, their effective ranks not measured.",
        ),
    ] = False,
    variant: VariantOption = None,
) -> None:
    """Is MODEL its BASE with low-rank updates baked in (a LoRA), or a real fine-tune? Per 2-D weight and conv
    kernel: the singular values of Δ = MODEL − BASE, its rank above the rounding noise of the files' precision,
    effective rank at 90 / 99 % of ‖Δ‖² and stable rank; per block and component, a verdict in plain words
    ("LoRA-like: rank 8 in attn1/attn2 of every block", "differs only by fp16 rounding"). One streaming pass."""
    from sdlens import console
    from sdlens.analysis.delta import delta
    from sdlens.commands._outputs import planned_outputs, said_written, write_json
    from sdlens.io.open import open_checkpoint
    from sdlens.io.outputs import remove_created_on_failure
    from sdlens.render.delta_view import plot_delta, render_delta

    outputs = planned_outputs([model, base], {"--json": json_file, "--plot": plot})
    with open_checkpoint(model, variant) as ck:
        total = ck.tensor_bytes
    bar, progress = console.progress_bar(total, f"delta {model.name}")
    with bar:
        result = delta(model, base, by=by, variant=variant, exact=exact, progress=progress)
    render_delta(result, console.out)
    with remove_created_on_failure(files=[o.path for o in outputs]):
        write_json(result, json_file)
        if plot is not None:
            said_written("plot", plot_delta(result, plot))
