"""Write a .safetensors file whose header is known before any data: header first, then tensors streamed.

The caller lists (key, dtype, shape) in the order the data will be written; :func:`build_header` computes the
offsets, :class:`SafetensorsStreamWriter` writes the header and then accepts raw bytes tensor by tensor,
checking that each tensor receives exactly the bytes its header entry promises.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable
from typing import Any

from sdlens.errors import SdlensError
from sdlens.io.dtypes import DTYPES


def build_header(
    entries: Iterable[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None
) -> tuple[bytes, list[int]]:
    """The encoded header (8-byte length prefix included, padded to 8 bytes with spaces) and each tensor's
    byte size, in the given order."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    sizes: list[int] = []
    pos = 0
    for key, dtype, shape in entries:
        if key in header:
            raise ValueError(f"duplicate key {key!r}")
        n = math.prod(shape) * DTYPES[dtype].itemsize
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        sizes.append(n)
        pos += n
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, sizes


class SafetensorsStreamWriter:
    """Header first, then each tensor's bytes in order (:meth:`write` may be called several times per
    tensor; :meth:`end_tensor` checks the count). :meth:`finish` checks completeness and fsyncs."""

    def __init__(self, path: str | os.PathLike, header: bytes, sizes: list[int]):
        self.path = str(path)
        self.header = header
        self.sizes = sizes
        self.index = 0
        self.written = 0  # bytes of the current tensor
        self.f = open(self.path, "wb", buffering=0)  # noqa: SIM115 - closed in finish/close
        self._write_all(header)

    def _write_all(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = self.f.write(view)
            view = view[n:]

    def write(self, data: Any) -> None:
        n = memoryview(data).nbytes
        if self.index >= len(self.sizes) or self.written + n > self.sizes[self.index]:
            raise SdlensError(self.path, "internal error: more bytes written than the header declares")
        self._write_all(data)
        self.written += n

    def end_tensor(self) -> None:
        if self.written != self.sizes[self.index]:
            raise SdlensError(
                self.path,
                f"internal error: tensor {self.index} got {self.written} of {self.sizes[self.index]} bytes",
            )
        self.index += 1
        self.written = 0

    def rewrite_header(self, header: bytes) -> None:
        """Replace the header by one of exactly the same length (e.g. a hash filled in after the data)."""
        if len(header) != len(self.header):
            raise SdlensError(self.path, "internal error: rewritten header changes length")
        os.pwrite(self.f.fileno(), header, 0)
        self.header = header

    def finish(self, drop_cache: bool = False) -> None:
        """Check completeness, fsync, close. ``drop_cache``: then drop the file's (clean) pages from the page
        cache, so that a re-read (verification) reads the disk."""
        if self.index != len(self.sizes):
            raise SdlensError(
                self.path, f"internal error: {len(self.sizes) - self.index} tensors not written"
            )
        self.f.flush()
        fd = self.f.fileno()
        os.fsync(fd)
        if drop_cache and hasattr(os, "posix_fadvise"):
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        self.f.close()

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()
