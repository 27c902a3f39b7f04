"""Prediction type with its evidence and certainty (issue 19), and convert keeping it across layouts.

Each case is a tiny file whose ground truth is what the test wrote into it (a marker key, a metadata value,
a scheduler config); diffusers' own scheduler loader judges the scheduler configs convert writes."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch

from sdlens.analysis.prediction import Prediction, prediction_of
from sdlens.arch import families
from sdlens.io.open import open_checkpoint
from sdlens.testing.writers import save_ckpt, save_safetensors

SD2_PROBE = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"


def _pred(tmp_path: Path, tensors: dict | None = None, meta: dict | None = None, family: str | None = "sdxl"):
    path = tmp_path / f"f{len(list(tmp_path.iterdir()))}.safetensors"
    save_safetensors({"w": torch.zeros(2), **(tensors or {})}, path, meta)
    with open_checkpoint(path) as ck:
        return prediction_of(ck, families.get(family))


def _raw_safetensors(path: Path, metadata: dict) -> Path:
    """A safetensors file whose metadata holds whatever JSON (non-string values included)."""
    header = json.dumps(
        {"__metadata__": metadata, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    )
    raw = header.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0\0\0\0")
    return path


def _folder(tmp_path: Path, sched: object, name: str = "dif") -> Path:
    """A minimal diffusers folder: one UNet tensor and ``scheduler/scheduler_config.json``."""
    root = tmp_path / name
    (root / "unet").mkdir(parents=True)
    save_safetensors(
        {"conv_in.weight": torch.zeros(4, 4, 3, 3)}, root / "unet" / "diffusion_pytorch_model.safetensors"
    )
    (root / "scheduler").mkdir()
    text = sched if isinstance(sched, str) else json.dumps(sched)
    (root / "scheduler" / "scheduler_config.json").write_text(text)
    return root


def _of_folder(root: Path, family: str | None = "sdxl") -> Prediction:
    with open_checkpoint(root) as ck:
        return prediction_of(ck, families.get(family))


EMPTY = torch.tensor([])  # what ComfyUI's Save Checkpoint writes for v_pred / ztsnr


# --------------------------------------------------------------------------- markers


def test_v_pred_marker_is_stated(tmp_path):
    p = _pred(tmp_path, {"v_pred": EMPTY})
    assert (p.type, p.certainty, p.zero_terminal_snr) == ("v_prediction", "stated", None)
    assert p.summary() == "v-prediction (v_pred marker key)"
    assert [e.source for e in p.evidence if e.strength == "stated"] == ["marker key v_pred"]
    # the family default is listed, outranked
    default = next(e for e in p.evidence if e.strength == "default")
    assert default.says == "epsilon" and default.source == "family default (SDXL base)"


def test_ztsnr_marker(tmp_path):
    p = _pred(tmp_path, {"v_pred": EMPTY, "ztsnr": EMPTY})
    assert (p.type, p.certainty, p.zero_terminal_snr) == ("v_prediction", "stated", True)
    assert p.summary() == "v-prediction, zero terminal SNR (v_pred marker key, ztsnr marker key)"
    # ztsnr alone: ComfyUI ignores it (it applies ztsnr only with v_pred), so sdlens lists it, uncounted
    alone = _pred(tmp_path, {"ztsnr": EMPTY})
    assert (alone.type, alone.certainty, alone.zero_terminal_snr) == ("epsilon", "family default", None)
    lone = next(e for e in alone.evidence if e.source == "marker key ztsnr")
    assert not lone.counted and "ComfyUI ignores it" in lone.detail
    # and convert writes no zero-terminal-SNR rescale for it
    from sdlens.arch.schedulers import scheduler_config
    from sdlens.convert.markers import fill_scheduler

    cfg, _ = fill_scheduler(scheduler_config("sdxl"), alone)
    assert "rescale_betas_zero_snr" not in cfg and cfg["timestep_spacing"] == "leading"
    kohya = _pred(tmp_path, meta={"ss_v_parameterization": "False", "ss_zero_terminal_snr": "True"})
    assert (kohya.type, kohya.zero_terminal_snr) == ("epsilon", True)
    assert any("epsilon prediction" in n for n in kohya.notes)  # the combination is pointed out


def test_edm_markers(tmp_path):
    p = _pred(tmp_path, {"edm_mean": torch.zeros(1, 4, 1, 1), "edm_std": torch.ones(1, 4, 1, 1)})
    assert (p.type, p.certainty) == ("edm", "stated")
    lone = _pred(tmp_path, {"edm_mean": torch.zeros(1, 4, 1, 1)})  # ComfyUI needs both
    assert lone.type == "epsilon" and lone.certainty == "family default"
    assert not next(e for e in lone.evidence if e.source == "marker key edm_mean").counted
    v = _pred(
        tmp_path, {"edm_vpred.sigma_max": torch.tensor(120.0), "edm_vpred.sigma_min": torch.tensor(0.002)}
    )
    assert (v.type, v.certainty) == ("v_prediction", "stated")
    assert v.sigma_range == pytest.approx([0.002, 120.0])
    assert v.summary().startswith("v-prediction, EDM σ 0.002–120 (edm_vpred marker keys)")


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    ("meta", "want"),
    [
        ({"modelspec.prediction_type": "v"}, "v_prediction"),
        ({"modelspec.prediction_type": "epsilon"}, "epsilon"),
        ({"modelspec.predict_key": "v"}, "v_prediction"),  # ComfyUI's Save Checkpoint
        ({"modelspec.architecture": "stable-diffusion-v2-768-v"}, "v_prediction"),
        ({"modelspec.architecture": "stable-diffusion-v2-512"}, "epsilon"),
        ({"ss_v_parameterization": "True"}, "v_prediction"),
        ({"ss_v_parameterization": "False"}, "epsilon"),
    ],
)
def test_metadata_statements(tmp_path, meta, want):
    p = _pred(tmp_path, meta=meta, family="sd2")
    assert (p.type, p.certainty) == (want, "stated")
    assert p.basis.startswith(next(iter(meta)))


def test_modelspec_architecture_counts_only_for_the_family_it_names(tmp_path):
    p = _pred(tmp_path, meta={"modelspec.architecture": "stable-diffusion-v2-768-v"}, family="sdxl")
    assert (p.type, p.certainty) == ("epsilon", "family default")
    assert families.get("sd2").prediction_probe.modelspec_ids["stable-diffusion-v2-768-v"] == "v_prediction"


def test_kohya_zero_terminal_snr(tmp_path):
    p = _pred(tmp_path, meta={"ss_v_parameterization": "True", "ss_zero_terminal_snr": "True"})
    assert (p.type, p.zero_terminal_snr) == ("v_prediction", True)
    off = _pred(tmp_path, meta={"ss_zero_terminal_snr": "False"})
    assert off.zero_terminal_snr is False


def test_conflicting_statements(tmp_path):
    p = _pred(tmp_path, {"v_pred": EMPTY}, {"modelspec.prediction_type": "epsilon"})
    assert (p.type, p.certainty) == ("v_prediction", "conflicting")  # the marker key is the more specific
    assert p.conflicts == ["modelspec.prediction_type says epsilon"]
    assert "conflicting: modelspec.prediction_type says epsilon" in p.summary()
    agree = _pred(
        tmp_path, {"v_pred": EMPTY}, {"modelspec.prediction_type": "v", "ss_v_parameterization": "True"}
    )
    assert agree.certainty == "stated" and agree.conflicts == []


def test_flow_family_ignores_epsilon_statements(tmp_path):
    # kohya writes modelspec.prediction_type "epsilon" for every model trained without v, SD3 included
    p = _pred(tmp_path, meta={"modelspec.prediction_type": "epsilon"}, family="sd3")
    assert (p.type, p.certainty) == ("flow", "family default")
    ms = next(e for e in p.evidence if e.source == "modelspec.prediction_type")
    assert not ms.counted and "does not apply" in ms.detail and "kohya writes" in ms.detail
    # zero terminal SNR is a DDPM-schedule notion: no marker or kohya flag makes a flow model ztsnr
    f = _pred(
        tmp_path, {"v_pred": EMPTY, "ztsnr": EMPTY}, {"ss_zero_terminal_snr": "True"}, family="flux_dev"
    )
    assert (f.type, f.certainty, f.zero_terminal_snr) == ("flow", "family default", None)
    v = next(e for e in f.evidence if e.source == "marker key v_pred")
    assert not v.counted and "does not apply" in v.detail and "kohya" not in v.detail
    assert not any(e.counted for e in f.evidence if e.zero_terminal_snr is not None)


# --------------------------------------------------------------------------- defaults and the heuristic


@pytest.mark.parametrize(
    ("family", "want", "summary"),
    [
        ("sdxl", "epsilon", "epsilon (family default, SDXL base)"),
        ("sd3", "flow", "flow matching (family default, SD3 medium)"),
        ("playground_v25", "edm", "EDM (family default, Playground v2.5)"),
    ],
)
def test_family_defaults(tmp_path, family, want, summary):
    p = _pred(tmp_path, family=family)
    assert (p.type, p.certainty) == (want, "family default")
    assert p.summary() == summary.replace("SD3 medium", families.get("sd3").name)


SD2_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
CONV4 = {SD2_CONV_IN: torch.zeros(8, 4, 1, 1)}  # a 4-channel (not inpainting) UNet's input conv


def test_sd2_heuristic_is_labelled_heuristic(tmp_path):
    gen = torch.Generator().manual_seed(0)
    v = _pred(tmp_path, {**CONV4, SD2_PROBE: torch.randn(320, generator=gen) * 0.5}, family="sd2")
    assert (v.type, v.certainty) == ("v_prediction", "heuristic")
    assert v.summary().startswith(
        "v-prediction (heuristic: std of output_blocks.11.1.transformer_blocks.0.norm1"
    )
    e = _pred(
        tmp_path, {**CONV4, SD2_PROBE: torch.full((320,), 0.01) + torch.arange(320) * 1e-5}, family="sd2"
    )
    assert (e.type, e.certainty) == ("epsilon", "heuristic")
    # the family itself does not say (two releases), and a statement outranks the guess
    assert any(x.strength == "default" and not x.counted for x in e.evidence)
    s = _pred(
        tmp_path,
        {SD2_PROBE: torch.randn(320, generator=gen)},
        {"modelspec.prediction_type": "epsilon"},
        "sd2",
    )
    assert (s.type, s.certainty) == ("epsilon", "stated") and not any(
        x.strength == "heuristic" for x in s.evidence
    )


def test_sd2_heuristic_as_comfyui_runs_it(tmp_path):
    """ComfyUI: the std test only for 4 input channels ("SD2.0 inpainting models are not v prediction"), and
    the population std (unbiased=False)."""
    big = torch.randn(320, generator=torch.Generator().manual_seed(0))  # std ≈ 1: v by the guess
    inpaint = _pred(tmp_path, {SD2_CONV_IN: torch.zeros(8, 9, 1, 1), SD2_PROBE: big}, family="sd2")
    assert (inpaint.type, inpaint.certainty) == ("unknown", "unknown")
    skipped = next(e for e in inpaint.evidence if e.strength == "heuristic")
    assert not skipped.counted and skipped.detail.startswith("9 input channels")
    assert _pred(tmp_path, {SD2_PROBE: big}, family="sd2").type == "unknown"  # channels not told: not run
    # [0, 0.18]: population std 0.09 (not above 0.09: epsilon); the sample std would be 0.127 (v)
    edge = _pred(tmp_path, {**CONV4, SD2_PROBE: torch.tensor([0.0, 0.18], dtype=torch.float64)}, family="sd2")
    assert (edge.type, edge.certainty) == ("epsilon", "heuristic")


def test_sd2_global_step_names_the_release(tmp_path):
    gen = torch.Generator().manual_seed(0)
    path = save_ckpt(
        {SD2_PROBE: torch.randn(320, generator=gen)}, tmp_path / "b.ckpt", extras={"global_step": 875000}
    )
    with open_checkpoint(path) as ck:
        p = prediction_of(ck, families.get("sd2"))
    assert (p.type, p.certainty) == ("epsilon", "family default")
    assert p.summary() == "epsilon (global_step 875000 = SD2 base)"


def test_buffers_say_zero_terminal_snr_only_when_usable(tmp_path):
    import numpy as np

    ac = np.linspace(0.999, 0.0, 1000)  # ᾱ ends at exactly 0: a usable zero-terminal-SNR table (β_T = 1)
    z = _pred(tmp_path, {"alphas_cumprod": torch.from_numpy(ac)}, family="sd1")
    assert z.zero_terminal_snr is True and z.basis == "family default, SD1.x, schedule buffers".replace(
        "SD1.x", families.get("sd1").name
    )
    mid = ac.copy()
    mid[300:] = 0.0  # zeros from t = 300: β = 0/0, not a schedule
    assert _pred(tmp_path, {"alphas_cumprod": torch.from_numpy(mid)}, family="sd1").zero_terminal_snr is None
    long = np.linspace(0.999, 0.0, 100_001)  # more steps than a schedule table sdlens reads
    assert _pred(tmp_path, {"alphas_cumprod": torch.from_numpy(long)}, family="sd1").zero_terminal_snr is None


def test_nothing_says(tmp_path):
    p = _pred(tmp_path, family=None)
    assert (p.type, p.certainty, p.evidence) == ("unknown", "unknown", [])
    assert p.summary() == "unknown (nothing in the file says)"


# --------------------------------------------------------------------------- diffusers folders


def test_folder_scheduler_config_is_stated(tmp_path):
    root = _folder(
        tmp_path,
        {
            "_class_name": "EulerDiscreteScheduler",
            "prediction_type": "v_prediction",
            "rescale_betas_zero_snr": True,
        },
    )
    p = _of_folder(root)
    assert (p.type, p.certainty, p.zero_terminal_snr) == ("v_prediction", "stated", True)
    assert p.basis == "scheduler/scheduler_config.json"
    edm = _of_folder(
        _folder(
            tmp_path, {"_class_name": "EDMDPMSolverMultistepScheduler", "prediction_type": "epsilon"}, "e"
        )
    )
    assert edm.type == "edm"
    flow = _of_folder(
        _folder(tmp_path, {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}, "f"), "sd3"
    )
    assert (flow.type, flow.certainty) == ("flow", "stated")


def test_hostile_scheduler_configs_do_not_crash(tmp_path):
    cases = {
        "list": {"_class_name": ["x"], "prediction_type": ["v_prediction"], "rescale_betas_zero_snr": "yes"},
        "long": {"_class_name": "A" * 100_000, "prediction_type": "\x1b[31m" + "v" * 100_000},
        "notjson": "{not json",
        "array": [1, 2, 3],
        "record": {"_class_name": "DDIMScheduler", "_sdlens_prediction": {"certainty": ["heuristic"]}},
    }
    for name, cfg in cases.items():
        p = _of_folder(_folder(tmp_path, cfg, name))
        assert p.type == "epsilon" and p.certainty == "family default", name  # the config said nothing usable
        text = p.summary() + json.dumps(p.to_dict())
        assert "\x1b" not in text and len(text) < 4000, name
    # a scheduler config that is a link out of the folder is refused, not read
    outside = tmp_path / "secret.json"
    outside.write_text(json.dumps({"prediction_type": "v_prediction"}))
    root = _folder(tmp_path, {}, "link")
    (root / "scheduler" / "scheduler_config.json").unlink()
    os.symlink(outside, root / "scheduler" / "scheduler_config.json")
    p = _of_folder(root)
    assert p.type == "epsilon"
    refused = next(e for e in p.evidence if e.source == "scheduler/scheduler_config.json")
    assert not refused.counted and "outside the folder" in refused.detail


def test_hostile_metadata_values(tmp_path):
    path = _raw_safetensors(
        tmp_path / "h.safetensors",
        {
            "modelspec.prediction_type": {"nested": ["v"]},
            "ss_v_parameterization": "\x1b[31mTrue\u202e",
            "ss_zero_terminal_snr": "x" * 1_000_000,
            "modelspec.architecture": 7,
            "sdlens.diffusers_configs": '{"scheduler": ' * 5000,
        },
    )
    with open_checkpoint(path) as ck:
        p = prediction_of(ck, families.get("sdxl"))
    assert (p.type, p.certainty, p.zero_terminal_snr) == ("epsilon", "family default", None)
    text = json.dumps(p.to_dict(), ensure_ascii=False)
    assert "\x1b" not in text and "\u202e" not in text and len(text) < 4000


# --------------------------------------------------------------------------- inspect


def test_inspect_reports_and_renders_the_evidence(tmp_path):
    from rich.console import Console

    from sdlens.analysis.inspect import inspect
    from sdlens.render.inspect_view import render_report
    from sdlens.testing.zoo_unet import build_single_file

    sd = {**build_single_file("sd1", dtype=torch.float16), "v_pred": EMPTY, "ztsnr": EMPTY}
    save_safetensors(sd, tmp_path / "v.safetensors", {"ss_v_parameterization": "True"})
    r = inspect(tmp_path / "v.safetensors")
    assert (r.prediction.type, r.prediction.certainty, r.prediction.zero_terminal_snr) == (
        "v_prediction",
        "stated",
        True,
    )
    d = r.to_dict()["prediction"]
    assert d["summary"] == r.prediction.summary() and d["evidence"][0]["source"] == "marker key v_pred"
    con = Console(record=True, width=200)
    render_report(r, con)
    out = con.export_text()
    assert "v-prediction, zero terminal SNR (v_pred marker key, ztsnr marker key)" in out
    assert "evidence    ss_v_parameterization: v-prediction (stated)" in out
    assert "family default (SD1.x): epsilon (default)" in out.replace(families.get("sd1").name, "SD1.x")


# --------------------------------------------------------------------------- convert


def _convert(src, dst, **kw):
    from sdlens.convert import ConvertOptions, convert, make_plan

    return convert(make_plan(src, dst, ConvertOptions(**kw)))


def _keys(path) -> dict[str, tuple[tuple[int, ...], str]]:
    with open_checkpoint(path) as ck:
        return {k: (tuple(t.shape), t.dtype) for k, t in ck.tensors.items()}


def _scheduler(folder: Path):
    import diffusers

    cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return getattr(diffusers, cfg["_class_name"]).from_pretrained(folder / "scheduler").config


@pytest.fixture(scope="module")
def sdxl_v(tmp_path_factory) -> Path:
    """A tiny SDXL single file with the v_pred + ztsnr markers and the metadata that say the same."""
    from sdlens.testing.zoo_unet import build_single_file

    path = tmp_path_factory.mktemp("pred") / "xl_v.safetensors"
    sd = {**build_single_file("sdxl", dtype=torch.float16), "v_pred": EMPTY, "ztsnr": EMPTY}
    meta = {"modelspec.prediction_type": "v", "ss_v_parameterization": "True", "ss_zero_terminal_snr": "True"}
    return save_safetensors(sd, path, meta)


def test_convert_single_to_single_keeps_markers_and_metadata(sdxl_v, tmp_path):
    out = tmp_path / "fp32.safetensors"
    res = _convert(sdxl_v, out, dtype="fp32")
    assert res.verification.ok
    keys = _keys(out)
    assert keys["v_pred"] == ((0,), "F32") and keys["ztsnr"] == ((0,), "F32")  # markers keep their dtype
    with open_checkpoint(out) as ck:
        assert (
            ck.metadata["modelspec.prediction_type"] == "v" and ck.metadata["ss_zero_terminal_snr"] == "True"
        )
    unet = tmp_path / "unet.safetensors"
    res = _convert(sdxl_v, unet, extract=["unet"])  # the denoiser alone still says how to sample it
    assert any(n.startswith("marker keys kept with the denoiser (v_pred, ztsnr)") for n in res.plan.notes)
    assert {"v_pred", "ztsnr"} <= set(_keys(unet))
    dropped = tmp_path / "nomark.safetensors"
    _convert(sdxl_v, dropped, drop=["markers"])
    assert not {"v_pred", "ztsnr"} & set(_keys(dropped))


def test_convert_round_trip_single_diffusers_single(sdxl_v, tmp_path):
    folder = tmp_path / "dif"
    res = _convert(sdxl_v, folder, layout="diffusers")
    assert any(
        op.startswith("prediction: scheduler/scheduler_config.json: prediction_type v_prediction")
        for op in res.plan.operations
    )
    cfg = _scheduler(folder)  # diffusers reads back what was written
    assert (cfg.prediction_type, cfg.rescale_betas_zero_snr, cfg.timestep_spacing) == (
        "v_prediction",
        True,
        "trailing",
    )
    from rich.console import Console

    from sdlens.render.convert_view import render_result

    con = Console(record=True, width=300)
    render_result(res, con)  # convert's output says what it wrote
    assert (
        "prediction: scheduler/scheduler_config.json: prediction_type v_prediction, rescale_betas_zero_snr true"
        in (con.export_text())
    )
    back = tmp_path / "back.safetensors"
    _convert(folder, back)
    assert {"v_pred", "ztsnr"} <= set(_keys(back))
    with open_checkpoint(back) as ck:
        p = prediction_of(ck, families.get("sdxl"))
    assert (p.type, p.certainty, p.zero_terminal_snr) == ("v_prediction", "stated", True)


def test_convert_folder_states_v_prediction_writes_markers(tmp_path):
    from sdlens.testing.zoo_unet import write_diffusers_folder

    folder = write_diffusers_folder("sd1", tmp_path / "dif")
    sched = folder / "scheduler" / "scheduler_config.json"
    cfg = {
        **json.loads(sched.read_text()),
        "_class_name": "EulerDiscreteScheduler",
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
    }
    cfg.pop("skip_prk_steps")
    sched.write_text(json.dumps(cfg))
    single = tmp_path / "one.safetensors"
    res = _convert(folder, single)
    assert res.verification.ok
    assert any("marker keys v_pred + ztsnr written" in op for op in res.plan.operations)
    keys = _keys(single)
    assert keys["v_pred"] == ((0,), "F32") and keys["ztsnr"] == ((0,), "F32")
    again = tmp_path / "again"
    _convert(single, again, layout="diffusers")
    c = _scheduler(again)
    assert (c.prediction_type, c.rescale_betas_zero_snr) == ("v_prediction", True)
    # an epsilon folder gets no marker
    sched.write_text(json.dumps({**cfg, "prediction_type": "epsilon", "rescale_betas_zero_snr": False}))
    plain = tmp_path / "eps.safetensors"
    _convert(folder, plain)
    assert not {"v_pred", "ztsnr"} & set(_keys(plain))


def test_convert_edm_v_prediction_both_ways(tmp_path):
    from sdlens.testing.zoo_unet import write_diffusers_folder

    folder = write_diffusers_folder("sd1", tmp_path / "dif")
    edm = {
        "_class_name": "EDMEulerScheduler",
        "sigma_min": 0.002,
        "sigma_max": 120.0,
        "sigma_data": 1.0,
        "prediction_type": "v_prediction",
    }
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(edm))
    single = tmp_path / "cosxl.safetensors"
    assert _convert(folder, single).verification.ok
    with open_checkpoint(single) as ck:
        assert float(ck.read("edm_vpred.sigma_max")) == pytest.approx(120.0)
        assert float(ck.read("edm_vpred.sigma_min")) == pytest.approx(0.002)
        assert ck.tensors["edm_vpred.sigma_max"].dtype == "F32" and "v_pred" not in ck.tensors
        p = prediction_of(ck, families.get("sdxl"))
    assert p.sigma_range == pytest.approx([0.002, 120.0])
    # and a single file with the markers gets the EDM scheduler in a folder
    from sdlens.testing.zoo_unet import build_single_file

    sd = {
        **build_single_file("sd1", dtype=torch.float16),
        "edm_vpred.sigma_max": torch.tensor(120.0),
        "edm_vpred.sigma_min": torch.tensor(0.002),
    }
    out = tmp_path / "edm"
    _convert(save_safetensors(sd, tmp_path / "m.safetensors"), out, layout="diffusers")
    c = _scheduler(out)
    assert (c.prediction_type, c.sigma_min, c.sigma_max) == ("v_prediction", pytest.approx(0.002), 120.0)
    # the float32 marker's value as its shortest decimal (0.002, not 0.0020000000949949026), σ_data 1 (ComfyUI's)
    from sdlens.arch.scheduler_classes import EDM_V_SIGMA_DATA

    raw = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (
        (raw["sigma_min"], raw["sigma_max"], raw["sigma_data"])
        == (0.002, 120.0, 1.0)
        == (0.002, 120.0, EDM_V_SIGMA_DATA)
    )


def test_convert_guess_is_recorded_not_promoted(tmp_path):
    """An SD2 file whose type is only the heuristic's: the folder's scheduler config says so, and converting
    back adds no marker (the file comes back unchanged)."""
    from sdlens.testing.zoo_unet import build_single_file

    sd = build_single_file("sd2", dtype=torch.float16)
    sd[SD2_PROBE] = (
        torch.randn(sd[SD2_PROBE].shape, generator=torch.Generator().manual_seed(1)) * 0.5
    ).half()
    src = save_safetensors(sd, tmp_path / "sd2.safetensors")
    folder = tmp_path / "dif"
    _convert(src, folder, layout="diffusers")
    cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert cfg["prediction_type"] == "v_prediction" and cfg["_sdlens_prediction"]["certainty"] == "heuristic"
    assert _scheduler(folder).prediction_type == "v_prediction"
    p = _of_folder(folder, "sd2")
    assert (p.type, p.certainty) == ("v_prediction", "heuristic")
    back = tmp_path / "back.safetensors"
    _convert(folder, back)
    assert set(_keys(back)) == set(_keys(src))


def test_convert_zero_terminal_snr_on_a_scheduler_without_it(tmp_path):
    """SD1's PNDM scheduler takes no rescale_betas_zero_snr: the folder gets Euler with it, and says so."""
    from sdlens.testing.zoo_unet import build_single_file

    sd = {**build_single_file("sd1", dtype=torch.float16), "v_pred": EMPTY, "ztsnr": EMPTY}
    src = save_safetensors(sd, tmp_path / "sd1.safetensors")
    folder = tmp_path / "dif"
    res = _convert(src, folder, layout="diffusers")
    assert any("PNDMScheduler takes no rescale_betas_zero_snr" in op for op in res.plan.operations)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "EulerDiscreteScheduler"]
    c = _scheduler(folder)
    assert (c.prediction_type, c.rescale_betas_zero_snr, c.timestep_spacing) == (
        "v_prediction",
        True,
        "trailing",
    )
    assert (c.beta_start, c.beta_end, c.beta_schedule) == (0.00085, 0.012, "scaled_linear")


def test_convert_edm_markers_playground(tmp_path):
    """edm_mean / edm_std: kept in float32 through --dtype fp16; a diffusers folder gets the EDM scheduler
    Playground v2.5 releases (not a DDPM one that would sample it wrongly)."""
    from sdlens.testing.zoo_unet import build_single_file

    sd = {
        **build_single_file("sdxl", dtype=torch.float32),
        "edm_mean": torch.tensor([0.5, -0.25, 0.125, 1.0]).reshape(1, 4, 1, 1),
        "edm_std": torch.tensor([4.0, 3.5, 3.25, 5.0]).reshape(1, 4, 1, 1),
    }
    src = save_safetensors(sd, tmp_path / "pg.safetensors")
    half = tmp_path / "pg16.safetensors"
    _convert(src, half, dtype="fp16")
    with open_checkpoint(half) as ck:
        assert ck.tensors["edm_mean"].dtype == "F32" and torch.equal(ck.read("edm_std"), sd["edm_std"])
        p = prediction_of(ck, families.get("playground_v25"))
    assert (p.type, p.certainty) == ("edm", "stated")
    folder = tmp_path / "dif"
    _convert(src, folder, layout="diffusers")
    c = _scheduler(folder)
    assert type(c).__name__ == "FrozenDict" and json.loads((folder / "model_index.json").read_text())[
        "scheduler"
    ] == [
        "diffusers",
        "EDMDPMSolverMultistepScheduler",
    ]
    assert (c.prediction_type, c.sigma_data, c.sigma_min, c.sigma_max) == ("epsilon", 0.5, 0.002, 80.0)


# --------------------------------------------------------------------------- review round: recorded configs


def _configs_meta(sched: object) -> dict[str, str]:
    return {"sdlens.diffusers_configs": json.dumps({"scheduler": sched})}


HOSTILE_RECORDED = {
    "str": "EulerDiscreteScheduler",
    "list": [1, 2],
    "noclass": {"prediction_type": "v_prediction"},
    "esc": {
        "_class_name": "EulerDiscreteScheduler\x1b[2J",
        "prediction_type": "v_prediction",
        "num_train_timesteps": "abc",
    },
    "badvalue": {"_class_name": "EulerDiscreteScheduler", "prediction_type": "v_prediction", "beta_end": "x"},
    "esc_value": {"_class_name": "EulerDiscreteScheduler", "prediction_type": "v\x1b[31m"},
    "flow": {"_class_name": "FlowMatchEulerDiscreteScheduler"},  # on SDXL, not a flow-matching model
}


@pytest.mark.parametrize("case", sorted(HOSTILE_RECORDED))
def test_recorded_scheduler_config_is_checked_before_use(tmp_path, case):
    from sdlens.analysis.recorded_configs import recorded_configs, recorded_scheduler

    meta = _configs_meta(HOSTILE_RECORDED[case])
    p = _pred(tmp_path, meta=meta)
    assert (p.type, p.certainty) == ("epsilon", "family default"), case  # nothing stated: the family's
    e = next(e for e in p.evidence if e.source == "sdlens.diffusers_configs")
    assert not e.counted and "dropped" in e.detail and "\x1b" not in json.dumps(p.to_dict())
    cfg, why = recorded_scheduler(meta, families.get("sdxl"))
    assert cfg is None and why.startswith(
        "the scheduler config recorded in sdlens.diffusers_configs is dropped"
    )
    assert "scheduler" not in recorded_configs(meta, families.get("sdxl"))  # convert uses the family's


def test_recorded_scheduler_config_kept_when_sound(tmp_path):
    from sdlens.analysis.recorded_configs import recorded_scheduler
    from sdlens.convert.options import CONFIGS_META

    good = {"_class_name": "EulerDiscreteScheduler", "prediction_type": "v_prediction"}
    assert recorded_scheduler(_configs_meta(good), families.get("sdxl")) == (good, "")
    p = _pred(tmp_path, meta=_configs_meta(good))
    assert (p.type, p.certainty) == ("v_prediction", "stated")
    flow = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}
    f = _pred(tmp_path, meta=_configs_meta(flow), family="sd3")
    assert (f.type, f.certainty) == ("flow", "stated")
    assert CONFIGS_META == "sdlens.diffusers_configs"  # one name, defined once (analysis.recorded_configs)


def test_convert_drops_a_hostile_recorded_scheduler(tmp_path):
    from sdlens.arch.schedulers import scheduler_config
    from sdlens.testing.zoo_unet import build_single_file

    sd = build_single_file("sd1", dtype=torch.float16)
    src = save_safetensors(sd, tmp_path / "h.safetensors", _configs_meta(HOSTILE_RECORDED["esc"]))
    folder = tmp_path / "dif"
    res = _convert(src, folder, layout="diffusers")
    assert any("is dropped (its _class_name is not a scheduler class" in op for op in res.plan.operations)
    cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    want = {**scheduler_config("sd1"), "_sdlens_prediction": cfg["_sdlens_prediction"]}
    assert cfg == want and cfg["_sdlens_prediction"]["certainty"] == "family default"
    assert _scheduler(folder).prediction_type == "epsilon"  # diffusers loads it


# --------------------------------------------------------------------------- review round: unknown values


def test_unknown_type_is_not_promoted_to_a_statement(tmp_path):
    """An SD2 file whose type nothing tells (no probe tensor): the folder's prediction_type is the family's
    filler, recorded as unknown, and converting back writes no v_pred marker."""
    from sdlens.testing.zoo_unet import build_single_file

    sd = build_single_file("sd2", dtype=torch.float16)
    del sd[SD2_PROBE]
    src = save_safetensors(sd, tmp_path / "sd2.safetensors")
    with open_checkpoint(src) as ck:
        assert prediction_of(ck, families.get("sd2")).certainty == "unknown"
    folder = tmp_path / "dif"
    _convert(src, folder, layout="diffusers")
    cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert cfg["_sdlens_prediction"]["certainty"] == "unknown"
    p = _of_folder(folder, "sd2")
    assert (p.type, p.certainty) == ("unknown", "unknown")
    back = tmp_path / "back.safetensors"
    _convert(folder, back)
    assert "v_pred" not in _keys(back)
    with open_checkpoint(back) as ck:
        assert prediction_of(ck, families.get("sd2")).certainty == "unknown"


@pytest.mark.parametrize(
    ("family", "want"),
    [
        ("sana", {"_class_name": "DPMSolverMultistepScheduler", "prediction_type": "flow_prediction"}),
        ("wan21_t2v_1_3b", {"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction"}),
        ("stable_cascade_c", {"_class_name": "DDPMWuerstchenScheduler"}),
    ],
)
def test_unknown_scheduler_classes_get_no_other_class_values(family, want):
    from sdlens.analysis.prediction import Prediction
    from sdlens.arch.schedulers import scheduler_config, scheduler_values_known
    from sdlens.convert.markers import fill_scheduler

    cfg = scheduler_config(family)
    assert cfg == {**want, "num_train_timesteps": 1000} and not scheduler_values_known(family)
    eps = Prediction("epsilon", "family default", True, [])
    assert fill_scheduler(cfg, eps) == (cfg, [])  # a class sdlens does not know is left as it is
    odd = {"_class_name": ["EulerDiscreteScheduler"]}
    assert fill_scheduler(odd, eps) == (odd, [])
    assert scheduler_values_known("sdxl") and scheduler_config("sdxl")["beta_schedule"] == "scaled_linear"


def test_convert_says_when_the_release_scheduler_values_are_unknown(tmp_path):
    """Wan's UniPC scheduler: sdlens does not know the release's values, so the folder gets the class with
    num_train_timesteps and flow_prediction only (never Euler's scaled-linear epsilon), and convert says so."""
    from sdlens.testing import zoo_new_b

    fam = families.get("wan21_t2v_1_3b")
    src = zoo_new_b.write_denoiser(
        tmp_path / "wan.safetensors", fam.id, layout="original", prefix=fam.single_file.get("denoiser", "")
    )
    folder = tmp_path / "dif"
    res = _convert(src, folder, layout="diffusers")
    cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert cfg == {
        "_class_name": "UniPCMultistepScheduler",
        "num_train_timesteps": 1000,
        "prediction_type": "flow_prediction",
    }
    assert any("are not known to sdlens" in op for op in res.plan.operations)
