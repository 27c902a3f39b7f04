"""Quantised files through the other commands and the awkward layouts (issue 18, review cases): shards whose
companions sit in another shard, identical and dequantised copies, a key claimed by two schemes, delta /
lineage / recipe / matrix / convert on quantised copies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")

from sdlens.analysis.diff import diff  # noqa: E402
from sdlens.errors import CheckpointError  # noqa: E402
from sdlens.io.open import open_checkpoint  # noqa: E402
from sdlens.io.quant import quant_of  # noqa: E402
from sdlens.testing.writers import save_safetensors  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from sdlens.testing.zoo_fp8 import write_scaled_fp8
    from sdlens.testing.zoo_gguf import quant_denoiser, write_gguf

    d = tmp_path_factory.mktemp("qcmd")
    sd = quant_denoiser("flux_dev", dtype=torch.bfloat16)
    out = {"sd": sd, "dir": d}
    out["src"] = save_safetensors(sd, d / "flux1-dev.safetensors")
    write_gguf(d / "flux1-dev-Q8_0.gguf", sd, arch="flux", qtype="Q8_0")
    out["q8"] = d / "flux1-dev-Q8_0.gguf"
    write_scaled_fp8(d / "flux1-dev-fp8.safetensors", sd)
    out["fp8"] = d / "flux1-dev-fp8.safetensors"
    return out


def _shard(path: Path, folder: Path, split: int) -> Path:
    """The file as two safetensors shards and an index, the first ``split`` keys (file order) in shard 1:
    a weight and its companions may land in different shards."""
    from safetensors.torch import load_file

    folder.mkdir()
    sd = load_file(path)
    keys = list(sd)
    shards = {
        "model-00001-of-00002.safetensors": keys[:split],
        "model-00002-of-00002.safetensors": keys[split:],
    }
    weight_map = {}
    for name, ks in shards.items():
        save_safetensors({k: sd[k] for k in ks}, folder / name)
        weight_map.update({k: name for k in ks})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return folder / "model.safetensors.index.json"


def test_a_sharded_scaled_fp8_file_is_recognised_across_its_shards(files, tmp_path):
    with open_checkpoint(files["fp8"]) as one:
        whole = {k: one.read(k) for k in one.tensors}
        order = list(one.tensors)
    from safetensors import safe_open

    with safe_open(files["fp8"], "pt") as f:
        stored = list(f.keys())
    # a split that puts a scale_weight in shard 1 and its weight (stored after it) in shard 2
    split = next(i for i, k in enumerate(stored) if k.endswith(".scale_weight")) + 1
    assert stored[split - 1].removesuffix("scale_weight") + "weight" in stored[split:]
    index = _shard(files["fp8"], tmp_path / "shards", split)
    with open_checkpoint(index) as ck:
        assert set(ck.tensors) == set(order)
        n = sum(quant_of(t) is not None for t in ck.tensors.values())
        assert n == sum(k.endswith(".scale_weight") for k in stored)
        for k, v in whole.items():
            assert torch.equal(ck.read(k), v), k


def test_identical_and_exactly_dequantised_copies(files, tmp_path, cli):
    r = diff(files["q8"], files["q8"])
    assert r.verdict == ["identical: every tensor bit-identical"]
    out = tmp_path / "deq.safetensors"
    res = cli("convert", str(files["q8"]), str(out))
    assert res.returncode == 0 and " dequantised" in res.stdout, res.stdout
    r = diff(files["q8"], out)
    assert r.verdict[0] == "same model, dequantised: B holds A's Q8_0 values exactly"


def test_a_key_claimed_by_two_schemes_is_refused(tmp_path):
    from sdlens.io.bnb4 import quantise_4bit_numpy, state_json

    w = torch.randn(8, 64)
    s = w.abs().max() / 448
    parts = quantise_4bit_numpy(w.numpy(), "nf4", 64, False)
    sd = {
        "a.weight": (w / s).to(torch.float8_e4m3fn),
        "a.scale_weight": s.reshape(()),
        "a.weight.absmax": torch.from_numpy(parts["absmax"]),
        "a.weight.quant_map": torch.from_numpy(parts["quant_map"]),
        "a.weight.quant_state.bitsandbytes__nf4": torch.from_numpy(parts["quant_state"]),
    }
    save_safetensors(sd, tmp_path / "both.safetensors")
    with pytest.raises(CheckpointError, match="claimed by two quantisation schemes"):
        open_checkpoint(tmp_path / "both.safetensors")
    assert state_json  # the module's writer of quant states is what the parts hold


def test_undecodable_ggml_types_are_refused_when_opened(tmp_path):
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(tmp_path / "q81.gguf"), "flux")
    w.add_tensor_info("x.weight", (4, 40), np.dtype(np.uint8), 160, raw_dtype=gguf.GGMLQuantizationType.Q8_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    p = tmp_path / "q81.gguf"
    with open(p, "ab") as f:
        f.write(b"\0" * (-(-p.stat().st_size // 32) * 32 - p.stat().st_size + 160))
    with pytest.raises(CheckpointError, match="Q8_1, a type sdlens cannot dequantise"):
        open_checkpoint(p)


def test_delta_lineage_recipe_and_matrix_on_quantised_copies(files, tmp_path):
    import shutil

    from sdlens.analysis.delta import delta
    from sdlens.analysis.lineage import lineage
    from sdlens.analysis.matrix import matrix
    from sdlens.analysis.recipe import recipe

    r = delta(files["q8"], files["src"])
    assert r.verdict[0] == "the same model: differs only by Q8_0 rounding", r.verdict
    twin = tmp_path / "twin-Q8_0.gguf"
    shutil.copyfile(files["q8"], twin)
    m = matrix([files["src"], files["q8"], twin])
    assert [sorted(g) for g in m.identity["denoiser"]] == [sorted([files["q8"].name, twin.name])]
    rec = recipe(files["q8"], [files["src"], files["fp8"]])
    assert rec.verdict == "explained"  # within the Q8_0 rounding floor, not "not a merge"
    lin = lineage([files["src"], files["q8"], files["fp8"]])
    dups = {(e.source, e.target) for e in lin.edges if e.near_duplicate}
    assert dups == {(files["src"].name, files["q8"].name), (files["src"].name, files["fp8"].name)}
