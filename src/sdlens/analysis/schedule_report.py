"""``sdlens schedule``: the noise schedules of named schedules, released families and checkpoints, side by side —
the training curve (β, ᾱ, SNR, σ), the steps a sampler with N steps visits under each spacing, DDIM's σ(η),
and for a checkpoint its own buffers, markers and prediction-type evidence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlens.analysis import schedules as S
from sdlens.analysis.schedule_buffers import Buffers, read_buffers
from sdlens.arch import families
from sdlens.arch import registry as R
from sdlens.arch.scheduler_classes import EDM_V_SIGMA_DATA
from sdlens.arch.schedulers import scheduler_config
from sdlens.errors import SdlensError

DEFAULT_RES = (1024, 1024)
_ALIASES = {"cosine": "squaredcos_cap_v2", "ddpm": "linear", "sd": "scaled_linear", "karras": "edm"}


@dataclass
class SpacingRow:
    """The steps of one sampler run: timesteps (most noise first) and the σ each step starts from."""

    spacing: str  # leading | trailing | linspace, or the schedule's own for flow / EDM
    timesteps: list[float]
    sigmas: list[float]  # Euler's σ (discrete), flow σ or EDM σ, with the final one
    first_t: float
    reaches_end: bool  # the first step is the noisiest training timestep
    ddim_timesteps: list[int] = field(default_factory=list)
    ddim_sigma: dict[str, list[float]] = field(default_factory=dict)  # "eta=0" / "eta=1" -> σ_t(η)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ScheduleView:
    """One schedule, computed."""

    schedule: S.Schedule
    train: dict[str, Any]  # summary of the training curve
    curve: S.Curve
    steps: int
    res: tuple[int, int]
    sampling: list[SpacingRow]
    prediction: Any = None  # sdlens.analysis.prediction.Prediction, or the family default in words
    file: dict[str, Any] | None = None  # a checkpoint: path, family, buffers, markers
    notes: list[str] = field(default_factory=list)

    def row(self, spacing: str) -> SpacingRow:
        return next((r for r in self.sampling if r.spacing == spacing), self.sampling[0])

    def to_dict(self) -> dict[str, Any]:
        c = self.curve
        curve = {
            "t": c.t.tolist(),
            "beta": c.beta.tolist(),
            "alpha_bar": c.alpha_bar.tolist(),
            "log_snr": c.log_snr.tolist(),
            "sigma": c.sigma.tolist(),
        }
        if c.flow_sigma is not None:
            curve["flow_sigma"] = c.flow_sigma.tolist()
        if c.edm_sigma is not None:
            curve["edm_sigma"] = c.edm_sigma.tolist()
        return {
            "schedule": self.schedule.to_dict(),
            "train": self.train,
            "steps": self.steps,
            "res": list(self.res),
            "sampling": [r.to_dict() for r in self.sampling],
            "prediction": self.prediction,
            "file": self.file,
            "notes": self.notes,
            "curve": curve,
        }


# --------------------------------------------------------------------------- resolving names


def named(name: str) -> S.Schedule | None:
    """A named schedule (``scaled_linear``, ``cosine+ztsnr``, ``flow-shift3`` …), None if the name is not one."""
    key = name.strip().lower().replace("-ztsnr", "+ztsnr").replace("_ztsnr", "+ztsnr")
    base, plus, rest = key.partition("+")
    key = _ALIASES.get(base, base) + plus + rest
    return S.NAMED.get(key)


def released(name: str) -> S.Schedule | None:
    """The schedule of a family's released scheduler config (``sdxl``, ``flux``, ``playground`` …)."""
    fam = families.get(families.resolve(name))
    if fam is None or fam.pipeline is None:
        return None
    pipe = fam.pipeline
    kind = S.kind_of({"_class_name": pipe.scheduler, **pipe.scheduler_config})
    if kind is None or (kind == "discrete" and pipe.prediction == "flow"):
        raise SdlensError(
            None,
            f"{pipe.name}: sdlens does not model its {pipe.scheduler or 'unnamed'} scheduler's schedule"
            + (" in flow-matching mode" if pipe.prediction == "flow" else "")
            + " (it models the DDPM-family β schedules, FlowMatchEulerDiscreteScheduler and EDM)",
        )
    return S.from_config(
        scheduler_config(fam.id),
        fam.id,
        f"{pipe.name} (its {pipe.scheduler or 'scheduler'} config)",
        f"family {fam.id}: the record's scheduler config (sdlens.arch.schedulers)",
        pipeline_sigmas=pipe.sigmas == "linspace",
    )


def _family_prediction(fam_id: str | None) -> str | None:
    fam = families.get(fam_id) if fam_id else None
    if fam is None or fam.pipeline is None:
        return None
    return f"{fam.pipeline.prediction} (the {fam.pipeline.name} release's)"


# --------------------------------------------------------------------------- computing


def _train_summary(s: S.Schedule, c: S.Curve) -> dict[str, Any]:
    a0, at = float(c.alpha_bar[0]), float(c.alpha_bar[-1])
    out: dict[str, Any] = {
        "timesteps": s.num_train_timesteps,
        "beta_start": float(c.beta[0]),
        "beta_end": float(c.beta[-1]),
        "alpha_bar_0": a0,
        "alpha_bar_T": at,
        "terminal_snr": at / (1 - at) if at < 1 else float("inf"),
        "zero_terminal_snr": at == 0.0,
        "sigma_min": float(c.sigma[0]),
        "sigma_max": float(c.sigma[-1]),
    }
    if c.flow_sigma is not None:
        out["flow_sigma_range"] = [float(c.flow_sigma[0]), float(c.flow_sigma[-1])]
    if c.edm_sigma is not None:
        out["edm_sigma_range"] = [float(c.edm_sigma[0]), float(c.edm_sigma[-1])]
    return out


def _discrete_rows(s: S.Schedule, steps: int) -> list[SpacingRow]:
    n = s.num_train_timesteps
    rows = []
    for spacing in S.SPACINGS:
        ts = S.discrete_timesteps(s.config, steps, spacing, integer=False)
        ti = S.discrete_timesteps(s.config, steps, spacing, integer=True)
        first = float(ts[0])
        row = SpacingRow(
            spacing,
            [float(t) for t in ts],
            [float(x) for x in S.euler_sigmas(s.config, ts)],
            first,
            first >= n - 1,
        )
        outside = [int(t) for t in ti if not 0 <= t < n]
        notes = []
        if len(ti) != steps:
            notes.append(
                f"{spacing} spacing gives {len(ti)} timesteps for {steps} steps (diffusers' rounding)"
            )
        if outside:  # DDIM's step fails there (Euler clamps σ): said, not computed
            notes.append(
                f"{spacing} spacing visits t = {', '.join(map(str, outside[:3]))}, outside 0 … {n - 1}: DDIM cannot "
                "step there (σ(η) not computed; Euler's σ is clamped to the table's end)"
            )
        else:
            row.ddim_timesteps = [int(t) for t in ti]
            row.ddim_sigma = {
                f"eta={eta:g}": S.ddim_sigmas(s.config, ti, steps, eta).tolist() for eta in S.ETAS
            }
        if not row.reaches_end:
            notes.append(
                f"{spacing} spacing starts at t = {first:g}, not t = {n - 1}: the first step never starts from "
                "the noisiest training timestep (Lin et al. 2023, Table 2)"
            )
        row.note = "; ".join(notes)
        rows.append(row)
    return rows


def _continuous_row(s: S.Schedule, steps: int, res: tuple[int, int]) -> SpacingRow:
    if s.kind == "flow":
        ts, sig = S.flow_sigmas(s, steps, res)
        how = "flow matching"
    else:
        ts, sig = S.edm_sigmas(s, steps)
        how = "Karras σ"
    return SpacingRow(
        "own",
        ts.tolist(),
        sig.tolist(),
        float(ts[0]),
        True,
        note=f"{how}: --spacing does not apply (the sampler spaces σ itself)",
    )


def _notes(s: S.Schedule, train: dict[str, Any], res: tuple[int, int]) -> list[str]:
    notes = []
    if s.kind == "discrete":
        at = train["alpha_bar_T"]
        if train["zero_terminal_snr"]:
            notes.append(
                "zero terminal SNR: ᾱ_T = 0, the last timestep is pure noise. ε-prediction is undefined there: "
                "such models are trained with v-prediction and sampled with trailing spacing; diffusers' Euler sets "
                "ᾱ_T = 2⁻²⁴ so that σ_T stays finite (4096)"
            )
        else:
            notes.append(
                f"terminal SNR {train['terminal_snr']:.2g}, not zero: at t = T the latent still holds "
                f"√ᾱ_T = {at**0.5:.3f} of the image, which the model learns to keep (the mid-brightness bias "
                "Lin et al. 2023 describe)"
            )
    elif s.kind == "flow" and s.config.get("use_dynamic_shifting"):
        notes.append(
            f"resolution-dependent shift at {res[0]}×{res[1]}: {S.image_seq_len(s, res)} image tokens, "
            f"μ = {S.dynamic_mu(s, res):.4f} (σ' = e^μ / (e^μ + 1/σ − 1))"
        )
    elif s.kind == "flow":
        notes.append(f"shift {float(s.config['shift']):g}: σ' = shift·σ / (1 + (shift − 1)·σ)")
    else:
        notes.append(
            f"EDM: σ from {float(s.config['sigma_max']):g} to {float(s.config['sigma_min']):g} "
            f"(ρ {float(s.config['rho']):g}); ᾱ = 1 / (1 + σ²); timesteps are ¼·ln σ"
        )
    return notes


def view(
    s: S.Schedule, *, steps: int, res: tuple[int, int], prediction: Any = None, file: dict | None = None
) -> ScheduleView:
    """Compute one schedule at ``steps`` sampling steps (``res`` = (width, height), for FLUX's shift)."""
    curve = S.train_curve(s, res)
    train = _train_summary(s, curve)
    rows = _discrete_rows(s, steps) if s.kind == "discrete" else [_continuous_row(s, steps, res)]
    return ScheduleView(s, train, curve, steps, res, rows, prediction, file, _notes(s, train, res))


# --------------------------------------------------------------------------- checkpoints


def _same_betas(a: S.Schedule, b: S.Schedule) -> bool:
    def table(s: S.Schedule) -> tuple:
        c = s.config
        rescale = bool(c.get("rescale_betas_zero_snr"))
        return c.get("beta_schedule"), c.get("beta_start"), c.get("beta_end"), rescale, c.get("trained_betas")

    return a.kind == b.kind == "discrete" and table(a) == table(b)


def _release_of(fam) -> tuple[S.Schedule | None, str | None]:
    """The family's released schedule, or why there is none."""
    if fam is None or fam.pipeline is None:
        return None, "no known family"
    try:
        return released(fam.id), None
    except SdlensError as e:
        return None, e.problem


def _from_buffers(bufs: Buffers, release: S.Schedule | None, name: str, notes: list[str]) -> S.Schedule:
    """The schedule a file's usable buffers hold: its family's release where the β table is the release's (so the
    sampler settings are the release's too), else the named schedule, else the file's own table."""
    info = bufs.info
    notes.append(f"its schedule buffers: {info.description}")
    where = f"buffers of {name}"
    if info.match is not None:
        base = S.NAMED[info.match]
        base = S.Schedule(
            base.name, base.label, "discrete", {**base.config, "num_train_timesteps": info.timesteps}, where
        )
        if (
            release is not None
            and _same_betas(base, release)
            and release.num_train_timesteps == info.timesteps
        ):
            notes.append(
                f"the buffers are the {release.label.split(' (')[0]} release's schedule: its sampler settings"
            )
            return S.Schedule(release.name, release.label, "discrete", release.config, where)
        return base
    cfg = {
        **S.NAMED["scaled_linear"].config,
        "num_train_timesteps": bufs.betas.size,
        "trained_betas": bufs.betas.tolist(),
    }
    return S.Schedule("own buffers", f"{name}'s own schedule ({info.kind})", "discrete", cfg, where)


def checkpoint_view(path: str | Path, *, steps: int | None, res: tuple[int, int] | None) -> ScheduleView:
    """The schedule a checkpoint carries or implies: a diffusers folder's scheduler config; an EDM v-prediction
    file's σ range; its own β / ᾱ buffers when usable; else its family's released schedule (rescaled to zero
    terminal SNR where the prediction evidence says so)."""
    from sdlens.analysis.prediction import folder_scheduler_config, prediction_of
    from sdlens.arch.identify import identify
    from sdlens.io.open import open_checkpoint

    with open_checkpoint(path) as ckpt:
        ident = identify(ckpt.tensors, ckpt.configs, ckpt.metadata)
        if ident.kind == "lora":
            raise SdlensError(Path(path), "a LoRA carries no noise schedule; name its base model instead")
        fam = ident.record
        comps = ident.split.components
        bufs = read_buffers(ckpt)
        markers = [k for k in ckpt.tensors if k in R.MARKER_KEYS]
        pred = prediction_of(ckpt, fam)
        folder_cfg = folder_scheduler_config(ckpt)
    name = Path(path).name
    file = {
        "path": str(path),
        "family": fam.id if fam else None,
        "family_name": fam.name if fam else None,
        "buffers": bufs.info,
        "buffer_problem": bufs.problem,
        "markers": [f"{k}: {R.MARKER_KEYS[k]}" for k in markers],
    }
    release, why_not = _release_of(fam)
    notes: list[str] = []
    if isinstance(folder_cfg, dict):  # a diffusers folder states its schedule
        where = f"{name}/scheduler/scheduler_config.json"
        s = S.from_config(
            folder_cfg,
            "folder scheduler",
            where,
            where,
            pipeline_sigmas=bool(release and release.pipeline_sigmas),
        )
        notes.append(
            f"the folder's scheduler config: {str(folder_cfg.get('_class_name', 'no class named'))[:80]}"
        )
    elif getattr(
        pred, "sigma_range", None
    ):  # EDM v-prediction markers (CosXL): continuous σ, as ComfyUI samples
        lo, hi = pred.sigma_range
        cfg = {
            "_class_name": "EDMEulerScheduler",
            "sigma_min": lo,
            "sigma_max": hi,
            "sigma_data": EDM_V_SIGMA_DATA,
        }
        s = S.from_config(
            cfg, "edm (from the file's markers)", f"EDM σ {lo:.3g} → {hi:.3g} (edm_vpred markers)", name
        )
        notes.append(
            "edm_vpred markers: sampled on continuous EDM σ (σ_data 1, as ComfyUI), not the family's β table"
        )
    elif bufs.info is not None and bufs.betas is not None:
        s = _from_buffers(bufs, release, name, notes)
        if pred.zero_terminal_snr and not bufs.zero_terminal_snr:
            notes.append(
                "the prediction evidence says zero terminal SNR, but the stored buffers are not rescaled: ComfyUI "
                "samples it rescaled (its zsnr flag), A1111 samples the stored buffers"
            )
    elif "denoiser" not in comps:
        parts = ", ".join(sorted(comps)) or "no model components"
        raise SdlensError(
            Path(path),
            f"holds no denoiser ({parts}): a noise schedule belongs to a model; name its base model",
        )
    else:
        if release is None:
            raise SdlensError(
                Path(path), f"no usable schedule buffers and no released schedule to fall back on ({why_not})"
            )
        s = release
        notes.append(
            f"its schedule buffers are unusable ({bufs.problem}): the {fam.name} release's schedule"
            if bufs.problem
            else f"the file carries no schedule buffers: the {fam.name} release's schedule"
        )
        if pred.zero_terminal_snr and s.kind == "discrete":
            cfg = {**s.config, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
            s = S.Schedule(
                f"{s.name}+ztsnr", f"{s.label}, rescaled to zero terminal SNR", s.kind, cfg, s.source
            )
            notes.append(
                "zero terminal SNR (see the prediction evidence): the rescaled schedule, trailing spacing"
            )
    steps = steps or (fam.pipeline.steps if fam and fam.pipeline else 50)
    res = res or (tuple(fam.pipeline.res) if fam and fam.pipeline else DEFAULT_RES)
    v = view(s, steps=steps, res=res, prediction=pred, file=file)
    v.notes[:0] = notes
    return v


# --------------------------------------------------------------------------- the command's API


def schedule_report(
    items: Sequence[str],
    *,
    steps: int | None = None,
    res: tuple[int, int] | None = None,
) -> list[ScheduleView]:
    """Each of ``items`` (a named schedule, a family name, a checkpoint path) computed; none: the named ones."""
    if steps is not None and not 1 <= steps <= S.MAX_STEPS:
        raise SdlensError(None, f"--steps must be between 1 and {S.MAX_STEPS}")
    if res is not None and not all(16 <= x <= S.MAX_SIDE for x in res):
        raise SdlensError(None, f"--res: each side must be from 16 to {S.MAX_SIDE} pixels")
    out = []
    for item in items or list(S.NAMED):
        s = named(item)
        if s is not None:
            out.append(view(s, steps=steps or 50, res=res or DEFAULT_RES))
            continue
        s = released(item)
        if s is not None:
            fam = families.get(s.name)
            out.append(
                view(
                    s,
                    steps=steps or fam.pipeline.steps,
                    res=res or tuple(fam.pipeline.res),
                    prediction=_family_prediction(fam.id),
                )
            )
            continue
        if Path(item).exists():
            out.append(checkpoint_view(item, steps=steps, res=res))
            continue
        raise SdlensError(
            None,
            f"{item[:80]!r} is no named schedule, family or existing file: use a named schedule "
            f"({', '.join(S.NAMED)}), a family (sd1, sdxl, sd3, flux, playground …) or a checkpoint path",
        )
    return out
