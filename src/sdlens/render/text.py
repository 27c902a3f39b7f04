"""Small helpers for console text that fits: plurals, and whether a table fits the console's width."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console, RenderableType
from rich.measure import Measurement

from sdlens.words import plural

__all__ = ["bullets", "fits", "path_line", "plural", "print_wide_or_narrow", "wrap_items"]


def fits(console: Console, renderable: RenderableType, spare: int = 0) -> bool:
    """Whether ``renderable`` can be drawn at its natural width (no cell wrapped) on ``console``, with ``spare``
    columns left over."""
    wide = console.options.update_width(1 << 20)
    return Measurement.get(console, wide, renderable).maximum + spare <= console.width


def print_wide_or_narrow(console: Console, table: Callable[[bool], RenderableType]) -> bool:
    """Print ``table(True)`` (the wide form) when it fits the console, else ``table(False)``; True when wide
    (a caller then lists what the narrow form leaves out under it)."""
    wide = table(True)
    if fits(console, wide):
        console.print(wide)
        return True
    console.print(table(False))
    return False


def bullets(console: Console, lines: list[str], mark: str = "•", indent: int = 2) -> None:
    """Each line as a bullet: on a terminal wrapped at spaces with its continuation lines indented under its
    text; piped (a script reading), one line per bullet, unbroken, so that it can be matched whole."""
    from rich.table import Table

    if not lines:
        return
    if not console.is_terminal:
        for line in lines:
            console.print(" " * (indent - 1) + f"{mark} {line}", soft_wrap=True, highlight=False)
        return
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, width=indent + len(mark) - 1, justify="right")
    grid.add_column()
    for line in lines:
        grid.add_row(mark, line)
    console.print(grid, highlight=False)


def path_line(console: Console, label: str, path: str) -> None:
    """``label path`` on one line, the path never broken (a terminal narrower than the path wraps it itself)."""
    from rich.text import Text

    console.print(
        Text.assemble((label, "bold"), " ", path) if label else Text(path), soft_wrap=True, highlight=False
    )


def wrap_items(console: Console, items: list[str], indent: int = 4, sep: str = " · ") -> None:
    """Short items (``"l2 0.5"``) joined by ``sep`` and wrapped between items, never inside one."""
    from rich.cells import cell_len

    pad = " " * indent
    line = ""
    for it in items:
        candidate = f"{line}{sep}{it}" if line else pad + it
        if line and cell_len(candidate) > console.width:
            console.print(line, soft_wrap=True, highlight=False)
            candidate = pad + it
        line = candidate
    if line:
        console.print(line, soft_wrap=True, highlight=False)
