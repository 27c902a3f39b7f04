"""Wan 2.1 transformer: diffusers ``WanTransformer3DModel`` <-> the Wan-Video original (``blocks.N.self_attn.q``,
``head.head``, ``img_emb.proj``); every other key has the same name. The inverse of diffusers'
``convert_wan_transformer_to_diffusers`` (tests/test_families_b.py checks it tensor for tensor)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sdlens.arch.keymap._dit import DitMap, Rel, wb

_ATTN = (
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "o"),
    ("add_k_proj", "k_img"),
    ("add_v_proj", "v_img"),
    ("norm_added_k", "norm_k_img"),
    ("norm_q", "norm_q"),
    ("norm_k", "norm_k"),
)
_BLOCK = (  # (diffusers, original) inside blocks.N.
    ("scale_shift_table", "modulation"),
    ("norm2", "norm3"),  # diffusers' cross-attention norm is the original's norm3 (its norm2 has no weights)
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    *(
        (f"{d}.{a}", f"{o}.{b}")
        for d, o in (("attn1", "self_attn"), ("attn2", "cross_attn"))
        for a, b in _ATTN
    ),
)
_TOP = (
    ("proj_out", "head.head"),
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
)
RELS: tuple[Rel, ...] = (
    Rel("blocks.{i}.modulation", ("blocks.{i}.scale_shift_table",)),
    *(wb(f"blocks.{{i}}.{o}.", f"blocks.{{i}}.{d}.") for d, o in _BLOCK[1:]),
    Rel("head.modulation", ("scale_shift_table",)),
    Rel("img_emb.emb_pos", ("condition_embedder.image_embedder.pos_embed",)),
    *(wb(f"{o}.", f"{d}.") for d, o in _TOP),
    Rel("{p}", ("{p}",)),
)
MAP = DitMap("wan", RELS)


def wan_diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return MAP.convert(sd, "original")


def wan_original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return MAP.convert(sd, "diffusers")
