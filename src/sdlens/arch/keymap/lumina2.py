"""Lumina-Image 2.0: Alpha-VLLM original (NextDiT: fused ``attention.qkv``, ``w1``/``w2``/``w3``,
``adaLN_modulation``) <-> diffusers ``Lumina2Transformer2DModel``. The fused qkv holds q (heads x head_dim rows)
then k and v (kv_heads x head_dim rows each): grouped-query attention, so the split needs the sizes.
Checked against diffusers' ``convert_lumina2_to_diffusers`` (tests)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sdlens.arch.keymap.fused import Rule, fuse, split

_ANY = r"(?P<b>(?:layers|noise_refiner|context_refiner)\.\d+)\."
_MOD = r"(?P<b>(?:layers|noise_refiner)\.\d+)\."  # the modulated layers (context_refiner has no adaLN)
_CTX = r"(?P<b>context_refiner\.\d+)\."
_WB = r"(?P<p>weight|bias)"
_QKV = r"\g<b>.attention.qkv.weight"
# (diffusers regex, original template), and the reverse (original regex, diffusers template)
_PAIRS = (
    (rf"x_embedder\.{_WB}", r"x_embedder.\g<p>", rf"x_embedder\.{_WB}", r"x_embedder.\g<p>"),
    (rf"time_caption_embed\.timestep_embedder\.linear_1\.{_WB}", r"t_embedder.mlp.0.\g<p>",
     rf"t_embedder\.mlp\.0\.{_WB}", r"time_caption_embed.timestep_embedder.linear_1.\g<p>"),
    (rf"time_caption_embed\.timestep_embedder\.linear_2\.{_WB}", r"t_embedder.mlp.2.\g<p>",
     rf"t_embedder\.mlp\.2\.{_WB}", r"time_caption_embed.timestep_embedder.linear_2.\g<p>"),
    (rf"time_caption_embed\.caption_embedder\.(?P<i>\d)\.{_WB}", r"cap_embedder.\g<i>.\g<p>",
     rf"cap_embedder\.(?P<i>\d)\.{_WB}", r"time_caption_embed.caption_embedder.\g<i>.\g<p>"),
    (rf"{_ANY}attn\.to_out\.0\.weight", r"\g<b>.attention.out.weight",
     rf"{_ANY}attention\.out\.weight", r"\g<b>.attn.to_out.0.weight"),
    (rf"{_ANY}attn\.norm_(?P<n>q|k)\.weight", r"\g<b>.attention.\g<n>_norm.weight",
     rf"{_ANY}attention\.(?P<n>q|k)_norm\.weight", r"\g<b>.attn.norm_\g<n>.weight"),
    (rf"{_ANY}feed_forward\.linear_(?P<i>[123])\.weight", r"\g<b>.feed_forward.w\g<i>.weight",
     rf"{_ANY}feed_forward\.w(?P<i>[123])\.weight", r"\g<b>.feed_forward.linear_\g<i>.weight"),
    (rf"{_ANY}ffn_norm(?P<i>[12])\.weight", r"\g<b>.ffn_norm\g<i>.weight",
     rf"{_ANY}ffn_norm(?P<i>[12])\.weight", r"\g<b>.ffn_norm\g<i>.weight"),
    (rf"{_MOD}norm1\.linear\.{_WB}", r"\g<b>.adaLN_modulation.1.\g<p>",
     rf"{_MOD}adaLN_modulation\.1\.{_WB}", r"\g<b>.norm1.linear.\g<p>"),
    (rf"{_MOD}norm1\.norm\.weight", r"\g<b>.attention_norm1.weight",
     rf"{_MOD}attention_norm1\.weight", r"\g<b>.norm1.norm.weight"),
    (rf"{_CTX}norm1\.weight", r"\g<b>.attention_norm1.weight",
     rf"{_CTX}attention_norm1\.weight", r"\g<b>.norm1.weight"),
    (rf"{_ANY}norm2\.weight", r"\g<b>.attention_norm2.weight",
     rf"{_ANY}attention_norm2\.weight", r"\g<b>.norm2.weight"),
    (rf"norm_out\.linear_1\.{_WB}", r"final_layer.adaLN_modulation.1.\g<p>",
     rf"final_layer\.adaLN_modulation\.1\.{_WB}", r"norm_out.linear_1.\g<p>"),
    (rf"norm_out\.linear_2\.{_WB}", r"final_layer.linear.\g<p>",
     rf"final_layer\.linear\.{_WB}", r"norm_out.linear_2.\g<p>"),
)
TO_ORIGINAL = (
    *(Rule(d, o) for d, o, _, _ in _PAIRS),
    Rule(rf"{_ANY}attn\.to_(?P<part>q|k|v)\.weight", _QKV, ("q", "k", "v")),
)
_SPLIT = r"\g<b>.attn.to_{part}.weight"
TO_DIFFUSERS = (
    *(Rule(o, d) for _, _, o, d in _PAIRS),
    Rule(rf"{_ANY}attention\.qkv\.weight", _SPLIT, ("q", "k", "v")),
)
ORIGINAL_ONLY = ("norm_final.weight",)  # an unused RMSNorm of the original; diffusers' converter drops it


def lumina2_diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return fuse(sd, TO_ORIGINAL)


def lumina2_original_to_diffusers(sd: Mapping[str, torch.Tensor], heads: int = 24, kv_heads: int = 8,
                                  head_dim: int = 96) -> dict[str, torch.Tensor]:
    """``heads`` / ``kv_heads`` / ``head_dim``: the released model's (2304 = 24 x 96) unless given."""
    rows = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
    return split({k: v for k, v in sd.items() if k not in ORIGINAL_ONLY}, TO_DIFFUSERS, {_SPLIT: rows})
