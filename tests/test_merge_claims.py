"""Merge recipes read from metadata as each tool writes it (sdlens.testing.merge_metadata mirrors the tools' code):
methods, ratios, per-block weights, parents, nesting; parents matched to files; hostile metadata never raises."""

from __future__ import annotations

import json
import random

import pytest
import torch

from sdlens.analysis.inspect import inspect
from sdlens.analysis.merge_claims import (
    MAX_CLAIMS,
    MAX_TEXT,
    Claim,
    match_parents,
    read_claims,
    weights_by_file,
)
from sdlens.arch.blocks import block_names
from sdlens.io.hashing import hash_file, legacy_hash
from sdlens.testing.merge_metadata import (
    SUPERMERGER_MODES,
    ComfyGraph,
    MechaRecipe,
    a1111_metadata,
    comfyui_metadata,
    fake_ref,
    file_ref,
    sd_mecha_metadata,
    supermerger_metadata,
)
from sdlens.testing.writers import save_safetensors

SD1 = block_names("sd1")
XL = block_names("sdxl")
A, B, C, D = (
    fake_ref(n, i) for i, n in enumerate(["a.safetensors", "sub/b.safetensors", "c.ckpt", "d.safetensors"])
)


def one(metadata) -> Claim:
    claims = read_claims(metadata)
    assert len(claims) == 1, claims
    return claims[0]


def assert_weights(claim: Claim, blocks, expected) -> None:
    """``expected``: block -> label -> weight (a block missing takes the "*" entry)."""
    got = claim.weights(blocks)
    for b in blocks:
        want = expected.get(b, expected.get("*"))
        assert got[b] == pytest.approx(want, abs=1e-12), b


# --------------------------------------------------------------------------- A1111


def test_a1111_weighted_sum():
    c = one(a1111_metadata(A, B, multiplier=0.3))
    assert (c.tool, c.method, c.alpha, c.formula) == (
        "A1111 checkpoint merger",
        "weighted_sum",
        0.3,
        "A*(1-0.3) + B*0.3",
    )
    assert [(p.label, p.name, p.sha256, p.short_hash, p.legacy_hash) for p in c.parents] == [
        ("A", "a.safetensors", A.sha256, A.sha256[:10], A.legacy_hash),
        ("B", "sub/b.safetensors", B.sha256, B.sha256[:10], B.legacy_hash),
    ]
    assert_weights(c, SD1, {"*": {"A": 0.7, "B": 0.3}})  # A1111 merges every key, BASE included
    assert c.parents_claims == [] and c.notes == []


def test_a1111_add_difference_and_no_interpolation():
    c = one(a1111_metadata(A, B, C, interp_method="Add difference", multiplier=0.5))
    assert (c.method, c.formula, [p.label for p in c.parents]) == (
        "add_difference",
        "A + 0.5*(B - C)",
        list("ABC"),
    )
    assert_weights(c, SD1, {"*": {"A": 1.0, "B": 0.5, "C": -0.5}})
    c = one(a1111_metadata(A, interp_method="No interpolation", bake_in_vae="vae-ft-mse.safetensors"))
    assert c.method == "no_interpolation" and c.weights(SD1) is None and c.alpha is None
    assert c.notes == ["VAE replaced by vae-ft-mse.safetensors (not part of the formula)"]


def test_a1111_nested_recipes_three_generations():
    ab = fake_ref("ab.safetensors", 10, a1111_metadata(A, B, multiplier=0.25))
    abc = fake_ref(
        "abc.safetensors", 11, a1111_metadata(ab, C, D, interp_method="Add difference", multiplier=0.8)
    )
    top = one(a1111_metadata(abc, D, multiplier=0.5))
    assert top.formula == "A*(1-0.5) + B*0.5" and [p.name for p in top.parents] == [
        "abc.safetensors",
        "d.safetensors",
    ]
    (mid,) = top.parents_claims
    assert (mid.subject, mid.method, mid.formula) == ("A", "add_difference", "A + 0.8*(B - C)")
    assert [p.name for p in mid.parents] == ["ab.safetensors", "c.ckpt", "d.safetensors"]
    (first,) = mid.parents_claims
    assert (first.subject, first.formula, [p.name for p in first.parents]) == (
        "A",
        "A*(1-0.25) + B*0.25",
        ["a.safetensors", "sub/b.safetensors"],
    )
    assert json.loads(json.dumps(top.to_dict()))["parents_claims"][0]["parents_claims"][0]["alpha"] == 0.25


# --------------------------------------------------------------------------- supermerger


def test_supermerger_mbw_weighted_sum_per_block():
    vector = [0.5] + [round(i / 24, 6) for i in range(25)]  # BASE, IN00..IN11, M00, OUT00..OUT11
    c = one(supermerger_metadata(A, B, weights_alpha=",".join(map(str, vector))))
    assert (c.tool, c.method, c.alpha) == ("supermerger", "weighted_sum", 0.5)
    assert [p.name for p in c.parents] == [A.title, B.title]  # supermerger writes A1111 titles
    assert c.block_alphas == dict(zip(SD1, vector, strict=True))
    assert c.formula.endswith(f"= {','.join(format(v, '.6g') for v in vector)}")  # pasteable back
    assert_weights(c, SD1, {b: {"A": 1 - v, "B": v} for b, v in zip(SD1, vector, strict=True)})


def test_supermerger_sdxl_vector_and_modes():
    vector = [0.1] + [0.2] * 12 + [0.3] + [0.4] * 12
    c = one(supermerger_metadata(A, B, weights_alpha=",".join(map(str, vector)), sdxl=True))
    assert set(c.block_alphas) == set(XL) | {"VAE"} and c.block_alphas["OUT08"] == 0.4
    assert c.block_alphas["VAE"] == 0  # weighttoxl appends a 0 for the VAE (which then takes BASE's ratio)
    assert any("time / label embeddings unmerged" in n for n in c.notes)
    c = one(supermerger_metadata(A, B, C, mode=SUPERMERGER_MODES["add_difference"], base_alpha=0.6))
    assert (c.method, c.formula) == ("add_difference", "A + 0.6*(B - C)")
    assert_weights(c, SD1, {"*": {"A": 1.0, "B": 0.6, "C": -0.6}})
    c = one(
        supermerger_metadata(A, B, C, mode=SUPERMERGER_MODES["triple_sum"], base_alpha=0.3, base_beta=0.2)
    )
    assert (c.method, c.beta) == ("triple_sum", 0.2)
    assert_weights(c, ["IN00"], {"*": {"A": 0.5, "B": 0.3, "C": 0.2}})
    c = one(supermerger_metadata(A, B, C, mode=SUPERMERGER_MODES["sum_twice"], base_alpha=0.3, base_beta=0.2))
    assert c.formula == "(A*(1-0.3) + B*0.3)*(1-0.2) + C*0.2"
    assert_weights(c, ["OUT03"], {"*": {"A": 0.7 * 0.8, "B": 0.3 * 0.8, "C": 0.2}})


def test_supermerger_nonlinear_calcmode_is_not_given_weights():
    c = one(supermerger_metadata(A, B, base_alpha=0.4, calcmode="cosineA"))
    assert c.method == "unknown" and c.weights(SD1) is None and c.alpha == 0.4
    assert "calcmode" in c.formula and any("cosineA" in n for n in c.notes)


# --------------------------------------------------------------------------- sd-mecha


def test_sd_mecha_weighted_sum_and_add_difference():
    r = MechaRecipe()
    r.merge("weighted_sum", r.model("E:\\models\\a.safetensors"), r.model("b.safetensors"), alpha=0.3)
    assert r.text().splitlines()[-1] == 'merge "weighted_sum" &0 &1 alpha=0.3'
    c = one(sd_mecha_metadata(r))
    assert (c.tool, c.method, c.formula, c.alpha) == ("sd-mecha", "weighted_sum", "A*(1-0.3) + B*0.3", 0.3)
    assert [p.name for p in c.parents] == ["E:\\models\\a.safetensors", "b.safetensors"]  # escapes undone
    r = MechaRecipe()
    a, b, c_ = r.model("a"), r.model("b"), r.model("c")
    r.merge(
        "add_difference", a, r.merge("subtract", b, c_), alpha=0.5
    )  # what sd_mecha.add_difference(a, b, c) writes
    c = one(sd_mecha_metadata(r))
    assert (c.method, c.formula) == ("add_difference", "A + 0.5*(B - C)")
    assert_weights(c, SD1, {"*": {"A": 1.0, "B": 0.5, "C": -0.5}})


def test_sd_mecha_per_block_average_nested_and_nonlinear():
    r = MechaRecipe()
    alphas = {b: i / 25 for i, b in enumerate(SD1)}
    r.merge("weighted_sum", r.model("a"), r.model("b"), alpha=r.blocks(alphas))
    c = one(sd_mecha_metadata(r))
    assert c.method == "weighted_sum" and c.block_alphas == alphas
    assert_weights(c, SD1, {b: {"A": 1 - v, "B": v} for b, v in alphas.items()})
    r = MechaRecipe()
    r.merge("n_average", r.model("a"), r.model("b"), r.model("c"))
    c = one(sd_mecha_metadata(r))
    assert (c.method, c.formula) == ("average", "(A + B + C)/3")
    assert_weights(c, ["M00"], {"*": {"A": 1 / 3, "B": 1 / 3, "C": 1 / 3}})
    r = MechaRecipe()  # weighted_sum(weighted_sum(a, b, 0.5), c, 0.2): 0.4 a + 0.4 b + 0.2 c
    r.merge(
        "weighted_sum",
        r.merge("weighted_sum", r.model("a"), r.model("b"), alpha=0.5),
        r.model("c"),
        alpha=0.2,
    )
    c = one(sd_mecha_metadata(r))
    assert c.method == "linear" and c.formula == "0.4*A + 0.4*B + 0.2*C"
    r = MechaRecipe()
    r.merge("ties_sum", r.model("a"), r.model("b"), k=0.2)
    c = one(sd_mecha_metadata(r))
    assert c.method == "unknown" and "ties_sum" in c.formula and c.weights(SD1) is None
    old = 'model "a"\nmodel "b"\ncall "weighted_sum" &0 &1 alpha=0.25\n'  # the format before versions
    assert one(sd_mecha_metadata(old)).formula == "A*(1-0.25) + B*0.25"


# --------------------------------------------------------------------------- ComfyUI


def test_comfyui_merge_simple_ratio_is_model1s_share():
    g = ComfyGraph()
    l1, l2 = g.loader("sd15/a.safetensors"), g.loader("b.safetensors")
    g.save(g.merge_simple(l1, l2, 0.3), (l1, 1), (l1, 2))
    c = one(comfyui_metadata(g))
    assert (c.tool, c.method, c.formula) == ("ComfyUI", "weighted_sum", "model1*0.3 + model2*(1-0.3)")
    assert c.alpha == pytest.approx(0.7) and [p.name for p in c.parents] == [
        "sd15/a.safetensors",
        "b.safetensors",
    ]
    # the UNet is merged; the text encoders (BASE) come whole from model1's loader
    assert_weights(c, SD1, {"BASE": {"model1": 1.0, "model2": 0.0}, "*": {"model1": 0.3, "model2": 0.7}})
    assert "VAE from model1 (sd15/a.safetensors)" in c.notes


def test_comfyui_blocks_per_block_and_add_difference():
    g = ComfyGraph()
    l1, l2 = g.loader("a.safetensors"), g.loader("b.safetensors")
    g.save(g.merge_blocks(l1, l2, 0.2, 0.5, 0.9), (g.clip_merge(l1, l2, 0.2), 0), (l2, 2))
    c = one(comfyui_metadata(g))
    assert c.method == "weighted_sum" and c.block_alphas == pytest.approx(
        {"IN*": 0.8, "M*": 0.5, "OUT*": 0.1}
    )
    want = {"BASE": {"model1": 0.2, "model2": 0.8}, "M00": {"model1": 0.5, "model2": 0.5}}
    want |= {b: {"model1": 0.2, "model2": 0.8} for b in SD1 if b.startswith("IN")}
    want |= {b: {"model1": 0.9, "model2": 0.1} for b in SD1 if b.startswith("OUT")}
    assert_weights(c, SD1, want)
    g = ComfyGraph()
    l1, l2 = g.loader("a.safetensors"), g.loader("b.safetensors")
    ratios = {f"input_blocks.{i}.": 0.1 for i in range(12)} | {f"output_blocks.{i}.": 0.6 for i in range(12)}
    g.save(g.merge_sd1(l1, l2, ratios | {"time_embed.": 0.1, "out.": 0.6}, default=0.4), (l1, 1), (l1, 2))
    c = one(comfyui_metadata(g))
    assert_weights(c, ["IN05", "M00", "OUT11"], {"IN05": {"model1": 0.1, "model2": 0.9},
                                                 "M00": {"model1": 0.4, "model2": 0.6},
                                                 "OUT11": {"model1": 0.6, "model2": 0.4}})  # fmt: skip
    g = ComfyGraph()
    l1, l2, l3 = g.loader("a"), g.loader("b"), g.loader("c")
    g.save(g.add(l1, g.subtract(l2, l3, 0.7)), (l1, 1), (l1, 2))
    c = one(comfyui_metadata(g))
    assert (c.method, c.formula, c.alpha) == ("add_difference", "model1 + 0.7*(model2 - model3)", 0.7)
    assert_weights(c, ["IN00"], {"*": {"model1": 1.0, "model2": 0.7, "model3": -0.7}})


def test_comfyui_what_it_cannot_follow():
    g = ComfyGraph()
    l1, l2 = g.loader("a"), g.loader("b")
    lora = g.node("LoraLoader", model=[l1, 0], clip=[l1, 1], lora_name="x.safetensors", strength_model=1.0)
    g.save(g.merge_simple(lora, l2, 0.5), (l1, 1), (l1, 2))
    c = one(comfyui_metadata(g))
    assert c.method == "unknown" and c.raw["node_classes"] == ["LoraLoader"] and c.weights(SD1) is None
    g = ComfyGraph()
    l1 = g.loader("a.safetensors")
    g.save(l1, (l1, 1), (l1, 2))
    g.save(l1, (l1, 1), (l1, 2))
    claims = read_claims(comfyui_metadata(g))
    assert [x.method for x in claims] == ["no_interpolation"] * 2 and "2 save nodes" in claims[0].notes[-1]
    assert read_claims({"prompt": json.dumps({"1": {"class_type": "KSampler", "inputs": {}}})}) == []


# --------------------------------------------------------------------------- matching parents to files


def _file(tmp_path, name, seed, metadata=None):
    torch.manual_seed(seed)  # 1.2 MB of real data: the legacy hash reads 64 KiB at 1 MiB
    return save_safetensors({"w": torch.randn(300_000)}, tmp_path / name, metadata)


def test_match_parents_by_legacy_hash_and_by_name(tmp_path):
    fa, fb, fc = (
        _file(tmp_path, "Alpha.safetensors", 1),
        _file(tmp_path, "beta.ckpt", 2),
        _file(tmp_path, "gamma", 3),
    )
    assert legacy_hash(fa) == hash_file(fa).a1111_old and legacy_hash(fa) != legacy_hash(fb)
    ra, rb = file_ref(fa, name="renamed/whatever.safetensors"), file_ref(fb)
    c = one(a1111_metadata(ra, rb, multiplier=0.5))
    assert match_parents(c, [fc, fb, fa]) == {"A": 2, "B": 1}  # A by its hash although renamed
    # by name: no hashes given; folders, case, extension and A1111's " [hash]" suffix do not matter
    named = one(
        supermerger_metadata(fake_ref("models/ALPHA.safetensors", 1), fake_ref("gamma.safetensors", 2))
    )
    named.parents = [type(p)(p.label, p.name) for p in named.parents]
    assert (
        named.parents[0].name
        == "models/ALPHA.safetensors [" + fake_ref("models/ALPHA.safetensors", 1).sha256[:10] + "]"
    )
    assert match_parents(named, [fb, fc, fa]) == {"A": 2, "B": 1}
    by_file, missing = weights_by_file(c, [fc, fb, fa], ["BASE", "IN00"])
    assert by_file == {"BASE": {2: 0.5, 1: 0.5}, "IN00": {2: 0.5, 1: 0.5}} and missing == []
    assert weights_by_file(c, [fb], ["IN00"]) == ({"IN00": {0: 0.5}}, ["A"])
    # a file whose legacy hash differs is not the parent, whatever its name
    wrong = one(a1111_metadata(fake_ref("Alpha.safetensors", 9), rb, multiplier=0.5))
    assert match_parents(wrong, [fa, fb]) == {"A": None, "B": 1}


# --------------------------------------------------------------------------- hostile metadata


def _deep_json(n: int) -> str:
    return "[" * n + "]" * n


def test_hostile_metadata_never_raises():
    good = a1111_metadata(A, B)
    cyclic_models = {
        A.sha256: {
            "name": "a",
            "legacy_hash": "12345678",
            "sd_merge_recipe": json.loads(good["sd_merge_recipe"]),
        },
        B.sha256: {
            "name": "b",
            "legacy_hash": "87654321",
            "sd_merge_recipe": json.loads(good["sd_merge_recipe"]),
        },
    }
    cases = [
        {"sd_merge_recipe": "{not json", "sd_merge_models": "[]"},
        {"sd_merge_recipe": _deep_json(100_000)},
        {"sd_merge_recipe": "{" + " " * (MAX_TEXT + 1) + "}"},
        {"sd_merge_recipe": json.dumps({"type": "webui", "multiplier": "abc", "interp_method": ["x"]})},
        {
            "sd_merge_recipe": json.dumps(
                {"type": "webui", "primary_model_hash": 5, "interp_method": "Weighted sum"}
            )
        },
        {"sd_merge_recipe": json.dumps({"type": {"x": 1}}), "sd_merge_models": json.dumps([1, 2])},
        {"sd_merge_recipe": good["sd_merge_recipe"], "sd_merge_models": json.dumps(cyclic_models)},
        {
            "sd_merge_recipe": json.dumps(
                {"type": "sd-webui-supermerger", "mode": 3, "weights_alpha": "x" * 10}
            )
        },
        {"sd_merge_recipe": "null", "mecha_recipe": 'merge "weighted_sum" &5 &9', "prompt": "[1, 2]"},
        {"mecha_recipe": 'model "a\nmodel "b"\nmerge "weighted_sum" &0 &1 alpha="x"'},
        {
            "mecha_recipe": "\n".join(
                ['model "a"'] + [f'merge "weighted_sum" &{i} &{i} alpha=0.5' for i in range(3000)]
            )
        },
        {"prompt": json.dumps({"1": {"class_type": "CheckpointSave", "inputs": {"model": ["1", 0]}}})},
        {
            "prompt": json.dumps(
                {"1": {"class_type": "CheckpointSave", "inputs": {"model": ["2", "x"], "clip": 5}}}
            )
        },
        {"prompt": _deep_json(50_000)},
        {"mecha_recipe": 'model "a"\nmerge "n_average"' + " &0" * 100_000},
        {"mecha_recipe": "x" * (2 << 20)},
        {"sd_merge_recipe": 5, "mecha_recipe": None, "prompt": {"not": "a string"}},
    ]
    for md in cases:
        for c in read_claims(md):
            json.dumps(c.to_dict())  # JSON-safe
            assert isinstance(c.formula, str)
    assert read_claims(None) == [] and read_claims(["sd_merge_recipe"]) == []
    c = one(cases[6])
    assert c.method == "weighted_sum" and len(c.parents_claims) == 2  # the cycle stops at the second level
    assert all(len(sub.parents_claims) <= 1 for sub in c.parents_claims)


def test_hostile_deep_graphs_and_many_recipes_are_bounded():
    g = ComfyGraph()
    prev = g.loader("a")
    other = g.loader("b")
    for _ in range(400):  # a chain deeper than sdlens walks
        prev = g.merge_simple(prev, other, 0.5)
    g.save(prev, (other, 1), (other, 2))
    c = one(comfyui_metadata(g))
    assert c.method == "unknown" and "too deep" in c.formula
    # every parent's recipe names both parents again: a diamond growing 2^depth, cut by the claim budget
    models: dict = {}
    levels = [fake_ref(f"m{i}", i) for i in range(40)]
    for i in range(0, 36, 2):
        nxt = {"type": "webui", "primary_model_hash": levels[i + 2].sha256, "secondary_model_hash": levels[i + 3].sha256,
               "interp_method": "Weighted sum", "multiplier": 0.5}  # fmt: skip
        models[levels[i].sha256] = {"name": f"m{i}", "sd_merge_recipe": nxt}
        models[levels[i + 1].sha256] = {"name": f"m{i + 1}", "sd_merge_recipe": nxt}
    top = {"type": "webui", "primary_model_hash": levels[0].sha256, "secondary_model_hash": levels[1].sha256,
           "interp_method": "Weighted sum", "multiplier": 0.5}  # fmt: skip
    claims = read_claims({"sd_merge_recipe": json.dumps(top), "sd_merge_models": json.dumps(models)})

    def count(cl):
        return 1 + sum(count(s) for s in cl.parents_claims)

    assert len(claims) == 1 and count(claims[0]) <= MAX_CLAIMS


def test_random_mutations_of_real_metadata_never_raise():
    g = ComfyGraph()
    l1, l2 = g.loader("a"), g.loader("b")
    g.save(g.merge_blocks(l1, l2, 0.2, 0.5, 0.9), (l1, 1), (l1, 2))
    r = MechaRecipe()
    r.merge("weighted_sum", r.model("a"), r.model("b"), alpha=r.blocks({"BASE": 0.1, "IN00": 0.2}))
    sources = [
        a1111_metadata(fake_ref("ab", 1, a1111_metadata(A, B)), C, D, interp_method="Add difference"),
        supermerger_metadata(A, B, weights_alpha=",".join(["0.5"] * 26)),
        sd_mecha_metadata(r),
        comfyui_metadata(g),
    ]
    rng = random.Random(16)
    alphabet = '{}[]",:&=\\ 0.5e-x\x1b\u202e'
    for _ in range(300):
        md = dict(rng.choice(sources))
        key = rng.choice(list(md))
        v = md[key]
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(v) + 1)
            v = v[:i] + rng.choice(alphabet) * rng.randint(1, 3) + v[i + rng.randint(0, 3) :]
        md[key] = v
        for c in read_claims(md):
            json.dumps(c.to_dict())
            c.weights(SD1)


# --------------------------------------------------------------------------- inspect shows the claim


def test_inspect_shows_the_claimed_recipe(tmp_path, cli):
    evil = fake_ref("evil\x1b[2J\u202ename [bold red]x[/].safetensors", 7)
    md = a1111_metadata(
        fake_ref("ab.safetensors", 3, a1111_metadata(A, evil, multiplier=0.25)), B, multiplier=0.3
    )
    path = save_safetensors(
        {"model.diffusion_model.out.2.weight": torch.zeros(4, 8, 3, 3)}, tmp_path / "m.safetensors", md
    )
    report = inspect(path)
    assert [c.formula for c in report.merge_claims] == ["A*(1-0.3) + B*0.3"]
    d = report.to_dict()
    assert d["merge_claims"][0]["parents_claims"][0]["parents"][1]["name"] == evil.name
    out = cli("inspect", str(path))
    assert out.returncode == 0, out.stderr
    assert (
        "Merge recipe (claimed by A1111 checkpoint merger)" in out.stdout
        and "A*(1-0.3) + B*0.3" in out.stdout
    )
    assert "A = ab.safetensors [" in out.stdout and "A*(1-0.25) + B*0.25" in out.stdout
    assert "\x1b" not in out.stdout and "\u202e" not in out.stdout and "\\x1b[2J\\u202ename" in out.stdout
    js = cli("inspect", "--json", str(path))
    claim = json.loads(js.stdout)["merge_claims"][0]
    assert (claim["method"], claim["alpha"], claim["coefficients"]["B"]["default"]) == (
        "weighted_sum",
        0.3,
        0.3,
    )


def test_inspect_looks_for_every_key_a_reader_reads():
    """inspect imports the parser only when the metadata has one of CLAIM_KEYS: they must be the readers'."""
    import inspect as pyinspect

    from sdlens.analysis import merge_claims
    from sdlens.analysis.inspect import CLAIM_KEYS

    src = pyinspect.getsource(merge_claims.read_claims)
    for key in CLAIM_KEYS:
        assert f'("{key}",' in src
    assert src.count('", "') >= len(CLAIM_KEYS) and len(CLAIM_KEYS) == src.count("graphs.read_") + 1
