"""One sequential read of a checkpoint's files that serves several consumers: every byte goes to the file's
:class:`~sdlens.io.hashing.Hasher`, and the elements of every tensor stored in the bytes just read go to
``on_piece``, so ``inspect --scan --hash`` reads each file once, front to back.

A reader thread reads (and hashes) the next block while the caller's ``on_piece`` works on the previous one.
An element that straddles two blocks is handed over on its own once both halves are in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from sdlens.errors import CheckpointError
from sdlens.io.base import _NUMPY, Checkpoint, TensorInfo, open_regular
from sdlens.io.hashing import FileHashes, Hasher
from sdlens.io.limits import short
from sdlens.io.stream import read_ahead, read_exact

BLOCK = 16 << 20
OnPiece = Callable[[TensorInfo, int, np.ndarray], None]  # (tensor, first element, flat raw elements)


def _blocks(path: Path, size: int, hasher: Hasher | None, block: int) -> Iterator[tuple[int, np.ndarray]]:
    """(file offset, bytes) of consecutive blocks, read ahead and hashed by a thread; each array is valid
    until the next one is requested."""
    bufs = [np.empty(block, dtype=np.uint8) for _ in range(3)]  # one read, one queued, one in use

    def blocks() -> Iterator[tuple[int, np.ndarray]]:
        with open_regular(path, buffering=0) as f:
            for i, pos in enumerate(range(0, size, block)):
                view = memoryview(bufs[i % 3])[: min(block, size - pos)]
                read_exact(f, pos, view, str(path))
                if hasher is not None:
                    hasher.update(view)
                yield pos, bufs[i % 3][: len(view)]

    return read_ahead(blocks(), "sdlens-onepass")


def _raw(info: TensorInfo, data: np.ndarray) -> np.ndarray:
    if data.ctypes.data % info.itemsize:
        data = data.copy()
    return data.view(_NUMPY.get(info.dtype, "u1"))


def read_once(
    ckpt: Checkpoint,
    on_piece: OnPiece,
    *,
    hashes: bool = True,
    progress: Callable[[int], None] | None = None,
    block: int = BLOCK,
) -> tuple[list[FileHashes], list[str]]:
    """Read each of ``ckpt.files`` once, in order; returns the files' hashes (when ``hashes``) and the keys
    whose bytes are not one contiguous run (strided torch views), which the caller reads on its own."""
    if block < 8:
        raise ValueError("block must hold at least one element of any dtype")
    strided = [k for k in ckpt.in_file_order() if not ckpt.is_plain(k)]
    skip = set(strided)
    by_file: dict[str, list[TensorInfo]] = {}
    for k in ckpt.in_file_order():
        info = ckpt.tensors[k]
        if k not in skip and info.nbytes:
            by_file.setdefault(str(Path(info.source)), []).append(info)
    out: list[FileHashes] = []
    for path in ckpt.files:
        hasher = Hasher(path) if hashes else None
        infos = by_file.get(str(Path(path)), [])
        size = path.stat().st_size
        bad = next((i for i in infos if i.offset + i.nbytes > size), None)
        if bad is not None:
            raise CheckpointError(
                path,
                f"tensor {short(bad.key)} needs bytes {bad.offset}..{bad.offset + bad.nbytes} "
                f"but the file has {size} (truncated?)",
            )
        _dispatch(_blocks(path, size, hasher, block), infos, on_piece, progress)
        if hasher is not None:
            out.append(hasher.result())
    return out, strided


def _dispatch(
    blocks: Iterator[tuple[int, np.ndarray]],
    infos: list[TensorInfo],
    on_piece: OnPiece,
    progress: Callable[[int], None] | None,
) -> None:
    """Hand each tensor (``infos`` sorted by offset; they may overlap) its whole elements in every block."""
    nxt = 0
    active: list[TensorInfo] = []
    tails: dict[str, bytes] = {}  # key -> leading bytes of an element cut by the previous block's end
    for pos, data in blocks:
        end = pos + len(data)
        while nxt < len(infos) and infos[nxt].offset < end:
            active.append(infos[nxt])
            nxt += 1
        for info in active:
            isz, off = info.itemsize, info.offset
            lo = max(pos, off)
            hi = min(end, off + info.nbytes)
            if lo >= hi:
                continue
            first = -(-(lo - off) // isz)  # first element starting in this block
            cut = tails.pop(info.key, None)
            if cut is not None:  # finish the element cut at pos
                piece = np.frombuffer(cut + data[: off + first * isz - pos].tobytes(), dtype=np.uint8)
                on_piece(info, first - 1, _raw(info, piece.copy()))
            last = (hi - off) // isz  # one past the last element ending in this block
            if last > first:
                on_piece(info, first, _raw(info, data[off + first * isz - pos : off + last * isz - pos]))
            if off + last * isz < hi:  # an element continues in the next block
                tails[info.key] = data[off + last * isz - pos : hi - pos].tobytes()
        active = [i for i in active if i.offset + i.nbytes > end]
        if progress:
            progress(len(data))
