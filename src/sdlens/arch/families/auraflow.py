"""AuraFlow (fal ``double_layers`` / ``single_layers`` originals, diffusers ``transformer``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sdlens.arch.families._common import COMMON_FEATURES, IN_OUT
from sdlens.arch.record import Blocks, Denoiser, Family, Feature, Loading, Pipeline, TextEncoderSlot
from sdlens.arch.shapes import count, first, head_dim

if TYPE_CHECKING:
    from sdlens.io.base import TensorInfo

FEATURES: tuple[Feature, ...] = (
    *COMMON_FEATURES,
    Feature(
        "aura_double", "count", r"^(?:double_layers|joint_transformer_blocks)\.(\d+)\.", 0, "MMDiT layers"
    ),
    Feature(
        "aura_single",
        "count",
        r"^(?:single_layers|single_transformer_blocks)\.(\d+)\.",
        0,
        "single DiT layers",
    ),
    Feature(
        "aura",
        "present",
        r"^(double_layers\.0\.attn\.w1q\.weight|register_tokens)$",
        0,
        "AuraFlow layers (w1q / register tokens)",
    ),
)
_RULES: tuple[tuple[str, str], ...] = (
    (r"^(?:double_layers|joint_transformer_blocks)\.(\d+)\.", "D{0:02d}"),
    (r"^(?:single_layers|single_transformer_blocks)\.(\d+)\.", "S{0:02d}"),
    (r"^(final_linear|modF|norm_out|proj_out)", "OUT"),
    (r".", "IN"),
)
_ORIGINAL = {
    "D": "double_layers.{n}.",
    "S": "single_layers.{n}.",
    "IN": "init_x_linear, positional_encoding, cond_seq_linear, t_embedder, register_tokens",
    "OUT": "modF, final_linear",
}


RELEASED: dict[str, Any] = {
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
}


def _derive(keys: Mapping[str, TensorInfo]) -> dict[str, Any]:
    """AuraFlowTransformer2DModel kwargs from fal's single-file keys or diffusers' names."""
    p = RELEASED["patch_size"]
    x = first(keys, "init_x_linear.weight", "pos_embed.proj.weight")
    cond = first(keys, "cond_seq_linear.weight", "context_embedder.weight")
    pos = first(keys, "positional_encoding", "pos_embed.pos_embed")
    hidden = x.shape[0]
    head = head_dim(hidden, RELEASED["attention_head_dim"])
    return {
        **RELEASED,
        "in_channels": x.shape[1] // (p * p),
        "out_channels": first(keys, "final_linear.weight", "proj_out.weight").shape[0] // (p * p),
        "num_mmdit_layers": count(keys, r"^(?:double_layers|joint_transformer_blocks)\.(\d+)\."),
        "num_single_dit_layers": count(keys, r"^(?:single_layers|single_transformer_blocks)\.(\d+)\."),
        "num_attention_heads": hidden // head,
        "attention_head_dim": head,
        "joint_attention_dim": cond.shape[1],
        "caption_projection_dim": cond.shape[0],
        "pos_embed_max_size": pos.shape[1],
        "sample_size": min(RELEASED["sample_size"], math.isqrt(pos.shape[1]) * p),
    }


_LOADING = Loading(
    comfy_gguf=True,
    comfy_clip_type="stable_diffusion",  # ComfyUI tells Pile-T5-XL from its weights, whatever the type
    a1111="no",
    forge="no",
    vae="SDXL VAE (sdxl_vae.safetensors, 4-channel)",
)

FAMILIES: tuple[Family, ...] = (
    Family(
        "auraflow",
        "AuraFlow",
        {"aura": True},
        {"aura_double": 4, "aura_single": 32},
        features=FEATURES,
        bare_keys=(
            (r"^(double_layers|single_layers)\.\d+\.", "bare"),
        ),  # a bare file (no prefix) with this key is this denoiser
        denoiser=Denoiser(
            "AuraFlowTransformer2DModel",
            RELEASED,
            6_842_876_928,
            "diffusers num_parameters() of the released transformer",
            "DiT",
            _derive,
            "auraflow",
        ),
        text_encoders=(TextEncoderSlot("pile_t5_xl", 256, "last"),),
        blocks=Blocks(_RULES, (*IN_OUT, ("D", 4), ("S", 32), ("OUT", None)), mbw=36, original_keys=_ORIGINAL),
        pipeline=Pipeline(
            "AuraFlow v0.2",
            ("aura", "aura-flow"),
            256,
            True,
            50,
            (1024, 1024),
            "FlowMatchEulerDiscreteScheduler",
            "flow",
            "AuraFlowPipeline",
            # ComfyUI's AuraFlow sampling settings (comfy/supported_models.py): shift 1.73
            scheduler_config={"num_train_timesteps": 1000, "shift": 1.73},
        ),
        diffusers_slots={"denoiser": "transformer", "pile_t5_xl": "text_encoder", "vae": "vae"},
        notebook=(36, 6.8, 6.8, 39974, 52.38),
        loading=_LOADING,
    ),
)
