"""Outputs never overwrite inputs and a failed run leaves no folder behind (issue 13, point 7): every output
option is checked against every input (device + inode: through symlinks and hard links too) and refused with
one line, exit status 2, before any work."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sdlens.io.outputs import (
    OutFile,
    OutFolder,
    OutputConflictError,
    check_outputs,
    remove_created_on_failure,
)
from tests.test_terminal_safety import run, write_st


@pytest.fixture
def pair(tmp_path):
    x = np.arange(8).reshape(2, 4)
    a = write_st(tmp_path / "a.safetensors", {"model.diffusion_model.x.weight": x})
    b = write_st(tmp_path / "b.safetensors", {"model.diffusion_model.x.weight": x + 1})
    return a, b


def refused(monkeypatch, capsys, *args) -> str:
    code, out, err = run(monkeypatch, capsys, *args)
    assert code == 2
    assert out == ""  # refused before any work: nothing rendered
    (line,) = err.strip().splitlines()
    assert "refusing to write it" in line and "Traceback" not in err
    return line


def test_diff_json_onto_an_input_is_refused(monkeypatch, capsys, pair):
    a, b = pair
    before = a.read_bytes()
    line = refused(monkeypatch, capsys, "diff", a, b, "--json", a)
    assert line == f"sdlens: error: {a}: --json is the input {a}; refusing to write it (choose another path)"
    assert a.read_bytes() == before
    refused(monkeypatch, capsys, "diff", a, b, "--json", b)
    assert b.read_bytes() != before  # b untouched too (it differs from a)


def test_links_to_an_input_are_refused(monkeypatch, capsys, pair, tmp_path):
    a, b = pair
    before = a.read_bytes()
    hard, soft = tmp_path / "hard.json", tmp_path / "soft.json"
    os.link(a, hard)
    soft.symlink_to(a)
    assert "is the input" in refused(monkeypatch, capsys, "diff", a, b, "--json", hard)
    assert "is the input" in refused(monkeypatch, capsys, "diff", a, b, "--json", soft)
    assert "--plot" in refused(monkeypatch, capsys, "diff", a, b, "--plot", tmp_path / "b.safetensors")
    assert a.read_bytes() == before and hard.read_bytes() == before and soft.is_symlink()


def test_diff_json_elsewhere_still_written(monkeypatch, capsys, pair, tmp_path):
    a, b = pair
    report = tmp_path / "report.json"
    code, out, err = run(monkeypatch, capsys, "diff", a, b, "--json", report)
    assert code == 0
    assert json.loads(report.read_text())["a"] == str(a)


def test_convert_onto_its_input_is_refused(monkeypatch, capsys, pair, tmp_path):
    a, _ = pair
    before = a.read_bytes()
    refused(monkeypatch, capsys, "convert", a, a, "--overwrite")
    link = tmp_path / "link.safetensors"
    os.link(a, link)
    refused(monkeypatch, capsys, "convert", a, link, "--overwrite")
    assert a.read_bytes() == before


def test_failed_convert_removes_the_folder_it_created(monkeypatch, capsys, tmp_path):
    big = write_st(tmp_path / "big.safetensors", {"model.diffusion_model.x.weight": np.full((2, 4), 1e6)})
    # OUT's folder must exist (exit 2 otherwise), so a failed single-file convert has only its own temp file
    # to clean up: nothing may be left
    code, out, err = run(monkeypatch, capsys, "convert", big, tmp_path / "out.safetensors", "--dtype", "fp16")
    assert code == 2 and "would overflow" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors"]


def test_failed_matrix_removes_the_folder_it_created(monkeypatch, capsys, pair, tmp_path):
    a, _ = pair
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10" + b"\x00" * 7 + b'{"a":1}')
    code, out, err = run(monkeypatch, capsys, "matrix", a, broken, "--out", tmp_path / "m", "--no-plots")
    assert code == 2 and "broken.safetensors" in err
    assert not (tmp_path / "m").exists()  # created for the run, removed when it failed


def test_matrix_out_folder_conflicts(monkeypatch, capsys, pair, tmp_path):
    a, b = pair
    assert "is the input a.safetensors" in refused(monkeypatch, capsys, "matrix", a, b, "--out", a).replace(
        str(tmp_path) + "/", ""
    )
    models = tmp_path / "models"
    models.mkdir()
    os.replace(a, models / "a.safetensors")
    os.replace(b, models / "b.safetensors")
    assert "is the input folder" in refused(monkeypatch, capsys, "matrix", models, "--out", models)
    # a folder above the models is fine: matrix writes only its own file names, none of them an input
    code, _, err = run(monkeypatch, capsys, "matrix", models, "--out", tmp_path, "--no-plots")
    assert code == 0, err
    assert sorted(p.name for p in models.iterdir()) == ["a.safetensors", "b.safetensors"]
    assert any(p.suffix == ".csv" for p in tmp_path.iterdir())


def test_embed_out_holding_the_prompts_is_refused(monkeypatch, capsys, pair, tmp_path):
    prompts = tmp_path / "embed.json"  # the name embed writes its results under
    prompts.write_text('["a photo of a cat"]')
    line = refused(monkeypatch, capsys, "embed", pair[0], "--prompts", prompts, "--out", tmp_path)
    assert "holds embed.json, which is the input" in line
    assert prompts.read_text() == '["a photo of a cat"]'


def test_check_outputs_files_inside_inputs(tmp_path):
    folder = tmp_path / "diffusers"
    (folder / "unet").mkdir(parents=True)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"x")
    outside = tmp_path / "elsewhere.bin"
    os.link(weights, outside)
    with pytest.raises(OutputConflictError, match="is a file of the input"):
        check_outputs([folder], [OutFile("--json", weights)])
    with pytest.raises(OutputConflictError, match="is a file of the input"):
        check_outputs([folder], [OutFile("--json", outside)])  # a hard link out of the folder
    check_outputs([folder], [OutFile("--json", folder / "report.json")])  # a new file beside the inputs: fine
    shard = tmp_path / "s" / "model-00001-of-00002.safetensors"
    shard.parent.mkdir()
    shard.write_bytes(b"x")
    index = shard.parent / "model.safetensors.index.json"
    index.write_text("{}")
    with pytest.raises(OutputConflictError, match="is a file of the input"):
        check_outputs([index], [OutFile("--json", shard)])
    with pytest.raises(OutputConflictError, match="is a folder, not a file"):
        check_outputs([], [OutFile("--json", tmp_path)])
    with pytest.raises(OutputConflictError, match="contains the input"):
        check_outputs([outside], [OutFolder("OUT", tmp_path, whole=True)])  # a folder replaced as a whole
    check_outputs([outside], [OutFolder("--out", tmp_path, ("*.csv",))])  # writes no name an input has


def test_remove_created_on_failure(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RuntimeError), remove_created_on_failure([tmp_path / "new" / "deep", existing]):
        (tmp_path / "new" / "deep").mkdir(parents=True)
        (tmp_path / "new" / "deep" / "partial.csv").write_text("x")
        raise RuntimeError("failed")
    assert not (tmp_path / "new").exists() and existing.is_dir()
    with pytest.raises(KeyboardInterrupt), remove_created_on_failure([tmp_path / "kept"], keep=lambda: True):
        (tmp_path / "kept").mkdir()
        raise KeyboardInterrupt
    assert (tmp_path / "kept").is_dir()  # e.g. partial results to resume from
    with remove_created_on_failure(files=[tmp_path / "ok" / "report.json"]):
        (tmp_path / "ok").mkdir()
    assert (tmp_path / "ok").is_dir()  # success keeps everything
