"""SANA: NVlabs original (``blocks``, fused ``attn.qkv`` / ``cross_attn.kv_linear``) <-> diffusers
``SanaTransformer2DModel``. Checked against diffusers' ``convert_sana_transformer_to_diffusers`` (tests)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sdlens.arch.keymap.fused import Rule, fuse, split

_B = r"transformer_blocks\.(\d+)\."
_O = r"blocks\.(\d+)\."
# (diffusers regex, original template) for the plain renames
_PLAIN = (
    (r"patch_embed\.proj\.(weight|bias)", r"x_embedder.proj.\1"),
    (r"time_embed\.emb\.timestep_embedder\.linear_1\.(weight|bias)", r"t_embedder.mlp.0.\1"),
    (r"time_embed\.emb\.timestep_embedder\.linear_2\.(weight|bias)", r"t_embedder.mlp.2.\1"),
    (r"time_embed\.linear\.(weight|bias)", r"t_block.1.\1"),
    (r"caption_projection\.linear_1\.(weight|bias)", r"y_embedder.y_proj.fc1.\1"),
    (r"caption_projection\.linear_2\.(weight|bias)", r"y_embedder.y_proj.fc2.\1"),
    (r"caption_norm\.weight", r"attention_y_norm.weight"),
    (rf"{_B}scale_shift_table", r"blocks.\1.scale_shift_table"),
    (rf"{_B}attn1\.to_out\.0\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (rf"{_B}attn1\.norm_q\.weight", r"blocks.\1.attn.q_norm.weight"),
    (rf"{_B}attn1\.norm_k\.weight", r"blocks.\1.attn.k_norm.weight"),
    (rf"{_B}attn2\.to_q\.(weight|bias)", r"blocks.\1.cross_attn.q_linear.\2"),
    (rf"{_B}attn2\.to_out\.0\.(weight|bias)", r"blocks.\1.cross_attn.proj.\2"),
    (rf"{_B}attn2\.norm_q\.weight", r"blocks.\1.cross_attn.q_norm.weight"),
    (rf"{_B}attn2\.norm_k\.weight", r"blocks.\1.cross_attn.k_norm.weight"),
    (rf"{_B}ff\.conv_inverted\.(weight|bias)", r"blocks.\1.mlp.inverted_conv.conv.\2"),
    (rf"{_B}ff\.conv_depth\.(weight|bias)", r"blocks.\1.mlp.depth_conv.conv.\2"),
    (rf"{_B}ff\.conv_point\.weight", r"blocks.\1.mlp.point_conv.conv.weight"),
    (r"proj_out\.(weight|bias)", r"final_layer.linear.\1"),
    (r"scale_shift_table", r"final_layer.scale_shift_table"),
)
TO_ORIGINAL = (
    *(Rule(d, o) for d, o in _PLAIN),
    Rule(rf"{_B}attn1\.to_(?P<part>q|k|v)\.weight", r"blocks.\1.attn.qkv.weight", ("q", "k", "v")),
    Rule(rf"{_B}attn2\.to_(?P<part>k|v)\.(weight|bias)", r"blocks.\1.cross_attn.kv_linear.\3", ("k", "v")),
)


def _reverse(pattern: str) -> str:
    """An original template as a regex (its ``\\N`` groups become captures) — only for the plain rules."""
    rx = pattern.replace(".", r"\.")
    rx = rx.replace(r"\1", "(\\d+)" if pattern.startswith("blocks.") else "(weight|bias)")
    return rx.replace(r"\2", "(weight|bias)")


def _template(pattern: str) -> str:
    """A diffusers regex as a template for ``Match.expand`` (the groups in the same order)."""
    out, n = pattern, 0
    for grp in (rf"{_B}", r"(weight|bias)"):
        while grp in out:
            n += 1
            out = out.replace(grp, f"transformer_blocks.\\{n}." if grp == _B else f"\\{n}", 1)
    return out.replace("\\.", ".")


TO_DIFFUSERS = (
    *(Rule(_reverse(o), _template(d)) for d, o in _PLAIN),
    Rule(rf"{_O}attn\.qkv\.weight", r"transformer_blocks.\1.attn1.to_{part}.weight", ("q", "k", "v")),
    Rule(rf"{_O}cross_attn\.kv_linear\.(weight|bias)", r"transformer_blocks.\1.attn2.to_{part}.\2", ("k", "v")),
)
# keys of the original that diffusers drops: the fixed sin-cos table and the learned null caption
ORIGINAL_ONLY = ("pos_embed", "y_embedder.y_embedding")


def sana_diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return fuse(sd, TO_ORIGINAL)


def sana_original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return split({k: v for k, v in sd.items() if k not in ORIGINAL_ONLY}, TO_DIFFUSERS)
