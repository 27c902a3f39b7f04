"""LTX-Video transformer: diffusers ``LTXVideoTransformer3DModel`` <-> the Lightricks original (``patchify_proj``,
``adaln_single``, ``attn1.q_norm``); every other key has the same name. The inverse of diffusers'
``convert_ltx_transformer_checkpoint_to_diffusers`` (checked tensor for tensor in tests/test_families_b.py)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sdlens.arch.keymap._dit import DitMap, Rel, wb

RELS: tuple[Rel, ...] = (
    wb("patchify_proj.", "proj_in."),
    wb("adaln_single.", "time_embed."),
    *(
        wb(f"transformer_blocks.{{i}}.{a}.{o}.", f"transformer_blocks.{{i}}.{a}.{d}.")
        for a in ("attn1", "attn2")
        for d, o in (("norm_q", "q_norm"), ("norm_k", "k_norm"))
    ),
    Rel("{p}", ("{p}",)),
)
MAP = DitMap("ltx_video", RELS)


def ltx_diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return MAP.convert(sd, "original")


def ltx_original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return MAP.convert(sd, "diffusers")
