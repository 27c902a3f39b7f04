"""sdlens.arch.keymap against diffusers' own single-file converters (exact tensors, every key)."""

from __future__ import annotations

import pytest
import torch

from sdlens.arch.configs import DENOISERS, VAES
from sdlens.arch.keymap import (
    clip_hf_to_ldm,
    clip_hf_to_openclip,
    clip_ldm_to_hf,
    hf_to_nai_clip_key,
    is_nai_clip,
    nai_to_hf_clip_key,
    normalize_hf_clip,
    openclip_to_clip_hf,
    unet_diffusers_key_to_ldm,
    unet_diffusers_to_ldm,
    unet_key_map,
    unet_ldm_key_to_diffusers,
    unet_ldm_to_diffusers,
    vae_diffusers_to_ldm,
    vae_key_map,
    vae_ldm_to_diffusers,
)
from sdlens.arch.keymap.unet import unet_prefix_table
from sdlens.testing.zoo_unet import FAMILIES, _source, build_diffusers_parts, diffusers_configs

diffusers = pytest.importorskip("diffusers")
sfu = pytest.importorskip("diffusers.loaders.single_file_utils")


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want), sorted(set(got) ^ set(want))[:10]
    bad = [k for k in want if not torch.equal(got[k], want[k])]
    assert not bad, bad[:10]


def _distinct(sd: dict[str, torch.Tensor]) -> None:
    """The tiny weights are all different, so a swapped mapping cannot pass by accident."""
    firsts = [float(t.flatten()[0]) for t in sd.values() if t.is_floating_point()]
    assert len(set(firsts)) == len(firsts)


@pytest.mark.parametrize("family", FAMILIES)
def test_unet_to_ldm_matches_diffusers_converter(family: str) -> None:
    sd = build_diffusers_parts(family)["unet"]
    cfg = diffusers_configs(family)["unet"]
    _distinct(sd)
    ldm = unet_diffusers_to_ldm(sd, cfg)
    assert len(ldm) == len(sd)
    ckpt = {f"model.diffusion_model.{k}": v for k, v in ldm.items()}
    _assert_same(sfu.convert_ldm_unet_checkpoint(ckpt, cfg), sd)
    _assert_same(unet_ldm_to_diffusers(ldm, cfg), sd)
    km = unet_key_map(cfg, sd)
    assert set(km) == set(sd) and set(km.values()) == set(ldm)
    for k in list(sd)[::37]:
        assert unet_ldm_key_to_diffusers(unet_diffusers_key_to_ldm(k, cfg), cfg) == k


@pytest.mark.parametrize("family", FAMILIES)
def test_vae_to_ldm_matches_diffusers_converter(family: str) -> None:
    sd = build_diffusers_parts(family)["vae"]
    cfg = diffusers_configs(family)["vae"]
    ldm = vae_diffusers_to_ldm(sd, cfg)
    assert ldm["encoder.mid.attn_1.q.weight"].ndim == 4
    assert ldm["decoder.up.0.block.2.conv1.weight"] is sd["decoder.up_blocks.3.resnets.2.conv1.weight"]
    ckpt = {f"first_stage_model.{k}": v for k, v in ldm.items()}
    _assert_same(sfu.convert_ldm_vae_checkpoint(ckpt, cfg), sd)
    _assert_same(vae_ldm_to_diffusers(ldm, cfg), sd)
    assert set(vae_key_map(cfg)) == set(sd) == set(vae_key_map(cfg, sd))


def test_vae16_has_no_quant_convs() -> None:
    with torch.device("meta"):
        model = diffusers.AutoencoderKL(**VAES["kl_f8_c16"])
    km = vae_key_map(model.config)
    assert set(km) == set(model.state_dict())
    assert not any("quant_conv" in v for v in km.values())
    ldm = vae_diffusers_to_ldm(model.state_dict(), model.config)
    back = sfu.convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in ldm.items()}, model.config)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("family", "prefix"),
    [("sd1", "cond_stage_model.transformer."), ("sdxl", "conditioner.embedders.0.transformer.")],
)
def test_hf_clip_ldm_layout(family: str, prefix: str) -> None:
    sd = build_diffusers_parts(family)["text_encoder"]
    ckpt = clip_hf_to_ldm(sd, prefix=prefix)
    pos = ckpt[prefix + "text_model.embeddings.position_ids"]
    assert pos.dtype == torch.int64 and pos.shape == (1, 77) and torch.equal(pos[0], torch.arange(77))
    got = sfu.convert_ldm_clip_checkpoint(ckpt)
    got.pop("text_model.embeddings.position_ids")
    _assert_same(got, normalize_hf_clip(sd))
    _assert_same(clip_ldm_to_hf(ckpt, prefix=prefix), normalize_hf_clip(sd))


@pytest.mark.parametrize(
    ("family", "part", "prefix", "layers"),
    [
        ("sd2", "text_encoder", "cond_stage_model.model.", 23),
        ("sdxl", "text_encoder_2", "conditioner.embedders.1.model.", 32),
        ("sdxl_refiner", "text_encoder_2", "conditioner.embedders.0.model.", 32),
    ],
)
def test_openclip_matches_diffusers_converter(family: str, part: str, prefix: str, layers: int) -> None:
    import transformers

    file_hf = _source(family, "tiny", 0, 4)[part]  # what the file holds (SD2: 24 layers + projection)
    oc = clip_hf_to_openclip(file_hf, logit_scale=4.6052)
    n_blocks = len({k.split(".")[2] for k in oc if k.startswith("transformer.resblocks.")})
    assert n_blocks == (24 if family == "sd2" else 32)
    ckpt = {prefix + k: v for k, v in oc.items()}
    conf = diffusers_configs(family)[part]
    model = getattr(transformers, conf["architectures"][0])(transformers.CLIPTextConfig(**conf))
    got = sfu.convert_open_clip_checkpoint(model, ckpt, prefix=prefix)
    want = {k: v for k, v in file_hf.items() if not k.startswith(f"text_model.encoder.layers.{layers}.")}
    # diffusers leaves SD2's projection out (its CLIPTextModel has none)
    _assert_same(got, {k: v for k, v in want.items() if family != "sd2" or k != "text_projection.weight"})
    # our inverse: drops the unused layer; SD2's plain CLIPTextModel has no projection
    _assert_same(openclip_to_clip_hf(oc, layers), want)
    if family == "sd2":
        back = openclip_to_clip_hf(oc, layers, projection=False)
        _assert_same(back, normalize_hf_clip(build_diffusers_parts("sd2")["text_encoder"]))


def test_openclip_extra_layers_and_roundtrip() -> None:
    sd = build_diffusers_parts("sdxl")["text_encoder_2"]
    oc = clip_hf_to_openclip(sd, extra_layers=2)
    assert "transformer.resblocks.33.attn.in_proj_weight" in oc and "logit_scale" not in oc
    assert torch.equal(oc["transformer.resblocks.33.ln_1.weight"], oc["transformer.resblocks.31.ln_1.weight"])
    w = oc["transformer.resblocks.0.attn.in_proj_weight"]
    assert w.shape == (3 * 48, 48)
    assert torch.equal(w[48:96], sd["text_model.encoder.layers.0.self_attn.k_proj.weight"])
    assert torch.equal(oc["text_projection"], sd["text_projection.weight"].T)
    _assert_same(openclip_to_clip_hf(oc, 32), sd)


def test_nai_clip_names() -> None:
    assert nai_to_hf_clip_key("cond_stage_model.transformer.encoder.layers.0.mlp.fc1.weight") == (
        "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    )
    std = "cond_stage_model.transformer.text_model.final_layer_norm.bias"
    assert (
        nai_to_hf_clip_key(std) == std and nai_to_hf_clip_key("first_stage_model.x") == "first_stage_model.x"
    )
    assert hf_to_nai_clip_key(std) == "cond_stage_model.transformer.final_layer_norm.bias"
    assert is_nai_clip([hf_to_nai_clip_key(std)]) and not is_nai_clip(
        [std, "model.diffusion_model.out.0.bias"]
    )


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl_refiner"])
def test_full_size_unet_map_covers_every_parameter(family: str) -> None:
    sd = build_diffusers_parts(family, "full")["unet"]  # real class on the meta device, published config
    config = diffusers_configs(family, "full")["unet"]
    assert all(t.device.type == "meta" for t in sd.values())
    # the published partial config (class defaults implied) gives the same map as the full one
    assert unet_prefix_table(DENOISERS[family][1]) == unet_prefix_table(config)
    km = unet_key_map(DENOISERS[family][1]) if family == "sd1" else unet_key_map(config, sd)
    assert set(km) == set(sd) and len(set(km.values())) == len(km)
    ldm = unet_diffusers_to_ldm(sd, config)
    back = sfu.convert_ldm_unet_checkpoint({f"model.diffusion_model.{k}": v for k, v in ldm.items()}, config)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in sd.items()}
    shapes = {k: tuple(v.shape) for k, v in ldm.items()}
    n_out = {"sd1": 12, "sd2": 12, "sdxl": 9, "sdxl_refiner": 12}[family]
    assert {int(k.split(".")[1]) for k in ldm if k.startswith("output_blocks.")} == set(range(n_out))
    assert {int(k.split(".")[1]) for k in ldm if k.startswith("input_blocks.")} == set(range(n_out))
    if family == "sd1":
        assert shapes["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 768)
        assert shapes["input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1)
        assert shapes["output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)
        assert shapes["output_blocks.5.2.conv.weight"] == (1280, 1280, 3, 3)
        assert shapes["input_blocks.3.0.op.weight"] == (320, 320, 3, 3)
    if family == "sd2":
        assert shapes["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 1024)
        assert shapes["input_blocks.1.1.proj_in.weight"] == (320, 320)
    if family == "sdxl":
        assert shapes["label_emb.0.0.weight"] == (1280, 2816)
        assert "input_blocks.7.1.transformer_blocks.9.attn1.to_q.weight" in shapes
        assert "input_blocks.1.1.norm.weight" not in shapes  # IN01/02 ResBlock-only
        assert shapes["output_blocks.2.2.conv.weight"] == (1280, 1280, 3, 3)
    if family == "sdxl_refiner":
        assert shapes["label_emb.0.0.weight"] == (1536, 2560)
        assert shapes["input_blocks.0.0.weight"] == (384, 4, 3, 3)


def test_full_size_vae_map() -> None:
    with torch.device("meta"):
        model = diffusers.AutoencoderKL(**VAES["kl_f8_c4"])
    sd = model.state_dict()
    ldm = vae_diffusers_to_ldm(sd, model.config)
    assert len(ldm) == len(sd) == 248
    assert ldm["decoder.mid.attn_1.proj_out.weight"].shape == (512, 512, 1, 1)
    assert ldm["decoder.up.0.block.0.nin_shortcut.weight"].shape == (128, 256, 1, 1)
    assert ldm["decoder.up.3.upsample.conv.weight"].shape == (512, 512, 3, 3)
    assert "decoder.up.0.upsample.conv.weight" not in ldm


@pytest.mark.parametrize(
    "name", ["sd1_fp16", "sdxl_fp16", "flux_dev", "sd3_medium", "pixart_alpha", "auraflow"]
)
def test_feature_search_by_first_segment_finds_what_a_full_search_finds(zoo, name):
    """Anchored feature patterns are tried only on the keys of their first segment (a 200,000-key header
    stays fast); that must find exactly the keys a search of every key finds."""
    import re

    from sdlens.arch import registry as R
    from sdlens.arch.detect import _first_segments, _Keys
    from sdlens.io.open import open_checkpoint

    with open_checkpoint(zoo[name].path) as ck:
        full = list(ck.tensors)
    keys = full + [k.split(".", 1)[1] for k in full if "." in k]  # the components' relative keys as well
    searched = _Keys(keys)
    patterns = [f.pattern for f in R.DENOISER_FEATURES] + [p for p, _, _ in R.BARE_SIGNATURES]
    assert sum(_first_segments(p) is not None for p in patterns) > len(patterns) // 2
    for p in patterns:
        assert sorted(searched.hits(p)) == sorted(k for k in keys if re.search(p, k)), p


@pytest.mark.parametrize(
    ("pattern", "segments"),
    [
        (r"^blocks\.(\d+)\.", {"blocks"}),
        (r"^(img_in|x_embedder)\.weight$", {"img_in", "x_embedder"}),
        (r"^register_tokens$", {"register_tokens"}),
        (r"^pos_embed(\.pos_embed)?$", None),
        (r"^a\.?b", None),
        (r"^ab?\.", None),
        (r"^a\.b|c", None),
        (r"(^|\.)attn2\.to_k\.weight$", None),
    ],
)
def test_first_segments_of_a_pattern(pattern, segments):
    from sdlens.arch.detect import _first_segments

    got = _first_segments(pattern)
    assert (got is None) if segments is None else (got == segments)
