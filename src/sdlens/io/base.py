"""The lazy checkpoint: an index of tensors (from headers only) and reads of tensor data on demand.

Every reader (safetensors, torch pickles, diffusers folders, shards) produces a :class:`Checkpoint` whose
``tensors`` map each key to a :class:`TensorInfo`. Data is read only when asked for, from a memory map, one
tensor (or one chunk of a tensor) at a time, in file-offset order when iterating.
"""

from __future__ import annotations

import contextlib
import math
import mmap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlens.errors import CheckpointError
from sdlens.io.dtypes import DTYPES, torch_dtype

_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U8": "u1", "BOOL": "?"}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, known without reading its data."""

    key: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name (F16, BF16, F32, ...)
    source: str  # path of the file holding the bytes
    offset: int  # absolute byte offset of the tensor's first element in ``source``
    # reader-specific location details (e.g. strides of a torch view); not part of the tensor's identity
    extra: Any = field(default=None, compare=False, repr=False)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "nbytes": self.nbytes}


class Checkpoint:
    """A lazily opened checkpoint. Use as a context manager, or call :meth:`close`."""

    format: str = "unknown"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tensors: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        self.extras: dict[str, Any] = {}  # top-level non-tensor entries of a pickle (epoch, global_step, ...)
        self._maps: dict[str, mmap.mmap] = {}
        self._files: dict[str, Any] = {}

    # ------------------------------------------------------------------ index
    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def keys(self) -> list[str]:
        return list(self.tensors)

    @property
    def files(self) -> list[Path]:
        """The files whose bytes make up this checkpoint."""
        return [self.path]

    @property
    def file_size(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def in_file_order(self, keys: Iterable[str] | None = None) -> list[str]:
        """Keys sorted by (file, byte offset), so that a pass over them reads each file front to back."""
        keys = self.tensors.keys() if keys is None else keys
        return sorted(keys, key=lambda k: (self.tensors[k].source, self.tensors[k].offset))

    # ------------------------------------------------------------------ data
    def _map(self, source: str) -> mmap.mmap:
        m = self._maps.get(source)
        if m is None:
            try:
                f = open(source, "rb")  # noqa: SIM115 - kept open for the map's lifetime
            except OSError as e:
                raise CheckpointError(source, f"cannot open: {e.strerror}") from None
            self._files[source] = f
            # ACCESS_COPY: pages are shared with the page cache and copy-on-write, so tensors built on the map
            # are writable without ever being able to modify the input file.
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            self._maps[source] = m
        return m

    def _check_bounds(self, info: TensorInfo, m: mmap.mmap) -> None:
        if info.offset < 0 or info.offset + info.nbytes > len(m):
            raise CheckpointError(
                info.source,
                f"tensor {info.key!r} needs bytes {info.offset}..{info.offset + info.nbytes} "
                f"but the file has {len(m)} (truncated?)",
            )

    def is_plain(self, key: str) -> bool:
        """Whether the tensor's bytes are one contiguous run at ``offset`` (false for strided torch views)."""
        return True

    def read(self, key: str, *, copy: bool = True):
        """One tensor, in its stored dtype. ``copy=False`` returns a view on the file's memory map."""
        import torch

        info = self.tensors[key]
        m = self._map(info.source)
        self._check_bounds(info, m)
        if info.numel == 0:
            return torch.empty(info.shape, dtype=torch_dtype(info.dtype))
        t = torch.frombuffer(m, dtype=torch_dtype(info.dtype), count=info.numel, offset=info.offset)
        t = t.view(info.shape)
        return t.clone() if copy else t

    def read_numpy(self, key: str):
        """A small tensor as a numpy array, without importing torch (bf16 widened to float32)."""
        import numpy as np

        info = self.tensors[key]
        if not self.is_plain(key) or info.dtype not in _NUMPY:
            t = self.read(key)
            return (t.float() if t.is_floating_point() else t).numpy()
        m = self._map(info.source)
        self._check_bounds(info, m)
        raw = np.frombuffer(m, dtype=_NUMPY[info.dtype], count=info.numel, offset=info.offset).reshape(info.shape)
        if info.dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.copy()

    def raw_bytes(self, key: str):
        """The tensor's stored bytes as a flat uint8 numpy view on the memory map (no copy, no torch), or
        ``None`` when they are not one contiguous run (strided views in some .ckpt files)."""
        import numpy as np

        if not self.is_plain(key):
            return None
        info = self.tensors[key]
        m = self._map(info.source)
        self._check_bounds(info, m)
        return np.frombuffer(m, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def read_chunks(self, key: str, chunk_bytes: int = 64 << 20) -> Iterator[Any]:
        """A tensor's elements as flat 1-D views of at most ``chunk_bytes`` each, in order."""
        info = self.tensors[key]
        flat = self.read(key, copy=False).reshape(-1)
        step = max(1, chunk_bytes // info.itemsize)
        for start in range(0, info.numel, step):
            yield flat[start : start + step]

    def iter_tensors(self, keys: Iterable[str] | None = None, *, copy: bool = False) -> Iterator[tuple[str, Any]]:
        """(key, tensor) pairs in file-offset order; by default views on the memory map (no copy)."""
        for k in self.in_file_order(keys):
            yield k, self.read(k, copy=copy)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        for m in self._maps.values():
            with contextlib.suppress(BufferError):  # a tensor view is alive; the map closes when collected
                m.close()
        for f in self._files.values():
            f.close()
        self._maps.clear()
        self._files.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} {len(self.tensors)} tensors>"
