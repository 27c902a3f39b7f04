"""LTX-Video transformer: diffusers ``LTXVideoTransformer3DModel`` <-> the Lightricks original (``patchify_proj``,
``adaln_single``, ``attn1.q_norm``). Keys only; the inverse of diffusers'
``convert_ltx_transformer_checkpoint_to_diffusers`` (checked tensor for tensor in tests/test_families_b.py)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sdlens.arch.keymap._renames import PrefixRenames, rename_all

LTX = PrefixRenames(
    {"proj_in": "patchify_proj", "time_embed": "adaln_single"},
    {f"{a}.{d}": f"{a}.{o}" for a in ("attn1", "attn2") for d, o in (("norm_q", "q_norm"), ("norm_k", "k_norm"))},
    ("transformer_blocks", "transformer_blocks"),
)


def ltx_diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return rename_all(sd, LTX.forward)


def ltx_original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return rename_all(sd, LTX.backward)
