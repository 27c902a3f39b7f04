"""``open_file(path)``: one weights file, its format recognised from its first bytes (safetensors, torch zip,
legacy pickle), never from its name."""

from __future__ import annotations

import os
from pathlib import Path

from sdlens.errors import CheckpointError
from sdlens.io.base import Checkpoint, open_regular, os_problem, reading
from sdlens.io.gguf_file import GgufCheckpoint, is_gguf
from sdlens.io.pickle_scan import looks_like_pickle
from sdlens.io.safetensors_file import SafetensorsCheckpoint, is_safetensors


def open_file(p: Path, *, quantised: bool = True) -> Checkpoint:
    """Open one weights file (regular files only), recognising its format from its first bytes.
    ``quantised=False``: a safetensors shard whose quantised weights the shard set recognises as a whole."""
    with reading(p):
        return _open_file(Path(p), quantised)


def _open_file(p: Path, quantised: bool = True) -> Checkpoint:
    with open_regular(p) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            head = f.read(512)  # enough to recognise any format (a protocol 0/1 pickle by its first opcodes)
        except OSError as e:
            raise CheckpointError(p, f"cannot read: {os_problem(e)}") from None
    if size == 0:
        raise CheckpointError(p, "empty file (0 bytes)")
    if is_safetensors(head, size):
        return SafetensorsCheckpoint(p, quantised=quantised)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" or head.startswith(b"PK\x05\x06"):
        from sdlens.io.torch_file import open_torch_checkpoint

        return open_torch_checkpoint(p)
    if looks_like_pickle(head):  # a protocol 0/1 pickle has no magic number: scan it, don't guess
        from sdlens.io.torch_file import open_torch_checkpoint

        return open_torch_checkpoint(p)
    if is_gguf(head):
        return GgufCheckpoint(p)
    if p.suffix == ".safetensors":
        # it claims to be safetensors: let the header parser say precisely what is wrong
        return SafetensorsCheckpoint(p, quantised=quantised)
    raise CheckpointError(p, f"not a checkpoint: unrecognised format (first bytes {head[:8].hex()})")
