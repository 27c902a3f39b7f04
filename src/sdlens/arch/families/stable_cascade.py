"""Stable Cascade (Würstchen v3): stage C (the text-conditional prior) and stage B (the latent decoder).

The original ``stage_c.safetensors`` / ``stage_b.safetensors`` use diffusers' ``StableCascadeUNet`` names except
for fused attention (``attention.attn.in_proj_weight`` / ``out_proj``) and, in stage B, ``clip_mapper``
(diffusers ``clip_txt_pooled_mapper``); see sdlens.arch.keymap.stable_cascade.
"""

from __future__ import annotations

from typing import Any

from sdlens.arch.record import Blocks, Denoiser, Family, Feature, Loading, Pipeline, TextEncoderSlot, Variant

FEATURES: tuple[Feature, ...] = (
    Feature(
        "casc_resblock",
        "present",
        r"^down_blocks\.\d+\.\d+\.channelwise\.0\.weight$",
        0,
        "Stable Cascade ResBlocks (depthwise + channelwise)",
    ),
    Feature("casc_text", "present", r"^clip_txt_mapper\.weight$", 0, "text-sequence mapper (stage C)"),
    Feature(
        "casc_effnet", "present", r"^effnet_mapper\.0\.weight$", 0, "EfficientNet-latent mapper (stage B)"
    ),
    Feature("casc_levels", "count", r"^down_blocks\.(\d+)\.", 0, "resolution levels"),
    Feature("casc_width", "dim", r"^embedding\.1\.weight$", 0, "first-level width"),
    Feature("casc_width1", "dim", r"^down_blocks\.1\.0\.channelwise\.0\.weight$", 1, "second-level width"),
    Feature("casc_in", "dim", r"^embedding\.1\.weight$", 1, "patchified input channels"),
)
RULES: tuple[tuple[str, str], ...] = (
    (r"^(?:down_blocks|down_downscalers)\.(\d+)\.", "D{0:02d}"),
    (r"^(?:up_blocks|up_upscalers)\.(\d+)\.", "U{0:02d}"),
    (r"^clf\.", "OUT"),
    (r".", "IN"),
)
_ORIGINAL = {
    "D": "down_blocks.{n}., down_downscalers.{n}.",
    "U": "up_blocks.{n}., up_upscalers.{n}.",
    "IN": "embedding, clip mappers, effnet / pixels mappers",
    "OUT": "clf",
}
_RES, _TIME, _ATTN = "SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"
# diffusers scripts/convert_stable_cascade.py, which wrote stabilityai/stable-cascade-prior prior/config.json and
# stabilityai/stable-cascade decoder/config.json (values that differ from StableCascadeUNet's defaults)
STAGE_C: dict[str, Any] = {
    "clip_text_in_channels": 1280,
    "clip_image_in_channels": 768,
    "switch_level": [False],
}
STAGE_B: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "patch_size": 2,
    "conditioning_dim": 1280,
    "block_out_channels": [320, 640, 1280, 1280],
    "num_attention_heads": [0, 0, 20, 20],
    "down_num_layers_per_block": [2, 6, 28, 6],
    "up_num_layers_per_block": [6, 28, 6, 2],
    "down_blocks_repeat_mappers": [1, 1, 1, 1],
    "up_blocks_repeat_mappers": [3, 3, 2, 2],
    "block_types_per_layer": [[_RES, _TIME], [_RES, _TIME], [_RES, _TIME, _ATTN], [_RES, _TIME, _ATTN]],
    "effnet_in_channels": 16,
    "pixel_mapper_in_channels": 3,
    "dropout": [0, 0, 0.1, 0.1],
    "timestep_conditioning_type": ["sca"],
}
_SRC = (
    "StableCascadeUNet built on the meta device with the released config: num_parameters() = {n}; the model card "
    "gives {card}"
)
_TE = TextEncoderSlot("clip_g", 77, "last")  # CLIP ViT-bigG/14 text (with projection): hidden states + pooled
_BARE = ((r"^down_blocks\.\d+\.\d+\.channelwise\.0\.weight$", "bare"),)
_SCHED = "DDPMWuerstchenScheduler"

_LOAD_C = Loading(
    comfy_clip_type="stable_cascade",
    a1111="no",
    forge="no",
    vae_comfy="UNETLoader (stage B) + VAELoader (stage A)",
    vae_folder="models/diffusion_models + models/vae",
    optional=("clip_l_vision",),
    notes="ComfyUI's bundled stable_cascade_stage_c / _stage_b files go in models/checkpoints",
)
_LOAD_B = Loading(
    comfy_clip_type="stable_cascade",
    a1111="no",
    forge="no",
    notes="stage B decodes stage C's latents: it runs after a stage C model",
)

FAMILIES: tuple[Family, ...] = (
    Family(
        "stable_cascade_c",
        "Stable Cascade stage C",
        {"casc_resblock": True, "casc_text": True},
        {"casc_levels": 2, "casc_in": 16},
        features=FEATURES,
        variants=(Variant("casc_width", 1536, "lite (1B)"),),
        denoiser=Denoiser(
            "StableCascadeUNet",
            STAGE_C,
            3_589_103_632,
            _SRC.format(n="3,589,103,632", card="3.6B for stage C (lite: 1B)"),
            "UNet",
            keymap="stable_cascade",
            matches_config=lambda c: c.get("effnet_in_channels") is None,
        ),
        text_encoders=(
            _TE,
        ),  # (+ the optional CLIP-L/14 vision encoder for image prompts: slot image_encoder)
        vae="stable_cascade_stage_b",
        latent_channels=16,  # its output: the 16-channel EfficientNet latent (24x24)
        blocks=Blocks(
            RULES, (("BASE", None), ("IN", None), ("D", 2), ("U", 2), ("OUT", None)), original_keys=_ORIGINAL
        ),
        pipeline=Pipeline(
            "Stable Cascade prior",
            ("stable-cascade", "stable-cascade-prior", "cascade", "stage-c", "stable_cascade"),
            77,
            True,
            20,
            (1024, 1024),
            _SCHED,
            "epsilon",
            "StableCascadePriorPipeline",
            measured=False,
        ),
        single_file={"denoiser": ""},  # stage_c.safetensors / stage_c_bf16.safetensors: bare keys
        diffusers_slots={"denoiser": "prior", "clip_g": "text_encoder", "clip_l_vision": "image_encoder"},
        bare_keys=_BARE,
        lora_hints=("cascade",),
        notes="Text-conditional prior in the 42x-compressed EfficientNet latent; stage B and stage A decode it. "
        "Image prompts go through CLIP ViT-L/14 vision (image_encoder), optional.",
        loading=_LOAD_C,
    ),
    Family(
        "stable_cascade_b",
        "Stable Cascade stage B",
        {"casc_resblock": True, "casc_effnet": True},
        {"casc_levels": 4, "casc_in": 16},
        variants=(Variant("casc_width1", 576, "lite (700M)"),),
        denoiser=Denoiser(
            "StableCascadeUNet",
            STAGE_B,
            1_562_941_136,
            _SRC.format(n="1,562,941,136", card="1.5B for stage B (lite: 700M)"),
            "UNet",
            keymap="stable_cascade",
        ),
        text_encoders=(TextEncoderSlot("clip_g", 77, "last"),),  # pooled embedding only
        vae="paella_vq",
        latent_channels=4,  # stage A: the f4 VQGAN (Paella), 4 channels
        blocks=Blocks(
            RULES, (("BASE", None), ("IN", None), ("D", 4), ("U", 4), ("OUT", None)), original_keys=_ORIGINAL
        ),
        pipeline=Pipeline(
            "Stable Cascade decoder",
            ("stable-cascade-decoder", "stage-b"),
            77,
            False,
            10,
            (1024, 1024),
            _SCHED,
            "epsilon",
            "StableCascadeDecoderPipeline",
            measured=False,
        ),
        single_file={"denoiser": ""},
        diffusers_slots={"denoiser": "decoder", "clip_g": "text_encoder", "vae": "vqgan"},
        loading=_LOAD_B,
    ),
)
