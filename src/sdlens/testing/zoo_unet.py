"""UNet-family test checkpoints (SD1, SD2, SDXL base, SDXL refiner) with the real key names.

Every part is a real diffusers / transformers class with seeded random values (``size="tiny"``: same block
counts, layer counts and key names as the released model, small widths) or built on the meta device
(``size="full"``: shapes only; :func:`sdlens.testing.writers.save_safetensors` writes a sparse file).
The single-file layout is derived from the diffusers layout with :mod:`sdlens.arch.keymap`, so for the same
(family, size, seed) both layouts hold identical tensors.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch

from sdlens.arch.configs import DENOISERS, TEXT_ENCODERS, VAES
from sdlens.arch.keymap.clip import (
    LOGIT_SCALE,
    clip_hf_to_ldm,
    clip_hf_to_openclip,
    hf_to_nai_clip_key,
    normalize_hf_clip,
)
from sdlens.arch.keymap.unet import unet_diffusers_to_ldm
from sdlens.arch.keymap.vae import vae_diffusers_to_ldm

Size = Literal["tiny", "medium", "full"]
TensorDict = dict[str, torch.Tensor]

FAMILIES = ("sd1", "sd2", "sdxl", "sdxl_refiner")

# text encoder parts per family: part -> (TEXT_ENCODERS kind, transformers class of the diffusers part)
TEXT_PARTS: dict[str, dict[str, tuple[str, str]]] = {
    "sd1": {"text_encoder": ("clip_l", "CLIPTextModel")},
    "sd2": {"text_encoder": ("openclip_h", "CLIPTextModel")},
    "sdxl": {
        "text_encoder": ("clip_l", "CLIPTextModel"),
        "text_encoder_2": ("clip_g", "CLIPTextModelWithProjection"),
    },
    "sdxl_refiner": {"text_encoder_2": ("clip_g", "CLIPTextModelWithProjection")},
}

# the single file stores SD2's OpenCLIP-H with one more resblock than the model runs, and its projection
_SD2_FILE_EXTRA_LAYERS = 1

_TINY_TEXT: dict[str, dict[str, Any]] = {
    "clip_l": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "projection_dim": 32},
    "openclip_h": {
        "hidden_size": 40,
        "intermediate_size": 80,
        "num_attention_heads": 2,
        "projection_dim": 40,
    },
    "clip_g": {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 2, "projection_dim": 48},
}
_TINY_VOCAB = {"vocab_size": 1000, "bos_token_id": 998, "eos_token_id": 999}

# channel ratios of the real models kept (so the same ResNets get shortcut convs)
_TINY_UNET: dict[str, dict[str, Any]] = {
    "sd1": {"block_out_channels": [8, 16, 32, 32], "attention_head_dim": 2},
    "sd2": {"block_out_channels": [8, 16, 32, 32], "attention_head_dim": [2, 2, 2, 2]},
    "sdxl": {
        "block_out_channels": [8, 16, 32],
        "attention_head_dim": [2, 2, 2],
        "addition_time_embed_dim": 8,
    },
    "sdxl_refiner": {
        "block_out_channels": [8, 16, 32, 32],
        "attention_head_dim": [2, 2, 2, 2],
        "addition_time_embed_dim": 8,
    },
}
_TINY_VAE: dict[str, Any] = {"block_out_channels": [8, 16, 32, 32], "norm_num_groups": 4}
# "medium" (SD1 only): attention and text widths of 64..128, so ranks 4..32 are low next to them
_MEDIUM_UNET = {"block_out_channels": [64, 128, 128, 128], "attention_head_dim": 8}
_MEDIUM_TEXT = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "projection_dim": 128}

_PIPELINES = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl_refiner": "StableDiffusionXLImg2ImgPipeline",
}

# scaled-linear DDPM schedule of SD1 / SD2
BETA_START, BETA_END, NUM_TIMESTEPS = 0.00085, 0.012, 1000


def _check(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown UNet family {family!r}; expected one of {FAMILIES}")


def _text_config(kind: str, size: Size) -> dict[str, Any]:
    cfg = dict(TEXT_ENCODERS[kind][1])
    if size == "tiny":
        cfg.update(_TINY_TEXT[kind], **_TINY_VOCAB)
    elif size == "medium":
        cfg.update(_MEDIUM_TEXT, **_TINY_VOCAB)
    return cfg


def _config(family: str, size: Size) -> dict[str, dict[str, Any]]:
    _check(family)
    texts = {part: _text_config(kind, size) for part, (kind, _) in TEXT_PARTS[family].items()}
    unet = dict(DENOISERS[family][1])
    vae = dict(VAES["kl_f8_c4"])
    if family.startswith("sdxl"):
        vae["scaling_factor"] = 0.13025
    if size == "medium" and family != "sd1":
        raise ValueError("the medium size is built for sd1 only")
    if size in ("tiny", "medium"):
        unet.update(_TINY_UNET[family] if size == "tiny" else _MEDIUM_UNET, norm_num_groups=4, sample_size=16)
        vae.update(_TINY_VAE, sample_size=64)
    # cross-attention width = text encoder hidden width(s); SDXL's add embedding = pooled bigG + time ids
    unet["cross_attention_dim"] = sum(t["hidden_size"] for t in texts.values())
    if family.startswith("sdxl"):
        n_ids = 6 if family == "sdxl" else 5
        pooled = texts["text_encoder_2"]["projection_dim"]
        unet["projection_class_embeddings_input_dim"] = pooled + n_ids * unet["addition_time_embed_dim"]
    return {"unet": unet, "vae": vae, **texts}


def tiny_config(family: str) -> dict[str, dict[str, Any]]:
    """Class kwargs per part (``unet``, ``vae``, ``text_encoder``, ``text_encoder_2``) of the tiny model."""
    return _config(family, "tiny")


def size_config(family: str, size: Size) -> dict[str, dict[str, Any]]:
    """Class kwargs per part of the model of ``size``."""
    return _config(family, size)


def full_config(family: str) -> dict[str, dict[str, Any]]:
    """Class kwargs per part of the released model (their published configs)."""
    return _config(family, "full")


def _make(part: str, family: str, cfg: dict[str, Any], *, file_layout: bool = False) -> torch.nn.Module:
    import diffusers
    import transformers

    if part == "unet":
        return diffusers.UNet2DConditionModel(**cfg)
    if part == "vae":
        return diffusers.AutoencoderKL(**cfg)
    cls_name = TEXT_PARTS[family][part][1]
    if file_layout and family == "sd2":  # what the file holds: 24 resblocks + text projection
        cfg = {
            **cfg,
            "num_hidden_layers": cfg["num_hidden_layers"] + _SD2_FILE_EXTRA_LAYERS,
            "projection_dim": cfg["hidden_size"],
        }
        cls_name = "CLIPTextModelWithProjection"
    return getattr(transformers, cls_name)(transformers.CLIPTextConfig(**cfg))


def _materialize(meta: TensorDict, seed: int) -> TensorDict:
    """Seeded float32 values for meta shapes: norm weights 1 + N(0, 0.02²), other 1-D tensors N(0, 0.02²),
    weights N(0, 1/fan_in); so no two tensors are alike (a swapped key cannot pass a comparison)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [t.numel() for t in meta.values()]
    flat = torch.randn(sum(sizes), generator=gen, dtype=torch.float32)
    out: TensorDict = {}
    for (key, t), noise in zip(meta.items(), flat.split(sizes), strict=True):
        noise = noise.view(tuple(t.shape))
        if t.ndim >= 2:
            out[key] = noise * (math.prod(t.shape[1:]) ** -0.5)
        elif "norm" in key and key.endswith("weight"):
            out[key] = 1.0 + 0.02 * noise
        else:
            out[key] = 0.02 * noise
    return out


@lru_cache(maxsize=64)
def _meta_part(family: str, size: Size, part: str, in_channels: int) -> tuple[TensorDict, str]:
    """One part built on the meta device (the real class, no weight init): its state dict shapes and its
    ``config.json`` (as JSON text)."""
    import diffusers

    cfg = _config(family, size)[part]
    if part == "unet":
        cfg["in_channels"] = in_channels
    with torch.device("meta"):
        model = _make(part, family, cfg, file_layout=True)
    sd = model.state_dict()
    if part in ("unet", "vae"):
        full = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items()}
        full.pop("_use_default_values", None)
        conf = {"_class_name": type(model).__name__, "_diffusers_version": diffusers.__version__, **full}
        return sd, json.dumps(conf)
    conf = _clip_config(cfg)
    conf["architectures"] = [TEXT_PARTS[family][part][1]]
    return normalize_hf_clip(sd), json.dumps(conf)


def _meta_build(family: str, size: Size, in_channels: int) -> tuple[dict[str, TensorDict], dict[str, Any]]:
    """Every part's meta state dict and config dict (only the UNet depends on ``in_channels``)."""
    parts: dict[str, TensorDict] = {}
    confs: dict[str, Any] = {}
    for part in _config(family, size):
        sd, conf = _meta_part(family, size, part, in_channels if part == "unet" else 4)
        parts[part] = sd
        confs[part] = json.loads(conf)
    return parts, confs


def _clip_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` dict of a CLIPTextConfig built from ``cfg``."""
    import transformers

    return transformers.CLIPTextConfig(**cfg).to_dict()


@lru_cache(maxsize=32)
def _source(family: str, size: Size, seed: int, in_channels: int) -> dict[str, TensorDict]:
    """The model in diffusers layout; SD2's text encoder as the file holds it (24 layers + projection)."""
    meta = _meta_build(family, size, in_channels)[0]
    if size == "full":
        return meta
    return {part: _materialize(sd, seed * 1009 + i) for i, (part, sd) in enumerate(meta.items())}


def diffusers_configs(family: str, size: Size = "tiny", *, in_channels: int = 4) -> dict[str, dict[str, Any]]:
    """``config.json`` contents per part, plus ``model_index`` (``model_index.json``) and ``scheduler``."""
    return json.loads(_diffusers_configs_json(family, size, in_channels))


@lru_cache(maxsize=32)
def _diffusers_configs_json(family: str, size: Size, in_channels: int) -> str:
    import diffusers

    out: dict[str, Any] = _meta_build(family, size, in_channels)[1]
    out["scheduler"] = _scheduler_config(family)
    index: dict[str, Any] = {"_class_name": _PIPELINES[family], "_diffusers_version": diffusers.__version__}
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if part in out:
            lib = "diffusers" if part in ("unet", "vae") else "transformers"
            index[part] = [lib, out[part].get("_class_name") or out[part]["architectures"][0]]
    index["scheduler"] = ["diffusers", out["scheduler"]["_class_name"]]
    if family == "sdxl_refiner":
        index["text_encoder"] = [None, None]
        index["requires_aesthetics_score"] = True
    out["model_index"] = index
    return json.dumps(out)


def _scheduler_config(family: str) -> dict[str, Any]:
    import diffusers

    base: dict[str, Any] = {
        "_diffusers_version": diffusers.__version__,
        "beta_start": BETA_START,
        "beta_end": BETA_END,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": NUM_TIMESTEPS,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }
    if family == "sd1":
        return {"_class_name": "PNDMScheduler", **base, "skip_prk_steps": True, "prediction_type": "epsilon"}
    if family == "sd2":
        return {
            "_class_name": "DDIMScheduler",
            **base,
            "clip_sample": False,
            "prediction_type": "v_prediction",
        }
    return {"_class_name": "EulerDiscreteScheduler", **base, "prediction_type": "epsilon"}


def _drop_sd2_extras(sd: TensorDict, num_layers: int) -> TensorDict:
    extra = tuple(
        f"text_model.encoder.layers.{i}." for i in range(num_layers, num_layers + _SD2_FILE_EXTRA_LAYERS)
    )
    return {k: v for k, v in sd.items() if not k.startswith(extra) and not k.startswith("text_projection.")}


def build_diffusers_parts(
    family: str, size: Size = "tiny", seed: int = 0, *, in_channels: int = 4
) -> dict[str, TensorDict]:
    """The model in diffusers layout, per subfolder: ``unet``, ``vae``, ``text_encoder`` / ``text_encoder_2``
    (text encoders with ``text_model.*`` keys, as ``model.safetensors`` files store them)."""
    src = _source(family, size, seed, in_channels)
    parts = {part: {k: v if size == "full" else v.clone() for k, v in sd.items()} for part, sd in src.items()}
    if family == "sd2":
        n = TEXT_ENCODERS["openclip_h"][1]["num_hidden_layers"]
        parts["text_encoder"] = _drop_sd2_extras(parts["text_encoder"], n)
    return parts


def write_diffusers_folder(
    family: str, path: str | Path, size: Size = "tiny", seed: int = 0, *, in_channels: int = 4
) -> Path:
    """Write a diffusers folder: ``model_index.json``, ``scheduler/``, and per part ``config.json`` + weights."""
    from sdlens.testing.writers import save_safetensors

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    configs = diffusers_configs(family, size, in_channels=in_channels)
    (path / "model_index.json").write_text(json.dumps(configs["model_index"], indent=2))
    (path / "scheduler").mkdir(exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs["scheduler"], indent=2))
    for part, sd in build_diffusers_parts(family, size, seed, in_channels=in_channels).items():
        folder = path / part
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps(configs[part], indent=2))
        name = (
            "model.safetensors" if part.startswith("text_encoder") else "diffusion_pytorch_model.safetensors"
        )
        save_safetensors(sd, folder / name)
    return path


def schedule_buffers(num_timesteps: int = NUM_TIMESTEPS) -> TensorDict:
    """LDM DDPM schedule buffers (scaled-linear betas 0.00085..0.012) and ``logvar``, float32, shape (T,)."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, num_timesteps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    bufs = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
        "logvar": torch.zeros(num_timesteps, dtype=torch.float64),
    }
    return {k: v.float() for k, v in bufs.items()}


def ema_key(ldm_unet_key: str) -> str:
    """``input_blocks.0.0.weight`` -> ``model_ema.diffusion_modelinput_blocks00weight``."""
    return "model_ema.diffusion_model" + ldm_unet_key.replace(".", "")


def build_single_file(
    family: str,
    *,
    size: Size = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    ema: bool = False,
    nai_clip: bool = False,
    in_channels: int = 4,
) -> TensorDict:
    """LDM (SD1/SD2) / sgm (SDXL) single-file state dict with the real key names.

    ``ema`` adds ``model_ema.*`` (flattened names, a slightly perturbed copy of the UNet, ``decay``,
    ``num_updates``); ``nai_clip`` uses NAI's CLIP names (SD1 only); ``in_channels`` 9 / 8 gives an
    inpainting / instruct-pix2pix UNet. Float tensors are cast to ``dtype``.
    """
    _check(family)
    if nai_clip and family != "sd1":
        raise ValueError("nai_clip applies to SD1 only")
    src = _source(family, size, seed, in_channels)
    cfgs = _config(family, size)
    cfgs["unet"]["in_channels"] = in_channels
    out: TensorDict = {}
    unet = unet_diffusers_to_ldm(src["unet"], cfgs["unet"])
    out.update({f"model.diffusion_model.{k}": v for k, v in unet.items()})
    out.update(
        {f"first_stage_model.{k}": v for k, v in vae_diffusers_to_ldm(src["vae"], cfgs["vae"]).items()}
    )

    logit = torch.tensor(LOGIT_SCALE)
    if family == "sd1":
        clip = clip_hf_to_ldm(src["text_encoder"], prefix="cond_stage_model.transformer.")
        if nai_clip:
            clip = {hf_to_nai_clip_key(k): v for k, v in clip.items()}
        out.update(clip)
    elif family == "sd2":
        oc = clip_hf_to_openclip(src["text_encoder"], logit_scale=logit)
        out.update({f"cond_stage_model.model.{k}": v for k, v in oc.items()})
    elif family == "sdxl":
        out.update(clip_hf_to_ldm(src["text_encoder"], prefix="conditioner.embedders.0.transformer."))
        oc = clip_hf_to_openclip(src["text_encoder_2"], logit_scale=logit)
        out.update({f"conditioner.embedders.1.model.{k}": v for k, v in oc.items()})
    else:
        oc = clip_hf_to_openclip(src["text_encoder_2"], logit_scale=logit)
        out.update({f"conditioner.embedders.0.model.{k}": v for k, v in oc.items()})

    if family in ("sd1", "sd2"):
        out.update(schedule_buffers())
    if ema:
        gen = torch.Generator().manual_seed(seed * 1009 + 77)
        for key, t in unet.items():
            if size == "full":
                out[ema_key(key)] = t
            else:
                out[ema_key(key)] = t + 1e-3 * torch.randn(tuple(t.shape), generator=gen, dtype=t.dtype)
        out["model_ema.decay"] = torch.tensor(0.9999, dtype=torch.float32)
        out["model_ema.num_updates"] = torch.tensor(0 if size == "full" else 1234, dtype=torch.int32)

    final: TensorDict = {}
    for key, t in out.items():
        if size == "full" and t.device.type != "meta":
            t = torch.empty(tuple(t.shape), dtype=t.dtype, device="meta")
        elif size != "full":
            t = t.clone()  # callers may edit in place; the cached source stays intact
        if t.is_floating_point() and t.dtype != dtype and key != "model_ema.decay":
            t = t.to(dtype)
        final[key] = t
    return final


def num_params(sd: TensorDict) -> int:
    """Total element count of a state dict (works on meta tensors)."""
    return sum(math.prod(t.shape) for t in sd.values())
