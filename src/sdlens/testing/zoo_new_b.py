"""Zoo files for HiDream-I1, Chroma, Wan 2.1 and LTX-Video, built from the real diffusers classes.

``size="tiny"``: random weights at tiny widths, with the released depths (block counts decide between
records); ``size="full"``: the released shapes on the meta device, written as sparse safetensors (header only,
no disk). ``layout``: ``diffusers`` or ``original`` (the family's own single-file keys, through its
sdlens.arch.keymap map; HiDream has only the diffusers one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from sdlens.arch import families
from sdlens.arch.keymap.chroma import chroma_diffusers_to_original
from sdlens.arch.keymap.ltx_video import ltx_diffusers_to_original
from sdlens.arch.keymap.wan import wan_diffusers_to_original
from sdlens.testing.writers import save_safetensors
from sdlens.testing.zoo_dit import materialize, meta_state_dict

Size = Literal["tiny", "full"]
Layout = Literal["diffusers", "original"]

FAMILY_IDS = ("hidream_i1", "chroma", "wan21_t2v_1_3b", "wan21_t2v_14b", "wan21_i2v_14b", "ltx_video")
# the record's key map name -> diffusers-to-original function
_TO_ORIGINAL = {
    "chroma": chroma_diffusers_to_original,
    "ltx_video": ltx_diffusers_to_original,
    "wan": wan_diffusers_to_original,
}
_WAN_TINY = {
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "ffn_dim": 64,
    "text_dim": 24,
    "freq_dim": 16,
}
# tiny widths; depths as released
_TINY: dict[str, dict[str, Any]] = {
    "hidream_i1": {
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "caption_channels": [24, 24],
        "text_emb_dim": 20,
        "axes_dims_rope": [8, 4, 4],
    },
    "chroma": {
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 24,
        "axes_dims_rope": [4, 6, 6],
        "approximator_hidden_dim": 32,
    },
    "wan21_t2v_1_3b": _WAN_TINY,
    "wan21_t2v_14b": _WAN_TINY,
    "wan21_i2v_14b": {**_WAN_TINY, "added_kv_proj_dim": 32, "image_dim": 24},
    "ltx_video": {
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "cross_attention_dim": 32,
        "caption_channels": 24,
    },
}


def denoiser_config(family: str, size: Size = "tiny") -> tuple[str, dict[str, Any]]:
    """(diffusers class, config) of ``family``'s denoiser: its record's released config, shrunk when tiny."""
    fam = families.get(family)
    if fam is None or fam.denoiser is None or family not in FAMILY_IDS:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILY_IDS}")
    cfg = dict(fam.denoiser.config)
    if size == "tiny":
        cfg.update(_TINY[family])
    elif size != "full":
        raise ValueError(f"size must be 'tiny' or 'full', not {size!r}")
    return fam.denoiser.cls_name, cfg


def build_denoiser(
    family: str,
    *,
    size: Size = "tiny",
    layout: Layout = "diffusers",
    seed: int = 0,
    config: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """State dict of ``family``'s denoiser (bare keys); ``config`` overrides the built config."""
    cls_name, cfg = denoiser_config(family, size)
    cfg.update(config or {})
    sd = materialize(
        meta_state_dict(cls_name, cfg),
        size=size,
        seed=seed,
        dtype=torch.float32 if size == "tiny" else torch.bfloat16,
    )
    if layout == "diffusers":
        return sd
    if layout != "original":
        raise ValueError(f"layout must be 'original' or 'diffusers', not {layout!r}")
    keymap = families.get(family).denoiser.keymap
    if keymap not in _TO_ORIGINAL:
        raise ValueError(f"{family} has no original layout apart from the diffusers one")
    return _TO_ORIGINAL[keymap](sd)


def write_denoiser(
    path: str | Path,
    family: str,
    *,
    size: Size = "tiny",
    layout: Layout = "diffusers",
    prefix: str = "",
    seed: int = 0,
    config: dict[str, Any] | None = None,
) -> Path:
    """``build_denoiser`` written as one safetensors file, keys under ``prefix`` (``model.diffusion_model.``: the
    ComfyUI single-file form)."""
    sd = build_denoiser(family, size=size, layout=layout, seed=seed, config=config)
    return save_safetensors({prefix + k: v for k, v in sd.items()}, path)
