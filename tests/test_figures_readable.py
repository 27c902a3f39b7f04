"""Figures a person can read: known truths about what the figures contain (merged identical models, labels
that do not overprint, edge labels only where they fit, folded identical groups, linear shares, SVG colours
and extents), from synthetic data built here."""

from __future__ import annotations

import re
from itertools import combinations
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sdlens.render import matrix_plots as mp  # noqa: E402
from sdlens.render.labels import place_labels, text_boxes  # noqa: E402


def _dist(points: np.ndarray) -> np.ndarray:
    return np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1))


def _no_overlap(artists) -> None:
    fig = artists[0].figure
    fig.canvas.draw()
    boxes = text_boxes(artists)
    for (i, a), (j, b) in combinations(enumerate(boxes), 2):
        assert not a.overlaps(b, pad=0), (artists[i].get_text(), artists[j].get_text())


def _family(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``n`` models in 8-D: a base, 2 byte-identical copies of it, a tight cluster of near-copies, the rest
    spread out, with long names (as real fine-tunes have)."""
    rng = np.random.default_rng(seed)
    pts = [np.zeros(8)] * 3 + [1e-3 * rng.normal(size=8) for _ in range(6)]
    pts += [rng.normal(size=8) * (0.5 + i % 5) for i in range(n - len(pts))]
    names = ["base.safetensors", "copy_a.safetensors", "copy_b.safetensors"]
    names += [f"near_{i}.safetensors" for i in range(6)]
    names += [f"finetune_{i:02d}_some_long_name_v{i % 3}.safetensors" for i in range(n - len(names))]
    return _dist(np.array(pts)), names


def test_identical_models_are_one_node_labelled_with_the_count():
    # a, b, c identical; d and e elsewhere
    pts = np.array([[0, 0], [0, 0], [0, 0], [3, 0], [0, 4]], dtype=float)
    m = _dist(pts)
    names = ["a.safetensors", "b.safetensors", "c.safetensors", "d.safetensors", "e.safetensors"]
    assert mp.identical_groups(m, range(5)) == [[0, 1, 2], [3], [4]]
    fig, nodes, edges = mp.graph_figure(m, names, "t")
    labels = sorted(t.get_text() for t in nodes)
    assert labels == ["a (+2 identical)", "d", "e"]
    assert sorted(t.get_text() for t in edges) == ["3", "4", "5"]  # the three pairs: a–d 3, a–e 4, d–e 5
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("a (+2 identical): a, b, c" in t for t in texts)  # the members, spelled out under the graph
    plt.close(fig)
    fig, points = mp.mds_figure(m, names, "t")
    assert sorted(t.get_text() for t in points) == ["a (+2 identical)", "d", "e"]
    plt.close(fig)


def test_classical_mds_is_to_scale_and_stress_layout_keeps_the_distances():
    pts = np.array([[0, 0], [3, 0], [0, 4], [1, 1]], dtype=float)
    d = _dist(pts)
    assert np.allclose(_dist(mp._classical_mds(d)), d, atol=1e-9)  # exact for 2-D Euclidean distances
    assert mp.mds_explained(d) == pytest.approx(1.0)
    assert np.allclose(_dist(mp.stress_layout(d, mp._classical_mds(d))), d, atol=1e-5)


@pytest.mark.parametrize("n", [3, 8, 45])
def test_graph_and_map_labels_never_overlap(n):
    m, names = _family(max(n, 9))
    m, names = m[:n, :n], names[:n]
    for build in (mp.graph_figure, mp.mds_figure):
        fig, *texts = build(m, names, "title")
        labels = [t for group in texts for t in group]
        _no_overlap(labels)
        shown = {t.get_text() for t in texts[0]}
        notes = " ".join(" ".join(t.get_text() for t in fig.axes[0].texts).split())
        # every node is named: on the page, or by its number in the key under the plot
        for grp in mp.identical_groups(m, range(n)):
            name = mp.group_label(grp, mp._short(names))
            assert name in shown or f"= {name}" in notes or "too crowded" in notes
        plt.close(fig)


def test_edge_labels_only_where_they_fit():
    # a and b are 0.001 apart (one spot on the page), c is 10 away: a–b has no room for "0.001"
    m = _dist(np.array([[0, 0], [0.001, 0], [10, 0]], dtype=float))
    fig, _, edges = mp.graph_figure(m, ["a", "b", "c"], "t")
    assert "0.001" not in {t.get_text() for t in edges}
    assert {t.get_text() for t in edges} & {"10"}
    notes = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "drawn on top of each other (at most 0.001 apart): a, b" in notes
    plt.close(fig)


def test_crowded_labels_become_numbers_in_a_key():
    fig, ax = plt.subplots(figsize=(3, 3))
    xy = np.zeros((30, 2)) + 1e-6 * np.arange(60).reshape(30, 2)
    ax.scatter(xy[:, 0], xy[:, 1])
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    texts, key, _ = place_labels(ax, xy, [f"model_with_a_long_name_{i}" for i in range(30)])
    _no_overlap(texts)
    assert (
        key and len(texts) + sum(1 for k, _ in key if k == 0) == 30
    )  # each point: a label, a number or listed
    assert {t.get_text() for t in texts} >= {str(k) for k, _ in key if k}
    plt.close(fig)


def test_distance_from_reference_is_points_per_group_with_identical_groups_folded():
    pts = np.array([[0, 0], [1, 0], [2, 0]], dtype=float)
    mats = {
        "denoiser": _dist(pts),
        "vae": np.zeros((3, 3)),
        "clip_g": np.array([[0, np.nan, np.nan], [np.nan, 0, 1], [np.nan, 1, 0]]),
    }
    fig = mp.from_ref_figure(mats, ["base", "ft", "ft2"], 0)
    fig.canvas.draw()
    axes = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in axes] == ["denoiser"]  # vae identical, clip_g not comparable with base
    title = fig.get_suptitle()
    assert "no panel: vae" in title and "clip_g" in title
    assert not axes[0].lines  # no line joining categories: points and bars from 0 only
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["base (reference)", "ft", "ft2"]
    plt.close(fig)


def test_saved_figures_keep_their_tick_labels(tmp_path):
    from PIL import Image

    names = [f"a_really_long_model_file_name_number_{i}.safetensors" for i in range(8)]
    m = _dist(np.random.default_rng(1).normal(size=(8, 4)))
    out = mp.plot_from_ref({"denoiser": m}, names, 0, tmp_path / "ref.png")
    img = np.asarray(Image.open(out).convert("L"))
    # the tight bounding box leaves a white margin on every side: nothing cut at the edge
    assert (img[:, :3] > 250).all() and (img[:, -3:] > 250).all() and (img[-3:] > 250).all()


def _report(name, kind, comps, tensor_bytes=None):
    from sdlens.analysis.inspect import ComponentSummary

    cs = [ComponentSummary(cid, label, "", "ldm", 1, 1, b, {}) for cid, label, b in comps]
    return SimpleNamespace(
        path=f"/x/{name}",
        kind=kind,
        family_name="fam",
        components=cs,
        tensor_bytes=tensor_bytes if tensor_bytes is not None else sum(c.bytes for c in cs),
    )


def test_component_chart_is_linear_shares_with_a_complete_legend(tmp_path):
    from sdlens.render.plots import component_segments, plot_component_sizes

    unet = _report(
        "sd.safetensors",
        "full model",
        [("denoiser", "UNet", 600), ("clip_l", "CLIP-L", 200), ("vae_decoder", "VAE decoder", 100)],
        tensor_bytes=1000,
    )
    dit = _report("flux.safetensors", "denoiser only", [("denoiser", "DiT", 5000)])
    lora = _report("lora.safetensors", "LoRA", [], tensor_bytes=300)
    shades: dict[str, str] = {}
    segs = component_segments(unet, shades)
    assert [(lab, round(s, 3)) for lab, _, s in segs] == [
        ("UNet", 0.6),
        ("CLIP-L", 0.2),
        ("VAE decoder", 0.1),
        ("other tensors", 0.1),
    ]
    assert component_segments(dit, shades)[0][:1] == ("DiT",) and shades["DiT"] != shades["UNet"]
    assert component_segments(lora, shades)[0][0] == "LoRA (no model components)"
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        svg = plot_component_sizes([unet, dit, lora], tmp_path / "c.svg").read_text()
    for label in ("UNet", "DiT", "CLIP-L", "VAE decoder", "other tensors", "LoRA (no model components)"):
        assert f">{label}<" in svg  # in the legend
    assert "share of the file" in svg and "log" not in svg


def test_diff_figures_fold_identical_groups(tmp_path):
    from sdlens.render.diff_plots import plot_block_bars, plot_layer_histograms

    rows = [
        {
            "component": "denoiser",
            "layer_type": lt,
            "l2": (0.1 * (i + 1) if lt in ("attn2", "ff") else 0.0),
            "identical": lt not in ("attn2", "ff"),
        }
        for lt in ("attn1", "attn2", "ff", "norm")
        for i in range(5)
    ]
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        svg = plot_layer_histograms(rows, tmp_path / "h.svg", title="a vs b").read_text()
        assert svg.count("L2 distance per tensor") == 2  # panels for attn2 and ff only
        assert "identical, no panel: attn1 (self-attention) (5 tensors), norm (5 tensors)" in svg
        blocks = {
            "UNet": {"IN00": {"l2": 1.0, "rms": 0.1, "changed": 2}, "IN01": {"l2": 0.0, "changed": 0}},
            "CLIP-L": {"BASE": {"l2": 0.0, "changed": 0}},
        }
        svg = plot_block_bars(blocks, tmp_path / "b.svg", identical=["VAE decoder"]).read_text()
    assert "UNet: 1 of 2 blocks changed" in svg and "CLIP-L:" not in svg
    assert "identical, no row: CLIP-L, VAE decoder" in svg


def BlockRow(name, params, share, flops, resolution, channels, keys):  # noqa: N802 - cost.BlockRow's fields
    return SimpleNamespace(
        name=name,
        params=params,
        share=share,
        flops=flops,
        resolution=resolution,
        channels=channels,
        keys=keys,
    )


def _unet_report():
    blocks = [
        BlockRow(f"IN{i:02d}", 10**7 * (i + 1), 0.01 * i, 0, "64×64", 320 * (1 + i // 3), [])
        for i in range(12)
    ]
    blocks += [BlockRow("M00", 9 * 10**7, 0.1, 0, "8×8", 1280, [])]
    blocks += [BlockRow(f"OUT{i:02d}", 10**7, 0.2 - 0.01 * i, 0, "64×64", 1280, []) for i in range(12)]
    return SimpleNamespace(
        name="A very long model name to test the title width",
        cls_name="UNet2DConditionModel",
        params=2_567_000_000,
        settings={"latent": (128, 128), "text_tokens": 77},
        blocks=blocks,
    )


def _dit_report():
    blocks = [BlockRow("IN", 45 * 10**6, 0.01, 0, None, None, ["img_in", "txt_in", "time_in", "vector_in"])]
    blocks += [BlockRow(f"D{i:02d}", 3 * 10**8, 0.03, 0, None, None, []) for i in range(19)]
    blocks += [BlockRow(f"S{i:02d}", 10**8, 0.01, 0, None, None, []) for i in range(38)]
    blocks += [BlockRow("OUT", 2 * 10**7, 0.001, 0, None, None, ["final_layer"])]
    return SimpleNamespace(
        name="FLUX.1-dev",
        cls_name="FluxTransformer2DModel",
        params=11_900_000_000,
        settings={"latent": (64, 64), "text_tokens": 512},
        blocks=blocks,
    )


def _svg_texts(svg: str):
    """(x0, y0, x1, y1, text) of every text, measured with DejaVu Sans' real glyph advances."""
    from html import unescape

    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    out = []
    pat = r"<text x='([\d.]+)' y='([\d.]+)' font-size='(\d+)' text-anchor='(\w+)'( font-weight='bold')?[^>]*>([^<]*)<"
    for x, y, size, anchor, bold, text in re.findall(pat, svg):
        x, y, size, text = float(x), float(y), float(size), unescape(text)
        prop = FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal")
        w = TextPath((0, 0), text, size=size, prop=prop).get_extents().width
        x0 = {"start": x, "middle": x - w / 2, "end": x - w}[anchor]
        out.append((x0, y - 0.8 * size, x0 + w, y + 0.2 * size, text))
    return out


@pytest.mark.parametrize("report", [_unet_report, _dit_report])
def test_arch_svg_hex_colours_text_inside_and_apart(report):
    from sdlens.render.arch_diagram import block_diagram_svg

    svg = block_diagram_svg(report())
    assert "hsl(" not in svg
    assert all(
        re.fullmatch(r"#[0-9a-f]{6}", c) for c in re.findall(r"(?:fill|stroke)='([^']+)'", svg) if c != "none"
    )
    w, h = map(float, re.search(r"viewBox='0 0 ([\d.]+) ([\d.]+)'", svg).groups())
    texts = _svg_texts(svg)
    assert len(texts) > 20
    for x0, y0, x1, y1, t in texts:
        assert x0 >= 0 and x1 <= w and y0 >= 0 and y1 <= h, t  # nothing clipped: title and legend included
    for a, b in combinations(texts, 2):
        apart = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
        assert apart, (a[4], b[4])


def test_drift_figure_draws_only_models_that_moved(tmp_path):
    from sdlens.analysis.embed import Drift, DriftRow, EmbedResult, EncoderEmbedding
    from sdlens.io.prompts import Prompt
    from sdlens.render.embed_plots import plot_drift

    rng = np.random.default_rng(0)
    prompts = [Prompt(f"p{i}", f"prompt {i}", None, None) for i in range(6)]
    ref = rng.normal(size=(6, 16)).astype(np.float32)
    vectors = {
        "ref": ref,
        "copy": ref.copy(),
        "tuned": ref + 0.3 * rng.normal(size=(6, 16)).astype(np.float32),
    }

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    embs = [
        EncoderEmbedding(m, m, "clip_g", "CLIP-G", "penultimate", "eos", False, 16, [], [], v)
        for m, v in vectors.items()
    ]
    drift = [
        Drift(
            m, "ref", "clip_g", [DriftRow(p.label, p.text, cos(v[i], ref[i])) for i, p in enumerate(prompts)]
        )
        for m, v in vectors.items()
        if m != "ref"
    ]
    result = EmbedResult(prompts, [], embs, drift, "ref")
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        svg = plot_drift(result, "clip_g", tmp_path / "d.svg").read_text()
    assert "tuned vs ref" in svg and "copy vs ref" not in svg  # one panel: the model that moved
    assert "no drift (rounding level): copy (largest " in svg  # float32 rounding of cos = 1


def test_recipe_figure_one_line_per_weighing_candidate_and_readable_ticks(merge_families):
    """The recipe figure of the per-block merge: a line for each candidate that weighs somewhere (the one of
    weight 0 everywhere left out, as in the table), one tick per merge block in the family's order, tick
    labels apart, residual shares on a log axis."""
    import torch

    from sdlens.analysis.recipe import recipe
    from sdlens.render.recipe_view import recipe_figure

    fam = merge_families(torch.float32)
    cands = ["base_a", "base_b", "finetune_a", "unrelated", "finetune_b"]
    r = recipe(fam.paths["mbw_ab"], [fam.paths[c] for c in cands])
    fig = recipe_figure(r)
    top, bottom = fig.axes
    labels = [line.get_label() for line in top.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["A = base_a.safetensors", "B = base_b.safetensors"]
    ticks = [t.get_text() for t in bottom.get_xticklabels()]
    assert ticks == [g.group for g in r.groups if g.fit is not None] and ticks[:2] == ["BASE", "IN00"]
    assert bottom.get_yscale() == "log"
    _no_overlap(bottom.get_xticklabels())
    plt.close(fig)
