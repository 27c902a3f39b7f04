"""Model / base pairs whose delta is known, for ``sdlens delta`` and ``sdlens extract-lora``.

On the "medium" SD1 of :mod:`sdlens.testing.zoo_unet` (attention widths 64..128, text width 128; real key names):

* ``base.safetensors`` — fp16; ``base_fp32.safetensors`` — the same values in fp32 (so ``base`` is its fp16 copy);
* ``lora_r{4,8,32}.safetensors`` — base + up @ down of that rank in every UNet attention projection (attn1 and
  attn2: to_q, to_k, to_v, to_out.0), ‖Δ‖ ≈ 5 % of ‖W‖, rounded to fp16; every other tensor bit-identical;
* ``finetune.safetensors`` — base + a dense Δ (≈ 2 % of ‖W‖) on every UNet weight and bias;
* ``te_layer.safetensors`` — only the text encoder's layer 3 ``mlp.fc1.weight`` changed (dense);
* ``lora_te.safetensors`` — a rank-8 Δ on the text encoder's q/k/v/out projections and the UNet's attention.

:func:`build_delta_zoo` writes them and returns the truth: per file, canonical name -> rank (0 = unchanged,
-1 = dense).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from sdlens.testing.writers import save_safetensors
from sdlens.testing.zoo_unet import build_single_file

UNET = "model.diffusion_model."
TE = "cond_stage_model.transformer."
ATTN = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.weight$")
TE_ATTN = re.compile(r"\.self_attn\.(q|k|v|out)_proj\.weight$")
TE_LAYER = f"{TE}text_model.encoder.layers.3.mlp.fc1.weight"
LORA_RANKS = (4, 8, 32)
LORA_SCALE = 0.05
DENSE_SCALE = 0.02

Truth = dict[str, dict[str, int]]  # file name -> full key -> rank (0 unchanged, -1 dense)


def low_rank(shape: tuple[int, ...], rank: int, norm: float, gen: torch.Generator) -> torch.Tensor:
    """A rank-``rank`` [out, in] matrix of Frobenius norm ``norm`` (seeded Gaussian factors)."""
    up = torch.randn(shape[0], rank, generator=gen, dtype=torch.float64)
    down = torch.randn(rank, shape[1], generator=gen, dtype=torch.float64)
    d = up @ down
    return (d * (norm / d.norm())).float()


def _edit(
    base: dict[str, torch.Tensor], targets: dict[str, int], scale: float, seed: int
) -> dict[str, torch.Tensor]:
    """``base`` with each target key moved by a rank-r (r > 0) or dense (r = -1) delta of relative size
    ``scale``, computed in float32 and stored at the base's dtype."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(base)
    for key, rank in targets.items():
        w = base[key].float()
        norm = scale * float(w.norm())
        if rank > 0:
            d = low_rank(tuple(w.shape), rank, norm, gen)
        else:
            d = torch.randn(tuple(w.shape), generator=gen)
            d = d * (norm / float(d.norm()))
        out[key] = (w + d).to(base[key].dtype)
    return out


def base_model(seed: int = 0, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The medium SD1 single file (LDM keys) at ``dtype``."""
    return build_single_file("sd1", size="medium", seed=seed, dtype=dtype)


def _unet_dense(base: dict[str, torch.Tensor]) -> dict[str, int]:
    return {k: -1 for k, t in base.items() if k.startswith(UNET) and t.is_floating_point()}


def build_delta_zoo(folder: str | Path, seed: int = 0) -> Truth:
    """Write the pairs into ``folder``; return the truth of each file against ``base.safetensors``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base32 = base_model(seed, torch.float32)
    base = {k: t.half() if t.is_floating_point() else t for k, t in base32.items()}
    save_safetensors(base32, folder / "base_fp32.safetensors")
    save_safetensors(base, folder / "base.safetensors")
    attn = [k for k in base if k.startswith(UNET) and ATTN.search(k)]
    te_attn = [k for k in base if k.startswith(TE) and TE_ATTN.search(k)]
    cases: dict[str, tuple[dict[str, int], float]] = {
        **{f"lora_r{r}": ({k: r for k in attn}, LORA_SCALE) for r in LORA_RANKS},
        "finetune": (_unet_dense(base), DENSE_SCALE),
        "te_layer": ({TE_LAYER: -1}, DENSE_SCALE),
        "lora_te": ({k: 8 for k in attn + te_attn}, LORA_SCALE),
    }
    truth: Truth = {}
    for i, (name, (targets, scale)) in enumerate(cases.items()):
        save_safetensors(_edit(base, targets, scale, seed * 131 + i), folder / f"{name}.safetensors")
        truth[name] = targets
    return truth
