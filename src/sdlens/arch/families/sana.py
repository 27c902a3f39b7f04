"""SANA (NVlabs linear-attention DiT; original ``blocks`` / ``t_block`` layout, diffusers ``transformer``)."""

from __future__ import annotations

from typing import Any

from sdlens.arch.families._common import IN_OUT
from sdlens.arch.record import Blocks, Denoiser, Family, Feature, Loading, Pipeline, TextEncoderSlot, Variant

FEATURES: tuple[Feature, ...] = (
    # the Mix-FFN (inverted 1x1 conv, depthwise 3x3, pointwise): no other DiT here has it
    Feature(
        "sana_ff",
        "present",
        r"^(blocks\.\d+\.mlp\.inverted_conv\.conv|transformer_blocks\.\d+\.ff\.conv_inverted)"
        r"\.weight$",
        0,
        "SANA Mix-FFN (inverted / depthwise convolutions)",
    ),
    Feature("sana_blocks", "count", r"^(?:blocks|transformer_blocks)\.(\d+)\.", 0, "linear DiT blocks"),
    Feature("sana_in", "dim", r"^(x_embedder|patch_embed)\.proj\.weight$", 1, "latent input channels"),
    Feature("sana_hidden", "dim", r"^(x_embedder|patch_embed)\.proj\.weight$", 0, "hidden width"),
    Feature(
        "sana_caption",
        "dim",
        r"^(y_embedder\.y_proj\.fc1|caption_projection\.linear_1)\.weight$",
        1,
        "caption (Gemma-2) width",
    ),
    Feature(
        "sana_qk_norm",
        "present",
        r"^(blocks\.\d+\.attn\.q_norm|transformer_blocks\.\d+\.attn1\.norm_q)\.weight$",
        0,
        "q/k RMS norms",
    ),
    Feature(
        "sana_guidance",
        "present",
        r"^(cfg_embedder\.|time_embed\.guidance_embedder\.)",
        0,
        "guidance embedder",
    ),
)
RULES: tuple[tuple[str, str], ...] = (
    (r"^(?:blocks|transformer_blocks)\.(\d+)\.", "B{0:02d}"),
    (r"^(final_layer|proj_out|scale_shift_table)", "OUT"),
    (r".", "IN"),
)
ORIGINAL = {
    "B": "blocks.{n}.",
    "IN": "x_embedder, t_embedder, t_block, y_embedder, attention_y_norm",
    "OUT": "final_layer",
}
_COMMON: dict[str, Any] = {
    "in_channels": 32,
    "out_channels": 32,
    "attention_head_dim": 32,
    "caption_channels": 2304,
    "mlp_ratio": 2.5,
    "attention_bias": False,
    "sample_size": 32,
    "patch_size": 1,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
}
# Efficient-Large-Model/Sana_1600M_1024px_diffusers and Sana_600M_1024px_diffusers transformer/config.json
# (also diffusers scripts/convert_sana_to_diffusers.py: SanaMS_1600M_P1_D20 / SanaMS_600M_P1_D28)
CONFIG_1600M: dict[str, Any] = {
    **_COMMON,
    "num_layers": 20,
    "num_attention_heads": 70,
    "num_cross_attention_heads": 20,
    "cross_attention_head_dim": 112,
    "cross_attention_dim": 2240,
}
CONFIG_600M: dict[str, Any] = {
    **_COMMON,
    "num_layers": 28,
    "num_attention_heads": 36,
    "num_cross_attention_heads": 16,
    "cross_attention_head_dim": 72,
    "cross_attention_dim": 1152,
}
_SRC = (
    "SanaTransformer2DModel built on the meta device with the released transformer/config.json: "
    "num_parameters() = {n}; the model card names it {card}"
)
_VARIANTS = (
    Variant("sana_qk_norm", True, "SANA 1.5 (q/k norms)"),
    Variant("sana_guidance", True, "SANA-Sprint"),
)
_TES = (TextEncoderSlot("gemma2_2b", 300, "last"),)
_SLOTS = {"denoiser": "transformer", "gemma2_2b": "text_encoder", "vae": "vae"}
_SINGLE = {"denoiser": "model.diffusion_model."}  # ComfyUI; the NVlabs .pth holds the bare original keys
_BARE = ((r"^blocks\.\d+\.mlp\.inverted_conv\.conv\.weight$", "bare"),)


def _pipeline(name: str, aliases: tuple[str, ...]) -> Pipeline:
    # Sana pipelines ship DPMSolverMultistepScheduler with flow sigmas (flow_shift 3): a flow-matching model
    return Pipeline(
        name,
        aliases,
        300,
        True,
        20,
        (1024, 1024),
        "DPMSolverMultistepScheduler",
        "flow",
        "SanaPipeline",
        measured=False,
    )


_LOADING = Loading(
    comfy=None,
    comfy_checkpoint=None,
    a1111="no",
    forge="no",
    notes="ComfyUI core support unknown to sdlens (custom node packs exist)",
)


def _family(
    fid: str,
    name: str,
    blocks: int,
    config: dict[str, Any],
    params: int,
    card: str,
    aliases: tuple[str, ...],
    features: tuple[Feature, ...] = (),
) -> Family:
    return Family(
        fid,
        name,
        {"sana_ff": True, "sana_blocks": blocks},
        {"sana_in": 32, "sana_caption": 2304},
        features=features,
        variants=_VARIANTS,
        denoiser=Denoiser(
            "SanaTransformer2DModel",
            config,
            params,
            _SRC.format(n=f"{params:,}", card=card),
            "DiT",
            keymap="sana",
            matches_config=lambda c: c.get("num_layers", 20) == blocks,
        ),
        text_encoders=_TES,
        vae="dc_ae_f32c32",
        latent_channels=32,
        blocks=Blocks(RULES, (*IN_OUT, ("B", blocks), ("OUT", None)), original_keys=ORIGINAL),
        pipeline=_pipeline(name, aliases),
        single_file=_SINGLE,
        diffusers_slots=_SLOTS,
        bare_keys=_BARE,
        lora_hints=("sana",) if fid == "sana" else (),
        notes="Gemma-2 2B (it) decoder hidden states, 300 tokens with a complex human instruction; DC-AE f32c32 "
        "(32x spatial compression, 32 latent channels).",
        loading=_LOADING,
    )


FAMILIES: tuple[Family, ...] = (
    _family(
        "sana",
        "SANA 1600M",
        20,
        CONFIG_1600M,
        1_604_462_752,
        "Sana-1.6B",
        ("sana-1.6b", "sana1600m", "sana-1600m", "sana_1600m_1024px"),
        FEATURES,
    ),
    _family(
        "sana_600m",
        "SANA 600M",
        28,
        CONFIG_600M,
        591_747_872,
        "Sana-0.6B",
        ("sana-0.6b", "sana600m", "sana-600m", "sana_600m_1024px"),
    ),
)
