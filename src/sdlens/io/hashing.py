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


class Hasher:
    """Both hashes of one file, fed its bytes front to back (by whoever is reading them anyway)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.pos = 0
        self._sha = hashlib.sha256()
        self._old = bytearray()

    def update(self, data) -> None:
        """The next bytes of the file (any buffer)."""
        view = memoryview(data).cast("B")
        self._sha.update(view)
        lo, hi = max(OLD_HASH_OFFSET, self.pos), min(OLD_HASH_OFFSET + OLD_HASH_LENGTH, self.pos + len(view))
        if lo < hi:
            self._old += view[lo - self.pos : hi - self.pos]
        self.pos += len(view)

    def result(self) -> FileHashes:
        digest = self._sha.hexdigest()
        return FileHashes(self.path, digest, digest[:10], hashlib.sha256(self._old).hexdigest()[:8])


def hash_file(
    path: str | Path, progress: Callable[[int], None] | None = None, block: int = 8 << 20
) -> FileHashes:
    """Stream the file once; ``progress`` is called with each block's byte count."""
    h = Hasher(path)
    buf = bytearray(block)
    view = memoryview(buf)
    from sdlens.io.base import open_regular, reading

    with reading(path), open_regular(path) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            if progress:
                progress(n)
    return h.result()


def legacy_hash(path: str | Path) -> str:
    """A1111's old 8-hex model hash alone: sha256 of the 64 KiB at 1 MiB (fewer bytes for a short file, as
    A1111 reads them), reading only those bytes."""
    from sdlens.io.base import open_regular, reading

    with reading(path), open_regular(path) as f:
        f.seek(OLD_HASH_OFFSET)
        data = f.read(OLD_HASH_LENGTH)
    return hashlib.sha256(data).hexdigest()[:8]
