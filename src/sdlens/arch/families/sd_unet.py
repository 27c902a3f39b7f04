"""Stable Diffusion UNets: SD1.x, SD2.x, SDXL base and refiner (LDM / sgm originals, diffusers ``unet``)."""

from __future__ import annotations

from typing import Any

from sdlens.arch.record import (
    Blocks,
    Denoiser,
    Family,
    Feature,
    Pipeline,
    PredictionProbe,
    TextEncoderSlot,
    Variant,
)

FEATURES: tuple[Feature, ...] = (
    Feature("unet_ldm", "present", r"^input_blocks\.0\.0\.weight$"),
    Feature("unet_diffusers", "present", r"^down_blocks\.0\.resnets\.0\.conv1\.weight$"),
    Feature("in_channels", "dim", r"^(input_blocks\.0\.0|conv_in)\.weight$", 1, "input channels"),
    Feature("model_channels", "dim", r"^(input_blocks\.0\.0|conv_in)\.weight$", 0, "model channels"),
    Feature("context_dim", "dim", r"(^|\.)attn2\.to_k\.weight$", 1, "cross-attention context width"),
    Feature("proj_in_ndim", "ndim", r"(^|\.)proj_in\.weight$", 0, "transformer proj_in rank (4 = 1×1 conv, 2 = linear)"),
    Feature("adm_in", "dim", r"^(label_emb\.0\.0|add_embedding\.linear_1)\.weight$", 1,
            "label_emb input width (size/pooled conditioning)"),
    Feature("input_blocks", "count", r"^input_blocks\.(\d+)\."),
    Feature("down_levels", "count", r"^down_blocks\.(\d+)\."),
    Feature("transformer_depth", "count", r"\.transformer_blocks\.(\d+)\.", 0, "deepest transformer stack"),
)
DERIVED = {
    "unet": lambda f: bool(f.get("unet_ldm") or f.get("unet_diffusers")),
    # UNet resolution levels: LDM input_blocks = 1 + levels*3 - 1 (no downsampler at the last level)
    "levels": lambda f: (f["input_blocks"] + 1) // 3 if f.get("input_blocks") else f.get("down_levels"),
}
_TEXT = {"unet": "UNet layout", "levels": "UNet resolution levels"}

_RULES: tuple[tuple[str, str], ...] = (
    (r"^(time_embed|label_emb)\.", "TIME"),
    (r"^out\.", "OUT{last}"),
    (r"^input_blocks\.(\d+)\.", "IN{0:02d}"),
    (r"^middle_block\.", "M00"),
    (r"^output_blocks\.(\d+)\.", "OUT{0:02d}"),
)
_SD_BLOCKS = Blocks(_RULES, (("BASE", None), ("IN", 12), ("M", 1), ("OUT", 12)), last_out=11, mbw=25)
_INPAINT = (Variant("in_channels", 9, "inpainting"), Variant("in_channels", 8, "instruct-pix2pix"))

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
_PARAMS_SOURCE = "diffusers num_parameters() of the released unet"


def _unet(**kw: Any) -> dict[str, Any]:
    return {"unet": True, **kw}


def _config_from_shapes(family: str):
    def derive(keys):
        from sdlens.arch.from_checkpoint import unet_config_from_keys

        return unet_config_from_keys(keys, family)

    return derive


FAMILIES: tuple[Family, ...] = (
    Family(
        "sd1", "SD1.x",
        _unet(proj_in_ndim=4, adm_in=None, levels=4),
        {"context_dim": 768, "model_channels": 320},
        features=FEATURES, derived=DERIVED, feature_text=_TEXT, variants=_INPAINT,
        denoiser=Denoiser("UNet2DConditionModel", {"sample_size": 64, "cross_attention_dim": 768}, 859_520_964,
                          _PARAMS_SOURCE, "UNet", _config_from_shapes("sd1"), "unet"),
        text_encoders=(TextEncoderSlot("clip_l", 77, "last"),),
        blocks=_SD_BLOCKS,
        pipeline=Pipeline("SD 1.5", ("sd15", "sd1.5", "sd-1.5", "sd-v1-5", "sd1x"), 77, True, 50, (512, 512),
                          "PNDMScheduler", "epsilon", "StableDiffusionPipeline"),
        single_file={"denoiser": "model.diffusion_model.", "clip_l": "cond_stage_model.transformer.",
                     "vae": "first_stage_model."},
        diffusers_slots={"denoiser": "unet", "clip_l": "text_encoder", "vae": "vae"},
        lora_hints=("sd_v1",),
        notebook=(25, 2.0, 0.860, 1265, 2.91),
    ),
    Family(
        "sd2", "SD2.x",
        _unet(proj_in_ndim=2, adm_in=None, levels=4),
        {"context_dim": 1024, "model_channels": 320},
        variants=(*_INPAINT, Variant("in_channels", 7, "x4 upscaler")),
        denoiser=Denoiser(
            "UNet2DConditionModel",
            {"sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
             "use_linear_projection": True, "upcast_attention": True},
            865_910_724, _PARAMS_SOURCE, "UNet", _config_from_shapes("sd2"), "unet"),
        # the 23-layer model's output after the final norm (open_clip "penultimate")
        text_encoders=(TextEncoderSlot("openclip_h", 77, "last"),),
        blocks=_SD_BLOCKS,
        pipeline=Pipeline("SD 2.1", ("sd21", "sd2.1", "sd-2.1", "sd2x"), 77, True, 50, (768, 768),
                          "DDIMScheduler", "v_prediction", "StableDiffusionPipeline"),
        single_file={"denoiser": "model.diffusion_model.", "openclip_h": "cond_stage_model.model.",
                     "vae": "first_stage_model."},
        diffusers_slots={"denoiser": "unet", "openclip_h": "text_encoder", "vae": "vae"},
        lora_hints=("sd_v2",),
        prediction_probe=PredictionProbe(
            {875000: "SD2 base"}, "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias", 0.09),
        notebook=(25, 2.1, 0.865, 2837, 4.46),
    ),
    Family(
        "sdxl", "SDXL base",
        _unet(adm_in=("ne", None), levels=3),
        {"context_dim": 2048, "model_channels": 320, "adm_in": 2816, "transformer_depth": 10},
        variants=_INPAINT,
        denoiser=Denoiser("UNet2DConditionModel", _SDXL_UNET, 2_567_463_684, _PARAMS_SOURCE, "UNet",
                          _config_from_shapes("sdxl"), "unet"),
        text_encoders=(TextEncoderSlot("clip_l", 77, "penultimate"), TextEncoderSlot("clip_g", 77, "penultimate")),
        vae_scaling_factor=0.13025,
        blocks=Blocks(_RULES, (("BASE", None), ("IN", 9), ("M", 1), ("OUT", 9)), last_out=8, mbw=19),
        pipeline=Pipeline("SDXL base 1.0", ("sdxl-base", "sdxl1.0", "sdxl-1.0", "xl"), 77, True, 50, (1024, 1024),
                          "EulerDiscreteScheduler", "epsilon", "StableDiffusionXLPipeline"),
        single_file={"denoiser": "model.diffusion_model.", "clip_l": "conditioner.embedders.0.transformer.",
                     "clip_g": "conditioner.embedders.1.model.", "vae": "first_stage_model."},
        diffusers_slots={"denoiser": "unet", "clip_l": "text_encoder", "clip_g": "text_encoder_2", "vae": "vae"},
        lora_hints=("sdxl",),
        notebook=(19, 5.3, 2.6, 8993, 13.80),
    ),
    Family(
        "sdxl_refiner", "SDXL refiner",
        _unet(adm_in=("ne", None), levels=4),
        {"context_dim": 1280, "model_channels": 384, "adm_in": 2560, "transformer_depth": 4},
        denoiser=Denoiser(
            "UNet2DConditionModel",
            {"sample_size": 128, "block_out_channels": [384, 768, 1536, 1536],
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
             "transformer_layers_per_block": 4, "attention_head_dim": [6, 12, 24, 24], "cross_attention_dim": 1280,
             "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
             "projection_class_embeddings_input_dim": 2560},
            None, "", "UNet", _config_from_shapes("sdxl_refiner"), "unet"),
        text_encoders=(TextEncoderSlot("clip_g", 77, "penultimate"),),
        vae_scaling_factor=0.13025,
        blocks=Blocks(_RULES, (("BASE", None), ("IN", 12), ("M", 1), ("OUT", 12)), last_out=11),
        pipeline=Pipeline("SDXL refiner 1.0", ("sdxl-refiner", "refiner"), 77, True, 50, (1024, 1024),
                          "EulerDiscreteScheduler", "epsilon", "StableDiffusionXLImg2ImgPipeline", measured=False),
        single_file={"denoiser": "model.diffusion_model.", "clip_g": "conditioner.embedders.0.model.",
                     "vae": "first_stage_model."},
        diffusers_slots={"denoiser": "unet", "clip_g": "text_encoder_2", "vae": "vae"},
    ),
)
