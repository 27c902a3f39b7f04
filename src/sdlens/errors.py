"""Errors that are the user's input, not sdlens's bugs: the CLI prints them as one line, no traceback."""

from __future__ import annotations

from pathlib import Path


class SdlensError(Exception):
    """A problem with the user's input (a file, a folder, an option), described in one line."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class CheckpointError(SdlensError):
    """A file that cannot be read as a checkpoint (missing, truncated, malformed)."""


class UnsafePickleError(CheckpointError):
    """A pickle that references globals outside the allowed set; nothing from it was executed."""

    def __init__(self, path: str | Path | None, globals_found: list[str]):
        from sdlens.io.limits import MAX_MESSAGE_VALUE, clip

        self.globals_found = sorted(set(globals_found))
        shown = [clip(g, MAX_MESSAGE_VALUE) for g in self.globals_found[:8]]
        more = len(self.globals_found) - len(shown)
        names = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
        super().__init__(path, f"unsafe pickle: references {names} (refused; nothing from the file was executed)")
