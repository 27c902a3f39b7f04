"""Stable Diffusion 3 / 3.5 (MMDiT, MMDiT-X): original ``joint_blocks`` and diffusers ``transformer`` layouts."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sdlens.arch.families._common import COMMON_FEATURES, IN_OUT
from sdlens.arch.record import Blocks, Denoiser, Family, Feature, Loading, Pipeline, TextEncoderSlot
from sdlens.arch.shapes import count, first, head_dim, indices

if TYPE_CHECKING:
    from sdlens.io.base import TensorInfo

FEATURES: tuple[Feature, ...] = (
    *COMMON_FEATURES,
    Feature("joint_blocks", "count", r"^joint_blocks\.(\d+)\."),
    Feature("sd3_diffusers", "present", r"^transformer_blocks\.0\.norm1_context\.linear\.weight$"),
    Feature("sd3_diffusers_blocks", "count", r"^transformer_blocks\.(\d+)\.norm1_context\."),
    Feature(
        "dual_attention",
        "present",
        r"^(joint_blocks\.\d+\.x_block\.attn2\.|transformer_blocks\.\d+\.attn2\.)",
        0,
        "dual (MMDiT-X) attention",
    ),
)
DERIVED = {
    "mmdit_blocks": lambda f: (
        f.get("joint_blocks")
        or (
            f.get("sd3_diffusers_blocks")
            if not f.get("flux_diffusers_single") and not f.get("aura")
            else None
        )
        or None
    ),
}
_TEXT = {"mmdit_blocks": "MMDiT joint blocks"}

_RULES: tuple[tuple[str, str], ...] = (
    (r"^(?:joint_blocks|transformer_blocks)\.(\d+)\.", "J{0:02d}"),
    (r"^(x_embedder|t_embedder|y_embedder|context_embedder|pos_embed|time_text_embed)", "IN"),
    (r"^(final_layer|norm_out|proj_out)", "OUT"),
)
_ORIGINAL = {
    "J": "joint_blocks.{n}.",
    "IN": "x_embedder, t_embedder, y_embedder, context_embedder, pos_embed",
    "OUT": "final_layer",
}
_MEDIUM: dict[str, Any] = {
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
_TES = (
    TextEncoderSlot("clip_l", 77, "penultimate"),
    TextEncoderSlot("clip_g", 77, "penultimate"),
    TextEncoderSlot("t5", 256, "last"),
)
_SINGLE = {
    "denoiser": "model.diffusion_model.",
    "clip_l": "text_encoders.clip_l.",
    "clip_g": "text_encoders.clip_g.",
    "t5": "text_encoders.t5xxl.",
    "vae": "first_stage_model.",
}
_SLOTS = {
    "denoiser": "transformer",
    "clip_l": "text_encoder",
    "clip_g": "text_encoder_2",
    "t5": "text_encoder_3",
    "vae": "vae",
}
_SRC = "diffusers num_parameters() of the released transformer"


def _derive(keys: Mapping[str, TensorInfo]) -> dict[str, Any]:
    """SD3Transformer2DModel kwargs from the original (``joint_blocks``) or diffusers keys."""
    x = first(keys, "x_embedder.proj.weight", "pos_embed.proj.weight")
    ctx = first(keys, "context_embedder.weight")
    pooled = first(keys, "y_embedder.mlp.0.weight", "time_text_embed.text_embedder.linear_1.weight")
    pos = keys.get("pos_embed") or keys.get("pos_embed.pos_embed")
    hidden = x.shape[0]
    norm = next((keys[k] for k in sorted(keys) if re.search(r"\.(ln_q|norm_q)\.weight$", k)), None)
    head = norm.shape[0] if norm is not None else head_dim(hidden, 64)
    cfg = {
        **_MEDIUM,
        "in_channels": x.shape[1],
        "out_channels": x.shape[1],
        "patch_size": x.shape[2],
        "num_layers": count(keys, r"^(?:joint_blocks|transformer_blocks)\.(\d+)\."),
        "num_attention_heads": hidden // head,
        "attention_head_dim": head,
        "caption_projection_dim": hidden,
        "joint_attention_dim": ctx.shape[1],
        "pooled_projection_dim": pooled.shape[1],
    }
    if pos is not None:
        cfg["pos_embed_max_size"] = math.isqrt(pos.shape[1])
    if any(re.search(r"\.(ln_q|norm_q)\.", k) for k in keys):
        cfg["qk_norm"] = "rms_norm"
    dual = indices(keys, r"^joint_blocks\.(\d+)\.x_block\.attn2\.") or indices(
        keys, r"^transformer_blocks\.(\d+)\.attn2\."
    )
    if dual:
        cfg["dual_attention_layers"] = tuple(dual)
    return cfg


def _large(cfg: Mapping[str, Any]) -> bool:
    return cfg.get("num_layers", 18) >= 38  # SD3Transformer2DModel's default depth is 18


def _pipeline(name: str, aliases: tuple[str, ...], measured: bool = True) -> Pipeline:
    return Pipeline(
        name,
        aliases,
        333,
        True,
        28,
        (1024, 1024),
        "FlowMatchEulerDiscreteScheduler",
        "flow",
        "StableDiffusion3Pipeline",
        measured,
    )


# MMDiT joint blocks: original (kohya) names, and diffusers' context-stream projections (PEFT)
_LORA_TARGETS = r"joint_blocks|transformer_blocks[._]\d+[._]attn[._]add_q_proj"

_SD3_VAE = "SD3 / SD3.5 VAE (16-channel; bundled in the full single files)"
_LOAD_SD3 = Loading(
    comfy_gguf=True,
    comfy_clip_type="sd3",
    a1111="yes (1.10 and later; T5 off by default)",
    forge="unknown",
    vae=_SD3_VAE,
)
_LOAD_SD35M = Loading(comfy_gguf=True, comfy_clip_type="sd3", a1111="no", forge="unknown", vae=_SD3_VAE)
_LOAD_SD35 = Loading(comfy_gguf=True, comfy_clip_type="sd3", a1111="no", forge="yes", vae=_SD3_VAE)

FAMILIES: tuple[Family, ...] = (
    Family(
        "sd3",
        "SD3 medium",
        {"mmdit_blocks": 24, "dual_attention": False},
        {"pos_embed_len": 36864, "hidden": 1536},
        features=FEATURES,
        bare_keys=(
            (r"^joint_blocks\.\d+\.", "bare"),
        ),  # a bare file (no prefix) with this key is this denoiser
        derived=DERIVED,
        feature_text=_TEXT,
        denoiser=Denoiser(
            "SD3Transformer2DModel",
            _MEDIUM,
            2_028_328_000,
            _SRC,
            "MMDiT",
            _derive,
            "mmdit",
            lambda c: not _large(c) and not c.get("dual_attention_layers"),
        ),
        text_encoders=_TES,
        vae="kl_f8_c16",
        latent_channels=16,
        blocks=Blocks(_RULES, (*IN_OUT, ("J", 24), ("OUT", None)), mbw=24, original_keys=_ORIGINAL),
        pipeline=_pipeline("SD3 medium", ("sd3m", "sd3-medium", "sd-3")),
        single_file=_SINGLE,
        diffusers_slots=_SLOTS,
        lora_hints=("sd3",),
        lora_targets=_LORA_TARGETS,
        notebook=(24, 2.0, 2.0, 11127, 18.79),
        loading=_LOAD_SD3,
    ),
    Family(
        "sd35m",
        "SD3.5 medium",
        {"mmdit_blocks": 24, "dual_attention": True},
        {"pos_embed_len": 147456, "hidden": 1536},
        denoiser=Denoiser(
            "SD3Transformer2DModel",
            {
                **_MEDIUM,
                "pos_embed_max_size": 384,
                "qk_norm": "rms_norm",
                "dual_attention_layers": tuple(range(13)),
            },
            None,
            "",
            "MMDiT-X",
            _derive,
            "mmdit",
            lambda c: not _large(c),
        ),
        text_encoders=_TES,
        vae="kl_f8_c16",
        latent_channels=16,
        blocks=Blocks(_RULES, (*IN_OUT, ("J", 24), ("OUT", None)), original_keys=_ORIGINAL),
        pipeline=_pipeline("SD3.5 medium", ("sd3.5m", "sd3.5-medium", "sd35-medium"), measured=False),
        single_file=_SINGLE,
        diffusers_slots=_SLOTS,
        lora_targets=_LORA_TARGETS,
        loading=_LOAD_SD35M,
    ),
    Family(
        "sd35",
        "SD3.5 large",
        {"mmdit_blocks": 38},
        {"pos_embed_len": 36864, "hidden": 2432},
        denoiser=Denoiser(
            "SD3Transformer2DModel",
            {
                **_MEDIUM,
                "num_layers": 38,
                "num_attention_heads": 38,
                "caption_projection_dim": 2432,
                "qk_norm": "rms_norm",
            },
            8_056_627_520,
            _SRC,
            "MMDiT",
            _derive,
            "mmdit",
        ),
        text_encoders=_TES,
        vae="kl_f8_c16",
        latent_channels=16,
        blocks=Blocks(_RULES, (*IN_OUT, ("J", 38), ("OUT", None)), mbw=38, original_keys=_ORIGINAL),
        pipeline=_pipeline("SD3.5 large", ("sd3.5", "sd35l", "sd3.5-large", "sd35-large")),
        single_file=_SINGLE,
        diffusers_slots=_SLOTS,
        lora_targets=_LORA_TARGETS,
        notebook=(38, 8.0, 8.0, 17010, 32.35),
        loading=_LOAD_SD35,
    ),
)
