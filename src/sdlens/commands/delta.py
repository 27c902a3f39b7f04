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
    from sdlens.io.open import open_checkpoint
    from sdlens.io.outputs import OutFile, check_outputs, remove_created_on_failure
    from sdlens.render.delta_view import plot_delta, render_delta
    from sdlens.render.safe_text import safe

    for path, option in ((json_file, "--json"), (plot, "--plot")):
        if path is not None:
            console.output_path(path, option)
    outputs = [OutFile(o, p) for o, p in (("--json", json_file), ("--plot", plot)) if p is not None]
    check_outputs([model, base], outputs)
    with open_checkpoint(model, variant) as ck:
        total = ck.tensor_bytes
    bar, progress = console.progress_bar(total, f"delta {model.name}")
    with bar:
        result = delta(model, base, by=by, variant=variant, exact=exact, progress=progress)
    render_delta(result, console.out)
    with remove_created_on_failure(files=[o.path for o in outputs]):
        if json_file is not None:
            from sdlens.io.atomic import write_text_atomic
            from sdlens.render.jsonout import dumps

            write_text_atomic(json_file, dumps(result))
            console.out.print(f"JSON written to {safe(json_file)}", soft_wrap=True, highlight=False)
        if plot is not None:
            console.out.print(
                f"plot written to {safe(plot_delta(result, plot))}", soft_wrap=True, highlight=False
            )
