"""Canonical naming: EMA copies land on the denoiser's names; open_clip q/k/v are row slices of in_proj."""

from __future__ import annotations

import torch

from sdlens.arch.canonical import canonical_index, read_canonical
from sdlens.io.open import open_checkpoint
from sdlens.testing.writers import save_safetensors
from sdlens.testing.zoo_unet import build_diffusers_parts, build_single_file


def test_ema_names_are_the_denoiser_names(tmp_path):
    path = save_safetensors(build_single_file("sd1", ema=True), tmp_path / "e.safetensors")
    with open_checkpoint(path) as ck:
        idx, family = canonical_index(ck.tensors)
    assert family == "sd1"
    den = {k.split("/", 1)[1] for k in idx if k.startswith("denoiser/")}
    ema = {k.split("/", 1)[1] for k in idx if k.startswith("ema/")} - {"decay", "num_updates"}
    assert ema == den


def test_open_clip_slices_equal_the_transformers_tensors(tmp_path):
    path = save_safetensors(build_single_file("sdxl", seed=4), tmp_path / "x.safetensors")
    hf = build_diffusers_parts("sdxl", seed=4)["text_encoder_2"]
    with open_checkpoint(path) as ck:
        idx, _ = canonical_index(ck.tensors)
        for name in ("text_model.encoder.layers.3.self_attn.k_proj.weight",
                     "text_model.encoder.layers.3.self_attn.v_proj.bias",
                     "text_projection.weight"):
            ref = idx[f"clip_g/{name}"]
            assert torch.equal(read_canonical(ck, ref), hf[name]), name
        assert idx["clip_g/text_model.encoder.layers.3.self_attn.k_proj.weight"].rows is not None
        assert idx["clip_g/text_projection.weight"].transpose
