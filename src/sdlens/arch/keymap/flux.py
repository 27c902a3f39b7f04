"""FLUX.1: Black Forest Labs' ``double_blocks`` / ``single_blocks`` files <-> diffusers FluxTransformer2DModel.

The original fuses q/k/v (``img_attn.qkv`` / ``txt_attn.qkv``) and, in single blocks, q/k/v and the MLP input
(``linear1`` = to_q, to_k, to_v, proj_mlp); the final modulation is (shift, scale), diffusers' (scale, shift).
Checked against ``convert_flux_transformer_checkpoint_to_diffusers`` in tests/test_keymap_dit.py.
"""

from __future__ import annotations

from collections.abc import Mapping

from sdlens.arch.keymap._dit import DitMap, Rel, Shape, wb

_O, _D = "double_blocks.{i}.", "transformer_blocks.{i}."
_S, _SD = "single_blocks.{i}.", "single_transformer_blocks.{i}."


def _linear1(key: str, shape: Shape, shapes: Mapping[str, Shape]) -> list[int]:
    """linear1 rows: q, k, v (hidden each, hidden = linear2's output width) and the MLP input (the rest)."""
    hidden = tuple(shapes.get(key.rsplit(".linear1.", 1)[0] + ".linear2.weight", (0,)))[0]
    return [hidden, hidden, hidden, shape[0] - 3 * hidden]


_EMB = (
    ("time_in", "timestep_embedder"),
    ("vector_in", "text_embedder"),
    ("guidance_in", "guidance_embedder"),
)

RELS: tuple[Rel, ...] = (
    *(
        r
        for o, d in _EMB
        for r in (
            wb(f"{o}.in_layer.", f"time_text_embed.{d}.linear_1."),
            wb(f"{o}.out_layer.", f"time_text_embed.{d}.linear_2."),
        )
    ),
    wb("txt_in.", "context_embedder."),
    wb("img_in.", "x_embedder."),
    wb(f"{_O}img_mod.lin.", f"{_D}norm1.linear."),
    wb(f"{_O}txt_mod.lin.", f"{_D}norm1_context.linear."),
    wb(f"{_O}img_attn.qkv.", f"{_D}attn.to_q.", f"{_D}attn.to_k.", f"{_D}attn.to_v."),
    wb(f"{_O}txt_attn.qkv.", f"{_D}attn.add_q_proj.", f"{_D}attn.add_k_proj.", f"{_D}attn.add_v_proj."),
    wb(f"{_O}img_attn.proj.", f"{_D}attn.to_out.0."),
    wb(f"{_O}txt_attn.proj.", f"{_D}attn.to_add_out."),
    wb(f"{_O}img_mlp.0.", f"{_D}ff.net.0.proj."),
    wb(f"{_O}img_mlp.2.", f"{_D}ff.net.2."),
    wb(f"{_O}txt_mlp.0.", f"{_D}ff_context.net.0.proj."),
    wb(f"{_O}txt_mlp.2.", f"{_D}ff_context.net.2."),
    Rel(f"{_O}img_attn.norm.query_norm.scale", (f"{_D}attn.norm_q.weight",)),
    Rel(f"{_O}img_attn.norm.key_norm.scale", (f"{_D}attn.norm_k.weight",)),
    Rel(f"{_O}txt_attn.norm.query_norm.scale", (f"{_D}attn.norm_added_q.weight",)),
    Rel(f"{_O}txt_attn.norm.key_norm.scale", (f"{_D}attn.norm_added_k.weight",)),
    wb(f"{_S}modulation.lin.", f"{_SD}norm.linear."),
    wb(
        f"{_S}linear1.",
        f"{_SD}attn.to_q.",
        f"{_SD}attn.to_k.",
        f"{_SD}attn.to_v.",
        f"{_SD}proj_mlp.",
        split=_linear1,
    ),
    wb(f"{_S}linear2.", f"{_SD}proj_out."),
    Rel(f"{_S}norm.query_norm.scale", (f"{_SD}attn.norm_q.weight",)),
    Rel(f"{_S}norm.key_norm.scale", (f"{_SD}attn.norm_k.weight",)),
    wb("final_layer.linear.", "proj_out."),
    wb("final_layer.adaLN_modulation.1.", "norm_out.linear.", swap=True),
)
MAP = DitMap("flux", RELS)
