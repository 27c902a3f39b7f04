"""``sdlens delta`` and the spectrum maths, on pairs whose delta is known (``sdlens.testing.zoo_delta``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sdlens.analysis import spectrum as S
from sdlens.analysis.delta import delta
from sdlens.errors import SdlensError
from sdlens.testing.zoo_delta import LORA_RANKS, TE_LAYER, UNET, low_rank


@pytest.fixture
def zoo(delta_zoo):
    return delta_zoo


def _canonical(full_key: str) -> str:
    if full_key.startswith(UNET):
        return "denoiser/" + full_key[len(UNET) :]
    return "clip_l/" + full_key.split("transformer.", 1)[1]


def _run(zoo, name: str, base: str = "base", **kw):
    folder, _ = zoo
    return delta(folder / f"{name}.safetensors", folder / f"{base}.safetensors", **kw)


# --------------------------------------------------------------------------- the spectrum of one matrix


def _fp16_pair(shape, rank, rel, seed):
    g = torch.Generator().manual_seed(seed)
    b = (torch.randn(shape, generator=g) * 0.03).half().float()
    norm = rel * float(b.norm())
    if rank > 0:
        d = low_rank(shape, rank, norm, g)
    else:
        d = torch.randn(shape, generator=g)
        d *= norm / float(d.norm())
    m = (b + d).half().float()
    return m, b


@pytest.mark.parametrize(
    ("shape", "rank"), [((256, 320), 8), ((1024, 2048), 8), ((1024, 2048), 32), ((768, 3072), 64)]
)
def test_low_rank_delta_reported_at_its_rank_exact_and_sketched(shape, rank):
    m, b = _fp16_pair(shape, rank, 0.05, rank)
    spec = S.spectrum(m - b, S.noise_energy(m, "F16", b, "F16"))
    assert spec.exact == (min(shape) <= S.EXACT_MAX)
    assert spec.rank == rank and not spec.at_least
    assert spec.effective_rank(0.99) <= rank


@pytest.mark.parametrize(("rank", "decay"), [(64, 0.0), (64, 1.0), (128, 0.5)])
def test_sketch_widens_for_rank_64_and_128_loras_flat_or_decaying(rank, decay):
    """Trained LoRAs have decaying spectra; the first 40-wide sketch ends above the noise, the widened one
    finds the rank."""
    g = torch.Generator().manual_seed(rank)
    m, n = 1280, 1280
    u, _ = torch.linalg.qr(torch.randn(m, rank, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, rank, generator=g))
    lora = (u * torch.arange(1, rank + 1).float() ** -decay) @ v.T
    b = (torch.randn(m, n, generator=g) * 0.03).half().float()
    lora *= 0.03 * float(b.norm()) / float(lora.norm())
    mm = (b + lora).half().float()
    spec = S.spectrum(mm - b, S.noise_energy(mm, "F16", b, "F16"))
    assert not spec.exact and not spec.at_least and spec.rank == rank


def test_dense_delta_is_high_rank_a_lower_bound_when_sketched_exact_on_request():
    m, b = _fp16_pair((1024, 1024), 0, 0.02, 1)
    d, noise = m - b, S.noise_energy(m, "F16", b, "F16")
    spec = S.spectrum(d, noise)
    assert spec.at_least and not spec.exact
    assert spec.rank >= S.SKETCH and spec.effective_rank(0.9) is None  # not reached: not claimed
    exact = S.spectrum(d, noise, exact=True)
    truth = np.linalg.svd(d.double().numpy(), compute_uv=False)
    cum = np.cumsum(truth**2)
    assert exact.exact and exact.effective_rank(0.9) == int(np.searchsorted(cum, 0.9 * cum[-1])) + 1
    assert (
        exact.rank > 900 and spec.rank <= exact.rank
    )  # a sketch's singular values are at most the true ones
    m, b = _fp16_pair((320, 320), 0, 0.02, 2)
    small = S.spectrum(m - b, S.noise_energy(m, "F16", b, "F16"))
    assert small.exact and small.rank >= 300 and small.effective_rank(0.9) > 140  # quarter-circle law: ~half


def test_exact_spectrum_equals_lapack():
    g = torch.Generator().manual_seed(3)
    d = torch.randn(96, 200, generator=g)
    spec = S.spectrum(d, 0.0)
    ref = np.linalg.svd(d.double().numpy(), compute_uv=False)
    np.testing.assert_allclose(spec.sigma, ref, rtol=1e-9, atol=1e-12 * ref[0])
    assert spec.energy == pytest.approx(float((d.double() ** 2).sum()), rel=1e-5)  # a float32 reduction
    assert spec.stable_rank == pytest.approx(spec.energy / ref[0] ** 2)


def test_noise_energy_is_what_fp16_rounding_leaves():
    g = torch.Generator().manual_seed(4)
    b = torch.randn(512, 512, generator=g) * 0.05
    m = b.half().float()
    noise = S.noise_energy(m, "F16", b, "F32")
    actual = float(((m - b).double() ** 2).sum())
    assert actual == pytest.approx(noise, rel=0.05)  # uniform rounding error: ulp²/12 per value
    assert S.rounding_only(m - b, m, "F16", b, "F32")
    bumped = m.clone()
    bumped[7, 7] += 4 * float(torch.finfo(torch.float16).eps) * max(abs(float(m[7, 7])), 2**-14)
    assert not S.rounding_only(bumped - b, bumped, "F16", b, "F32")
    assert S.noise_energy(m.round(), "I32", b.round(), "I32") == 0.0


def test_as_matrix_reshapes_conv_kernels_as_locon_does():
    assert S.as_matrix(torch.zeros(8, 4, 3, 3)).shape == (8, 36)
    assert S.as_matrix(torch.zeros(8, 4, 1, 1)).shape == (8, 4)
    assert S.as_matrix(torch.zeros(8)) is None


@pytest.mark.parametrize("shape", [(128, 96), (640, 1280)])
def test_factorize_at_rank_and_at_energy(shape):
    g = torch.Generator().manual_seed(5)
    d = low_rank(shape, 16, 3.0, g)
    f = S.factorize(d, rank=16)
    assert f.rank == 16 and f.up.shape == (shape[0], 16) and f.down.shape == (16, shape[1])
    assert f.rel_error < 1e-5 and f.kept == pytest.approx(1.0, abs=1e-9)
    torch.testing.assert_close(f.up @ f.down, d, atol=1e-5 * float(d.abs().max()), rtol=0)
    assert S.factorize(d, energy=0.999999).rank == 16
    low = S.factorize(d, rank=4)
    assert (
        low.rank == 4
        and 0 < low.kept < 1
        and low.rel_error == pytest.approx(math.sqrt(1 - low.kept), rel=1e-6)
    )


# --------------------------------------------------------------------------- whole models with known deltas


@pytest.mark.parametrize("rank", LORA_RANKS)
def test_baked_lora_found_at_its_rank_in_exactly_its_modules(zoo, rank):
    _, truth = zoo
    r = _run(zoo, f"lora_r{rank}")
    targets = {_canonical(k) for k in truth[f"lora_r{rank}"]}
    by_key = {t.key: t for t in r.tensors}
    assert targets <= set(by_key)
    for key, t in by_key.items():
        if key in targets:
            assert (t.kind, t.rank) == ("low-rank", rank), key
        else:
            assert t.kind == "unchanged", key
    assert r.verdict[0] == f"the base with a LoRA baked in (rank {rank})"
    assert (
        f"UNet: LoRA-like: rank {rank} in attn1/attn2 of every block, everything else unchanged" in r.verdict
    )
    assert "CLIP-L: unchanged" in r.verdict and "VAE decoder: unchanged" in r.verdict


def test_dense_finetune_is_high_rank_everywhere(zoo):
    r = _run(zoo, "finetune")
    unet = [t for t in r.tensors if t.component == "denoiser"]
    weights = [t for t in unet if t.size is not None and t.size >= 16]
    assert weights and all(t.kind == "high-rank" for t in weights)
    assert all(t.effective_rank_90 > t.size / 4 for t in weights)
    assert all(t.kind == "changed" for t in unet if t.size is None)
    assert r.verdict[0] == "a fine-tune of the base: high-rank changes"
    assert r.verdict[1].startswith("UNet: full fine-tune: Δ is high-rank")
    assert all(t.kind == "unchanged" for t in r.tensors if t.component != "denoiser")


def test_fp16_copy_differs_only_by_rounding(zoo):
    r = _run(zoo, "base", base="base_fp32")
    assert {t.kind for t in r.tensors} <= {"rounding", "unchanged"}
    assert r.verdict[0] == "the same model: differs only by fp16 rounding"
    assert any(line.startswith("CLIP-L: differs only by fp16 rounding") for line in r.verdict)


def test_text_encoder_changed_in_one_layer_shows_only_that_layer(zoo):
    r = _run(zoo, "te_layer")
    changed = [t for t in r.tensors if t.kind != "unchanged"]
    assert [t.key for t in changed] == [_canonical(TE_LAYER)]
    assert changed[0].block == "layer 3" and changed[0].kind == "high-rank"
    line = next(v for v in r.verdict if v.startswith("CLIP-L:"))
    assert "in 1 of" in line and "layer 3" in line and "everything else unchanged" in line
    assert "UNet: unchanged" in r.verdict


def test_text_encoder_lora_and_groupings(zoo):
    _, truth = zoo
    r = _run(zoo, "lora_te", by="layer")
    te = {_canonical(k) for k in truth["lora_te"] if not k.startswith(UNET)}
    assert {t.key for t in r.tensors if t.component == "clip_l" and t.kind == "low-rank"} == te
    assert "CLIP-L: LoRA-like: rank 8 in attention of every layer, everything else unchanged" in r.verdict
    layers = {(g.component, g.name): g for g in r.groups}
    assert layers[("denoiser", "attn1")].ranks == {8: 64} and layers[("denoiser", "ff")].kind == "unchanged"
    by_key = _run(zoo, "lora_te", by="key")
    assert len(by_key.groups) == len(by_key.tensors)


def test_cli_json_plot_and_refusals(zoo, cli, tmp_path):
    folder, _ = zoo
    out, png = tmp_path / "d.json", tmp_path / "d.png"
    p = cli(
        "delta",
        str(folder / "lora_r8.safetensors"),
        "--base",
        str(folder / "base.safetensors"),
        "--json",
        str(out),
        "--plot",
        str(png),
    )
    assert p.returncode == 0, p.stderr
    assert "LoRA-like: rank 8 in attn1/attn2 of every block" in p.stdout
    data = json.loads(out.read_text())
    assert data["verdict"][0] == "the base with a LoRA baked in (rank 8)"
    assert {t["rank"] for t in data["tensors"] if t["kind"] == "low-rank"} == {8}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (folder / "base.safetensors").read_bytes()
    onto = cli(
        "delta",
        str(folder / "lora_r8.safetensors"),
        "--base",
        str(folder / "base.safetensors"),
        "--json",
        str(folder / "base.safetensors"),
    )
    assert onto.returncode == 2 and "Traceback" not in onto.stderr
    assert (folder / "base.safetensors").read_bytes() == before
    with pytest.raises(SdlensError, match="same file"):
        delta(folder / "base.safetensors", folder / "base.safetensors")


def test_a_lora_file_is_refused_in_one_line(zoo, tmp_path):
    from sdlens.testing.writers import save_safetensors

    folder, _ = zoo
    lora = tmp_path / "l.safetensors"
    save_safetensors(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 64),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(64, 4),
        },
        lora,
    )
    with pytest.raises(SdlensError, match="is a LoRA file, not a checkpoint") as e:
        delta(lora, folder / "base.safetensors")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("dtype", "word"),
    [(torch.bfloat16, "bf16"), (torch.float8_e4m3fn, "fp8 (e4m3)"), (torch.float8_e5m2, "fp8 (e5m2)")],
)
def test_bf16_and_fp8_copies_differ_only_by_their_rounding(tmp_path, dtype, word):
    from sdlens.testing.writers import save_safetensors
    from sdlens.testing.zoo_unet import build_single_file

    base = build_single_file("sd1")
    copy = {
        k: t.to(dtype) if t.is_floating_point() and k.startswith("model.") else t for k, t in base.items()
    }
    save_safetensors(base, tmp_path / "base.safetensors")
    save_safetensors(copy, tmp_path / "copy.safetensors")
    r = delta(tmp_path / "copy.safetensors", tmp_path / "base.safetensors")
    unet = [t for t in r.tensors if t.component == "denoiser"]
    assert unet and all(t.kind == "rounding" for t in unet if t.energy)
    assert f"UNet: differs only by {word} rounding" in r.verdict[1]
    assert r.verdict[0] == f"the same model: differs only by {word} rounding"


def test_fused_kernel_path_gives_the_torch_paths_answer(zoo, monkeypatch):
    """Large tensors take one fused pass over the stored bytes (kernels.delta_stats); force it on the small
    zoo and compare with the torch path tensor by tensor."""
    from sdlens.analysis import kernels

    torch_path = {t.key: t for t in _run(zoo, "lora_te").tensors}
    monkeypatch.setattr(kernels, "KERNEL_DELTA_MIN", 0)
    fused = _run(zoo, "lora_te")
    assert len(fused.tensors) == len(torch_path)
    for t in fused.tensors:
        ref = torch_path[t.key]
        assert (t.kind, t.rank) == (ref.kind, ref.rank), t.key
        assert t.energy == pytest.approx(ref.energy, rel=1e-5, abs=1e-30)  # float32 partial sums, both
        assert t.noise == pytest.approx(ref.noise, rel=1e-5, abs=1e-30)


Q = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
FF = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.2.weight"


@pytest.fixture(scope="module")
def tiny_fp16(tmp_path_factory):
    from sdlens.testing.writers import save_safetensors
    from sdlens.testing.zoo_unet import build_single_file

    folder = tmp_path_factory.mktemp("tiny-delta")
    base = build_single_file("sd1", dtype=torch.float16)
    save_safetensors(base, folder / "base.safetensors")
    return folder, base


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_is_said_apart_never_a_crash_or_rounding(tiny_fp16, bad):
    from sdlens.analysis.lora_extract import NON_FINITE, extract_lora
    from sdlens.testing.writers import save_safetensors

    folder, base = tiny_fp16
    m = dict(base)
    m[Q] = base[Q].clone()
    m[Q].view(-1)[0] = bad
    m[FF] = base[FF] + 0.01 * torch.ones_like(base[FF])  # a real change beside it
    path = save_safetensors(m, folder / f"bad-{bad}.safetensors")
    r = delta(path, folder / "base.safetensors")
    by = {t.key: t for t in r.tensors}
    assert by["denoiser/" + Q.removeprefix(UNET)].kind == "non-finite"
    assert any("hold NaN or Inf values and were not compared" in v for v in r.verdict)
    rep = extract_lora(path, folder / "base.safetensors", rank=2, out=folder / f"x-{bad}.safetensors")
    left = {x["name"]: x["reason"] for x in rep["left_out"]}
    assert left["denoiser/" + Q.removeprefix(UNET)] == NON_FINITE
    assert rep["overall"]["modules"] == 1 and math.isfinite(rep["overall"]["delta_in_targets"])


def test_a_few_values_off_by_a_few_steps_is_rounding_not_a_rank_0_lora(tiny_fp16):
    from sdlens.testing.writers import save_safetensors

    folder, base = tiny_fp16
    m = dict(base)
    m[FF] = base[FF].clone()
    m[FF].view(-1).view(torch.int16)[5] += 3  # three fp16 steps on one value
    r = delta(save_safetensors(m, folder / "ulps.safetensors"), folder / "base.safetensors")
    assert {t.kind for t in r.tensors} <= {"unchanged", "rounding"}
    assert "LoRA" not in r.verdict[0]


def test_factorize_writes_no_zero_directions_on_the_sketch_path():
    g = torch.Generator().manual_seed(9)
    d = low_rank((640, 1280), 4, 2.0, g)  # sketched: smaller side > EXACT_MAX
    f = S.factorize(d, rank=32)
    assert f.rank == 4 and f.rel_error < 1e-5
