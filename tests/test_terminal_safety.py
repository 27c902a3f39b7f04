"""Nothing untrusted reaches the terminal raw (issue 13, point 5): keys, metadata, paths and error messages are
shown with rich markup escaped and control characters as ``\\x1b`` escapes; error lines are capped; JSON stays
faithful. Tiny hostile safetensors files are built here; the CLI runs in-process through ``sdlens.cli.main``."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from sdlens.render.safe_text import ERROR_LIMIT, plot_label, printable, safe

EVIL = "\x1b[2J[bold red]x[/] [/] \udcff \u202e \x9b :thumbs_up:"  # ESC, markup, a lone closing tag, surrogate, RLO, CSI
# a safetensors header cannot hold a lone surrogate (the reference library refuses it, and so does sdlens):
# the files carry the rest; file names keep theirs (undecodable bytes on disk)
EVIL_IN_FILE = EVIL.replace(" \udcff", "")
LONG = "\x1b[31m" * 20_000  # 100,000 characters of colour codes
CAP = ERROR_LIMIT + 60  # an error line: the cap, "… (N more characters)", the "sdlens: error:" prefix


def write_st(
    path: Path,
    tensors: dict[str, np.ndarray],
    metadata: dict[str, str] | None = None,
    header_extra: dict | None = None,
) -> Path:
    """A float32 safetensors file written byte by byte (keys and metadata exactly as given)."""
    header: dict = {}
    blobs, off = [], 0
    for k, arr in tensors.items():
        b = arr.astype("<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header.update(header_extra or {})
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
    return path


def run(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """``sdlens ARGS`` in this process; an uncaught exception (a traceback) fails the test."""
    from sdlens import cli

    for console in (cli.out, cli.err):
        monkeypatch.setattr(console, "_width", 1000)  # no wrapping: lines compared whole
    monkeypatch.setattr(sys, "argv", ["sdlens", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out, err = capsys.readouterr()
    return e.value.code or 0, out, err


def assert_clean(out: str, err: str) -> None:
    for stream in (out, err):
        assert "\x1b" not in stream and "\x9b" not in stream and "\u202e" not in stream
        assert not any(0xD800 <= ord(c) <= 0xDFFF for c in stream)
        assert "Traceback" not in stream
    for line in err.splitlines():
        assert len(line) <= CAP, line[:80]


@pytest.fixture
def hostile(tmp_path) -> tuple[Path, Path]:
    """Two files in a folder ``d<ESC>[2J [bold red]x[`` named ``]A <ESC>[2J <0xff>.safetensors`` (so their paths
    hold ``[/]``), keys and metadata holding EVIL, and a 100,000-character metadata value."""
    d = tmp_path / "d\x1b[2J [bold red]x["
    d.mkdir()
    x = np.arange(8).reshape(2, 4)
    keys = {f"model.diffusion_model.{EVIL_IN_FILE}.weight": x, "k\x1b]0;title\x07": x}
    meta = {EVIL_IN_FILE: EVIL_IN_FILE, "long": LONG, "ss_output_name": EVIL_IN_FILE}
    a = write_st(d / "]A \x1b[2J \udcff.safetensors", keys, meta)
    b = write_st(
        d / "]B \x1b[2J \udcff.safetensors", {k: v + 1 for k, v in keys.items()}, {EVIL_IN_FILE: EVIL_IN_FILE}
    )
    return a, b


def test_safe_escapes_controls_markup_and_caps():
    assert (
        printable("a\x1b[2Jb\tc\nd\x7f\x9b\u202e\udcff") == "a\\x1b[2Jb\\x09c\\x0ad\\x7f\\x9b\\u202e\\udcff"
    )
    assert safe("[bold red]x[/]") == "\\[bold red]x\\[/]"
    assert safe("plain key.weight") == "plain key.weight"
    cut = printable("\x1b" * 1000, 10)
    assert cut == "\\x1b\\x1b… (998 more characters)"  # an escape is never split
    assert printable("é" * 400, 300) == "é" * 300 + "… (100 more characters)"
    assert plot_label("$x^2$ \x1b") == "\\$x^2\\$ \\x1b"


def test_rich_renders_escaped_text_literally():
    from rich.console import Console

    c = Console(record=True, width=200, emoji=False)
    c.print(f"[bold]key[/] {safe(EVIL)}")  # no MarkupError on "[/]"
    assert c.export_text().strip() == "key \\x1b[2J[bold red]x[/] [/] \\udcff \\u202e \\x9b :thumbs_up:"


def test_json_faithful_and_encodable():
    from sdlens.render.jsonout import dumps

    doc = {EVIL: [LONG[:12], "é\u2028"]}
    text = dumps(doc)
    text.encode("utf-8")  # no lone surrogate left raw
    assert "\x1b" not in text and "\x9b" not in text and "\u202e" not in text and "é" in text
    assert json.loads(text) == doc


def test_inspect_shows_escapes(monkeypatch, capsys, hostile):
    code, out, err = run(monkeypatch, capsys, "inspect", *hostile)
    assert code == 0
    assert_clean(out, err)
    assert "\\x1b[2J[bold red]x[/] [/] \\u202e \\x9b" in out  # metadata key and value, as written
    assert ":thumbs_up:" in out  # not turned into an emoji
    assert "k\\x1b]0;title\\x07" in out  # the unknown key
    assert "]A \\x1b[2J \\udcff.safetensors" in out  # the path


def test_lone_surrogate_in_a_header_is_one_clean_line(monkeypatch, capsys, tmp_path):
    bad = write_st(tmp_path / "s.safetensors", {"model.diffusion_model.x\udcff.weight": np.ones(2)})
    code, out, err = run(monkeypatch, capsys, "inspect", bad)
    assert code == 1  # a file that cannot be read
    assert_clean(out, err)
    (line,) = err.strip().splitlines()
    assert "lone surrogate" in line and "\\udcff" in line and str(bad) in line


def test_inspect_json_is_faithful(monkeypatch, capsys, hostile):
    code, out, err = run(monkeypatch, capsys, "inspect", "--json", hostile[0])
    assert code == 0
    assert_clean(out, err)
    report = json.loads(out)
    assert report["path"] == str(hostile[0])
    assert report["metadata"]["other"][EVIL_IN_FILE] == EVIL_IN_FILE
    assert "k\x1b]0;title\x07" in {u["key"] for u in report["unknown_keys"]}


def test_diff_by_key_shows_escapes(monkeypatch, capsys, hostile):
    code, out, err = run(monkeypatch, capsys, "diff", *hostile, "--by", "key")
    assert code == 0
    assert_clean(out, err)
    assert "d\\x1b[2J [bold red]x[/]A \\x1b[2J \\udcff.safetensors" in out
    assert "denoiser/\\x1b[2J[bold red]x[/] [/] \\u202e \\x9b :thumbs_up:.weight" in out  # canonical key


def test_matrix_shows_escapes(monkeypatch, capsys, hostile, tmp_path):
    code, out, err = run(
        monkeypatch, capsys, "matrix", hostile[0].parent, "--out", tmp_path / "m", "--no-plots"
    )
    assert code == 0
    assert_clean(out, err)
    assert "]A \\x1b[2J \\udcff" in out
    names = [m["name"] for m in json.loads((tmp_path / "m" / "matrix.json").read_text())["models"]]
    assert sorted(names) == sorted(p.name for p in hostile)  # file names kept exactly in the JSON
    assert (
        "\\udcff" in (tmp_path / "m" / "matrix-denoiser.csv").read_text()
    )  # CSV written (surrogate escaped)


def test_matrix_figure_labels_are_plain_text(hostile, tmp_path):
    """Figure labels hold no control character, surrogate or unescaped ``$`` (which crashed matplotlib)."""
    from sdlens.analysis.matrix import matrix
    from sdlens.render.matrix_view import _render, figure_jobs

    result = matrix(list(hostile))
    jobs = figure_jobs(result, tmp_path)
    heat = next(j for j in jobs if j[0] == "plot_heatmap")
    assert all(printable(n, None) == n for n in heat[1][1])
    assert _render(heat).stat().st_size > 0


def test_error_printer_escapes_markup_in_paths(monkeypatch, capsys, tmp_path):
    missing = tmp_path / "x[" / "]y [bold]z.safetensors"  # the path holds "[/]"
    code, out, err = run(monkeypatch, capsys, "inspect", missing)
    assert code == 2  # a missing input
    assert_clean(out, err)
    assert f"sdlens: error: {missing}: no such file or folder" in err


def test_long_error_line_is_capped(monkeypatch, capsys, tmp_path):
    key = "[/]" + "\x1b[31m" * 20_000
    bad = write_st(
        tmp_path / "bad.safetensors",
        {},
        header_extra={key: {"dtype": "NOPE", "shape": [1], "data_offsets": [0, 4]}},
    )
    code, out, err = run(monkeypatch, capsys, "inspect", bad)
    assert code == 1  # a file that cannot be read: a finding (README, exit codes)
    assert_clean(out, err)
    (line,) = err.strip().splitlines()
    assert line.startswith(f"sdlens: error: {bad}: tensor '[/]\\x1b[31m")
    assert len(line) <= CAP and "has unknown dtype 'NOPE'" in line  # the key is cut inside, the problem kept
