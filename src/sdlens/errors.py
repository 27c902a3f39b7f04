"""Errors that are the user's input, not sdlens's bugs: the CLI prints them as one line, no traceback."""

from __future__ import annotations

from pathlib import Path


class SdlensError(Exception):
    """A problem with the user's input (a file, a folder, an option), described in one line. The CLI exits
    with ``exit_code``: 2, a usage or input error."""

    exit_code = 2

    def __init__(self, path: str | Path | None, problem: str):
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ProblemsFound(SdlensError):
    """The work was done and a check failed (e.g. ``convert``'s verification of what it wrote): exit code 1."""

    exit_code = 1


class CheckpointError(SdlensError):
    """A file that cannot be read as a checkpoint (missing, truncated, malformed)."""


class UnsafeFileError(CheckpointError):
    """A file refused as unsafe: loading it could run code, or torch could read it differently than sdlens."""


class UnsafeArchiveError(UnsafeFileError):
    """A torch zip that torch's reader (miniz) and sdlens could read differently; refused as ambiguous."""

    def __init__(self, path: str | Path | None, problem: str):
        super().__init__(
            path, f"unsafe (ambiguous) archive: {problem} (refused; nothing from the file was executed)"
        )


class UnsafePickleError(UnsafeFileError):
    """A pickle that references globals outside the allowed set; nothing from it was executed."""

    def __init__(self, path: str | Path | None, globals_found: list[str]):
        from sdlens.io.limits import MAX_MESSAGE_VALUE, clip

        self.globals_found = sorted(set(globals_found))
        shown = [clip(g, MAX_MESSAGE_VALUE) for g in self.globals_found[:8]]
        more = len(self.globals_found) - len(shown)
        names = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
        super().__init__(
            path, f"unsafe pickle: references {names} (refused; nothing from the file was executed)"
        )
