"""The DiT zoo: original layouts are exact inverses of diffusers' single-file converters, sizes are real."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from diffusers.loaders import single_file_utils as sfu

from sdlens.arch.configs import DENOISER_PARAMS, VAES
from sdlens.testing import zoo_dit as z
from tests.helpers import TinyFluxTorch

CONVERTERS = {
    "sd3": sfu.convert_sd3_transformer_checkpoint_to_diffusers,
    "sd35m": sfu.convert_sd3_transformer_checkpoint_to_diffusers,
    "sd35": sfu.convert_sd3_transformer_checkpoint_to_diffusers,
    "flux_dev": sfu.convert_flux_transformer_checkpoint_to_diffusers,
    "flux_schnell": sfu.convert_flux_transformer_checkpoint_to_diffusers,
    "auraflow": sfu.convert_auraflow_transformer_checkpoint_to_diffusers,
}


@cache
def diffusers_sd(family: str, size: str, variant: str | None = None) -> dict[str, torch.Tensor]:
    return z.build_denoiser(family, size=size, layout="diffusers", variant=variant)


@cache
def original_sd(family: str, size: str, variant: str | None = None) -> dict[str, torch.Tensor]:
    return z.to_original(family, diffusers_sd(family, size, variant))


@pytest.mark.parametrize(
    ("family", "variant"),
    [
        ("sd3", None),
        ("sd35m", None),
        ("sd35", None),
        ("flux_dev", None),
        ("flux_schnell", None),
        ("flux_dev", "fill"),
        ("auraflow", None),
    ],
)
def test_tiny_round_trip_through_diffusers_converter(family, variant, monkeypatch):
    ref = diffusers_sd(family, "tiny", variant)
    orig = dict(original_sd(family, "tiny", variant))
    if family.startswith("flux"):
        inner = ref["x_embedder.weight"].shape[0]
        monkeypatch.setattr(sfu, "torch", TinyFluxTorch(inner))
    back = CONVERTERS[family](orig)
    assert not orig, f"converter left keys unused: {sorted(orig)[:5]}"
    assert set(back) == set(ref)
    for k, v in ref.items():
        assert torch.equal(back[k], v), k


@pytest.mark.parametrize("family", ["sd3", "sd35m", "sd35", "flux_dev", "auraflow"])
def test_full_round_trip_shapes(family):
    ref = diffusers_sd(family, "full")
    prefix = "model.diffusion_model." if family.startswith("sd3") else ""
    orig = {prefix + k: v for k, v in original_sd(family, "full").items()}
    back = CONVERTERS[family](orig)
    assert not orig
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in ref.items()}


def test_build_denoiser_original_matches_helper():
    built = z.build_denoiser("sd35m", size="tiny", layout="original", seed=0)
    ref = original_sd("sd35m", "tiny")
    assert built.keys() == ref.keys()
    assert all(torch.equal(built[k], ref[k]) for k in ref)
    other = z.build_denoiser("sd35m", size="tiny", layout="diffusers", seed=1)
    assert not torch.equal(other["proj_out.weight"], diffusers_sd("sd35m", "tiny")["proj_out.weight"])


@pytest.mark.parametrize("family", ["sd3", "sd35", "flux_dev", "auraflow", "hunyuandit"])
def test_full_param_counts(family):
    sd = original_sd(family, "full")
    assert all(v.device.type == "meta" for v in sd.values())
    total = sum(v.numel() for v in sd.values())
    if family.startswith("sd3"):
        total -= sd["pos_embed"].numel()  # a buffer in diffusers, not a parameter
    assert total == DENOISER_PARAMS[family]


@pytest.mark.parametrize("family", z.FAMILIES)
def test_tiny_and_full_share_key_names(family):
    tiny, full = original_sd(family, "tiny"), original_sd(family, "full")
    assert list(tiny) == list(full)
    assert all(tiny[k].dim() == full[k].dim() for k in tiny)
    assert sum(v.numel() * v.element_size() for v in tiny.values()) < 8e6


def test_flux_variants():
    dev, schnell = original_sd("flux_dev", "full"), original_sd("flux_schnell", "full")
    assert "guidance_in.in_layer.weight" in dev and not any(k.startswith("guidance_in") for k in schnell)
    assert dev["img_in.weight"].shape == (3072, 64)
    assert tuple(dev["double_blocks.0.img_attn.norm.key_norm.scale"].shape) == (128,)
    assert len({k.split(".")[1] for k in dev if k.startswith("double_blocks.")}) == 19
    assert len({k.split(".")[1] for k in dev if k.startswith("single_blocks.")}) == 38
    fill = z.build_denoiser("flux_dev", size="full", variant="fill")
    assert fill["img_in.weight"].shape[1] == 384
    assert sfu.infer_diffusers_model_type(dev) == "flux-dev"
    assert sfu.infer_diffusers_model_type(schnell) == "flux-schnell"
    assert sfu.infer_diffusers_model_type(fill) == "flux-fill"


def test_sd3_pos_embed_and_detection():
    sd3, sd35m, sd35 = (original_sd(f, "full") for f in ("sd3", "sd35m", "sd35"))
    assert sd3["pos_embed"].shape == (1, 36864, 1536)
    assert sd35m["pos_embed"].shape == (1, 147456, 1536)
    assert "joint_blocks.12.x_block.attn2.qkv.weight" in sd35m
    assert "joint_blocks.13.x_block.attn2.qkv.weight" not in sd35m
    assert (
        "joint_blocks.0.x_block.attn.ln_q.weight" in sd35m
        and "joint_blocks.0.x_block.attn.ln_q.weight" not in sd3
    )
    assert sd35["x_embedder.proj.weight"].shape[0] // 64 == 38
    for sd, expected in ((sd3, "sd3"), (sd35m, "sd35_medium"), (sd35, "sd35_large")):
        assert (
            sfu.infer_diffusers_model_type({"model.diffusion_model." + k: v for k, v in sd.items()})
            == expected
        )
    assert sfu.infer_diffusers_model_type(original_sd("auraflow", "full")) == "auraflow"


def test_hunyuan_and_pixart_tables():
    hy = original_sd("hunyuandit", "full")
    assert hy["mlp_t5.0.weight"].shape == (8192, 2048)
    assert hy["blocks.0.attn1.Wqkv.weight"].shape == (3 * 1408, 1408)
    assert hy["blocks.0.attn2.kv_proj.weight"].shape == (2 * 1408, 1024)
    assert "blocks.39.skip_linear.weight" in hy and "blocks.0.skip_linear.weight" not in hy
    assert hy["final_layer.adaLN_modulation.1.weight"].shape == (2 * 1408, 1408)
    pa, ps = original_sd("pixart_alpha", "full"), original_sd("pixart_sigma", "full")
    assert pa["t_block.1.weight"].shape == (6 * 1152, 1152)
    assert pa["blocks.27.attn.qkv.weight"].shape == (3456, 1152)
    assert pa["blocks.0.cross_attn.kv_linear.weight"].shape == (2304, 1152)
    assert pa["y_embedder.y_embedding"].shape == (120, 4096) and ps["y_embedder.y_embedding"].shape == (
        300,
        4096,
    )
    assert "ar_embedder.mlp.0.weight" in pa and "csize_embedder.mlp.0.weight" in pa
    assert not any(k.startswith(("ar_embedder", "csize_embedder")) for k in ps)
    for sd in (hy, pa):  # fused projections really are the concatenated diffusers ones
        assert all(not k.startswith("transformer_blocks.") for k in sd)
    tiny_d, tiny_o = diffusers_sd("hunyuandit", "tiny"), original_sd("hunyuandit", "tiny")
    assert torch.equal(tiny_o["blocks.3.norm2.weight"], tiny_d["blocks.3.norm3.weight"])
    assert torch.equal(
        tiny_o["blocks.3.attn2.kv_proj.weight"][: tiny_d["blocks.3.attn2.to_k.weight"].shape[0]],
        tiny_d["blocks.3.attn2.to_k.weight"],
    )


def test_single_files_and_vae():
    sf = z.build_single_file("sd3", with_encoders=True, with_vae=True)
    assert "model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight" in sf
    assert "text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.weight" in sf
    assert "text_encoders.clip_g.transformer.text_projection.weight" in sf
    assert "text_encoders.clip_l.transformer.text_projection.weight" not in sf
    assert sfu.is_t5_in_single_file(sf)
    assert (
        len({k.split(".")[5] for k in sf if k.startswith("text_encoders.t5xxl.transformer.encoder.block.")})
        == 24
    )
    assert len({k.split(".")[6] for k in sf if ".clip_g.transformer.text_model.encoder.layers." in k}) == 32
    assert sf["first_stage_model.decoder.conv_in.weight"].shape[1] == 16
    assert sf["first_stage_model.encoder.mid.attn_1.q.weight"].dim() == 4
    # the LDM VAE layout is the inverse of diffusers' converter
    vae_cfg = {**VAES["kl_f8_c16"]}
    back = sfu.convert_ldm_vae_checkpoint(
        {k: v for k, v in sf.items() if k.startswith("first_stage_model.")}, vae_cfg
    )
    ref = z.build_vae("kl_f8_c16", layout="diffusers")
    assert set(back) == set(ref) and all(torch.equal(back[k], ref[k]) for k in ref)
    flux = z.build_single_file("flux_schnell", with_encoders=True, with_vae=True)
    assert "double_blocks.0.img_attn.qkv.weight" in flux and "vae.decoder.conv_in.weight" in flux
    assert not any(".clip_g." in k for k in flux)
    full = z.build_single_file("sd3", size="full", with_encoders=True, with_vae=True)
    assert full["text_encoders.t5xxl.transformer.shared.weight"].shape == (32128, 4096)
    with pytest.raises(ValueError):
        z.build_single_file("auraflow", with_vae=True)


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_controlnet_round_trip(kind):
    ref = z.build_controlnet(kind, layout="diffusers")
    orig = z.build_controlnet(kind, layout="original")
    assert all(k.startswith("control_model.") for k in orig)
    assert (
        "control_model.input_hint_block.14.weight" in orig
        and "control_model.middle_block_out.0.weight" in orig
    )
    n_zero = 12 if kind == "sd1" else 9
    assert f"control_model.zero_convs.{n_zero - 1}.0.weight" in orig
    assert f"control_model.zero_convs.{n_zero}.0.weight" not in orig
    assert sfu.infer_diffusers_model_type(orig) == "controlnet"
    back = sfu.convert_controlnet_checkpoint(orig, {"layers_per_block": 2, **z.controlnet_config(kind)})
    expect = {k for k in ref if not k.startswith("add_embedding.")}  # the converter ignores label_emb
    assert set(back) == expect
    assert all(torch.equal(back[k], ref[k]) for k in expect)
    if kind == "sdxl":
        assert torch.equal(orig["control_model.label_emb.0.0.weight"], ref["add_embedding.linear_1.weight"])


def test_controlnet_full_shapes():
    sd1 = z.build_controlnet("sd1", size="full")
    assert sd1["control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 768)
    assert sd1["control_model.input_blocks.1.1.proj_in.weight"].dim() == 4
    xl = z.build_controlnet("sdxl", size="full")
    assert xl["control_model.label_emb.0.0.weight"].shape == (1280, 2816)
    assert xl["control_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight"].shape == (1280, 2048)
