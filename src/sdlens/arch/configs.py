"""Published configs of the denoisers, text encoders and VAEs (the released models' config.json files), as plain dicts.

Only values that differ from the diffusers / transformers class defaults are listed. Building a class from one
of these on the meta device gives exactly the parameter count of the released weights.
"""

from __future__ import annotations

from typing import Any

from sdlens.arch import families as _families

# family id -> (diffusers class name, config): views of the records in sdlens.arch.families
DENOISERS: dict[str, tuple[str, dict[str, Any]]] = {
    f.id: (f.denoiser.cls_name, dict(f.denoiser.config)) for f in _families.FAMILIES if f.denoiser is not None
}
# released parameter counts (diffusers' num_parameters() of the released weights)
DENOISER_PARAMS: dict[str, int] = {
    f.id: f.denoiser.params
    for f in _families.FAMILIES
    if f.denoiser is not None and f.denoiser.params is not None
}

# text encoders: kind -> (transformers class name, config kwargs)
TEXT_ENCODERS: dict[str, tuple[str, dict[str, Any]]] = {
    "clip_l": (
        "CLIPTextModel",
        {
            "vocab_size": 49408,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "projection_dim": 768,
        },
    ),
    "openclip_h": (
        "CLIPTextModel",
        {
            "vocab_size": 49408,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 23,
            "num_attention_heads": 16,
            "max_position_embeddings": 77,
            "hidden_act": "gelu",
            "projection_dim": 512,
        },
    ),
    "clip_g": (
        "CLIPTextModelWithProjection",
        {
            "vocab_size": 49408,
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_hidden_layers": 32,
            "num_attention_heads": 20,
            "max_position_embeddings": 77,
            "hidden_act": "gelu",
            "projection_dim": 1280,
        },
    ),
    "t5": (
        "T5EncoderModel",
        {
            "vocab_size": 32128,
            "d_model": 4096,
            "d_ff": 10240,
            "d_kv": 64,
            "num_layers": 24,
            "num_heads": 64,
            "relative_attention_num_buckets": 32,
            "feed_forward_proj": "gated-gelu",
            "is_encoder_decoder": False,
            "use_cache": False,
        },
    ),
}

TEXT_ENCODER_PARAMS: dict[str, int] = {
    "clip_l": 123_060_480,
    "openclip_h": 340_387_840,
    "clip_g": 694_659_840,
    "t5": 4_762_310_656,
}

_VAE_BASE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
}

VAES: dict[str, dict[str, Any]] = {
    "kl_f8_c4": _VAE_BASE,
    "kl_f8_c16": {**_VAE_BASE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False},
}

VAE_PARAMS: dict[str, int] = {"kl_f8_c4": 83_653_863, "kl_f8_c16": 83_819_683}


def vae_config_for(latent_channels: int | None) -> dict[str, Any]:
    """The released AutoencoderKL config with ``latent_channels`` (the 4-channel SD one when none has it)."""
    return dict(
        next((v for v in VAES.values() if v.get("latent_channels") == latent_channels), VAES["kl_f8_c4"])
    )


# Text encoders of the AuraFlow and HunyuanDiT pipelines, from their released diffusers folders. Their
# parameter counts are not checked against the released weights, so sdlens reports them as built, without a reference check.
OTHER_TEXT_ENCODERS: dict[str, tuple[str, dict[str, Any]]] = {
    "pile_t5_xl": (
        "UMT5EncoderModel",
        {
            "vocab_size": 32128,
            "d_model": 2048,
            "d_ff": 5120,
            "d_kv": 64,
            "num_layers": 24,
            "num_heads": 32,
            "relative_attention_num_buckets": 32,
            "feed_forward_proj": "gated-silu",
            "is_encoder_decoder": False,
            "use_cache": False,
        },
    ),
    "mt5_xl": (
        "T5EncoderModel",
        {
            "vocab_size": 250112,
            "d_model": 2048,
            "d_ff": 5120,
            "d_kv": 64,
            "num_layers": 24,
            "num_heads": 32,
            "relative_attention_num_buckets": 32,
            "feed_forward_proj": "gated-gelu",
            "is_encoder_decoder": False,
            "use_cache": False,
        },
    ),
    "hunyuan_bert": (
        "BertModel",
        {
            "vocab_size": 47020,
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "max_position_embeddings": 512,
            "type_vocab_size": 2,
        },
    ),
}
