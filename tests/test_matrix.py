"""matrix: distances over a model family with known relations, against float64 brute force."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sdlens.analysis import matrix as M
from sdlens.arch.canonical import canonical_index, read_canonical
from sdlens.io.open import open_checkpoint
from sdlens.testing.zoo_matrix import MERGE_ALPHA, build_matrix_zoo

GROUPS = {
    "denoiser": ("denoiser",),
    "clip_l": ("clip_l",),
    "vae": ("vae_encoder", "vae_decoder"),
    "vae_decoder": ("vae_decoder",),
}


@pytest.fixture(scope="module")
def mzoo(tmp_path_factory) -> dict[str, Path]:
    return build_matrix_zoo(tmp_path_factory.mktemp("mzoo"))


@pytest.fixture(scope="module")
def l2(mzoo):
    return M.matrix(list(mzoo.values()), metric="l2")


@pytest.fixture(scope="module")
def tensors(mzoo):
    """name -> {canonical key: float64 flat tensor} (the brute force keeps everything: tiny models)."""
    out = {}
    for name, p in mzoo.items():
        with open_checkpoint(p) as ck:
            idx, _ = canonical_index(ck.tensors)
            out[name] = {
                k: read_canonical(ck, r).double().reshape(-1)
                for k, r in idx.items()
                if ck.tensors[r.key].dtype.startswith(("F", "BF"))
            }
    return out


def _brute(tensors, a, b, comps, metric):
    ta, tb = tensors[a], tensors[b]
    keys = [k for k in ta if k.split("/")[0] in comps and k in tb and ta[k].shape == tb[k].shape]
    x = torch.cat([ta[k] for k in keys])
    y = torch.cat([tb[k] for k in keys])
    if metric == "l2":
        return float((x - y).norm())
    if metric == "l1":
        return float((x - y).abs().sum())
    return 1.0 - float(x.dot(y) / (x.norm() * y.norm()))


def _check_brute(result, tensors, metric, rel):
    names = [Path(m.path).stem for m in result.models]
    checked = 0
    for group, comps in GROUPS.items():
        m = result.matrix(group)
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                if i < j and not math.isnan(m[i, j]):
                    want = _brute(tensors, a, b, comps, metric)
                    assert m[i, j] == pytest.approx(want, rel=rel, abs=1e-12), (group, a, b)
                    assert m[i, j] == m[j, i]
                    checked += 1
    assert checked > 40


def test_l2_equals_brute_force(l2, tensors):
    _check_brute(l2, tensors, "l2", 1e-6)


@pytest.mark.parametrize("metric", ["cos", "l1"])
def test_other_metrics_equal_brute_force(mzoo, tensors, metric):
    r = M.matrix(list(mzoo.values()), metric=metric)
    _check_brute(r, tensors, metric, 1e-6 if metric == "l1" else 1e-5)


def test_near_identical_fine_tune_keeps_precision(l2, tensors):
    # a 1e-5 perturbation next to models that differ by ~15: cancellation would ruin a plain Gram matrix
    i, j = l2.names.index("base.safetensors"), l2.names.index("near.safetensors")
    want = _brute(tensors, "base", "near", ("denoiser",), "l2")
    assert want < 1e-2
    assert l2.matrix("denoiser")[i, j] == pytest.approx(want, rel=1e-6)


def test_merge_lies_where_it_must(l2):
    m = l2.matrix("denoiser")
    idx = {n.removesuffix(".safetensors"): i for i, n in enumerate(l2.names)}
    d_ab = m[idx["base"], idx["unet_ft"]]
    assert m[idx["base"], idx["merge"]] == pytest.approx((1 - MERGE_ALPHA) * d_ab, rel=1e-6)
    assert m[idx["merge"], idx["unet_ft"]] == pytest.approx(MERGE_ALPHA * d_ab, rel=1e-6)


def test_identity_groups_are_exact(l2):
    stem = {n: n.removesuffix(".safetensors") for n in l2.names}
    ident = {g: [sorted(stem[n] for n in grp) for grp in groups] for g, groups in l2.identity.items()}
    assert ident["denoiser"] == [["base", "te_ft", "vae_swap"]]
    assert ident["clip_l"] == [["base", "merge", "near", "unet_ft", "vae_swap"]]
    assert ident["vae"] == [["base", "merge", "near", "te_ft", "unet_ft"]]
    m = l2.matrix("vae")
    i, j = l2.names.index("base.safetensors"), l2.names.index("near.safetensors")
    assert m[i, j] == 0.0  # exactly: the same bytes
    k, swap = l2.names.index("fp16.safetensors"), l2.names.index("vae_swap.safetensors")
    assert 0 < m[i, k] < 1e-3 * m[i, swap]  # fp16 copy: not identical, within rounding


def test_other_architecture_is_left_out_with_a_note(l2):
    m = l2.matrix("denoiser")
    x = l2.names.index("sdxl.safetensors")
    assert np.isnan(m[x, :x]).all() and m[x, x] == 0.0
    assert "sdxl.safetensors" in l2.notes["denoiser"]
    assert "clip_l" not in l2.notes  # every model has a CLIP-L of the same shape: all compared
    assert not np.isnan(l2.matrix("clip_l")).any()


def test_blocks_add_up_to_the_denoiser(mzoo, l2):
    r = M.matrix(list(mzoo.values())[:4], by="block")
    assert {"block:IN00", "block:M00", "block:OUT11"} <= set(r.matrices)
    total = sum(r.matrix(g) ** 2 for g in r.matrices)
    assert np.allclose(np.sqrt(total), l2.matrix("denoiser")[:4, :4], rtol=1e-9)


def test_resume_gives_the_same_result(mzoo, tmp_path, monkeypatch):
    monkeypatch.setattr(M, "_TASK_BYTES", 50_000)
    paths = list(mzoo.values())[:5]
    whole = M.matrix(paths)
    state = tmp_path / "state.npz"
    seen = {"bytes": 0}

    def interrupt(n):
        seen["bytes"] += n
        if seen["bytes"] > 2_000_000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        M.matrix(paths, state=state, progress=interrupt)
    saved = M.Partial.load(state, 5, M._fingerprint(M.plan(paths), "l2"))
    assert 0 < len(saved.done) < len(M.plan(paths).tasks)
    resumed = M.matrix(paths, state=state, resume=True)
    assert resumed.matrices == whole.matrices
    assert resumed.identity == whole.identity


def test_tasks_add_up_like_the_whole_run(mzoo, monkeypatch):
    # the engine's contract for distributed runs: per-task partials, summed in any order, give the result
    monkeypatch.setattr(M, "_TASK_BYTES", 50_000)
    paths = list(mzoo.values())[:3]
    pl = M.plan(paths)
    parts = [M.run_task(paths, t) for t in reversed(pl.tasks)]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    r = M.finish(pl, total, metric="l2", by="component")
    assert np.allclose(r.matrix("denoiser"), M.matrix(paths).matrix("denoiser"), rtol=1e-12)


def test_resume_refuses_state_of_another_run(mzoo, tmp_path):
    state = tmp_path / "s.npz"
    M.matrix(list(mzoo.values())[:2], state=state)
    with pytest.raises(M.SdlensError, match="another run"):
        M.matrix(list(mzoo.values())[1:3], state=state, resume=True)


def test_cli_writes_csv_json_and_plots(mzoo, l2, tmp_path, cli):
    import csv
    import json

    out = tmp_path / "out"
    r = cli("matrix", *map(str, mzoo.values()), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "sdxl.safetensors" in r.stdout  # the note on who was left out
    rows = list(csv.reader((out / "matrix-denoiser.csv").open()))
    assert rows[0] == ["model", *l2.names]
    got = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    assert np.allclose(got, l2.matrix("denoiser"), rtol=1e-12, equal_nan=True)
    doc = json.loads((out / "matrix.json").read_text())
    x = l2.names.index("sdxl.safetensors")
    assert doc["matrices"]["denoiser"][0][x] is None  # missing cells: null in JSON, NaN in CSV
    assert doc["identity"]["denoiser"] == [list(g) for g in l2.identity["denoiser"]]
    for name in (
        "heatmap-denoiser.png",
        "graph-denoiser.png",
        "mds-denoiser.png",
        "from-ref.png",
        "identity.png",
    ):
        assert (out / name).stat().st_size > 10_000
    assert not (out / ".matrix-partial.npz").exists()


def test_cli_bad_input_is_one_line(tmp_path, mzoo, cli):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    r = cli("matrix", str(mzoo["base"]), str(bad), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "broken.safetensors" in r.stderr and "Traceback" not in r.stderr


def test_open_clip_text_encoder_identity(tmp_path):
    # SD2's open_clip layout has fused q/k/v rows and a transposed text_projection: identity must still hold
    from sdlens.testing.writers import save_safetensors
    from sdlens.testing.zoo_matrix import UNET, _perturb
    from sdlens.testing.zoo_unet import build_single_file

    base = build_single_file("sd2", seed=0)
    paths = [
        save_safetensors(base, tmp_path / "a.safetensors"),
        save_safetensors(_perturb(base, UNET, 0.02, seed=1), tmp_path / "b.safetensors"),
    ]
    r = M.matrix(paths)
    assert r.identity["openclip_h"] == [["a.safetensors", "b.safetensors"]]
    assert r.matrix("openclip_h")[0, 1] == 0.0
    assert r.matrix("denoiser")[0, 1] > 0


def test_nan_weights_leave_their_cells_empty_with_a_note(tmp_path):
    from sdlens.testing.writers import save_safetensors
    from sdlens.testing.zoo_matrix import UNET, _perturb
    from sdlens.testing.zoo_unet import build_single_file

    base = build_single_file("sd1", seed=0)
    broken = _perturb(base, UNET, 0.02, seed=1)
    key = next(k for k in broken if k.startswith(UNET) and k.endswith("weight") and broken[k].numel() > 100)
    broken[key] = broken[key].clone()
    broken[key].view(-1)[7] = float("nan")
    paths = [
        save_safetensors(base, tmp_path / "a.safetensors"),
        save_safetensors(_perturb(base, UNET, 0.02, seed=2), tmp_path / "b.safetensors"),
        save_safetensors(broken, tmp_path / "nan.safetensors"),
    ]
    r = M.matrix(paths)
    m = r.matrix("denoiser")
    assert np.isnan(m[2, :2]).all() and np.isnan(m[:2, 2]).all()
    assert m[0, 1] > 0 and math.isfinite(m[0, 1])  # the other pair is unaffected
    assert (
        r.notes["denoiser"] == "NaN or Inf weights, distances left empty: 1 model (nan.safetensors: 1 tensor)"
    )
    assert not np.isnan(r.matrix("clip_l")).any()  # its other components are fine


@pytest.mark.parametrize("metric", ["l2", "cos", "l1"])
def test_exact_torch_path_matches_the_kernel(mzoo, metric):
    # the float64 torch path (GPU, float64 rows, NaN fallback) and the CPU kernel give the same sums
    paths = list(mzoo.values())[:4]
    pl = M.plan(paths, metric=metric)
    cks = [open_checkpoint(p) for p in paths]
    try:
        for kp in pl.tasks[0].keys[:40]:
            uniq = [i for i, r in enumerate(kp.refs) if r is not None]
            want = M._wanted(metric)
            fast = M._kernel_sums(cks, kp, uniq, want, 1 << 20)
            exact = M._chunked_sums(cks, kp, uniq, want, 1 << 20, "cpu", exact=True)
            for k in [0, 1, 2] + [3] * bool(want & 8):  # Σx² is summed for cos only
                e = exact[k]
                # ‖a‖²−‖b‖² (k = 1) may itself be a cancelling sum; it only corrects 1 − cos, so it needs to be
                # good to 1e-6 of itself or of ‖a−b‖²
                scale = float(np.abs(exact[0] if k == 1 else e).max())
                np.testing.assert_allclose(fast[k], e, rtol=1e-6, atol=1e-6 * scale + 1e-12)
    finally:
        for ck in cks:
            ck.close()


def test_cosine_keeps_precision_for_near_identical_models(mzoo, tensors):
    r = M.matrix([mzoo["base"], mzoo["near"], mzoo["unet_ft"]], metric="cos")
    x, y = tensors["base"], tensors["near"]
    keys = [k for k in x if k.startswith("denoiser/")]
    a = torch.cat([x[k] for k in keys])
    b = torch.cat([y[k] for k in keys])
    # 1 − cos by the stable formula, in float64: ‖a−b‖² − (‖a‖−‖b‖)² over 2‖a‖‖b‖
    na, nb = a.norm(), b.norm()
    want = float(((a - b).norm() ** 2 - (na - nb) ** 2) / (2 * na * nb))
    assert want < 1e-8  # truly near: 1 − a·b/(‖a‖‖b‖) from float32 sums would have no digit left
    assert r.matrix("denoiser")[0, 1] == pytest.approx(want, rel=1e-5)


def test_workers_setting_gives_the_same_matrices_and_is_restored(mzoo, l2):
    from sdlens.analysis import kernels

    before = kernels.threads()
    r = M.matrix(list(mzoo.values()), workers=1)
    assert kernels.threads() == before
    for g in ("denoiser", "clip_l", "vae"):
        np.testing.assert_allclose(r.matrix(g), l2.matrix(g), rtol=1e-12, equal_nan=True)
