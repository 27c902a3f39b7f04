"""Chroma (lodestones; FLUX.1-schnell derived): the FLUX double/single blocks without their modulation layers,
which a small MLP (``distilled_guidance_layer``, the "approximator") replaces. Original BFL-style keys and the
diffusers ``transformer`` (key map: sdlens.arch.keymap.chroma)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdlens.arch.families._common import IN_OUT
from sdlens.arch.families.flux import CHROMA_APPROXIMATOR, FLUX_VAE, RULES
from sdlens.arch.record import Blocks, Denoiser, Family, Feature, Loading, Pipeline, TextEncoderSlot
from sdlens.arch.shapes import count, first

FEATURES: tuple[Feature, ...] = (
    CHROMA_APPROXIMATOR,
    Feature(
        "chroma_approx_layers",
        "count",
        r"^distilled_guidance_layer\.layers\.(\d+)\.",
        0,
        "approximator layers",
    ),
    Feature(
        "chroma_approx_width", "dim", r"^distilled_guidance_layer\.in_proj\.weight$", 0, "approximator width"
    ),
    Feature(
        "chroma_block_mod",
        "present",
        r"^(double_blocks\.\d+\.img_mod\.|transformer_blocks\.\d+\.norm1\.linear\.)",
        0,
        "per-block modulation layers",
    ),
)


def config_from_shapes(keys: Mapping[str, Any]) -> dict[str, Any]:
    """ChromaTransformer2DModel config from a file's (original or diffusers) keys."""
    img_in = first(keys, "img_in.weight", "x_embedder.weight").shape
    head = first(
        keys, "double_blocks.0.img_attn.norm.query_norm.scale", "transformer_blocks.0.attn.norm_q.weight"
    ).shape[0]
    rope = head * 7 // 16 // 2 * 2
    approx = first(keys, "distilled_guidance_layer.in_proj.weight").shape
    return {
        "in_channels": img_in[1],
        "out_channels": first(keys, "final_layer.linear.weight", "proj_out.weight").shape[0],
        "num_layers": count(keys, r"^(?:double_blocks|transformer_blocks)\.(\d+)\."),
        "num_single_layers": count(keys, r"^(?:single_blocks|single_transformer_blocks)\.(\d+)\."),
        "attention_head_dim": head,
        "num_attention_heads": img_in[0] // head,
        "joint_attention_dim": first(keys, "txt_in.weight", "context_embedder.weight").shape[1],
        "axes_dims_rope": [head - 2 * rope, rope, rope],
        "approximator_num_channels": approx[1],
        "approximator_hidden_dim": approx[0],
        "approximator_layers": count(keys, r"^distilled_guidance_layer\.layers\.(\d+)\."),
    }


_RULES = ((r"^distilled_guidance_layer\.", "IN"), *RULES)
_ORIGINAL = {
    "D": "double_blocks.{n}.",
    "S": "single_blocks.{n}.",
    "IN": "img_in, txt_in, distilled_guidance_layer",
    "OUT": "final_layer",
}
_SRC = (
    "lodestones/Chroma model card: '8.9B parameters'; num_parameters() of the class built from the released "
    "config (the class defaults) is 8,899,983,424"
)

_LOADING = Loading(
    comfy_checkpoint=None,
    comfy_clip_type="chroma",
    a1111="no",
    forge="yes (recent versions)",
    vae=FLUX_VAE,
)

FAMILIES: tuple[Family, ...] = (
    Family(
        "chroma",
        "Chroma",
        {"chroma_approximator": True, "chroma_block_mod": False},
        {
            "flux_blocks": (19, 38),
            "hidden": 3072,
            "img_in": 64,
            "chroma_approx_layers": 5,
            "chroma_approx_width": 5120,
        },
        features=FEATURES,
        # lodestones/Chroma1-HD transformer/config.json: every value is the class default
        denoiser=Denoiser(
            "ChromaTransformer2DModel", {}, 8_899_983_424, _SRC, "DiT", config_from_shapes, "chroma"
        ),
        text_encoders=(TextEncoderSlot("t5", 512, "last"),),
        vae="kl_f8_c16",
        latent_channels=16,
        blocks=Blocks(_RULES, (*IN_OUT, ("D", 19), ("S", 38), ("OUT", None)), original_keys=_ORIGINAL),
        pipeline=Pipeline(
            "Chroma1-HD",
            ("chroma", "chroma1", "chroma1-hd"),
            512,
            True,
            35,
            (1024, 1024),
            "FlowMatchEulerDiscreteScheduler",
            "flow",
            "ChromaPipeline",
            measured=False,
        ),
        single_file={"denoiser": "model.diffusion_model."},
        diffusers_slots={"denoiser": "transformer", "t5": "text_encoder", "vae": "vae"},
        bare_keys=((r"^distilled_guidance_layer\.layers\.\d+\.in_layer\.", "bare"),),
        lora_hints=("chroma",),
        notes="T5-XXL only (no CLIP), attention-masked; FLUX.1 VAE.",
        loading=_LOADING,
    ),
)
