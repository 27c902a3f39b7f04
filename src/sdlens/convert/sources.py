"""The sources of a conversion, read in write order: one pass per source file over the tensors that are plain
copies (:mod:`sdlens.convert.passes`), and the few tensors that are not (restored, sliced, transposed, joined)
assembled whole. Shared by the writer and the verification."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sdlens.convert.layouts import Item
from sdlens.errors import SdlensError

if TYPE_CHECKING:
    from sdlens.analysis.lora_apply import LoraBaker
    from sdlens.io.base import Checkpoint

CHUNK_BYTES = 64 << 20


def assemble(item: Item, ckpts: list[Checkpoint], baker: LoraBaker | None = None):
    """The whole source tensor of an item that is not a plain copy (restored, sliced, transposed, joined,
    baked: float32 with the LoRAs' ΔW added to the input tensors ``baker`` plans for)."""
    import torch

    if item.restore == "arange":
        n = item.shape[-1] if item.shape else 0
        return torch.arange(n, dtype=torch.int64).reshape(item.shape)
    if item.restore in ("empty", "value"):  # marker keys (float32, as ComfyUI writes them)
        return torch.full(item.shape, item.value or 0.0, dtype=torch.float32)
    if item.bake and baker is None:
        raise SdlensError(None, f"internal error: {item.key} is to be baked but no LoRA is open")
    parts = []
    for p in item.pieces:
        t = ckpts[p.source].read(p.key)
        if item.bake:
            t = baker.bake(p.key, t) if p.source == 0 and p.key in baker else t.float()
        if p.rows:
            t = t[p.rows[0] : p.rows[1]]
        if p.transpose:
            t = t.t()
        parts.append(t.contiguous())
    t = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
    return t.reshape(item.shape)


def pieces_of(it: Iterator[Any], key: str) -> Iterator[Any]:
    """The stream pieces of one tensor (flat torch views), up to and including its last one."""
    while True:
        p = next(it)
        if p.key != key:
            raise SdlensError(p.info.source, f"internal error: stream gave {p.key!r}, expected {key!r}")
        yield p.data
        if p.last:
            return


def source_streams(entries: list[Item], ckpts: list[Checkpoint]) -> dict[int, Iterator[Any]]:
    """One stream per source over the simple entries' tensors, in write order."""
    from sdlens.io.stream import stream

    keys: dict[int, list[str]] = {}
    for e in entries:
        if e.simple:
            keys.setdefault(e.pieces[0].source, []).append(e.pieces[0].key)
    return {s: stream(ckpts[s], ks, CHUNK_BYTES) for s, ks in keys.items()}


class _LegacyPass:
    """:func:`sdlens.io.stream.stream` behind the :class:`~sdlens.convert.passes.SourcePass` interface, for
    sources with tensors that are not one contiguous run (strided views in some .ckpt files); hashes nothing."""

    def __init__(self, it: Iterator[Any]):
        self.it = it

    def tensor(self, key: str) -> Iterator[Any]:
        from sdlens.convert.passes import Chunk

        for data in pieces_of(self.it, key):
            yield Chunk(key, data, False, None)

    def finish(self) -> dict[str, str]:
        for _ in self.it:
            pass
        return {}

    def close(self) -> None:
        close = getattr(self.it, "close", None)
        if close is not None:
            close()


def open_passes(entries: list[Item], ckpts: list[Checkpoint], to_hash: set[str]) -> dict[int, Any]:
    """One pass per source over the simple entries' tensors (in write order); the source files in ``to_hash``
    are read in full and hashed by it."""
    from sdlens.convert.passes import SourcePass
    from sdlens.io.stream import stream

    keys: dict[int, list[str]] = {}
    for e in entries:
        if e.simple:
            keys.setdefault(e.pieces[0].source, []).append(e.pieces[0].key)
    out: dict[int, Any] = {}
    for s, ks in keys.items():
        ck = ckpts[s]
        if all(ck.is_plain(k) for k in ks):
            out[s] = SourcePass(ck, ks, to_hash)
        else:
            out[s] = _LegacyPass(stream(ck, ks, CHUNK_BYTES))
    return out
