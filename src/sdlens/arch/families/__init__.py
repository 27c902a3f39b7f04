"""All architecture records, in detection order. Add a family by adding its module to ``_MODULES``.

``get(id)`` is the one lookup every command uses; ``resolve(name)`` also accepts the names users type
(``flux``, ``sd15``, ``SDXL base``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from sdlens.arch.families import (
    auraflow,
    chroma,
    flux,
    hidream,
    hunyuandit,
    ltx_video,
    lumina2,
    pixart,
    playground,
    sana,
    sd3,
    sd_unet,
    stable_cascade,
    wan,
)
from sdlens.arch.record import Family, Feature

_MODULES = (
    sd_unet,
    sd3,
    flux,
    auraflow,
    hunyuandit,
    pixart,
    hidream,
    chroma,
    wan,
    ltx_video,
    playground,
    stable_cascade,
    sana,
    lumina2,
)

FAMILIES: tuple[Family, ...] = tuple(f for m in _MODULES for f in m.FAMILIES)
BY_ID: dict[str, Family] = {f.id: f for f in FAMILIES}
if len(BY_ID) != len(FAMILIES):  # pragma: no cover - a record typo
    raise RuntimeError("two architecture records share an id")


def all_families() -> tuple[Family, ...]:
    return FAMILIES


def get(family_id: str | None) -> Family | None:
    """The record of ``family_id`` (None for unknown ids)."""
    return BY_ID.get(family_id) if family_id else None


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(" ", "")


@cache
def _names() -> dict[str, str]:
    out: dict[str, str] = {}
    for f in FAMILIES:
        for n in (
            f.id,
            f.name,
            *(f.pipeline.aliases if f.pipeline else ()),
            *((f.pipeline.name,) if f.pipeline else ()),
        ):
            out.setdefault(_norm(n), f.id)
    return out


def resolve(name: str) -> str | None:
    """A family id from an id, a record's name or one of its pipeline's aliases."""
    return _names().get(_norm(name))


@cache
def features() -> tuple[Feature, ...]:
    """Every record's features, each name once (records may share a definition; they must agree)."""
    out: dict[str, Feature] = {}
    for f in FAMILIES:
        for feat in f.features:
            old = out.setdefault(feat.name, feat)
            if old != feat:  # pragma: no cover - a record typo
                raise RuntimeError(f"feature {feat.name!r} defined two ways")
    return tuple(out.values())


@cache
def derived() -> dict[str, Callable[[dict[str, Any]], Any]]:
    return {k: fn for f in FAMILIES for k, fn in f.derived.items()}


@cache
def feature_text() -> dict[str, str]:
    """How reasons name each feature."""
    out = {feat.name: feat.text for feat in features() if feat.text}
    for f in FAMILIES:
        out.update(f.feature_text)
    return out
