"""``sdlens schedule``: each schedule equals what diffusers' own schedulers compute (the independent judge), a
file's buffers are named (and a tampered file's are not), the spacings' known flaws, and the command."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from sdlens.analysis import schedules as S
from sdlens.analysis.schedule_buffers import analyse_schedule
from sdlens.analysis.schedule_report import checkpoint_view, named, released, schedule_report
from sdlens.arch.schedulers import scheduler_config
from sdlens.errors import SdlensError
from sdlens.testing.writers import save_safetensors
from sdlens.testing.zoo_unet import build_single_file, schedule_buffers

TOL = 1e-6


def _run(*args: str):
    """The CLI in-process (typer's runner): exit code, stdout and stderr as a user sees them."""
    from typer.testing import CliRunner

    import sdlens.cli as cli_mod

    r = CliRunner().invoke(cli_mod.app, list(args), env={"COLUMNS": "100"})
    r.returncode = r.exit_code
    return r


STEPS = (20, 50)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import diffusers
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr


def _kwargs(s: S.Schedule, drop: tuple[str, ...] = ()) -> dict:
    return {k: v for k, v in s.config.items() if not k.startswith("_") and k not in drop}


def _close(ours, theirs, tol: float = TOL) -> None:
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert a.shape == b.shape
    assert np.array_equal(np.isfinite(a), np.isfinite(b))
    fin = np.isfinite(a)
    assert np.max(np.abs(a[fin] - b[fin]), initial=0.0) <= tol


@pytest.mark.parametrize("name", S.DISCRETE_NAMED)
def test_discrete_schedules_equal_diffusers(name):
    s = S.NAMED[name]
    ddpm = diffusers.DDPMScheduler(**_kwargs(s, ("set_alpha_to_one",)))
    curve = S.train_curve(s)
    _close(curve.beta, ddpm.betas)
    _close(curve.alpha_bar, ddpm.alphas_cumprod)
    for steps in STEPS:
        for spacing in S.SPACINGS:
            cfg = {**s.config, "timestep_spacing": spacing}
            euler = diffusers.EulerDiscreteScheduler(
                **_kwargs(S.Schedule(name, name, "discrete", cfg), ("set_alpha_to_one",))
            )
            euler.set_timesteps(steps)
            ts = S.discrete_timesteps(cfg, steps, spacing, integer=False)
            _close(ts, euler.timesteps)
            _close(S.euler_sigmas(cfg, ts), euler.sigmas)
            ddim = diffusers.DDIMScheduler(**_kwargs(S.Schedule(name, name, "discrete", cfg)))
            ddim.set_timesteps(steps)
            ti = S.discrete_timesteps(cfg, steps, spacing, integer=True)
            assert ti.tolist() == ddim.timesteps.tolist()
            for eta in S.ETAS:  # DDIM's σ_t(η) = η·√variance(t, t − T/N), as DDIMScheduler.step computes it
                ref = [
                    eta * float(ddim._get_variance(t, t - 1000 // steps)) ** 0.5
                    for t in ddim.timesteps.tolist()
                ]
                _close(S.ddim_sigmas(cfg, ti, steps, eta), ref)
    # Euler's σ in the sampler equals the σ of the curve at those timesteps (σ = √((1 − ᾱ) / ᾱ))
    if not s.config.get("rescale_betas_zero_snr"):
        _close(curve.sigma[-1], float(euler.sigmas.max()), 1e-3 * float(curve.sigma[-1]))


def test_zero_terminal_snr_rescale_is_exact_and_matches_diffusers():
    for base in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        s = S.NAMED[f"{base}+ztsnr"]
        curve = S.train_curve(s)
        assert curve.alpha_bar[-1] == 0.0  # exactly zero, not merely small
        assert curve.snr[-1] == 0.0 and np.isneginf(curve.log_snr[-1]) and np.isinf(curve.sigma[-1])
        ref = rescale_zero_terminal_snr(S.discrete_betas(S.NAMED[base].config))
        _close(curve.beta, ref)
        # ᾱ_0 is kept: the rescale shifts and scales √ᾱ, the first step's signal is untouched
        assert curve.alpha_bar[0] == pytest.approx(S.train_curve(S.NAMED[base]).alpha_bar[0], rel=1e-6)
        assert s.config["timestep_spacing"] == "trailing"


def test_flow_shift_schedules_equal_diffusers():
    for name in ("flow", "flow-shift3"):
        s = S.NAMED[name]
        fm = diffusers.FlowMatchEulerDiscreteScheduler(**_kwargs(s))
        _close(S._flow_train_sigmas(s, None), fm.sigmas)
        for steps in STEPS:
            fm.set_timesteps(steps)
            ts, sig = S.flow_sigmas(s, steps, None)
            _close(ts, fm.timesteps, 1e-4)  # timesteps are σ·1000 in float32
            _close(sig, fm.sigmas)


@pytest.mark.parametrize("res", [(1024, 1024), (512, 512), (1360, 768)])
def test_flux_dynamic_shift_equals_diffusers(res):
    s = released("flux")
    assert s.config["use_dynamic_shifting"] and s.kind == "flow"
    fm = diffusers.FlowMatchEulerDiscreteScheduler(**_kwargs(s))
    seq = (res[1] // 16) * (res[0] // 16)  # FluxPipeline: packed 2×2 latents of an 8× VAE
    mu = calculate_shift(seq, 256, 4096, 0.5, 1.15)
    assert S.dynamic_mu(s, res) == pytest.approx(mu, rel=1e-12)
    for steps in (*STEPS, 28):
        fm.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)  # what FluxPipeline passes
        ts, sig = S.flow_sigmas(s, steps, res)
        _close(sig, fm.sigmas)
        _close(ts, fm.timesteps, 1e-4)
    # a larger image shifts the schedule towards noise: the middle step keeps more noise at 1024² than 512²
    mid = lambda r: S.flow_sigmas(s, 20, r)[1][10]  # noqa: E731
    assert mid((1024, 1024)) > mid((512, 512))


def test_edm_karras_equals_diffusers():
    s = released("playground")
    assert s.kind == "edm" and s.config["sigma_max"] == 80.0 and s.config["rho"] == 7.0
    edm = diffusers.EDMDPMSolverMultistepScheduler(**_kwargs(s, ("num_train_timesteps",)))
    for steps in STEPS:
        edm.set_timesteps(steps)
        ts, sig = S.edm_sigmas(s, steps)
        _close(sig, edm.sigmas)
        _close(ts, edm.timesteps)
    assert sig[0] == pytest.approx(80.0) and sig[-2] == pytest.approx(0.002) and sig[-1] == 0.0


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_released_unet_schedules_equal_their_scheduler_class(family):
    cfg = scheduler_config(family)
    s = released(family)
    cls = getattr(diffusers, cfg["_class_name"])
    sch = cls.from_config({k: v for k, v in cfg.items() if k != "_class_name"})
    _close(S.train_curve(s).alpha_bar, sch.alphas_cumprod)
    assert s.config["beta_schedule"] == "scaled_linear" and s.config["timestep_spacing"] == "leading"


def test_spacing_flaws_are_the_known_ones():
    cfg = S.NAMED["scaled_linear"].config  # steps_offset 1, as the SD releases
    lead = S.discrete_timesteps(cfg, 50, "leading", integer=True)
    assert lead[0] == 49 * 20 + 1 == 981 and lead[-1] == 1  # never t = 999
    trail = S.discrete_timesteps(cfg, 50, "trailing", integer=True)
    assert trail[0] == 999 and trail[-1] == 19
    lin = S.discrete_timesteps(cfg, 50, "linspace", integer=True)
    assert lin[0] == 999 and lin[-1] == 0
    (v,) = schedule_report(["scaled_linear"], steps=50)
    rows = {r.spacing: r for r in v.sampling}
    assert not rows["leading"].reaches_end and "t = 981" in rows["leading"].note
    assert rows["trailing"].reaches_end and rows["linspace"].reaches_end
    assert rows["trailing"].ddim_sigma["eta=0"] == [0.0] * 50  # η = 0: deterministic DDIM
    assert all(x > 0 for x in rows["trailing"].ddim_sigma["eta=1"][:-1])


def test_names_and_aliases():
    assert named("cosine").name == "squaredcos_cap_v2"
    assert named("scaled_linear-ztsnr").name == named("sd_ztsnr").name == "scaled_linear+ztsnr"
    assert named("nonsense") is None and released("nonsense") is None
    assert released("sdxl").name == "sdxl" and released("sd3").config["shift"] == 3.0
    assert released("flux-schnell").config["use_dynamic_shifting"] is False
    with pytest.raises(SdlensError, match="sdlens does not model"):
        released("wan")  # UniPC in flow mode: not modelled, said so rather than guessed
    with pytest.raises(SdlensError, match="is no named schedule, family or existing file"):
        schedule_report(["not-a-schedule"])


# --------------------------------------------------------------------------- a file's own buffers


@pytest.fixture(scope="module")
def sd1_dict():
    return build_single_file("sd1", dtype=torch.float16)


def test_standard_buffers_are_scaled_linear_in_any_precision():
    b = schedule_buffers()
    for dt, name in (
        (torch.float64, "F64"),
        (torch.float32, "F32"),
        (torch.float16, "F16"),
        (torch.bfloat16, "BF16"),
    ):
        stored = (b["betas"].to(dt).float().numpy(), b["alphas_cumprod"].to(dt).float().numpy())
        info = analyse_schedule(*stored, dtype=name)
        assert info.match == "scaled_linear" and info.consistent, dt
        if (
            dt == torch.bfloat16
        ):  # 8 bits of mantissa round ᾱ by 0.4 %: beyond fp16's tolerance, within bf16's
            assert analyse_schedule(*stored, dtype="F16").match is None
            continue
        assert info.description.startswith(
            "scaled_linear, 1000 steps, β 0.00085 → 0.012; terminal SNR 0.0047, not zero"
        )


def test_tampered_and_other_buffers():
    b = schedule_buffers()
    ac = b["alphas_cumprod"].clone()
    ac[600:] *= 1.01  # 1 % more signal kept late in the schedule
    info = analyse_schedule(b["betas"].numpy(), ac.numpy())
    assert info.match is None and info.kind == "non-standard" and info.consistent is False
    assert "disagree" in info.description and "1.0%" in info.description
    # the diffusion notes' DDPMScheduler(beta_start=0.001, beta_end=0.004): linear, not a named schedule
    own = analyse_schedule(np.linspace(0.001, 0.004, 1000), None)
    assert own.match is None and own.kind == "linear with its own β endpoints"
    zt = S.train_curve(S.NAMED["scaled_linear+ztsnr"])
    info = analyse_schedule(zt.beta, zt.alpha_bar)
    assert (
        info.match == "scaled_linear+ztsnr"
        and info.zero_terminal_snr
        and "terminal SNR zero" in info.description
    )
    cos = S.train_curve(S.NAMED["squaredcos_cap_v2"])
    assert analyse_schedule(cos.beta, None).match == "squaredcos_cap_v2"
    # hostile tables: NaN, one value, mismatched lengths — no crash, nothing named
    assert analyse_schedule(np.full(1000, np.nan), None).kind == "non-standard"
    assert analyse_schedule(np.array([0.5]), None) is None
    assert analyse_schedule(np.zeros(10), np.zeros(11)) is None


def test_checkpoint_buffers_named_and_tampered_not(tmp_path, sd1_dict):
    save_safetensors(sd1_dict, tmp_path / "std.safetensors")
    v = checkpoint_view(tmp_path / "std.safetensors", steps=None, res=None)
    assert v.file["family"] == "sd1" and v.file["buffers"].match == "scaled_linear"
    # the buffers are SD 1.5's released β table, so the view takes that release's sampler settings
    assert v.schedule.name == "sd1" and v.steps == 50 and v.schedule.config["steps_offset"] == 1
    assert v.schedule.config["set_alpha_to_one"] is False and v.schedule.source.startswith("buffers of")
    (by_name,) = schedule_report(["sd1"], steps=50)
    assert v.row("leading").ddim_sigma == by_name.row("leading").ddim_sigma  # the same model by either route
    sd = dict(sd1_dict)
    betas = sd["betas"].double().clone()
    betas[800:] *= 1.2
    sd["betas"] = betas.to(sd["betas"].dtype)
    sd["alphas_cumprod"] = torch.cumprod(1 - betas, 0).to(sd["alphas_cumprod"].dtype)
    save_safetensors(sd, tmp_path / "tampered.safetensors")
    v = checkpoint_view(tmp_path / "tampered.safetensors", steps=20, res=None)
    info = v.file["buffers"]
    assert info.match is None and info.kind == "non-standard" and info.consistent
    # the sampler view then runs on the file's own β table, as diffusers' trained_betas would
    assert v.schedule.name == "own buffers"
    _close(S.train_curve(v.schedule).alpha_bar, sd["alphas_cumprod"].double().numpy(), 1e-3)


def test_checkpoint_without_buffers_uses_its_release_and_ztsnr_marker(tmp_path):
    sd = build_single_file("sdxl", dtype=torch.float16)
    assert "betas" not in sd
    sd["ztsnr"] = torch.tensor([])
    sd["v_pred"] = torch.tensor([])
    save_safetensors(sd, tmp_path / "z.safetensors")
    v = checkpoint_view(tmp_path / "z.safetensors", steps=None, res=None)
    assert v.schedule.name == "sdxl+ztsnr" and v.train["zero_terminal_snr"]
    assert v.schedule.config["timestep_spacing"] == "trailing" and v.sampling[0].spacing == "leading"
    assert any(m.startswith("ztsnr") for m in v.file["markers"])
    assert v.prediction.type == "v_prediction"


def test_cli_json_plot_and_errors(tmp_path, cli, sd1_dict):
    save_safetensors(sd1_dict, tmp_path / "m.safetensors")
    png = tmp_path / "s.png"
    r = cli(
        "schedule",
        str(tmp_path / "m.safetensors"),
        "flux",
        "edm",
        "--steps",
        "20",
        "--json",
        "--plot",
        str(png),
    )
    assert r.returncode == 0, r.stderr

    def no_constants(x):
        raise AssertionError(f"non-JSON constant {x}")

    views = json.loads(r.stdout, parse_constant=no_constants)  # strict JSON: no Infinity / NaN
    assert [v["schedule"]["name"] for v in views] == ["sd1", "flux_dev", "edm"]
    assert views[0]["file"]["buffers"]["match"] == "scaled_linear"
    assert len(views[1]["sampling"][0]["sigmas"]) == 21 and views[1]["res"] == [1024, 1024]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    r = _run("schedule", "scaled_linear+ztsnr", "--steps", "10", "--spacing", "leading")
    assert (
        r.returncode == 0
        and "leading spacing starts at t = 901" in r.stdout
        and "zero terminal SNR" in r.stdout
    )
    r = _run("schedule", "nonsense-\x1b[31m")
    assert r.returncode == 2 and "\x1b" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _run("schedule", "sdxl", "--spacing", "sideways")
    assert r.returncode == 2 and "--spacing" in r.stderr


def test_folder_states_its_schedule_and_hostile_configs_are_one_line(zoo, tmp_path):
    import shutil

    src = zoo["sdxl_diffusers"].path
    v = checkpoint_view(src, steps=None, res=None)
    cfg = json.loads((src / "scheduler" / "scheduler_config.json").read_text())
    assert v.schedule.source.endswith("scheduler/scheduler_config.json")
    assert v.schedule.config["_class_name"] == cfg["_class_name"]
    assert v.schedule.config["beta_schedule"] == cfg["beta_schedule"]
    folder = tmp_path / "f"
    shutil.copytree(src, folder)
    sched = folder / "scheduler" / "scheduler_config.json"
    for bad in (
        {**cfg, "num_train_timesteps": 10**12},
        {**cfg, "trained_betas": ["x"] * 1000},
        {**cfg, "beta_start": "0.1\x1b[2J"},
        {**cfg, "beta_schedule": "quadratic"},
    ):
        sched.write_text(json.dumps(bad))
        r = _run("schedule", str(folder))
        assert r.returncode == 2, r.stdout
        assert (
            len(r.stderr.strip().splitlines()) == 1
            and "scheduler config" in r.stderr
            and "\x1b" not in r.stderr
        )


def test_flux_schnell_uses_the_pipeline_sigmas_unshifted():
    s = released("flux-schnell")
    assert s.pipeline_sigmas and not s.config["use_dynamic_shifting"] and s.config["shift"] == 1.0
    fm = diffusers.FlowMatchEulerDiscreteScheduler(**_kwargs(s))
    fm.set_timesteps(sigmas=np.linspace(1.0, 1 / 4, 4))  # what FluxPipeline passes for 4 steps
    ts, sig = S.flow_sigmas(s, 4, (1024, 1024))
    _close(sig, fm.sigmas)
    assert sig.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_class_defaults_are_the_classes_own():
    """sdlens.arch.scheduler_classes is data: each entry equals the class's __init__ defaults in diffusers."""
    import inspect

    from sdlens.arch.scheduler_classes import CLASSES

    for name, entry in CLASSES.items():
        params = inspect.signature(getattr(diffusers, name).__init__).parameters
        for key, value in {**entry.defaults, **entry.unmodelled}.items():
            assert params[key].default == value, (name, key)
        assert ("rescale_betas_zero_snr" in params) == entry.zero_snr, name


def test_folder_configs_take_their_class_defaults_and_unmodelled_options_are_refused():
    cfg = {
        "_class_name": "EulerDiscreteScheduler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
    }
    s = S.from_config(cfg, "x", "x", "x")
    euler = diffusers.EulerDiscreteScheduler.from_config(cfg)
    euler.set_timesteps(20)
    ts = S.discrete_timesteps(s.config, 20, s.config["timestep_spacing"], integer=False)
    assert s.config["timestep_spacing"] == "linspace"  # Euler's own default, not DDPM's "leading"
    _close(S.euler_sigmas(s.config, ts), euler.sigmas)
    heun = S.from_config({"_class_name": "HeunDiscreteScheduler"}, "h", "h", "h")
    _close(S.train_curve(heun).alpha_bar, diffusers.HeunDiscreteScheduler().alphas_cumprod)
    pndm = S.from_config({"_class_name": "PNDMScheduler", "rescale_betas_zero_snr": True}, "p", "p", "p")
    assert "rescale_betas_zero_snr" not in pndm.config  # PNDM takes no such argument
    with pytest.raises(SdlensError, match="use_karras_sigmas = True changes the σ"):
        S.from_config({**cfg, "use_karras_sigmas": True}, "k", "k", "k")
    with pytest.raises(SdlensError, match="shift_terminal"):
        S.from_config(
            {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift_terminal": 0.1}, "f", "f", "f"
        )
    for bad, words in (
        ({"steps_offset": 10**30}, "steps_offset"),
        ({"steps_offset": -5}, "steps_offset"),
        ({"beta_start": -0.1}, "beta_start"),
        ({"beta_end": 1e300}, "beta_end"),
        ({"rescale_betas_zero_snr": "true"}, "true or false"),
        ({"num_train_timesteps": 10**6}, "num_train_timesteps"),
    ):
        with pytest.raises(SdlensError, match=words):
            S.from_config({**cfg, **bad}, "b", "b", "b")
    flow = {"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}
    with pytest.raises(SdlensError, match="base_image_seq_len equals"):
        S.from_config({**flow, "base_image_seq_len": 256, "max_image_seq_len": 256}, "d", "d", "d")


def test_edge_step_counts_are_stated_not_crashed():
    (v,) = schedule_report(["sd1"], steps=1000)  # leading with steps_offset 1 visits t = 1000
    lead = v.row("leading")
    assert lead.ddim_timesteps == [] and "outside 0 … 999" in lead.note
    (v,) = schedule_report(
        ["scaled_linear+ztsnr"], steps=61
    )  # trailing rounds to 62 timesteps, the last t = −1
    trail = v.row("trailing")
    assert (
        len(trail.timesteps) == 62
        and "62 timesteps for 61 steps" in trail.note
        and trail.ddim_timesteps == []
    )
    euler = diffusers.EulerDiscreteScheduler(**_kwargs(S.NAMED["scaled_linear+ztsnr"], ("set_alpha_to_one",)))
    euler.set_timesteps(61)
    _close(trail.timesteps, euler.timesteps)  # the same flaw as diffusers', shown as diffusers runs it
    (v,) = schedule_report(["flux"], steps=4, res=(16384, 16384))  # μ beyond e^μ's range: σ = 1, no overflow
    assert v.sampling[0].sigmas[:-1] == [1.0] * 4
    with pytest.raises(SdlensError, match="--res"):
        schedule_report(["flux"], res=(10**6, 10**6))


def test_edm_exponential_equals_diffusers():
    cfg = {"_class_name": "EDMDPMSolverMultistepScheduler", "sigma_schedule": "exponential"}
    s = S.from_config(cfg, "e", "e", "e")
    edm = diffusers.EDMDPMSolverMultistepScheduler(sigma_schedule="exponential")
    for steps in (1, 20, 999):
        edm.set_timesteps(steps)
        _close(S.edm_sigmas(s, steps)[1], edm.sigmas)


def test_released_records_state_their_values():
    assert released("auraflow").config["shift"] == 1.73  # ComfyUI's AuraFlow sampling settings
    hy = released("hunyuandit")
    assert (hy.config["beta_start"], hy.config["beta_end"]) == (0.00085, 0.018)
    assert hy.config["_class_name"] == "DDPMScheduler"


def test_edm_vpred_file_and_text_encoder_only_file(tmp_path):
    sd = build_single_file("sdxl", dtype=torch.float16)
    sd["edm_vpred.sigma_max"] = torch.tensor([120.0])
    sd["edm_vpred.sigma_min"] = torch.tensor([0.002])
    save_safetensors(sd, tmp_path / "cosxl.safetensors")
    v = checkpoint_view(tmp_path / "cosxl.safetensors", steps=10, res=None)
    assert v.schedule.kind == "edm" and v.schedule.config["sigma_data"] == 1.0
    assert v.sampling[0].sigmas[0] == pytest.approx(120.0) and v.prediction.type == "v_prediction"
    te = {k: t for k, t in sd.items() if k.startswith("conditioner.")}
    save_safetensors(te, tmp_path / "te.safetensors")
    with pytest.raises(SdlensError, match="holds no denoiser"):
        checkpoint_view(tmp_path / "te.safetensors", steps=None, res=None)
