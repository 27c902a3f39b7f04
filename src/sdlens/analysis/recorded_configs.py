"""The diffusers configs an earlier ``sdlens convert`` recorded in a single file's metadata (``CONFIGS_META``:
slot -> config of the folder it was converted from), read back with checks: the metadata is untrusted, so a
recorded scheduler config is used (by ``convert``, and as evidence by :mod:`sdlens.analysis.prediction`) only
when it is a JSON object naming a scheduler class sdlens knows for the family, with values sdlens checks."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sdlens.errors import SdlensError

if TYPE_CHECKING:
    from sdlens.arch.record import Family

CONFIGS_META = "sdlens.diffusers_configs"
_MAX_TEXT = 1000  # characters of a string value in a recorded config (longer: not a config sdlens wrote)


def _load(metadata: dict[str, Any]) -> dict[str, Any]:
    raw = metadata.get(CONFIGS_META)
    if not isinstance(raw, str):
        return {}
    try:
        known = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return known if isinstance(known, dict) else {}


def recorded_configs(metadata: dict[str, Any], family: Family | None) -> dict[str, dict[str, Any]]:
    """slot -> the recorded config (JSON-object entries only; the scheduler's only when usable for
    ``family``, see :func:`recorded_scheduler`); {} without a readable record."""
    known = {k: v for k, v in _load(metadata).items() if isinstance(k, str) and isinstance(v, dict)}
    sched, _ = recorded_scheduler(metadata, family)
    known.pop("scheduler", None)
    return {**known, "scheduler": sched} if sched is not None else known


def _clean(v: Any, depth: int = 0) -> bool:
    """Plain JSON scalars, short printable strings, and lists / objects of them (two levels)."""
    if v is None or isinstance(v, (bool, int, float)):
        return True
    if isinstance(v, str):
        return len(v) <= _MAX_TEXT and v.isprintable()
    if depth >= 2:
        return False
    if isinstance(v, list):
        return len(v) <= 100_000 and all(_clean(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _clean(k) and _clean(x, depth + 1) for k, x in v.items())
    return False


def scheduler_problem(cfg: Any, family: Family | None) -> str | None:
    """Why ``cfg`` (a recorded scheduler config) is not one sdlens uses for ``family``; None: it is usable."""
    from sdlens.analysis.schedules import check_config
    from sdlens.arch.scheduler_classes import CLASSES

    if not isinstance(cfg, dict):
        return "not a JSON object"
    pipe = family.pipeline if family is not None else None
    own = pipe.scheduler if pipe is not None else ""
    cls = cfg.get("_class_name")
    if not isinstance(cls, str) or not cls or not (cls in CLASSES or cls == own):
        return "its _class_name is not a scheduler class sdlens knows"
    if pipe is not None and family is not None:
        flow_family = pipe.prediction == "flow"
        if cls.startswith("FlowMatch") and not flow_family:
            return f"a flow-matching scheduler, but {family.name} is not a flow-matching model"
        if flow_family and cls != own and CLASSES[cls].kind != "flow":
            return f"not a flow-matching scheduler, but {family.name} is a flow-matching model"
    if not all(_clean(v) for v in cfg.values()):
        return "it holds values that are not plain numbers or short printable text"
    defaults = dict(CLASSES[cls].defaults) if cls in CLASSES else {"num_train_timesteps": 1000}
    try:
        check_config({**defaults, **cfg}, CONFIGS_META)
    except SdlensError as e:
        return e.problem.removeprefix(f"{CONFIGS_META}: ")
    return None


def recorded_scheduler(metadata: dict[str, Any], family: Family | None) -> tuple[dict[str, Any] | None, str]:
    """The recorded scheduler config when usable (else None), and why one recorded was dropped ("" when none
    was recorded or it is used): a note for the output."""
    known = _load(metadata)
    if "scheduler" not in known:
        return None, ""
    cfg = known["scheduler"]
    why = scheduler_problem(cfg, family)
    if why is None:
        return cfg, ""
    return None, f"the scheduler config recorded in {CONFIGS_META} is dropped ({why}): the family's is used"
