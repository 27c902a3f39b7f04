"""Small kohya / LyCORIS LoCon LoRA files for the tiny zoo UNet models (:mod:`sdlens.testing.zoo_unet`), with
their ground truth: the exact ΔW each module adds (``alpha / rank · up @ down``).

Module shapes come from the tiny model itself; kohya's names are the module paths with ``.`` -> ``_`` as
sd-scripts writes them: the diffusers UNet names for SD1 / SD2, the LDM (sgm) names for SDXL, the transformers
CLIP names for text encoders (``lora_te_`` for one encoder, ``lora_te1_`` / ``lora_te2_`` for two).
"""

from __future__ import annotations

import torch

from sdlens.testing import zoo_unet

# text-encoder part -> kohya scope, per number of text encoders
_TE_SCOPE = {1: {"text_encoder": "lora_te", "text_encoder_2": "lora_te"},
             2: {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}}  # fmt: skip


def _ldm_module(module: str, family: str, size: zoo_unet.Size = "tiny") -> str:
    from sdlens.arch.keymap import unet_key_map

    cfg = zoo_unet.size_config(family, size)["unet"]
    return unet_key_map(cfg)[module + ".weight"].rsplit(".", 1)[0]


def module_shapes(family: str, part: str, size: zoo_unet.Size = "tiny") -> dict[str, tuple[int, ...]]:
    """Module path -> weight shape of the zoo model's linear / conv layers (diffusers / transformers names)."""
    sd = zoo_unet.build_diffusers_parts(family, size)[part]
    return {
        k[: -len(".weight")]: tuple(v.shape)
        for k, v in sd.items()
        if k.endswith(".weight") and v.ndim in (2, 4)
    }


def kohya_lora(
    family: str = "sd1",
    modules: dict[str, list[str]] | None = None,
    *,
    rank: int = 4,
    alpha: float = 2.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    size: zoo_unet.Size = "tiny",
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(tensors of a kohya LoRA file, truth) for the ``family`` zoo model of ``size`` (tiny or medium).

    ``modules``: part (``unet``, ``text_encoder``, ``text_encoder_2``) -> diffusers / transformers module paths;
    conv modules (3x3 included) are written as LyCORIS LoCon (down ``[r, in, kh, kw]``, up ``[out, r, 1, 1]``).
    truth: ``"<part>/<module>"`` -> the float32 ΔW (shape of the module's weight) it adds at weight 1."""
    modules = modules or {"unet": ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]}
    gen = torch.Generator().manual_seed(seed)
    n_te = len(zoo_unet.TEXT_PARTS[family])
    tensors: dict[str, torch.Tensor] = {}
    truth: dict[str, torch.Tensor] = {}
    for part, names in modules.items():
        shapes = module_shapes(family, part, size)
        for name in names:
            shape = shapes[name]
            if part == "unet":
                kname = _ldm_module(name, family, size) if family.startswith("sdxl") else name
                stem = "lora_unet_" + kname.replace(".", "_")
            else:
                stem = _TE_SCOPE[n_te][part] + "_" + name.replace(".", "_")
            down = (torch.randn((rank, *shape[1:]), generator=gen) * 0.1).to(dtype)
            up = (torch.randn((shape[0], rank, *(1,) * (len(shape) - 2)), generator=gen) * 0.1).to(dtype)
            tensors[f"{stem}.lora_down.weight"] = down
            tensors[f"{stem}.lora_up.weight"] = up
            tensors[f"{stem}.alpha"] = torch.tensor(alpha, dtype=dtype)
            d = up.float().reshape(shape[0], rank) @ down.float().reshape(rank, -1)
            truth[f"{part}/{name}"] = (d * (float(torch.tensor(alpha, dtype=dtype)) / rank)).reshape(shape)
    return tensors, truth
