"""``sdlens schedule``: the noise schedules of named schedules, released families and checkpoints, side by side —
the training curve (β, ᾱ, SNR, σ), the steps a sampler with N steps visits under each spacing, DDIM's σ(η),
and for a checkpoint its own buffers, markers and prediction-type evidence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdlens.analysis import schedules as S
from sdlens.analysis.schedule_buffers import ScheduleInfo, analyse_schedule
from sdlens.arch import families
from sdlens.arch import registry as R
from sdlens.arch.schedulers import scheduler_config
from sdlens.errors import SdlensError

DEFAULT_RES = (1024, 1024)
_ALIASES = {"cosine": "squaredcos_cap_v2", "ddpm": "linear", "sd": "scaled_linear", "karras": "edm"}
_SMALL = 1 << 20  # buffers read from a checkpoint: at most this many bytes each


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
        f"{fam.pipeline.name} (its released {fam.pipeline.scheduler or 'scheduler'} config)",
        f"family {fam.id}",
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
            [int(t) for t in ti],
            {f"eta={eta:g}": S.ddim_sigmas(s.config, ti, eta).tolist() for eta in S.ETAS},
        )
        if not row.reaches_end:
            row.note = (
                f"{spacing} spacing starts at t = {first:g}, not t = {n - 1}: the first step never starts from "
                "the noisiest training timestep (Lin et al. 2023, Table 2)"
            )
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


def _buffers(ckpt, comps: dict) -> tuple[ScheduleInfo | None, np.ndarray | None]:
    """The file's schedule buffers named, and its β table (from ``betas``, else derived from ᾱ)."""
    sched = comps.get("schedule")
    if sched is None:
        return None, None

    def read(key: str) -> np.ndarray | None:
        info = ckpt.tensors.get(key) if key in sched.keys else None
        if info is None or info.nbytes > _SMALL:
            return None
        return ckpt.read_numpy(key).astype(np.float64).reshape(-1)

    betas, ac = read("betas"), read("alphas_cumprod")
    info = analyse_schedule(betas, ac, list(sched.keys))
    if info is not None and betas is None:
        betas = 1 - ac / np.concatenate([[1.0], ac[:-1]])
    return info, betas


def checkpoint_view(path: str | Path, *, steps: int | None, res: tuple[int, int] | None) -> ScheduleView:
    """The schedule a checkpoint carries or implies: its own β / ᾱ buffers when it stores them, else its family's
    released schedule (with the zero-terminal-SNR rescale where a ``ztsnr`` marker says so)."""
    from sdlens.analysis.prediction import folder_scheduler_config, prediction_of
    from sdlens.arch.identify import identify
    from sdlens.io.open import open_checkpoint

    with open_checkpoint(path) as ckpt:
        ident = identify(ckpt.tensors, ckpt.configs, ckpt.metadata)
        if ident.kind == "lora":
            raise SdlensError(Path(path), "a LoRA carries no noise schedule; name its base model instead")
        fam = ident.record
        info, betas = _buffers(ckpt, ident.split.components)
        markers = [k for k in ckpt.tensors if k in R.MARKER_KEYS]
        pred = prediction_of(ckpt, fam)
        folder_cfg = folder_scheduler_config(ckpt)
    name = Path(path).name
    file = {
        "path": str(path),
        "family": fam.id if fam else None,
        "family_name": fam.name if fam else None,
        "buffers": info,
        "markers": [f"{k}: {R.MARKER_KEYS[k]}" for k in markers],
    }
    notes: list[str] = []
    if isinstance(folder_cfg, dict):  # a diffusers folder states its schedule
        where = f"{name}/scheduler/scheduler_config.json"
        s = S.from_config(folder_cfg, "folder scheduler", where, where)
        notes.append(
            f"the folder's scheduler config: {str(folder_cfg.get('_class_name', 'no class named'))[:80]}"
        )
    elif info is not None and betas is not None and np.all(np.isfinite(betas)):
        notes.append(f"its schedule buffers: {info.description}")
        if info.match is not None:
            base = S.NAMED[info.match]
            cfg = {**base.config, "num_train_timesteps": info.timesteps}
            s = S.Schedule(base.name, base.label, "discrete", cfg, f"buffers of {name}")
        else:  # the file's own β table, as diffusers takes one (trained_betas)
            cfg = {
                **S.NAMED["scaled_linear"].config,
                "num_train_timesteps": betas.size,
                "trained_betas": betas.tolist(),
            }
            s = S.Schedule(
                "own buffers", f"{name}'s own schedule ({info.kind})", "discrete", cfg, f"buffers of {name}"
            )
    else:
        if fam is None:
            raise SdlensError(
                Path(path), "no schedule buffers and no known family: sdlens cannot tell its schedule"
            )
        s = released(fam.id)
        if s is None:
            raise SdlensError(
                Path(path), f"no schedule buffers, and the {fam.name} record has no released pipeline"
            )
        notes.append(f"no usable schedule buffers in the file: the {fam.name} release's schedule")
        if "ztsnr" in markers and s.kind == "discrete":
            cfg = {**s.config, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
            s = S.Schedule(
                f"{s.name}+ztsnr", f"{s.label}, rescaled to zero terminal SNR", s.kind, cfg, s.source
            )
            notes.append(
                "ztsnr marker: trained with zero terminal SNR, so the rescaled schedule and trailing spacing"
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
    if steps is not None and steps < 1:
        raise SdlensError(None, "--steps must be at least 1")
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
            f"unknown schedule {item[:80]!r}: use a named schedule ({', '.join(S.NAMED)}), a family "
            "(sd1, sdxl, sd3, flux, playground …) or a checkpoint path",
        )
    return out
