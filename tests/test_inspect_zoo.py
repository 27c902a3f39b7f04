"""inspect identifies every family and variant of the zoo exactly as it was built."""

from __future__ import annotations

import json

import pytest
import torch

from sdlens.analysis.inspect import inspect
from sdlens.testing.writers import save_safetensors
from sdlens.testing.zoo import zoo_table

ZOO_NAMES = [row[0] for row in zoo_table()]


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_entry_is_identified(zoo, name):
    entry = zoo[name]
    report = inspect(entry.path)
    assert entry.mismatches(report) == []
    assert report.confidence in ("high", "medium")
    json.dumps(report.to_dict())  # plain data, serialisable


def test_full_size_sdxl_has_released_sizes_and_high_confidence(zoo):
    r = inspect(zoo["sdxl_full_fp16"].path)
    assert r.confidence == "high" and r.nonstandard == []
    params = {c.id: c.params for c in r.components}
    assert params["denoiser"] == 2_567_463_684
    assert params["clip_l"] == 123_060_480 + 77  # + position_ids buffer
    assert params["vae_encoder"] + params["vae_decoder"] == 83_653_863
    assert r.summary.startswith("SDXL base · ldm/sgm keys · fp16")
    assert "UNet 2.57 B" in r.summary and "no EMA" in r.summary
    assert r.missing == []


def test_tiny_models_say_their_widths_are_not_the_released_ones(zoo):
    r = inspect(zoo["sd1_fp16"].path)
    assert r.confidence == "medium"
    assert any("cross-attention context width" in n for n in r.nonstandard)


def test_full_size_sd1_ema_complete_and_fp32_overhead(zoo):
    r = inspect(zoo["sd1_full_ema_fp32"].path)
    assert r.ema is not None and r.ema.complete and r.ema.tensors == r.ema.expected
    assert r.bytes_beyond_fp16 == sum(t["bytes"] for d, t in r.dtypes.items() if d == "F32") // 2
    assert r.schedule is not None and r.schedule.match == "scaled_linear" and not r.schedule.zero_terminal_snr


def test_partial_ema_is_reported(tmp_path):
    from sdlens.testing.zoo_unet import build_single_file

    sd = build_single_file("sd1", ema=True, dtype=torch.float16)
    dropped = [k for k in sd if k.startswith("model_ema.diffusion_modelout")]
    for k in dropped:
        del sd[k]
    save_safetensors(sd, tmp_path / "partial.safetensors")
    r = inspect(tmp_path / "partial.safetensors")
    assert r.ema is not None and not r.ema.complete
    assert r.ema.expected - r.ema.tensors == len(dropped) and "partial EMA" in r.summary


def test_broken_position_ids_named_precisely(zoo):
    r = inspect(zoo["sdxl_broken_pos"].path)
    bad = [p for p in r.position_ids if not p.ok]
    assert len(bad) == 1 and bad[0].key.startswith("conditioner.embedders.0.")
    assert "36 of 77 values off" in bad[0].detail
    # the file is still a full SDXL model, nothing called junk
    assert r.family == "sdxl" and r.kind == "full model" and r.unknown_keys == []


def test_nai_clip_is_the_same_component(zoo):
    r = inspect(zoo["sd1_nai"].path)
    clip = next(c for c in r.components if c.id == "clip_l")
    assert clip.prefix == "cond_stage_model.transformer." and clip.convention == "nai"


def test_ckpt_extras_and_legacy_format(zoo):
    r = inspect(zoo["sd1_legacy_ckpt"].path)
    assert r.format == "torch-legacy" and r.extras["global_step"] == 470000
    r2 = inspect(zoo["sd1_ema_ckpt"].path)
    assert r2.format == "torch-zip"


def test_sd2_prediction_heuristic(tmp_path):
    from sdlens.testing.zoo_unet import build_single_file

    sd = build_single_file("sd2", dtype=torch.float32)
    key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
    sd[key] = torch.randn(sd[key].shape, generator=torch.Generator().manual_seed(0)) * 0.5
    save_safetensors(sd, tmp_path / "v.safetensors")
    v = inspect(tmp_path / "v.safetensors").prediction
    assert (v.type, v.certainty) == ("v_prediction", "heuristic")
    assert v.summary().startswith("v-prediction (heuristic")
    sd[key] = torch.zeros_like(sd[key])
    save_safetensors(sd, tmp_path / "e.safetensors")
    e = inspect(tmp_path / "e.safetensors").prediction
    assert (e.type, e.certainty) == ("epsilon", "heuristic")


def test_zero_terminal_snr_schedule_and_markers(tmp_path):
    from sdlens.testing.zoo_unet import build_single_file

    sd = build_single_file("sd1", dtype=torch.float16)
    betas = sd["betas"].double()
    ac = torch.cumprod(1 - betas, 0)
    ac[-1] = 0.0
    sd["alphas_cumprod"] = ac.float()
    sd["betas"] = (1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])).float()
    sd["v_pred"] = torch.tensor([])
    sd["ztsnr"] = torch.tensor([])
    save_safetensors(sd, tmp_path / "z.safetensors")
    r = inspect(tmp_path / "z.safetensors")
    assert r.schedule.zero_terminal_snr
    assert (r.prediction.type, r.prediction.certainty, r.prediction.zero_terminal_snr) == (
        "v_prediction",
        "stated",
        True,
    )
    assert any(m.startswith("ztsnr") for m in r.markers)


def test_unknown_family_is_never_a_silent_fallback(tmp_path):
    save_safetensors(
        {"encoder.layer.0.weight": torch.ones(4, 4), "head.bias": torch.ones(4)},
        tmp_path / "bert.safetensors",
    )
    r = inspect(tmp_path / "bert.safetensors")
    assert r.family == "unknown" and r.kind == "unknown" and r.confidence == "low"
    assert {u["key"] for u in r.unknown_keys} == {"encoder.layer.0.weight", "head.bias"}


def test_lora_details(zoo):
    r = inspect(zoo["lora_kohya_sdxl"].path)
    lo = r.lora
    assert lo.arch == "sdxl" and lo.ranks == {4: 986} and lo.alphas == {"4": 986}
    assert set(lo.components) == {"denoiser", "text encoder 1", "text encoder 2"}
    assert lo.layer_types["attn1"] > 0 and lo.layer_types["attn2"] > 0
    assert r.metadata.training["network dim"] == "4"


def test_metadata_summary(tmp_path):
    tags = {"10_dog": {"dog": 50, "grass": 12}, "5_cat": {"cat": 20, "grass": 8}}
    meta = {
        "ss_tag_frequency": json.dumps(tags),
        "ss_resolution": "(512, 512)",
        "ss_num_epochs": "10",
        "ss_max_train_steps": "1500",
        "modelspec.title": "Dogs",
        "custom": "x",
    }
    save_safetensors(
        {"lora_unet_a.lora_down.weight": torch.zeros(4, 8), "lora_unet_a.lora_up.weight": torch.zeros(8, 4)},
        tmp_path / "m.safetensors",
        meta,
    )
    md = inspect(tmp_path / "m.safetensors").metadata
    assert md.top_tags[0] == ("dog", 50)
    assert dict(md.top_tags) == {"dog": 50, "grass": 20, "cat": 20}
    assert md.training["resolution"] == "(512, 512)" and md.training["epochs"] == "10"
    assert md.modelspec == {"title": "Dogs"} and md.other == {"custom": "x"}
