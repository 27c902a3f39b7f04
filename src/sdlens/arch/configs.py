"""Published configs of the denoisers, text encoders and VAEs (the released models' config.json files), as plain dicts.

Only values that differ from the diffusers / transformers class defaults are listed. Building a class from one
of these on the meta device gives exactly the parameter count of the released weights.
"""

from __future__ import annotations

from typing import Any

_SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}

_SD3_MEDIUM: dict[str, Any] = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 192,
}

# family id -> (diffusers class name, config)
DENOISERS: dict[str, tuple[str, dict[str, Any]]] = {
    "sd1": ("UNet2DConditionModel", {"sample_size": 64, "cross_attention_dim": 768}),
    "sd2": (
        "UNet2DConditionModel",
        {
            "sample_size": 96,
            "cross_attention_dim": 1024,
            "attention_head_dim": [5, 10, 20, 20],
            "use_linear_projection": True,
            "upcast_attention": True,
        },
    ),
    "sdxl": ("UNet2DConditionModel", _SDXL_UNET),
    "sdxl_refiner": (
        "UNet2DConditionModel",
        {
            "sample_size": 128,
            "block_out_channels": [384, 768, 1536, 1536],
            "down_block_types": [
                "DownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "transformer_layers_per_block": 4,
            "attention_head_dim": [6, 12, 24, 24],
            "cross_attention_dim": 1280,
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2560,
        },
    ),
    "sd3": ("SD3Transformer2DModel", _SD3_MEDIUM),
    "sd35": (
        "SD3Transformer2DModel",
        {**_SD3_MEDIUM, "num_layers": 38, "num_attention_heads": 38, "caption_projection_dim": 2432, "qk_norm": "rms_norm"},
    ),
    "hunyuandit": (
        "HunyuanDiT2DModel",
        {
            "num_attention_heads": 16,
            "attention_head_dim": 88,
            "in_channels": 4,
            "patch_size": 2,
            "activation_fn": "gelu-approximate",
            "sample_size": 128,
            "hidden_size": 1408,
            "num_layers": 40,
            "mlp_ratio": 4.3637,
            "learn_sigma": True,
            "cross_attention_dim": 1024,
            "norm_type": "layer_norm",
            "cross_attention_dim_t5": 2048,
            "pooled_projection_dim": 1024,
            "text_len": 77,
            "text_len_t5": 256,
            "use_style_cond_and_image_meta_size": True,
        },
    ),
    "auraflow": (
        "AuraFlowTransformer2DModel",
        {
            "sample_size": 64,
            "patch_size": 2,
            "in_channels": 4,
            "num_mmdit_layers": 4,
            "num_single_dit_layers": 32,
            "attention_head_dim": 256,
            "num_attention_heads": 12,
            "joint_attention_dim": 2048,
            "caption_projection_dim": 3072,
            "out_channels": 4,
            "pos_embed_max_size": 4096,
        },
    ),
    "flux": (
        "FluxTransformer2DModel",
        {
            "patch_size": 1,
            "in_channels": 64,
            "num_layers": 19,
            "num_single_layers": 38,
            "attention_head_dim": 128,
            "num_attention_heads": 24,
            "joint_attention_dim": 4096,
            "pooled_projection_dim": 768,
            "guidance_embeds": True,
            "axes_dims_rope": [16, 56, 56],
        },
    ),
}

# released parameter counts (diffusers' num_parameters() of the released weights)
DENOISER_PARAMS: dict[str, int] = {
    "sd1": 859_520_964,
    "sd2": 865_910_724,
    "sdxl": 2_567_463_684,
    "sd3": 2_028_328_000,
    "sd35": 8_056_627_520,
    "hunyuandit": 1_516_534_048,
    "auraflow": 6_842_876_928,
    "flux": 11_901_408_320,
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
    "vae4": _VAE_BASE,
    "vae16": {**_VAE_BASE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False},
}

VAE_PARAMS: dict[str, int] = {"vae4": 83_653_863, "vae16": 83_819_683}

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
