"""Write test checkpoints: safetensors (real or sparse, header-only), torch pickles (zip or legacy)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sdlens.io.dtypes import DTYPES, st_name


def save_safetensors(
    tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Save ``tensors`` as .safetensors. If any tensor lives on the meta device, write a *sparse* file:
    the real header, then the file truncated to its full length (the data reads as zeros, costs no disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if any(t.device.type == "meta" for t in tensors.values()):
        real = {k: t for k, t in tensors.items() if t.device.type != "meta"}
        specs = {k: (tuple(t.shape), st_name(t.dtype)) for k, t in tensors.items()}
        return write_sparse_safetensors(specs, path, metadata, real)
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def write_sparse_safetensors(
    specs: dict[str, tuple[tuple[int, ...], str]],
    path: str | Path,
    metadata: dict[str, str] | None = None,
    real: dict[str, Any] | None = None,
) -> Path:
    """A safetensors file from (shape, dtype) specs alone: header written, data left as a hole, except for
    the (small) ``real`` tensors, whose bytes are written in place."""
    path = Path(path)
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    pos = 0
    for key, (shape, dtype) in specs.items():
        n = DTYPES[dtype].itemsize
        for d in shape:
            n *= d
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        f.truncate(8 + len(raw) + pos)
        for key, t in (real or {}).items():
            f.seek(8 + len(raw) + header[key]["data_offsets"][0])
            f.write(t.contiguous().view(-1).view(torch_uint8()).numpy().tobytes())
    return path


def torch_uint8():
    import torch

    return torch.uint8


def save_ckpt(
    state_dict: dict[str, Any],
    path: str | Path,
    *,
    wrap: str | None = "state_dict",
    extras: dict[str, Any] | None = None,
    legacy: bool = False,
) -> Path:
    """Save a torch pickle the way training code does: ``{"state_dict": ..., "epoch": ..., ...}``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj: Any = {wrap: state_dict, **(extras or {})} if wrap else state_dict
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path
