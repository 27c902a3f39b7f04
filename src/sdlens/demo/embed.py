"""Demo section: ``sdlens embed`` over three SDXL text-encoder sets."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console


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


def section(zoo_dir: Path, out_dir: Path, console: Console) -> None:
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
        console.print(
            f"{d.model} vs {d.ref} · {d.encoder}: unchanged (largest drift "
            f"{d.max_drift:.1e}, rounding level)",
            highlight=False,
        )
    written = write_embed_outputs(result, out_dir / "embed", "pca")
    figs = ", ".join(str(out_dir / "embed" / f) for f in ("pca-clip_g.png", "drift-clip_g.png"))
    console.print(f"[bold]written:[/] {len(written)} files in {out_dir / 'embed'}; figures: {figs}")
