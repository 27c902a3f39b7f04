"""What a checkpoint says about its prediction type (epsilon, v-prediction, flow matching, EDM) and zero
terminal SNR: every statement with its source and strength, and how sure that makes sdlens.

Sources, by strength:

- **stated** (written for loaders to act on), most specific first:
  1. marker keys, as ComfyUI reads them (in its order): ``edm_mean`` + ``edm_std`` (EDM, Playground v2.5),
     ``edm_vpred.sigma_max`` / ``.sigma_min`` (v-prediction on EDM σ, CosXL), ``v_pred`` (v-prediction),
     ``ztsnr`` (zero terminal SNR; counted only with ``v_pred``: ComfyUI ignores it alone);
  2. a diffusers folder's ``scheduler/scheduler_config.json`` (read confined to the folder): ``prediction_type``
     (``EDM*`` classes: EDM, ``FlowMatch*`` classes: flow), ``rescale_betas_zero_snr``; in a single file, the
     same config as ``sdlens convert`` recorded it from a folder (metadata ``sdlens.diffusers_configs``), used
     only when :mod:`sdlens.analysis.recorded_configs` finds it sound (a known class for the family, checked
     values); a ``FlowMatch*`` class says flow only in a flow-matching family;
  3. metadata: Stability's ModelSpec ``modelspec.prediction_type`` (``v`` / ``epsilon``), ComfyUI's
     ``modelspec.predict_key`` (its Save Checkpoint), the ``modelspec.architecture`` ids of the family's own
     releases (record data: ``PredictionProbe.modelspec_ids``, SD2's 768-v / 512), kohya sd-scripts'
     ``ss_v_parameterization`` and ``ss_zero_terminal_snr``;
  4. the schedule buffers, read by the shared checked reader
     (:func:`sdlens.analysis.schedule_buffers.read_buffers`), when they are a usable table whose ᾱ ends at
     exactly 0 (zero terminal SNR only; a standard buffer says nothing, trainers rarely rewrite it).
- **default** (the family's release): the record's ``Pipeline.prediction`` for a family with one prediction
  type; a family whose releases differ (a ``PredictionProbe``: SD2 512 epsilon / 768 v) has no default, but a
  pickle's ``global_step`` may name the release (875000 = SD2 base, epsilon, as diffusers' converter reads it).
- **heuristic**: the family's ``PredictionProbe`` (SD2: population std of one norm bias > 0.09 means
  v-prediction, ComfyUI's guess, and as ComfyUI only for a 4-channel UNet, not the inpainting release), read
  (one small tensor) only when nothing stated or default gives the type.

How they combine: stated beats default beats heuristic. Among stated sources the first in the order above
gives the type; another stated source that says otherwise makes the certainty "conflicting" (both named in
``notes``). "epsilon" and "edm" agree (Playground's EDM is epsilon-parametrised). In a family whose formulation
is flow matching (record ``prediction == "flow"``) statements of epsilon / v-prediction do not apply (kohya
writes ``modelspec.prediction_type`` "epsilon" for every model trained without v, SD3 and FLUX included): they
are listed with ``counted = False``, and so are their zero-terminal-SNR statements. A scheduler config that
``sdlens convert`` filled in from a default or a heuristic records that (``_sdlens_prediction``) and counts
as that, not as a statement; one it filled in without knowing the type (``certainty: unknown``) says nothing
about the type. Zero terminal SNR: the first stated source that says true or false (None: nothing says).

Untrusted values (metadata, JSON) are compared only after bounds checks and quoted only through
:func:`sdlens.io.limits.show` (bounded, escaped).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sdlens.analysis.recorded_configs import CONFIGS_META, recorded_scheduler
from sdlens.errors import SdlensError
from sdlens.io.limits import show

if TYPE_CHECKING:
    from sdlens.arch.record import Family
    from sdlens.io.base import Checkpoint

LABELS = {
    "epsilon": "epsilon",
    "v_prediction": "v-prediction",
    "flow": "flow matching",
    "edm": "EDM",
    "unknown": "unknown",
}
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
RECORD_KEY = "_sdlens_prediction"  # in a scheduler config sdlens convert filled in: where the type came from
_HEURISTIC_MAX_BYTES = (
    1 << 20
)  # the heuristic's tensor is read only up to this size (SD2's: 640 bytes in fp16)
_MAX_VALUE = 64  # characters of a metadata value compared at all (longer: unrecognised)

# metadata values -> prediction type
_VALUES = {
    "v": "v_prediction",
    "v_prediction": "v_prediction",
    "v-prediction": "v_prediction",
    "vpred": "v_prediction",
    "v_pred": "v_prediction",
    "epsilon": "epsilon",
    "eps": "epsilon",
}
_BOOLS = {"true": True, "false": False}  # kohya writes str(bool)
_PREDICTION_META = ("modelspec.prediction_type", "modelspec.predict_key", "ss_v_parameterization")
_FIXED = ("flow",)  # formulations the architecture fixes: epsilon / v statements do not apply
_AGREE = {frozenset({"epsilon", "edm"})}
# RECORD_KEY certainty -> strength (None: the type was not known, the config's prediction_type is sdlens' filler)
_RECORDED = {"family default": "default", "heuristic": "heuristic", "unknown": None}


@dataclass
class Evidence:
    """One statement about the prediction type (or zero terminal SNR)."""

    source: str  # "marker key v_pred", "modelspec.prediction_type", "scheduler/scheduler_config.json", ...
    says: str  # epsilon | v_prediction | flow | edm | unknown
    strength: str  # "stated" (marker, metadata, config) | "default" (the family's release) | "heuristic"
    detail: str  # plain words
    zero_terminal_snr: bool | None = None  # what it says about zero terminal SNR (None: nothing)
    counted: bool = True  # False: listed, but not applicable or not readable


@dataclass
class Prediction:
    type: str  # epsilon | v_prediction | flow | edm | unknown
    certainty: str  # "stated" | "family default" | "heuristic" | "conflicting" | "unknown"
    # ztsnr marker / ss_zero_terminal_snr / rescale_betas_zero_snr / alphas_cumprod[T] = 0; None: nothing says
    zero_terminal_snr: bool | None
    evidence: list[Evidence]
    basis: str = ""  # the source(s) the type rests on, in words
    sigma_range: list[float] | None = None  # [σ_min, σ_max] of an EDM v-prediction model (edm_vpred markers)
    conflicts: list[str] = field(default_factory=list)  # the stated sources that say otherwise, in words
    notes: list[str] = field(default_factory=list)  # disagreements, combinations worth knowing

    def label(self) -> str:
        text = LABELS.get(self.type, "unknown")
        if self.sigma_range:
            text += f", EDM σ {self.sigma_range[0]:g}–{self.sigma_range[1]:g}"
        if self.zero_terminal_snr:
            text += ", zero terminal SNR"
        return text

    def summary(self) -> str:
        """One line: ``v-prediction (v_pred marker key)``, ``epsilon (family default, SDXL base)``."""
        if self.certainty == "unknown" and not self.basis:
            return f"{self.label()} (nothing in the file says)"
        if self.conflicts:
            return f"{self.label()} ({self.basis}; conflicting: {', '.join(self.conflicts)})"
        return f"{self.label()} ({self.basis})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}


# --------------------------------------------------------------------------- the sources


def _value(v: Any) -> str | None:
    """A metadata value normalised for comparison, or None (not a short string)."""
    if not isinstance(v, str) or len(v) > _MAX_VALUE:
        return None
    return v.strip().lower()


def _markers(ckpt: Checkpoint) -> tuple[list[tuple[Evidence, str]], list[float] | None]:
    tensors = ckpt.tensors
    out: list[tuple[Evidence, str]] = []
    sigmas: list[float] | None = None
    if "edm_mean" in tensors and "edm_std" in tensors:
        e = Evidence(
            "marker keys edm_mean / edm_std",
            "edm",
            "stated",
            "EDM latent statistics (Playground v2.5 style): ComfyUI samples it as EDM (σ_data 0.5, σ 0.002–80)",
        )
        out.append((e, "edm_mean / edm_std marker keys"))
    else:
        for k in ("edm_mean", "edm_std"):
            if k in tensors:
                e = Evidence(
                    f"marker key {k}", "unknown", "stated", f"{k} alone: ComfyUI needs both", counted=False
                )
                out.append((e, f"{k} marker key"))
    if "edm_vpred.sigma_max" in tensors:
        smax = _scalar(ckpt, "edm_vpred.sigma_max")
        smin = _scalar(ckpt, "edm_vpred.sigma_min") if "edm_vpred.sigma_min" in tensors else None
        words = f"σ_max {smax:g}" if smax is not None else "σ_max unreadable (not one finite float)"
        if "edm_vpred.sigma_min" in tensors:
            words += f", σ_min {smin:g}" if smin is not None else ", σ_min unreadable"
        if smax is not None and smin is not None and 0 < smin < smax:
            sigmas = [smin, smax]
        e = Evidence(
            "marker key edm_vpred.sigma_max",
            "v_prediction",
            "stated",
            f"v-prediction on a continuous EDM σ schedule (CosXL style): {words}",
        )
        out.append((e, "edm_vpred marker keys"))
    if "v_pred" in tensors:
        e = Evidence("marker key v_pred", "v_prediction", "stated", "ComfyUI loads the model as v-prediction")
        out.append((e, "v_pred marker key"))
    if "ztsnr" in tensors:
        with_v = "v_pred" in tensors
        e = Evidence(
            "marker key ztsnr",
            "unknown",
            "stated",
            "ComfyUI samples it with the schedule rescaled to zero terminal SNR"
            if with_v
            else "ztsnr without v_pred: ComfyUI ignores it (it applies ztsnr only with v_pred)",
            zero_terminal_snr=True,
            counted=with_v,
        )
        out.append((e, "ztsnr marker key"))
    return out, sigmas


def _scalar(ckpt: Checkpoint, key: str) -> float | None:
    info = ckpt.tensors[key]
    if info.numel != 1 or info.nbytes > 16:
        return None
    try:
        x = ckpt.read_numpy(key).reshape(-1)[0]
        # a float32 marker (as ComfyUI writes them) as its shortest decimal: 0.002, not 0.0020000000949949026
        v = float(str(np.float32(x))) if info.dtype in ("F16", "BF16", "F32") else float(x)
    except (SdlensError, TypeError, ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


def _from_config(cfg: Any, source: str, fam: Family | None) -> tuple[Evidence, str, list[float] | None]:
    """What one scheduler config says (a diffusers folder's, or one recorded in a file's metadata)."""
    if not isinstance(cfg, dict):
        return Evidence(source, "unknown", "stated", "not a JSON object", counted=False), source, None
    cls = cfg.get("_class_name")
    cls_s = cls if isinstance(cls, str) and len(cls) <= _MAX_VALUE else ""
    pt = cfg.get("prediction_type")
    says, sigmas = "unknown", None
    flow_family = fam is not None and fam.pipeline is not None and fam.pipeline.prediction == "flow"
    if cls_s.startswith("FlowMatch") and (fam is None or flow_family):
        says = "flow"
    elif pt in ("epsilon", "v_prediction"):
        says = pt
        if cls_s.startswith("EDM"):
            says = "edm" if pt == "epsilon" else "v_prediction"
            lo, hi = cfg.get("sigma_min"), cfg.get("sigma_max")
            if pt == "v_prediction" and all(_number(x) for x in (lo, hi)) and 0 < lo < hi:
                sigmas = [float(lo), float(hi)]
    rz = cfg.get("rescale_betas_zero_snr")
    ztsnr = rz if isinstance(rz, bool) else None
    words = [show(cls_s)[1:-1] if cls_s else "no _class_name"]
    if "prediction_type" in cfg:
        words.append(
            f"prediction_type {show(pt)}" + ("" if says != "unknown" else " (not epsilon / v_prediction)")
        )
    elif says != "flow":
        words.append("no prediction_type")
    if "rescale_betas_zero_snr" in cfg:
        words.append(f"rescale_betas_zero_snr {show(rz)}" + ("" if ztsnr is not None else " (not a boolean)"))
    if "timestep_spacing" in cfg:
        words.append(f"timestep_spacing {show(cfg.get('timestep_spacing'))}")
    if cls_s.startswith("FlowMatch") and says != "flow":
        name = fam.name if fam is not None else "the model"
        words.append(f"a flow-matching scheduler, but {name} is not a flow-matching model: not counted")
    strength, basis = "stated", source
    rec = cfg.get(RECORD_KEY)
    if isinstance(rec, dict) and isinstance(rec.get("certainty"), str) and rec["certainty"] in _RECORDED:
        recorded = _RECORDED[rec["certainty"]]
        if recorded is None:
            says = "unknown"
            words.append(
                "sdlens convert wrote its prediction_type without knowing the type (not a statement)"
            )
        else:
            strength = recorded
            words.append(f"filled in by sdlens convert from a {rec['certainty']} ({show(rec.get('from'))})")
            basis = f"{source}, filled in from a {rec['certainty']}"
    e = Evidence(
        source,
        says,
        strength,
        "; ".join(words),
        zero_terminal_snr=ztsnr,
        counted=says != "unknown" or ztsnr is not None,
    )
    return e, basis, sigmas


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def folder_scheduler_config(ckpt: Checkpoint) -> Any:
    """The folder's scheduler config (confined to the folder), None without one; an Evidence when unreadable."""
    if ckpt.format != "diffusers-folder" or not os.path.lexists(ckpt.path / SCHEDULER_CONFIG):
        return None
    from sdlens.io.folders import confined, read_json, root_of

    try:
        path = confined(root_of(ckpt.path), ckpt.path, SCHEDULER_CONFIG, ckpt.path)
        return read_json(path, "scheduler_config.json")
    except SdlensError as e:
        return Evidence(SCHEDULER_CONFIG, "unknown", "stated", f"not read: {e.problem}", counted=False)


def _configs(ckpt: Checkpoint, fam: Family | None) -> tuple[list[tuple[Evidence, str]], list[float] | None]:
    cfg: Any = folder_scheduler_config(ckpt)
    source = SCHEDULER_CONFIG
    if isinstance(cfg, Evidence):
        return [(cfg, SCHEDULER_CONFIG)], None
    if cfg is None and ckpt.format != "diffusers-folder":
        cfg, dropped = recorded_scheduler(ckpt.metadata, fam)
        source = f"{CONFIGS_META} (the scheduler config of the folder it was converted from)"
        if dropped:
            return [(Evidence(CONFIGS_META, "unknown", "stated", dropped, counted=False), CONFIGS_META)], None
    if cfg is None:
        return [], None
    e, basis, sigmas = _from_config(cfg, source, fam)
    return [(e, basis)], sigmas


def _metadata(meta: dict[str, Any], fam: Family | None) -> list[tuple[Evidence, str]]:
    out: list[tuple[Evidence, str]] = []
    for key in _PREDICTION_META:
        if key not in meta:
            continue
        raw = meta[key]
        v = _value(raw)
        if key == "ss_v_parameterization":
            flag = _BOOLS.get(v or "")
            says = "unknown" if flag is None else ("v_prediction" if flag else "epsilon")
            what = "kohya sd-scripts trained it " + ("with" if flag else "without") + " v-parameterization"
        else:
            says = _VALUES.get(v or "", "unknown")
            what = (
                "Stability's ModelSpec" if key == "modelspec.prediction_type" else "ComfyUI's Save Checkpoint"
            )
        detail = f"{show(raw)}: {what}" if says != "unknown" else f"unrecognised value {show(raw)}"
        out.append((Evidence(key, says, "stated", detail, counted=says != "unknown"), f"{key} {show(raw)}"))
    arch = meta.get("modelspec.architecture")
    v = _value(arch)
    ids = fam.prediction_probe.modelspec_ids if fam is not None and fam.prediction_probe is not None else {}
    if v is not None and v.split("/")[0] in ids:
        e = Evidence(
            "modelspec.architecture",
            ids[v.split("/")[0]],
            "stated",
            f"{show(arch)}: the ModelSpec id names the {fam.name} release",
        )
        out.append((e, f"modelspec.architecture {show(arch)}"))
    if "ss_zero_terminal_snr" in meta:
        raw = meta["ss_zero_terminal_snr"]
        flag = _BOOLS.get(_value(raw) or "")
        detail = (
            f"{show(raw)}: kohya sd-scripts' --zero_terminal_snr"
            if flag is not None
            else f"unrecognised value {show(raw)}"
        )
        e = Evidence(
            "ss_zero_terminal_snr",
            "unknown",
            "stated",
            detail,
            zero_terminal_snr=flag,
            counted=flag is not None,
        )
        out.append((e, "ss_zero_terminal_snr"))
    return out


def _buffers(ckpt: Checkpoint) -> list[tuple[Evidence, str]]:
    """Zero terminal SNR from the schedule buffers (the checked reader of every caller): only a usable table
    whose ᾱ ends at exactly 0 says it; a standard one says nothing (trainers rarely rewrite it)."""
    from sdlens.analysis.schedule_buffers import read_buffers

    try:
        buf = read_buffers(ckpt)
    except (SdlensError, TypeError, ValueError):
        return []
    if not buf.zero_terminal_snr or buf.info is None:
        return []
    e = Evidence(
        "alphas_cumprod buffer",
        "unknown",
        "stated",
        f"ᾱ ends at exactly 0 (t = {buf.info.timesteps - 1}): the schedule was rescaled to zero terminal SNR",
        zero_terminal_snr=True,
    )
    return [(e, "schedule buffers")]


def _defaults(ckpt: Checkpoint, fam: Family | None) -> list[tuple[Evidence, str]]:
    if fam is None or fam.pipeline is None:
        return []
    pipe, probe = fam.pipeline, fam.prediction_probe
    if probe is None:
        e = Evidence(
            f"family default ({fam.name})",
            pipe.prediction,
            "default",
            f"the prediction type of the {pipe.name} release (sdlens' {fam.id} record)",
        )
        return [(e, f"family default, {fam.name}")]
    out = [
        (
            Evidence(
                f"family ({fam.name})",
                "unknown",
                "default",
                f"{fam.name} was released both as epsilon and as v-prediction: the family does not say",
                counted=False,
            ),
            fam.name,
        )
    ]
    step = ckpt.extras.get("global_step")
    if isinstance(step, int) and not isinstance(step, bool) and step in probe.epsilon_steps:
        release = probe.epsilon_steps[step]
        e = Evidence(
            f"global_step {step}",
            "epsilon",
            "default",
            f"the training step of the {release} release (epsilon), as diffusers' converter reads it",
        )
        out.append((e, f"global_step {step} = {release}"))
    return out


def _heuristic(ckpt: Checkpoint, fam: Family | None) -> list[tuple[Evidence, str]]:
    probe = fam.prediction_probe if fam is not None else None
    if probe is None or not probe.key:
        return []
    if probe.in_channels is not None:
        conv = ckpt.tensors.get(probe.in_channels_key)
        got = conv.shape[1] if conv is not None and len(conv.shape) >= 2 else None
        if got != probe.in_channels:
            why = f"{got} input channels" if got is not None else f"no {probe.in_channels_key}"
            e = Evidence(
                "heuristic: not run",
                "unknown",
                "heuristic",
                f"{why}: ComfyUI's guess applies only to {probe.in_channels}-channel denoisers "
                "(its inpainting release is not v-prediction)",
                counted=False,
            )
            return [(e, "heuristic not run")]
    info = ckpt.tensors.get(probe.key)
    if (
        info is None
        or info.nbytes > _HEURISTIC_MAX_BYTES
        or info.numel < 2
        or info.dtype not in ("F16", "BF16", "F32", "F64")
    ):
        return []
    try:  # ComfyUI: torch.std(..., unbiased=False)
        std = float(ckpt.read_numpy(probe.key).astype("float64").std(ddof=0))
    except (SdlensError, TypeError, ValueError):
        return []
    if not math.isfinite(std):
        return []
    v = std > probe.v_std
    short = probe.key.split(".", 2)[2] if probe.key.count(".") >= 2 else probe.key
    e = Evidence(
        f"heuristic: std of {short}",
        "v_prediction" if v else "epsilon",
        "heuristic",
        f"{std:.3f} {'>' if v else '≤'} {probe.v_std:g}: ComfyUI's guess (above means v-prediction)",
    )
    return [(e, f"heuristic: std of {short} = {std:.3f}, > {probe.v_std:g} means v")]


# --------------------------------------------------------------------------- combining


def _agree(a: str, b: str) -> bool:
    return a == b or frozenset({a, b}) in _AGREE


def prediction_of(ckpt: Checkpoint, family: Family | None) -> Prediction:
    """The prediction type of ``ckpt`` (of ``family``, its record, or None) from its header, metadata, a
    diffusers folder's scheduler config and at most a few tiny tensors (see the module docstring)."""
    found: list[tuple[Evidence, str]] = []
    marks, sigmas = _markers(ckpt)
    found += marks
    conf, conf_sigmas = _configs(ckpt, family)
    found += conf
    found += _metadata(ckpt.metadata, family)
    found += _buffers(ckpt)
    found += _defaults(ckpt, family)
    fixed = family is not None and family.pipeline is not None and family.pipeline.prediction in _FIXED
    if fixed:
        for e, _ in found:
            if e.strength == "stated" and (
                e.says in ("epsilon", "v_prediction", "edm")
                or (e.says != "flow" and e.zero_terminal_snr is not None)
            ):
                e.counted = False
                e.detail += f"; does not apply: {family.name} is a flow-matching model"
                if e.source.startswith(("modelspec.", "ss_")) and e.says == "epsilon":
                    e.detail += " (kohya writes 'epsilon' for any model trained without v)"
    typed = [(e, b) for e, b in found if e.counted and e.says != "unknown"]
    if not any(e.strength in ("stated", "default") for e, _ in typed):
        heur = _heuristic(ckpt, family)
        found += heur
        typed += [(e, b) for e, b in heur if e.counted and e.says != "unknown"]
    pred = Prediction("unknown", "unknown", None, [e for e, _ in found])
    for strength, certainty in (
        ("stated", "stated"),
        ("default", "family default"),
        ("heuristic", "heuristic"),
    ):
        tier = [(e, b) for e, b in typed if e.strength == strength]
        if tier:
            first, basis = tier[0]
            pred.type, pred.certainty, pred.basis = first.says, certainty, basis
            others = [e for e, _ in tier[1:] if not _agree(e.says, first.says)]
            if others and strength == "stated":
                pred.certainty = "conflicting"
                pred.conflicts = [f"{e.source} says {LABELS[e.says]}" for e in others]
            if others:
                pred.notes += [
                    f"{e.source} says {LABELS[e.says]}, but {first.source} says {LABELS[first.says]}: "
                    f"sdlens follows {first.source} (the more specific source)"
                    for e in others
                ]
            break
    if pred.type == "v_prediction":
        pred.sigma_range = sigmas or conf_sigmas
    _zero_terminal_snr(pred, found)
    return pred


def _zero_terminal_snr(pred: Prediction, found: list[tuple[Evidence, str]]) -> None:
    says = [(e, b) for e, b in found if e.counted and e.zero_terminal_snr is not None]
    if not says:
        return
    first, basis = says[0]
    pred.zero_terminal_snr = first.zero_terminal_snr
    if first.zero_terminal_snr and basis != pred.basis:
        pred.basis = f"{pred.basis}, {basis}" if pred.basis else basis
    for e, _ in says[1:]:
        if e.zero_terminal_snr != first.zero_terminal_snr:
            pred.notes.append(
                f"{e.source} says zero terminal SNR is {str(e.zero_terminal_snr).lower()}, but {first.source} says "
                f"{str(first.zero_terminal_snr).lower()}: sdlens follows {first.source}"
            )
    if pred.zero_terminal_snr and pred.type == "epsilon":
        pred.notes.append(
            "zero terminal SNR with epsilon prediction: at t = T the input is pure noise, so predicting the noise "
            "says nothing about the image (Lin et al. 2023 pair zero terminal SNR with v-prediction)"
        )
