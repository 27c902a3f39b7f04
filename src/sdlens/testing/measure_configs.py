"""Tiny denoiser configs (diffusers config.json contents) that ``sdlens arch --measure`` runs in milliseconds on a
CPU: the tests, the demo and ``benchmarks/bench_measure.py`` measure these."""

from __future__ import annotations

# a two-level UNet (CLIP-width text states of 64) and a one-block SD3 transformer with four heads: SD 1.5's and
# SD3's pipelines around them (CFG: denoiser batch 2), milliseconds per forward on the CPU
UNET = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [64, 128],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD3 = {
    "_class_name": "SD3Transformer2DModel",
    "sample_size": 64,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 4,
    "joint_attention_dim": 32,
    "caption_projection_dim": 64,
    "pooled_projection_dim": 32,
    "pos_embed_max_size": 64,
}
FLUX = {
    "_class_name": "FluxTransformer2DModel",
    "patch_size": 1,
    "in_channels": 16,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "guidance_embeds": True,
    "axes_dims_rope": [4, 6, 6],
}
