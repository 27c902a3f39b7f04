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
        "merge": {k: MERGE_ALPHA * v + (1 - MERGE_ALPHA) * unet_ft[k] if k.startswith(UNET) and v.is_floating_point()
                  else v for k, v in base.items()},
        "vae_swap": {k: other_vae[k] if k.startswith(VAE) else v for k, v in base.items()},
        "fp16": {k: v.half() if v.is_floating_point() else v for k, v in base.items()},
        "near": _perturb(base, UNET, 1e-5, seed=13),
        "sdxl": build_single_file("sdxl", seed=5),
    }
    return {name: save_safetensors(sd, out / f"{name}.safetensors") for name, sd in models.items()}
