"""Wan 2.1 transformer: diffusers ``WanTransformer3DModel`` <-> the Wan-Video original (``blocks.N.self_attn.q``,
``head.head``, ``img_emb.proj``). Keys only; the inverse of diffusers' ``convert_wan_transformer_to_diffusers``
(tests/test_families_b.py checks it tensor for tensor)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sdlens.arch.keymap._renames import PrefixRenames, rename_all

_ATTN = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o", "add_k_proj": "k_img", "add_v_proj": "v_img",
         "norm_added_k": "norm_k_img"}
_BLOCK = {
    "scale_shift_table": "modulation",
    "norm2": "norm3",  # diffusers' cross-attention norm is the original's norm3 (its norm2 has no weights)
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
    **{f"{d}.{a}": f"{o}.{b}" for d, o in (("attn1", "self_attn"), ("attn2", "cross_attn")) for a, b in _ATTN.items()},
    **{f"{d}.{n}": f"{o}.{n}" for d, o in (("attn1", "self_attn"), ("attn2", "cross_attn")) for n in ("norm_q", "norm_k")},
}
_TOP = {
    "scale_shift_table": "head.modulation",
    "proj_out": "head.head",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "condition_embedder.image_embedder.pos_embed": "img_emb.emb_pos",
}
WAN = PrefixRenames(_TOP, _BLOCK, ("blocks", "blocks"))


def wan_diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return rename_all(sd, WAN.forward)


def wan_original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return rename_all(sd, WAN.backward)
