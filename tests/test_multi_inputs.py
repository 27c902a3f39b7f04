"""Several inputs at once: bad files skipped with one line each, compact notes, one read for --scan --hash,
and matrix --resume after an interrupted run."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch

from sdlens.analysis import matrix as M
from sdlens.analysis.inspect import inspect
from sdlens.analysis.scan import scan_and_hash, scan_tensors
from sdlens.io.hashing import hash_file
from sdlens.io.open import open_checkpoint
from sdlens.testing.writers import save_safetensors

# ----------------------------------------------------------------------------------------- one pass


def _mixed(tmp_path):
    """A file with several dtypes, planted NaN / Inf / zeros, and tensors that straddle any block size."""
    g = torch.Generator().manual_seed(3)
    t = {
        "a16": torch.randn(1001, generator=g).half(),
        "b32": torch.randn(777, 3, generator=g),
        "cbf": torch.randn(513, generator=g).bfloat16(),
        "d64": torch.randn(97, generator=g).double(),
        "zero": torch.zeros(300, dtype=torch.float16),
        "ints": torch.arange(11, dtype=torch.int64),
    }
    t["a16"][[5, 900]] = float("nan")
    t["b32"].view(-1)[2000] = float("-inf")
    t["cbf"][512] = float("inf")
    return save_safetensors(t, tmp_path / "mixed.safetensors")


class _Counting(io.FileIO):
    read_total = 0

    def readinto(self, b):
        n = super().readinto(b)
        _Counting.read_total += n or 0
        return n


def test_scan_and_hash_read_each_byte_once(tmp_path, monkeypatch):
    path = _mixed(tmp_path)
    size = path.stat().st_size
    with open_checkpoint(path) as ck:
        separate_scan = scan_tensors(ck)
    separate_hash = hash_file(path)

    import sdlens.analysis.inspect as I
    import sdlens.io.onepass as P

    def refuse(*a, **k):
        raise AssertionError("a second pass over the file")

    monkeypatch.setattr(I, "scan_tensors", refuse)
    monkeypatch.setattr(I, "hash_file", refuse)
    monkeypatch.setattr(P, "open_regular", lambda p, buffering=-1: _Counting(p, "rb"))
    _Counting.read_total = 0
    seen: list[int] = []
    r = inspect(path, hashes=True, scan=True, progress=seen.append)
    assert _Counting.read_total == size  # every byte read, none twice
    assert sum(seen) == size  # the progress total is the file size
    assert r.hashes == [separate_hash]
    assert r.hashes[0].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert r.scan == separate_scan
    assert r.scan.nan == {"a16": 2} and r.scan.inf == {"b32": 1, "cbf": 1} and r.scan.all_zero == ["zero"]


@pytest.mark.parametrize("block", [8, 4099, 1 << 20])
def test_scan_and_hash_at_any_block_size(tmp_path, block):
    path = _mixed(tmp_path)
    with open_checkpoint(path) as ck:
        expected = scan_tensors(ck)
        got, hashes = scan_and_hash(ck, block=block)
    assert got == expected and hashes == [hash_file(path)]


def test_scan_and_hash_of_a_pickle_with_a_strided_view(tmp_path):
    base = torch.randn(40, 30, generator=torch.Generator().manual_seed(0))
    base[3, 4] = float("nan")
    path = tmp_path / "views.ckpt"
    torch.save({"state_dict": {"w": base, "wt": base.t(), "z": torch.zeros(5)}}, path)
    seen: list[int] = []
    with open_checkpoint(path) as ck:
        expected = scan_tensors(ck)
        got, hashes = scan_and_hash(ck, progress=seen.append)
        strided = [k for k in ck.tensors if not ck.is_plain(k)]
    assert strided == ["wt"]
    assert got == expected and got.nan == {"w": 1, "wt": 1} and got.all_zero == ["z"]
    assert hashes == [hash_file(path)]
    assert sum(seen) == path.stat().st_size + base.numel() * 4  # the file once, plus the view read on its own


# ----------------------------------------------------------------------------------------- matrix inputs

UNET_KEYS = {  # a few SD1-layout denoiser keys (tiny shapes): enough for matrix's alignment
    "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
    "model.diffusion_model.input_blocks.1.0.in_layers.2.weight": (8, 8, 3, 3),
    "model.diffusion_model.middle_block.0.in_layers.2.weight": (8, 8, 3, 3),
    "model.diffusion_model.output_blocks.0.0.in_layers.2.weight": (8, 8, 3, 3),
    "model.diffusion_model.out.2.weight": (4, 8, 3, 3),
}
CLIP_KEY = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"


def _tiny(path, seed: int, *, clip: bool = False):
    g = torch.Generator().manual_seed(seed)
    t = {k: torch.randn(s, generator=g).half() for k, s in UNET_KEYS.items()}
    if clip:
        t[CLIP_KEY] = torch.randn(16, 8, generator=g).half()
    return save_safetensors(t, path)


def _brute_l2(paths) -> np.ndarray:
    """The denoiser's L2 distances in float64 from the whole tensors (tiny models: fine to hold)."""
    flat = []
    for p in paths:
        with open_checkpoint(p) as ck:
            flat.append(
                np.concatenate([ck.read_numpy(k).astype(np.float64).ravel() for k in sorted(UNET_KEYS)])
            )
    return np.array([[np.linalg.norm(a - b) for b in flat] for a in flat])


def _invoke(*args: str):
    from typer.testing import CliRunner

    from sdlens.cli import app

    return CliRunner().invoke(app, list(args))


def test_matrix_folder_with_bad_files_skips_them(tmp_path):
    folder = tmp_path / "models"
    good = [_tiny(folder / f"m{i}.safetensors", seed=i) for i in range(4)]
    (folder / "trunc.safetensors").write_bytes(good[0].read_bytes()[:-100])
    (folder / "garbage.safetensors").write_bytes(np.random.default_rng(0).bytes(3000))
    out = tmp_path / "out"
    r = _invoke("matrix", str(folder), "--out", str(out), "--no-plots")
    assert r.exit_code == 2, r.output  # results produced, some inputs could not be read
    errors = [ln for ln in r.output.splitlines() if "error:" in ln]
    assert len(errors) == 2 and "Traceback" not in r.output
    assert any("trunc.safetensors" in e and "truncated" in e for e in errors)
    assert any("garbage.safetensors" in e for e in errors)
    assert "not read (see the errors): 2 inputs (" in r.output
    import csv

    rows = list(csv.reader((out / "matrix-denoiser.csv").open()))
    assert rows[0] == ["model", *(p.name for p in good)]
    got = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    assert np.allclose(got, _brute_l2(good), rtol=1e-6)
    res = M.matrix([*good, folder / "trunc.safetensors"])  # the API: the same, with the skipped input listed
    assert [s["path"] for s in res.skipped] == [str(folder / "trunc.safetensors")] and len(res.models) == 4


def test_matrix_needs_two_readable_models(tmp_path):
    a = _tiny(tmp_path / "a.safetensors", seed=0)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(M.SdlensError, match="two readable models, 1 of 2 could be read .*bad.safetensors"):
        M.matrix([a, tmp_path / "bad.safetensors"])


def test_notes_are_one_line_per_reason_with_a_few_names(tmp_path):
    # 2 models have a CLIP-L, 45 do not: one note naming 3 of the 45
    paths = [_tiny(tmp_path / f"m{i:02d}.safetensors", seed=i, clip=i < 2) for i in range(47)]
    r = M.matrix(paths)
    assert (
        r.notes["clip_l"]
        == "missing: 45 models (m02.safetensors, m03.safetensors, m04.safetensors, +42 more)"
    )
    assert r.note_lines() == ["clip_l: " + r.notes["clip_l"]]
    assert "denoiser" not in r.notes and np.isnan(r.matrix("clip_l")[0, 2])


def _sd1_like(path, seed: int, ch: int = 4):
    """Just enough SD1 UNet keys (tiny) for the family, and so the merge blocks, to be known."""
    g = torch.Generator().manual_seed(seed)
    p = "model.diffusion_model."
    shapes = {
        p + "input_blocks.0.0.weight": (ch, 4, 3, 3),
        p + "input_blocks.1.1.proj_in.weight": (ch, ch, 1, 1),
        p + "middle_block.0.in_layers.2.weight": (ch, ch, 3, 3),
        p + "out.2.weight": (4, ch, 3, 3),
    }
    for i in range(12):
        shapes[p + f"output_blocks.{i}.0.in_layers.2.weight"] = (ch, ch, 3, 3)
        if i:
            shapes[p + f"input_blocks.{i}.0.in_layers.2.weight"] = (ch, ch, 3, 3)
    return save_safetensors({k: torch.randn(s, generator=g).half() for k, s in shapes.items()}, path)


def test_block_notes_are_not_repeated_per_block(tmp_path):
    paths = [
        _sd1_like(tmp_path / "a.safetensors", 0),
        _sd1_like(tmp_path / "b.safetensors", 1),
        _sd1_like(tmp_path / "x.safetensors", 2, ch=6),
    ]  # other shapes everywhere
    r = M.matrix(paths, by="block")
    assert [m.family for m in r.models] == ["sd1"] * 3 and len(r.notes) == 25
    assert r.note_lines() == ["25 blocks (IN00, IN01, IN02, +22 more): missing: 1 model (x.safetensors)"]
    assert np.isnan(r.matrix("block:OUT11")[2, :2]).all() and r.matrix("block:OUT11")[0, 1] > 0


def test_note_helper():
    from sdlens.analysis.notes import listing, note

    assert listing(["a"]) == "1 model (a)"
    assert listing(list("abcd"), "block") == "4 blocks (a, b, c, +1 more)"
    assert note("why", list("abc"), "file") == "why: 3 files (a, b, c)"


# ----------------------------------------------------------------------------------------- matrix --resume


def _family(tmp_path, n: int = 4):
    return [_tiny(tmp_path / f"r{i}.safetensors", seed=10 + i, clip=True) for i in range(n)]


def _saved_done_bytes(state, pl) -> int:
    import json

    with np.load(state) as z:
        done = set(json.loads(str(z["__meta__"]))["done"])
    return sum(t.nbytes for t in pl.tasks if t.id in done)


def test_resume_after_an_interrupted_run_reuses_the_saved_work(tmp_path):
    paths = _family(tmp_path)
    pl = M.plan(paths, task_bytes=1)  # one key per task: 6 tasks
    assert len(pl.tasks) == 6
    full = M.matrix(paths, task_bytes=1)
    state = tmp_path / "state.npz"
    seen: list[int] = []

    def killed_half_way(n: int) -> None:
        seen.append(n)
        if sum(seen) > pl.nbytes / 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        M.matrix(paths, state=state, task_bytes=1, progress=killed_half_way)
    saved = _saved_done_bytes(state, pl)
    assert 0 < saved < pl.nbytes
    told: list[tuple[int, int]] = []
    work: list[int] = []
    resumed = M.matrix(
        paths,
        state=state,
        resume=True,
        task_bytes=1,
        progress=work.append,
        on_resume=lambda done, total: told.append((done, total)),
    )
    assert told == [(saved, pl.nbytes)] and resumed.resumed_bytes == saved
    assert work[0] == saved and sum(work[1:]) == pl.nbytes - saved  # only the rest was read again
    for g in full.matrices:
        assert np.array_equal(resumed.matrix(g), full.matrix(g), equal_nan=True), g
    assert resumed.identity == full.identity and resumed.notes == full.notes


def test_cli_resume_says_what_it_reused(tmp_path, monkeypatch):
    import csv

    paths = _family(tmp_path)
    monkeypatch.setattr(M, "_TASK_BYTES", 1)
    real = M.run_task
    calls: list[int] = []

    def run_task(*a, **k):
        task = a[1]
        calls.append(task.id)
        if task.id == 3 and len(calls) == 4:  # the first run is killed during its fourth task
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(M, "run_task", run_task)
    out = tmp_path / "out"
    args = ["matrix", *map(str, paths), "--out", str(out), "--no-plots"]
    r = _invoke(*args)
    assert r.exit_code == 130 and "run again with --resume" in r.output
    pl = M.plan(paths)
    saved = _saved_done_bytes(out / ".matrix-partial.npz", pl)
    assert saved == sum(t.nbytes for t in pl.tasks[:3])
    r = _invoke(*args, "--resume")
    assert r.exit_code == 0, r.output
    from sdlens.commands.matrix import resumed_line

    assert resumed_line(saved, pl.nbytes, out) in r.output
    assert calls[4:] == [3, 4, 5]  # the resumed run did only the rest
    got = [row for row in csv.reader((out / "matrix-denoiser.csv").open())]
    ref = tmp_path / "ref"
    assert _invoke(*args[:-3], "--out", str(ref), "--no-plots").exit_code == 0
    assert got == [row for row in csv.reader((ref / "matrix-denoiser.csv").open())]


def test_resumed_line():
    from pathlib import Path

    from sdlens.commands.matrix import resumed_line

    assert resumed_line(9_300_000_000, 23_000_000_000, Path("s")) == "resumed: 9.3 of 23.0 GB already done"
    assert resumed_line(0, 10, Path("s")).startswith("nothing to resume")


def test_embed_leaves_out_an_unreadable_model(tmp_path):
    from sdlens.analysis.embed import embed
    from sdlens.io.prompts import Prompt
    from sdlens.testing.tokenizer import DEMO_PROMPTS, write_clip_tokenizer
    from sdlens.testing.zoo_unet import build_single_file

    good = save_safetensors(build_single_file("sd1", seed=0), tmp_path / "sd1.safetensors")
    bad = tmp_path / "empty.safetensors"
    bad.write_bytes(b"")
    prompts = [Prompt(*p) for p in DEMO_PROMPTS[:3]]
    r = embed([good, bad], prompts, tokenizer_dirs=[write_clip_tokenizer(tmp_path / "tok")])
    assert [m.path for m in r.models] == [str(good)] and len(r.embeddings) == 1
    assert r.skipped == [{"path": str(bad), "error": "empty file (0 bytes)"}]
    with pytest.raises(M.SdlensError, match="empty file"):  # the reference itself must be readable
        embed([bad, good], prompts, tokenizer_dirs=[tmp_path / "tok"])


def test_diff_names_a_few_of_the_keys_found_on_one_side(tmp_path):
    import re

    from sdlens.analysis.diff import diff

    b = _tiny(tmp_path / "b.safetensors", seed=0)
    with open_checkpoint(b) as ck:
        t = {k: ck.read(k) for k in ck.tensors}
    for i in range(2, 6):  # four more resnet convs in A only
        t[f"model.diffusion_model.input_blocks.{i}.0.in_layers.2.weight"] = torch.ones(8, 8, 3, 3).half()
    a = save_safetensors(t, tmp_path / "a.safetensors")
    r = diff(a, b)
    line = next(v for v in r.verdict if "only in A" in v)
    assert re.fullmatch(r".+: only in A: 4 tensors \([^,]+, [^,]+, [^,]+, \+1 more\)", line), line


KILL_AT_TASK = """
import os, signal, sys
import sdlens.analysis.matrix as M
real = M.run_task
def run_task(paths, task, **k):
    if task.id == 3:  # killed hard, half way: no handler, no clean-up
        os.kill(os.getpid(), signal.SIGKILL)
    return real(paths, task, **k)
M.run_task = run_task
M.matrix(sys.argv[2:], state=sys.argv[1], task_bytes=1)
"""


def test_resume_after_a_killed_process(tmp_path):
    import signal
    import subprocess
    import sys

    paths = _family(tmp_path)
    state = tmp_path / "state.npz"
    p = subprocess.run([sys.executable, "-c", KILL_AT_TASK, str(state), *map(str, paths)], timeout=120)
    assert p.returncode == -signal.SIGKILL
    pl = M.plan(paths, task_bytes=1)
    assert _saved_done_bytes(state, pl) == sum(t.nbytes for t in pl.tasks[:3])
    told = []
    r = M.matrix(paths, state=state, resume=True, task_bytes=1, on_resume=lambda d, t: told.append(d))
    full = M.matrix(paths, task_bytes=1)
    assert told == [r.resumed_bytes] and r.resumed_bytes == sum(t.nbytes for t in pl.tasks[:3])
    assert all(np.array_equal(r.matrix(g), full.matrix(g), equal_nan=True) for g in full.matrices)
