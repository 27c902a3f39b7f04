"""The prediction type across layouts (:mod:`sdlens.analysis.prediction` reads it from the input).

- To a diffusers folder: the scheduler config gets the file's ``prediction_type`` (not only the family's
  default) and, for zero terminal SNR, ``rescale_betas_zero_snr: true`` + ``timestep_spacing: "trailing"``;
  an EDM v-prediction file (``edm_vpred.*`` markers) gets ``EDMEulerScheduler`` with its σ range. A value
  sdlens only guessed (family default, heuristic) or did not know at all (the family's filler) is recorded as
  such under ``_sdlens_prediction`` (diffusers keeps ``_``-keys without using them), so converting back does
  not turn a guess into a statement. A scheduler class sdlens does not know, or one in flow-matching mode,
  is left as it is.
- From a diffusers folder to a single file: the marker keys ComfyUI reads (as its Save Checkpoint writes them:
  ``v_pred`` and ``ztsnr`` empty float32 tensors, ``edm_vpred.sigma_max`` / ``.sigma_min`` float32 scalars),
  when the folder states v-prediction (zero terminal SNR), so the type survives a round trip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdlens.analysis.prediction import RECORD_KEY
from sdlens.arch.scheduler_classes import CLASSES, EDM_V_SIGMA_DATA, ZERO_SNR_CLASSES
from sdlens.convert import layouts as L
from sdlens.convert.layouts import Item

if TYPE_CHECKING:
    from sdlens.analysis.prediction import Prediction

SCHEDULER = "scheduler/scheduler_config.json"
_BETAS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "steps_offset")
_TAKES_PREDICTION = frozenset(CLASSES) | ZERO_SNR_CLASSES  # the classes whose prediction_type sdlens sets
_NOT_STATED = ("family default", "heuristic", "unknown")  # certainties recorded under RECORD_KEY


def fill_scheduler(cfg: dict[str, Any], pred: Prediction | None) -> tuple[dict[str, Any], list[str]]:
    """``cfg`` with the prediction type of ``pred`` (and its zero terminal SNR); what changed, in words."""
    cls = cfg.get("_class_name")
    flow_mode = cfg.get("prediction_type") == "flow_prediction" or cfg.get("use_flow_sigmas") is True
    known = isinstance(cls, str) and cls in _TAKES_PREDICTION
    if pred is None or not known or cls.startswith("FlowMatch") or flow_mode:
        return cfg, []
    out = dict(cfg)
    out.pop(RECORD_KEY, None)
    words: list[str] = []
    if pred.type == "v_prediction" and pred.sigma_range and not cls.startswith("EDM"):
        lo, hi = pred.sigma_range
        out = {
            "_class_name": "EDMEulerScheduler",
            "num_train_timesteps": cfg.get("num_train_timesteps", 1000),
            "sigma_min": lo,
            "sigma_max": hi,
            "sigma_data": EDM_V_SIGMA_DATA,
            "prediction_type": "v_prediction",
        }
        words.append(f"EDMEulerScheduler, σ {lo:g}–{hi:g}, σ_data {EDM_V_SIGMA_DATA:g}")
    elif pred.type in ("epsilon", "v_prediction"):
        out["prediction_type"] = pred.type
    old = out.get("_class_name")
    if pred.zero_terminal_snr and old not in ZERO_SNR_CLASSES and not str(old).startswith("EDM"):
        out = {
            "_class_name": "EulerDiscreteScheduler",
            **L.SCHEDULERS["EulerDiscreteScheduler"],
            **{k: out[k] for k in _BETAS if k in out},
            **({"prediction_type": out["prediction_type"]} if "prediction_type" in out else {}),
        }
        words.append(f"EulerDiscreteScheduler ({old} takes no rescale_betas_zero_snr)")
    if pred.zero_terminal_snr and out.get("_class_name") in ZERO_SNR_CLASSES:
        out["rescale_betas_zero_snr"] = True
        out["timestep_spacing"] = "trailing"
    elif pred.zero_terminal_snr is False and out.get("rescale_betas_zero_snr"):
        out["rescale_betas_zero_snr"] = False
    if pred.certainty in _NOT_STATED and "prediction_type" in out:
        out[RECORD_KEY] = {"certainty": pred.certainty, "from": pred.summary()}
    said = ("rescale_betas_zero_snr", "timestep_spacing") if pred.zero_terminal_snr else ()
    changed = [k for k in ("prediction_type", *said) if k in out]
    words[:0] = [f"{k} {_json(out[k])}" for k in changed]
    if out.get(RECORD_KEY):
        what = "not known (the family's value)" if pred.certainty == "unknown" else f"a {pred.certainty}"
        words.append(f"{what}, recorded as {RECORD_KEY}")
    return out, [f"{SCHEDULER}: {', '.join(words)} (from: {pred.summary()})"] if words else []


def _json(v: Any) -> str:
    return "true" if v is True else "false" if v is False else str(v)


def marker_items(pred: Prediction | None, present: set[str]) -> list[Item]:
    """The marker keys a single file needs to say what ``pred`` states (those not in ``present``)."""
    if pred is None or pred.certainty not in ("stated", "conflicting") or pred.type != "v_prediction":
        return []
    out: list[Item] = []
    if pred.sigma_range:
        for key, value in zip(("edm_vpred.sigma_min", "edm_vpred.sigma_max"), pred.sigma_range, strict=True):
            out.append(_marker(key, (), value))
    else:
        out.append(_marker("v_pred", (0,), None))
        if pred.zero_terminal_snr:
            out.append(_marker("ztsnr", (0,), None))
    return [it for it in out if it.key not in present]


def _marker(key: str, shape: tuple[int, ...], value: float | None) -> Item:
    return Item(
        key,
        shape,
        "F32",
        (),
        component="markers",
        op="restore",
        restore="empty" if value is None else "value",
        value=value,
        note="marker key ComfyUI loads by: the input states it (its scheduler config or metadata)",
        out_dtype="F32",
    )
