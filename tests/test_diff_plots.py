"""Figures of ``sdlens diff``: histograms per layer type and bars per block, from synthetic data."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from sdlens.render.diff_plots import plot_block_bars, plot_layer_histograms  # noqa: E402

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == _PNG_MAGIC
    return struct.unpack(">II", data[16:24])


def _tensors(identical: bool = False) -> list[dict[str, Any]]:
    types = ["attn1", "attn2", "ff", "other"]
    rows = []
    for i in range(50):
        same = identical or i % 7 == 0
        l2 = 0.0 if same else 0.01 * (1 + i % 11) * (1 + i % 3)
        rows.append(
            {
                "key": f"model.t{i}.weight",
                "component": "denoiser",
                "layer_type": types[i % 4],
                "l2": l2,
                "rms": l2 / 30,
                "identical": same,
                "numel": 900,
            }
        )
    # a text-encoder tensor: must not appear since denoiser tensors exist
    rows.append(
        {
            "key": "te.emb",
            "component": "clip_l",
            "layer_type": "embedding",
            "l2": 3.0,
            "rms": 0.1,
            "identical": False,
            "numel": 100,
        }
    )
    return rows


def _blocks(changed: bool = True) -> dict[str, dict[str, dict[str, Any]]]:
    names = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
    assert len(names) == 26
    unet = {}
    for i, n in enumerate(names):
        c = 3 if changed and i % 4 else 0
        l2 = 0.5 * (i + 1) if c else 0.0
        unet[n] = {"l2": l2, "rms": l2 / 100, "changed": c, "tensors": 3}
    clip = {"BASE": {"l2": 0.0, "rms": 0.0, "changed": 0, "tensors": 196}}
    return {"UNet": unet, "CLIP-L": clip, "VAE decoder": {}}


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_layer_histograms_written(tmp_path: Path, suffix: str) -> None:
    out = plot_layer_histograms(_tensors(), tmp_path / "sub" / f"hist{suffix}", title="a vs b")
    assert out == tmp_path / "sub" / f"hist{suffix}"
    assert out.stat().st_size > 1000
    if suffix == ".png":
        assert _png_size(out)[0] >= 800
    else:
        svg = out.read_text()
        for lt in ("attn1", "attn2", "ff", "other"):
            assert lt in svg
        assert "embedding" not in svg  # only denoiser tensors are plotted when present
        assert "identical" in svg


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_block_bars_written(tmp_path: Path, suffix: str) -> None:
    out = plot_block_bars(_blocks(), tmp_path / "deep" / "dir" / f"blocks{suffix}", title="a vs b")
    assert out.exists() and out.stat().st_size > 1000
    if suffix == ".png":
        w, h = _png_size(out)
        assert w >= 800 and h >= 300
    else:
        svg = out.read_text()
        for name in ("BASE", "IN00", "M00", "OUT11", "UNet", "CLIP-L", "RMS"):
            assert name in svg
        assert "VAE decoder" not in svg  # a component without blocks gets no row


def test_block_bars_width_scales_and_l2_label(tmp_path: Path) -> None:
    flux = {
        "FLUX": {
            f"{'D' if i < 19 else 'S'}{i:02d}": {"l2": 1.0 + i, "rms": 0.01, "changed": 1, "tensors": 2}
            for i in range(60)
        }
    }
    wide = plot_block_bars(flux, tmp_path / "flux.png", metric="l2")
    narrow = plot_block_bars(_blocks(), tmp_path / "unet.png")
    assert _png_size(wide)[0] > _png_size(narrow)[0]
    svg = plot_block_bars(flux, tmp_path / "flux.svg", metric="l2").read_text()
    assert "S59" in svg and "L2" in svg
    with pytest.raises(ValueError):
        plot_block_bars(flux, tmp_path / "bad.png", metric="cosine")


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_all_identical(tmp_path: Path, suffix: str) -> None:
    hist = plot_layer_histograms(_tensors(identical=True), tmp_path / f"h{suffix}")
    bars = plot_block_bars(_blocks(changed=False), tmp_path / f"b{suffix}", metric="l2")
    for p in (hist, bars):
        assert p.stat().st_size > 1000
    if suffix == ".svg":
        assert "all identical" in hist.read_text()
        assert "nothing changed: UNet (26 blocks), CLIP-L" in bars.read_text()  # folded into one line


def test_empty_inputs(tmp_path: Path) -> None:
    assert plot_layer_histograms([], tmp_path / "h.png").stat().st_size > 0
    assert plot_block_bars({}, tmp_path / "b.png").stat().st_size > 0
    assert plot_block_bars({"UNet": {}}, tmp_path / "b2.svg").stat().st_size > 0


def test_no_denoiser_uses_all(tmp_path: Path) -> None:
    rows = [
        {
            "key": f"te.{i}",
            "component": "clip_l",
            "layer_type": "attn" if i % 2 else "embedding",
            "l2": 0.1 * i,
            "rms": 0.01,
            "identical": i == 0,
            "numel": 10,
        }
        for i in range(10)
    ]
    svg = plot_layer_histograms(rows, tmp_path / "te.svg").read_text()
    assert "embedding" in svg and "attn" in svg
