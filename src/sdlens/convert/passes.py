"""The I/O engine of ``sdlens convert``: one sequential pass over each source file, and a threaded writer.

:class:`SourcePass` reads a checkpoint's files front to back in large blocks (the regions of dropped tensors
included when the file must be hashed), feeds every block to a sha256 thread and hands the caller the pieces of
the tensors it asked for, in file order. The disk sees one sequential reader per file: no second reader for the
hash, no seeks between a hashing thread and the converter.

:class:`AsyncWriter` writes in a thread behind a bounded queue, so that reading, casting, hashing and writing
overlap, and records a digest of every tensor's bytes as they are written (the verification re-reads the output
and compares with these digests).

Memory: ``BLOCKS`` read blocks of ``BLOCK_BYTES`` plus ``CAST_BUFFERS`` cast buffers, whatever the model size.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdlens.errors import CheckpointError
from sdlens.io.dtypes import torch_dtype
from sdlens.io.stream import read_exact

if TYPE_CHECKING:
    from sdlens.io.base import Checkpoint

BLOCK_BYTES = 32 << 20
BLOCKS = 6
MERGE_GAP = 4 << 20  # a partial pass reads through gaps smaller than this rather than seeking
_POLL = 0.1


def digest() -> Any:
    """The per-tensor digest of the written bytes (sha256: exact for any practical purpose, GIL released)."""
    return hashlib.sha256()


def _fadvise(fd: int, offset: int, length: int, advice: int) -> None:
    fn = getattr(os, "posix_fadvise", None)
    if fn is not None:
        with contextlib.suppress(OSError):
            fn(fd, offset, length, advice)


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


class _Stop(Exception):
    pass


class _Block:
    """One read block: ``data`` (uint8 torch tensor) holds file bytes ``start .. start + n``. Released (back to
    the pool, its pages dropped from the page cache for very large files) when every user is done with it."""

    __slots__ = ("data", "fd", "file", "n", "pool", "refs", "start")

    def __init__(self, pool: _Pool, data: Any, file: str, fd: int, start: int, n: int, refs: int):
        self.pool, self.data, self.file, self.fd, self.start, self.n, self.refs = (
            pool,
            data,
            file,
            fd,
            start,
            n,
            refs,
        )

    def retain(self) -> None:
        with self.pool.lock:
            self.refs += 1

    def release(self) -> None:
        with self.pool.lock:
            self.refs -= 1
            done = self.refs == 0
        if done:
            if self.pool.drop_cache:
                _fadvise(self.fd, self.start, self.n, getattr(os, "POSIX_FADV_DONTNEED", 4))
            self.pool.free.put(self.data)


class _Pool:
    def __init__(self, count: int, size: int, drop_cache: bool):
        import torch

        self.lock = threading.Lock()
        self.free: queue.Queue = queue.Queue()
        self.drop_cache = drop_cache
        for _ in range(count):
            self.free.put(torch.empty(size, dtype=torch.uint8))


@dataclass
class Part:
    key: str
    begin: int
    end: int
    itemsize: int
    dtype: str


@dataclass
class Chunk:
    """Part (or all) of one tensor, as a flat torch view of its stored dtype, valid until the caller asks for the
    next chunk (or longer, after ``block.retain()``)."""

    key: str
    data: Any
    last: bool
    block: _Block | None


def _regions(parts: list[Part], size: int, full: bool) -> list[tuple[int, int]]:
    if full:
        return [(0, size)]
    out: list[list[int]] = []
    for p in parts:
        if out and p.begin - out[-1][1] < MERGE_GAP:
            out[-1][1] = max(out[-1][1], p.end)
        else:
            out.append([p.begin, p.end])
    return [(b, e) for b, e in out]


def _blocks(regions: list[tuple[int, int]], parts: list[Part], block: int) -> Iterator[tuple[int, int]]:
    """Block spans covering ``regions``, never splitting an element of a tensor."""
    i = 0
    for begin, end in regions:
        pos = begin
        while pos < end:
            stop = min(pos + block, end)
            while i < len(parts) and parts[i].end <= stop:
                i += 1
            if i < len(parts) and parts[i].begin < stop < parts[i].end:
                p = parts[i]
                stop -= (stop - p.begin) % p.itemsize
                if stop <= pos:  # an element larger than the block cannot happen (block >= 8 bytes)
                    raise ValueError("block smaller than an element")
            yield pos, stop
            pos = stop


class SourcePass:
    """Stream the requested tensors of one checkpoint, reading each of its files once, front to back.

    ``full_files``: the files (among those holding requested tensors) to read in full and hash (sha256 of the
    whole file, in :attr:`digests`); the other files are read only where the requested tensors are. Every requested tensor must be plain (contiguous).
    Use :meth:`chunks` for the data, then :meth:`finish` (reads what is left, waits for the hashes) or
    :meth:`close`.
    """

    def __init__(
        self,
        ckpt: Checkpoint,
        keys: list[str],
        full_files: set[str],
        block_bytes: int | None = None,
        blocks: int | None = None,
    ):
        block_bytes = block_bytes or BLOCK_BYTES
        blocks = blocks or BLOCKS
        self.ckpt = ckpt
        by_file: dict[str, list[Part]] = {}
        for k in ckpt.in_file_order(keys):
            info = ckpt.tensors[k]
            by_file.setdefault(info.source, []).append(
                Part(k, info.offset, info.offset + info.nbytes, info.itemsize, info.dtype)
            )
        self.by_file = by_file
        self.order = list(by_file)
        self.full = {f for f in self.order if f in full_files}
        self.block_bytes = block_bytes
        sizes = {f: os.stat(f).st_size for f in self.order}
        self.sizes = sizes
        big = max(sizes.values(), default=0) > _ram_bytes() // 2
        self.pool = _Pool(blocks, block_bytes, drop_cache=big)
        self.digests: dict[str, str] = {}
        # seconds: reading (read syscalls), reader waiting for a free block / for the consumer, hashing (thread CPU),
        # consumer waiting for a block
        self.timings = {
            "read": 0.0,
            "read_wait_free": 0.0,
            "read_wait_consumer": 0.0,
            "hash_cpu": 0.0,
            "hash_wall": 0.0,
            "consumer_wait": 0.0,
        }
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._q: queue.Queue = queue.Queue(maxsize=blocks)
        self._hq: queue.Queue = queue.Queue()
        self._files: dict[str, Any] = {}
        self._reader = threading.Thread(target=self._read, daemon=True, name="sdlens-convert-read")
        self._hasher = threading.Thread(target=self._hash, daemon=True, name="sdlens-convert-hash")
        self._started = False
        self._gen: Iterator[Chunk] | None = None

    # ------------------------------------------------------------------ threads
    def _put(self, q: queue.Queue, item: Any) -> None:
        while True:
            if self._stop.is_set():
                raise _Stop
            try:
                q.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def _get_free(self) -> Any:
        while True:
            if self._stop.is_set():
                raise _Stop
            try:
                return self.pool.free.get(timeout=_POLL)
            except queue.Empty:
                continue

    def _read(self) -> None:
        try:
            for f in self.order:
                full = f in self.full
                parts = self.by_file.get(f, [])
                fh = open(f, "rb", buffering=0)  # noqa: SIM115 - closed by finish / close
                self._files[f] = fh
                fd = fh.fileno()
                _fadvise(fd, 0, 0, getattr(os, "POSIX_FADV_SEQUENTIAL", 2))
                tm = self.timings
                for begin, end in _blocks(_regions(parts, self.sizes[f], full), parts, self.block_bytes):
                    t0 = time.perf_counter()
                    data = self._get_free()
                    t1 = time.perf_counter()
                    got = read_exact(fh, begin, memoryview(data.numpy())[: end - begin], f)
                    t2 = time.perf_counter()
                    blk = _Block(self.pool, data, f, fd, begin, got, 2 if full else 1)
                    if full:
                        self._hq.put(blk)
                    self._put(self._q, blk)
                    tm["read_wait_free"] += t1 - t0
                    tm["read"] += t2 - t1
                    tm["read_wait_consumer"] += time.perf_counter() - t2
                if full:
                    self._hq.put(f)
            self._put(self._q, None)
        except _Stop:
            pass
        except BaseException as e:  # handed to the consumer
            self.error = e
            with contextlib.suppress(_Stop):
                self._put(self._q, e)
        finally:
            self._hq.put(None)

    def _hash(self) -> None:
        h = hashlib.sha256()
        c0 = time.thread_time()
        while True:
            item = self._hq.get()
            if item is None:
                self.timings["hash_cpu"] = time.thread_time() - c0
                return
            if isinstance(item, str):
                self.digests[item] = h.hexdigest()
                h = hashlib.sha256()
                continue
            try:
                if not self._stop.is_set():
                    t0 = time.perf_counter()
                    h.update(memoryview(item.data.numpy())[: item.n])
                    self.timings["hash_wall"] += time.perf_counter() - t0
            finally:
                item.release()

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._reader.start()
            self._hasher.start()

    # ------------------------------------------------------------------ consumer
    def _blocks_in(self) -> Iterator[_Block]:
        while True:
            t0 = time.perf_counter()
            item = self._q.get()
            self.timings["consumer_wait"] += time.perf_counter() - t0
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _chunks(self) -> Iterator[Chunk]:
        import torch

        parts = [p for f in self.order for p in self.by_file.get(f, [])]
        i = 0
        for blk in self._blocks_in():
            try:
                bs, be = blk.start, blk.start + blk.n
                while i < len(parts):
                    p = parts[i]
                    if (
                        self.ckpt.tensors[p.key].source != blk.file
                        or p.begin > be
                        or (p.begin == be and p.end > p.begin)
                    ):
                        break
                    if p.end == p.begin:
                        yield Chunk(p.key, torch.empty(0, dtype=torch_dtype(p.dtype)), True, None)
                        i += 1
                        continue
                    lo, hi = max(p.begin, bs), min(p.end, be)
                    raw = blk.data[lo - bs : hi - bs]
                    if (lo - bs) % p.itemsize:
                        raw = raw.clone()
                    yield Chunk(p.key, raw.view(torch_dtype(p.dtype)), hi == p.end, blk)
                    if hi < p.end:
                        break
                    i += 1
            finally:
                blk.release()
        for p in parts[i:]:  # empty tensors at the very end
            if p.end > p.begin:
                raise CheckpointError(
                    self.ckpt.tensors[p.key].source, f"tensor {p.key!r} was not read (truncated?)"
                )
            yield Chunk(p.key, torch.empty(0, dtype=torch_dtype(p.dtype)), True, None)

    def chunks(self) -> Iterator[Chunk]:
        if self._gen is None:
            self._start()
            self._gen = self._chunks()
        return self._gen

    def tensor(self, key: str) -> Iterator[Chunk]:
        """The chunks of one tensor (the next one in file order), up to and including its last one."""
        it = self.chunks()
        while True:
            c = next(it, None)
            if c is None or c.key != key:
                got = "the end" if c is None else repr(c.key)
                raise CheckpointError(self.ckpt.path, f"internal error: stream gave {got}, expected {key!r}")
            yield c
            if c.last:
                return

    def finish(self) -> dict[str, str]:
        """Read (and hash) whatever is left; the sha256 of every fully read file."""
        for _ in self.chunks():
            pass
        self._hasher.join()
        self._reader.join()
        self._close_fds()
        if self.error is not None:
            raise self.error
        return self.digests

    def close(self) -> None:
        self._stop.set()
        if self._started:
            self._reader.join()
            self._hq.put(None)
            self._hasher.join()
        if self._gen is not None:
            self._gen.close()
        self._close_fds()

    def _close_fds(self) -> None:
        for fh in self._files.values():
            with contextlib.suppress(OSError):
                fh.close()
        self._files.clear()


class AsyncWriter:
    """Writes through a :class:`~sdlens.io.safetensors_writer.SafetensorsStreamWriter` in a thread; records the
    digest of each tensor's bytes (in :attr:`digests`). Errors in the thread are raised by the next call."""

    def __init__(self, w: Any, depth: int = 6):
        self.w = w
        self.digests: dict[str, str] = {}
        self.error: BaseException | None = None
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._h = digest()
        self.timings = {"write": 0.0, "digest": 0.0, "writer_idle": 0.0, "queue_full": 0.0}
        self._th = threading.Thread(target=self._run, daemon=True, name="sdlens-convert-write")
        self._th.start()

    def _run(self) -> None:
        tm = self.timings
        while True:
            t0 = time.perf_counter()
            item = self._q.get()
            tm["writer_idle"] += time.perf_counter() - t0
            if item is None:
                return
            kind, payload, release = item
            try:
                if self.error is None:
                    if kind == "data":
                        t0 = time.perf_counter()
                        self.w.write(payload)
                        t1 = time.perf_counter()
                        self._h.update(payload)
                        tm["write"] += t1 - t0
                        tm["digest"] += time.perf_counter() - t1
                    else:
                        self.w.end_tensor()
                        self.digests[payload] = self._h.hexdigest()
                        self._h = digest()
            except BaseException as e:
                self.error = e
            finally:
                if release is not None:
                    release()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def write(self, data: Any, release: Callable[[], None] | None = None) -> None:
        self._check()
        t0 = time.perf_counter()
        self._q.put(("data", data, release))
        self.timings["queue_full"] += time.perf_counter() - t0

    def end_tensor(self, key: str) -> None:
        self._check()
        self._q.put(("end", key, None))

    def join(self) -> None:
        """Wait until everything queued is written; raise the thread's error if any."""
        if self._th.is_alive():
            self._q.put(None)
            self._th.join()
        self._check()

    def abort(self) -> None:
        self.error = self.error or _Stop()
        if self._th.is_alive():
            self._q.put(None)
            self._th.join()
