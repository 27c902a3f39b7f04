"""The scheduler a family's released diffusers folder ships: each scheduler class's settings beyond its class
defaults (``SCHEDULERS``), merged with the record's own ``Pipeline.scheduler_config``. ``sdlens schedule`` computes
the noise schedule from these configs; ``convert`` writes them into ``scheduler/scheduler_config.json``."""

from __future__ import annotations

from typing import Any

from sdlens.arch import families

# scheduler classes: the settings a released folder gives them beyond the class defaults
SCALED_LINEAR: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
SCHEDULERS: dict[str, dict[str, Any]] = {
    "PNDMScheduler": {**SCALED_LINEAR, "skip_prk_steps": True, "set_alpha_to_one": False},
    "DDIMScheduler": {**SCALED_LINEAR, "clip_sample": False, "set_alpha_to_one": False},
    "EulerDiscreteScheduler": SCALED_LINEAR,
    "DDPMScheduler": {**SCALED_LINEAR, "clip_sample": False},
    "FlowMatchEulerDiscreteScheduler": {"num_train_timesteps": 1000, "shift": 3.0},
}


def scheduler_values_known(family: str) -> bool:
    """Whether sdlens knows the values of the family's released scheduler config (its class is in
    ``SCHEDULERS`` or the record gives its ``scheduler_config``)."""
    fam = families.get(family)
    pipe = fam.pipeline if fam else None
    return pipe is not None and (pipe.scheduler in SCHEDULERS or bool(pipe.scheduler_config))


def scheduler_config(family: str) -> dict[str, Any]:
    """The scheduler config of the family's released folder: the record's scheduler class and prediction type
    (flow-matching schedulers take none). A class whose values sdlens does not know (no ``SCHEDULERS`` entry, no
    record ``scheduler_config``) gets only ``num_train_timesteps`` and, for a flow-matching record,
    ``prediction_type: flow_prediction`` (what the record states), never another class's values; a family
    without a scheduler class gets diffusers' Euler with the SD releases' scaled-linear values."""
    fam = families.get(family)
    pipe = fam.pipeline if fam else None
    if pipe is not None and pipe.scheduler and not scheduler_values_known(family):
        cfg: dict[str, Any] = {"_class_name": pipe.scheduler, "num_train_timesteps": 1000}
        if pipe.prediction == "flow" and not pipe.scheduler.startswith("FlowMatch"):
            cfg["prediction_type"] = "flow_prediction"
        return cfg
    known = pipe is not None and scheduler_values_known(family)
    cls = pipe.scheduler if known else "EulerDiscreteScheduler"
    cfg = {
        "_class_name": cls,
        **SCHEDULERS.get(cls, {}),
        **(pipe.scheduler_config if known else {}),
    }
    if not cls.startswith("FlowMatch"):
        cfg["prediction_type"] = (
            pipe.prediction if pipe and pipe.prediction in ("epsilon", "v_prediction") else "epsilon"
        )
    return cfg
