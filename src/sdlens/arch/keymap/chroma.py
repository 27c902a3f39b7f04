"""Chroma transformer: diffusers ``ChromaTransformer2DModel`` <-> the lodestones original (BFL FLUX naming:
``double_blocks`` / ``single_blocks`` with fused q/k/v, ``txt_in`` / ``img_in``, ``distilled_guidance_layer``; no
per-block modulation). FLUX's relations without the modulations and embedders, plus the approximator. The
inverse of diffusers' ``convert_chroma_transformer_checkpoint_to_diffusers``, read off the shapes, so it holds at
any width (checked tensor for tensor in tests/test_families_b.py)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sdlens.arch.keymap._dit import DitMap, Rel, wb
from sdlens.arch.keymap.flux import RELS as FLUX_RELS

_G = "distilled_guidance_layer."
_NOT_IN_CHROMA = ("_mod.", "modulation", "time_in.", "vector_in.", "guidance_in.")
RELS: tuple[Rel, ...] = (
    *(r for r in FLUX_RELS if not any(s in r.original for s in _NOT_IN_CHROMA)),
    wb(f"{_G}in_proj.", f"{_G}in_proj."),
    wb(f"{_G}out_proj.", f"{_G}out_proj."),
    wb(f"{_G}layers.{{i}}.in_layer.", f"{_G}layers.{{i}}.linear_1."),
    wb(f"{_G}layers.{{i}}.out_layer.", f"{_G}layers.{{i}}.linear_2."),
    Rel(f"{_G}norms.{{i}}.scale", (f"{_G}norms.{{i}}.weight",)),
)
MAP = DitMap("chroma", RELS)


def chroma_diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return MAP.convert(sd, "original")


def chroma_original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return MAP.convert(sd, "diffusers")
