"""SANA: NVlabs original (``blocks``, fused ``attn.qkv`` / ``cross_attn.kv_linear``) <-> diffusers
``SanaTransformer2DModel``. Checked against diffusers' ``convert_sana_transformer_to_diffusers`` (tests)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sdlens.arch.keymap._dit import DitMap, Rel, wb

_O, _D = "blocks.{i}.", "transformer_blocks.{i}."
RELS: tuple[Rel, ...] = (
    wb("x_embedder.proj.", "patch_embed.proj."),
    wb("t_embedder.mlp.0.", "time_embed.emb.timestep_embedder.linear_1."),
    wb("t_embedder.mlp.2.", "time_embed.emb.timestep_embedder.linear_2."),
    wb("t_block.1.", "time_embed.linear."),
    wb("y_embedder.y_proj.fc1.", "caption_projection.linear_1."),
    wb("y_embedder.y_proj.fc2.", "caption_projection.linear_2."),
    wb("attention_y_norm.", "caption_norm."),
    Rel(f"{_O}scale_shift_table", (f"{_D}scale_shift_table",)),
    wb(f"{_O}attn.qkv.", f"{_D}attn1.to_q.", f"{_D}attn1.to_k.", f"{_D}attn1.to_v."),
    wb(f"{_O}attn.proj.", f"{_D}attn1.to_out.0."),
    wb(f"{_O}attn.q_norm.", f"{_D}attn1.norm_q."),
    wb(f"{_O}attn.k_norm.", f"{_D}attn1.norm_k."),
    wb(f"{_O}cross_attn.q_linear.", f"{_D}attn2.to_q."),
    wb(f"{_O}cross_attn.kv_linear.", f"{_D}attn2.to_k.", f"{_D}attn2.to_v."),
    wb(f"{_O}cross_attn.proj.", f"{_D}attn2.to_out.0."),
    wb(f"{_O}cross_attn.q_norm.", f"{_D}attn2.norm_q."),
    wb(f"{_O}cross_attn.k_norm.", f"{_D}attn2.norm_k."),
    wb(f"{_O}mlp.inverted_conv.conv.", f"{_D}ff.conv_inverted."),
    wb(f"{_O}mlp.depth_conv.conv.", f"{_D}ff.conv_depth."),
    wb(f"{_O}mlp.point_conv.conv.", f"{_D}ff.conv_point."),
    wb("final_layer.linear.", "proj_out."),
    Rel("final_layer.scale_shift_table", ("scale_shift_table",)),
)
# keys of the original that diffusers drops: the fixed sin-cos table and the learned null caption
ORIGINAL_ONLY = ("pos_embed", "y_embedder.y_embedding")
MAP = DitMap("sana", RELS, original_only=ORIGINAL_ONLY)


def sana_diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return MAP.convert(sd, "original")


def sana_original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return MAP.convert({k: v for k, v in sd.items() if k not in ORIGINAL_ONLY}, "diffusers")
