"""diff aligns the original single file, its ComfyUI form and its diffusers folder of SANA, Lumina 2, Stable
Cascade, Chroma, Wan and LTX-Video tensor for tensor (the three built from one tiny random model: the truth is
"identical", save the tensors only the original keeps). HiDream has no original layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdlens.analysis import matrix as M
from sdlens.analysis.diff import diff
from sdlens.arch import families
from sdlens.arch.keymap import DitMap, Rel, dit_map
from sdlens.arch.keymap._dit import wb
from sdlens.convert import ConvertOptions, convert, make_plan
from sdlens.io.open import open_checkpoint
from sdlens.testing import zoo_new_a as A
from sdlens.testing import zoo_new_b as B
from sdlens.testing.writers import save_safetensors

COMFY = "model.diffusion_model."
# family -> the original's tensors diffusers has no place for (its converter drops them)
ORIGINAL_ONLY = {
    "sana": ["denoiser/pos_embed", "denoiser/y_embedder.y_embedding"],
    "lumina2": ["denoiser/norm_final.weight"],
}
FAMILIES = [
    "sana",
    "lumina2",
    "stable_cascade_c",
    "stable_cascade_b",
    "chroma",
    "wan21_t2v_1_3b",
    "wan21_i2v_14b",
    "ltx_video",
]


def _models(fid: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(diffusers state dict, original state dict, diffusers config) of the family's tiny seeded model."""
    if fid in A.FAMILY_IDS:
        return A.diffusers_state_dict(fid), A.original_state_dict(fid), A.tiny_config(fid)
    return B.build_denoiser(fid), B.build_denoiser(fid, layout="original"), B.denoiser_config(fid)[1]


def _folder(folder: Path, fid: str, sd: dict[str, torch.Tensor], cfg: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"_class_name": families.get(fid).denoiser.cls_name, **cfg})
    )
    save_safetensors(sd, folder / "diffusion_pytorch_model.safetensors")
    return folder


def _forms(tmp_path: Path, fid: str, sd: dict[str, torch.Tensor] | None = None) -> tuple[Path, Path, Path]:
    """(original file, ComfyUI file, diffusers model folder); ``sd`` replaces the diffusers form's weights."""
    ref, orig, cfg = _models(fid)
    a = save_safetensors(orig, tmp_path / f"{fid}.safetensors")
    b = save_safetensors({COMFY + k: v for k, v in orig.items()}, tmp_path / f"{fid}_comfy.safetensors")
    return a, b, _folder(tmp_path / f"{fid}_diffusers", fid, ref if sd is None else sd, cfg)


def test_every_dit_record_has_its_map():
    names = {f.denoiser.keymap for f in families.all_families() if f.denoiser and f.denoiser.keymap}
    assert {"sana", "lumina2", "stable_cascade", "chroma", "wan", "ltx_video"} <= names
    assert [n for n in sorted(names - {"unet"}) if dit_map(n) is None] == []


@pytest.mark.parametrize("fid", FAMILIES)
def test_three_forms_diff_identical(tmp_path, fid):
    a, b, c = _forms(tmp_path, fid)
    n_orig = len(_models(fid)[1])
    for x, y in ((a, b), (a, c), (b, c)):
        r = diff(x, y)
        assert r.family_a == r.family_b == fid
        assert [t.key for t in r.tensors if not t.identical] == []
        assert r.only_b == []
        assert r.only_a == ([] if y == b else ORIGINAL_ONLY.get(fid, []))
        # every tensor is compared: the fused ones as their parts, so the count is at least the file's
        assert len(r.tensors) + len(r.only_a) >= n_orig


@pytest.mark.parametrize(
    ("fid", "key", "block"),
    [
        ("sana", "transformer_blocks.1.attn1.to_k.weight", "B01"),  # a third of the fused attn.qkv
        ("sana", "transformer_blocks.2.attn2.to_v.bias", "B02"),  # half of cross_attn.kv_linear
        ("lumina2", "layers.1.attn.to_v.weight", "B01"),  # grouped-query qkv: v is the last kv_heads rows
        ("stable_cascade_c", "down_blocks.0.2.attention.to_k.weight", "D00"),  # in_proj_weight's middle third
        ("stable_cascade_b", "clip_txt_pooled_mapper.weight", "IN"),  # stage B's original clip_mapper
        ("chroma", "single_transformer_blocks.1.proj_mlp.weight", "S01"),  # linear1's MLP rows
        ("chroma", "distilled_guidance_layer.norms.2.weight", "IN"),  # the original's norms.2.scale
        ("wan21_t2v_1_3b", "blocks.1.attn2.to_k.weight", "B01"),  # cross_attn.k
        ("wan21_t2v_1_3b", "blocks.4.norm2.weight", "B04"),  # the original's norm3
        ("ltx_video", "transformer_blocks.1.attn1.norm_q.weight", "B01"),  # attn1.q_norm
    ],
)
def test_one_change_in_the_diffusers_form_is_found(tmp_path, fid, key, block):
    sd = dict(_models(fid)[0])
    sd[key] = sd[key] + 0.25
    _a, b, c = _forms(tmp_path, fid, sd)
    r = diff(b, c)  # the ComfyUI single file against the diffusers folder
    assert [(d.key, d.block) for d in r.tensors if d.changed] == [(f"denoiser/{key}", block)]
    assert r.only_a == ORIGINAL_ONLY.get(fid, []) and r.only_b == []


@pytest.mark.parametrize("fid", ["stable_cascade_c", "sana", "wan21_t2v_1_3b"])
def test_pipeline_folder_under_the_records_slot(tmp_path, fid):
    # the denoiser in the pipeline slot the record names (Stable Cascade's prior: prior/, not transformer/)
    rec = families.get(fid)
    slot = rec.diffusers_slots["denoiser"]
    ref, orig, cfg = _models(fid)
    pipe = tmp_path / f"{fid}_pipe"
    _folder(pipe / slot, fid, ref, cfg)
    (pipe / "model_index.json").write_text(
        json.dumps({"_class_name": rec.pipeline.diffusers_class, slot: ["diffusers", rec.denoiser.cls_name]})
    )
    r = diff(save_safetensors({COMFY + k: v for k, v in orig.items()}, tmp_path / "c.safetensors"), pipe)
    assert r.family_a == r.family_b == fid
    assert not any(t.changed for t in r.tensors) and r.only_b == []
    assert r.only_a == ORIGINAL_ONLY.get(fid, [])


def test_matrix_groups_the_three_cascade_forms(tmp_path):
    paths = _forms(tmp_path, "stable_cascade_b")
    r = M.matrix(list(paths))
    assert r.identity["denoiser"] == [[p.name for p in paths]]
    assert float(r.matrix("denoiser").max()) == 0.0


@pytest.mark.parametrize("fid", ["wan21_t2v_1_3b", "chroma", "ltx_video"])
def test_convert_layout_round_trip(tmp_path, fid):
    # the ComfyUI file -> a diffusers folder (identical to it by diff) -> a single file with the same bytes
    _a, b, _c = _forms(tmp_path, fid)
    folder, back = tmp_path / "dif", tmp_path / "back.safetensors"
    assert convert(make_plan(b, folder, ConvertOptions(layout="diffusers"))).verification.ok
    r = diff(b, folder)
    assert not any(t.changed for t in r.tensors) and r.only_a == r.only_b == []
    assert convert(make_plan(folder, back, ConvertOptions(layout="single"))).verification.ok
    with open_checkpoint(back) as x, open_checkpoint(b) as y:
        assert sorted(x.tensors) == sorted(y.tensors)
        assert all(torch.equal(x.read(k), y.read(k)) for k in y.tensors)


def test_engine_path_field_condition_and_same_name_keys():
    km = DitMap(
        "t",
        (
            wb("mapper.", "pooled_mapper.", present=("stage_b.weight",) * 2),
            Rel("{p}.attn.in_proj_weight", ("{p}.to_q.weight", "{p}.to_k.weight")),
            Rel("{p}", ("{p}",)),
        ),
    )
    orig = {"a.0.b.attn.in_proj_weight": (4, 3), "pooled_mapper.weight": (2, 2), "x.weight": (1,)}
    # same-name keys match both sides: only the fused one tells the layout
    assert km.layout(orig) == "original"
    plan = km.to_diffusers(orig)
    assert plan.left == [] and plan.targets["a.0.b.to_k.weight"].pieces[0].rows == (2, 4)
    assert "pooled_mapper.weight" in plan.targets  # no stage_b key: the rename does not apply
    dif = {
        "a.0.b.to_q.weight": (2, 3),
        "a.0.b.to_k.weight": (2, 3),
        "pooled_mapper.weight": (2, 2),
        "stage_b.weight": (1,),
    }
    assert km.layout(dif) == "diffusers"
    back = km.to_original(dif).targets
    assert set(back) == {"a.0.b.attn.in_proj_weight", "mapper.weight", "stage_b.weight"}
    assert back["a.0.b.attn.in_proj_weight"].shape == (4, 3)
