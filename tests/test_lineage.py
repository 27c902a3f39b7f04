"""``sdlens lineage``: the family tree of a small family whose every relation is known by construction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sdlens.analysis.lineage import Lineage, lineage
from sdlens.render.lineage_view import _dot_source, _drawn, lineage_text, tree_lines, write_outputs
from sdlens.testing.writers import save_safetensors
from sdlens.testing.zoo_unet import build_single_file

UNET = "model.diffusion_model."
WEIGHTS = (UNET, "first_stage_model.", "cond_stage_model.")
WSUM, MT, ALPHA, TUNE, NEAR = 0.3, 0.5, 0.7, 0.03, 1e-5
MBW = (0.0, 1.0, 0.25, 0.6, 0.8)  # base_b's weight, block by block in turn (0 and 1: blocks copied whole)
KINDS = {"merge", "add-difference", "fine-tune", "same-component", "nearest"}


def _weight(key: str, t: torch.Tensor, prefixes: tuple[str, ...] | str = WEIGHTS) -> bool:
    """A float weight of the model's parts (not an index buffer, not a schedule buffer)."""
    return key.startswith(prefixes) and t.is_floating_point() and t.numel() > 1


def _redraw(sd: dict, seed: int) -> dict:
    """An independent model of the same layout: every weight drawn anew with its tensor's mean and std."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if _weight(k, v):
            v = v.mean() + v.std() * torch.randn(v.shape, generator=g)
        out[k] = v
    return out


def _tune(sd: dict, seed: int, scale: float = TUNE) -> dict:
    """A fine-tune: the denoiser moved by ``scale`` of each tensor's std, text encoder and VAE untouched."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * v.std() * torch.randn(v.shape, generator=g) if _weight(k, v, UNET) else v
        for k, v in sd.items()
    }


def _blocks(a: Path, b: Path) -> dict[str, str]:
    """File key -> merge block, from the matrix engine's plan."""
    from sdlens.analysis.matrix_plan import plan

    out = {}
    for task in plan([a, b]).tasks:
        for kp in task.keys:
            blk = next((g[6:] for g in kp.groups if g.startswith("block:")), None)
            if blk:
                out[kp.refs[0].key] = blk
    return out


def build_family(d: Path, start: dict | None = None) -> tuple[dict[str, Path], dict[str, float]]:
    """Two bases, a fine-tune of each (its base's text encoder and VAE; finetune_b's metadata names base_b)
    and a near-duplicate of finetune_a,
    a global weighted merge and a per-block merge of the bases (the per-block one keeps base_a's text encoder
    and VAE, as supermerger does), a fine-tune of the per-block merge, a merge trained further, an
    add-difference merge, an unrelated model and a byte-identical copy of base_b. ``start``: base_a's tensors
    (default: a tiny SD1 built here)."""
    a = start if start is not None else build_single_file("sd1", seed=0)
    b = _redraw(a, 1)
    paths: dict[str, Path] = {}

    def save(name: str, sd: dict, meta: dict | None = None) -> dict:
        paths[name] = save_safetensors(sd, d / f"{name}.safetensors", meta)
        return sd

    def mix(alpha_of) -> dict:
        return {k: (1 - alpha_of(k)) * a[k] + alpha_of(k) * b[k] if _weight(k, a[k]) else a[k] for k in a}

    save("base_a", a)
    save("base_b", b)
    blk = _blocks(paths["base_a"], paths["base_b"])
    alpha = {n: MBW[i % len(MBW)] for i, n in enumerate(sorted(set(blk.values())))}
    ft_a = save("finetune_a", _tune(a, 2))
    save("near_dup_a", _tune(ft_a, 7, NEAR))
    save("finetune_b", _tune(b, 3), {"ss_sd_model_name": "models/base_b.safetensors"})
    save("wsum_ab", mix(lambda k: WSUM))
    mbw = save("mbw_ab", mix(lambda k: alpha[blk[k]] if k in blk else 0.0))
    save("mbw_tuned", _tune(mbw, 4))
    save("merge_trained", _tune(mix(lambda k: MT), 5))
    save("adddiff", {k: b[k] + ALPHA * (ft_a[k] - a[k]) if _weight(k, b[k], UNET) else b[k] for k in b})
    save("unrelated", _redraw(a, 6))
    paths["copy_b"] = Path(shutil.copyfile(paths["base_b"], d / "copy_b.safetensors"))
    return paths, alpha


@pytest.fixture(scope="module")
def family(tmp_path_factory, zoo) -> tuple[dict[str, Path], dict[str, float], Lineage]:
    from safetensors.torch import load_file

    start = {k: v.float() if v.is_floating_point() else v for k, v in load_file(zoo["sd1_fp16"].path).items()}
    paths, alpha = build_family(tmp_path_factory.mktemp("lineage"), start)  # the zoo's SD1, shared
    return paths, alpha, lineage(list(paths.values()))


def _n(name: str) -> str:
    return f"{name}.safetensors"


def _edges(lin: Lineage, kind: str) -> dict[frozenset, object]:
    return {frozenset((e.source, e.target)): e for e in lin.edges_of(kind)}


def test_merges_found_with_their_parents_weights_and_direction(family):
    _, alpha, lin = family
    merges = {m["model"]: m for m in lin.merges}
    assert set(merges) == {_n("wsum_ab"), _n("mbw_ab"), _n("merge_trained")}
    for m in merges.values():
        assert list(m["parents"]) == [_n("base_a"), _n("base_b")]
    w = merges[_n("wsum_ab")]
    assert w["verdict"] == "explained"
    assert w["parents"][_n("base_b")] == pytest.approx(WSUM, abs=1e-3)
    for blk, ws in w["blocks"].items():
        assert ws[_n("base_b")] == pytest.approx(WSUM, abs=1e-3), blk
    m = merges[_n("mbw_ab")]
    assert m["verdict"] == "explained"
    assert set(m["blocks"]) == set(alpha)
    for blk, ws in m["blocks"].items():
        assert ws[_n("base_b")] == pytest.approx(alpha[blk], abs=1e-3), blk
        assert ws[_n("base_a")] + ws[_n("base_b")] == pytest.approx(1.0, abs=1e-6)
    t = merges[_n("merge_trained")]
    assert t["verdict"] == "trained further" and 0.02 < t["residual_share"] < 0.5
    assert t["parents"][_n("base_b")] == pytest.approx(MT, abs=0.02)
    for e in lin.edges_of("merge"):  # parent -> child, from convexity
        assert e.directed and e.evidence and e.source in (_n("base_a"), _n("base_b"))
        assert e.trained_further == (e.target == _n("merge_trained"))
    by = {n.name: n for n in lin.nodes}
    assert by[_n("mbw_ab")].explained_by == [_n("base_a"), _n("base_b")]
    assert by[_n("finetune_a")].explained_by is None  # a fine-tune is no merge of the others


def test_identity_groups_and_the_copy(family):
    _, _, lin = family
    assert lin.identity["denoiser"] == [[_n("base_b"), _n("copy_b")]]
    groups = {
        frozenset(map(_n, ("base_a", "finetune_a", "near_dup_a", "mbw_ab", "mbw_tuned"))),
        frozenset(map(_n, ("adddiff", "base_b", "copy_b", "finetune_b"))),
    }
    assert set(map(frozenset, lin.identity["CLIP-L"])) == set(map(frozenset, lin.identity["VAE"])) == groups
    copy = _edges(lin, "same-component")[frozenset((_n("base_b"), _n("copy_b")))]
    assert set(copy.components) == {"denoiser", "clip_l", "vae"} and copy.copy
    by = {n.name: n for n in lin.nodes}
    assert by[_n("copy_b")].same_denoiser_as == _n("base_b")  # one node for the merge test
    assert all(_n("copy_b") not in (e.source, e.target) for e in lin.edges if e.kind != "same-component")


def test_fine_tunes_direction_only_from_metadata(family):
    _, _, lin = family
    ft = _edges(lin, "fine-tune")
    pairs = {
        frozenset(map(_n, p))
        for p in (("base_a", "finetune_a"), ("base_b", "finetune_b"), ("mbw_ab", "mbw_tuned"))
    }
    dup = frozenset((_n("finetune_a"), _n("near_dup_a")))
    assert set(ft) == pairs | {dup}
    assert ft[dup].near_duplicate and ft[dup].relative_distance < 1e-4
    assert {n.name: n.near_duplicate_of for n in lin.nodes}[_n("near_dup_a")] == _n("finetune_a")
    named = ft[frozenset((_n("base_b"), _n("finetune_b")))]
    assert (
        named.directed
        and (named.source, named.target) == (_n("base_b"), _n("finetune_b"))
        and named.found_by == "metadata"
    )
    for p in pairs - {frozenset((_n("base_b"), _n("finetune_b")))}:
        e = ft[p]
        assert not e.directed and e.evidence and e.found_by in ("nearest neighbour", "spanning tree")
        assert 0.01 < e.relative_distance < 0.1 and {"clip_l", "vae"} <= set(e.components)
    assert {n.name: n.named_base for n in lin.nodes}[_n("finetune_b")] == "models/base_b.safetensors"


def test_add_difference_undirected_with_alpha(family):
    _, _, lin = family
    (e,) = lin.edges_of("add-difference")
    assert {e.source, e.target} == {_n("adddiff"), _n("base_b")} and not e.directed and e.evidence
    assert e.alpha == pytest.approx(ALPHA, abs=1e-3)
    # e.source = e.target + α(difference[0] − difference[1]); the truth: adddiff = base_b + α(finetune_a − base_a)
    want = [_n("finetune_a"), _n("base_a")] if e.source == _n("adddiff") else [_n("base_a"), _n("finetune_a")]
    assert e.difference == want
    assert all(v == pytest.approx(ALPHA, abs=1e-3) for v in e.weights.values())
    assert "not known" in e.note


def test_nearest_only_edges_and_roots(family):
    _, _, lin = family
    near = lin.edges_of("nearest")
    assert len(near) == 1 and _n("unrelated") in (near[0].source, near[0].target)
    assert not near[0].evidence and not near[0].directed and near[0].relative_distance > 1
    assert lin.roots == [_n("base_a"), _n("base_b"), _n("unrelated")]
    assert {e.kind for e in lin.edges} == KINDS


def test_outputs_json_text_and_figure(family, tmp_path):
    _, _, lin = family
    written = write_outputs(lin, tmp_path)
    assert [p.name for p in written] == ["lineage.json", "lineage.txt", "lineage.png"]
    doc = json.loads((tmp_path / "lineage.json").read_text())
    assert set(doc) >= {"nodes", "edges", "roots", "identity", "merges", "thresholds", "skipped"}
    assert {n["name"] for n in doc["nodes"]} == {n.name for n in lin.nodes}
    for e in doc["edges"]:
        assert e["kind"] in KINDS and isinstance(e["evidence"], bool) and isinstance(e["directed"], bool)
        assert e["evidence"] == (e["kind"] != "nearest")
    assert (tmp_path / "lineage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = tree_lines(lin)
    assert lines[0] == "base_a  — root"
    assert "├─ wsum_ab  — merge of 0.7·base_a + 0.3·base_b (residual" in "\n".join(lines)
    mbw_line = next(x for x in lines if "per block, weight of base_b" in x)
    assert mbw_line.rstrip().endswith(
        ",".join(f"{MBW[i % 5]:.3g}" for i in range(len(lin.merges[0]["blocks"])))
    )
    assert any(x.startswith("└─ finetune_b  — fine-tune of base_b (named in its metadata)") for x in lines)
    assert "unrelated  — root (no evidence of a relation to any other model)" in lines
    text = lineage_text(lin)
    assert "NO evidence of a relation" in text and "unrelated" in text.split("NO evidence")[1]
    dot = _dot_source(lin)  # graphviz is optional: its source is checked here, the picture where it runs
    drawn = _drawn(lin)
    assert dot.count(" -> ") == len(drawn) and all(
        e in drawn for e in lin.edges if e.kind != "same-component"
    )


def test_cli_writes_and_an_unreadable_input_is_one_line(family, cli, tmp_path):
    paths, _, _ = family
    odd = Path(shutil.copyfile(paths["wsum_ab"], tmp_path / "[bold]w$um.safetensors"))  # printed, not markup
    three = [str(paths["base_a"]), str(paths["base_b"]), str(odd)]
    r = cli("lineage", *three, "--out", str(tmp_path / "ok"), "--no-plots")
    assert r.returncode == 0, r.stderr
    assert "[bold]w$um  — merge of 0.7·base_a + 0.3·base_b" in r.stdout
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["lineage.json", "lineage.txt"]
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    r = cli("lineage", *three, str(bad), "--out", str(tmp_path / "some"), "--no-plots")
    assert r.returncode == 2
    errors = [x for x in r.stderr.splitlines() if "error" in x]
    assert len(errors) == 1 and "broken.safetensors" in errors[0] and "Traceback" not in r.stderr
    doc = json.loads((tmp_path / "some" / "lineage.json").read_text())
    assert len(doc["nodes"]) == 3 and doc["skipped"][0]["path"] == str(bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_merge_zoo_family_reproduces_its_known_edges(merge_families, dtype):
    """``testing.zoo_merge``: the linear relations are recovered (avg3 is also exactly 0.7·base_a +
    0.014·base_b + 0.286·adddiff: the parents with no 1 % weight are the ones kept); DARE, TIES and crossover
    (not linear in their parents) are merges found by element evidence, with their parents and direction,
    and no model is read as a DARE / TIES child of its own child; the near-duplicate (2e-3 apart in float16)
    is one node beside base_b."""
    from sdlens.testing import zoo_merge as zm

    fam = merge_families(dtype)
    lin = lineage(sorted(fam.paths.values()))
    merges = {m["model"]: m for m in lin.merges}
    assert set(merges) == {_n(x) for x in ("mbw_ab", "avg3", "merge_trained", "dare", "ties", "crossover")}
    for name, method, parents in (
        ("dare", "DARE", {"base_a", "finetune_b"}),
        ("crossover", "crossover", {"base_a", "base_b"}),
        ("ties", "TIES", {"base_a", "finetune_b"}),
    ):
        rec = merges[_n(name)]
        assert rec["method"] == method and {_n(p) for p in parents} <= set(rec["parents"]), name
        assert set(rec["parents"]) <= {_n(p) for p in ("base_a", "base_b", "finetune_a", "finetune_b")}
    assert merges[_n("dare")]["drop_rate"] == pytest.approx(zm.DARE_P, abs=0.02)
    mbw = merges[_n("mbw_ab")]
    assert list(mbw["parents"]) == [_n("base_a"), _n("base_b")] and mbw["verdict"] == "explained"
    for blk, ws in mbw["blocks"].items():
        assert ws[_n("base_b")] == pytest.approx(zm.MBW_ALPHA[blk], abs=1e-3), blk
    avg = merges[_n("avg3")]
    assert avg["verdict"] == "explained"
    assert avg["parents"] == pytest.approx({_n(k): w for k, w in zm.AVG3_WEIGHTS.items()}, abs=1e-3)
    trained = merges[_n("merge_trained")]
    assert trained["verdict"] == "trained further"
    assert trained["parents"] == pytest.approx({_n("base_a"): 0.5, _n("base_b"): 0.5}, abs=0.02)
    (add,) = lin.edges_of("add-difference")
    assert {add.source, add.target} == {_n("adddiff"), _n("base_b")} and set(add.difference) == {
        _n("finetune_a"),
        _n("base_a"),
    }
    assert add.alpha == pytest.approx(zm.ADDDIFF_ALPHA, abs=1e-3)
    ft = _edges(lin, "fine-tune")
    assert frozenset((_n("base_a"), _n("finetune_a"))) in ft
    assert ft[frozenset((_n("base_b"), _n("near_dup_b")))].near_duplicate
    for name in ("base_a", "base_b", "finetune_b", "unrelated"):  # no base is anyone's merge child
        assert not any(e.kind == "merge" and e.target == _n(name) for e in lin.edges), name
    assert all(_n("unrelated") not in (e.source, e.target) or not e.evidence for e in lin.edges)


def test_models_of_the_same_file_name_are_told_apart(family, tmp_path):
    paths, _, _ = family
    for sub, name in (("x", "base_a"), ("y", "base_b")):
        (tmp_path / sub).mkdir()
        shutil.copyfile(paths[name], tmp_path / sub / "model.safetensors")
    lin = lineage(
        [tmp_path / "x" / "model.safetensors", tmp_path / "y" / "model.safetensors", paths["wsum_ab"]]
    )
    (m,) = lin.merges
    assert m["parents"] == pytest.approx(
        {"x/model.safetensors": 1 - WSUM, "y/model.safetensors": WSUM}, abs=1e-3
    )
