"""Tiny zoo files for Playground v2.5, Stable Cascade (stage C / B), SANA (1600M / 600M) and Lumina-Image 2.0.

Each is built from the real diffusers class with random weights at tiny widths and the released block
structure (depths, levels, input channels, caption widths), then written in the diffusers layout (a model
folder: ``config.json`` + ``diffusion_pytorch_model.safetensors``) or the original one (the released single
file's names, through ``sdlens.arch.keymap``). ``full_config`` is the released class config (for meta builds).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch

from sdlens.arch import families
from sdlens.arch.keymap.lumina2 import lumina2_diffusers_to_original
from sdlens.arch.keymap.sana import sana_diffusers_to_original
from sdlens.arch.keymap.stable_cascade import cascade_diffusers_to_original
from sdlens.arch.keymap.unet import unet_diffusers_to_ldm
from sdlens.testing.writers import save_safetensors

Layout = Literal["original", "diffusers"]
TensorDict = dict[str, torch.Tensor]
FAMILY_IDS = (
    "playground_v25",
    "sdxl",
    "stable_cascade_c",
    "stable_cascade_b",
    "sana",
    "sana_600m",
    "lumina2",
)

_RES, _TIME, _ATTN = "SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"
_SANA_TINY = {
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "num_cross_attention_heads": 2,
    "cross_attention_head_dim": 8,
    "cross_attention_dim": 16,
    "sample_size": 8,
}
# tiny widths, released structure: the values below replace the released config's
TINY: dict[str, dict[str, Any]] = {
    "stable_cascade_c": {
        "block_out_channels": [32, 32],
        "num_attention_heads": [2, 2],
        "conditioning_dim": 32,
        "clip_text_in_channels": 24,
        "clip_text_pooled_in_channels": 24,
        "clip_image_in_channels": 16,
        "timestep_ratio_embedding_dim": 16,
    },
    "stable_cascade_b": {
        "block_out_channels": [16, 32, 32, 32],
        "num_attention_heads": [0, 0, 2, 2],
        "conditioning_dim": 32,
        "clip_text_pooled_in_channels": 24,
        "timestep_ratio_embedding_dim": 16,
    },
    "sana": _SANA_TINY,
    "sana_600m": _SANA_TINY,
    "lumina2": {
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_kv_heads": 2,
        "multiple_of": 16,
        "axes_dim_rope": [4, 6, 6],
        "sample_size": 16,
    },
}
EDM_MEAN = (-1.6574, 1.886, -1.383, 2.5155)  # playground-v2.5 vae/config.json latents_mean
EDM_STD = (8.4927, 5.9022, 6.5498, 5.2299)  # and latents_std


def _cls(fid: str):
    from sdlens.arch.build import diffusers_class

    rec = families.get(fid)
    assert rec is not None and rec.denoiser is not None
    return diffusers_class(rec.denoiser.cls_name)


def full_config(fid: str) -> dict[str, Any]:
    """The released denoiser config (the record's values over the class defaults)."""
    rec = families.get(fid)
    assert rec is not None and rec.denoiser is not None
    return json.loads(json.dumps(dict(rec.denoiser.config)))


def tiny_config(fid: str) -> dict[str, Any]:
    if _keymap(fid) == "unet":
        from sdlens.testing.zoo_unet import tiny_config as unet_tiny

        return unet_tiny("sdxl")["unet"]
    return {**full_config(fid), **TINY[fid]}


def meta_params(fid: str) -> int:
    """num_parameters() of the released config, built on the meta device (no memory)."""
    from sdlens.arch.build import build_denoiser, count_params

    return count_params(build_denoiser(_cls(fid).__name__, full_config(fid)))


@lru_cache(maxsize=16)
def _diffusers_sd(fid: str, seed: int) -> tuple[tuple[str, torch.Tensor], ...]:
    torch.manual_seed(seed)
    model = _cls(fid)(**tiny_config(fid))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)  # random (diffusers zero-inits some outputs)
    return tuple((k, v.detach().clone()) for k, v in model.state_dict().items())


def diffusers_state_dict(fid: str, seed: int = 0) -> TensorDict:
    return dict(_diffusers_sd(fid, seed))


def _keymap(fid: str) -> str:
    rec = families.get(fid)
    assert rec is not None and rec.denoiser is not None and rec.denoiser.keymap
    return rec.denoiser.keymap


def _sana_extras(cfg: dict[str, Any]) -> TensorDict:
    """The original's keys diffusers drops: the sin-cos table (zeros here) and the learned null caption."""
    hidden = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    return {
        "pos_embed": torch.zeros(1, cfg["sample_size"] ** 2, hidden),
        "y_embedder.y_embedding": torch.randn(300, cfg["caption_channels"]) * 0.02,
    }


def _lumina2_extras(cfg: dict[str, Any]) -> TensorDict:
    return {
        "norm_final.weight": torch.ones(cfg["hidden_size"])
    }  # unused by the original, dropped by diffusers


# per key map: diffusers -> original, and the original-only tensors
_TO_ORIGINAL = {
    "stable_cascade": cascade_diffusers_to_original,
    "sana": sana_diffusers_to_original,
    "lumina2": lumina2_diffusers_to_original,
}
_EXTRAS = {"sana": _sana_extras, "lumina2": _lumina2_extras}
# top-level markers a family's single file carries
_MARKERS: dict[str, dict[str, tuple[float, ...]]] = {
    "playground_v25": {"edm_mean": EDM_MEAN, "edm_std": EDM_STD}
}


def _markers(fid: str) -> TensorDict:
    return {k: torch.tensor(v).reshape(1, 4, 1, 1) for k, v in _MARKERS.get(fid, {}).items()}


def original_state_dict(fid: str, seed: int = 0) -> TensorDict:
    """The released single file's keys (Playground / SDXL: sgm single file with ``model.diffusion_model.``)."""
    sd = diffusers_state_dict(fid, seed)
    keymap, cfg = _keymap(fid), tiny_config(fid)
    if keymap == "unet":
        return {
            **{f"model.diffusion_model.{k}": v for k, v in unet_diffusers_to_ldm(sd, cfg).items()},
            **_markers(fid),
        }
    out = _TO_ORIGINAL[keymap](sd)
    extras = _EXTRAS.get(keymap)
    return {**out, **(extras(cfg) if extras else {})}


def write_full_unet_sparse(fid: str, root: str | Path) -> Path:
    """Playground v2.5 / SDXL base at full size as a sparse single file (real header, data a hole): the UNet
    built on the meta device from the released config, in the sgm layout; Playground adds its EDM markers."""
    from diffusers import UNet2DConditionModel

    from sdlens.testing.zoo_unet import full_config as unet_full

    cfg = unet_full("sdxl")["unet"]
    with torch.device("meta"):
        sd = UNet2DConditionModel(**cfg).state_dict()
    out: TensorDict = {f"model.diffusion_model.{k}": v for k, v in unet_diffusers_to_ldm(sd, cfg).items()}
    out.update(_markers(fid))
    return save_safetensors(out, Path(root) / f"{fid}_full.safetensors")


def write(fid: str, layout: Layout, root: str | Path, seed: int = 0) -> Path:
    """Write the tiny model of ``fid`` under ``root``; returns the file (original) or model folder (diffusers)."""
    root = Path(root)
    if layout == "original":
        return save_safetensors(original_state_dict(fid, seed), root / f"{fid}.safetensors")
    folder = root / f"{fid}_diffusers"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"_class_name": _cls(fid).__name__, **tiny_config(fid)}
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    save_safetensors(diffusers_state_dict(fid, seed), folder / "diffusion_pytorch_model.safetensors")
    return folder


def write_unet_pipeline(fid: str, root: str | Path, seed: int = 0) -> Path:
    """A diffusers pipeline folder holding the tiny UNet (``model_index.json`` + ``unet/``): Playground v2.5's
    lists the EDM DPM-Solver scheduler, SDXL's the Euler one (weights identical)."""
    rec = families.get(fid)
    assert rec is not None and rec.pipeline is not None
    scheduler = rec.pipeline.scheduler
    folder = Path(root) / f"{fid}_pipeline"
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", scheduler],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    cfg = {"_class_name": "UNet2DConditionModel", **tiny_config(fid)}
    (folder / "unet" / "config.json").write_text(json.dumps(cfg, indent=1))
    save_safetensors(diffusers_state_dict(fid, seed), folder / "unet" / "diffusion_pytorch_model.safetensors")
    return folder
