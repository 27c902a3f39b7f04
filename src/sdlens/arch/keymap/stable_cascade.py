"""Stable Cascade: the original ``stage_c`` / ``stage_b`` files <-> diffusers ``StableCascadeUNet``.

The names agree except for attention (the original's ``nn.MultiheadAttention``: fused ``attn.in_proj_weight``
/ ``in_proj_bias`` and ``attn.out_proj``) and stage B's pooled-text mapper (original ``clip_mapper``, diffusers
``clip_txt_pooled_mapper``; stage C keeps ``clip_txt_pooled_mapper``). Checked against diffusers'
``convert_stable_cascade_unet_single_file_to_diffusers`` (tests).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sdlens.arch.keymap.fused import Rule, fuse, split

_A = r"(?P<a>.+\.attention)\."
_WB = r"(?P<p>weight|bias)"


def _rules(stage_b: bool) -> tuple[tuple[Rule, ...], tuple[Rule, ...]]:
    pooled = "clip_mapper" if stage_b else "clip_txt_pooled_mapper"
    to_original = (
        Rule(rf"clip_txt_pooled_mapper\.{_WB}", rf"{pooled}.\g<p>"),
        Rule(rf"{_A}to_out\.0\.{_WB}", r"\g<a>.attn.out_proj.\g<p>"),
        Rule(rf"{_A}to_(?P<part>q|k|v)\.{_WB}", r"\g<a>.attn.in_proj_\g<p>", ("q", "k", "v")),
        Rule(r"(?P<k>.+)", r"\g<k>"),
    )
    to_diffusers = (
        Rule(rf"{pooled}\.{_WB}", r"clip_txt_pooled_mapper.\g<p>"),
        Rule(rf"{_A}attn\.out_proj\.{_WB}", r"\g<a>.to_out.0.\g<p>"),
        Rule(rf"{_A}attn\.in_proj_{_WB}", r"\g<a>.to_{part}.\g<p>", ("q", "k", "v")),
        Rule(r"(?P<k>.+)", r"\g<k>"),
    )
    return to_original, to_diffusers


def _stage_b(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("effnet_mapper.") for k in sd)


def cascade_diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return fuse(sd, _rules(_stage_b(sd))[0])


def cascade_original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return split(sd, _rules(_stage_b(sd))[1])
