"""``sdlens embed``: how each model's text encoder places your prompts — distance matrices, PCA / t-SNE maps
and per-prompt drift against a reference model. Heavy imports happen inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sdlens.errors import SdlensError


def register(app: typer.Typer) -> None:
    @app.command()
    def embed(
        models: Annotated[list[Path], typer.Argument(metavar="MODEL...", help="Checkpoints or diffusers folders whose text encoders to compare.")],
        prompts: Annotated[Path, typer.Option("--prompts", metavar="FILE", help="Prompts: .txt (one a line), .csv or .json (label, text, optional group / marker).")],
        encoder: Annotated[str, typer.Option(metavar="ENCODER", help="Text encoder(s): clip_l, clip_g, openclip_h, t5 (comma-separated) or all.")] = "all",
        layer: Annotated[str | None, typer.Option(metavar="LAYER", help="last, penultimate or a hidden-state number N; default: what each family's pipeline uses (SD1/SD2 last, SDXL/SD3 CLIPs penultimate).")] = None,
        pool: Annotated[str, typer.Option(metavar="eos|mean|flatten", help="eos (end-of-text token), mean (over the prompt's tokens) or flatten (the whole 77-token sequence).")] = "eos",
        method: Annotated[str, typer.Option(metavar="pca|tsne", help="Maps: pca, or tsne (t-SNE figure as well as PCA).")] = "pca",
        ref: Annotated[str | None, typer.Option(metavar="MODEL", help="Reference model for drift (a model's name or path; default the first).")] = None,
        out_dir: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder for the CSV matrices, drift tables, figures and embed.json.")] = Path("embed-out"),
        tokenizer: Annotated[list[Path] | None, typer.Option(metavar="DIR", help="Tokenizer folder (CLIP vocab.json + merges.txt, a T5 tokenizer, or a diffusers repo with tokenizer/ …); repeatable. Default: the local Hugging Face cache; never a download.")] = None,
        normalize: Annotated[bool, typer.Option(help="L2-normalise each embedding before the distance matrices.")] = True,
        batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 16,
        top: Annotated[int, typer.Option(help="Rows of each drift table printed (all are in the CSV).")] = 10,
    ) -> None:
        """How each model's text encoder places your prompts: distance matrices, PCA / t-SNE maps, drift vs --ref."""
        from sdlens.analysis.embed import embed as run_embed
        from sdlens.cli import choice, output_path
        from sdlens.io.open import expand_paths
        from sdlens.io.outputs import OutFolder, check_outputs, remove_created_on_failure
        from sdlens.io.prompts import read_prompts
        from sdlens.render.embed_view import WRITES, render_embed, write_embed_outputs
        from sdlens.render.safe_text import safe

        out = Console(emoji=False)
        err = Console(stderr=True, emoji=False)
        choice(method, "--method", ("pca", "tsne"))
        output_path(out_dir, "--out")
        if batch_size < 1:
            raise SdlensError(None, "--batch-size must be at least 1")
        paths = expand_paths(models)
        check_outputs([*models, *paths, prompts, *(tokenizer or ())], [OutFolder("--out", out_dir, WRITES)])
        plist = read_prompts(prompts)
        with err.status("embedding…") as status:
            result = run_embed(
                paths, plist, encoder=encoder, layer=layer, pool=pool, tokenizer_dirs=tokenizer or (), ref=ref,
                normalize=normalize, batch_size=batch_size, log=lambda msg: status.update(safe(msg)),
            )
            status.update("writing tables and figures…")
            with remove_created_on_failure([out_dir]):
                written = write_embed_outputs(result, out_dir, method)
        render_embed(result, out, top=top)
        figures = [p for p in written if p.suffix == ".png"]
        out.print(f"{len(written)} files written to {safe(out_dir)} (figures: {', '.join(safe(p.name) for p in figures)})",
                  soft_wrap=True, highlight=False)
        if result.skipped:  # reported after the results too, so that they are not lost above the tables
            from sdlens.cli import _fail

            for s in result.skipped:
                _fail(SdlensError(s["path"], f"{s['error']} (left out)"))
            raise typer.Exit(2)


def _tuned_copy(src: Path, dst: Path, layer_keys: tuple[str, ...], scale: float = 0.05) -> Path:
    """A copy of ``src`` with the weight matrices of some encoder layers perturbed (a stand-in for a fine-tune)."""
    import torch

    from sdlens.io.open import open_checkpoint
    from sdlens.testing.writers import save_safetensors

    g = torch.Generator().manual_seed(7)
    with open_checkpoint(src) as ck:
        sd = {}
        for k in list(ck.tensors):
            t = ck.read(k)
            if any(lk in k for lk in layer_keys) and t.is_floating_point() and t.ndim == 2:
                t = (t.float() + scale * t.float().std() * torch.randn(t.shape, generator=g)).to(t.dtype)
            sd[k] = t
    return save_safetensors(sd, dst)


def demo_section(zoo_dir: Path, out_dir: Path, console: Console) -> None:
    """embed: three SDXL text-encoder sets (one file, the same model as a diffusers folder, a copy whose bigG
    was "fine-tuned": its last layers perturbed by 30 % of their spread, a drift the figure shows), a tokenizer
    made on the spot, the built-in prompts; drift tables, PCA and drift figures."""
    from sdlens.analysis.embed import embed
    from sdlens.io.prompts import Prompt
    from sdlens.render.embed_view import render_drift, write_embed_outputs
    from sdlens.testing.tokenizer import DEMO_PROMPTS, write_clip_tokenizer
    from sdlens.testing.zoo import build_zoo

    console.rule("sdlens embed")
    zoo = build_zoo(zoo_dir, ["sdxl_fp16", "sdxl_diffusers"])
    base, folder = zoo["sdxl_fp16"].path, zoo["sdxl_diffusers"].path
    tuned = zoo_dir / "embed_sdxl_bigG_tuned.safetensors"
    if not tuned.exists():
        blocks = "conditioner.embedders.1.model.transformer.resblocks"
        _tuned_copy(base, tuned, tuple(f"{blocks}.{i}." for i in range(20, 31)), scale=0.3)
    tok = write_clip_tokenizer(out_dir / "embed" / "tokenizer")
    prompts = [Prompt(*p) for p in DEMO_PROMPTS]
    result = embed([base, folder, tuned], prompts, tokenizer_dirs=[tok], ref=str(base))
    console.print(
        f"{len(prompts)} prompts through CLIP-L and bigG of 3 models (tiny random weights, real architecture); "
        f"SDXL's layer: {result.embeddings[0].layer}"
    )
    for d in result.drift:
        if d.max_drift > 1e-5:
            render_drift(d, console, top=6)
    quiet = [d for d in result.drift if d.max_drift <= 1e-5]
    for d in quiet:
        console.print(f"{d.model} vs {d.ref} · {d.encoder}: unchanged (largest drift "
                      f"{d.max_drift:.1e}, rounding level)", highlight=False)
    written = write_embed_outputs(result, out_dir / "embed", "pca")
    figs = ", ".join(str(out_dir / "embed" / f) for f in ("pca-clip_g.png", "drift-clip_g.png"))
    console.print(f"[bold]written:[/] {len(written)} files in {out_dir / 'embed'}; figures: {figs}")
