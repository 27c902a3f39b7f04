"""``sdlens extract-lora``: a LoRA from a fine-tune and its base, by SVD of each module's delta, with its fidelity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdlens.analysis.lora_extract import LoraDtype, LoraFormat
from sdlens.choices import metavar
from sdlens.commands._options import JsonOption
from sdlens.console import checked


def run(
    model: Annotated[
        Path, typer.Argument(metavar="MODEL", help="The fine-tuned model (any format or layout).")
    ],
    base: Annotated[Path, typer.Option(metavar="BASE", help="The model it was trained from.")],
    out: Annotated[
        Path, typer.Option("-o", "--out", metavar="LORA", help="The LoRA file to write (.safetensors).")
    ],
    rank: Annotated[
        int | None,
        typer.Option(min=1, help="Rank of every module (with --energy: the most any module gets)."),
    ] = None,
    energy: Annotated[
        float | None,
        typer.Option(
            metavar="SHARE",
            help="Each module's rank: the fewest singular values keeping this share of its ‖Δ‖²_F (0.9).",
        ),
    ] = None,
    conv_rank: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Also extract the ResNet / sampler modules (LoCon); 3×3 kernels at this rank.",
        ),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(
            help="The alpha of every module (default: --rank, else 1); alpha / rank is folded into up, so the "
            "LoRA adds the extracted delta at weight 1 whatever the alpha."
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            metavar=metavar(LoraFormat),
            callback=checked("format", LoraFormat),
            help="kohya (A1111 / Forge / ComfyUI) or peft (diffusers / PEFT) key layout.",
        ),
    ] = "kohya",
    dtype: Annotated[
        str,
        typer.Option(
            metavar=metavar(LoraDtype),
            callback=checked("dtype", LoraDtype),
            help="Precision of the written factors (sd-scripts saves float32 by default).",
        ),
    ] = "fp32",
    json_file: JsonOption = None,
) -> None:
    """Extract a LoRA: per module, the truncated SVD of Δ = MODEL − BASE at --rank, or at the rank keeping
    --energy of ‖Δ‖²_F; modules that differ only by rounding are left out and listed. Reports the share of
    ‖Δ‖² kept and the relative reconstruction error per module and overall. Streams one module at a time."""
    from sdlens import console
    from sdlens.analysis.lora_extract import extract_lora
    from sdlens.commands._outputs import planned_outputs, write_json
    from sdlens.io.open import open_checkpoint
    from sdlens.io.outputs import remove_created_on_failure
    from sdlens.render.extract_view import render_extract

    outputs = planned_outputs([model, base], {"-o": out, "--json": json_file})
    with (
        remove_created_on_failure(files=[o.path for o in outputs]),
        open_checkpoint(model) as m_ck,
        open_checkpoint(base) as b_ck,
    ):
        bar, advance = console.progress_bar(m_ck.tensor_bytes + b_ck.tensor_bytes, "extract-lora")
        with bar:
            report = extract_lora(
                m_ck,
                b_ck,
                rank=rank,
                energy=energy,
                conv_rank=conv_rank,
                alpha=alpha,
                fmt=fmt,
                dtype=dtype,
                out=out,
                progress=advance,
            )
        render_extract(report, console.out)
        write_json(report, json_file)
