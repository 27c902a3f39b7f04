"""AutoencoderKL (diffusers) <-> LDM ``first_stage_model.*`` key mapping (keys without the prefix).

Derived from the config: number of levels and ``layers_per_block`` (the decoder has one more ResNet per level
and its up blocks are numbered in reverse in LDM). The mid-block attention projections are 1x1 convs (4-D) in
LDM and linear (2-D) in diffusers; the quant convs are absent when ``use_quant_conv`` /
``use_post_quant_conv`` are false (16-channel VAEs).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import torch

from sdlens.arch.keymap._common import ConfigLike, Entry, PrefixMap, apply_map, as_dict

_DEFAULTS: dict[str, Any] = {
    "down_block_types": ["DownEncoderBlock2D"],
    "layers_per_block": 1,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}

VAE_RESNET_RENAMES: dict[str, str] = {"conv_shortcut": "nin_shortcut"}
VAE_ATTN_RENAMES: dict[str, str] = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def vae_prefix_table(config: ConfigLike) -> dict[str, Entry]:
    """Module-level table: diffusers AutoencoderKL module prefix -> LDM entry."""
    cfg = {**_DEFAULTS, **as_dict(config)}
    levels = len(cfg["down_block_types"])
    n = int(cfg["layers_per_block"])
    table: dict[str, Entry] = {}
    if cfg["use_quant_conv"]:
        table["quant_conv"] = Entry("quant_conv")
    if cfg["use_post_quant_conv"]:
        table["post_quant_conv"] = Entry("post_quant_conv")
    for part in ("encoder", "decoder"):
        table[f"{part}.conv_in"] = Entry(f"{part}.conv_in")
        table[f"{part}.conv_norm_out"] = Entry(f"{part}.norm_out")
        table[f"{part}.conv_out"] = Entry(f"{part}.conv_out")
        for i in range(2):
            table[f"{part}.mid_block.resnets.{i}"] = Entry(f"{part}.mid.block_{i + 1}", VAE_RESNET_RENAMES)
        if cfg["mid_block_add_attention"]:
            table[f"{part}.mid_block.attentions.0"] = Entry(f"{part}.mid.attn_1", VAE_ATTN_RENAMES, True)
    for lvl in range(levels):
        for j in range(n):
            table[f"encoder.down_blocks.{lvl}.resnets.{j}"] = Entry(
                f"encoder.down.{lvl}.block.{j}", VAE_RESNET_RENAMES
            )
        if lvl < levels - 1:
            table[f"encoder.down_blocks.{lvl}.downsamplers.0.conv"] = Entry(
                f"encoder.down.{lvl}.downsample.conv"
            )
        ldm_lvl = levels - 1 - lvl
        for j in range(n + 1):
            table[f"decoder.up_blocks.{lvl}.resnets.{j}"] = Entry(
                f"decoder.up.{ldm_lvl}.block.{j}", VAE_RESNET_RENAMES
            )
        if lvl < levels - 1:
            table[f"decoder.up_blocks.{lvl}.upsamplers.0.conv"] = Entry(f"decoder.up.{ldm_lvl}.upsample.conv")
    return table


def _freeze(config: ConfigLike) -> str:
    return json.dumps(as_dict(config), sort_keys=True, default=str)


@lru_cache(maxsize=32)
def _pmap(frozen: str) -> PrefixMap:
    return PrefixMap(vae_prefix_table(json.loads(frozen)))


@lru_cache(maxsize=8)
def _diffusers_keys(frozen: str) -> tuple[str, ...]:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        model = AutoencoderKL.from_config(json.loads(frozen))
    return tuple(model.state_dict().keys())


def vae_key_map(config: ConfigLike, keys: Iterable[str] | None = None) -> dict[str, str]:
    """Every diffusers AutoencoderKL parameter key (or just ``keys``) -> LDM key (no ``first_stage_model.``)."""
    frozen = _freeze(config)
    pmap = _pmap(frozen)
    return {k: pmap.to_ldm(k)[0] for k in (_diffusers_keys(frozen) if keys is None else keys)}


def vae_diffusers_to_ldm(sd: Mapping[str, torch.Tensor], config: ConfigLike) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL state dict -> LDM layout (mid attention weights become 1x1 convs)."""
    return apply_map(sd, _pmap(_freeze(config)), to_ldm=True)


def vae_ldm_to_diffusers(sd: Mapping[str, torch.Tensor], config: ConfigLike) -> dict[str, torch.Tensor]:
    """LDM VAE state dict (keys without ``first_stage_model.``) -> diffusers AutoencoderKL layout."""
    return apply_map(sd, _pmap(_freeze(config)), to_ldm=False)
