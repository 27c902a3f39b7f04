"""The diffusers scheduler classes ``sdlens schedule`` models, as data: each class's defaults for the values that
shape its noise schedule (a ``scheduler_config.json`` that leaves one out gets the class's default, as
``from_pretrained`` does), whether it takes ``rescale_betas_zero_snr``, and the options that change its σ in
ways sdlens does not compute (a config that sets one is refused by name rather than shown wrong).

``tests/test_schedule.py`` checks every entry against the classes' own ``__init__`` signatures."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_DDPM = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "timestep_spacing": "leading",
    "steps_offset": 0,
}
_SIGMA_OPTIONS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
_FLOW = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "time_shift_type": "exponential",
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
_EDM = {
    "num_train_timesteps": 1000,
    "final_sigmas_type": "zero",
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    "sigma_data": 0.5,
    "rho": 7.0,
    "sigma_schedule": "karras",
}


@dataclass(frozen=True)
class SchedulerClass:
    kind: str  # discrete (a β table) | flow | edm
    defaults: Mapping[str, Any] = field(hash=False)
    zero_snr: bool = False  # takes rescale_betas_zero_snr
    unmodelled: Mapping[str, Any] = field(default_factory=dict, hash=False)  # option -> its default


CLASSES: dict[str, SchedulerClass] = {
    "DDPMScheduler": SchedulerClass("discrete", _DDPM, True),
    "DDIMScheduler": SchedulerClass("discrete", {**_DDPM, "set_alpha_to_one": True}, True),
    "PNDMScheduler": SchedulerClass("discrete", {**_DDPM, "set_alpha_to_one": False}),
    "EulerDiscreteScheduler": SchedulerClass(
        "discrete",
        {**_DDPM, "timestep_spacing": "linspace"},
        True,
        {
            **_SIGMA_OPTIONS,
            "timestep_type": "discrete",
            "final_sigmas_type": "zero",
            "interpolation_type": "linear",
        },
    ),
    "EulerAncestralDiscreteScheduler": SchedulerClass(
        "discrete", {**_DDPM, "timestep_spacing": "linspace"}, True
    ),
    "DPMSolverMultistepScheduler": SchedulerClass(
        "discrete",
        {**_DDPM, "timestep_spacing": "linspace"},
        True,
        {
            **_SIGMA_OPTIONS,
            "final_sigmas_type": "zero",
            "use_lu_lambdas": False,
            "use_flow_sigmas": False,
            "use_dynamic_shifting": False,
        },
    ),
    "LMSDiscreteScheduler": SchedulerClass(
        "discrete", {**_DDPM, "timestep_spacing": "linspace"}, False, _SIGMA_OPTIONS
    ),
    "HeunDiscreteScheduler": SchedulerClass(
        "discrete",
        {**_DDPM, "timestep_spacing": "linspace", "beta_start": 0.00085, "beta_end": 0.012},
        False,
        _SIGMA_OPTIONS,
    ),
    "FlowMatchEulerDiscreteScheduler": SchedulerClass(
        "flow", _FLOW, False, {**_SIGMA_OPTIONS, "shift_terminal": None, "invert_sigmas": False}
    ),
    "EDMDPMSolverMultistepScheduler": SchedulerClass("edm", _EDM),
    "EDMEulerScheduler": SchedulerClass("edm", _EDM),
}
# the schedulers that take rescale_betas_zero_snr (convert writes it only into these)
ZERO_SNR_CLASSES = frozenset(name for name, c in CLASSES.items() if c.zero_snr) | {
    "UniPCMultistepScheduler",
    "LCMScheduler",
    "TCDScheduler",
}
EDM_V_SIGMA_DATA = 1.0  # ComfyUI's σ_data for EDM v-prediction files (edm_vpred markers: CosXL)
