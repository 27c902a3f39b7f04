"""diff and matrix align a DiT's original single file, its ComfyUI form and its diffusers folder tensor for
tensor (the three built from one random model: the truth is "identical")."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdlens.analysis import matrix as M
from sdlens.analysis.diff import diff
from sdlens.testing import zoo_dit as z
from sdlens.testing.writers import save_safetensors

COMFY = "model.diffusion_model."


def _forms(tmp_path: Path, family: str, sd: dict[str, torch.Tensor] | None = None, seed: int = 2):
    """(original file, ComfyUI file, diffusers folder) of one seeded tiny model; ``sd`` replaces the
    diffusers form's weights."""
    ref = z.build_denoiser(family, layout="diffusers", seed=seed)
    orig = z.to_original(family, ref, seed=seed)
    prefix = z._RELEASE_PREFIX.get(z.keymap_name(family), "")
    a = save_safetensors({prefix + k: v for k, v in orig.items()}, tmp_path / f"{family}.safetensors")
    b = save_safetensors({COMFY + k: v for k, v in orig.items()}, tmp_path / f"{family}_comfy.safetensors")
    c = z.write_diffusers_folder(family, tmp_path / f"{family}_diffusers", sd=sd if sd is not None else ref)
    return a, b, c


@pytest.mark.parametrize("family", ["flux_dev", "sd35m", "auraflow", "hunyuandit"])
def test_three_forms_diff_identical(tmp_path, family):
    a, b, c = _forms(tmp_path, family)
    for x, y in ((a, b), (a, c), (b, c)):
        r = diff(x, y)
        assert r.family_a == r.family_b == family
        assert [t.key for t in r.tensors if not t.identical] == []
        assert r.only_a == r.only_b == []
        assert r.verdict[0].startswith("identical")


def test_pixart_null_caption_is_the_only_unmatched_tensor(tmp_path):
    a, _b, c = _forms(tmp_path, "pixart_sigma")
    r = diff(a, c)
    assert r.only_a == ["denoiser/y_embedder.y_embedding"] and r.only_b == []
    assert not any(t.changed for t in r.tensors)


@pytest.mark.parametrize("family", ["flux_dev", "sd3"])
def test_matrix_groups_the_three_forms(tmp_path, family):
    paths = _forms(tmp_path, family)
    r = M.matrix(list(paths))
    assert r.identity["denoiser"] == [[p.name for p in paths]]
    assert float(r.matrix("denoiser").max()) == 0.0


@pytest.mark.parametrize(
    ("family", "key", "rows", "canonical", "block"),
    [
        (
            "flux_dev",
            "single_transformer_blocks.5.attn.to_k.weight",
            None,
            "denoiser/single_transformer_blocks.5.attn.to_k.weight",
            "S05",
        ),
        (
            "flux_dev",
            "transformer_blocks.3.attn.add_v_proj.bias",
            None,
            "denoiser/transformer_blocks.3.attn.add_v_proj.bias",
            "D03",
        ),
        # diffusers keeps (scale, shift): a change to the scale half is found in that half only
        ("flux_dev", "norm_out.linear.weight", "first", "denoiser/norm_out.linear.weight[0:32]", "OUT"),
        (
            "sd3",
            "transformer_blocks.7.attn.add_q_proj.weight",
            None,
            "denoiser/transformer_blocks.7.attn.add_q_proj.weight",
            "J07",
        ),
        (
            "sd3",
            "transformer_blocks.23.norm1_context.linear.bias",
            "first",
            "denoiser/transformer_blocks.23.norm1_context.linear.bias[0:32]",
            "J23",
        ),
    ],
)
def test_one_change_in_the_diffusers_form_is_found(tmp_path, family, key, rows, canonical, block):
    sd = dict(z.build_denoiser(family, layout="diffusers", seed=2))
    t = sd[key].clone()
    if rows == "first":
        t[: t.shape[0] // 2] += 0.25
    else:
        t += 0.25
    sd[key] = t
    _a, b, c = _forms(tmp_path, family, sd)
    r = diff(b, c)  # the ComfyUI single file against the diffusers folder
    assert [(d.key, d.block) for d in r.tensors if d.changed] == [(canonical, block)]
    assert r.only_a == r.only_b == []
