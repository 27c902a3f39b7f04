"""The files a command writes besides its table: checked before anything is read, written after.

Every command with ``--json`` / ``--plot`` (and ``-o``) goes through :func:`planned_outputs` (each output's
folder must exist, none may be an input) and :func:`write_json` / :func:`said_written`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sdlens.io.outputs import OutFile


def planned_outputs(
    inputs: Iterable[Path | None], outputs: dict[str, Path | Iterable[Path] | None]
) -> list[OutFile]:
    """The outputs (option -> path, or several paths) as OutFiles, refused if a folder is missing or one
    would overwrite an input."""
    from sdlens import console
    from sdlens.io.outputs import check_outputs

    files: list[OutFile] = []
    for option, paths in outputs.items():
        if paths is None:
            continue
        for path in [paths] if isinstance(paths, Path) else paths:
            console.output_path(path, option)
            files.append(OutFile(option, path))
    check_outputs(list(inputs), files)
    return files


def said_written(what: str, path: Path) -> None:
    """``JSON written to FILE`` (the name made safe for the terminal)."""
    from sdlens import console
    from sdlens.render.safe_text import safe

    console.out.print(f"{what} written to {safe(path)}", soft_wrap=True, highlight=False)


def write_json(result: Any, path: Path | None) -> None:
    """``result`` (a dataclass or plain data) as JSON at ``path``, atomically, and said so."""
    if path is None:
        return
    from sdlens.io.atomic import write_text_atomic
    from sdlens.render.jsonout import dumps

    write_text_atomic(path, dumps(result))
    said_written("JSON", path)
