"""identify(): the kind and family of every kind of file, from zoo state dicts whose truth we built."""

from __future__ import annotations

import json
from functools import cache

import pytest
import torch

from sdlens.arch import families
from sdlens.arch.identify import Identity, identify
from sdlens.io.base import TensorInfo
from sdlens.testing import zoo_dit, zoo_lora, zoo_unet
from sdlens.testing.writers import save_safetensors


def _infos(sd: dict[str, torch.Tensor]) -> dict[str, TensorInfo]:
    return {k: TensorInfo(k, tuple(v.shape), "F32", "", 0) for k, v in sd.items()}


@cache
def _sd1() -> dict[str, torch.Tensor]:
    return zoo_unet.build_single_file("sd1", dtype=torch.float16)


@cache
def _sdxl() -> dict[str, torch.Tensor]:
    return zoo_unet.build_single_file("sdxl", dtype=torch.float16)


def _part(sd: dict[str, torch.Tensor], prefix: str, strip: bool = True) -> dict[str, TensorInfo]:
    return _infos({(k[len(prefix) :] if strip else k): v for k, v in sd.items() if k.startswith(prefix)})


def _lora(kind: str, arch: str, targets: str = "all") -> dict[str, TensorInfo]:
    """A LoRA's index from the zoo's module shapes (no tensors made)."""
    return {
        f"{m.prefix}.{suffix}": TensorInfo(f"{m.prefix}.{suffix}", shape, "F16", "", 0)
        for m in zoo_lora.lora_modules(kind, arch=arch, targets=targets)
        for suffix, shape in zoo_lora.lora_tensor_shapes(kind, m, 4).items()
    }


def _ident(tensors, metadata=None) -> Identity:
    ident = identify(tensors, metadata=metadata)
    json.dumps(ident.to_dict())  # plain data
    return ident


def _fits(latent: int) -> list[str]:
    return [f.id for f in families.FAMILIES if f.latent_channels == latent]


def test_full_sd1_file():
    ident = _ident(_infos(_sd1()))
    assert (ident.kind, ident.family, ident.label) == ("full", "sd1", "full model")
    assert ident.denoiser_family == "sd1" and ident.has_vae and ident.text_encoders == ["clip_l"]
    assert ident.match.reasons and ident.match.confidence in ("high", "medium")


@pytest.mark.parametrize(
    ("make", "prefix", "family"),
    [
        (_sdxl, "model.diffusion_model.", "sdxl"),
        (lambda: zoo_dit.build_single_file("flux", dtype=torch.float16), "", "flux_dev"),
        (lambda: zoo_dit.build_single_file("sd3", dtype=torch.float16), "", "sd3"),
    ],
)
def test_bare_denoiser(make, prefix, family):
    ident = _ident(_part(make(), prefix))
    assert (ident.kind, ident.family, ident.label) == ("denoiser", family, "denoiser only")
    assert ident.record is families.get(family) and not ident.fits


def test_vae_4_channels_is_a_vae_not_a_family():
    ident = _ident(_part(_sd1(), "first_stage_model."))
    assert (ident.kind, ident.label, ident.latent_channels) == ("vae", "VAE", 4)
    assert ident.family == "unknown" and ident.denoiser_family == "unknown"  # several families share that VAE
    assert (
        ident.fits == _fits(4) and {"sd1", "sd2", "sdxl"} <= set(ident.fits) and "flux_dev" not in ident.fits
    )
    assert ident.match.name == "VAE (4-channel latent)" and ident.match.confidence == "high"
    assert any("SDXL base" in r for r in ident.match.reasons)


def test_vae_16_channels():
    ident = _ident(_part(zoo_dit.build_vae16(dtype=torch.float16), "first_stage_model."))
    assert (ident.kind, ident.latent_channels, ident.family) == ("vae", 16, "unknown")
    assert ident.fits == _fits(16) and {"sd3", "flux_dev"} <= set(ident.fits) and "sd1" not in ident.fits


def test_text_encoder_only_files():
    clip_l = _ident(_part(_sd1(), "cond_stage_model.", strip=False))
    assert (clip_l.kind, clip_l.label, clip_l.family) == ("text_encoder", "text encoder", "sd1")
    assert clip_l.fits == ["sd1"] and clip_l.match.name == "SD1.x"
    pair = _ident(_part(_sdxl(), "conditioner.", strip=False))
    assert (pair.kind, pair.label) == ("text_encoder", "text encoders")
    assert sorted(pair.text_encoders) == ["clip_g", "clip_l"]
    # a refinement (Playground v2.5 of SDXL) has its base's text encoders: such a file is reported as the base
    truth = [
        f.id for f in families.FAMILIES if sorted(f.text_encoder_kinds) == ["clip_g", "clip_l"] and not f.base
    ]
    assert pair.fits == truth and "sdxl" in truth and "sd3" not in truth
    assert pair.family == (truth[0] if len(truth) == 1 else "unknown")


def test_denoiser_with_text_encoders_but_no_vae():
    sd = {k: v for k, v in _sd1().items() if not k.startswith("first_stage_model.")}
    ident = _ident(_infos(sd))
    assert (ident.kind, ident.family, ident.label) == ("denoiser", "sd1", "denoiser + text encoders")


@pytest.mark.parametrize(
    ("kind", "layout"), [("sd1", "original"), ("sdxl", "original"), ("sd1", "diffusers")]
)
def test_controlnet(kind, layout):
    ident = _ident(_infos(zoo_dit.build_controlnet(kind, layout=layout, dtype=torch.float16)))
    assert (ident.kind, ident.family, ident.label) == ("controlnet", kind, "ControlNet")
    assert ident.denoiser_family == "unknown" and ident.match.reasons[0].startswith("ControlNet keys")


@pytest.mark.parametrize(
    ("kind", "arch", "family"),
    [
        ("kohya", "sd1", "sd1"),
        ("kohya", "sdxl", "sdxl"),
        ("kohya", "flux", "flux_dev"),
        ("peft", "flux", "flux_dev"),
        ("peft", "sdxl", "sdxl"),
        ("locon", "sd1", "sd1"),
    ],
)
def test_lora_family_is_a_record_id(kind, arch, family):
    tensors = _lora(kind, arch)
    ident = _ident(tensors)  # from the shapes alone
    assert (ident.kind, ident.family, ident.label) == ("lora", family, "LoRA")
    assert ident.match.name == families.get(family).name and ident.match.confidence == "high"
    assert ident.lora_convention == zoo_lora.lora_truth(kind, arch=arch)["key_format"]
    hint = families.get(family).lora_hints[0]
    agreed = _ident(tensors, {"ss_base_model_version": f"{hint}_base"})
    assert agreed.family == family and not any("disagrees" in r for r in agreed.match.reasons)


def test_lora_metadata_decides_only_when_shapes_cannot():
    tensors = _lora("kohya", "sdxl", "te_only")
    assert _ident(tensors).family == "sdxl"  # te1 / te2: the first two-encoder family
    flux = _ident(tensors, {"ss_base_model_version": "flux1"})
    assert flux.family == "flux_dev"  # a tie the metadata breaks
    told = _ident(_lora("kohya", "sd1"), {"ss_base_model_version": "sdxl_base_v1-0"})
    assert told.family == "sd1" and any("disagrees" in r and "SDXL base" in r for r in told.match.reasons)


def test_empty_and_unknown():
    assert identify({}).kind == "empty"
    bert = _ident(_infos({"encoder.layer.0.weight": torch.ones(4, 4), "head.bias": torch.ones(4)}))
    assert (bert.kind, bert.family, bert.match.confidence) == ("unknown", "unknown", "low")
    assert set(bert.split.unknown) == {"encoder.layer.0.weight", "head.bias"}


def test_inspect_renders_identity_for_a_vae(tmp_path):
    from sdlens.analysis.inspect import inspect

    sd = {k[len("first_stage_model.") :]: v for k, v in zoo_dit.build_vae16(dtype=torch.float16).items()}
    r = inspect(save_safetensors(sd, tmp_path / "ae.safetensors"))
    assert (r.kind, r.family, r.latent_channels, r.fits) == ("VAE", "unknown", 16, _fits(16))
    assert r.summary.startswith("VAE: VAE (16-channel latent)")
    assert "kl_f8_c16" not in json.dumps(r.to_dict())


def test_a_vae_with_wrong_rank_convs_is_a_vae_of_unknown_latent():
    """Crafted shapes (a 1-d decoder.conv_in, a 0-d encoder.conv_out) are read, not indexed into blindly."""
    tensors = {
        "decoder.conv_in.weight": TensorInfo("decoder.conv_in.weight", (4,), "F32", "", 0),
        "encoder.conv_out.weight": TensorInfo("encoder.conv_out.weight", (), "F32", "", 16),
    }
    ident = identify(tensors)
    assert (ident.kind, ident.latent_channels, ident.family) == ("vae", None, "unknown")
