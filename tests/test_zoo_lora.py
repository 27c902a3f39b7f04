"""The LoRA zoo: real module paths and shapes, requested rank / alpha, distinctive keys per kind."""

from __future__ import annotations

import json
import re
from functools import cache

import pytest
import torch

from sdlens.arch.configs import DENOISERS
from sdlens.testing import zoo_dit
from sdlens.testing import zoo_lora as zl


@cache
def lora(kind: str, arch: str = "sd1", targets: str = "all", rank: int = 4, alpha: float | None = None):
    return zl.build_lora(kind, arch=arch, targets=targets, rank=rank, alpha=alpha)


def _modules(tensors: dict[str, torch.Tensor]) -> set[str]:
    return {
        k.rsplit(".", 1)[0]
        if k.endswith(".alpha")
        else re.sub(r"\.(lora_\w+|hada_\w+|lokr_\w+|dora_scale)(\.weight)?$", "", k)
        for k in tensors
    }


def test_kohya_sd1_matches_real_unet_and_clip():
    tensors, meta = lora("kohya", rank=8, alpha=4)
    unet = zoo_dit.meta_state_dict("UNet2DConditionModel", DENOISERS["sd1"][1])
    clip = zoo_dit.text_encoder_meta_state_dict("clip_l", "full")
    real = {"lora_unet_" + k[: -len(".weight")].replace(".", "_"): v.shape for k, v in unet.items()}
    real |= {"lora_te_" + k[: -len(".weight")].replace(".", "_"): v.shape for k, v in clip.items()}
    mods = _modules(tensors)
    assert len(mods) == 264  # what sd-scripts writes for SD1 (192 UNet + 72 CLIP)
    for m in mods:
        shape = real[m]
        down, up = tensors[f"{m}.lora_down.weight"], tensors[f"{m}.lora_up.weight"]
        assert down.shape[0] == 8 and up.shape[1] == 8
        assert (up.shape[0], down.shape[1]) == tuple(shape[:2])
        assert tensors[f"{m}.alpha"].dim() == 0 and float(tensors[f"{m}.alpha"]) == 4.0
    assert tensors[
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
    ].shape == (8, 768)
    assert (
        tensors["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].dim() == 4
    )  # 1x1 conv in SD1
    assert "lora_te_text_model_encoder_layers_11_mlp_fc2.lora_up.weight" in tensors
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "8"
    assert float(meta["ss_network_alpha"]) == 4.0 and meta["ss_base_model_version"] == "sd_v1"
    assert (
        json.loads(meta["ss_tag_frequency"]) and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    )
    truth = zl.lora_truth("kohya", rank=8, alpha=4)
    assert truth["n_modules"] == 264 and truth["modules_per_component"] == {"unet": 192, "te": 72}
    assert set(truth["prefixes"]) == mods and truth["rank"] == 8 and truth["alpha"] == 4.0


def test_kohya_sd1_and_flux_accepted_by_diffusers():
    from diffusers import FluxPipeline, StableDiffusionPipeline

    unet = {n.rsplit(".", 1)[0] for n in zoo_dit.meta_state_dict("UNet2DConditionModel", DENOISERS["sd1"][1])}
    conv = StableDiffusionPipeline.lora_state_dict(dict(lora("locon")[0]))[0]
    paths = set()
    for k in conv:  # attention LoRAs come back in the legacy ``attn1.processor.to_q_lora`` form
        k = re.sub(
            r"\.processor\.(to_q|to_k|to_v|to_out)_lora\..*", lambda m: "." + m[1], k.split(".lora.")[0]
        )
        paths.add(re.sub(r"\.to_out$", ".to_out.0", k))
    assert {p.removeprefix("unet.") for p in paths if p.startswith("unet.")} <= unet
    assert (
        len([p for p in paths if p.startswith("unet.")])
        == zl.lora_truth("locon")["modules_per_component"]["unet"]
    )
    flux_real = {
        n.rsplit(".", 1)[0] for n in zoo_dit.build_denoiser("flux_dev", size="full", layout="diffusers")
    }
    conv = FluxPipeline.lora_state_dict(dict(lora("kohya", "flux")[0]))
    conv = conv[0] if isinstance(conv, tuple) else conv
    paths = {k.split(".lora_")[0].removeprefix("transformer.") for k in conv if k.startswith("transformer.")}
    assert paths and paths <= flux_real


def test_sdxl_kohya_uses_sgm_names():
    tensors, meta = lora("kohya", "sdxl")
    mods = _modules(tensors)
    truth = zl.lora_truth("kohya", arch="sdxl")
    assert truth["modules_per_component"] == {"unet": 722, "te1": 72, "te2": 192}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q" in mods
    assert "lora_unet_input_blocks_7_1_transformer_blocks_9_attn2_to_k" in mods
    assert "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2" in mods
    assert "lora_unet_output_blocks_5_1_transformer_blocks_1_attn1_to_q" in mods
    assert not any(m.startswith(("lora_unet_output_blocks_6", "lora_unet_input_blocks_1_")) for m in mods)
    assert tensors["lora_unet_input_blocks_7_1_transformer_blocks_0_attn2_to_k.lora_down.weight"].shape == (
        4,
        2048,
    )
    assert tensors["lora_unet_input_blocks_7_1_proj_in.lora_down.weight"].shape == (4, 1280)  # linear proj_in
    assert tensors["lora_te2_text_model_encoder_layers_31_mlp_fc1.lora_up.weight"].shape == (5120, 4)
    assert tensors["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"].shape == (4, 768)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_lycoris_kinds(arch):
    locon, meta = lora("locon", arch)
    assert (
        json.loads(meta["ss_network_args"])["algo"] == "locon"
        and meta["ss_network_module"] == "lycoris.kohya"
    )
    conv3 = [
        k for k, v in locon.items() if k.endswith("lora_down.weight") and v.dim() == 4 and v.shape[-1] == 3
    ]
    assert conv3 and all(locon[k.replace("lora_down", "lora_up")].shape[2:] == (1, 1) for k in conv3)
    assert zl.lora_truth("locon", arch=arch)["n_conv3x3_modules"] == len(conv3)
    loha, _ = lora("loha", arch)
    for m in _modules(loha):
        a1, b1, a2, b2 = (loha[f"{m}.hada_{n}"] for n in ("w1_a", "w1_b", "w2_a", "w2_b"))
        assert a1.shape[1] == b1.shape[0] == a2.shape[1] == b2.shape[0] == 4
    lokr, _ = lora("lokr", arch)
    truth = {m.prefix: m.shape for m in zl.lora_modules("lokr", arch=arch)}
    for m, shape in truth.items():
        w1 = lokr[f"{m}.lokr_w1"]
        w2 = lokr.get(f"{m}.lokr_w2")
        if w2 is None:
            a, b = lokr[f"{m}.lokr_w2_a"], lokr[f"{m}.lokr_w2_b"]
            assert a.shape[1] == b.shape[0] == 4
            w2 = (a.float() @ b.float()).reshape(a.shape[0], -1, *shape[2:])
        assert torch.kron(w1.float().reshape(*w1.shape, *[1] * (w2.dim() - 2)), w2.float()).shape == shape
    dora, _ = lora("dora", arch)
    scales = {k: v for k, v in dora.items() if k.endswith("dora_scale")}
    assert len(scales) == zl.lora_truth("dora", arch=arch)["n_modules"]
    for k, v in scales.items():
        assert v.shape[0] == dora[k.replace("dora_scale", "lora_up.weight")].shape[0]


@pytest.mark.parametrize("arch", ["sd1", "sdxl", "flux"])
def test_peft_keys(arch):
    tensors, meta = lora("peft", arch, "attn", 16, 8)
    first = "transformer." if arch == "flux" else "unet."
    assert any(k.startswith(first) for k in tensors)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in tensors)
    assert all(v.shape[0] == 16 for k, v in tensors.items() if k.endswith("lora_A.weight"))
    md = json.loads(meta["lora_adapter_metadata"])
    assert md[f"{first[:-1]}.r"] == 16 and md[f"{first[:-1]}.lora_alpha"] == 8.0
    if arch == "sdxl":
        assert "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in tensors
    if arch == "flux":
        assert tensors["transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight"].shape == (16, 3072)
        assert tensors["transformer.single_transformer_blocks.37.attn.to_q.lora_B.weight"].shape == (3072, 16)


def test_flux_kohya_and_targets():
    tensors, meta = lora("kohya", "flux")
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape == (9216, 4)
    assert tensors["lora_unet_single_blocks_37_linear1.lora_up.weight"].shape == (21504, 4)
    assert tensors["lora_unet_single_blocks_0_linear2.lora_down.weight"].shape == (4, 15360)
    assert meta["ss_network_module"] == "networks.lora_flux" and meta["ss_base_model_version"] == "flux1"
    unet_only = zl.lora_truth("kohya", arch="flux", targets="unet_only")
    assert unet_only["components"] == ["unet"] and unet_only["n_modules"] == 19 * 10 + 38 * 3
    te_only = zl.lora_truth("kohya", arch="sdxl", targets="te_only")
    assert te_only["components"] == ["te1", "te2"]
    attn = zl.lora_truth("kohya", arch="sd1", targets="attn")
    assert attn["modules_per_component"] == {"unet": 16 * 8, "te": 12 * 4}
    with pytest.raises(ValueError):
        zl.build_lora("nope")
