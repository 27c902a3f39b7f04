"""The CLI fits a terminal and a script: 80-column output (lines fit, names and hashes whole), exit codes,
errors naming one option, output paths checked, --version, plurals, help without Python type placeholders."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import typer
from rich.console import Console
from safetensors.numpy import save_file
from typer.testing import CliRunner

import sdlens
import sdlens.cli as cli_mod
from sdlens.words import plural

LONG_KEYS = [
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn1.to_out.0.bias",
    "first_stage_model.decoder.up.3.block.2.conv2.weight",
]
NAME_A = "realisticVision_v60B1_hyperVAE_pruned_fp16.safetensors"
NAME_B = "realisticVision_v60B1_inpainting_merge_fp16.safetensors"


def _write_pair(folder: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    a = {k: rng.standard_normal((8, 8)).astype(np.float16) for k in LONG_KEYS}
    b = {k: v.copy() for k, v in a.items()}
    b[LONG_KEYS[0]][0, 0] += 1  # two of three tensors changed
    b[LONG_KEYS[1]][1, :] += 0.5
    save_file(a, str(folder / NAME_A))
    save_file(b, str(folder / NAME_B))
    return folder / NAME_A, folder / NAME_B


def run(*args: str) -> SimpleNamespace:
    """The CLI in-process, as piped to a file (80 columns, no colour): exit code, stdout, stderr."""
    runner = CliRunner()
    saved = cli_mod.out, cli_mod.err
    cli_mod.out, cli_mod.err = Console(width=80, no_color=True), Console(width=80, stderr=True, no_color=True)
    try:
        r = runner.invoke(cli_mod.app, list(args), env={"COLUMNS": "80"})
    finally:
        cli_mod.out, cli_mod.err = saved
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return SimpleNamespace(code=r.exit_code, out=r.stdout, err=r.stderr)


def _fits_80(text: str) -> None:
    long = [ln for ln in text.splitlines() if len(ln) > 80]
    assert not long, long


def _error_line(r: SimpleNamespace) -> str:
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sdlens: error:"), r.err
    return lines[0]


# ------------------------------------------------------------------------------------------ help, version


def _commands() -> list[str]:
    return sorted(typer.main.get_command(cli_mod.app).commands)


def test_help_has_words_not_python_types():
    usage = {
        "inspect": "PATH...",
        "diff": "A B",
        "matrix": "PATH...",
        "embed": "MODEL...",
        "convert": "IN OUT",
        "arch": "[MODEL]",
    }
    for cmd in [None, *_commands()]:
        r = run(*([cmd] if cmd else []), "--help")
        assert r.code == 0, (cmd, r.err)
        for bad in ("<bool>", "<list", "<path>", "<str>", "<int>", "{"):
            assert bad not in r.out, (cmd, bad, r.out)
        if cmd in usage:
            assert re.search(rf"{cmd} \[OPTIONS\] {re.escape(usage[cmd])}\s*$", r.out, re.M), (cmd, r.out)
    assert "l2|l1|l0|cos|all" in run("diff", "--help").out  # the choices, where types were


def test_version_option_and_command():
    for args in (["--version"], ["version"]):
        r = run(*args)
        assert r.code == 0 and r.out.strip() == sdlens.__version__


def test_plural():
    assert [plural(n, "tensor") for n in (0, 1, 2)] == ["0 tensors", "1 tensor", "2 tensors"]
    assert plural(1, "entry", "entries") == "1 entry" and plural(3, "entry", "entries") == "3 entries"


# ------------------------------------------------------------------------------------ exit codes, errors


def test_usage_errors_exit_2_and_name_only_the_wrong_option(tmp_path):
    a, b = _write_pair(tmp_path)
    assert run("inspect", "--no-such-option", str(a)).code == 2  # typer's own usage error
    r = run("diff", str(a), str(b), "--by", "nope")
    line = _error_line(r)
    assert r.code == 2 and "--by" in line and "--metric" not in line and "'nope'" in line
    r = run("diff", str(a), str(b), "--metric", "l3")
    line = _error_line(r)
    assert r.code == 2 and "--metric" in line and "--by" not in line
    r = run("diff", str(a), str(b), "--json", str(tmp_path / "missing" / "d.json"))
    assert r.code == 2 and "--json" in _error_line(r) and "does not exist" in _error_line(r)
    assert not (tmp_path / "missing").exists()
    r = run("matrix", str(a), str(b), "--out", str(tmp_path / "missing" / "deeper"))
    assert r.code == 2 and "--out" in _error_line(r)
    assert not (tmp_path / "missing").exists()


def test_convert_output_name_and_folder_are_checked(tmp_path):
    a, _ = _write_pair(tmp_path)
    r = run("convert", str(a), str(tmp_path / "out.ckpt"))
    assert r.code == 2 and ".safetensors" in _error_line(r)
    assert not (tmp_path / "out.ckpt").exists()  # never safetensors bytes under .ckpt
    r = run("convert", str(a), str(tmp_path / "nowhere" / "out.safetensors"), "--dry-run")
    assert r.code == 2 and "nowhere" in _error_line(r) and "does not exist" in _error_line(r)
    assert not (tmp_path / "nowhere").exists()
    r = run("convert", str(a), str(tmp_path / "folder.safetensors"), "--layout", "diffusers", "--dry-run")
    assert r.code == 2 and "folder" in _error_line(r)


def test_inspect_exit_codes_missing_bad_problems_clean(tmp_path):
    a, _ = _write_pair(tmp_path)
    assert run("inspect", "--brief", str(a)).code == 0
    assert run("inspect", "--scan", "--brief", str(a)).code == 0
    r = run("inspect", "--brief", str(tmp_path / "typo.safetensors"))
    assert r.code == 2 and "typo.safetensors" in _error_line(r)
    (tmp_path / "trunc.safetensors").write_bytes(a.read_bytes()[:200])
    r = run("inspect", "--brief", str(tmp_path / "trunc.safetensors"))
    assert r.code == 1 and "trunc.safetensors" in _error_line(r)
    bad = {k: np.ones((4, 4), np.float16) for k in LONG_KEYS}
    bad[LONG_KEYS[2]][1, 1] = np.nan
    save_file(bad, str(tmp_path / "nan.safetensors"))
    assert run("inspect", "--brief", str(tmp_path / "nan.safetensors")).code == 0  # header only: not checked
    r = run("inspect", "--scan", str(tmp_path / "nan.safetensors"))
    assert r.code == 1 and "NaN values in 1 tensor " in r.out  # asked to check, found a problem
    # a missing input outranks a finding, and the other files are still reported
    r = run(
        "inspect", "--scan", "--brief", str(tmp_path / "nan.safetensors"), str(tmp_path / "typo.safetensors")
    )
    assert r.code == 2 and "NaN" in r.out


def test_embed_refuses_duplicate_labels_in_one_line(tmp_path):
    a, _ = _write_pair(tmp_path)
    prompts = tmp_path / "prompts.json"
    prompts.write_text('{"cat": "a photo of a cat", "cat": "a photo of a dog"}')
    r = run("embed", str(a), "--prompts", str(prompts), "--out", str(tmp_path / "e"))
    assert r.code == 2 and "'cat'" in _error_line(r) and "unique" in _error_line(r)
    csv = tmp_path / "prompts.csv"
    csv.write_text("label,text\ncat,a photo of a cat\ncat,a photo of a dog\n")
    r = run("embed", str(a), "--prompts", str(csv), "--out", str(tmp_path / "e"))
    assert r.code == 2 and "'cat'" in _error_line(r)


def test_convert_prints_the_whole_hash_and_a_failed_verification_exits_1(tmp_path, monkeypatch):
    a, _ = _write_pair(tmp_path)
    out = tmp_path / "converted_realisticVision_v60B1_fp16.safetensors"
    r = run("convert", str(a), str(out))
    assert r.code == 0, r.err
    _fits_80(r.out)
    assert hashlib.sha256(a.read_bytes()).hexdigest() in r.out.split()  # whole, as one word
    assert "3 tensors" in r.out and "0 entries kept" in r.out

    import sdlens.convert.verify as verify

    def failing(plan, tmp, digests, progress=None):
        return SimpleNamespace(ok=False, problems=[f"{LONG_KEYS[0]}: bytes differ from the input"])

    monkeypatch.setattr(verify, "verify_written", failing)
    again = tmp_path / "again.safetensors"
    r = run("convert", str(a), str(again))
    assert r.code == 1 and "verification failed" in _error_line(r)
    assert not again.exists() and not list(tmp_path.glob(".again*"))


# ------------------------------------------------------------------------------------------ 80 columns


def test_inspect_at_80_columns_keeps_names_and_hashes_whole(tmp_path, monkeypatch):
    a, _ = _write_pair(tmp_path)
    monkeypatch.chdir(tmp_path)
    r = run("inspect", "--hash", NAME_A)
    assert r.code == 0, r.err
    _fits_80(r.out)
    digest = hashlib.sha256(a.read_bytes()).hexdigest()
    lines = r.out.splitlines()
    assert any(ln.split() == ["sha256", digest] for ln in lines)  # whole, outside any table
    assert any(ln.split() == ["AutoV2", digest[:10]] for ln in lines)
    assert sum(NAME_A in ln for ln in lines) >= 2  # the path under the summary, the hashes' heading


def test_diff_by_key_at_80_columns_lists_keys_whole(tmp_path, monkeypatch):
    _write_pair(tmp_path)
    monkeypatch.chdir(tmp_path)
    r = run("diff", NAME_A, NAME_B, "--by", "key")
    assert r.code == 0, r.err
    _fits_80(r.out)
    keys = [k.removeprefix("model.diffusion_model.") for k in LONG_KEYS[:2]]  # the two changed tensors
    for k in keys:
        assert any(k in ln for ln in r.out.splitlines()), (k, r.out)
    assert "2 tensors" in r.out and LONG_KEYS[2] not in r.out  # only the changed ones
    assert f"A {NAME_A}" in r.out and f"B {NAME_B}" in r.out


def _matrix_result(names: list[str]):
    from sdlens.analysis.matrix import MatrixResult

    n = len(names)
    m = [[0.0 if i == j else 0.125 * (i + j + 1) for j in range(n)] for i in range(n)]  # exact at 4 digits
    return MatrixResult(
        models=[SimpleNamespace(name=f"/models/{x}") for x in names],
        metric="l2",
        by="component",
        ref=0,
        matrices={"denoiser": m},
        notes={},
        identity={"vae": [[f"/models/{names[0]}", f"/models/{names[3]}"]]},
        keys={"denoiser": 1},
    )


def test_matrix_at_80_columns_numbers_models_and_splits_columns():
    from sdlens.render.matrix_view import render_matrix

    names = [f"checkpoint_{i:02d}_realisticVision_v60B1_hyperVAE_merge.safetensors" for i in range(14)]
    console = Console(width=80, record=True, no_color=True)
    render_matrix(_matrix_result(names), console)
    text = console.export_text()
    _fits_80(text)
    lines = text.splitlines()
    for i, name in enumerate(names, 1):
        assert f"{i:>4} {name}" in lines  # every file name whole, numbered
    assert "  vae: 1 4" in lines  # identity groups by number
    assert "1 tensor)" in text and "models 1–" in text  # split over several tables
    # read the tables back: every cell where its row and column numbers say, once
    seen: dict[tuple[int, int], float] = {}
    cols: list[int] = []
    for ln in lines:
        cells = [c.strip() for c in re.split("[┃│]", ln)[1:-1]]
        if ln.startswith("┃") and cells[0] == "#":
            cols = [int(c) for c in cells[1:]]
        elif ln.startswith("│"):
            for j, v in zip(cols, cells[1:], strict=True):
                assert (int(cells[0]), j) not in seen
                seen[int(cells[0]), j] = float(v)
    truth = _matrix_result(names).matrices["denoiser"]
    assert seen == {(i + 1, j + 1): truth[i][j] for i in range(14) for j in range(14)}
    wide = Console(width=250, record=True, no_color=True)
    render_matrix(_matrix_result(names), wide, max_cols=14)
    assert "models 1–" not in wide.export_text()  # one table when it fits


def _fake_report(name: str, steps: int, cfg: bool):
    comp = SimpleNamespace(matches=True, weight_bytes=lambda dt: 2_000_000_000)
    return SimpleNamespace(
        name=name,
        settings={"res": [1024, 1024], "steps": steps, "cfg": cfg},
        notebook={"params_torchinfo_b": 5.3, "est_total_gb_fp16": 13.8},
        mbw_blocks=19,
        mbw_expected=19,
        params=2_567_463_684,
        components=[comp, comp],
        denoiser=SimpleNamespace(total_flops=13.5e12, batch=2, attention_flops=1.6e12),
        per_image={"total": 686.8e12},
        memory={
            "dtype": "fp16",
            "activations": {"denoiser": {"fused": 0.33e9, "materialised": 1.52e9}},
            "vram_fused": {"all_on_gpu": 8.5e9, "text_encoders_offloaded": 6.9e9},
        },
    )


def test_arch_compare_goes_vertical_when_narrow():
    from sdlens.render.arch_view import render_compare

    names = [
        "SD 1.5",
        "SDXL base 1.0",
        "SD3 medium",
        "SD3.5 large",
        "HunyuanDiT v1.2",
        "AuraFlow v0.2",
        "FLUX.1-dev",
        "FLUX.1-schnell",
    ]
    reports = [_fake_report(n, 28 + i, i % 2 == 0) for i, n in enumerate(names)]
    narrow = Console(width=80, record=True, no_color=True)
    render_compare(reports, narrow)
    text = narrow.export_text()
    _fits_80(text)
    assert "…" not in text  # nothing cut
    assert text.count("params (exact)") >= 2 and "(continued)" in text  # one column per model, in chunks
    for n in names:
        assert all(w in text for w in n.split())
    assert text.count("2.567 B ✓") == len(names) and text.count("13.80 GB") == len(names)
    assert "architectures.md" not in text and "notebook" not in text
    wide = Console(width=260, record=True, no_color=True)
    render_compare(reports, wide)
    rows = [ln for ln in wide.export_text().splitlines() if "2.567 B ✓" in ln]
    assert len(rows) == len(names)  # one row per model when it fits


@pytest.mark.parametrize("text_file", ["README.md"])
def test_user_facing_text_points_at_nothing_private(text_file):
    root = Path(__file__).resolve().parents[1]
    texts = [
        root / text_file,
        *(root / "src" / "sdlens" / "render").glob("*_view.py"),
        root / "src/sdlens/cli.py",
        *(root / "src" / "sdlens" / "commands").glob("*.py"),
    ]
    for p in texts:
        body = p.read_text()
        for bad in ("architectures.md", "issue notes", "see the issue"):
            assert bad not in body, (p.name, bad)
    readme = (root / "README.md").read_text()
    assert "## Exit codes" in readme or "### Exit codes" in readme
    assert "vocab.json" in readme and "CUDA build" in readme


def test_json_stays_json_when_narrow(tmp_path, monkeypatch):
    a, _ = _write_pair(tmp_path)
    r = run("inspect", "--json", str(a))
    assert r.code == 0 and json.loads(r.out)["path"] == str(a)


def test_verdict_bullets_wrap_on_a_terminal_and_stay_whole_in_a_pipe():
    from sdlens.render.text import bullets

    verdict = [
        "UNet: changed — 80 of 686 tensors (RMS of Δ 0.00509); only cross-attention (attn2)",
        "VAE: bit-identical",
    ]
    tty = Console(width=40, record=True, force_terminal=True, no_color=True)
    bullets(tty, verdict)
    lines = tty.export_text().splitlines()
    assert all(len(ln) <= 40 for ln in lines) and len(lines) > 2
    assert lines[0].startswith(" • UNet:") and lines[1].startswith("   ")  # hanging indent under the text
    assert " ".join(lines).split() == f"• {verdict[0]} • {verdict[1]}".split()  # no word broken or lost
    pipe = Console(width=40, record=True, force_terminal=False, no_color=True)
    bullets(pipe, verdict)
    assert pipe.export_text().splitlines() == [f" • {v}" for v in verdict]


def test_inspect_metadata_hash_is_never_cut(tmp_path, monkeypatch):
    digest = hashlib.sha256(b"model").hexdigest()
    save_file(
        {k: np.zeros((2, 2), np.float16) for k in LONG_KEYS},
        str(tmp_path / NAME_A),
        metadata={"sshs_model_hash_of_the_training_run": digest, "ss_training_comment": "fine"},
    )
    monkeypatch.chdir(tmp_path)
    r = run("inspect", NAME_A)
    _fits_80(r.out)
    assert "  " + digest in r.out.splitlines() and "…" not in r.out


def test_a_wrong_variant_is_a_usage_error_not_a_finding(tmp_path):
    f = tmp_path / "x.safetensors"
    f.write_bytes(b"\x00" * 16)
    r = run("inspect", str(f), "--variant", "a/b")
    assert r.code == 2 and "--variant" in _error_line(r)
