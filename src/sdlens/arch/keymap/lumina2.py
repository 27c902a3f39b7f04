"""Lumina-Image 2.0: Alpha-VLLM original (NextDiT: fused ``attention.qkv``, ``w1``/``w2``/``w3``,
``adaLN_modulation``) <-> diffusers ``Lumina2Transformer2DModel``. The fused qkv holds q (heads x head_dim rows)
then k and v (kv_heads x head_dim rows each): grouped-query attention, so the split needs the sizes — read off
the shapes (q's rows are ``attention.out``'s input width) or given. Checked against diffusers'
``convert_lumina2_to_diffusers`` (tests)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sdlens.arch.keymap._dit import DitMap, Rel, Shape, SplitFn, wb


def _qkv_from_shapes(key: str, shape: Shape, shapes: Mapping[str, Shape]) -> list[int]:
    out = tuple(shapes.get(key.replace(".attention.qkv.weight", ".attention.out.weight"), ()))
    q = out[1] if len(out) == 2 else shape[0] // 3
    return [q, (shape[0] - q) // 2, (shape[0] - q) // 2]


def _block(b: str, modulated: bool, split: SplitFn) -> tuple[Rel, ...]:
    """One group of blocks (``layers`` / ``noise_refiner`` / ``context_refiner``, the last without adaLN)."""
    o = f"{b}.{{i}}."
    norm1 = (
        (wb(f"{o}adaLN_modulation.1.", f"{o}norm1.linear."), wb(f"{o}attention_norm1.", f"{o}norm1.norm."))
        if modulated
        else (wb(f"{o}attention_norm1.", f"{o}norm1."),)
    )
    return (
        Rel(f"{o}attention.qkv.weight", tuple(f"{o}attn.to_{n}.weight" for n in "qkv"), split=split),
        wb(f"{o}attention.out.", f"{o}attn.to_out.0."),
        *(wb(f"{o}attention.{n}_norm.", f"{o}attn.norm_{n}.") for n in "qk"),
        *(wb(f"{o}feed_forward.w{n}.", f"{o}feed_forward.linear_{n}.") for n in "123"),
        *(wb(f"{o}ffn_norm{n}.", f"{o}ffn_norm{n}.") for n in "12"),
        *norm1,
        wb(f"{o}attention_norm2.", f"{o}norm2."),
    )


def _rels(split: SplitFn) -> tuple[Rel, ...]:
    return (
        wb("x_embedder.", "x_embedder."),
        wb("t_embedder.mlp.0.", "time_caption_embed.timestep_embedder.linear_1."),
        wb("t_embedder.mlp.2.", "time_caption_embed.timestep_embedder.linear_2."),
        wb("cap_embedder.{i}.", "time_caption_embed.caption_embedder.{i}."),
        *_block("layers", True, split),
        *_block("noise_refiner", True, split),
        *_block("context_refiner", False, split),
        wb("final_layer.adaLN_modulation.1.", "norm_out.linear_1."),
        wb("final_layer.linear.", "norm_out.linear_2."),
    )


ORIGINAL_ONLY = ("norm_final.weight",)  # an unused RMSNorm of the original; diffusers' converter drops it
MAP = DitMap("lumina2", _rels(_qkv_from_shapes), original_only=ORIGINAL_ONLY)


def lumina2_diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return MAP.convert(sd, "original")


def lumina2_original_to_diffusers(
    sd: Mapping[str, torch.Tensor], heads: int = 24, kv_heads: int = 8, head_dim: int = 96
) -> dict[str, torch.Tensor]:
    """``heads`` / ``kv_heads`` / ``head_dim``: the released model's (2304 = 24 x 96) unless given."""
    rows = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    fixed = DitMap("lumina2", _rels(lambda _k, _s, _all: rows), original_only=ORIGINAL_ONLY)
    return fixed.convert({k: v for k, v in sd.items() if k not in ORIGINAL_ONLY}, "diffusers")
