"""One CLI style (issue 15, point 5): every command a module of ``sdlens.commands`` registered once from the one
list in ``sdlens.cli``; nothing but ``cli.py`` imports ``sdlens.cli``; a wrong option value is checked by the API
function that takes it (one line naming the value and the choices, exit 2, before any work), and the CLI shows
the same choices; ``arch --compare`` goes through ``cost.compare``."""

from __future__ import annotations

import ast
import json
import pkgutil
from pathlib import Path

import numpy as np
import pytest
import typer
from safetensors.numpy import save_file
from typer.testing import CliRunner

import sdlens
import sdlens.cli as cli_mod
import sdlens.commands as commands_pkg
from sdlens import choices
from sdlens.choices import ChoiceError
from sdlens.errors import SdlensError

SRC = Path(sdlens.__file__).parent


def invoke(*args: str):
    r = CliRunner().invoke(cli_mod.app, list(args), env={"COLUMNS": "200"})
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("pair")
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    save_file({key: a}, str(d / "a.safetensors"))
    save_file({key: a + 1}, str(d / "b.safetensors"))
    return d / "a.safetensors", d / "b.safetensors"


# ------------------------------------------------------------------------------------------ registration


def test_every_command_module_is_registered_once_from_the_list():
    modules = sorted(
        m.name for m in pkgutil.iter_modules(commands_pkg.__path__) if not m.name.startswith("_")
    )
    listed = [cli_mod.command_name(m) for m in cli_mod.COMMANDS]
    assert sorted(listed) == modules and len(set(listed)) == len(listed)  # every module, each once
    infos = cli_mod.app.registered_commands
    assert [(i.name, i.callback) for i in infos] == [
        (cli_mod.command_name(m), m.run) for m in cli_mod.COMMANDS
    ]
    assert list(typer.main.get_command(cli_mod.app).commands) == listed  # help lists them in the list's order


def test_command_modules_register_nothing_themselves_and_cli_only_through_the_list():
    for path in (SRC / "commands").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        if not path.stem.startswith("_"):  # __init__, _options (the shared options): not commands
            assert "run" in names and "register" not in names and "demo_section" not in names, path.name
        calls = [
            n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("command", "callback")
        ]
        assert not calls, path.name  # no app.command(...) outside cli.py
    cli_tree = ast.parse((SRC / "cli.py").read_text())
    commands = [n for n in ast.walk(cli_tree) if isinstance(n, ast.Attribute) and n.attr == "command"]
    assert len(commands) == 1  # the one loop over COMMANDS


def _imports_cli(tree: ast.AST) -> bool:
    for n in ast.walk(tree):
        if isinstance(n, ast.Import) and any(
            a.name == "sdlens.cli" or a.name.startswith("sdlens.cli.") for a in n.names
        ):
            return True
        if isinstance(n, ast.ImportFrom):
            if n.module == "sdlens.cli" or (n.module == "sdlens" and any(a.name == "cli" for a in n.names)):
                return True
            if n.level and (
                n.module == "cli" or (n.module is None and any(a.name == "cli" for a in n.names))
            ):
                return True
    return False


def test_no_module_but_cli_imports_sdlens_cli():
    assert _imports_cli(ast.parse("from sdlens.cli import out")) and _imports_cli(
        ast.parse("from sdlens import cli")
    )
    assert _imports_cli(ast.parse("import sdlens.cli as c")) and not _imports_cli(
        ast.parse("from sdlens import console")
    )
    offenders = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if p != SRC / "cli.py" and _imports_cli(ast.parse(p.read_text()))
    ]
    assert offenders == []


def test_the_cli_prints_through_the_console_module():
    from sdlens import console

    assert cli_mod.out is console.out and cli_mod.err is console.err  # one pair of consoles


def test_no_demo_code_in_the_commands():
    import sdlens.demo as demo

    for name in demo.SECTIONS:
        assert (SRC / "demo" / f"{name}.py").is_file()
    for path in (SRC / "commands").glob("*.py"):
        text = path.read_text()
        assert "sdlens.testing" not in text and "demo_section" not in text, path.name


# ------------------------------------------------------------------------------------------ option choices

CASES = [  # (command line before the option, option, wrong value, its choices)
    (["diff", "A", "B"], "--by", "nope", ("component", "block", "type", "key")),
    (["diff", "A", "B"], "--metric", "l3", ("l2", "l1", "l0", "cos", "all")),
    (["diff", "A", "B"], "--time-embed", "MID", ("IN00", "BASE")),
    (["matrix", "A", "B"], "--metric", "l0", ("l2", "cos", "l1")),
    (["matrix", "A", "B"], "--by", "type", ("component", "block")),
    (["arch", "sd1"], "--depth", "3", ("1", "2")),
    (["arch", "sd1"], "--time-embed", "in00", ("IN00", "BASE")),
    (["arch", "sd1"], "--dtype", "fp8", ("fp16", "bf16", "fp32")),
    (["embed", "A", "--prompts", "P"], "--method", "umap", ("pca", "tsne")),
]


@pytest.mark.parametrize(("head", "option", "bad", "allowed"), CASES, ids=[f"{c[0][0]}{c[1]}" for c in CASES])
def test_a_wrong_choice_is_one_line_naming_value_and_choices_exit_2(
    pair, tmp_path, head, option, bad, allowed
):
    a, b = pair
    args = [{"A": str(a), "B": str(b), "P": str(tmp_path / "p.txt")}.get(x, x) for x in head]
    out = tmp_path / "out"
    extra = ["--out", str(out)] if head[0] in ("matrix", "embed") else ["--json"] if head[0] == "arch" else []
    r = invoke(*args, *extra, option, bad)
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    listed = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
    assert lines == [f"sdlens: error: {option} must be {listed} (got '{bad}')"]
    assert r.stdout == "" and not out.exists()  # refused before any work


def test_the_help_shows_the_apis_choices():
    for cmd, option, lit in (
        ("diff", "--by", choices.DiffBy),
        ("diff", "--metric", choices.DiffMetric),
        ("matrix", "--metric", choices.MatrixMetric),
        ("arch", "--depth", choices.DiagramDepth),
        ("embed", "--method", choices.EmbedMethod),
        ("arch", "--time-embed", choices.TimeEmbed),
    ):
        text = invoke(cmd, "--help").stdout
        assert choices.metavar(lit) in text, (cmd, option)
    assert choices.metavar(choices.DiffMetric) == "l2|l1|l0|cos|all"


def test_the_api_checks_its_own_choices_before_any_work(pair, tmp_path):
    from sdlens.analysis.cost import analyse
    from sdlens.analysis.diff import diff
    from sdlens.analysis.matrix import matrix
    from sdlens.render.arch_diagram import write_torchview
    from sdlens.render.diff_view import render_diff
    from sdlens.render.embed_view import write_embed_outputs

    a, b = pair
    missing = tmp_path / "no-such.safetensors"  # a choice is checked before any file is opened
    with pytest.raises(ChoiceError, match=r"--time-embed must be IN00 or BASE \(got 'MID'\)"):
        diff(missing, missing, time_embed="MID")
    with pytest.raises(ChoiceError, match=r"--metric must be l2, cos or l1 \(got 'l0'\)"):
        matrix([missing, missing], metric="l0")
    with pytest.raises(ChoiceError, match=r"--by must be component or block \(got 'key'\)"):
        matrix([missing, missing], by="key")
    with pytest.raises(ChoiceError, match=r"--time-embed must be IN00 or BASE \(got 'x'\)"):
        analyse("sd1", time_embed="x")
    with pytest.raises(ChoiceError, match=r"--dtype must be fp16, bf16 or fp32 \(got 'int8'\)"):
        analyse("sd1", dtype="int8")
    with pytest.raises(ChoiceError, match=r"--method must be pca or tsne \(got 'umap'\)"):
        write_embed_outputs(None, tmp_path / "e", "umap")
    assert not (tmp_path / "e").exists()
    with pytest.raises(ChoiceError, match=r"--depth must be 1 or 2 \(got '0'\)"):
        write_torchview("sd1", None, tmp_path / "tv", depth=0)
    from rich.console import Console

    result = diff(a, b)
    console = Console(record=True, width=200)
    with pytest.raises(ChoiceError, match=r"--by must be component, block, type or key \(got 'nope'\)") as e:
        render_diff(result, console, by="nope")
    assert console.export_text() == ""  # nothing printed
    assert isinstance(e.value, SdlensError) and e.value.exit_code == 2
    assert (e.value.option, e.value.value, e.value.allowed) == (
        "--by",
        "nope",
        ("component", "block", "type", "key"),
    )
    render_diff(result, console, by="key", metric="l0")  # the choices themselves pass
    assert "attn2.to_k.weight" in console.export_text()


def test_embed_batch_size_is_checked_by_the_api(tmp_path):
    from sdlens.analysis.embed import embed
    from sdlens.io.prompts import Prompt

    with pytest.raises(SdlensError, match="--batch-size must be at least 1"):
        embed([tmp_path / "none.safetensors"], [Prompt("a", "a cat")], batch_size=0)


def test_choice_helpers():
    assert choices.choices(choices.TimeEmbed) == ("IN00", "BASE") and choices.choices(("x", "y")) == (
        "x",
        "y",
    )
    assert choices.check_choice("BASE", "time_embed", choices.TimeEmbed) == "BASE"
    assert choices.option_name("time_embed") == "--time-embed" and choices.option_name("--by") == "--by"
    assert str(ChoiceError("pool", "max", ("eos",))) == "--pool must be eos (got 'max')"


# ------------------------------------------------------------------------------------------ arch --compare


def test_arch_compare_goes_through_cost_compare(monkeypatch):
    from sdlens.analysis import cost

    seen: list[tuple[str, dict]] = []

    def fake_analyse(name, **kw):
        seen.append((name, kw))
        return {"name": name, "res": kw["res"] and list(kw["res"])}

    monkeypatch.setattr(cost, "analyse", fake_analyse)
    told: list[str] = []
    reports = cost.compare("all", on_model=told.append, res=(64, 64))
    assert told == list(cost.ALL_MODELS) and [r["name"] for r in reports] == list(cost.ALL_MODELS)
    assert cost.compare(["sd1", "flux"], res=(8, 8)) == [
        {"name": "sd1", "res": [8, 8]},
        {"name": "flux", "res": [8, 8]},
    ]

    calls = []
    real_compare = cost.compare

    def spy(models, **kw):
        calls.append(models)
        return real_compare(models, **kw)

    monkeypatch.setattr(cost, "compare", spy)
    seen.clear()
    r = invoke("arch", "--compare", "sd1, sdxl", "--res", "256x128", "--json")
    assert r.exit_code == 0, r.stderr
    assert calls == [["sd1", "sdxl"]] and json.loads(r.stdout) == [
        {"name": "sd1", "res": [256, 128]},
        {"name": "sdxl", "res": [256, 128]},
    ]
    assert seen[0][1]["time_embed"] == "IN00" and seen[0][1]["dtype"] == "fp16"
    r = invoke("arch", "--compare", "ALL", "--json")
    assert calls[-1] == "all" and [d["name"] for d in json.loads(r.stdout)] == list(cost.ALL_MODELS)
