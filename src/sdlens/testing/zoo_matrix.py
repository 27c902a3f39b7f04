"""A small model family with known relations, for ``matrix`` tests and the demo.

All SD1-layout tiny models (real key names and shapes) built from one base: fine-tunes of one part, a merge
at a known ratio, a VAE swap, an fp16 copy, a near-identical fine-tune, and one SDXL model (another
architecture). ``MERGE_ALPHA`` is the merge ratio: merge = α·base + (1−α)·unet_ft, so
d(base, merge) = (1−α)·d(base, unet_ft) and d(merge, unet_ft) = α·d(base, unet_ft)."""

from __future__ import annotations

from pathlib import Path

import torch

from sdlens.testing.writers import save_safetensors
from sdlens.testing.zoo_unet import build_single_file

MERGE_ALPHA = 0.3
UNET, TE, VAE = "model.diffusion_model.", "cond_stage_model.", "first_stage_model."


def _perturb(sd: dict, prefix: str, scale: float, seed: int, only: int | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = dict(sd)
    keys = [k for k in sorted(sd) if k.startswith(prefix) and sd[k].is_floating_point()]
    for k in keys[:only] if only else keys:
        out[k] = sd[k] + scale * torch.randn(sd[k].shape, generator=g, dtype=sd[k].dtype)
    return out


def build_matrix_zoo(out_dir: str | Path) -> dict[str, Path]:
    """name -> path of 8 models: base, unet_ft, te_ft, merge, vae_swap, fp16, near, sdxl."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = build_single_file("sd1", seed=0)
    other_vae = build_single_file("sd1", seed=1)
    unet_ft = _perturb(base, UNET, 0.02, seed=11)
    models = {
        "base": base,
        "unet_ft": unet_ft,
        "te_ft": _perturb(base, TE, 0.02, seed=12),
        "merge": {
            k: MERGE_ALPHA * v + (1 - MERGE_ALPHA) * unet_ft[k]
            if k.startswith(UNET) and v.is_floating_point()
            else v
            for k, v in base.items()
        },
        "vae_swap": {k: other_vae[k] if k.startswith(VAE) else v for k, v in base.items()},
        "fp16": {k: v.half() if v.is_floating_point() else v for k, v in base.items()},
        "near": _perturb(base, UNET, 1e-5, seed=13),
        "sdxl": build_single_file("sdxl", seed=5),
    }
    return {name: save_safetensors(sd, out / f"{name}.safetensors") for name, sd in models.items()}


def build_large_family(out_dir: str | Path, n: int = 45) -> dict[str, Path]:
    """name -> path of ``n`` SD1-layout tiny models (n ≥ 6) with known relations, for figures at scale: the base
    and two byte-identical copies of it (one node "base (+2 identical)"), three near-identical copies (UNet
    moved by 1e-5), then fine-tunes of the UNet at growing strengths, each followed (when there is room) by
    a merge of it with the base at ``MERGE_ALPHA``; every fifth fine-tune tunes the text encoder instead."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = build_single_file("sd1", seed=0)
    models: dict[str, dict] = {"base": base, "base_copy_a": base, "base_copy_b": base}
    for k in range(3):
        models[f"near_identical_{k}"] = _perturb(base, UNET, 1e-5, seed=100 + k)
    k = 0
    while len(models) < n:
        k += 1
        if k % 5 == 0:
            models[f"te_finetune_{k:02d}"] = _perturb(base, TE, 0.01 * (1 + k % 3), seed=200 + k)
            continue
        scale = 0.004 * (1 + k % 7)
        ft = _perturb(base, UNET, scale, seed=300 + k)
        models[f"unet_finetune_{k:02d}_s{scale:.3f}"] = ft
        if len(models) < n:
            models[f"merge_{k:02d}_with_base"] = {
                key: MERGE_ALPHA * v + (1 - MERGE_ALPHA) * ft[key]
                if key.startswith(UNET) and v.is_floating_point()
                else v
                for key, v in base.items()
            }
    return {name: save_safetensors(sd, out / f"{name}.safetensors") for name, sd in list(models.items())[:n]}
