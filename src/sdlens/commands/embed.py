"""``sdlens embed``: how each model's text encoder places your prompts — distance matrices, PCA / t-SNE maps
and per-prompt drift against a reference model. Heavy imports happen inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdlens.choices import EmbedMethod, metavar
from sdlens.console import checked
from sdlens.errors import SdlensError


def run(
    models: Annotated[
        list[Path],
        typer.Argument(
            metavar="MODEL...", help="Checkpoints or diffusers folders whose text encoders to compare."
        ),
    ],
    prompts: Annotated[
        Path,
        typer.Option(
            "--prompts",
            metavar="FILE",
            help="Prompts: .txt (one a line), .csv or .json (label, text, optional group / marker).",
        ),
    ],
    encoder: Annotated[
        str,
        typer.Option(
            metavar="ENCODER",
            help="Text encoder(s): clip_l, clip_g, openclip_h, t5 (comma-separated) or all.",
        ),
    ] = "all",
    layer: Annotated[
        str | None,
        typer.Option(
            metavar="LAYER",
            help="last, penultimate or a hidden-state number N; default: what each family's pipeline uses (SD1/SD2 last, SDXL/SD3 CLIPs penultimate).",
        ),
    ] = None,
    pool: Annotated[
        str,
        typer.Option(
            metavar="eos|mean|flatten",
            help="eos (end-of-text token), mean (over the prompt's tokens) or flatten (the whole 77-token sequence).",
        ),
    ] = "eos",
    method: Annotated[
        str,
        typer.Option(
            metavar=metavar(EmbedMethod),
            callback=checked("method", EmbedMethod),
            help="Maps: pca, or tsne (t-SNE figure as well as PCA).",
        ),
    ] = "pca",
    ref: Annotated[
        str | None,
        typer.Option(
            metavar="MODEL", help="Reference model for drift (a model's name or path; default the first)."
        ),
    ] = None,
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out", metavar="DIR", help="Folder for the CSV matrices, drift tables, figures and embed.json."
        ),
    ] = Path("embed-out"),
    tokenizer: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="DIR",
            help="Tokenizer folder (CLIP vocab.json + merges.txt, a T5 tokenizer, or a diffusers repo with tokenizer/ …); repeatable. Default: the local Hugging Face cache; never a download.",
        ),
    ] = None,
    normalize: Annotated[
        bool, typer.Option(help="L2-normalise each embedding before the distance matrices.")
    ] = True,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 16,
    top: Annotated[int, typer.Option(help="Rows of each drift table printed (all are in the CSV).")] = 10,
) -> None:
    """How each model's text encoder places your prompts: distance matrices, PCA / t-SNE maps, drift vs --ref."""
    from sdlens.analysis.embed import embed as run_embed
    from sdlens.console import err, fail, out, output_path
    from sdlens.io.open import expand_paths
    from sdlens.io.outputs import OutFolder, check_outputs, remove_created_on_failure
    from sdlens.io.prompts import read_prompts
    from sdlens.render.embed_view import WRITES, render_embed, write_embed_outputs
    from sdlens.render.safe_text import safe

    output_path(out_dir, "--out")
    paths = expand_paths(models)
    check_outputs([*models, *paths, prompts, *(tokenizer or ())], [OutFolder("--out", out_dir, WRITES)])
    plist = read_prompts(prompts)
    with err.status("embedding…") as status:
        result = run_embed(
            paths,
            plist,
            encoder=encoder,
            layer=layer,
            pool=pool,
            tokenizer_dirs=tokenizer or (),
            ref=ref,
            normalize=normalize,
            batch_size=batch_size,
            log=lambda msg: status.update(safe(msg)),
        )
        status.update("writing tables and figures…")
        with remove_created_on_failure([out_dir]):
            written = write_embed_outputs(result, out_dir, method)
    render_embed(result, out, top=top)
    figures = [p for p in written if p.suffix == ".png"]
    out.print(
        f"{len(written)} files written to {safe(out_dir)} (figures: {', '.join(safe(p.name) for p in figures)})",
        soft_wrap=True,
        highlight=False,
    )
    if result.skipped:  # reported after the results too, so that they are not lost above the tables
        for s in result.skipped:
            fail(SdlensError(s["path"], f"{s['error']} (left out)"))
        raise typer.Exit(2)
