"""What every CLI command prints through: the two consoles, the progress bar, the one-line error, the output
folder check and the choices checked while the CLI parses. Commands import this module, never ``sdlens.cli``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from sdlens.errors import SdlensError
from sdlens.render.safe_text import safe, safe_error

EXIT_PROBLEMS = 1  # the command ran and found problems in what it was asked to check
EXIT_USAGE = 2  # usage or input error
EXIT_INTERNAL = 3  # a bug in sdlens (reported in one line)

out = Console(emoji=False)  # emoji=False: ":name:" in a key or a path is shown as written
err = Console(stderr=True, emoji=False)


def fail(e: SdlensError) -> None:
    """The one line of an error, on stderr."""
    err.print(f"[bold red]sdlens: error:[/] {safe_error(e)}", highlight=False, soft_wrap=True)


def as_error(path: Path, e: Exception) -> SdlensError:
    """The safety net of a per-file loop: an unexpected exception while handling ``path`` becomes one line
    naming it (``SDLENS_DEBUG=1`` re-raises instead, traceback and all)."""
    from sdlens.io.base import as_checkpoint_error, debug

    if debug():
        raise e
    return as_checkpoint_error(path, e, "cannot handle this file")


def progress_bar(total: int, description: str) -> tuple[Any, Callable[[int], None]]:
    """A byte progress bar on stderr (shown only on a terminal, gone when done) and its ``advance(n)``."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    p = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    task = p.add_task(safe(description, 80), total=total)
    return p, lambda n: p.advance(task, n)


def output_path(path: Path, option: str) -> Path:
    """An output file or folder: its parent folder must exist (sdlens never creates folder trees by surprise)."""
    parent = path.parent
    if not parent.is_dir():
        raise SdlensError(path, f"{option}: folder {str(parent)!r} does not exist")
    return path


def checked(name: str, allowed: Any) -> Callable[[Any], Any]:
    """A typer option callback: the API's own check of ``name`` against ``allowed`` (a ``Literal``), run while
    the CLI parses, so that a wrong value fails before any work (the API checks it again at its entry)."""
    from sdlens.choices import check_choice

    return lambda value: value if value is None else check_choice(value, name, allowed)
