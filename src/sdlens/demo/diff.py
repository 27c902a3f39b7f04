"""Demo section: ``sdlens diff`` on pairs with known differences."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console


def section(zoo_dir: Path, out_dir: Path, console: Console) -> None:
    """diff: a fine-tune that touched only cross-attention, an fp16 copy, one model in two layouts."""
    import torch

    from sdlens.analysis.diff import diff
    from sdlens.render.diff_figures import write_diff_plots
    from sdlens.render.diff_view import render_diff
    from sdlens.render.jsonout import dumps
    from sdlens.testing.writers import save_safetensors
    from sdlens.testing.zoo_unet import build_single_file

    console.rule("sdlens diff")
    base = build_single_file("sd1", seed=0)
    g = torch.Generator().manual_seed(1)
    tuned = {
        k: (v + 0.02 * torch.randn(v.shape, generator=g) if ".attn2." in k and k.startswith("model.") else v)
        for k, v in base.items()
    }
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in base.items()}
    a = save_safetensors(base, zoo_dir / "diff_base.safetensors")
    pairs = {
        "finetune-attn2": (a, save_safetensors(tuned, zoo_dir / "diff_attn2_finetune.safetensors")),
        "fp16-copy": (a, save_safetensors(half, zoo_dir / "diff_fp16_copy.safetensors")),
        "ldm-vs-diffusers": (zoo_dir / "sdxl_fp16.safetensors", zoo_dir / "sdxl_diffusers"),
    }
    for name, (x, y) in pairs.items():
        r = diff(x, y)
        render_diff(r, console, by="block" if name == "finetune-attn2" else "component")
        (out_dir / f"diff-{name}.json").write_text(dumps(r))
        if name == "finetune-attn2":
            for p in write_diff_plots(r, out_dir / f"diff-{name}.png"):
                console.print(f"plot written to {p}")
