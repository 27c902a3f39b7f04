"""SD3 / SD3.5 MMDiT (and MMDiT-X): Stability's ``joint_blocks`` single files <-> diffusers SD3Transformer2DModel.

Keys carry no ``model.diffusion_model.`` prefix. The original fuses q/k/v (``attn.qkv``); the final layer's
and the last context block's modulations are (shift, scale) where diffusers' AdaLayerNormContinuous holds
(scale, shift). Checked against ``diffusers.loaders.single_file_utils.convert_sd3_transformer_checkpoint_to_diffusers``
in tests/test_keymap_dit.py.
"""

from __future__ import annotations

from sdlens.arch.keymap._dit import DitMap, Rel, wb

_X, _C, _D = "joint_blocks.{i}.x_block.", "joint_blocks.{i}.context_block.", "transformer_blocks.{i}."
_QKV = ("to_q", "to_k", "to_v")

RELS: tuple[Rel, ...] = (
    Rel("pos_embed", ("pos_embed.pos_embed",)),
    wb("x_embedder.proj.", "pos_embed.proj."),
    wb("t_embedder.mlp.0.", "time_text_embed.timestep_embedder.linear_1."),
    wb("t_embedder.mlp.2.", "time_text_embed.timestep_embedder.linear_2."),
    wb("y_embedder.mlp.0.", "time_text_embed.text_embedder.linear_1."),
    wb("y_embedder.mlp.2.", "time_text_embed.text_embedder.linear_2."),
    wb("context_embedder.", "context_embedder."),
    wb("final_layer.linear.", "proj_out."),
    wb("final_layer.adaLN_modulation.1.", "norm_out.linear.", swap=True),
    wb(f"{_X}attn.qkv.", *(f"{_D}attn.{n}." for n in _QKV)),
    wb(f"{_C}attn.qkv.", *(f"{_D}attn.add_{n[-1]}_proj." for n in _QKV)),
    wb(f"{_X}attn.proj.", f"{_D}attn.to_out.0."),
    wb(f"{_X}adaLN_modulation.1.", f"{_D}norm1.linear."),
    wb(f"{_X}mlp.fc1.", f"{_D}ff.net.0.proj."),
    wb(f"{_X}mlp.fc2.", f"{_D}ff.net.2."),
    # the last block is context_pre_only: no context attention output / MLP, an AdaLayerNormContinuous
    wb(
        f"{_C}adaLN_modulation.1.",
        f"{_D}norm1_context.linear.",
        swap=True,
        absent=(f"{_C}attn.proj.weight", f"{_D}attn.to_add_out.weight"),
    ),
    wb(f"{_C}adaLN_modulation.1.", f"{_D}norm1_context.linear."),
    wb(f"{_C}attn.proj.", f"{_D}attn.to_add_out."),
    wb(f"{_C}mlp.fc1.", f"{_D}ff_context.net.0.proj."),
    wb(f"{_C}mlp.fc2.", f"{_D}ff_context.net.2."),
    # MMDiT-X (SD3.5 medium) second self-attention
    wb(f"{_X}attn2.qkv.", *(f"{_D}attn2.{n}." for n in _QKV)),
    wb(f"{_X}attn2.proj.", f"{_D}attn2.to_out.0."),
    # qk_norm="rms_norm" (SD3.5)
    wb(f"{_X}attn.ln_q.", f"{_D}attn.norm_q."),
    wb(f"{_X}attn.ln_k.", f"{_D}attn.norm_k."),
    wb(f"{_C}attn.ln_q.", f"{_D}attn.norm_added_q."),
    wb(f"{_C}attn.ln_k.", f"{_D}attn.norm_added_k."),
    wb(f"{_X}attn2.ln_q.", f"{_D}attn2.norm_q."),
    wb(f"{_X}attn2.ln_k.", f"{_D}attn2.norm_k."),
)
MAP = DitMap("mmdit", RELS)
