"""Noise schedules as the samplers run them: β_t, ᾱ_t, SNR_t and σ_t of a schedule, and the timesteps and σ a
sampler with N steps visits under each spacing.

A schedule is a diffusers scheduler config (``sdlens.arch.schedulers`` holds the families' released ones): the
values here are computed with the same float32 operations, in the same order, as diffusers' ``DDPMScheduler`` /
``DDIMScheduler`` / ``EulerDiscreteScheduler`` (discrete schedules), ``FlowMatchEulerDiscreteScheduler`` (flow
matching: SD3's shift, FLUX's resolution-dependent shift) and ``EDMDPMSolverMultistepScheduler`` (EDM / Karras σ),
so they equal what those samplers use, bit for bit where the arithmetic allows (tests: within 1e-6). diffusers
itself is not imported. Formulas and sources: ``docs/schedule.md``.

Conventions: SNR_t = ᾱ_t / (1 − ᾱ_t) and σ_t = √((1 − ᾱ_t) / ᾱ_t) = SNR_t^(-1/2) (the noise-to-signal ratio
of x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε). A flow-matching x_t = (1 − s)·x₀ + s·ε has SNR = ((1 − s) / s)², so its
variance-preserving equivalent is ᾱ = (1 − s)² / ((1 − s)² + s²); an EDM x = x₀ + σ·ε has ᾱ = 1 / (1 + σ²).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sdlens.arch.scheduler_classes import CLASSES
from sdlens.arch.schedulers import SCALED_LINEAR
from sdlens.errors import SdlensError

SPACINGS = ("leading", "trailing", "linspace")
ETAS = (0.0, 1.0)

# the DDPM-family defaults the named schedules start from (DDIMScheduler's class defaults, no rescale)
_DEFAULTS: dict[str, Any] = {**CLASSES["DDIMScheduler"].defaults, "rescale_betas_zero_snr": False}
_FLOW_DEFAULTS: dict[str, Any] = dict(CLASSES["FlowMatchEulerDiscreteScheduler"].defaults)
_EDM_DEFAULTS: dict[str, Any] = dict(CLASSES["EDMDPMSolverMultistepScheduler"].defaults)
_SD = SCALED_LINEAR  # the latent-diffusion β table the SD releases ship (sdlens.arch.schedulers)
# Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed": rescale to zero terminal SNR
# and sample with trailing timesteps
_ZTSNR = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}


@dataclass(frozen=True)
class Schedule:
    """One noise schedule: a diffusers scheduler config, and what it is called."""

    name: str
    label: str
    kind: str  # discrete | flow | edm
    config: Mapping[str, Any] = field(hash=False)
    source: str = "named schedule"
    image_token: int = 16  # pixels per side of one image token (resolution-dependent flow shift)
    pipeline_sigmas: bool = False  # flow: the pipeline passes σ = linspace(1, 1/N, N) (FLUX), not N alone

    @property
    def num_train_timesteps(self) -> int:
        return int(self.config.get("num_train_timesteps", 1000))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = dict(self.config)
        return d


def _named() -> dict[str, Schedule]:
    out: dict[str, Schedule] = {}

    def add(name: str, label: str, kind: str, cfg: dict[str, Any]) -> None:
        out[name] = Schedule(name, label, kind, cfg, pipeline_sigmas=bool(cfg.get("use_dynamic_shifting")))

    base = {"_class_name": "DDPMScheduler", **_DEFAULTS}
    for name, label, cfg in (
        ("linear", "DDPM linear, β 0.0001 → 0.02 (Ho et al. 2020)", {}),
        ("scaled_linear", "scaled linear, β 0.00085 → 0.012 (SD 1 / SD 2 / SDXL)", _SD),
        (
            "squaredcos_cap_v2",
            "cosine, squaredcos_cap_v2 (Nichol & Dhariwal 2021)",
            {"beta_schedule": "squaredcos_cap_v2"},
        ),
    ):
        add(name, label, "discrete", {**base, **cfg})
        add(f"{name}+ztsnr", f"{label}, rescaled to zero terminal SNR", "discrete", {**base, **cfg, **_ZTSNR})
    edm = {"_class_name": "EDMDPMSolverMultistepScheduler", **_EDM_DEFAULTS}
    add("edm", "EDM, Karras σ 80 → 0.002, ρ 7 (Playground v2.5)", "edm", edm)
    flow = {"_class_name": "FlowMatchEulerDiscreteScheduler", **_FLOW_DEFAULTS}
    add("flow", "rectified flow, no shift", "flow", flow)
    add("flow-shift3", "rectified flow, shift 3.0 (SD3 / SD3.5)", "flow", {**flow, "shift": 3.0})
    add(
        "flow-dynamic",
        "rectified flow, resolution-dependent shift μ 0.5 → 1.15 (FLUX.1-dev)",
        "flow",
        {**flow, "shift": 3.0, "use_dynamic_shifting": True},
    )
    return out


NAMED: dict[str, Schedule] = _named()
# the named schedules a checkpoint's β / ᾱ buffers are compared with
DISCRETE_NAMED = tuple(n for n, s in NAMED.items() if s.kind == "discrete")


def kind_of(config: Mapping[str, Any]) -> str | None:
    """discrete / flow / edm for a diffusers scheduler config, None for a scheduler sdlens does not model."""
    cls = CLASSES.get(str(config.get("_class_name", "")))
    if cls is None or any(config.get(k, v) != v for k, v in cls.unmodelled.items() if k == "use_flow_sigmas"):
        return None
    return cls.kind


def from_config(
    config: Mapping[str, Any],
    name: str,
    label: str,
    source: str,
    image_token: int = 16,
    pipeline_sigmas: bool = False,
) -> Schedule:
    """The schedule of a diffusers scheduler config, the class's defaults filled in as ``from_pretrained`` does
    (refused with one line where sdlens does not model the class or an option it sets)."""
    kind = kind_of(config)
    if kind is None:
        raise SdlensError(
            None,
            f"{label}: sdlens does not model the {str(config.get('_class_name') or 'unnamed')[:60]} scheduler's "
            f"schedule (it models {', '.join(CLASSES)})",
        )
    cls = CLASSES[str(config["_class_name"])]
    for option, default in cls.unmodelled.items():
        if config.get(option, default) != default:
            raise SdlensError(
                None,
                f"{label}: {option} = {str(config[option])[:40]} changes the σ in a way sdlens does not compute "
                f"(it computes {option} = {default})",
            )
    cfg = {**cls.defaults, **config}
    if not cls.zero_snr:  # the class takes no such argument: diffusers ignores the key
        cfg.pop("rescale_betas_zero_snr", None)
    check_config(cfg, label)
    return Schedule(name, label, kind, cfg, source, image_token, pipeline_sigmas)


MAX_STEPS = 10_000  # sampling steps sdlens computes (samplers use 1-1000)
MAX_SIDE = 16_384  # pixels per side of --res


# numbers a config may hold, and the closed range each must lie in (None: unbounded on that side)
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "beta_start": (0.0, 0.999999),
    "beta_end": (0.0, 0.999999),
    "shift": (1e-6, 100.0),
    "base_shift": (-100.0, 100.0),
    "max_shift": (-100.0, 100.0),
    "base_image_seq_len": (1, None),
    "max_image_seq_len": (1, None),
    "sigma_min": (1e-12, None),
    "sigma_max": (1e-12, 1e6),
    "sigma_data": (1e-12, 1e6),
    "rho": (1e-3, 100.0),
}
_CHOICES = {
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "timestep_spacing": SPACINGS,
    "time_shift_type": ("exponential", "linear"),
    "sigma_schedule": ("karras", "exponential"),
    "final_sigmas_type": ("zero", "sigma_min"),
}
_FLAGS = ("rescale_betas_zero_snr", "use_dynamic_shifting", "set_alpha_to_one")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _config_problem(cfg: Mapping[str, Any]) -> str | None:
    """What makes ``cfg`` unusable, in words; None when it is fine."""
    n = cfg.get("num_train_timesteps")
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= 100_000:
        return "num_train_timesteps must be an integer from 2 to 100000"
    for key, (lo, hi) in _RANGES.items():
        v = cfg.get(key)
        if v is not None and not (_number(v) and (lo is None or v >= lo) and (hi is None or v <= hi)):
            return f"{key} must be a number from {lo} to {hi}"
    off = cfg.get("steps_offset", 0)
    if isinstance(off, bool) or not isinstance(off, int) or not 0 <= off < n:
        return "steps_offset must be an integer from 0 to num_train_timesteps - 1"
    for key, allowed in _CHOICES.items():
        if key in cfg and cfg[key] not in allowed:
            return f"{key} must be one of {', '.join(allowed)}"
    for key in _FLAGS:
        if key in cfg and not isinstance(cfg[key], bool):
            return f"{key} is not true or false"
    if cfg.get("use_dynamic_shifting") and cfg.get("base_image_seq_len") == cfg.get("max_image_seq_len"):
        return "base_image_seq_len equals max_image_seq_len (the shift's line is undefined)"
    if "sigma_min" in cfg and "sigma_max" in cfg and not cfg["sigma_min"] < cfg["sigma_max"]:
        return "sigma_min must be below sigma_max"
    tb = cfg.get("trained_betas")
    if tb is not None and (
        not isinstance(tb, (list, tuple)) or len(tb) != n or not all(_number(b) and 0 <= b <= 1 for b in tb)
    ):
        return "trained_betas is not a list of num_train_timesteps numbers in [0, 1]"
    return None


def check_config(cfg: Mapping[str, Any], label: str) -> None:
    """A config from a file (a diffusers folder's scheduler_config.json may be crafted): the values sdlens
    computes with must be numbers in range, the table length bounded, the names known; else one clear line."""
    problem = _config_problem(cfg)
    if problem is not None:
        raise SdlensError(None, f"{label}: scheduler config {problem}")


# --------------------------------------------------------------------------- the training schedule


def _betas_for_alpha_bar(n: int, max_beta: float = 0.999) -> list[float]:
    """GLIDE's cosine schedule: β_i = 1 − ᾱ((i+1)/n) / ᾱ(i/n), ᾱ(t) = cos²((t + 0.008) / 1.008 · π/2), capped."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]


def _rescale_zero_terminal_snr(betas):
    """Lin et al. 2023, Algorithm 1: shift and scale √ᾱ so that √ᾱ_T = 0 and √ᾱ_0 is unchanged (float32 torch)."""
    import torch

    ac_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    a0, at = ac_sqrt[0].clone(), ac_sqrt[-1].clone()
    ac_sqrt -= at
    ac_sqrt *= a0 / (a0 - at)
    ac = ac_sqrt**2
    return 1 - torch.cat([ac[0:1], ac[1:] / ac[:-1]])


def discrete_betas(config: Mapping[str, Any]):
    """β_t (float32 torch tensor) of a DDPM-family config, as diffusers' schedulers build it."""
    import torch

    cfg = {**_DEFAULTS, **config}
    n = int(cfg["num_train_timesteps"])
    start, end, kind = float(cfg["beta_start"]), float(cfg["beta_end"]), cfg["beta_schedule"]
    if cfg.get("trained_betas") is not None:
        betas = torch.tensor(cfg["trained_betas"], dtype=torch.float32)
    elif kind == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float32)
    elif kind == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2
    elif kind == "squaredcos_cap_v2":
        betas = torch.tensor(_betas_for_alpha_bar(n), dtype=torch.float32)
    else:
        raise SdlensError(None, f"unknown beta_schedule {str(kind)[:40]!r}")
    if cfg.get("rescale_betas_zero_snr"):
        betas = _rescale_zero_terminal_snr(betas)
    return betas


def _alphas_cumprod(config: Mapping[str, Any]):
    import torch

    return torch.cumprod(1.0 - discrete_betas(config), dim=0)


@dataclass
class Curve:
    """The schedule at every training timestep t = 0 … T−1 (index 0: least noise)."""

    t: np.ndarray
    beta: np.ndarray
    alpha_bar: np.ndarray
    sigma: np.ndarray  # √((1 − ᾱ) / ᾱ); inf where ᾱ = 0
    flow_sigma: np.ndarray | None = None  # flow matching: the s of x_t = (1 − s)·x₀ + s·ε
    edm_sigma: np.ndarray | None = None

    @property
    def snr(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.alpha_bar / (1.0 - self.alpha_bar)

    @property
    def log_snr(self) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.snr)


def _vp_from_alpha_bar(t: np.ndarray, ac: np.ndarray, beta: np.ndarray | None = None, **extra: Any) -> Curve:
    """The curve of ᾱ (β derived from it where the schedule is not a β table)."""
    ac = ac.astype(np.float64)
    prev = np.concatenate([[1.0], ac[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = 1.0 - ac / prev if beta is None else beta
        sigma = np.sqrt((1.0 - ac) / ac)
    return Curve(t, beta, ac, sigma, **extra)


def image_seq_len(schedule: Schedule, res: tuple[int, int]) -> int:
    """Image tokens the denoiser sees at ``res`` = (width, height) (the resolution-dependent shift's input)."""
    w, h = res
    return (h // schedule.image_token) * (w // schedule.image_token)


def dynamic_mu(schedule: Schedule, res: tuple[int, int]) -> float:
    """FLUX's μ: linear in the image's token count between (base_image_seq_len, base_shift) and
    (max_image_seq_len, max_shift), as FluxPipeline's ``calculate_shift``."""
    c = schedule.config
    x1, x2 = float(c["base_image_seq_len"]), float(c["max_image_seq_len"])
    y1, y2 = float(c["base_shift"]), float(c["max_shift"])
    m = (y2 - y1) / (x2 - x1)
    return image_seq_len(schedule, res) * m + (y1 - m * x1)


def _time_shift(schedule: Schedule, mu: float, s):
    """s' = e^μ / (e^μ + 1/s − 1) (exponential; diffusers' arithmetic, so bit-identical), or μ / (μ + 1/s − 1)."""
    if schedule.config.get("time_shift_type", "exponential") == "linear":
        if mu <= 0:
            raise SdlensError(None, f"{schedule.label}: the linear time shift needs μ > 0 (got {mu:.3g})")
        return mu / (mu + (1 / s - 1) ** 1.0)
    if mu > 80:  # e^μ overflows float32 (diffusers' arithmetic gives NaN); 1 / (1 + (1/s − 1)·e^−μ) = 1 there
        return np.ones_like(s)
    return math.exp(mu) / (math.exp(mu) + (1 / s - 1) ** 1.0)


def _static_shift(shift: float, s):
    return shift * s / (1 + (shift - 1) * s)


def _flow_train_sigmas(schedule: Schedule, res: tuple[int, int] | None):
    """FlowMatchEulerDiscreteScheduler's training σ (T values, most noise first), float32 torch."""
    import torch

    n = schedule.num_train_timesteps
    ts = np.linspace(1, n, n, dtype=np.float32)[::-1].copy()
    sig = torch.from_numpy(ts).to(dtype=torch.float32) / n
    if not schedule.config.get("use_dynamic_shifting"):
        return _static_shift(float(schedule.config["shift"]), sig)
    if res is None:
        return sig
    return torch.from_numpy(_time_shift(schedule, dynamic_mu(schedule, res), sig.numpy()).astype(np.float32))


def _karras(schedule: Schedule, n: int):
    import torch

    c = schedule.config
    ramp = torch.linspace(0, 1, n)
    rho = float(c["rho"])
    lo, hi = float(c["sigma_min"]) ** (1 / rho), float(c["sigma_max"]) ** (1 / rho)
    if c.get("sigma_schedule", "karras") == "exponential":  # as diffusers: ascending, exponentiated, flipped
        return (
            torch.linspace(math.log(float(c["sigma_min"])), math.log(float(c["sigma_max"])), n).exp().flip(0)
        )
    return (hi + ramp * (lo - hi)) ** rho


def train_curve(schedule: Schedule, res: tuple[int, int] | None = None) -> Curve:
    """β, ᾱ, σ (and SNR) at each training timestep; flow schedules with a resolution-dependent shift at ``res``."""
    import torch

    n = schedule.num_train_timesteps
    t = np.arange(n, dtype=np.float64)
    if schedule.kind == "discrete":
        betas = discrete_betas(schedule.config)
        ac = torch.cumprod(1.0 - betas, dim=0)
        return _vp_from_alpha_bar(t, ac.double().numpy(), betas.double().numpy())
    if schedule.kind == "flow":
        s = _flow_train_sigmas(schedule, res).double().numpy()[::-1].copy()  # index 0: least noise
        ac = (1 - s) ** 2 / ((1 - s) ** 2 + s**2)
        return _vp_from_alpha_bar(t, ac, flow_sigma=s)
    sig = _karras(schedule, n).double().numpy()[::-1].copy()
    return _vp_from_alpha_bar(t, 1.0 / (1.0 + sig**2), edm_sigma=sig)


# --------------------------------------------------------------------------- sampling


def discrete_timesteps(config: Mapping[str, Any], steps: int, spacing: str, *, integer: bool) -> np.ndarray:
    """The timesteps a DDPM-family sampler visits (most noise first). ``integer``: DDIM / DDPM (rounded, int64);
    else Euler's (``linspace`` unrounded, float32)."""
    cfg = {**_DEFAULTS, **config}
    n = int(cfg["num_train_timesteps"])
    if not 1 <= steps <= n:
        raise SdlensError(None, f"--steps must be between 1 and the {n} training timesteps")
    if spacing == "linspace":
        if integer:
            return np.linspace(0, n - 1, steps).round()[::-1].copy().astype(np.int64)
        return np.linspace(0, n - 1, steps, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = n // steps
        ts = (np.arange(0, steps) * ratio).round()[::-1].copy()
        ts = ts.astype(np.int64 if integer else np.float32)
        return ts + int(cfg.get("steps_offset", 0))
    if spacing == "trailing":
        ts = np.round(np.arange(n, 0, -n / steps))
        return ts.astype(np.int64 if integer else np.float32) - 1
    raise SdlensError(None, f"unknown spacing {spacing!r}: use {', '.join(SPACINGS)}")


def euler_sigmas(config: Mapping[str, Any], timesteps: np.ndarray) -> np.ndarray:
    """EulerDiscreteScheduler's σ at ``timesteps`` (linear interpolation of the training σ), then a final 0.
    With zero terminal SNR diffusers sets ᾱ_T = 2⁻²⁴ so that σ_T stays finite (4096)."""
    ac = _alphas_cumprod(config)
    if config.get("rescale_betas_zero_snr"):
        ac[-1] = 2**-24
    sig = (((1 - ac) / ac) ** 0.5).numpy()
    sig = np.interp(timesteps, np.arange(0, len(sig)), sig)
    return np.concatenate([sig, [0]]).astype(np.float32)


def ddim_sigmas(config: Mapping[str, Any], timesteps: np.ndarray, steps: int, eta: float) -> np.ndarray:
    """DDIM's σ_t(η) = η·√((1 − ᾱ_prev) / (1 − ᾱ_t) · (1 − ᾱ_t / ᾱ_prev)) at each of ``timesteps`` (all in
    0 … T−1), with prev = t − ⌊T / steps⌋ as DDIMScheduler steps (ᾱ_prev = 1 past t = 0 with set_alpha_to_one,
    else ᾱ_0). Where ᾱ has underflowed to 0 the variance is taken as its limit, 1 − ᾱ_prev."""
    ac = _alphas_cumprod(config)
    n = int(config.get("num_train_timesteps", 1000))
    final = 1.0 if config.get("set_alpha_to_one", True) else float(ac[0])
    step = n // steps
    out = []
    for t in timesteps:
        prev = int(t) - step
        a_t = float(ac[int(t)])
        a_prev = float(ac[prev]) if prev >= 0 else final
        if a_t >= 1 or a_prev <= 0:
            var = 0.0 if a_t >= 1 else 1 - a_prev
        else:
            var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        out.append(eta * math.sqrt(max(var, 0.0)))
    return np.array(out, dtype=np.float64)


def flow_sigmas(schedule: Schedule, steps: int, res: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps, σ with a final 0) of FlowMatchEulerDiscreteScheduler.set_timesteps as the pipelines call it:
    SD3's with the number of steps (σ linear between the shifted ends, then shifted); FLUX's with
    σ = linspace(1, 1/N, N) (``pipeline_sigmas``), then shifted: by μ at ``res`` (dev) or by ``shift`` (schnell)."""
    import torch

    if not 1 <= steps <= MAX_STEPS:
        raise SdlensError(None, f"--steps must be between 1 and {MAX_STEPS}")
    n = schedule.num_train_timesteps
    c = schedule.config
    if c.get("use_dynamic_shifting") and res is None:
        raise SdlensError(None, f"{schedule.label}: its shift depends on the resolution; give --res")
    if schedule.pipeline_sigmas or c.get("use_dynamic_shifting"):
        sig = np.linspace(1.0, 1 / steps, steps).astype(np.float32)
        if c.get("use_dynamic_shifting"):
            sig = _time_shift(schedule, dynamic_mu(schedule, res), sig)
        else:
            sig = _static_shift(float(c["shift"]), sig)
    else:
        train = _flow_train_sigmas(schedule, None)
        hi, lo = train[0].item(), train[-1].item()
        sig = np.linspace(hi * n, lo * n, steps) / n
        sig = _static_shift(float(c["shift"]), sig)
    sig_t = torch.from_numpy(np.asarray(sig)).to(dtype=torch.float32)
    ts = sig_t * n
    return ts.double().numpy(), torch.cat([sig_t, torch.zeros(1)]).double().numpy()


def edm_sigmas(schedule: Schedule, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps = ¼·ln σ, σ with the final one) of EDMDPMSolverMultistepScheduler.set_timesteps(steps)."""
    import torch

    if not 1 <= steps <= MAX_STEPS:
        raise SdlensError(None, f"--steps must be between 1 and {MAX_STEPS}")
    sig = _karras(schedule, steps).to(dtype=torch.float32)
    ts = torch.log(sig) * 0.25
    last = (
        float(schedule.config["sigma_min"])
        if schedule.config.get("final_sigmas_type") == "sigma_min"
        else 0.0
    )
    return ts.double().numpy(), torch.cat([sig, torch.tensor([last], dtype=torch.float32)]).double().numpy()
