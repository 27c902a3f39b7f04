"""Checkpoints spread over several files: diffusers folders and sharded models (``*.index.json``)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from sdlens.errors import CheckpointError
from sdlens.io.base import Checkpoint, TensorInfo
from sdlens.io.limits import short

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# preferred weight file names inside a diffusers component folder, best first
_COMPONENT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)
# sub-folders of a diffusers pipeline that hold weights
PIPELINE_PARTS = (
    "unet",
    "transformer",
    "prior",
    "controlnet",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
)


class CompositeCheckpoint(Checkpoint):
    """Several checkpoints shown as one; keys may be prefixed with the part they came from."""

    def __init__(self, path: str | Path, fmt: str):
        super().__init__(path)
        self.format = fmt
        self.parts: dict[str, Checkpoint] = {}
        self.configs: dict[str, dict[str, Any]] = {}  # part -> its config.json
        self._where: dict[str, tuple[Checkpoint, str]] = {}

    def add(self, prefix: str, ckpt: Checkpoint) -> None:
        self.parts[f"{prefix}/{ckpt.path.name}" if prefix else ckpt.path.name] = ckpt
        for key, info in ckpt.tensors.items():
            full = f"{prefix}.{key}" if prefix else key
            if full in self._where:
                raise CheckpointError(self.path, f"key {short(full)} appears in two shards")
            self.tensors[full] = TensorInfo(full, info.shape, info.dtype, info.source, info.offset, info.extra)
            self._where[full] = (ckpt, key)
        for k, v in ckpt.metadata.items():
            self.metadata.setdefault(k, v)
        for k, v in ckpt.extras.items():
            self.extras.setdefault(k, v)

    @property
    def files(self) -> list[Path]:
        return [f for c in self.parts.values() for f in c.files]

    def is_plain(self, key: str) -> bool:
        ckpt, inner = self._where[key]
        return ckpt.is_plain(inner)

    def read(self, key: str, *, copy: bool = True):
        ckpt, inner = self._where[key]
        return ckpt.read(inner, copy=copy)

    def close(self) -> None:
        for c in self.parts.values():
            c.close()
        super().close()


def open_sharded(index_path: Path, prefix: str = "", into: CompositeCheckpoint | None = None) -> CompositeCheckpoint:
    """A model split into shards listed by ``*.index.json`` (``{"weight_map": {key: file}}``)."""
    from sdlens.io.open import open_file

    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
        assert isinstance(weight_map, dict)
    except (OSError, ValueError, KeyError, AssertionError, TypeError):
        raise CheckpointError(index_path, "not a valid shard index (expected JSON with a 'weight_map')") from None
    comp = into or CompositeCheckpoint(index_path, "sharded")
    if isinstance(index.get("metadata"), dict):
        comp.metadata.update({f"index.{k}": str(v) for k, v in index["metadata"].items()})
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.exists():
            raise CheckpointError(index_path, f"shard {short(shard)} listed in the index is missing")
        comp.add(prefix, open_file(shard_path))
    missing = set(weight_map) - {k.removeprefix(f"{prefix}.") if prefix else k for k in comp._where}
    if missing:
        raise CheckpointError(index_path, f"{len(missing)} keys of the index are in no shard (e.g. {short(sorted(missing)[0])})")
    return comp


def _component_weights(folder: Path) -> Path | None:
    for name in _COMPONENT_FILES:
        if (folder / name).is_file():
            return folder / name
    indexes = sorted(folder.glob("*.safetensors.index.json")) or sorted(folder.glob("*.bin.index.json"))
    if indexes:
        return indexes[0]
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    return files[0] if len(files) == 1 else None


def _read_config(folder: Path) -> dict[str, Any]:
    cfg = folder / "config.json"
    if cfg.is_file():
        try:
            data = json.loads(cfg.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}
    return {}


def is_model_folder(path: Path) -> bool:
    """A diffusers pipeline folder, or one component folder (weights + config.json)."""
    if (path / "model_index.json").is_file() or any((path / p).is_dir() for p in PIPELINE_PARTS):
        return True
    return (path / "config.json").is_file() and _component_weights(path) is not None


def open_folder(path: Path) -> CompositeCheckpoint:
    """A diffusers pipeline folder (parts prefixed ``unet.``, ``vae.``, ``text_encoder.`` ...) or a single
    component folder (bare keys)."""
    from sdlens.io.open import open_file

    comp = CompositeCheckpoint(path, "diffusers-folder")
    parts = [p for p in PIPELINE_PARTS if (path / p).is_dir()]
    folders = [(p, path / p) for p in parts] if parts else [("", path)]
    for prefix, folder in folders:
        weights = _component_weights(folder)
        if weights is None:
            continue
        comp.configs[prefix or "model"] = _read_config(folder)
        if weights.name.endswith(".index.json"):
            open_sharded(weights, prefix, into=comp)
        else:
            comp.add(prefix, open_file(weights))
    if not comp.tensors:
        raise CheckpointError(path, "folder holds no model weights (no .safetensors/.bin/.ckpt in a known layout)")
    model_index = path / "model_index.json"
    if model_index.is_file():
        with contextlib.suppress(OSError, ValueError):
            comp.configs["model_index"] = json.loads(model_index.read_text())
    return comp
