"""diff with known truth: each test changes exactly one thing in a zoo model and checks the verdict names it."""

from __future__ import annotations

import json

import pytest
import torch

from sdlens.analysis.diff import diff
from sdlens.testing.writers import save_safetensors
from sdlens.testing.zoo_unet import build_single_file, write_diffusers_folder
from tests.conftest import run_cli


def _save(tmp_path, name, sd):
    return save_safetensors(sd, tmp_path / f"{name}.safetensors")


def _perturb(sd, pred, scale=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = dict(sd)
    for k, v in sd.items():
        if pred(k) and v.is_floating_point():
            out[k] = v + scale * torch.randn(v.shape, generator=g, dtype=torch.float32).to(v.dtype)
    return out


@pytest.fixture(scope="module")
def sd1():
    return build_single_file("sd1", seed=3)


def _line(result, start):
    return next(line for line in result.verdict if line.startswith(start))


def test_identical_copy(tmp_path, sd1):
    r = diff(_save(tmp_path, "a", sd1), _save(tmp_path, "b", sd1))
    assert r.verdict == ["identical: every tensor bit-identical"]
    assert all(t.identical for t in r.tensors) and not r.only_a and not r.only_b


def test_only_cross_attention_changed(tmp_path, sd1):
    b = _perturb(sd1, lambda k: k.startswith("model.diffusion_model.") and ".attn2." in k)
    r = diff(_save(tmp_path, "a", sd1), _save(tmp_path, "b", b))
    unet = _line(r, "UNet: changed")
    assert "only cross-attention (attn2)" in unet
    n_attn2 = sum(1 for k in sd1 if k.startswith("model.diffusion_model.") and ".attn2." in k)
    assert f"— {n_attn2} of" in unet
    assert "CLIP-L: bit-identical" in r.verdict
    assert "VAE encoder: bit-identical" in r.verdict and "VAE decoder: bit-identical" in r.verdict
    # blocks with transformers changed; IN00 (conv_in) and the ResBlock-only blocks did not
    blocks = r.by_block["denoiser"]
    assert blocks["IN01"].changed and blocks["OUT11"].changed and blocks["M00"].changed
    assert not blocks["IN00"].changed and not blocks["IN03"].changed and not blocks["OUT00"].changed


def test_vae_decoder_only(tmp_path, sd1):
    b = _perturb(sd1, lambda k: k.startswith("first_stage_model.decoder."))
    r = diff(_save(tmp_path, "a", sd1), _save(tmp_path, "b", b))
    assert any(line.startswith("VAE decoder: changed") for line in r.verdict)
    assert "VAE encoder: bit-identical" in r.verdict and "UNet: bit-identical" in r.verdict


def test_text_encoder_swapped(tmp_path, sd1):
    other = build_single_file("sd1", seed=11)
    b = {
        k: (other[k] if k.startswith("cond_stage_model.") and "position_ids" not in k else v)
        for k, v in sd1.items()
    }
    r = diff(_save(tmp_path, "a", sd1), _save(tmp_path, "b", b))
    clip = _line(r, "CLIP-L: changed")
    n = sum(1 for k in sd1 if k.startswith("cond_stage_model.") and "position_ids" not in k)
    assert f"— {n} of {n + 1} tensors" in clip
    assert "UNet: bit-identical" in r.verdict


def test_ema_stripped(tmp_path):
    with_ema = build_single_file("sd1", seed=3, ema=True)
    no_ema = {k: v for k, v in with_ema.items() if not k.startswith("model_ema.")}
    r = diff(_save(tmp_path, "a", with_ema), _save(tmp_path, "b", no_ema))
    n = sum(1 for k in with_ema if k.startswith("model_ema."))
    assert f"EMA removed ({n} tensors only in A)" in r.verdict
    assert "UNet: bit-identical" in r.verdict


def test_no_vae_in_b(tmp_path, sd1):
    no_vae = {k: v for k, v in sd1.items() if not k.startswith("first_stage_model.")}
    r = diff(_save(tmp_path, "a", sd1), _save(tmp_path, "b", no_vae))
    n = sum(1 for k in sd1 if k.startswith("first_stage_model."))
    assert f"no VAE in B ({n} tensors only in A)" in r.verdict
    assert "UNet: bit-identical" in r.verdict


def test_fp16_copy_is_same_weights(tmp_path, sd1):
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd1.items()}
    r = diff(_save(tmp_path, "a", sd1), _save(tmp_path, "b", half))
    assert r.verdict[0].startswith("same weights at different precisions (F32 vs F16")
    assert all(t.same_within_precision or t.identical for t in r.tensors)
    assert r.dtype_pairs["F32->F16"] == sum(1 for v in sd1.values() if v.is_floating_point())


def test_fp16_copy_with_one_real_change_is_changed(tmp_path, sd1):
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd1.items()}
    key = "model.diffusion_model.out.2.weight"
    half[key] = half[key] + 0.5
    r = diff(_save(tmp_path, "a", sd1), _save(tmp_path, "b", half))
    changed = [t.key for t in r.tensors if t.changed]
    assert changed == ["denoiser/out.2.weight"]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_ldm_vs_diffusers_layout_is_identical(tmp_path, family):
    single = _save(tmp_path, "single", build_single_file(family, seed=0))
    folder = write_diffusers_folder(family, tmp_path / "folder", seed=0)
    r = diff(single, folder)
    changed = [t.key for t in r.tensors if t.changed]
    assert changed == []
    assert r.family_a == r.family_b == family
    comps = {t.component for t in r.tensors}
    assert {"denoiser", "vae_encoder", "vae_decoder"} <= comps
    assert r.only_b == []
    extras = ("schedule/", "position_ids", "logit_scale", "layers.23.", "text_projection")
    assert all(any(e in k for e in extras) for k in r.only_a), r.only_a


def test_nai_renamed_clip_is_aligned(tmp_path):
    std = build_single_file("sd1", seed=5)
    nai = build_single_file("sd1", seed=5, nai_clip=True)
    r = diff(_save(tmp_path, "a", std), _save(tmp_path, "b", nai))
    assert r.verdict == ["identical: every tensor bit-identical"]


def test_numbers_equal_brute_force_float64(tmp_path, sd1):
    b = _perturb(sd1, lambda k: "attn1" in k or k.startswith("first_stage_model.encoder."), scale=0.3, seed=9)
    r = diff(_save(tmp_path, "a", sd1), _save(tmp_path, "b", b))
    prefix = {"denoiser": "model.diffusion_model.", "vae_encoder": "first_stage_model."}
    checked = 0
    for t in r.tensors:
        if not t.changed or t.component not in prefix:
            continue
        k = prefix[t.component] + t.key.split("/", 1)[1]
        x, y = sd1[k].double().reshape(-1), b[k].double().reshape(-1)
        d = x - y
        assert t.l2 == pytest.approx(float(d.norm()), rel=1e-5)
        assert t.l1 == pytest.approx(float(d.abs().sum()), rel=1e-5)
        assert t.l0 == int((d != 0).sum())
        assert t.max_abs == pytest.approx(float(d.abs().max()), rel=1e-6)
        assert t.cos == pytest.approx(float(torch.nn.functional.cosine_similarity(x, y, dim=0)), abs=1e-6)
        assert t.rel == pytest.approx(float(d.norm() / x.norm()), rel=1e-5)
        checked += 1
    assert checked > 20
    g = r.by_component["denoiser"]
    assert g.l2 == pytest.approx(sum(t.l2**2 for t in r.tensors if t.component == "denoiser") ** 0.5)


def test_different_architectures_say_so_first(tmp_path, sd1):
    r = diff(_save(tmp_path, "a", sd1), _save(tmp_path, "b", build_single_file("sdxl")))
    assert r.verdict[0].startswith("different architectures: A is SD1.x, B is SDXL base")


def test_time_embed_switch(tmp_path, sd1):
    b = _perturb(sd1, lambda k: "time_embed" in k)
    pa, pb = _save(tmp_path, "a", sd1), _save(tmp_path, "b", b)
    r1 = diff(pa, pb, time_embed="IN00")
    r2 = diff(pa, pb, time_embed="BASE")
    assert [k for k, g in r1.by_block["denoiser"].items() if g.changed] == ["IN00"]
    assert [k for k, g in r2.by_block["denoiser"].items() if g.changed] == ["BASE"]


def test_cli_diff_json_and_plots(tmp_path, sd1):
    b = _perturb(sd1, lambda k: ".attn2." in k)
    pa, pb = _save(tmp_path, "a", sd1), _save(tmp_path, "b", b)
    p = run_cli(
        "diff",
        str(pa),
        str(pb),
        "--by",
        "block",
        "--json",
        str(tmp_path / "d.json"),
        "--plot",
        str(tmp_path / "d.png"),
    )
    assert p.returncode == 0, p.stderr
    assert "only cross-attention (attn2)" in p.stdout and "UNet IN01" in p.stdout
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["by_component"]["clip_l"]["changed"] == 0 and data["by_component"]["denoiser"]["changed"] > 0
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "d-blocks.png").stat().st_size > 1000
    bad = run_cli("diff", str(pa), str(tmp_path / "missing.safetensors"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "no such file" in bad.stderr
