"""PixArt-α / -Σ: the original ``blocks`` / ``t_block`` layout (PixArt, PixArtMS) <-> diffusers
PixArtTransformer2DModel.

The original fuses self-attention q/k/v (``attn.qkv``) and cross-attention k/v (``cross_attn.kv_linear``).
``y_embedder.y_embedding`` (the learned null caption) has no diffusers counterpart: it stays outside the map.
diffusers ships no converter for it in the package (``scripts/convert_pixart_*_to_diffusers.py`` do the same
renames); tests/test_keymap_dit.py checks the map against the model itself.
"""

from __future__ import annotations

from sdlens.arch.keymap._dit import DitMap, Rel, wb

_B, _D = "blocks.{i}.", "transformer_blocks.{i}."
NULL_CAPTION = "y_embedder.y_embedding"

RELS: tuple[Rel, ...] = (
    wb("x_embedder.proj.", "pos_embed.proj."),
    wb("y_embedder.y_proj.fc1.", "caption_projection.linear_1."),
    wb("y_embedder.y_proj.fc2.", "caption_projection.linear_2."),
    wb("t_embedder.mlp.0.", "adaln_single.emb.timestep_embedder.linear_1."),
    wb("t_embedder.mlp.2.", "adaln_single.emb.timestep_embedder.linear_2."),
    wb("csize_embedder.mlp.0.", "adaln_single.emb.resolution_embedder.linear_1."),
    wb("csize_embedder.mlp.2.", "adaln_single.emb.resolution_embedder.linear_2."),
    wb("ar_embedder.mlp.0.", "adaln_single.emb.aspect_ratio_embedder.linear_1."),
    wb("ar_embedder.mlp.2.", "adaln_single.emb.aspect_ratio_embedder.linear_2."),
    wb("t_block.1.", "adaln_single.linear."),
    wb("final_layer.linear.", "proj_out."),
    Rel("final_layer.scale_shift_table", ("scale_shift_table",)),
    Rel(f"{_B}scale_shift_table", (f"{_D}scale_shift_table",)),
    wb(f"{_B}attn.qkv.", f"{_D}attn1.to_q.", f"{_D}attn1.to_k.", f"{_D}attn1.to_v."),
    wb(f"{_B}attn.proj.", f"{_D}attn1.to_out.0."),
    wb(f"{_B}cross_attn.q_linear.", f"{_D}attn2.to_q."),
    wb(f"{_B}cross_attn.kv_linear.", f"{_D}attn2.to_k.", f"{_D}attn2.to_v."),
    wb(f"{_B}cross_attn.proj.", f"{_D}attn2.to_out.0."),
    wb(f"{_B}mlp.fc1.", f"{_D}ff.net.0.proj."),
    wb(f"{_B}mlp.fc2.", f"{_D}ff.net.2."),
)
MAP = DitMap("pixart", RELS, original_only=(NULL_CAPTION,))
