"""The DiT key maps (sdlens.arch.keymap: mmdit, flux, auraflow, hunyuandit, pixart) against diffusers' own
single-file converters, exact tensors; and their header-only plans (row slices) and canonical names."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from sdlens.arch.keymap import Slice, assemble, dit_map
from sdlens.testing import zoo_dit as z
from tests.helpers import TinyFluxTorch

sfu = pytest.importorskip("diffusers.loaders.single_file_utils")

CONVERTERS = {
    "mmdit": sfu.convert_sd3_transformer_checkpoint_to_diffusers,
    "flux": sfu.convert_flux_transformer_checkpoint_to_diffusers,
    "auraflow": sfu.convert_auraflow_transformer_checkpoint_to_diffusers,
}
CASES = [
    ("sd3", None),
    ("sd35m", None),
    ("sd35", None),
    ("flux_dev", None),
    ("flux_schnell", None),
    ("flux_dev", "depth"),
    ("auraflow", None),
]


@cache
def _diffusers(family: str, variant: str | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    return z.build_denoiser(family, layout="diffusers", variant=variant, seed=seed)


def _shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_original_to_diffusers_equals_the_diffusers_converter(family, variant, monkeypatch):
    """A tiny model in the original layout, through diffusers' converter and through our map: the same
    tensors under the same names (and both equal the seeded diffusers model the original was made from)."""
    km = z.keymap_name(family)
    # an original file with all-distinct values, written by an independent seed of the diffusers model
    orig = z.to_original(family, _diffusers(family, variant, seed=3))
    ours = dit_map(km).convert(orig, "diffusers")
    if km == "flux":
        monkeypatch.setattr(sfu, "torch", TinyFluxTorch(orig["img_in.weight"].shape[0]))
    prefix = "model.diffusion_model." if km == "mmdit" else ""
    theirs = CONVERTERS[km]({prefix + k: v for k, v in orig.items()})
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    want = _diffusers(family, variant, seed=3)
    assert set(ours) == set(want) and all(torch.equal(ours[k], want[k]) for k in want)
    back = dit_map(km).convert(ours, "original")
    assert set(back) == set(orig) and all(torch.equal(back[k], orig[k]) for k in orig)


@pytest.mark.parametrize("family", ["sd35m", "flux_dev", "auraflow", "hunyuandit", "pixart_alpha"])
def test_plans_need_only_names_and_shapes(family):
    """The plan from a header (meta tensors: no data) names every output and its shape exactly as the
    conversion of real tensors does."""
    km = dit_map(z.keymap_name(family))
    full = z.build_denoiser(family, size="full", layout="original")
    assert all(v.device.type == "meta" for v in full.values())
    plan = km.to_diffusers(_shapes(full))
    assert plan.left == ([] if not family.startswith("pixart") else ["y_embedder.y_embedding"])
    real = z.build_denoiser(family, size="full", layout="diffusers")
    assert {k: t.shape for k, t in plan.targets.items()} == _shapes(real)
    assert km.to_original(_shapes(real)).left == []


def test_flux_fused_rows_are_exact():
    """FLUX single blocks: linear1 = [to_q; to_k; to_v; proj_mlp] (hidden 3072, MLP 12288) and double-block
    qkv = [to_q; to_k; to_v]; the final modulation's halves trade places."""
    plan = dit_map("flux").to_diffusers(_shapes(z.build_denoiser("flux_dev", size="full")))
    t = plan.targets
    assert t["single_transformer_blocks.7.attn.to_k.weight"].pieces == (
        Slice("single_blocks.7.linear1.weight", (3072, 6144)),
    )
    assert t["single_transformer_blocks.7.proj_mlp.bias"].pieces == (
        Slice("single_blocks.7.linear1.bias", (9216, 21504)),
    )
    assert t["single_transformer_blocks.7.proj_mlp.weight"].shape == (12288, 3072)
    assert t["transformer_blocks.3.attn.add_v_proj.weight"].pieces == (
        Slice("double_blocks.3.txt_attn.qkv.weight", (6144, 9216)),
    )
    assert t["norm_out.linear.weight"].pieces == (
        Slice("final_layer.adaLN_modulation.1.weight", (3072, 6144)),
        Slice("final_layer.adaLN_modulation.1.weight", (0, 3072)),
    )
    assert t["transformer_blocks.0.attn.norm_added_k.weight"].pieces == (
        Slice("double_blocks.0.txt_attn.norm.key_norm.scale"),
    )


def test_sd3_context_pre_only_block_is_swapped_only_there():
    sd = z.build_denoiser("sd3", layout="original")
    d = _diffusers("sd3")
    h = d["transformer_blocks.23.norm1_context.linear.weight"].shape[0] // 2
    last = sd["joint_blocks.23.context_block.adaLN_modulation.1.weight"]
    assert torch.equal(last[:h], d["transformer_blocks.23.norm1_context.linear.weight"][h:])
    assert torch.equal(
        sd["joint_blocks.22.context_block.adaLN_modulation.1.weight"],
        d["transformer_blocks.22.norm1_context.linear.weight"],
    )


def test_hunyuandit_and_pixart_follow_the_original_repositories():
    """No converter ships in the diffusers package for these two; the original names (Tencent's hydit, PixArt's
    PixArtMS, as diffusers' conversion scripts read them) and their fusions are the truth here."""
    hy = (
        dit_map("hunyuandit")
        .to_diffusers(
            {
                "blocks.3.attn1.Wqkv.weight": (48, 16),
                "blocks.3.attn2.kv_proj.bias": (32,),
                "blocks.3.norm2.weight": (16,),
                "blocks.3.norm3.weight": (16,),
                "blocks.3.norm1.weight": (16,),
                "blocks.3.default_modulation.1.weight": (16, 8),
                "final_layer.adaLN_modulation.1.bias": (32,),
                "pooler.positional_embedding": (78, 24),
            }
        )
        .targets
    )
    assert hy["blocks.3.attn1.to_v.weight"].pieces == (Slice("blocks.3.attn1.Wqkv.weight", (32, 48)),)
    assert hy["blocks.3.attn2.to_k.bias"].pieces == (Slice("blocks.3.attn2.kv_proj.bias", (0, 16)),)
    assert hy["blocks.3.norm3.weight"].pieces == (Slice("blocks.3.norm2.weight"),)  # before the MLP
    assert hy["blocks.3.norm2.weight"].pieces == (Slice("blocks.3.norm3.weight"),)  # before cross-attention
    assert hy["blocks.3.norm1.norm.weight"].pieces == (Slice("blocks.3.norm1.weight"),)
    assert "blocks.3.norm1.linear.weight" in hy and "time_extra_emb.pooler.positional_embedding" in hy
    assert hy["norm_out.linear.bias"].pieces == (
        Slice("final_layer.adaLN_modulation.1.bias", (16, 32)),
        Slice("final_layer.adaLN_modulation.1.bias", (0, 16)),
    )
    px = dit_map("pixart").to_diffusers(
        {
            "blocks.0.attn.qkv.weight": (36, 12),
            "blocks.0.cross_attn.kv_linear.weight": (24, 12),
            "t_block.1.weight": (72, 12),
            "final_layer.scale_shift_table": (2, 12),
            "y_embedder.y_embedding": (120, 32),
        }
    )
    assert px.targets["transformer_blocks.0.attn1.to_k.weight"].pieces == (
        Slice("blocks.0.attn.qkv.weight", (12, 24)),
    )
    assert px.targets["transformer_blocks.0.attn2.to_v.weight"].pieces == (
        Slice("blocks.0.cross_attn.kv_linear.weight", (12, 24)),
    )
    assert {"adaln_single.linear.weight", "scale_shift_table"} <= set(px.targets)
    assert px.left == ["y_embedder.y_embedding"]


@pytest.mark.parametrize("family", ["sd35m", "flux_dev", "auraflow", "hunyuandit", "pixart_sigma"])
def test_both_layouts_give_one_canonical_index(family):
    """Canonical names from an original and a diffusers header are the same set; each is one row range of one
    file tensor, and the tensors it names are equal."""
    km = dit_map(z.keymap_name(family))
    d = _diffusers(family)
    o = z.to_original(family, d)
    co, lo = km.canonical(_shapes(o))
    cd, ld = km.canonical(_shapes(d))
    assert set(co) == set(cd) and ld == []
    assert lo == (["y_embedder.y_embedding"] if family.startswith("pixart") else [])
    for name in co:
        assert len(co[name].pieces) == len(cd[name].pieces) == 1
        assert co[name].shape == cd[name].shape
        assert torch.equal(assemble(co[name], o), assemble(cd[name], d)), name
    assert km.layout(o) == "original" and km.layout(d) == "diffusers"
