"""sd-mecha (a real merge tool, independent of sdlens) makes the merges; ``recipe`` must recover them and
check the recipe sd-mecha itself wrote into the file's metadata: a per-block weighted sum (its
supermerger-style block literal), an add difference and a DARE merge (its ``dropout``)."""

from __future__ import annotations

import logging

import pytest
import torch

sd_mecha = pytest.importorskip("sd_mecha")

from sdlens.analysis.recipe import recipe  # noqa: E402

BLOCKS = {"BASE": 0.35, **{f"IN{i:02d}": round(0.05 * i, 2) for i in range(12)}, "M00": 1.0}
BLOCKS |= {f"OUT{i:02d}": round(1 - 0.05 * i, 2) for i in range(12)}


@pytest.fixture(scope="module")
def made(merge_families, tmp_path_factory):
    """The sd-mecha merges of the float32 merge family (written as sd-mecha writes them: fp16)."""
    logging.getLogger().setLevel(logging.ERROR)  # sd-mecha warns about the zoo's extra `logvar` buffer
    fam = merge_families(torch.float32)
    out = tmp_path_factory.mktemp("sd-mecha")
    a, b, fa, fb = (
        sd_mecha.model(str(fam.paths[n])) for n in ("base_a", "base_b", "finetune_a", "finetune_b")
    )
    alpha = sd_mecha.convert(sd_mecha.literal(BLOCKS, config="sd1-supermerger_blocks"), a)
    recipes = {
        "mbw": sd_mecha.weighted_sum(a, b, alpha=alpha),
        "adddiff": sd_mecha.add_difference(b, fa, a, alpha=0.7),
        "dare": sd_mecha.dropout(a, fb, probability=0.3, alpha=1.0, seed=7),
    }
    paths = {}
    for name, r in recipes.items():
        paths[name] = out / f"{name}.safetensors"
        sd_mecha.merge(r, output=paths[name], threads=1)
    return fam, paths


def test_sd_mecha_per_block_weighted_sum(made):
    """sd-mecha counts the time embedding in BASE: with --time-embed BASE every block's α is recovered and
    its own recipe agrees; with A1111's IN00 the one block that differs is named, with why."""
    fam, paths = made
    cands = [fam.paths["base_a"], fam.paths["base_b"]]
    r = recipe(paths["mbw"], cands, time_embed="BASE")
    assert r.mbw is not None and [round(x, 3) for x in r.mbw.alphas] == [BLOCKS[b] for b in r.mbw.blocks]
    (claim,) = r.claims
    assert claim["claim"]["tool"] == "sd-mecha" and claim["agrees"] is True and claim["max_difference"] < 1e-3
    (claim,) = recipe(paths["mbw"], cands).claims
    assert claim["agrees"] is False and claim["worst_block"] == "IN00" and "time embedding" in claim["check"]


def test_sd_mecha_add_difference_and_dare(made):
    fam, paths = made
    r = recipe(paths["adddiff"], [fam.paths["base_b"], fam.paths["finetune_a"], fam.paths["base_a"]])
    assert r.formula == "A + 0.7*(B - C)"
    (claim,) = r.claims
    assert claim["agrees"] is True and claim["claim"]["formula"] == "A + 0.7*(B - C)"
    r = recipe(paths["dare"], [fam.paths["base_a"], fam.paths["finetune_b"], fam.paths["base_b"]])
    assert r.method.method == "DARE" and abs(r.method.drop_rate - 0.3) < 0.02
    assert abs(r.method.scale * (1 - r.method.drop_rate) - 1.0) < 0.05
