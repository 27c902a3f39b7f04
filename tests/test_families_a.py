"""Playground v2.5, Stable Cascade (stage C / B), SANA (1600M / 600M), Lumina-Image 2.0: detection from tiny
zoo files built from the real diffusers classes, in the original and diffusers layouts; key maps checked
against diffusers' own converters; released parameter counts from meta-device builds."""

from __future__ import annotations

import pytest
import torch

from sdlens.analysis.inspect import inspect
from sdlens.arch import families
from sdlens.arch.keymap.lumina2 import lumina2_diffusers_to_original, lumina2_original_to_diffusers
from sdlens.arch.keymap.sana import sana_diffusers_to_original, sana_original_to_diffusers
from sdlens.arch.keymap.stable_cascade import cascade_diffusers_to_original, cascade_original_to_diffusers
from sdlens.testing import zoo_new_a as Z
from sdlens.testing.writers import save_safetensors

DIT = ("stable_cascade_c", "stable_cascade_b", "sana", "sana_600m", "lumina2")
NEW = ("playground_v25", *DIT)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo_a")
    cache: dict = {}

    def get(fid: str, layout: str):
        if (fid, layout) not in cache:
            cache[fid, layout] = Z.write(fid, layout, root)
        return cache[fid, layout]

    return get


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("layout", ["original", "diffusers"])
@pytest.mark.parametrize("fid", DIT)
def test_detected_in_each_layout(zoo, fid, layout):
    rep = inspect(zoo(fid, layout))
    assert (rep.family, rep.confidence) == (fid, "high"), rep.reasons
    assert rep.kind.startswith("denoiser")
    assert not rep.unknown_keys
    assert "low" not in rep.confidence and not any(r.startswith("also consistent") for r in rep.reasons)


def test_neighbours_not_confused(zoo):
    # SANA's original layout shares PixArt's t_block; stage C and B share the ResBlocks; 600M vs 1600M by depth
    found = {fid: inspect(zoo(fid, "original")).family for fid in DIT}
    assert found == {fid: fid for fid in DIT}
    assert not any(f.startswith("pixart") for f in found.values())


def test_playground_vs_sdxl_full_size(tmp_path):
    pg = inspect(Z.write_full_unet_sparse("playground_v25", tmp_path))
    xl = inspect(Z.write_full_unet_sparse("sdxl", tmp_path))
    assert (pg.family, pg.confidence) == ("playground_v25", "high")
    assert any("EDM markers" in r for r in pg.reasons)
    assert (xl.family, xl.confidence) == ("sdxl", "high")
    # sdlens arch measures it as the SDXL UNet it is (its record's base)
    from sdlens.arch.from_checkpoint import spec_from_path

    assert spec_from_path(tmp_path / "playground_v25_full.safetensors").family == "sdxl"


def test_playground_tiny_markers_decide(zoo):
    # the same tiny UNet: with the EDM markers Playground v2.5, without them SDXL; a diffusers unet folder carries
    # no markers and is weight-identical to SDXL base, so it stays sdxl
    assert inspect(zoo("playground_v25", "original")).family == "playground_v25"
    assert inspect(zoo("sdxl", "original")).family == "sdxl"
    assert inspect(zoo("playground_v25", "diffusers")).family == "sdxl"


def test_playground_pipeline_folder_by_its_scheduler(tmp_path):
    # a pipeline folder tells them apart by model_index.json's scheduler (EDM DPM-Solver for Playground v2.5)
    pg = inspect(Z.write_unet_pipeline("playground_v25", tmp_path))
    xl = inspect(Z.write_unet_pipeline("sdxl", tmp_path))
    assert (pg.family, xl.family) == ("playground_v25", "sdxl")


@pytest.mark.parametrize("fid", NEW)
def test_meta_build_params_equal_record(fid):
    rec = families.get(fid)
    assert rec.denoiser.params == Z.meta_params(fid)
    assert rec.denoiser.params_source


def test_records_pipelines():
    pg = families.get("playground_v25")
    assert pg.pipeline.scheduler == "EDMDPMSolverMultistepScheduler" and pg.pipeline.prediction == "edm"
    assert families.resolve("playground-v2.5") == "playground_v25"
    assert families.get("sana").latent_channels == 32 and families.get("sana").text_encoder_kinds == (
        "gemma2_2b",
    )
    assert families.get("lumina2").latent_channels == 16
    assert families.get("stable_cascade_c").diffusers_slots["denoiser"] == "prior"


def test_unknown_variant_stays_unknown(tmp_path):
    # a SANA-like file with 12 blocks (no released SANA has 12): unknown, with reasons
    sd = {
        k: v
        for k, v in Z.original_state_dict("sana").items()
        if not k.startswith("blocks.") or int(k.split(".")[1]) < 12
    }
    rep = inspect(save_safetensors(sd, tmp_path / "sana12.safetensors"))
    assert rep.family == "unknown" and rep.reasons


def test_sana_keymap_matches_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_sana_transformer_to_diffusers

    ref = Z.diffusers_state_dict("sana")
    orig = Z.original_state_dict("sana")
    _same(convert_sana_transformer_to_diffusers(dict(orig)), ref)
    _same(sana_original_to_diffusers(orig), ref)
    _same(
        sana_diffusers_to_original(ref),
        {k: v for k, v in orig.items() if k not in ("pos_embed", "y_embedder.y_embedding")},
    )


@pytest.mark.parametrize("fid", ["stable_cascade_c", "stable_cascade_b"])
def test_cascade_keymap_matches_diffusers_converter(fid):
    from diffusers.loaders.single_file_utils import (
        convert_stable_cascade_unet_single_file_to_diffusers as conv,
    )

    ref = Z.diffusers_state_dict(fid)
    orig = cascade_diffusers_to_original(ref)
    assert any(k.endswith("attention.attn.in_proj_weight") for k in orig)
    assert ("clip_mapper.weight" in orig) == (fid == "stable_cascade_b")
    _same(conv(dict(orig)), ref)
    _same(cascade_original_to_diffusers(orig), ref)


def test_lumina2_keymap_matches_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_lumina2_to_diffusers

    # diffusers' converter splits qkv at the released sizes (q 2304 rows, k / v 768): give it those rows
    keys = Z.diffusers_state_dict("lumina2")
    g = torch.Generator().manual_seed(0)
    rows = {"to_q": 2304, "to_k": 768, "to_v": 768}
    ref = {
        k: torch.randn(next((n for s, n in rows.items() if f".{s}." in k), 2), 1, generator=g) for k in keys
    }
    orig = lumina2_diffusers_to_original(ref)
    assert "layers.0.attention.qkv.weight" in orig and "cap_embedder.1.weight" in orig
    _same(convert_lumina2_to_diffusers({**orig, "norm_final.weight": torch.ones(2)}), ref)
    _same(lumina2_original_to_diffusers(orig), ref)
    # the tiny model's own grouped-query sizes round trip too
    tiny = Z.diffusers_state_dict("lumina2")
    cfg = Z.tiny_config("lumina2")
    back = lumina2_original_to_diffusers(
        Z.original_state_dict("lumina2"),
        cfg["num_attention_heads"],
        cfg["num_kv_heads"],
        cfg["hidden_size"] // cfg["num_attention_heads"],
    )
    _same(back, tiny)


def test_inspect_cli_prints_family_name(cli, zoo):
    res = cli("inspect", str(zoo("lumina2", "original")))
    assert res.returncode == 0, res.stderr
    assert "Lumina-Image 2.0" in res.stdout


@pytest.mark.parametrize(
    ("fid", "lite", "variant"),
    [
        (
            "stable_cascade_c",
            {
                "block_out_channels": [1536, 1536],
                "num_attention_heads": [24, 24],
                "down_num_layers_per_block": [4, 12],
                "up_num_layers_per_block": [12, 4],
            },
            "lite (1B)",
        ),
        (
            "stable_cascade_b",
            {
                "block_out_channels": [320, 576, 1152, 1152],
                "num_attention_heads": [0, 0, 18, 18],
                "down_num_layers_per_block": [2, 4, 14, 4],
                "up_num_layers_per_block": [4, 14, 4, 2],
            },
            "lite (700M)",
        ),
    ],
)
def test_cascade_lite_variants(tmp_path, fid, lite, variant):
    from diffusers import StableCascadeUNet

    with torch.device("meta"):
        sd = StableCascadeUNet(**{**Z.full_config(fid), **lite}).state_dict()
    rep = inspect(save_safetensors(cascade_diffusers_to_original(sd), tmp_path / f"{fid}_lite.safetensors"))
    assert rep.family == fid and rep.variants == [variant]


def test_text_encoders_only_stay_sdxl():
    # Playground v2.5 uses SDXL's CLIP-L + CLIP-G: a text-encoder file names its base, SDXL, alone
    from sdlens.arch.detect import family_from_text_encoders

    assert family_from_text_encoders(["clip_l", "clip_g"]) == ("sdxl",)
    assert families.get("playground_v25").base == "sdxl"
