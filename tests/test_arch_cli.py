"""sdlens arch: configs from checkpoints and config.json, the command line, diagrams."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from sdlens.analysis.cost import analyse
from sdlens.arch import build as B
from sdlens.arch.from_checkpoint import spec_from_config_json, spec_from_path

ZOO = [
    "sd1_fp16",
    "sdxl_fp16",
    "sdxl_refiner",
    "sd3_medium",
    "sd35_medium",
    "flux_schnell",
    "auraflow",
    "hunyuandit",
    "sdxl_diffusers",
    "vae_sd",
]


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    from sdlens.testing.zoo import build_zoo

    return build_zoo(tmp_path_factory.mktemp("archzoo"), ZOO)


@pytest.mark.parametrize(
    "name",
    [
        "sd1_fp16",
        "sdxl_fp16",
        "sdxl_refiner",
        "sd3_medium",
        "sd35_medium",
        "flux_schnell",
        "auraflow",
        "hunyuandit",
    ],
)
def test_config_from_checkpoint_shapes_is_exact(small_zoo, name):
    """Non-standard widths (the tiny zoo) are measured as they are: the derived config rebuilds the file's
    denoiser parameter for parameter."""
    spec = spec_from_path(small_zoo[name].path)
    built = B.count_params(B.build_denoiser(spec.cls_name, spec.config))
    assert spec.reference_params == built
    assert not any("figures are for the derived config" in n for n in spec.notes)
    r = analyse(spec, res=(128, 128))
    assert r.components[0].matches
    assert sum(b.params for b in r.blocks) == r.params
    assert (
        r.mbw_blocks
        == {
            "sd1_fp16": 25,
            "sdxl_fp16": 19,
            "sdxl_refiner": 25,
            "sd3_medium": 24,
            "sd35_medium": 24,
            "flux_schnell": 57,
            "auraflow": 36,
            "hunyuandit": 40,
        }[name]
    )


def test_full_size_checkpoint_is_the_released_model(tmp_path):
    from sdlens.testing.zoo import build_zoo

    zoo = build_zoo(tmp_path, ["sdxl_full_fp16"])
    spec = spec_from_path(zoo["sdxl_full_fp16"].path)
    assert spec.reference_params == 2_567_463_684
    assert spec.config["transformer_layers_per_block"] == [1, 2, 10]


def test_config_json_and_diffusers_folder(small_zoo, tmp_path):
    spec = spec_from_path(small_zoo["sdxl_diffusers"].path)
    assert spec.cls_name == "UNet2DConditionModel" and spec.key == "sdxl"
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"_class_name": "FluxTransformer2DModel", **B.released_spec("flux").config}))
    assert (
        B.count_params(B.build_denoiser(*(lambda s: (s.cls_name, s.config))(spec_from_config_json(cfg))))
        == 11_901_408_320
    )


def _cli(*args):
    """The real entry point, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "sdlens.cli", "arch", *args], capture_output=True, text=True, timeout=600
    )


def _run(*args):
    """The CLI in-process (typer's runner, the same command group and error handling): the torch / diffusers
    imports a subprocess would repeat are already done. ``returncode`` / ``stdout`` / ``stderr`` as a process."""
    from typer.testing import CliRunner

    import sdlens.cli as cli_mod

    r = CliRunner().invoke(cli_mod.app, ["arch", *args], env={"COLUMNS": "100"})
    r.returncode = r.exit_code
    return r


def test_cli_json_gemm_diagram(tmp_path):
    gemm, svg = tmp_path / "g.csv", tmp_path / "d.svg"
    p = _run("sd1", "--res", "256x256", "--json", "--gemm", str(gemm), "--diagram", str(svg))
    d = json.loads(p.stdout)
    assert d["params"] == 859_520_964 and d["gemm_total_flops"] == d["denoiser"]["total_flops"]
    assert gemm.stat().st_size > 0
    text = svg.read_text()
    assert text.startswith("<svg") and "IN00" in text and "OUT11" in text and "stroke-dasharray" in text
    gv = tmp_path / "d-torchview-depth1.gv"
    assert gv.read_text().startswith(("digraph", "strict digraph"))
    if shutil.which("dot") is None:
        assert p.returncode == 2
        errors = [line for line in p.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and "apt-get install graphviz" in errors[0]
    else:
        assert p.returncode == 0, p.stderr
        assert (tmp_path / "d-torchview-depth1.svg").exists()


def test_cli_compare_and_errors():
    p = _run("--compare", "sd1,flux", "--res", "256x256")
    assert p.returncode == 0, p.stderr
    assert "SD 1.5" in p.stdout and "FLUX.1-dev" in p.stdout and "torchinfo" in p.stdout
    bad = _cli("sd9")
    assert bad.returncode == 2 and "unknown model" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    res = _run("sdxl", "--res", "1000x1000")
    assert res.returncode == 2 and "multiples of" in res.stderr


def test_dit_diagram(tmp_path):
    from sdlens.render.arch_diagram import write_block_diagram

    svg = write_block_diagram(analyse("flux", res=(256, 256)), tmp_path / "flux.svg").read_text()
    assert "double-stream blocks" in svg and "single-stream blocks" in svg and "S37" in svg


def test_command_module_import_is_cheap():
    code = "import sys, sdlens.commands.arch; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_family_without_an_input_recipe_is_one_clear_line(tmp_path):
    """Chroma's record derives its config (the count check passes), but sdlens cannot trace its forward yet:
    one line naming the file, exit 2, and none of diffusers' deprecation notices on the terminal."""
    from sdlens.testing import zoo_new_b

    path = zoo_new_b.write_denoiser(tmp_path / "chroma.safetensors", "chroma", layout="original")
    spec = spec_from_path(path)
    assert spec.family == "chroma" and spec.reference_params == B.count_params(
        B.build_denoiser(spec.cls_name, spec.config)
    )
    r = _run(str(path))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and str(path) in r.stderr and "ChromaTransformer2DModel" in r.stderr
    assert "Warning" not in r.stderr and "Traceback" not in r.stderr


def test_crafted_shapes_are_one_clear_line(tmp_path):
    """A FLUX file whose img_in is 1-d: the record's config-from-shapes cannot read it, and says so for the file."""
    import torch

    from sdlens.testing import zoo_dit
    from sdlens.testing.writers import save_safetensors

    sd = zoo_dit.build_denoiser("flux_dev", layout="original")
    sd["img_in.weight"] = torch.zeros(8)
    path = save_safetensors(sd, tmp_path / "crafted.safetensors")
    r = _run(str(path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert str(path) in r.stderr and "cannot derive a FluxTransformer2DModel config" in r.stderr


def test_shapes_that_build_but_do_not_run_are_one_clear_line(tmp_path):
    """A FLUX file whose q-norm width disagrees with its rotary axes builds, but its forward cannot run."""
    import torch

    from sdlens.testing import zoo_dit
    from sdlens.testing.writers import save_safetensors

    sd = zoo_dit.build_denoiser("flux_dev", layout="original")
    sd["double_blocks.0.img_attn.norm.query_norm.scale"] = torch.zeros(5)
    path = save_safetensors(sd, tmp_path / "crafted.safetensors")
    r = _run(str(path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert str(path) in r.stderr and "does not run" in r.stderr
