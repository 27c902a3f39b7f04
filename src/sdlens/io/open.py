"""``open_checkpoint(path)``: one entry point for every format, chosen by content, not by file name."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sdlens.errors import CheckpointError
from sdlens.io.base import Checkpoint, check_regular, os_problem, reading
from sdlens.io.files import open_file
from sdlens.io.folders import (
    INDEX_NAME,
    WEIGHT_SUFFIXES,
    check_variant,
    is_model_folder,
    open_folder,
    open_sharded,
)

__all__ = ["expand_paths", "open_checkpoint", "open_file"]

# single model files a folder given on the command line expands to (diffusers folders' own weights aside)
MODEL_SUFFIXES = (*WEIGHT_SUFFIXES, ".gguf", ".sft")


def open_checkpoint(path: str | Path, variant: str | None = None) -> Checkpoint:
    """Open a checkpoint lazily: a .safetensors / .ckpt / .pt / .pth / .bin file, a ``*.index.json`` shard
    index, or a diffusers folder. Only headers are read; tensors are read on demand.

    ``variant`` (``"fp16"``, ``"bf16"``, ``"non_ema"`` ...) picks a diffusers folder's variant files
    (``*.fp16.safetensors``, sharded ``*.fp16-00001-of-00002.safetensors``); by default the full-precision files
    are read, and a component that only has a variant is read from it with a note (``folder notes``). Single
    files and indexes are read as named.

    Raises :class:`~sdlens.errors.CheckpointError` with a one-line explanation for anything unreadable:
    whatever a reader meets (malformed content, a FIFO, a symlink loop) ends as that one line, naming the file.
    """
    check_variant(variant)
    p = Path(path)
    with reading(p):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise CheckpointError(p, "no such file or folder") from None
        except OSError as e:
            raise CheckpointError(p, f"cannot open: {os_problem(e)}") from None
        if stat.S_ISDIR(st.st_mode):
            if not is_model_folder(p):
                raise CheckpointError(
                    p, "folder holds no model weights (not a diffusers folder; pass the files inside)"
                )
            return open_folder(p, variant)
        check_regular(p, st.st_mode)
        if INDEX_NAME.fullmatch(p.name):
            return open_sharded(p)
        return open_file(p)


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files and model folders named on a command line; a plain folder expands to the weight files in it."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir() and not is_model_folder(p):
            found = sorted(
                q
                for q in p.iterdir()
                if (q.is_file() and q.suffix in MODEL_SUFFIXES) or (q.is_dir() and is_model_folder(q))
            )
            out.extend(found if found else [p])
        else:
            out.append(p)
    return out
