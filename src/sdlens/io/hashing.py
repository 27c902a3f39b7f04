"""The hashes users search by: sha256 (Civitai AutoV2 = first 10 hex), and A1111's old 8-hex hash."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

OLD_HASH_OFFSET = 0x100000  # 1 MiB
OLD_HASH_LENGTH = 0x10000  # 64 KiB


@dataclass
class FileHashes:
    path: str
    sha256: str
    autov2: str  # first 10 hex digits of sha256 (Civitai / A1111)
    a1111_old: str  # sha256 of 64 KiB at 1 MiB, first 8 hex digits

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def hash_file(
    path: str | Path, progress: Callable[[int], None] | None = None, block: int = 8 << 20
) -> FileHashes:
    """Stream the file once; ``progress`` is called with each block's byte count."""
    h = hashlib.sha256()
    buf = bytearray(block)
    view = memoryview(buf)
    from sdlens.io.base import open_regular, reading

    with reading(path), open_regular(path) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            if progress:
                progress(n)
        f.seek(OLD_HASH_OFFSET)
        old = hashlib.sha256(f.read(OLD_HASH_LENGTH)).hexdigest()[:8]
    digest = h.hexdigest()
    return FileHashes(str(path), digest, digest[:10], old)
