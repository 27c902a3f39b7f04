"""sdlens arch: known truths — exact parameter counts, block sums, GEMM sums, FLOP scaling laws."""

from __future__ import annotations

import csv
import math
from functools import cache

import pytest

from sdlens.analysis.cost import analyse, gemm_rows, write_gemm_csv
from sdlens.arch import build as B
from sdlens.arch import configs as C
from sdlens.arch import families
from sdlens.arch import registry as R

ALL = ("sd1", "sd2", "sdxl", "sd3", "sd35", "hunyuandit", "auraflow", "flux_dev")
# the smallest resolution each model takes (keeps the meta forwards quick; the laws hold at any size)
SMALL = {
    "sd1": (256, 256),
    "sd2": (256, 256),
    "sdxl": (256, 256),
    "sd3": (256, 256),
    "sd35": (256, 256),
    "hunyuandit": (256, 256),
    "auraflow": (256, 256),
    "flux_dev": (256, 256),
}


@cache
def report(
    model: str,
    res: tuple[int, int] | None = None,
    batch: int = 1,
    cfg: bool | None = None,
    steps: int | None = None,
    img2img: bool = False,
):
    return analyse(model, res=res or SMALL[model], batch=batch, cfg=cfg, steps=steps, img2img=img2img)


@pytest.mark.parametrize("model", ALL)
def test_denoiser_params_exact_and_blocks_add_up(model):
    r = report(model)
    assert r.params == C.DENOISER_PARAMS[model]
    assert r.components[0].matches is True
    assert sum(b.params for b in r.blocks) == r.params
    assert sum(b.flops for b in r.blocks) == r.denoiser.total_flops
    assert math.isclose(sum(b.share for b in r.blocks), 1.0)
    fam = R.PIPELINES[model]["family"]
    assert r.mbw_blocks == families.get(fam).blocks.mbw == r.mbw_expected
    # the GEMM table adds up to the reported total, row by row
    rows = gemm_rows(r)
    assert len(rows) == r.denoiser.gemms
    assert sum(row["flops"] for row in rows) == r.denoiser.total_flops
    assert all(
        row["flops"] == 2 * row["macs"] == 2 * row["batch"] * row["M"] * row["N"] * row["K"] for row in rows
    )
    assert r.denoiser.flops["attn_qk"] > 0 and r.denoiser.flops["linear"] > 0
    assert r.denoiser.peak_materialised >= r.denoiser.peak_fused > 0


@pytest.mark.parametrize("kind", ["clip_l", "openclip_h", "clip_g", "t5"])
def test_text_encoder_params_exact(kind):
    assert B.text_encoder_params(kind) == C.TEXT_ENCODER_PARAMS[kind]


def test_vae_params_exact():
    total, _enc, dec = B.vae_params("kl_f8_c4")
    assert total == C.VAE_PARAMS["kl_f8_c4"] == 83_653_863
    assert dec - 20 == 49_490_179  # architectures.md §2's decoder figure excludes post_quant_conv (4·4+4)
    assert B.vae_params("kl_f8_c16")[0] == C.VAE_PARAMS["kl_f8_c16"]
    r = report("sd1")
    vae = r.components[-1]
    assert vae.matches and vae.detail["decoder (decoder.*)"] == 49_490_179


def test_unet_blocks_resolution_channels_and_keys():
    r = report("sd1", (512, 512))
    blocks = {b.name: b for b in r.blocks}
    assert blocks["IN00"].resolution == "64×64" and blocks["IN00"].channels == 320
    assert blocks["IN03"].resolution == "32×32"
    assert blocks["M00"].resolution == "8×8" and blocks["M00"].channels == 1280
    assert blocks["OUT11"].channels == 4  # the final out conv goes to OUT11
    assert "model.diffusion_model.input_blocks.4." in blocks["IN04"].keys
    assert "model.diffusion_model.time_embed." in blocks["IN00"].keys
    assert (
        round(blocks["IN03"].params / 1e6, 2) == 0.92 and round(blocks["OUT03"].params / 1e6, 1) == 83.9
    )  # §5
    flux = {b.name: b for b in report("flux_dev").blocks}
    assert flux["D07"].keys == ["double_blocks.7."] and flux["S37"].keys == ["single_blocks.37."]


@pytest.mark.parametrize("model", ["sd1", "sd3", "flux_dev"])
def test_flops_double_with_batch_and_cfg(model):
    one = report(model, cfg=False)
    two = report(model, batch=2, cfg=False)
    guided = report(model, cfg=True)
    assert two.denoiser.total_flops == 2 * one.denoiser.total_flops
    assert guided.denoiser.total_flops == 2 * one.denoiser.total_flops
    assert all(two.denoiser.flops[k] == 2 * one.denoiser.flops[k] for k in one.denoiser.flops)
    # per image: the batch cancels, CFG doubles the denoiser
    assert two.per_image["denoiser"] == one.per_image["denoiser"]
    assert guided.per_image["denoiser"] == 2 * one.per_image["denoiser"]


def test_per_image_linear_in_steps():
    a, b, c = (report("sd1", steps=s) for s in (0, 10, 30))
    fixed = a.per_image["total"]
    assert fixed == a.per_image["text_encoders"] + a.per_image["vae_decode"] > 0
    assert b.per_image["total"] - fixed == 10 * b.denoiser.total_flops  # CFG: one forward at batch 2
    assert c.per_image["total"] - fixed == 3 * (b.per_image["total"] - fixed)
    i2i = report("sd1", steps=10, img2img=True)
    assert i2i.per_image["total"] == b.per_image["total"] + i2i.per_image["vae_encode"] > b.per_image["total"]


def _by_module(r):
    out: dict[tuple[str, str], int] = {}
    for o in r.ops:
        out[(o.module, o.op)] = out.get((o.module, o.op), 0) + o.flops
    return out


def test_resolution_scaling_unet():
    """Doubling the side: convolutions ×4 exactly; image-token linears ×4, text-token ones ×1;
    self-attention ×16 (∝ pixels²), cross-attention ×4."""
    small, big = report("sd1", (256, 256), cfg=False), report("sd1", (512, 512), cfg=False)
    assert big.denoiser.flops["conv"] == 4 * small.denoiser.flops["conv"]
    s, b = _by_module(small), _by_module(big)
    assert s.keys() == b.keys()
    for (module, op), f in s.items():
        ratio = b[(module, op)] / f
        if op.startswith("attn"):
            assert ratio == (16 if ".attn1" in module else 4), module
        elif op == "linear":
            text_side = module.endswith(("attn2.to_k", "attn2.to_v"))
            time_side = module.startswith("time_embedding") or module.endswith("time_emb_proj")
            assert ratio == (1 if text_side or time_side else 4), module


def test_resolution_scaling_dit_self_attention():
    """HunyuanDiT: image-token self-attention ∝ tokens² (×16 when the side doubles), cross-attention ∝ tokens."""
    s, b = (
        _by_module(report("hunyuandit", (256, 256), cfg=False)),
        _by_module(report("hunyuandit", (512, 512), cfg=False)),
    )
    assert b[("blocks.0.attn1", "attn_qk")] == 16 * s[("blocks.0.attn1", "attn_qk")]
    assert b[("blocks.0.attn2", "attn_qk")] == 4 * s[("blocks.0.attn2", "attn_qk")]


def test_memory_and_vram():
    r = report("flux_dev")
    m = r.memory
    w = sum(c.weight_bytes("fp16") for c in r.components)
    assert m["weights"]["denoiser"]["fp32"] == 4 * C.DENOISER_PARAMS["flux_dev"]
    assert m["vram_fused"]["all_on_gpu"] == w + max(v["fused"] for v in m["activations"].values())
    assert m["vram_fused"]["text_encoders_offloaded"] < m["vram_fused"]["all_on_gpu"]
    # materialised attention holds B·heads·L² scores: far more than the fused peak at native size for SD1
    sd1 = report("sd1", (512, 512))
    heads, tokens = 8, 64 * 64
    assert sd1.denoiser.peak_materialised - sd1.denoiser.peak_fused >= 2 * 2 * heads * tokens**2 * 2 * 0.9


def test_gemm_csv(tmp_path):
    r = report("sd2")
    path = write_gemm_csv(r, tmp_path / "g.csv")
    rows = list(csv.DictReader(path.open()))
    assert sum(int(x["flops"]) for x in rows) == r.denoiser.total_flops
    conv = next(x for x in rows if x["op"] == "conv")
    assert (
        conv["module"] == "conv_in"
        and conv["conv_in"] == "4"
        and conv["conv_out"] == "320"
        and conv["kernel"] == "3x3"
    )


def test_bad_inputs():
    from sdlens.errors import SdlensError

    with pytest.raises(SdlensError, match="multiples of 64"):
        analyse("sd1", res=(500, 512))
    with pytest.raises(SdlensError, match="unknown model"):
        analyse("sd9")
    with pytest.raises(SdlensError, match="dtype"):
        analyse("sd1", dtype="fp8")
