"""Stable Diffusion UNets: SD1.x, SD2.x, SDXL base and refiner (LDM / sgm originals, diffusers ``unet``)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sdlens.arch.record import (
    Blocks,
    Denoiser,
    Family,
    Feature,
    Loading,
    Pipeline,
    PredictionProbe,
    TextEncoderSlot,
    Variant,
)
from sdlens.arch.shapes import count, indices

if TYPE_CHECKING:
    from sdlens.io.base import TensorInfo

FEATURES: tuple[Feature, ...] = (
    Feature("unet_ldm", "present", r"^input_blocks\.0\.0\.weight$"),
    Feature("unet_diffusers", "present", r"^down_blocks\.0\.resnets\.0\.conv1\.weight$"),
    Feature("in_channels", "dim", r"^(input_blocks\.0\.0|conv_in)\.weight$", 1, "input channels"),
    Feature("model_channels", "dim", r"^(input_blocks\.0\.0|conv_in)\.weight$", 0, "model channels"),
    Feature("context_dim", "dim", r"(^|\.)attn2\.to_k\.weight$", 1, "cross-attention context width"),
    Feature(
        "proj_in_ndim",
        "ndim",
        r"(^|\.)proj_in\.weight$",
        0,
        "transformer proj_in rank (4 = 1×1 conv, 2 = linear)",
    ),
    Feature(
        "adm_in",
        "dim",
        r"^(label_emb\.0\.0|add_embedding\.linear_1)\.weight$",
        1,
        "label_emb input width (size/pooled conditioning)",
    ),
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


# --------------------------------------------------------------------------- config from shapes


def _shapes(
    *, sample_size: int, heads: int | None = None, head_width: int | None = None, upcast: bool = False
) -> Callable[[Mapping[str, TensorInfo]], dict[str, Any]]:
    """The record's ``config_from_shapes``: what shapes cannot tell comes from here — the latent sample size,
    attention heads (a fixed count, SD1's 8, or a fixed width, SD2 / SDXL's 64) and SD2's upcast attention."""

    def derive(keys: Mapping[str, TensorInfo]) -> dict[str, Any]:
        return unet_config_from_keys(
            keys, sample_size=sample_size, heads=heads, head_width=head_width, upcast=upcast
        )

    return derive


def unet_config_from_keys(
    keys: Mapping[str, TensorInfo],
    *,
    sample_size: int,
    heads: int | None = None,
    head_width: int | None = None,
    upcast: bool = False,
) -> dict[str, Any]:
    """UNet2DConditionModel kwargs from LDM (``input_blocks``) or diffusers (``down_blocks``) keys."""
    if "input_blocks.0.0.weight" in keys:
        conv_in, out_w = keys["input_blocks.0.0.weight"], keys["out.2.weight"]
        down, up = _ldm_levels(keys)
        mid = (
            count(keys, r"^middle_block\.1\.transformer_blocks\.(\d+)\.")
            if any(k.startswith("middle_block.") for k in keys)
            else None
        )
        label = keys.get("label_emb.0.0.weight")
    else:
        conv_in, out_w = keys["conv_in.weight"], keys["conv_out.weight"]
        down, up = _diffusers_levels(keys)
        mid = (
            count(keys, r"^mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.")
            if any(k.startswith("mid_block.") for k in keys)
            else None
        )
        label = keys.get("add_embedding.linear_1.weight")
    proj = next((keys[k] for k in sorted(keys) if k.endswith(".proj_in.weight")), None)
    ctx = next((keys[k].shape[1] for k in sorted(keys) if k.endswith("attn2.to_k.weight")), 768)
    channels = [c for c, _ in down]
    cfg: dict[str, Any] = {
        "sample_size": sample_size,
        "in_channels": conv_in.shape[1],
        "out_channels": out_w.shape[0],
        "block_out_channels": channels,
        "cross_attention_dim": ctx,
        "down_block_types": ["CrossAttnDownBlock2D" if any(d) else "DownBlock2D" for _, d in down],
        "up_block_types": ["CrossAttnUpBlock2D" if any(d) else "UpBlock2D" for d in up],
        "layers_per_block": [len(d) for _, d in down],
        "use_linear_projection": bool(proj is not None and len(proj.shape) == 2),
        "norm_num_groups": math.gcd(32, *channels),
        # diffusers' attention_head_dim is these UNets' head count: a fixed one, or the width over a fixed head width
        "attention_head_dim": heads
        if heads is not None
        else [max(1, c // (head_width or 64)) for c in channels],
    }
    if upcast:
        cfg["upcast_attention"] = True
    down_depths = [[x or 1 for x in d] for _, d in down]
    up_depths = [[x or 1 for x in d] for d in up]
    if all(len(set(d)) <= 1 for d in down_depths) and up_depths == [
        [d[0]] * (len(d) + 1) for d in reversed(down_depths)
    ]:
        cfg["transformer_layers_per_block"] = [d[0] for d in down_depths]
    else:
        cfg["transformer_layers_per_block"] = down_depths
        cfg["reverse_transformer_layers_per_block"] = up_depths
    if len(set(cfg["layers_per_block"])) == 1:
        cfg["layers_per_block"] = cfg["layers_per_block"][0]
    if mid is None:
        cfg["mid_block_type"] = None
    elif mid and mid != down_depths[-1][0]:
        if isinstance(cfg["transformer_layers_per_block"][-1], int):
            cfg["transformer_layers_per_block"] = [
                [x] * len(down[i][1]) for i, x in enumerate(cfg["transformer_layers_per_block"])
            ]
            cfg["reverse_transformer_layers_per_block"] = up_depths
        cfg["transformer_layers_per_block"][-1] = [mid] + down_depths[-1][1:]
    if label is not None:
        adm = label.shape[1]  # pooled text embedding + 5 or 6 sinusoidal size embeddings (no parameters)
        cfg.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=256 if adm > 6 * 256 else max(1, adm // 12),
            projection_class_embeddings_input_dim=adm,
        )
    return cfg


def _ldm_levels(keys: Mapping[str, TensorInfo]) -> tuple[list[tuple[int, list[int]]], list[list[int]]]:
    down: list[tuple[int, list[int]]] = []
    depths: list[int] = []
    ch = 0
    for i in indices(keys, r"^input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{i}.0.op.weight" in keys:
            down.append((ch, depths))
            depths = []
            continue
        ch = keys[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0]
        depths.append(count(keys, rf"^input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\."))
    down.append((ch, depths))
    up: list[list[int]] = [[]]
    for i in indices(keys, r"^output_blocks\.(\d+)\."):
        up[-1].append(count(keys, rf"^output_blocks\.{i}\.1\.transformer_blocks\.(\d+)\."))
        if any(re.match(rf"^output_blocks\.{i}\.\d\.conv\.weight$", k) for k in keys):
            up.append([])
    return down, [u for u in up if u]


def _diffusers_levels(keys: Mapping[str, TensorInfo]) -> tuple[list[tuple[int, list[int]]], list[list[int]]]:
    down = []
    for lv in indices(keys, r"^down_blocks\.(\d+)\."):
        res = indices(keys, rf"^down_blocks\.{lv}\.resnets\.(\d+)\.")
        ch = keys[f"down_blocks.{lv}.resnets.{res[-1]}.conv2.weight"].shape[0]
        down.append(
            (
                ch,
                [
                    count(keys, rf"^down_blocks\.{lv}\.attentions\.{j}\.transformer_blocks\.(\d+)\.")
                    for j in res
                ],
            )
        )
    up = []
    for lv in indices(keys, r"^up_blocks\.(\d+)\."):
        res = indices(keys, rf"^up_blocks\.{lv}\.resnets\.(\d+)\.")
        up.append(
            [count(keys, rf"^up_blocks\.{lv}\.attentions\.{j}\.transformer_blocks\.(\d+)\.") for j in res]
        )
    return down, up


# --------------------------------------------------------------------------- which record a config.json is


def _ctx(cfg: Mapping[str, Any]) -> Any:
    ctx = cfg.get("cross_attention_dim", 1280)
    return ctx[0] if isinstance(ctx, list) and ctx else ctx


def _text_time(cfg: Mapping[str, Any]) -> bool:
    return cfg.get("addition_embed_type") == "text_time"


def _pooled_is_context(cfg: Mapping[str, Any], time_ids: int) -> bool:
    """The refiner conditions on CLIP-G alone: its pooled width (the size embeddings aside) is its context width."""
    adm = cfg.get("projection_class_embeddings_input_dim")
    return isinstance(adm, int) and adm - time_ids * (cfg.get("addition_time_embed_dim") or 256) == _ctx(cfg)


def _sd1_config(cfg: Mapping[str, Any]) -> bool:
    return not _text_time(cfg) and (
        _ctx(cfg) == 768 or (_ctx(cfg) != 1024 and not cfg.get("use_linear_projection"))
    )


# how tools load these files (sdlens.analysis.loading derives the rest from the record)
_SD_VAE = "SD 1.x / 2.x VAE (4-channel; e.g. vae-ft-mse-840000-ema-pruned)"
_SDXL_VAE = "SDXL VAE (sdxl_vae.safetensors, 4-channel)"
_LOAD_SD1 = Loading(
    comfy_gguf=True, comfy_clip_type="stable_diffusion", a1111="yes", forge="yes", vae=_SD_VAE
)
_LOAD_SD2 = Loading(comfy_clip_type="stable_diffusion", a1111="yes", forge="yes", vae=_SD_VAE)
_LOAD_SDXL = Loading(
    comfy_gguf=True, comfy_clip_type="sdxl", a1111="yes (1.5 and later)", forge="yes", vae=_SDXL_VAE
)
_LOAD_REFINER = Loading(
    comfy_clip_type="stable_diffusion",  # ComfyUI reads a lone CLIP-G as the refiner's encoder
    a1111="yes, as the refiner (1.6 and later)",
    forge="unknown",
    vae=_SDXL_VAE,
)

FAMILIES: tuple[Family, ...] = (
    Family(
        "sd1",
        "SD1.x",
        _unet(proj_in_ndim=4, adm_in=None, levels=4),
        {"context_dim": 768, "model_channels": 320},
        features=FEATURES,
        bare_keys=(
            (r"^input_blocks\.0\.0\.weight$", "bare"),
        ),  # a bare file (no prefix) with this key is this denoiser
        derived=DERIVED,
        feature_text=_TEXT,
        variants=_INPAINT,
        denoiser=Denoiser(
            "UNet2DConditionModel",
            {"sample_size": 64, "cross_attention_dim": 768},
            859_520_964,
            _PARAMS_SOURCE,
            "UNet",
            _shapes(sample_size=64, heads=8),
            "unet",
            _sd1_config,
            kohya_names="diffusers",
        ),
        text_encoders=(TextEncoderSlot("clip_l", 77, "last"),),
        blocks=_SD_BLOCKS,
        pipeline=Pipeline(
            "SD 1.5",
            ("sd15", "sd1.5", "sd-1.5", "sd-v1-5", "sd1x"),
            77,
            True,
            50,
            (512, 512),
            "PNDMScheduler",
            "epsilon",
            "StableDiffusionPipeline",
        ),
        single_file={
            "denoiser": "model.diffusion_model.",
            "clip_l": "cond_stage_model.transformer.",
            "vae": "first_stage_model.",
        },
        diffusers_slots={"denoiser": "unet", "clip_l": "text_encoder", "vae": "vae"},
        lora_hints=("sd_v1",),
        notebook=(25, 2.0, 0.860, 1265, 2.91),
        loading=_LOAD_SD1,
    ),
    Family(
        "sd2",
        "SD2.x",
        _unet(proj_in_ndim=2, adm_in=None, levels=4),
        {"context_dim": 1024, "model_channels": 320},
        variants=(*_INPAINT, Variant("in_channels", 7, "x4 upscaler")),
        denoiser=Denoiser(
            "UNet2DConditionModel",
            {
                "sample_size": 96,
                "cross_attention_dim": 1024,
                "attention_head_dim": [5, 10, 20, 20],
                "use_linear_projection": True,
                "upcast_attention": True,
            },
            865_910_724,
            _PARAMS_SOURCE,
            "UNet",
            _shapes(sample_size=96, head_width=64, upcast=True),
            "unet",
            lambda c: not _text_time(c),
            kohya_names="diffusers",
        ),
        # the 23-layer model's output after the final norm (open_clip "penultimate")
        text_encoders=(TextEncoderSlot("openclip_h", 77, "last"),),
        blocks=_SD_BLOCKS,
        pipeline=Pipeline(
            "SD 2.1",
            ("sd21", "sd2.1", "sd-2.1", "sd2x"),
            77,
            True,
            50,
            (768, 768),
            "DDIMScheduler",
            "v_prediction",
            "StableDiffusionPipeline",
        ),
        single_file={
            "denoiser": "model.diffusion_model.",
            "openclip_h": "cond_stage_model.model.",
            "vae": "first_stage_model.",
        },
        diffusers_slots={"denoiser": "unet", "openclip_h": "text_encoder", "vae": "vae"},
        lora_hints=("sd_v2",),
        prediction_probe=PredictionProbe(
            {875000: "SD2 base"},
            "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias",
            0.09,
            in_channels_key="model.diffusion_model.input_blocks.0.0.weight",
            in_channels=4,  # ComfyUI: "SD2.0 inpainting models are not v prediction"
            modelspec_ids={"stable-diffusion-v2-768-v": "v_prediction", "stable-diffusion-v2-512": "epsilon"},
        ),
        notebook=(25, 2.1, 0.865, 2837, 4.46),
        loading=_LOAD_SD2,
    ),
    Family(
        "sdxl",
        "SDXL base",
        _unet(adm_in=("ne", None), levels=3),
        {"context_dim": 2048, "model_channels": 320, "adm_in": 2816, "transformer_depth": 10},
        variants=_INPAINT,
        denoiser=Denoiser(
            "UNet2DConditionModel",
            _SDXL_UNET,
            2_567_463_684,
            _PARAMS_SOURCE,
            "UNet",
            _shapes(sample_size=128, head_width=64),
            "unet",
            lambda c: _text_time(c) and not _pooled_is_context(c, 5),
            kohya_names="ldm",
        ),
        text_encoders=(
            TextEncoderSlot("clip_l", 77, "penultimate"),
            TextEncoderSlot("clip_g", 77, "penultimate"),
        ),
        vae_scaling_factor=0.13025,
        blocks=Blocks(_RULES, (("BASE", None), ("IN", 9), ("M", 1), ("OUT", 9)), last_out=8, mbw=19),
        pipeline=Pipeline(
            "SDXL base 1.0",
            ("sdxl-base", "sdxl1.0", "sdxl-1.0", "xl"),
            77,
            True,
            50,
            (1024, 1024),
            "EulerDiscreteScheduler",
            "epsilon",
            "StableDiffusionXLPipeline",
        ),
        single_file={
            "denoiser": "model.diffusion_model.",
            "clip_l": "conditioner.embedders.0.transformer.",
            "clip_g": "conditioner.embedders.1.model.",
            "vae": "first_stage_model.",
        },
        diffusers_slots={
            "denoiser": "unet",
            "clip_l": "text_encoder",
            "clip_g": "text_encoder_2",
            "vae": "vae",
        },
        lora_hints=("sdxl",),
        notebook=(19, 5.3, 2.6, 8993, 13.80),
        loading=_LOAD_SDXL,
    ),
    Family(
        "sdxl_refiner",
        "SDXL refiner",
        _unet(adm_in=("ne", None), levels=4),
        {"context_dim": 1280, "model_channels": 384, "adm_in": 2560, "transformer_depth": 4},
        denoiser=Denoiser(
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
            None,
            "",
            "UNet",
            _shapes(sample_size=128, head_width=64),
            "unet",
            _text_time,
            time_ids=5,
            kohya_names="ldm",
        ),
        text_encoders=(TextEncoderSlot("clip_g", 77, "penultimate"),),
        vae_scaling_factor=0.13025,
        blocks=Blocks(_RULES, (("BASE", None), ("IN", 12), ("M", 1), ("OUT", 12)), last_out=11),
        pipeline=Pipeline(
            "SDXL refiner 1.0",
            ("sdxl-refiner", "refiner"),
            77,
            True,
            50,
            (1024, 1024),
            "EulerDiscreteScheduler",
            "epsilon",
            "StableDiffusionXLImg2ImgPipeline",
            measured=False,
        ),
        single_file={
            "denoiser": "model.diffusion_model.",
            "clip_g": "conditioner.embedders.0.model.",
            "vae": "first_stage_model.",
        },
        diffusers_slots={"denoiser": "unet", "clip_g": "text_encoder_2", "vae": "vae"},
        loading=_LOAD_REFINER,
    ),
)
