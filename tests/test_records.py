"""The architecture records are the one source of truth: every record's config-from-shapes rebuilds a tiny file of
each of its layouts parameter for parameter, every pipeline resolves by its names, a config.json finds its own
record, and the consumers of the records name no family."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from sdlens.arch import build as B
from sdlens.arch import families
from sdlens.arch.from_checkpoint import (
    persistent_buffers,
    record_for_config,
    spec_from_config_json,
    spec_from_path,
)
from sdlens.testing import zoo_dit as zd
from sdlens.testing import zoo_new_b as zb
from sdlens.testing import zoo_unet as zu

SRC = Path(__file__).resolve().parents[1] / "src" / "sdlens"
StateDict = dict[str, torch.Tensor]

# record id -> layout -> a tiny denoiser file's state dict (real key names, random weights). A record with a
# config_from_shapes needs one entry per layout it is read in, "diffusers" among them (docs/adding-a-family.md).
_DIT = {
    "sd3": ("sd3", None),
    "sd35m": ("sd35m", None),
    "sd35": ("sd35", None),
    "flux_dev": ("flux_dev", None),
    "flux_schnell": ("flux_schnell", None),
    "auraflow": ("auraflow", None),
    "hunyuandit": ("hunyuandit", None),
}
# PixArt's original file also holds the null caption (no diffusers place): its count is checked in test_pixart_convert
_DIFFUSERS_ONLY = {"pixart_alpha": ("pixart_alpha", None), "pixart_sigma": ("pixart_sigma", None)}
# the families of testing/zoo_new_b (HiDream ships only the diffusers layout)
_NEW_B = {
    "hidream_i1": ("diffusers",),
    "chroma": ("original", "diffusers"),
    "wan21_t2v_1_3b": ("original", "diffusers"),
    "wan21_t2v_14b": ("original", "diffusers"),
    "wan21_i2v_14b": ("original", "diffusers"),
    "ltx_video": ("original", "diffusers"),
}
TINY: dict[str, dict[str, Callable[[], StateDict]]] = {
    **{
        f: {
            "original": lambda f=f: zu.build_single_file(f),  # the whole single file: the split is tested too
            "diffusers": lambda f=f: zu.build_diffusers_parts(f)["unet"],
        }
        for f in zu.FAMILIES
    },
    **{
        f: {
            "original": lambda n=n, v=v: zd.build_single_file(n, variant=v),
            "diffusers": lambda n=n, v=v: zd.build_denoiser(n, layout="diffusers", variant=v),
        }
        for f, (n, v) in _DIT.items()
    },
    **{
        f: {"diffusers": lambda n=n, v=v: zd.build_denoiser(n, layout="diffusers", variant=v)}
        for f, (n, v) in _DIFFUSERS_ONLY.items()
    },
    **{
        f: {lay: lambda f=f, lay=lay: zb.build_denoiser(f, layout=lay) for lay in lays}
        for f, lays in _NEW_B.items()
    },
}
# a refinement (Playground v2.5 of SDXL) is measured as its base, whose files are tested; `sdlens arch` measures
# records with a pipeline only (PixArt's config-from-shapes serves convert: tests/test_pixart_convert.py)
DERIVABLE = [
    f
    for f in families.all_families()
    if f.denoiser is not None and f.denoiser.config_from_shapes and not f.base and f.pipeline
]
PIPELINES = [f for f in families.all_families() if f.pipeline is not None and f.denoiser is not None]


def test_every_derivable_record_has_tiny_files():
    assert [f.id for f in DERIVABLE if f.id not in TINY] == []


@pytest.mark.parametrize(("family", "layout"), [(f.id, lay) for f in DERIVABLE for lay in TINY.get(f.id, {})])
def test_config_from_shapes_rebuilds_the_file(tmp_path, family, layout):
    """The file is told apart from its neighbours (dev vs schnell, SD3 vs SD3.5 medium, base vs refiner) and the
    record's derived config builds, on meta, exactly the file's parameters (SD3's stored pos_embed is a buffer)."""
    sd = TINY[family][layout]()
    path = tmp_path / f"{family}-{layout}.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    spec = spec_from_path(path)
    assert (spec.family, spec.key) == (family, family)
    model = B.build_denoiser(spec.cls_name, spec.config)
    diffusers = TINY[family][
        "diffusers"
    ]()  # the same denoiser as diffusers' state dict: parameters + buffers
    expected = sum(v.numel() for v in diffusers.values()) - persistent_buffers(model)
    assert B.count_params(model) == spec.reference_params == expected
    assert not any("figures are for the derived config" in n for n in spec.notes)


@pytest.mark.parametrize("family", [f.id for f in PIPELINES])
def test_pipeline_resolves_by_id_name_and_aliases(family):
    fam = families.get(family)
    for name in (fam.id, fam.name, fam.pipeline.name, *fam.pipeline.aliases):
        assert families.resolve(name) == family, name
        assert B.resolve_alias(name) == family, name
    spec = B.released_spec(fam.pipeline.aliases[0] if fam.pipeline.aliases else fam.id)
    assert (spec.key, spec.family, spec.name, spec.steps) == (
        family,
        family,
        fam.pipeline.name,
        fam.pipeline.steps,
    )
    assert spec.text_encoders == tuple((t.kind, t.tokens) for t in fam.text_encoders)


def test_flux_is_an_alias_of_flux_dev():
    assert B.released_spec("flux").key == "flux_dev"
    assert B.measured_models() == tuple(f.id for f in PIPELINES if f.pipeline.measured)


@pytest.mark.parametrize("family", [f.id for f in PIPELINES])
def test_released_config_json_finds_its_record(tmp_path, family):
    """A config.json of each released denoiser maps back to its own record, with that record's pipeline: FLUX
    without guidance is schnell (4 steps, 256 T5 tokens), the refiner conditions on CLIP-G alone."""
    fam = families.get(family)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"_class_name": fam.denoiser.cls_name, **fam.denoiser.config}))
    spec = spec_from_config_json(cfg)
    # a record whose released denoiser config equals an earlier one's (same class, same values) can't be told by
    # its config.json alone: the earlier record takes it
    twins = [
        f.id
        for f in PIPELINES
        if f.denoiser.cls_name == fam.denoiser.cls_name
        and dict(f.denoiser.config) == dict(fam.denoiser.config)
    ]
    assert spec.family == twins[0]
    fam = families.get(twins[0])
    assert spec.text_encoders == tuple((t.kind, t.tokens) for t in fam.text_encoders)
    assert (spec.steps, spec.text_tokens) == (fam.pipeline.steps, fam.pipeline.text_tokens)


def test_config_neighbours_stay_apart():
    schnell, refiner = families.get("flux_schnell"), families.get("sdxl_refiner")
    assert (schnell.pipeline.steps, schnell.pipeline.text_tokens) == (4, 256)
    assert refiner.text_encoder_kinds == ("clip_g",)
    unet = "UNet2DConditionModel"
    assert record_for_config(unet, {"cross_attention_dim": 768}).id == "sd1"
    assert record_for_config(unet, {"cross_attention_dim": 1024, "use_linear_projection": True}).id == "sd2"
    assert record_for_config(unet, {"cross_attention_dim": 512, "use_linear_projection": True}).id == "sd2"
    assert record_for_config(unet, {"cross_attention_dim": 512}).id == "sd1"
    assert (
        record_for_config("FluxTransformer2DModel", {}).id == "flux_schnell"
    )  # guidance_embeds defaults to False
    # diffusers' own rule: size conditioning (PixArt-α) unless told otherwise, at the default sample size 128
    assert record_for_config("PixArtTransformer2DModel", {}).id == "pixart_alpha"
    assert (
        record_for_config("PixArtTransformer2DModel", {"use_additional_conditions": False}).id
        == "pixart_sigma"
    )


@pytest.mark.parametrize(("family", "time_ids"), [("sdxl", 6), ("sdxl_refiner", 5)])
def test_unet_time_ids_come_from_the_record(family, time_ids):
    spec = B.released_spec(family)
    cfg = {"in_channels": 4, **spec.config}
    inputs = B.denoiser_inputs(
        spec, SimpleNamespace(config=SimpleNamespace(**cfg)), 1, 1024, 1024, torch.float16
    )
    added = inputs["added_cond_kwargs"]
    assert tuple(added["time_ids"].shape) == (1, time_ids)
    assert tuple(added["text_embeds"].shape) == (1, 1280)  # CLIP-G's pooled output, in both


def test_released_params_have_a_source_and_rebuild():
    """Counts of the measured pipelines are checked by tests/test_arch_cost.py; the others are built here."""
    measured = set(B.measured_models())
    for f in families.all_families():
        if f.denoiser is None or f.denoiser.params is None:
            continue
        assert f.denoiser.params_source, f.id
        if f.id not in measured:
            assert (
                B.count_params(B.build_denoiser(f.denoiser.cls_name, dict(f.denoiser.config)))
                == f.denoiser.params
            )


@pytest.mark.parametrize(
    "module", ["arch/from_checkpoint.py", "arch/build.py", "arch/shapes.py", "analysis/cost.py"]
)
def test_consumers_name_no_family(module):
    text = (SRC / module).read_text()
    names = {f.id for f in families.all_families()} | {a for f in PIPELINES for a in f.pipeline.aliases}
    quoted = set(re.findall(r"""["']([\w.\-]+)["']""", text))
    assert sorted(quoted & names) == []
