"""Chroma transformer: diffusers ``ChromaTransformer2DModel`` <-> the lodestones original (BFL FLUX naming:
``double_blocks`` / ``single_blocks`` with fused q/k/v, ``txt_in`` / ``img_in``, ``distilled_guidance_layer``; no
per-block modulation). The inverse of diffusers' ``convert_chroma_transformer_checkpoint_to_diffusers``, but read
off the shapes, so it holds at any width (checked tensor for tensor in tests/test_families_b.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

_APPROX = (("linear_1", "in_layer"), ("linear_2", "out_layer"))
_DOUBLE = (  # diffusers (in the block) -> original, plain renames
    ("attn.to_out.0", "img_attn.proj"), ("attn.to_add_out", "txt_attn.proj"),
    ("ff.net.0.proj", "img_mlp.0"), ("ff.net.2", "img_mlp.2"),
    ("ff_context.net.0.proj", "txt_mlp.0"), ("ff_context.net.2", "txt_mlp.2"),
)
_DOUBLE_NORMS = (("attn.norm_q", "img_attn.norm.query_norm"), ("attn.norm_k", "img_attn.norm.key_norm"),
                 ("attn.norm_added_q", "txt_attn.norm.query_norm"), ("attn.norm_added_k", "txt_attn.norm.key_norm"))
_SINGLE_NORMS = (("attn.norm_q", "norm.query_norm"), ("attn.norm_k", "norm.key_norm"))
_TOP = (("context_embedder", "txt_in"), ("x_embedder", "img_in"), ("proj_out", "final_layer.linear"),
        ("distilled_guidance_layer.in_proj", "distilled_guidance_layer.in_proj"),
        ("distilled_guidance_layer.out_proj", "distilled_guidance_layer.out_proj"))


def _ids(sd: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    rx = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


class _Move:
    """Copies tensors from ``src`` to a new dict and checks that every source key was used once."""

    def __init__(self, src: Mapping[str, torch.Tensor]):
        self.src, self.out, self.used = src, {}, set()

    def take(self, key: str) -> torch.Tensor:
        if key in self.used:  # pragma: no cover - a table typo
            raise KeyError(f"{key!r} used twice")
        self.used.add(key)
        return self.src[key]

    def put(self, dst: str, src: str) -> None:
        self.out[dst] = self.take(src)

    def done(self) -> dict[str, torch.Tensor]:
        left = sorted(set(self.src) - self.used)
        if left:
            raise KeyError(f"Chroma key map: keys it does not know: {', '.join(left[:5])}")
        return self.out


def chroma_diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    m = _Move(sd)
    for p in ("weight", "bias"):
        for d, o in _TOP:
            m.put(f"{o}.{p}", f"{d}.{p}")
    for i in _ids(sd, "distilled_guidance_layer.layers"):
        for p in ("weight", "bias"):
            for d, o in _APPROX:
                m.put(f"distilled_guidance_layer.layers.{i}.{o}.{p}", f"distilled_guidance_layer.layers.{i}.{d}.{p}")
        m.put(f"distilled_guidance_layer.norms.{i}.scale", f"distilled_guidance_layer.norms.{i}.weight")
    for i in _ids(sd, "transformer_blocks"):
        d, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for p in ("weight", "bias"):
            m.out[f"{o}img_attn.qkv.{p}"] = torch.cat([m.take(f"{d}attn.to_{n}.{p}") for n in "qkv"])
            m.out[f"{o}txt_attn.qkv.{p}"] = torch.cat([m.take(f"{d}attn.add_{n}_proj.{p}") for n in "qkv"])
            for a, b in _DOUBLE:
                m.put(f"{o}{b}.{p}", f"{d}{a}.{p}")
        for a, b in _DOUBLE_NORMS:
            m.put(f"{o}{b}.scale", f"{d}{a}.weight")
    for i in _ids(sd, "single_transformer_blocks"):
        d, o = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for p in ("weight", "bias"):
            m.out[f"{o}linear1.{p}"] = torch.cat([m.take(f"{d}attn.to_{n}.{p}") for n in "qkv"] + [m.take(f"{d}proj_mlp.{p}")])
            m.put(f"{o}linear2.{p}", f"{d}proj_out.{p}")
        for a, b in _SINGLE_NORMS:
            m.put(f"{o}{b}.scale", f"{d}{a}.weight")
    return m.done()


def _o2d_double_block(m: _Move, i: int) -> None:
    d, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
    for p in ("weight", "bias"):
        for n, t in zip("qkv", m.take(f"{o}img_attn.qkv.{p}").chunk(3), strict=True):
            m.out[f"{d}attn.to_{n}.{p}"] = t
        for n, t in zip("qkv", m.take(f"{o}txt_attn.qkv.{p}").chunk(3), strict=True):
            m.out[f"{d}attn.add_{n}_proj.{p}"] = t
        for a, b in _DOUBLE:
            m.put(f"{d}{a}.{p}", f"{o}{b}.{p}")
    for a, b in _DOUBLE_NORMS:
        m.put(f"{d}{a}.weight", f"{o}{b}.scale")


def _o2d_single_block(m: _Move, sd: Mapping[str, torch.Tensor], i: int) -> None:
    d, o = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
    hidden = sd[f"{o}linear2.weight"].shape[0]
    for p in ("weight", "bias"):
        fused = m.take(f"{o}linear1.{p}")
        parts = fused.split([hidden, hidden, hidden, fused.shape[0] - 3 * hidden])
        for n, t in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), parts, strict=True):
            m.out[f"{d}{n}.{p}"] = t
        m.put(f"{d}proj_out.{p}", f"{o}linear2.{p}")
    for a, b in _SINGLE_NORMS:
        m.put(f"{d}{a}.weight", f"{o}{b}.scale")


def chroma_original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    m = _Move(sd)
    for p in ("weight", "bias"):
        for d, o in _TOP:
            m.put(f"{d}.{p}", f"{o}.{p}")
    for i in _ids(sd, "distilled_guidance_layer.layers"):
        for p in ("weight", "bias"):
            for d, o in _APPROX:
                m.put(f"distilled_guidance_layer.layers.{i}.{d}.{p}", f"distilled_guidance_layer.layers.{i}.{o}.{p}")
        m.put(f"distilled_guidance_layer.norms.{i}.weight", f"distilled_guidance_layer.norms.{i}.scale")
    for i in _ids(sd, "double_blocks"):
        _o2d_double_block(m, i)
    for i in _ids(sd, "single_blocks"):
        _o2d_single_block(m, sd, i)
    return m.done()
