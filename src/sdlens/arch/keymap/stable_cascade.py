"""Stable Cascade: the original ``stage_c`` / ``stage_b`` files <-> diffusers ``StableCascadeUNet``.

The names agree except for attention (the original's ``nn.MultiheadAttention``: fused ``attn.in_proj_weight``
/ ``in_proj_bias`` and ``attn.out_proj``) and stage B's pooled-text mapper (original ``clip_mapper``, diffusers
``clip_txt_pooled_mapper``; stage C, without ``effnet_mapper``, keeps ``clip_txt_pooled_mapper``). Checked
against diffusers' ``convert_stable_cascade_unet_single_file_to_diffusers`` (tests).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sdlens.arch.keymap._dit import DitMap, Rel, wb

_A = "{p}.attention."
_STAGE_B = ("effnet_mapper.0.weight",) * 2  # the key stage B has and stage C lacks, in both layouts
RELS: tuple[Rel, ...] = (
    wb("clip_mapper.", "clip_txt_pooled_mapper.", present=_STAGE_B),
    wb(f"{_A}attn.out_proj.", f"{_A}to_out.0."),
    *(Rel(f"{_A}attn.in_proj_{p}", tuple(f"{_A}to_{n}.{p}" for n in "qkv")) for p in ("weight", "bias")),
    Rel("{p}", ("{p}",)),  # every other key: the same name
)
MAP = DitMap("stable_cascade", RELS)


def cascade_diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return MAP.convert(sd, "original")


def cascade_original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return MAP.convert(sd, "diffusers")
