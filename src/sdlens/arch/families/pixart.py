"""PixArt-α and PixArt-Σ (original ``blocks`` / ``t_block``, diffusers ``transformer``)."""

from __future__ import annotations

from typing import Any

from sdlens.arch.families._common import IN_OUT
from sdlens.arch.families.hunyuandit import DIT_RULES
from sdlens.arch.record import Blocks, Denoiser, Family, Feature, TextEncoderSlot

FEATURES: tuple[Feature, ...] = (
    Feature("pixart", "present", r"^(t_block\.1\.weight|adaln_single\.linear\.weight)$", 0, "PixArt timestep block"),
    Feature("pixart_ar", "present", r"^(ar_embedder\.|adaln_single\.emb\.aspect_ratio_embedder\.)", 0,
            "aspect-ratio embedder"),
    Feature("pixart_blocks", "count", r"^(?:blocks|transformer_blocks)\.(\d+)\.", 0, "DiT blocks"),
)
_BASE: dict[str, Any] = {
    "num_attention_heads": 16,
    "attention_head_dim": 72,
    "in_channels": 4,
    "out_channels": 8,
    "num_layers": 28,
    "cross_attention_dim": 1152,
    "attention_bias": True,
    "sample_size": 128,
    "patch_size": 2,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
    "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "caption_channels": 4096,
}
_BLOCKS = Blocks(DIT_RULES, (*IN_OUT, ("B", 28), ("OUT", None)))
_TES = (TextEncoderSlot("t5", 120, "last"),)
_SLOTS = {"denoiser": "transformer", "t5": "text_encoder", "vae": "vae"}

FAMILIES: tuple[Family, ...] = (
    Family(
        "pixart_alpha", "PixArt-α",
        {"pixart": True, "pixart_ar": True},
        {"pixart_blocks": 28},
        features=FEATURES,
        denoiser=Denoiser("PixArtTransformer2DModel", {**_BASE, "use_additional_conditions": True}, label="DiT",
                          keymap="pixart"),
        text_encoders=_TES, blocks=_BLOCKS, diffusers_slots=_SLOTS,
    ),
    Family(
        "pixart_sigma", "PixArt-Σ",
        {"pixart": True, "pixart_ar": False},
        {"pixart_blocks": 28},
        denoiser=Denoiser("PixArtTransformer2DModel",
                          {**_BASE, "use_additional_conditions": False, "interpolation_scale": 2}, label="DiT",
                          keymap="pixart"),
        text_encoders=(TextEncoderSlot("t5", 300, "last"),), blocks=_BLOCKS, diffusers_slots=_SLOTS,
    ),
)
