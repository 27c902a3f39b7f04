"""LTX-Video (Lightricks), the 2B transformer of releases 0.9.0-0.9.5: Lightricks original keys
(``patchify_proj``, ``adaln_single``, ``attn1.q_norm``) and the diffusers ``transformer``
(key map: sdlens.arch.keymap.ltx_video)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdlens.arch.families._common import IN_OUT
from sdlens.arch.families.pixart import LTX_QK_NORM
from sdlens.arch.record import Blocks, Denoiser, Family, Feature, Loading, Pipeline, TextEncoderSlot
from sdlens.arch.shapes import count, first, head_dim

FEATURES: tuple[Feature, ...] = (
    Feature("ltx", "present", r"^(patchify_proj|proj_in)\.weight$", 0, "LTX patchify projection"),
    LTX_QK_NORM,
    Feature("ltx_caption", "present", r"^caption_projection\.linear_1\.weight$", 0, "caption projection"),
    Feature("ltx_blocks", "count", r"^transformer_blocks\.(\d+)\.", 0, "DiT blocks"),
    Feature("ltx_hidden", "dim", r"^(patchify_proj|proj_in)\.weight$", 0, "hidden width"),
    Feature("ltx_in", "dim", r"^(patchify_proj|proj_in)\.weight$", 1, "latent channels in"),
)


def config_from_shapes(keys: Mapping[str, Any]) -> dict[str, Any]:
    """LTXVideoTransformer3DModel config from a file's (original or diffusers) keys."""
    proj = first(keys, "patchify_proj.weight", "proj_in.weight").shape
    head = head_dim(proj[0], 64)
    return {
        "in_channels": proj[1],
        "out_channels": first(keys, "proj_out.weight").shape[0],
        "num_attention_heads": proj[0] // head,
        "attention_head_dim": head,
        "cross_attention_dim": first(keys, "transformer_blocks.0.attn2.to_k.weight").shape[1],
        "caption_channels": first(keys, "caption_projection.linear_1.weight").shape[1],
        "num_layers": count(keys, r"^transformer_blocks\.(\d+)\."),
    }


_RULES: tuple[tuple[str, str], ...] = (
    (r"^transformer_blocks\.(\d+)\.", "B{0:02d}"),
    (r"^(norm_out|proj_out|scale_shift_table)(\.|$)", "OUT"),
    (r".", "IN"),
)
_ORIGINAL = {
    "B": "transformer_blocks.{n}.",
    "IN": "patchify_proj, adaln_single, caption_projection",
    "OUT": "scale_shift_table, proj_out",
}
_SRC = (
    "num_parameters() of LTXVideoTransformer3DModel built from Lightricks/LTX-Video's transformer config.json "
    "(the class defaults); the model card's '2B'; 1,923,385,472 is also what full fine-tuning of it trains"
)

_LOADING = Loading(
    comfy_gguf=True,
    comfy_clip_type="ltxv",
    a1111="no",
    forge="no",
    notes="the released single file bundles the VAE: Load Checkpoint gives the model and the VAE",
)

FAMILIES: tuple[Family, ...] = (
    Family(
        "ltx_video",
        "LTX-Video",
        {"ltx": True, "ltx_qk_norm": True, "ltx_caption": True, "ltx_in": 128},
        {"ltx_blocks": 28, "ltx_hidden": 2048},
        features=FEATURES,
        denoiser=Denoiser(
            "LTXVideoTransformer3DModel", {}, 1_923_385_472, _SRC, "DiT", config_from_shapes, "ltx_video"
        ),
        text_encoders=(TextEncoderSlot("t5", 128, "last"),),
        vae="ltx_vae",
        latent_channels=128,
        blocks=Blocks(_RULES, (*IN_OUT, ("B", 28), ("OUT", None)), original_keys=_ORIGINAL),
        pipeline=Pipeline(
            "LTX-Video",
            ("ltx", "ltxv", "ltx-video-0.9"),
            128,
            True,
            50,
            (704, 512),
            "FlowMatchEulerDiscreteScheduler",
            "flow",
            "LTXPipeline",
            measured=False,
        ),
        single_file={"denoiser": "model.diffusion_model.", "vae": "vae."},
        diffusers_slots={"denoiser": "transformer", "t5": "text_encoder", "vae": "vae"},
        bare_keys=((r"^patchify_proj\.weight$", "bare"),),
        lora_hints=("ltx",),
        notes="161 frames of 704x512 by default; the causal video VAE (AutoencoderKLLTXVideo) compresses 32x32x8 "
        "into 128 channels. The 13B releases (0.9.7+, 48 blocks, width 4096) are not this record.",
        loading=_LOADING,
    ),
)
