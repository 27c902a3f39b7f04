"""Small helpers for console text that fits: plurals, and whether a table fits the console's width."""

from __future__ import annotations

from rich.console import Console, RenderableType
from rich.measure import Measurement


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 tensor"``, ``"2 tensors"``, ``"0 tensors"`` (``many`` for irregular plurals)."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def fits(console: Console, renderable: RenderableType) -> bool:
    """Whether ``renderable`` can be drawn at its natural width (no cell wrapped) on ``console``."""
    wide = console.options.update_width(1 << 20)
    return Measurement.get(console, wide, renderable).maximum <= console.width
