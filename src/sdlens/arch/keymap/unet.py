"""UNet2DConditionModel (diffusers) <-> LDM / sgm ``model.diffusion_model.*`` key mapping.

The mapping is derived from the config alone: number of levels, ``layers_per_block``, which levels hold
cross-attention transformers and which have down/up samplers. Keys here carry no ``model.diffusion_model.``
prefix. Transformer internals (``transformer_blocks.N.attn1.to_q`` ...) are named identically in both layouts,
so attention modules map by prefix; ResNet internals are renamed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import torch

from sdlens.arch.keymap._common import ConfigLike, Entry, PrefixMap, apply_map, as_dict

_DEFAULTS: dict[str, Any] = {
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 2,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "addition_embed_type": None,
    "class_embed_type": None,
    "num_class_embeds": None,
}

# diffusers ResnetBlock2D sub-module -> LDM ResBlock sub-module
RESNET_RENAMES: dict[str, str] = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _cfg(config: ConfigLike) -> dict[str, Any]:
    return {**_DEFAULTS, **as_dict(config)}


def _per_level(value: int | list[int], n: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [int(value)] * n


def unet_prefix_table(config: ConfigLike) -> dict[str, Entry]:
    """Module-level table: diffusers module prefix -> (LDM module prefix, sub-module renames)."""
    cfg = _cfg(config)
    down_types: list[str] = list(cfg["down_block_types"])
    up_types: list[str] = list(cfg["up_block_types"])
    levels = len(down_types)
    layers = _per_level(cfg["layers_per_block"], levels)
    table: dict[str, Entry] = {
        "conv_in": Entry("input_blocks.0.0"),
        "time_embedding.linear_1": Entry("time_embed.0"),
        "time_embedding.linear_2": Entry("time_embed.2"),
        "conv_norm_out": Entry("out.0"),
        "conv_out": Entry("out.2"),
    }
    if cfg["addition_embed_type"] == "text_time" or cfg["class_embed_type"] in ("timestep", "projection"):
        src = "add_embedding" if cfg["addition_embed_type"] == "text_time" else "class_embedding"
        table[f"{src}.linear_1"] = Entry("label_emb.0.0")
        table[f"{src}.linear_2"] = Entry("label_emb.0.2")
    elif cfg["num_class_embeds"] is not None:
        table["class_embedding"] = Entry("label_emb")

    idx = 1
    for lvl, btype in enumerate(down_types):
        for j in range(layers[lvl]):
            table[f"down_blocks.{lvl}.resnets.{j}"] = Entry(f"input_blocks.{idx}.0", RESNET_RENAMES)
            if "CrossAttn" in btype:
                table[f"down_blocks.{lvl}.attentions.{j}"] = Entry(f"input_blocks.{idx}.1")
            idx += 1
        if lvl < levels - 1:
            table[f"down_blocks.{lvl}.downsamplers.0.conv"] = Entry(f"input_blocks.{idx}.0.op")
            idx += 1

    mid_type = cfg["mid_block_type"]
    if mid_type is not None:
        table["mid_block.resnets.0"] = Entry("middle_block.0", RESNET_RENAMES)
        if "CrossAttn" in mid_type:
            table["mid_block.attentions.0"] = Entry("middle_block.1")
            table["mid_block.resnets.1"] = Entry("middle_block.2", RESNET_RENAMES)
        else:
            table["mid_block.resnets.1"] = Entry("middle_block.1", RESNET_RENAMES)

    up_layers = list(reversed(layers))
    idx = 0
    for lvl, btype in enumerate(up_types):
        n = up_layers[lvl] + 1
        for j in range(n):
            table[f"up_blocks.{lvl}.resnets.{j}"] = Entry(f"output_blocks.{idx}.0", RESNET_RENAMES)
            has_attn = "CrossAttn" in btype
            if has_attn:
                table[f"up_blocks.{lvl}.attentions.{j}"] = Entry(f"output_blocks.{idx}.1")
            if j == n - 1 and lvl < levels - 1:
                table[f"up_blocks.{lvl}.upsamplers.0.conv"] = Entry(
                    f"output_blocks.{idx}.{2 if has_attn else 1}.conv"
                )
            idx += 1
    return table


def _freeze(config: ConfigLike) -> str:
    return json.dumps(as_dict(config), sort_keys=True, default=str)


@lru_cache(maxsize=64)
def _pmap(frozen: str) -> PrefixMap:
    return PrefixMap(unet_prefix_table(json.loads(frozen)))


def unet_diffusers_key_to_ldm(key: str, config: ConfigLike) -> str:
    """One diffusers UNet key -> its LDM key (no prefix). Raises KeyError if the key is not in the layout."""
    return _pmap(_freeze(config)).to_ldm(key)[0]


def unet_ldm_key_to_diffusers(key: str, config: ConfigLike) -> str:
    """One LDM UNet key (no prefix) -> its diffusers key. Raises KeyError if unknown."""
    return _pmap(_freeze(config)).to_diffusers(key)[0]


@lru_cache(maxsize=16)
def _diffusers_keys(frozen: str) -> tuple[str, ...]:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        model = UNet2DConditionModel.from_config(json.loads(frozen))
    return tuple(model.state_dict().keys())


def unet_key_map(config: ConfigLike, keys: Iterable[str] | None = None) -> dict[str, str]:
    """Every diffusers UNet2DConditionModel parameter key -> LDM key (no ``model.diffusion_model.`` prefix).

    Without ``keys`` the diffusers key list is enumerated by building the model on the meta device (cached
    per config); pass ``keys`` (e.g. a state dict) to map exactly those. Raises KeyError for a key outside
    the layout the config describes.
    """
    frozen = _freeze(config)
    pmap = _pmap(frozen)
    return {k: pmap.to_ldm(k)[0] for k in (_diffusers_keys(frozen) if keys is None else keys)}


def unet_diffusers_to_ldm(sd: Mapping[str, torch.Tensor], config: ConfigLike) -> dict[str, torch.Tensor]:
    """Rename a diffusers UNet state dict to the LDM layout (no prefix). Tensors are shared, not copied."""
    return apply_map(sd, _pmap(_freeze(config)), to_ldm=True)


def unet_ldm_to_diffusers(sd: Mapping[str, torch.Tensor], config: ConfigLike) -> dict[str, torch.Tensor]:
    """Rename an LDM UNet state dict (keys without ``model.diffusion_model.``) to the diffusers layout."""
    return apply_map(sd, _pmap(_freeze(config)), to_ldm=False)
