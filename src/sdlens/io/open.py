"""``open_checkpoint(path)``: one entry point for every format, chosen by content, not by file name."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sdlens.errors import CheckpointError
from sdlens.io.base import Checkpoint
from sdlens.io.folders import (
    INDEX_NAME,
    WEIGHT_SUFFIXES,
    check_variant,
    file_kind,
    is_model_folder,
    open_folder,
    open_sharded,
)
from sdlens.io.pickle_scan import looks_like_pickle
from sdlens.io.safetensors_file import SafetensorsCheckpoint, is_safetensors


def open_checkpoint(path: str | Path, variant: str | None = None) -> Checkpoint:
    """Open a checkpoint lazily: a .safetensors / .ckpt / .pt / .pth / .bin file, a ``*.index.json`` shard
    index, or a diffusers folder. Only headers are read; tensors are read on demand.

    ``variant`` (``"fp16"``, ``"bf16"``, ``"non_ema"`` ...) picks a diffusers folder's variant files
    (``*.fp16.safetensors``, sharded ``*.fp16-00001-of-00002.safetensors``); by default the full-precision files
    are read, and a component that only has a variant is read from it with a note (``folder notes``). Single
    files and indexes are read as named.

    Raises :class:`~sdlens.errors.CheckpointError` with a one-line explanation for anything unreadable.
    """
    check_variant(variant)
    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "no such file or directory")
    if p.is_dir():
        if not is_model_folder(p):
            raise CheckpointError(p, "folder holds no model weights (not a diffusers folder; pass the files inside)")
        return open_folder(p, variant)
    if INDEX_NAME.fullmatch(p.name) and p.is_file():
        return open_sharded(p)
    return open_file(p)


def open_file(p: Path) -> Checkpoint:
    """Open one weights file, recognising its format from its first bytes. Only regular files are opened."""
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a named pipe must not block the open
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CheckpointError(p, f"not a regular file ({file_kind(st.st_mode)}); refused")
            size = st.st_size
            head = f.read(512)  # enough to recognise any format (a protocol 0/1 pickle by its first opcodes)
    except OSError as e:
        raise CheckpointError(p, f"cannot read: {e.strerror}") from None
    if size == 0:
        raise CheckpointError(p, "empty file (0 bytes)")
    if is_safetensors(head, size):
        return SafetensorsCheckpoint(p)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" or head.startswith(b"PK\x05\x06"):
        from sdlens.io.torch_file import open_torch_checkpoint

        return open_torch_checkpoint(p)
    if looks_like_pickle(head):  # a protocol 0/1 pickle has no magic number: scan it, don't guess
        from sdlens.io.torch_file import open_torch_checkpoint

        return open_torch_checkpoint(p)
    if head.startswith(b"GGUF"):
        raise CheckpointError(p, "GGUF files are not supported yet")
    if p.suffix == ".safetensors" and len(head) >= 8:
        # it claims to be safetensors: let the header parser say precisely what is wrong
        return SafetensorsCheckpoint(p)
    raise CheckpointError(p, f"not a checkpoint: unrecognised format (first bytes {head[:8].hex()})")


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files and model folders named on a command line; a plain folder expands to the weight files in it."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir() and not is_model_folder(p):
            found = sorted(
                q for q in p.iterdir() if (q.is_file() and q.suffix in WEIGHT_SUFFIXES) or (q.is_dir() and is_model_folder(q))
            )
            out.extend(found if found else [p])
        else:
            out.append(p)
    return out
