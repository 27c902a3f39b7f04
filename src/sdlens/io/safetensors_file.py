"""Header-only opening of .safetensors files, with every offset validated before it is trusted."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from sdlens.errors import CheckpointError
from sdlens.io.base import Checkpoint, TensorInfo
from sdlens.io.dtypes import DTYPES

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit


def is_safetensors(head: bytes, file_size: int) -> bool:
    """Whether the first bytes look like a safetensors file: u64 header length, then a JSON object."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= min(MAX_HEADER_BYTES, file_size - 8) and head[8:9] == b"{"


def read_safetensors_header(path: str | Path) -> tuple[dict, int]:
    """The parsed JSON header and the byte offset where the data region starts."""
    path = str(path)
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise CheckpointError(path, f"file is too short to be safetensors ({size} bytes)")
            n = int.from_bytes(raw_len, "little")
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise CheckpointError(
                    path, f"bad safetensors header length {n} (file has {size} bytes; truncated or not safetensors)"
                )
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "safetensors header is not a JSON object")
    return header, 8 + n


class SafetensorsCheckpoint(Checkpoint):
    format = "safetensors"

    def __init__(self, path: str | Path):
        super().__init__(path)
        header, data_start = read_safetensors_header(path)
        src = str(self.path)
        size = self.path.stat().st_size
        data_len = size - data_start
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict):
            raise CheckpointError(src, "safetensors __metadata__ is not a JSON object")
        self.metadata = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
        spans: list[tuple[int, int, str]] = []
        for key, entry in header.items():
            info = _parse_entry(src, key, entry, data_start)
            begin, end = entry["data_offsets"]
            if end > data_len:
                raise CheckpointError(
                    src, f"tensor {key!r} ends at byte {end} of a {data_len}-byte data region (file truncated?)"
                )
            spans.append((begin, end, key))
            self.tensors[key] = info
        spans.sort()
        for (_b0, e0, k0), (b1, _e1, k1) in zip(spans, spans[1:], strict=False):
            if b1 < e0:
                raise CheckpointError(src, f"tensors {k0!r} and {k1!r} overlap in the data region")
        # present the index in file order
        self.tensors = {k: self.tensors[k] for _, _, k in spans}


def _parse_entry(src: str, key: str, entry: object, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise CheckpointError(src, f"header entry {key!r} is not an object")
    dtype, shape, offs = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        raise CheckpointError(src, f"tensor {key!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise CheckpointError(src, f"tensor {key!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offs, list)
        or len(offs) != 2
        or not all(isinstance(o, int) and o >= 0 for o in offs)
        or offs[1] < offs[0]
    ):
        raise CheckpointError(src, f"tensor {key!r} has invalid data_offsets {offs!r}")
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if offs[1] - offs[0] != expected:
        raise CheckpointError(
            src, f"tensor {key!r}: {dtype}{shape} needs {expected} bytes but data_offsets span {offs[1] - offs[0]}"
        )
    return TensorInfo(key, tuple(shape), dtype, src, data_start + offs[0])
