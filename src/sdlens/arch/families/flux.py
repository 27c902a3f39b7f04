"""FLUX.1 dev / schnell (BFL ``double_blocks`` / ``single_blocks`` originals, diffusers ``transformer``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sdlens.arch.families._common import COMMON_FEATURES, IN_OUT
from sdlens.arch.record import (
    Blocks,
    Denoiser,
    Family,
    Feature,
    Loader,
    Loading,
    Pipeline,
    TextEncoderSlot,
    Variant,
)
from sdlens.arch.shapes import count, first, head_dim

if TYPE_CHECKING:
    from sdlens.io.base import TensorInfo

FEATURES: tuple[Feature, ...] = (
    *COMMON_FEATURES,
    Feature("flux_double", "count", r"^double_blocks\.(\d+)\."),
    Feature("flux_single", "count", r"^single_blocks\.(\d+)\."),
    Feature("flux_diffusers_single", "count", r"^single_transformer_blocks\.(\d+)\.proj_mlp\."),
    Feature(
        "guidance_in",
        "present",
        r"^(guidance_in\.|time_text_embed\.guidance_embedder\.)",
        0,
        "guidance embedding",
    ),
)
# Chroma (sdlens.arch.families.chroma) keeps FLUX's block layout but swaps the modulation for this approximator
CHROMA_APPROXIMATOR = Feature(
    "chroma_approximator",
    "present",
    r"^distilled_guidance_layer\.in_proj\.weight$",
    0,
    "Chroma approximator (distilled_guidance_layer)",
)
FEATURES = (*FEATURES, CHROMA_APPROXIMATOR)
DERIVED = {
    "flux_blocks": lambda f: (
        (f.get("flux_double"), f.get("flux_single"))
        if f.get("flux_double")
        else (
            (f.get("dit_blocks"), f.get("flux_diffusers_single")) if f.get("flux_diffusers_single") else None
        )
    ),
}
_TEXT = {"flux_blocks": "double/single stream blocks"}

RULES: tuple[tuple[str, str], ...] = (
    (r"^(?:double_blocks|transformer_blocks)\.(\d+)\.", "D{0:02d}"),
    (r"^(?:single_blocks|single_transformer_blocks)\.(\d+)\.", "S{0:02d}"),
    (r"^(img_in|txt_in|time_in|vector_in|guidance_in|x_embedder|context_embedder|time_text_embed)", "IN"),
    (r"^(final_layer|norm_out|proj_out)", "OUT"),
)
ORIGINAL = {
    "D": "double_blocks.{n}.",
    "S": "single_blocks.{n}.",
    "IN": "img_in, txt_in, time_in, vector_in, guidance_in",
    "OUT": "final_layer",
}
BLOCKS = Blocks(RULES, (*IN_OUT, ("D", 19), ("S", 38), ("OUT", None)), mbw=57, original_keys=ORIGINAL)
DEV: dict[str, Any] = {
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
}
VARIANTS = (Variant("img_in", 384, "Fill (inpainting)"), Variant("img_in", 128, "Depth/Canny control"))
SINGLE = {
    "denoiser": "model.diffusion_model.",
    "clip_l": "text_encoders.clip_l.",
    "t5": "text_encoders.t5xxl.",
    "vae": "vae.",
}
SLOTS = {"denoiser": "transformer", "clip_l": "text_encoder", "t5": "text_encoder_2", "vae": "vae"}
_SRC = "diffusers num_parameters() of the released transformer"


def derive(keys: Mapping[str, TensorInfo]) -> dict[str, Any]:
    """FluxTransformer2DModel kwargs from BFL's (``double_blocks``) or diffusers' keys."""
    img_in = first(keys, "img_in.weight", "x_embedder.weight")
    txt_in = first(keys, "txt_in.weight", "context_embedder.weight")
    vec = first(keys, "vector_in.in_layer.weight", "time_text_embed.text_embedder.linear_1.weight")
    hidden = img_in.shape[0]
    norm = keys.get("double_blocks.0.img_attn.norm.query_norm.scale") or keys.get(
        "transformer_blocks.0.attn.norm_q.weight"
    )
    head = norm.shape[0] if norm is not None else head_dim(hidden, DEV["attention_head_dim"])
    a = head * 7 // 16 // 2 * 2
    return {
        **DEV,
        "in_channels": img_in.shape[1],
        "out_channels": first(keys, "final_layer.linear.weight", "proj_out.weight").shape[0],
        "num_layers": count(keys, r"^(?:double_blocks|transformer_blocks)\.(\d+)\."),
        "num_single_layers": count(keys, r"^(?:single_blocks|single_transformer_blocks)\.(\d+)\."),
        "num_attention_heads": hidden // head,
        "attention_head_dim": head,
        "axes_dims_rope": [head - 2 * a, a, a],
        "joint_attention_dim": txt_in.shape[1],
        "pooled_projection_dim": vec.shape[1],
        "guidance_embeds": any(
            k.startswith(("guidance_in.", "time_text_embed.guidance_embedder.")) for k in keys
        ),
    }


# double/single-stream blocks, in original (kohya) and diffusers (PEFT) module names
LORA_TARGETS = r"double_blocks|single_blocks|single_transformer_blocks"

FLUX_VAE = "FLUX VAE (ae.safetensors, 16-channel)"
_LOADING = Loading(
    comfy_gguf=True,
    comfy_clip_type="flux",
    a1111="no",
    forge="yes (also NF4 and GGUF)",
    vae=FLUX_VAE,
    kinds={
        "denoiser": Loader(forge="yes: pick the VAE and text encoders in its VAE / Text Encoder menu"),
        "gguf": Loader(forge="yes: pick the VAE and text encoders in its VAE / Text Encoder menu"),
        "text_encoder": Loader(forge="yes"),
        "bitsandbytes": Loader(forge="yes (Forge introduced the NF4 FLUX checkpoints)"),
    },
)

# black-forest-labs/FLUX.1-dev and FLUX.1-schnell scheduler/scheduler_config.json: dev shifts by resolution (mu from
# the image's token count, 256 -> 0.5, 4096 -> 1.15); schnell (timestep-distilled) does not shift
_DYNAMIC = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15}
_DEV_SCHEDULER = {**_DYNAMIC, "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}
_SCHNELL_SCHEDULER = {**_DYNAMIC, "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False}

FAMILIES: tuple[Family, ...] = (
    Family(
        "flux_dev",
        "FLUX.1-dev",
        {"flux_blocks": (19, 38), "guidance_in": True, "chroma_approximator": False},
        {"hidden": 3072, "img_in": 64},
        features=FEATURES,
        bare_keys=(
            (r"^(double_blocks|single_blocks)\.\d+\.", "bare"),
        ),  # a bare file (no prefix) with this key is this denoiser
        derived=DERIVED,
        feature_text=_TEXT,
        variants=VARIANTS,
        denoiser=Denoiser(
            "FluxTransformer2DModel",
            DEV,
            11_901_408_320,
            _SRC,
            "DiT",
            derive,
            "flux",
            lambda c: bool(c.get("guidance_embeds", False)),
        ),
        text_encoders=(TextEncoderSlot("clip_l", 77, "last"), TextEncoderSlot("t5", 512, "last")),
        vae="kl_f8_c16",
        latent_channels=16,
        blocks=BLOCKS,
        pipeline=Pipeline(
            "FLUX.1-dev",
            ("flux", "flux-dev", "flux1", "flux.1", "flux1-dev"),
            512,
            False,
            28,
            (1024, 1024),
            "FlowMatchEulerDiscreteScheduler",
            "flow",
            "FluxPipeline",
            scheduler_config=_DEV_SCHEDULER,
            sigmas="linspace",
        ),
        single_file=SINGLE,
        diffusers_slots=SLOTS,
        lora_hints=("flux",),
        lora_targets=LORA_TARGETS,
        notebook=(57, 11.91, 11.91, 31557, 54.06),
        loading=_LOADING,
    ),
    Family(
        "flux_schnell",
        "FLUX.1-schnell",
        {"flux_blocks": (19, 38), "guidance_in": False, "chroma_approximator": False},
        {"hidden": 3072, "img_in": 64},
        variants=VARIANTS,
        denoiser=Denoiser(
            "FluxTransformer2DModel", {**DEV, "guidance_embeds": False}, None, "", "DiT", derive, "flux"
        ),
        text_encoders=(TextEncoderSlot("clip_l", 77, "last"), TextEncoderSlot("t5", 256, "last")),
        vae="kl_f8_c16",
        latent_channels=16,
        blocks=BLOCKS,
        pipeline=Pipeline(
            "FLUX.1-schnell",
            ("schnell", "flux-schnell", "flux1-schnell"),
            256,
            False,
            4,
            (1024, 1024),
            "FlowMatchEulerDiscreteScheduler",
            "flow",
            "FluxPipeline",
            measured=False,
            scheduler_config=_SCHNELL_SCHEDULER,
            sigmas="linspace",
        ),
        single_file=SINGLE,
        diffusers_slots=SLOTS,
        lora_targets=LORA_TARGETS,
        loading=_LOADING,
    ),
)
