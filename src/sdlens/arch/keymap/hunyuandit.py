"""HunyuanDiT: Tencent's original ``blocks`` layout (hydit/modules/models.py) <-> diffusers HunyuanDiT2DModel.

The original fuses self-attention q/k/v (``attn1.Wqkv``) and cross-attention k/v (``attn2.kv_proj``), names
the norm before cross-attention ``norm3`` and the one before the MLP ``norm2`` (diffusers: the other way
round), and holds the final modulation as (shift, scale). diffusers ships no converter for it in the package
(its ``scripts/convert_hunyuandit_to_diffusers.py`` does the same renames); tests/test_keymap_dit.py checks the
map against the model itself: a state dict mapped both ways loads into HunyuanDiT2DModel unchanged.
"""

from __future__ import annotations

from sdlens.arch.keymap._dit import DitMap, Rel, wb

_B = "blocks.{i}."

RELS: tuple[Rel, ...] = (
    wb("mlp_t5.0.", "text_embedder.linear_1."),
    wb("mlp_t5.2.", "text_embedder.linear_2."),
    wb("x_embedder.proj.", "pos_embed.proj."),
    wb("t_embedder.mlp.0.", "time_extra_emb.timestep_embedder.linear_1."),
    wb("t_embedder.mlp.2.", "time_extra_emb.timestep_embedder.linear_2."),
    wb("pooler.", "time_extra_emb.pooler."),
    wb("style_embedder.", "time_extra_emb.style_embedder."),
    wb("extra_embedder.0.", "time_extra_emb.extra_embedder.linear_1."),
    wb("extra_embedder.2.", "time_extra_emb.extra_embedder.linear_2."),
    wb("final_layer.linear.", "proj_out."),
    wb("final_layer.adaLN_modulation.1.", "norm_out.linear.", swap=True),
    Rel("text_embedding_padding", ("text_embedding_padding",)),
    wb(f"{_B}default_modulation.1.", f"{_B}norm1.linear."),
    wb(f"{_B}norm1.", f"{_B}norm1.norm."),
    wb(f"{_B}attn1.Wqkv.", f"{_B}attn1.to_q.", f"{_B}attn1.to_k.", f"{_B}attn1.to_v."),
    wb(f"{_B}attn1.q_norm.", f"{_B}attn1.norm_q."),
    wb(f"{_B}attn1.k_norm.", f"{_B}attn1.norm_k."),
    wb(f"{_B}attn1.out_proj.", f"{_B}attn1.to_out.0."),
    wb(f"{_B}attn2.q_proj.", f"{_B}attn2.to_q."),
    wb(f"{_B}attn2.kv_proj.", f"{_B}attn2.to_k.", f"{_B}attn2.to_v."),
    wb(f"{_B}attn2.q_norm.", f"{_B}attn2.norm_q."),
    wb(f"{_B}attn2.k_norm.", f"{_B}attn2.norm_k."),
    wb(f"{_B}attn2.out_proj.", f"{_B}attn2.to_out.0."),
    wb(f"{_B}norm3.", f"{_B}norm2."),  # before cross-attention
    wb(f"{_B}norm2.", f"{_B}norm3."),  # before the MLP
    wb(f"{_B}mlp.fc1.", f"{_B}ff.net.0.proj."),
    wb(f"{_B}mlp.fc2.", f"{_B}ff.net.2."),
    wb(f"{_B}skip_norm.", f"{_B}skip_norm."),
    wb(f"{_B}skip_linear.", f"{_B}skip_linear."),
)
MAP = DitMap("hunyuandit", RELS)
