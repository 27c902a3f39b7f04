"""Compact notes about many items: "reason: 45 models (a, b, c, +42 more)", never a wall of names."""

from __future__ import annotations

from collections.abc import Sequence

from sdlens.words import plural

__all__ = ["listing", "note", "plural"]

LIMIT = 3  # names shown before "+K more"


def listing(names: Sequence[str], unit: str = "model", *, limit: int = LIMIT) -> str:
    """``3 models (a, b, c)``; beyond ``limit`` names, ``45 models (a, b, c, +42 more)``."""
    shown = ", ".join(names[:limit]) + (f", +{len(names) - limit} more" if len(names) > limit else "")
    return f"{plural(len(names), unit)} ({shown})"


def note(reason: str, names: Sequence[str], unit: str = "model", *, limit: int = LIMIT) -> str:
    """One line: ``reason: N units (a, b, c, +K more)``."""
    return f"{reason}: {listing(names, unit, limit=limit)}"
