"""AuraFlow: fal's ``double_layers`` / ``single_layers`` files <-> diffusers AuraFlowTransformer2DModel.

q/k/v are separate in both layouts; the final modulation ``modF`` is (shift, scale), diffusers' (scale, shift).
Checked against ``convert_auraflow_transformer_checkpoint_to_diffusers`` in tests/test_keymap_dit.py.
"""

from __future__ import annotations

from sdlens.arch.keymap._dit import DitMap, Rel, wb

_O, _D = "double_layers.{i}.", "joint_transformer_blocks.{i}."
_S, _SD = "single_layers.{i}.", "single_transformer_blocks.{i}."
_MLP = (("c_fc1", "linear_1"), ("c_fc2", "linear_2"), ("c_proj", "out_projection"))
_JOINT_ATTN = (
    ("w2q", "to_q"),
    ("w2k", "to_k"),
    ("w2v", "to_v"),
    ("w2o", "to_out.0"),
    ("w1q", "add_q_proj"),
    ("w1k", "add_k_proj"),
    ("w1v", "add_v_proj"),
    ("w1o", "to_add_out"),
)
_SINGLE_ATTN = (("w1q", "to_q"), ("w1k", "to_k"), ("w1v", "to_v"), ("w1o", "to_out.0"))

RELS: tuple[Rel, ...] = (
    Rel("register_tokens", ("register_tokens",)),
    Rel("positional_encoding", ("pos_embed.pos_embed",)),
    wb("init_x_linear.", "pos_embed.proj."),
    wb("cond_seq_linear.", "context_embedder."),
    wb("t_embedder.mlp.0.", "time_step_proj.linear_1."),
    wb("t_embedder.mlp.2.", "time_step_proj.linear_2."),
    *(
        wb(f"{_O}{o}.{k}.", f"{_D}{d}.{v}.")
        for o, d in (("mlpX", "ff"), ("mlpC", "ff_context"))
        for k, v in _MLP
    ),
    wb(f"{_O}modX.1.", f"{_D}norm1.linear."),
    wb(f"{_O}modC.1.", f"{_D}norm1_context.linear."),
    *(wb(f"{_O}attn.{k}.", f"{_D}attn.{v}.") for k, v in _JOINT_ATTN),
    *(wb(f"{_S}mlp.{k}.", f"{_SD}ff.{v}.") for k, v in _MLP),
    wb(f"{_S}modCX.1.", f"{_SD}norm1.linear."),
    *(wb(f"{_S}attn.{k}.", f"{_SD}attn.{v}.") for k, v in _SINGLE_ATTN),
    wb("final_linear.", "proj_out."),
    wb("modF.1.", "norm_out.linear.", swap=True),
)
MAP = DitMap("auraflow", RELS)
