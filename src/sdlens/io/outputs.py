"""Outputs never overwrite inputs, and a failed run leaves no folder behind.

Every command calls :func:`check_outputs` with all its input paths and all the paths it will write, before
doing any work; it raises :class:`OutputConflictError` (one line, exit status 2) when an output is an input:

- an output file that is an input file, or a file inside an input folder — the same file by device and inode,
  so through symlinks and hard links as well;
- an output folder that is an input folder; one holding an input file at a name the command writes
  (``OutFolder.writes``; so ``matrix models/ --out .`` is fine); one whose whole content is replaced
  (``whole``) holding any input;
- an output file that is an existing folder, or an output folder that is an existing file.

:func:`remove_created_on_failure` wraps the work: folders that did not exist before (the output folders and the
missing parents of output files) are removed again if the run fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sdlens.errors import SdlensError

WALK_LIMIT = (
    20_000  # files looked at under one input folder (hard links into a huge folder go unnoticed past it)
)


class OutputConflictError(SdlensError):
    """An output path that would overwrite (or replace) an input; nothing was read or written."""


@dataclass(frozen=True)
class OutFile:
    """A file the command writes (``option`` names it in messages: ``--json``, ``OUT``...)."""

    option: str
    path: Path


@dataclass(frozen=True)
class OutFolder:
    """A folder the command writes into: files matching ``writes`` (globs, relative to the folder); ``whole``:
    the folder as a whole is written (or replaced), so no input may be anywhere inside it."""

    option: str
    path: Path
    writes: tuple[str, ...] = ("*",)
    whole: bool = False


Output = OutFile | OutFolder


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _stat(p: Path) -> os.stat_result | None:
    try:
        return os.stat(p)
    except (OSError, ValueError):
        return None


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


class _Inputs:
    """The identities (device, inode) of every input file and of the files under input folders."""

    def __init__(self, inputs: Iterable[str | Path | None]):
        self.files: dict[tuple[int, int], Path] = {}  # identity -> the input it belongs to
        self.named: set[tuple[int, int]] = set()  # identities of the inputs as named (not files inside them)
        self.folders: dict[Path, Path] = {}  # real path -> the input as named
        self.real: dict[Path, Path] = {}  # real path of every input -> as named
        for raw in inputs:
            if raw is None or str(raw) == "":
                continue
            p = Path(raw)
            st = _stat(p)
            if st is None:
                continue  # missing: the reader says so
            real = Path(os.path.realpath(p))
            self.real.setdefault(real, p)
            self.files.setdefault(_ident(st), p)
            self.named.add(_ident(st))
            if p.is_dir():
                self.folders.setdefault(real, p)
                self._walk(p)
            elif p.name.endswith(".index.json"):
                from sdlens.io.folders import WEIGHT_SUFFIXES

                for q in self._listdir(p.parent):
                    if q.name.endswith(WEIGHT_SUFFIXES):
                        self._add(q, p)

    @staticmethod
    def _listdir(d: Path) -> list[Path]:
        try:
            return list(d.iterdir())
        except OSError:
            return []

    def _add(self, q: Path, owner: Path) -> None:
        st = _stat(q)
        if st is not None:
            self.files.setdefault(_ident(st), owner)

    def _walk(self, folder: Path) -> None:
        seen = 0
        for root, _dirs, names in os.walk(folder, followlinks=False):
            for name in names:
                self._add(Path(root, name), folder)
                seen += 1
                if seen >= WALK_LIMIT:
                    return

    def conflict(self, p: Path) -> str | None:
        """How ``p`` (an existing path) is an input: "is the input X" / "is a file of the input X"; or None."""
        st = _stat(p)
        owner = None if st is None else self.files.get(_ident(st))
        if owner is None:
            return None
        if _ident(st) not in self.named:
            return f"is a file of the input {owner}"
        return f"is the input {'folder ' if p.is_dir() else ''}{owner}"


def _refuse(o: Output, why: str) -> OutputConflictError:
    return OutputConflictError(o.path, f"{o.option} {why}; refusing to write it (choose another path)")


def check_outputs(inputs: Iterable[str | Path | None], outputs: Iterable[Output | None]) -> None:
    """Raise :class:`OutputConflictError` if any output would overwrite an input (see the module doc)."""
    outs = [o for o in outputs if o is not None and str(o.path) != ""]
    if not outs:
        return
    ins = _Inputs(inputs)
    for o in outs:
        p = Path(o.path)
        real = Path(os.path.realpath(p))
        st = _stat(p)
        if isinstance(o, OutFile):
            _check_out_file(o, p, st, ins)
        else:
            _check_out_folder(o, p, real, st, ins)


def _check_out_file(o: OutFile, p: Path, st: os.stat_result | None, ins: _Inputs) -> None:
    """An output file: refused if it exists and is an input (or inside an input folder), or is a folder."""
    if st is None:
        return
    why = ins.conflict(p)
    if why is not None:
        raise _refuse(o, why)
    if p.is_dir():
        raise _refuse(o, "is a folder, not a file")


def _check_out_folder(o: OutFolder, p: Path, real: Path, st: os.stat_result | None, ins: _Inputs) -> None:
    """An output folder: refused if it is an input, an existing file, an input folder, (``whole``) holds any
    input, or holds an input at a name it writes. The checks run in that order."""
    if st is not None:
        why = ins.conflict(p)
        if why is not None:
            raise _refuse(o, why)
        if not p.is_dir():
            raise _refuse(o, "is a file, not a folder")
    for folder_real, folder in ins.folders.items():
        if real == folder_real:
            raise _refuse(o, f"is the input folder {folder}")
        if o.whole and real in folder_real.parents:
            raise _refuse(o, f"contains the input folder {folder}")
    if o.whole:
        for in_real, named in ins.real.items():
            if _inside(in_real, real):
                raise _refuse(o, f"contains the input {named}")
    if st is None:
        return
    for pattern in o.writes:
        for q in p.glob(pattern):
            why = ins.conflict(q)
            if why is not None:
                raise _refuse(o, f"holds {q.name}, which {why}")


def _first_missing(p: Path) -> Path | None:
    """The topmost folder of ``p`` (``p`` included) that does not exist yet."""
    p = Path(os.path.abspath(p))
    top = None
    while not os.path.lexists(p):
        top = p
        if p.parent == p:
            break
        p = p.parent
    return top


@contextlib.contextmanager
def remove_created_on_failure(
    folders: Iterable[str | Path | None] = (),
    files: Iterable[str | Path | None] = (),
    keep: Callable[[], bool] | None = None,
) -> Iterator[None]:
    """Remove, if the body fails (any exception, interrupts included, but not a zero exit), the folders among
    ``folders`` and the parents of ``files`` that do not exist now — unless ``keep()`` says to keep them (e.g.
    a folder holding partial results to resume from)."""
    created = {_first_missing(Path(f)) for f in folders if f is not None}
    created |= {_first_missing(Path(f).parent) for f in files if f is not None}
    created.discard(None)
    try:
        yield
    except BaseException as e:
        if getattr(e, "exit_code", getattr(e, "code", 1)) not in (0, None) and not (
            keep is not None and keep()
        ):
            for d in created:
                if d is not None and d.is_dir() and not d.is_symlink():
                    shutil.rmtree(d, ignore_errors=True)
        raise
