"""zoo_merge: the merge family's truths checked on the stored tensors (float64 numpy), in float32 and float16,
so that recipe / lineage tests can trust ``truth.json``. Blocks here come from ``block_of`` directly (the
builder goes through the matrix plan), so the two routes to a key's merge block are checked to agree."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sdlens.arch.blocks import block_of

UNET = "model.diffusion_model."
NAMES = {
    "base_a", "base_b", "finetune_a", "finetune_b", "mbw_ab", "adddiff", "avg3", "dare", "ties",
    "crossover", "merge_trained", "unrelated", "near_dup_b",
}  # fmt: skip


class Fam:
    """The built family read back: per model, float64 flat vectors per part (unet / te / vae) and per block."""

    def __init__(self, family, dtype):
        self.dtype = dtype
        self.family = family
        self.sd = {n: load_file(str(p)) for n, p in self.family.paths.items()}
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        base = self.sd["base_a"]
        self.keys = sorted(k for k, v in base.items() if v.is_floating_point() and _part(k) != "rest")
        self.sel = {
            "unet": [k for k in self.keys if k.startswith(UNET)],
            "te": [k for k in self.keys if _part(k) == "te"],
            "vae": [k for k in self.keys if _part(k) == "vae"],
        }
        for k in self.sel["unet"]:
            self.sel.setdefault(block_of("denoiser/" + k[len(UNET) :], "sd1"), []).append(k)

    def v(self, name: str, part: str = "unet") -> np.ndarray:
        if (name, part) not in self._cache:
            x = np.concatenate([self.sd[name][k].double().numpy().ravel() for k in self.sel[part]])
            self._cache[name, part] = x
        return self._cache[name, part]

    def round(self, x: np.ndarray) -> np.ndarray:
        return torch.from_numpy(x).to(self.dtype).double().numpy()


def _part(key: str) -> str:
    if key.startswith(UNET):
        return "unet"
    if key.startswith("cond_stage_model."):
        return "te"
    return "vae" if key.startswith("first_stage_model.") else "rest"


def _fit(m: np.ndarray, p0: np.ndarray, others: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Least-squares weights of ``others`` in M − P0 ≈ Σ wᵢ (Pᵢ − P0), and the residual share."""
    a = np.stack([p - p0 for p in others], axis=1)
    w, *_ = np.linalg.lstsq(a, m - p0, rcond=None)
    return w, float(np.linalg.norm(m - p0 - a @ w) / np.linalg.norm(m - p0))


@pytest.fixture(scope="module", params=[torch.float32, torch.float16], ids=["fp32", "fp16"])
def fam(request, merge_families) -> Fam:
    return Fam(merge_families(request.param), request.param)


def test_files_and_truth_file(fam):
    f = fam.family
    assert set(f.paths) == set(f.truth) == NAMES
    doc = json.loads(f.truth_path.read_text())
    assert doc["models"] == json.loads(json.dumps(f.truth))
    assert doc["meta"]["dtype"] == str(fam.dtype).removeprefix("torch.")
    keys = set(fam.sd["base_a"])
    for name, sd in fam.sd.items():
        assert set(sd) == keys, name
        assert all(sd[k].dtype == fam.dtype for k in fam.keys), name
        assert f.truth[name]["file"] == f.paths[name].name


def test_finetunes_change_only_the_unet(fam):
    for name, rel in (("finetune_a", 0.05), ("finetune_b", 0.5)):
        for part in ("te", "vae"):
            assert np.array_equal(fam.v(name, part), fam.v("base_a", part))
        a, ft = fam.v("base_a"), fam.v(name)
        assert np.linalg.norm(ft - a) / np.linalg.norm(a) == pytest.approx(rel, rel=0.05)
        assert fam.family.truth[name]["parent"] == "base_a"


def test_mbw_blocks_and_copies(fam):
    t = fam.family.truth["mbw_ab"]
    assert t["block_order"][0] == "BASE" and len(t["mbw"]) == len(t["block_order"]) == 26
    assert {b for b, v in t["alpha"].items() if v == 0} >= {"IN04", "IN08", "OUT09"}
    assert {b for b, v in t["alpha"].items() if v == 1} >= {"IN03", "M00", "OUT05"}
    for blk, alpha in t["alpha"].items():
        parts = ["te", "vae"] if blk == "BASE" else [blk]
        for part in parts:
            a, b, m = fam.v("base_a", part), fam.v("base_b", part), fam.v("mbw_ab", part)
            if alpha == 0:
                assert np.array_equal(m, a), blk
            elif alpha == 1:
                assert np.array_equal(m, b), blk
            else:  # one rounding of the float64 formula, and the block's α back by least squares
                assert np.array_equal(m, fam.round(a * (1 - alpha) + b * alpha)), blk
            w = np.dot(m - a, b - a) / np.dot(b - a, b - a)
            assert w == pytest.approx(alpha, abs=1e-3), blk


def test_add_difference(fam):
    t = fam.family.truth["adddiff"]
    assert (t["A"], t["B"], t["C"], t["alpha"]) == ("base_b", "finetune_a", "base_a", 0.7)
    a, b, fa, m = (fam.v(n) for n in ("base_a", "base_b", "finetune_a", "adddiff"))
    assert np.array_equal(m, fam.round(b + 0.7 * (fa - a)))  # the formula in float64, rounded once
    (w,), _ = _fit(m, b, [fa + (b - a)])  # M − A along (B − C)
    assert w == pytest.approx(0.7, abs=1e-3)
    assert np.array_equal(fam.v("adddiff", "te"), fam.v("base_b", "te"))  # B − C is zero there


def test_three_model_average(fam):
    a, b, fa, m = (fam.v(n) for n in ("base_a", "base_b", "finetune_a", "avg3"))
    w, res = _fit(m, a, [b, fa])
    assert w == pytest.approx([0.3, 0.2], abs=1e-3)
    assert res < 1e-2
    assert fam.family.truth["avg3"]["weights"] == {"base_a": 0.5, "base_b": 0.3, "finetune_a": 0.2}


def test_dare_drop_share_and_rescale(fam):
    t = fam.family.truth["dare"]
    a, fb, m = fam.v("base_a"), fam.v("finetune_b"), fam.v("dare")
    moved = fb != a
    dropped = (m == a) & moved
    share = dropped.sum() / moved.sum()
    assert share == pytest.approx(0.3, abs=0.01)
    assert share == pytest.approx(t["measured_drop_share"], abs=1e-12)
    kept = moved & ~dropped
    ratio = (m - a)[kept] / (fb - a)[kept]
    assert np.median(ratio) == pytest.approx(1 / 0.7, rel=1e-3)
    assert t["drop_rate"] == 0.3 and t["lambda"] == 1.0 and t["parents"] == ["base_a", "finetune_b"]
    assert np.array_equal(fam.v("dare", "te"), fam.v("base_a", "te"))


def test_ties_values_and_trim(fam):
    t = fam.family.truth["ties"]
    a, fa, fb, m = (fam.v(n) for n in ("base_a", "finetune_a", "finetune_b", "ties"))
    mean = fam.round(a + ((fa - a) + (fb - a)) / 2)
    assert np.all((m == a) | (m == fa) | (m == fb) | (m == mean))  # base, one delta, or their mean
    share = np.mean(m == a)
    assert share == pytest.approx((1 - 0.2) ** 2, abs=0.01)  # independent top-20 % masks
    assert share == pytest.approx(t["measured_equal_base_share"], abs=1e-12)
    # per tensor at most the top 20 % of each delta is taken, and only its largest magnitudes
    sizes = [fam.sd["base_a"][k].numel() for k in fam.sel["unet"]]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    mag = np.abs(fb - a)
    taken = (m == fb) & (fb != a) & (m != fa)  # (in fp16 finetune_a's value may round to b's)
    assert np.all(np.add.reduceat(taken, starts) <= np.maximum(1, np.round(0.2 * np.array(sizes))))
    low_taken = np.minimum.reduceat(np.where(taken, mag, np.inf), starts)
    high_left = np.maximum.reduceat(np.where(~taken & (m == a), mag, -np.inf), starts)
    assert np.all(low_taken >= high_left)
    shares = t["element_shares"]
    assert sum(shares.values()) == pytest.approx(1.0)


def test_crossover(fam):
    t = fam.family.truth["crossover"]
    for part in ("unet", "te", "vae"):
        a, b, m = fam.v("base_a", part), fam.v("base_b", part), fam.v("crossover", part)
        assert np.all((m == a) | (m == b))
        assert np.mean(m == b) == pytest.approx(0.4, abs=0.01)
    assert t["measured_share_from_B"] == pytest.approx(np.mean(fam.v("crossover") == fam.v("base_b")))


def test_merge_trained_residual_share(fam):
    t = fam.family.truth["merge_trained"]
    assert (t["P0"], t["candidates"]) == ("base_a", ["base_a", "base_b"])
    a, b, m = fam.v("base_a"), fam.v("base_b"), fam.v("merge_trained")
    (w,), res = _fit(m, a, [b])
    assert res == pytest.approx(t["residual_share"], rel=1e-9)
    assert res == pytest.approx(0.3 / math.sqrt(1 + 0.3**2), abs=0.01)
    assert w == pytest.approx(0.5, abs=0.01)
    near = min(np.linalg.norm(m - a), np.linalg.norm(m - b))
    assert res * np.linalg.norm(m - a) / near == pytest.approx(t["residual_share_vs_nearest"], rel=1e-9)
    by = t["by_group"]
    blocks = [k for k in fam.sel if k not in ("unet", "te", "vae")]
    assert len(blocks) == 25 and {f"block:{k}" for k in blocks} <= set(by)
    resid = []
    for blk in blocks:
        mb, ab, bb = fam.v("merge_trained", blk), fam.v("base_a", blk), fam.v("base_b", blk)
        _, r = _fit(mb, ab, [bb])
        assert r == pytest.approx(by[f"block:{blk}"]["vs_p0"], rel=1e-9), blk
        resid.append(r * np.linalg.norm(mb - ab))
    blockwise = math.sqrt(sum(x * x for x in resid)) / near
    assert blockwise == pytest.approx(t["residual_share_blockwise"], rel=1e-9)
    for part, grp in (("te", "clip_l"), ("vae", "vae")):  # an exact 0.5 / 0.5 merge there
        _, r = _fit(fam.v("merge_trained", part), fam.v("base_a", part), [fam.v("base_b", part)])
        assert r < 1e-3 and r == pytest.approx(by[grp]["vs_p0"], rel=1e-6, abs=1e-12)


def test_unrelated_and_near_duplicate(fam):
    a, b, u = fam.v("base_a"), fam.v("base_b"), fam.v("unrelated")
    _, res = _fit(u, a, [b])
    assert res > 0.8 and res == pytest.approx(fam.family.truth["unrelated"]["residual_share"], rel=1e-9)
    assert fam.family.truth["unrelated"]["residual_share_blockwise"] > 0.8
    t = fam.family.truth["near_dup_b"]
    near = fam.v("near_dup_b")
    assert np.linalg.norm(near - b) / np.linalg.norm(b) == pytest.approx(t["relative_change"], rel=0.1)
    assert np.mean(near != b) > 0.5  # not rounded away at the stored dtype
    gram = np.stack([b - a, near - a]) @ np.stack([b - a, near - a]).T
    assert np.linalg.cond(gram) > 1e5  # the two candidates are near-collinear


def test_tree_and_identity_groups(fam):
    meta = fam.family.meta
    children = [e["child"] for e in meta["edges"]]
    assert sorted(children + meta["roots"]) == sorted(NAMES)  # every model: a root or one edge
    assert all(set(e["parents"]) <= NAMES - {e["child"]} for e in meta["edges"])
    for part, comp in (("te", "clip_l"), ("vae", "vae"), ("unet", "denoiser")):
        vecs = {n: fam.v(n, part).tobytes() for n in NAMES}
        groups = sorted(
            sorted(g) for g in ({m for m in NAMES if vecs[m] == vecs[n]} for n in NAMES) if len(g) > 1
        )
        unique = [g for i, g in enumerate(groups) if g not in groups[:i]]
        assert unique == meta["identity"][comp], comp
    assert ["adddiff", "base_b"] in meta["identity"]["clip_l"]
