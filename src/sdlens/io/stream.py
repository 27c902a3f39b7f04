"""Stream a checkpoint's tensors front to back: each file read once, sequentially, into reused buffers.

A reader thread fills one buffer while the caller works on the previous one (reading and arithmetic overlap),
so a pass over a model costs about max(read time, compute time) and a bounded amount of memory: three
buffers of ``chunk_bytes``, whatever the model size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdlens.io.base import _NUMPY, Checkpoint, TensorInfo, open_regular, reading
from sdlens.io.dtypes import torch_dtype
from sdlens.io.quant import quant_of

DEFAULT_CHUNK = 64 << 20


@dataclass
class Piece:
    """Part (or all) of one tensor: elements ``start .. start + count`` as a flat array.

    ``array`` (numpy; bf16 and fp8 as their raw unsigned integers) lives in a reused buffer: it is valid only
    until the next piece is requested. ``data`` gives the same memory as a torch tensor of the stored dtype.
    """

    key: str
    info: TensorInfo
    start: int
    array: np.ndarray

    @property
    def count(self) -> int:
        return int(self.array.size)

    @property
    def last(self) -> bool:
        return self.start + self.count >= self.info.numel

    @property
    def data(self) -> Any:
        import torch

        t = torch.from_numpy(self.array)
        want = torch_dtype(self.info.dtype)
        return t if t.dtype == want else t.view(want)


class _LazyTorchInts(dict):
    def __missing__(self, size: int) -> Any:
        import torch

        self.update({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64})
        return self[size]


_TORCH_INT: dict[int, Any] = _LazyTorchInts()


def _raw_dtype(dtype: str) -> str:
    return _NUMPY.get(dtype, "u1")


def _plan(ckpt: Checkpoint, keys: Iterable[str] | None, chunk: int) -> list[tuple[str, int, int, list]]:
    """Group tensors (in file order) into byte spans of at most ``chunk`` bytes: (source, begin, end, parts)
    where parts are (key, byte offset in file, first element, element count)."""
    spans: list[tuple[str, int, int, list]] = []
    cur: list | None = None
    for key in ckpt.in_file_order(keys):
        info = ckpt.tensors[key]
        q = quant_of(info)
        if q is not None:  # decoded a whole number of units (rows, blocks) at a time
            per = max(q.unit, chunk // 4 // q.unit * q.unit)
            for first in range(0, max(info.numel, 1), per):
                spans.append((info.source, -1, -1, [(key, -1, first, min(per, info.numel - first))]))
            cur = None
            continue
        if not ckpt.is_plain(key):
            ckpt.check_view(key)  # a broadcast view refused now, before any buffer is sized or byte read
            spans.append((info.source, -1, -1, [(key, -1, 0, info.numel)]))
            cur = None
            continue
        step = max(1, chunk // info.itemsize)
        for first in range(0, max(info.numel, 1), step):
            count = min(step, info.numel - first)
            off = info.offset + first * info.itemsize
            nbytes = count * info.itemsize
            if (
                cur is not None
                and cur[0] == info.source
                and off >= cur[2]
                and off + nbytes - cur[1] <= chunk
                and off - cur[2] < 4096
            ):
                cur[3].append((key, off, first, count))
                cur[2] = off + nbytes
            else:
                cur = [info.source, off - off % 8, off + nbytes, [(key, off, first, count)]]
                spans.append(cur)  # type: ignore[arg-type]
    return [tuple(s) for s in spans]  # type: ignore[misc]


def read_ahead(items: Iterator[Any], name: str = "sdlens-reader") -> Iterator[Any]:
    """``items`` produced by a thread one step ahead of the consumer (the next block is read while the
    previous one is worked on); an exception in the producer is raised in the consumer, and stopping early
    stops the producer."""
    q: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer
            put(e)

    th = threading.Thread(target=produce, daemon=True, name=name)
    th.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        th.join()


def read_exact(f: Any, begin: int, view: memoryview, source: str) -> int:
    """Fill ``view`` with the file's bytes from ``begin`` (seeking only when not already there); a short file
    is a ``CheckpointError`` naming it."""
    from sdlens.errors import CheckpointError

    if f.tell() != begin:
        f.seek(begin)
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise CheckpointError(
                source, f"file ended at byte {begin + got}, expected {begin + len(view)} (truncated?)"
            )
        got += n
    return got


def stream(
    ckpt: Checkpoint,
    keys: Iterable[str] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK,
    threaded: bool = True,
) -> Iterator[Piece]:
    """Yield every (selected) tensor as one or more :class:`Piece` in file-offset order."""
    spans = _plan(ckpt, keys, chunk_bytes)
    biggest = max((s[2] - s[1] for s in spans if s[1] >= 0), default=0)
    buffers = [np.empty(biggest + 8, dtype=np.uint8) for _ in range(3 if threaded else 1)]
    files: dict[str, Any] = {}

    def fill(i: int, span) -> tuple:
        source, begin, end, parts = span
        if begin < 0:
            return span, None
        buf = buffers[i % len(buffers)]
        with reading(source):
            f = files.get(source)
            if f is None:
                f = files[source] = open_regular(source, buffering=0)
            read_exact(f, begin, memoryview(buf)[: end - begin], source)
        return span, buf

    def pieces(span, buf) -> Iterator[Piece]:
        source, begin, _end, parts = span
        for key, off, first, count in parts:
            info = ckpt.tensors[key]
            if buf is None and quant_of(info) is not None:  # a chunk of a quantised tensor, dequantised
                values = ckpt.read_quantised(key, first, first + count) if count else np.empty(0, np.float32)
                if info.dtype == "BF16":  # exact bf16 values (bitsandbytes' dtype): their bits
                    values = (np.ascontiguousarray(values).view(np.uint32) >> 16).astype(np.uint16)
                elif info.dtype == "F16":
                    values = values.astype(np.float16)
                yield Piece(key, info, first, values)
                continue
            if buf is None:  # a strided torch view: read it whole
                t = ckpt.read(key).reshape(-1)
                raw_np = (
                    t.view(_TORCH_INT[info.itemsize]).numpy()
                    if info.dtype in ("BF16", "F8_E4M3", "F8_E5M2")
                    else t.numpy()
                )
                yield Piece(key, info, 0, raw_np.view(_raw_dtype(info.dtype)))
                continue
            rel = off - begin
            raw = buf[rel : rel + count * info.itemsize]
            if rel % info.itemsize:
                raw = raw.copy()
            yield Piece(key, info, first, raw.view(_raw_dtype(info.dtype)))

    try:
        if not threaded:
            for i, span in enumerate(spans):
                yield from pieces(*fill(i, span))
            return
        for item in read_ahead(fill(i, span) for i, span in enumerate(spans)):
            yield from pieces(*item)
    finally:
        for f in files.values():
            f.close()
