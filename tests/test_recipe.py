"""``recipe`` on a merge family whose truth is known (sdlens.testing.zoo_merge): per-block weights, add
difference, 3-model merges, DARE / TIES / crossover named, merge + training, unrelated models and
near-duplicate candidates, in float32 and float16."""

from __future__ import annotations

import json

import pytest
import torch

from sdlens.analysis.recipe import recipe
from sdlens.testing.zoo_merge import (
    ADDDIFF_ALPHA,
    AVG3_WEIGHTS,
    DARE_P,
    MBW_ALPHA,
    MBW_BASE_ALPHA,
)


@pytest.fixture(scope="module")
def fam(merge_families):
    return merge_families(torch.float32)


@pytest.fixture(scope="module")
def fam16(merge_families):
    return merge_families(torch.float16)


def _run(f, model, *cands, **kw):
    return recipe(f.paths[model], [f.paths[c] for c in cands], **kw)


def _weights(r, group):
    g = next(x for x in r.groups if x.group == group)
    return dict(zip(g.fit.candidates, g.fit.affine.weights, strict=True)), g


@pytest.mark.parametrize("which", ["fam", "fam16"])
def test_per_block_weighted_sum_recovered_with_block_copies(which, request):
    f = request.getfixturevalue(which)
    r = _run(f, "mbw_ab", "base_a", "base_b", "finetune_a")
    truth = {"BASE": MBW_BASE_ALPHA, **MBW_ALPHA}
    for block, alpha in truth.items():
        w, g = _weights(r, block)
        assert abs(w[2] - alpha) < 1e-3 and abs(w[1] - (1 - alpha)) < 1e-3 and abs(w[3]) < 1e-3, block
        if alpha in (0.0, 1.0):  # a block taken whole: bit-identical, so exactly 0 / 1
            assert g.fit.verdict == "copy" and w[2] == alpha and g.signature.method == "copy"
    assert r.mbw is not None and (r.mbw.a, r.mbw.b) == ("A", "B")
    assert r.mbw.blocks == list(f.meta["block_order"])  # supermerger / sd-mecha order, BASE first
    assert [round(a, 3) for a in r.mbw.alphas] == [round(truth[b], 3) for b in r.mbw.blocks]
    assert r.verdict == "explained" and r.method.method == "weighted sum"


def test_add_difference_named_with_its_alpha(fam):
    r = _run(fam, "adddiff", "base_b", "finetune_a", "base_a")
    assert r.formula == f"A + {ADDDIFF_ALPHA:.3g}*(B - C)"
    w, g = _weights(r, "IN05")
    assert abs(w[1] - 1) < 1e-3 and abs(w[2] - ADDDIFF_ALPHA) < 1e-3 and abs(w[3] + ADDDIFF_ALPHA) < 1e-3
    assert g.term.form == "add difference" and abs(g.term.alpha - ADDDIFF_ALPHA) < 1e-3
    assert r.verdict == "explained"


def test_three_model_merge(fam):
    r = _run(fam, "avg3", "base_a", "base_b", "finetune_a")
    for g in r.groups:
        if g.group == "BASE":  # finetune_a's TE / VAE are base_a's: A = C there, their weights add
            continue
        w = dict(zip(g.fit.candidates, g.fit.affine.weights, strict=True))
        assert [round(w[i], 3) for i in (1, 2, 3)] == list(AVG3_WEIGHTS.values()), g.group
    assert r.formula == "0.5*A + 0.3*B + 0.2*C"


@pytest.mark.parametrize("which", ["fam", "fam16"])
def test_dare_named_with_its_drop_rate(which, request):
    f = request.getfixturevalue(which)
    r = _run(f, "dare", "base_a", "finetune_b", "base_b")
    assert r.method.method == "DARE"
    assert abs(r.method.drop_rate - DARE_P) < 0.02
    assert abs(r.method.scale * (1 - r.method.drop_rate) - 1.0) < 0.05  # λ
    assert (r.method.evidence.base, r.method.evidence.candidate) == (1, 2)
    assert r.formula.startswith("A + ") and "DARE(B - A" in r.formula


def test_ties_and_crossover_named(fam):
    ties = _run(fam, "ties", "base_a", "finetune_a", "finetune_b")
    assert ties.method.method == "TIES" and ties.method.evidence.magnitude < 0.5
    assert ties.formula.startswith("TIES(B, C over A")  # both task models named
    cross = _run(fam, "crossover", "base_a", "base_b", "finetune_a")
    assert cross.method.method == "crossover"
    assert abs(cross.method.evidence.taken - 0.4) < 0.02 and abs(cross.method.evidence.dropped - 0.6) < 0.02


def test_merge_trained_further_reports_its_residual_share(fam):
    truth = fam.truth["merge_trained"]
    r = _run(fam, "merge_trained", "base_a", "base_b")
    assert r.verdict == "trained further"
    assert (
        abs(r.residual_share - truth["residual_share_blockwise"]) < 0.02 * truth["residual_share_blockwise"]
    )
    w, _ = _weights(r, "IN05")
    assert abs(w[1] - 0.5) < 0.02 and abs(w[2] - 0.5) < 0.02


def test_unrelated_model_is_not_a_merge(fam):
    r = _run(fam, "unrelated", "base_a", "base_b")
    assert r.verdict == "not a merge"
    assert r.residual_share == pytest.approx(fam.truth["unrelated"]["residual_share_blockwise"], rel=0.02)


@pytest.mark.parametrize("which", ["fam", "fam16"])
def test_near_duplicate_candidates_flagged(which, request):
    from sdlens.render.recipe_view import notes

    r = _run(request.getfixturevalue(which), "mbw_ab", "base_a", "base_b", "near_dup_b")
    w, g = _weights(r, "IN05")
    assert g.fit.confidence == "low" and g.fit.closest[:2] == (2, 3)
    assert abs(w[2] + w[3] - MBW_ALPHA["IN05"]) < 1e-3  # their sum still holds
    assert any("B and C are nearly the same" in line for line in notes(r))


def test_by_component_and_by_key(fam):
    r = _run(fam, "avg3", "base_a", "base_b", "finetune_a", by="component")
    assert {g.group for g in r.groups} >= {"denoiser", "clip_l"}
    r = _run(fam, "mbw_ab", "base_a", "base_b", by="key")
    keyed = [g for g in r.groups if g.fit is not None]
    assert len(keyed) > 100
    w = dict(zip(keyed[0].fit.candidates, keyed[0].fit.affine.weights, strict=True))
    assert abs(w[1] + w[2] - 1) < 1e-9


def test_cli_recipe_json_and_plot(fam, cli, tmp_path):
    out = tmp_path / "r.json"
    png = tmp_path / "r.png"
    p = fam.paths
    res = cli(
        "recipe",
        str(p["mbw_ab"]),
        "--from",
        str(p["base_a"]),
        str(p["base_b"]),
        "--json",
        str(out),
        "--plot",
        str(png),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "MBW" in (res.stdout + res.stderr) and "0.35,0.1,0.2,0.3,1,0" in (res.stdout + res.stderr)
    doc = json.loads(out.read_text())
    assert doc["mbw"]["vector"].startswith("0.35,0.1,0.2,0.3,1,0,")
    assert doc["candidates"][0]["label"] == "A" and png.stat().st_size > 10_000


def test_cli_recipe_errors(fam, cli, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    res = cli(
        "recipe",
        str(fam.paths["mbw_ab"]),
        "--from",
        str(fam.paths["base_a"]),
        str(fam.paths["base_b"]),
        str(bad),
    )
    assert (
        res.returncode == 2
        and "bad.safetensors" in (res.stdout + res.stderr)
        and "Traceback" not in (res.stdout + res.stderr)
    )
    res = cli("recipe", str(fam.paths["mbw_ab"]))
    assert res.returncode == 2 and "candidates" in (res.stdout + res.stderr)
    res = cli("recipe", str(bad), "--from", str(fam.paths["base_a"]))
    assert (
        res.returncode == 2
        and "bad.safetensors" in (res.stdout + res.stderr)
        and "Traceback" not in (res.stdout + res.stderr)
    )


def _merged(fam, tmp_path, alpha: float, meta: dict[str, str]):
    """0.7·base_a + 0.3·base_b (a real weighted sum, float32) carrying ``meta`` as its metadata."""
    from safetensors.torch import load_file

    from sdlens.testing.writers import save_safetensors

    a, b = load_file(fam.paths["base_a"]), load_file(fam.paths["base_b"])
    sd = {k: (1 - alpha) * v + alpha * b[k] if v.is_floating_point() else v for k, v in a.items()}
    return save_safetensors(sd, tmp_path / "merged.safetensors", metadata=meta)


def test_a1111_claim_checked_against_the_weights(fam, tmp_path):
    from sdlens.testing.merge_metadata import a1111_metadata, file_ref

    ra, rb = file_ref(fam.paths["base_a"]), file_ref(fam.paths["base_b"])
    true = _merged(fam, tmp_path, 0.3, a1111_metadata(ra, rb, multiplier=0.3))
    r = recipe(true, [fam.paths["base_a"], fam.paths["base_b"]])
    (c,) = r.claims
    assert c["agrees"] is True and c["max_difference"] < 1e-3
    assert "A1111" in c["check"] and "A*(1-0.3) + B*0.3" in c["check"] and "agree" in c["check"]
    lie = _merged(fam, tmp_path, 0.3, a1111_metadata(ra, rb, multiplier=0.5))
    (c,) = recipe(lie, [fam.paths["base_a"], fam.paths["base_b"]]).claims
    assert c["agrees"] is False and abs(c["max_difference"] - 0.2) < 1e-3
    assert "disagree" in c["check"] and "fitted 0.7 A + 0.3 B" in c["check"]
    (c,) = recipe(lie, [fam.paths["base_a"], fam.paths["finetune_a"]]).claims  # B is not a candidate
    assert c["agrees"] is None and "cannot check" in c["check"]


def test_sd_mecha_claim_matched_by_file_name(fam, tmp_path):
    from sdlens.testing.merge_metadata import MechaRecipe, sd_mecha_metadata

    m = MechaRecipe()
    m.merge("weighted_sum", m.model("models/base_a.safetensors"), m.model("base_b.safetensors"), alpha=0.3)
    r = recipe(_merged(fam, tmp_path, 0.3, sd_mecha_metadata(m)), [fam.paths["base_a"], fam.paths["base_b"]])
    (c,) = r.claims
    assert c["agrees"] is True and "sd-mecha" in c["check"]


def test_hostile_and_odd_inputs(fam, tmp_path, cli):
    """NaN weights, a candidate of another architecture, the model among its candidates, an escape in a name:
    results for what can be compared, one note for the rest, no crash."""
    from safetensors.torch import load_file

    from sdlens.testing.writers import save_safetensors
    from sdlens.testing.zoo_unet import build_single_file

    sd = load_file(fam.paths["avg3"])
    key = next(k for k in sd if k.startswith("model.diffusion_model.output_blocks.2.") and sd[k].ndim == 4)
    sd[key] = sd[key].clone()
    sd[key][0, 0, 0, 0] = float("nan")
    nan = save_safetensors(sd, tmp_path / "nan\x1b[31m.safetensors")
    sdxl = save_safetensors(build_single_file("sdxl", seed=3), tmp_path / "sdxl.safetensors")
    r = recipe(nan, [fam.paths["base_a"], fam.paths["base_b"], fam.paths["finetune_a"], sdxl])
    bad = [g for g in r.groups if g.fit is None]
    assert bad and all("NaN or Inf" in (g.note or "") for g in bad)
    ok = next(g for g in r.groups if g.group == "IN05")
    assert [round(w, 3) for w in ok.fit.affine.weights] == [0.5, 0.3, 0.2] and "sdxl.safetensors" in ok.note
    self_ = recipe(fam.paths["avg3"], [fam.paths["base_a"], fam.paths["avg3"]])
    assert self_.verdict == "copy" and all(g.fit.copy_of == 2 for g in self_.groups if g.fit)
    res = cli("recipe", str(nan), "--from", str(fam.paths["base_a"]), str(fam.paths["base_b"]))
    assert res.returncode == 0 and "\x1b[31m" not in res.stdout and "Traceback" not in res.stderr


def test_tensors_taken_whole_are_not_dare(fam, tmp_path):
    """A model that took half of its UNet tensors whole from a fine-tune (the rest from the base) equals the
    base in half its values — but tensor by tensor, not value by value: no DARE."""
    from safetensors.torch import load_file

    from sdlens.testing.writers import save_safetensors

    a, ft = load_file(fam.paths["base_a"]), load_file(fam.paths["finetune_b"])
    keys = sorted(k for k in a if k.startswith("model.diffusion_model.") and a[k].is_floating_point())
    sd = {k: (ft[k] if k in keys[::2] else v) for k, v in a.items()}
    r = recipe(
        save_safetensors(sd, tmp_path / "half.safetensors"), [fam.paths["base_a"], fam.paths["finetune_b"]]
    )
    assert r.method.method not in ("DARE", "TIES", "crossover")


def test_a_folder_of_related_candidates_gives_the_fewest_that_explain(fam):
    """Given the whole family (merges of each other among the candidates), the recipe uses the fewest
    candidates that rebuild the model — the true parents, not a spread over every way to write it."""
    others = [p for n, p in fam.paths.items() if n not in ("avg3", "near_dup_b")]
    r = recipe(fam.paths["avg3"], others)
    label = {c.name: lab for lab, c in zip(r.labels, r.candidates, strict=True)}
    w, _ = _weights(r, "IN05")
    named = {r.candidates[i - 1].name: x for i, x in w.items() if abs(x) > 1e-3}
    assert named == pytest.approx({f"{k}.safetensors": v for k, v in AVG3_WEIGHTS.items()}, abs=1e-3)
    assert any("not independent" in n for n in r.notes)
    assert sorted(r.formula.replace(" ", "").split("+")) == sorted(
        f"{v:.3g}*{label[k + '.safetensors']}" for k, v in AVG3_WEIGHTS.items()
    )


def test_outputs_never_overwrite_inputs_and_claims_by_component(fam, tmp_path, cli):
    from sdlens.testing.merge_metadata import a1111_metadata, file_ref

    model = _merged(
        fam, tmp_path, 0.3, a1111_metadata(file_ref(fam.paths["base_a"]), file_ref(fam.paths["base_b"]))
    )
    before = model.read_bytes()
    for opt in ("--json", "--plot"):
        res = cli("recipe", str(model), "--from", str(fam.paths["base_a"]), opt, str(model))
        assert res.returncode == 2 and "Traceback" not in res.stderr and model.read_bytes() == before, opt
    (c,) = recipe(model, [fam.paths["base_a"], fam.paths["base_b"]], by="component").claims
    assert c["agrees"] is True  # one ratio everywhere: checked on the whole denoiser
