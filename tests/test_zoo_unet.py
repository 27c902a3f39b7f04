"""The UNet-family zoo: real key names, real parameter counts, variants, two identical layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdlens.arch.configs import DENOISER_PARAMS, TEXT_ENCODER_PARAMS, VAE_PARAMS
from sdlens.arch.keymap import (
    clip_ldm_to_hf,
    is_nai_clip,
    nai_to_hf_clip_key,
    normalize_hf_clip,
    openclip_to_clip_hf,
    unet_ldm_to_diffusers,
    vae_ldm_to_diffusers,
)
from sdlens.testing.zoo_unet import (
    FAMILIES,
    build_diffusers_parts,
    build_single_file,
    diffusers_configs,
    ema_key,
    full_config,
    num_params,
    tiny_config,
    write_diffusers_folder,
)

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

UNET = "model.diffusion_model."
SCHEDULE = ("betas", "alphas_cumprod", "posterior_mean_coef2", "logvar")
TEXT_PREFIXES = {
    "sd1": ["cond_stage_model.transformer.text_model."],
    "sd2": ["cond_stage_model.model."],
    "sdxl": ["conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.1.model."],
    "sdxl_refiner": ["conditioner.embedders.0.model."],
}


def _sub(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_names_equal_full_names(family: str) -> None:
    tiny = build_single_file(family)
    full = build_single_file(family, size="full")
    assert list(tiny) == list(full)
    assert all(t.device.type == "meta" for t in full.values())
    assert num_params(tiny) * 4 < 12e6  # a few MB
    for prefix in TEXT_PREFIXES[family]:
        assert _sub(tiny, prefix)
    other = {
        k.split(".")[0] for k in tiny if not k.startswith(("model.", "first_stage_model.", "cond", "betas"))
    }
    assert other <= set(SCHEDULE) | {k for k in tiny if "." not in k}
    has_schedule = family in ("sd1", "sd2")
    assert all((name in tiny) == has_schedule for name in SCHEDULE)
    if has_schedule:
        assert tiny["betas"].shape == (1000,)
        assert tiny["betas"][0].item() == pytest.approx(0.00085) and tiny["betas"][
            -1
        ].item() == pytest.approx(0.012)


@pytest.mark.parametrize("family", FAMILIES)
def test_full_parameter_counts(family: str) -> None:
    parts = build_diffusers_parts(family, "full")
    if family in DENOISER_PARAMS:
        assert num_params(parts["unet"]) == DENOISER_PARAMS[family]
    assert num_params(parts["vae"]) == VAE_PARAMS["kl_f8_c4"]
    kinds = {
        "sd1": ["clip_l"],
        "sd2": ["openclip_h"],
        "sdxl": ["clip_l", "clip_g"],
        "sdxl_refiner": ["clip_g"],
    }
    parts_te = [p for p in ("text_encoder", "text_encoder_2") if p in parts]
    assert [num_params(parts[p]) for p in parts_te] == [TEXT_ENCODER_PARAMS[k] for k in kinds[family]]
    single = build_single_file(family, size="full")
    assert num_params(_sub(single, UNET)) == num_params(parts["unet"])
    if family == "sd2":  # the file keeps OpenCLIP-H's 24th resblock and its projection
        assert "cond_stage_model.model.transformer.resblocks.23.ln_1.weight" in single
        assert single["cond_stage_model.model.text_projection"].shape == (1024, 1024)
    if family == "sdxl":
        assert single[UNET + "label_emb.0.0.weight"].shape == (1280, 2816)
        assert single["conditioner.embedders.1.model.text_projection"].shape == (1280, 1280)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_configs_are_consistent(family: str) -> None:
    for cfgs in (tiny_config(family), full_config(family)):
        texts = [cfgs[p]["hidden_size"] for p in ("text_encoder", "text_encoder_2") if p in cfgs]
        assert cfgs["unet"]["cross_attention_dim"] == sum(texts)
        if family.startswith("sdxl"):
            n = 6 if family == "sdxl" else 5
            want = cfgs["text_encoder_2"]["projection_dim"] + n * cfgs["unet"]["addition_time_embed_dim"]
            assert cfgs["unet"]["projection_class_embeddings_input_dim"] == want
    tiny, full = tiny_config(family), full_config(family)
    for part in tiny:
        if part.startswith("text_encoder"):
            assert tiny[part]["num_hidden_layers"] == full[part]["num_hidden_layers"]


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_equals_diffusers_parts(family: str) -> None:
    single = build_single_file(family)
    parts = build_diffusers_parts(family)
    cfgs = diffusers_configs(family)
    # unet / vae come straight from the real classes' state dicts; the text encoders are reshaped (SD2 drops
    # its 24th layer and projection, text_model. prefix): they must load strictly into the real classes
    for part, sd in parts.items():
        if not part.startswith("text_encoder"):
            continue
        with torch.device("meta"):
            model = getattr(transformers, cfgs[part]["architectures"][0])(
                transformers.CLIPTextConfig(**cfgs[part])
            )
        own = set(model.state_dict())
        model.load_state_dict(
            {k if k in own else k.removeprefix("text_model."): v for k, v in sd.items()}, assign=True
        )

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
        assert set(a) == set(b)
        assert all(torch.equal(a[k], b[k]) for k in a)

    same(unet_ldm_to_diffusers(_sub(single, UNET), cfgs["unet"]), parts["unet"])
    same(vae_ldm_to_diffusers(_sub(single, "first_stage_model."), cfgs["vae"]), parts["vae"])
    if family == "sd1":
        same(clip_ldm_to_hf(single, prefix="cond_stage_model.transformer."), parts["text_encoder"])
    elif family == "sd2":
        oc = _sub(single, "cond_stage_model.model.")
        same(openclip_to_clip_hf(oc, 23, projection=False), parts["text_encoder"])
    elif family == "sdxl":
        same(clip_ldm_to_hf(single, prefix="conditioner.embedders.0.transformer."), parts["text_encoder"])
        same(openclip_to_clip_hf(_sub(single, "conditioner.embedders.1.model."), 32), parts["text_encoder_2"])
    else:
        same(openclip_to_clip_hf(_sub(single, "conditioner.embedders.0.model."), 32), parts["text_encoder_2"])


def test_seeded_and_deterministic() -> None:
    a, b = build_single_file("sd1", seed=7), build_single_file("sd1", seed=7)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = build_single_file("sd1")
    assert not any(torch.equal(a[k], other[k]) for k in a if k.startswith(UNET))
    a[UNET + "out.2.bias"].add_(1)  # results are copies: editing one leaves the next build intact
    assert torch.equal(build_single_file("sd1", seed=7)[UNET + "out.2.bias"], b[UNET + "out.2.bias"])


def test_position_ids_and_dtype() -> None:
    sd = build_single_file("sdxl", dtype=torch.float16)
    pos = sd["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"]
    assert pos.dtype == torch.int64 and pos.shape == (1, 77)
    assert sd["conditioner.embedders.1.model.logit_scale"].shape == ()
    assert {t.dtype for k, t in sd.items() if "position_ids" not in k} == {torch.float16}
    assert not any("position_ids" in k for k in build_single_file("sd2"))


def test_ema_variant() -> None:
    sd = build_single_file("sd1", ema=True)
    unet = _sub(sd, UNET)
    ema = {k for k in sd if k.startswith("model_ema.")}
    assert len(ema) == len(unet) + 2
    assert "model_ema.diffusion_modelinput_blocks00weight" in sd
    assert sd["model_ema.decay"].shape == () and sd["model_ema.num_updates"].dtype == torch.int32
    for key, t in unet.items():
        e = sd[ema_key(key)]
        assert e.shape == t.shape and not torch.equal(e, t) and torch.allclose(e, t, atol=1e-2)
    # diffusers' converter finds and extracts the EMA copy
    sfu = pytest.importorskip("diffusers.loaders.single_file_utils")
    cfg = diffusers_configs("sd1")["unet"]
    got = sfu.convert_ldm_unet_checkpoint(sd, cfg, extract_ema=True)
    assert torch.equal(got["conv_in.weight"], sd["model_ema.diffusion_modelinput_blocks00weight"])
    full = build_single_file("sd1", size="full", ema=True)
    assert list(full) == list(sd)


def test_nai_variant() -> None:
    sd = build_single_file("sd1", nai_clip=True)
    plain = build_single_file("sd1")
    clip = [k for k in sd if k.startswith("cond_stage_model.")]
    assert clip and not any(".text_model." in k for k in clip)
    assert "cond_stage_model.transformer.embeddings.position_ids" in sd
    assert is_nai_clip(sd) and not is_nai_clip(plain)
    assert {nai_to_hf_clip_key(k) for k in sd} == set(plain)
    with pytest.raises(ValueError):
        build_single_file("sdxl", nai_clip=True)


@pytest.mark.parametrize(("family", "channels"), [("sd1", 9), ("sd1", 8), ("sdxl", 9)])
def test_input_channel_variants(family: str, channels: int) -> None:
    sd = build_single_file(family, in_channels=channels)
    base = build_single_file(family)
    assert list(sd) == list(base)
    assert sd[UNET + "input_blocks.0.0.weight"].shape[1] == channels
    assert sd[UNET + "out.2.weight"].shape[0] == 4
    assert diffusers_configs(family, in_channels=channels)["unet"]["in_channels"] == channels
    if family == "sd1" and channels == 9:
        full = build_single_file(family, size="full", in_channels=channels)
        assert full[UNET + "input_blocks.0.0.weight"].shape == (320, 9, 3, 3)


def test_write_diffusers_folder_loads(tmp_path: Path) -> None:
    root = write_diffusers_folder("sd1", tmp_path / "sd1")
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    parts = build_diffusers_parts("sd1")
    unet = diffusers.UNet2DConditionModel.from_pretrained(root / "unet")
    assert all(torch.equal(v, parts["unet"][k]) for k, v in unet.state_dict().items())
    te = transformers.CLIPTextModel.from_pretrained(root / "text_encoder")
    want = normalize_hf_clip(parts["text_encoder"])
    assert all(
        torch.equal(v, want["text_model." + k.removeprefix("text_model.")])
        for k, v in te.state_dict().items()
    )
    assert (root / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert (root / "scheduler" / "scheduler_config.json").is_file()
    sdxl = json.loads((write_diffusers_folder("sdxl", tmp_path / "sdxl") / "model_index.json").read_text())
    assert sdxl["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert (tmp_path / "sdxl" / "text_encoder_2" / "model.safetensors").is_file()
    refiner = json.loads(
        (write_diffusers_folder("sdxl_refiner", tmp_path / "ref") / "model_index.json").read_text()
    )
    assert refiner["text_encoder"] == [None, None] and not (tmp_path / "ref" / "text_encoder").exists()


def test_full_single_file_writes_sparse(tmp_path: Path) -> None:
    from safetensors import safe_open

    from sdlens.testing.writers import save_safetensors

    sd = build_single_file("sd1", size="full", dtype=torch.float16)
    path = save_safetensors(sd, tmp_path / "sd1.safetensors")
    assert path.stat().st_size > 2 * DENOISER_PARAMS["sd1"]
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    assert keys == set(sd)
