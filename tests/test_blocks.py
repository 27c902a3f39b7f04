"""Merge-block maps on the real full-size key sets: the block counts of architectures.md §1 and §5 sizes."""

from __future__ import annotations

import math

import pytest

from sdlens.arch.blocks import block_names, block_of
from sdlens.arch.canonical import canonical_index
from sdlens.io.base import TensorInfo
from sdlens.io.dtypes import st_name


def _index(sd):
    infos = {k: TensorInfo(k, tuple(t.shape), st_name(t.dtype), "", 0) for k, t in sd.items()}
    return canonical_index(infos)


def _blocks(family_builder, time_embed="IN00"):
    idx, family = _index(family_builder())
    per: dict[str, int] = {}
    for name, ref in idx.items():
        if name.startswith("denoiser/"):
            b = block_of(name, family, time_embed=time_embed)
            per[b] = per.get(b, 0) + math.prod(ref.shape)
    return family, per


def _unet(family):
    from sdlens.testing.zoo_unet import build_single_file

    return lambda: build_single_file(family, size="full")


def _dit(family, **kw):
    from sdlens.testing.zoo_dit import build_single_file

    return lambda: build_single_file(family, size="full", **kw)


@pytest.mark.parametrize(
    ("builder", "family", "count", "names"),
    [
        (_unet("sd1"), "sd1", 25, ["IN00", "IN11", "M00", "OUT00", "OUT11"]),
        (_unet("sd2"), "sd2", 25, ["IN00", "IN11", "M00", "OUT11"]),
        (_unet("sdxl"), "sdxl", 19, ["IN00", "IN08", "M00", "OUT08"]),
        (_dit("flux"), "flux_dev", 57 + 2, ["D00", "D18", "S00", "S37", "IN", "OUT"]),
        (_dit("sd3"), "sd3", 24 + 2, ["J00", "J23", "IN", "OUT"]),
    ],
)
def test_block_counts_match_the_mbw_layers(builder, family, count, names):
    fam, per = _blocks(builder)
    assert fam == family
    assert len(per) == count and "BASE" not in per
    assert set(names) <= set(per)


def test_sd1_block_sizes_and_time_embed_switch():
    _, per = _blocks(_unet("sd1"))
    assert per["IN03"] == pytest.approx(0.92e6, rel=0.01)
    assert per["OUT03"] == pytest.approx(83.9e6, rel=0.01)
    assert sum(per.values()) == 859_520_964
    _, per_base = _blocks(_unet("sd1"), time_embed="BASE")
    moved = per["IN00"] - per_base["IN00"]
    assert per_base["BASE"] == moved == 320 * 1280 + 1280 + 1280 * 1280 + 1280  # time_embed.0 and .2


def test_non_denoiser_tensors_are_base():
    assert block_of("clip_l/text_model.final_layer_norm.weight", "sd1") == "BASE"
    assert block_of("vae_decoder/decoder.conv_out.weight", "sdxl") == "BASE"
    assert block_of("denoiser/anything", "unknown") == "ALL"


@pytest.mark.parametrize(
    ("builder", "family"),
    [
        (_unet("sd1"), "sd1"),
        (_unet("sd2"), "sd2"),
        (_unet("sdxl"), "sdxl"),
        (_unet("sdxl_refiner"), "sdxl_refiner"),
        (_dit("flux"), "flux_dev"),
        (_dit("sd3"), "sd3"),
        (_dit("sd35m"), "sd35m"),
        (_dit("sd35"), "sd35"),
        (_dit("auraflow"), "auraflow"),
        (_dit("hunyuandit"), "hunyuandit"),
        (_dit("pixart_sigma"), "pixart_sigma"),
    ],
)
def test_block_names_are_exactly_the_blocks_hit(builder, family):
    fam, per = _blocks(builder)
    assert fam == family
    names = block_names(family)
    assert names[0] == "BASE" and len(set(names)) == len(names)
    assert set(per) == set(names) - {"BASE"}


def test_sd1_with_time_embed_in_base_still_hits_every_block():
    _, per = _blocks(_unet("sd1"), time_embed="BASE")
    names = block_names("sd1")
    assert len(names) == 26 and set(per) == set(names)  # IN00 keeps input_blocks.0 (conv_in)
    assert per["IN00"] == 4 * 320 * 9 + 320


def test_block_names_order_and_unknown_family():
    assert block_names("sd1")[:3] == ["BASE", "IN00", "IN01"] and block_names("sd1")[-1] == "OUT11"
    assert block_names("sdxl")[10:12] == ["M00", "OUT00"]
    flux = block_names("flux_dev")
    assert sum(n.startswith("D") for n in flux) == 19 and sum(n.startswith("S") for n in flux) == 38
    assert block_names("nonesuch") == ["BASE", "ALL"]
