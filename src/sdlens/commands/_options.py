"""Options several commands share, declared once (typer reads them from the parameters' annotations)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdlens.choices import TimeEmbed, metavar
from sdlens.console import checked

VariantOption = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="Diffusers folders: read this variant's files (fp16 -> *.fp16.safetensors); default: the full-precision ones.",
    ),
]
TimeEmbedOption = Annotated[
    str,
    typer.Option(
        metavar=metavar(TimeEmbed),
        callback=checked("time_embed", TimeEmbed),
        help="Merge block of time_embed / label_emb: IN00 (A1111 mergers) or BASE (sd-mecha).",
    ),
]
JsonOption = Annotated[
    Path | None, typer.Option("--json", metavar="FILE", help="Write every number to this JSON file.")
]
