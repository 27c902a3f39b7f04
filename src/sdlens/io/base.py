"""The lazy checkpoint: an index of tensors (from headers only) and reads of tensor data on demand.

Every reader (safetensors, torch pickles, diffusers folders, shards) produces a :class:`Checkpoint` whose
``tensors`` map each key to a :class:`TensorInfo`. Data is read only when asked for, from a memory map, one
tensor (or one chunk of a tensor) at a time, in file-offset order when iterating.
"""

from __future__ import annotations

import contextlib
import functools
import math
import mmap
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sdlens.errors import CheckpointError, SdlensError
from sdlens.io.dtypes import DTYPES, torch_dtype
from sdlens.io.limits import clip, short
from sdlens.io.quant import Quant, stored_nbytes

_NUMPY = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


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

    @functools.cached_property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize

    @functools.cached_property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "nbytes": self.nbytes}


_new = object.__new__
_set = object.__setattr__


def _info(
    key: str, shape: tuple[int, ...], dtype: str, source: str, offset: int, numel: int, nbytes: int
) -> TensorInfo:
    t = _new(TensorInfo)
    _set(
        t,
        "__dict__",
        {
            "key": key,
            "shape": shape,
            "dtype": dtype,
            "source": source,
            "offset": offset,
            "extra": None,
            "numel": numel,
            "nbytes": nbytes,
        },
    )
    return t


def tensor_infos(
    keys: Iterable[str],
    shapes: Iterable[tuple[int, ...]],
    dtypes: Iterable[str],
    source: str,
    offsets: Iterable[int],
    numels: Iterable[int],
    nbytes: Iterable[int],
) -> dict[str, TensorInfo]:
    """Many :class:`TensorInfo` at once from validated columns (a 200,000-tensor header costs a fraction of
    the dataclass constructor's time; ``numel`` and ``nbytes`` come precomputed)."""
    keys = list(keys)
    return dict(
        zip(
            keys, map(_info, keys, shapes, dtypes, [source] * len(keys), offsets, numels, nbytes), strict=True
        )
    )


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a big header is parsed and indexed: the millions of
    containers built would otherwise trigger full collections over and over (half the time of a 200,000-tensor
    header). Nothing built there is cyclic, so nothing is left for the collector."""
    import gc

    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# ---------------------------------------------------------------------------------------------- guards

_NOT_REGULAR = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def debug() -> bool:
    """``SDLENS_DEBUG=1``: let unexpected exceptions through with their traceback (for developers)."""
    return os.environ.get("SDLENS_DEBUG", "") not in ("", "0")


def check_regular(path: str | Path, mode: int) -> None:
    """Refuse anything but a regular file (a FIFO would block ``open`` or ``read`` forever, a device never end)."""
    if not stat.S_ISREG(mode):
        kind = _NOT_REGULAR.get(stat.S_IFMT(mode), "not a regular file")
        raise CheckpointError(path, f"is {kind}, not a regular file; refused")


def os_problem(e: OSError) -> str:
    """One line for an OSError (symlink loops named as such)."""
    import errno

    if e.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    return e.strerror or str(e)


def open_regular(path: str | Path, buffering: int = -1) -> IO[bytes]:
    """Open a file for reading only if it is a regular file: opened non-blocking (so a FIFO cannot hang the
    open), checked with ``fstat`` on the open descriptor (no race with a swapped path), then made blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise CheckpointError(path, f"cannot open: {os_problem(e)}") from None
    try:
        check_regular(path, os.fstat(fd).st_mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def as_checkpoint_error(path: str | Path, e: Exception, what: str = "cannot read") -> CheckpointError:
    """The one-line :class:`CheckpointError` for an unexpected exception met while reading ``path``; its
    ``unexpected`` attribute names what the safety net caught (tests check that readers' own checks fire)."""
    if isinstance(e, OSError):
        problem = os_problem(e)
    elif isinstance(e, RecursionError):
        problem = "structure nested too deeply"
    elif isinstance(e, MemoryError):
        problem = "it asks for more memory than is available (malformed sizes?)"
    else:
        try:
            detail = clip(str(e))
        except Exception:
            detail = ""
        problem = f"{type(e).__name__}: {detail}" if detail else type(e).__name__
    out = CheckpointError(path, f"{what}: {problem}")
    out.unexpected = type(e).__name__  # type: ignore[attr-defined]
    return out


@contextlib.contextmanager
def reading(path: str | Path, what: str = "cannot read") -> Iterator[None]:
    """Turn any unexpected exception raised inside into a one-line :class:`CheckpointError` naming ``path``
    (unless ``SDLENS_DEBUG=1``); sdlens's own errors pass through unchanged."""
    try:
        yield
    except SdlensError:
        raise
    except Exception as e:
        if debug():
            raise
        raise as_checkpoint_error(path, e, what) from None


def _guard_read(method: Callable) -> Callable:
    """Wrap a tensor-reading method: views are checked before anything is allocated, and unexpected
    exceptions become one-line errors naming the file."""

    @functools.wraps(method)
    def guarded(self: Checkpoint, key: str, *args: Any, **kwargs: Any) -> Any:
        info = self.tensors[key]  # KeyError for a key not in the index, as any mapping
        try:
            self.check_view(key)
            return method(self, key, *args, **kwargs)
        except SdlensError:
            raise
        except Exception as e:
            if debug():
                raise
            raise as_checkpoint_error(info.source, e, f"cannot read tensor {short(key)}") from None

    guarded.__sdlens_guarded__ = True  # type: ignore[attr-defined]
    return guarded


_GUARDED = ("read", "read_numpy", "raw_bytes")
# a view may be materialised bigger than its storage (a broadcast) only up to this many bytes
MAX_VIEW_EXPANSION = 64 << 20


class Checkpoint:
    """A lazily opened checkpoint. Use as a context manager, or call :meth:`close`.

    Every reader fills ``tensors``, ``metadata`` (safetensors header strings), ``extras`` (a pickle's non-tensor
    entries) and ``configs`` (a diffusers folder's ``config.json`` files by part); each is empty when the
    format has none, so callers never need ``getattr``.

    ``read``, ``read_numpy`` and ``raw_bytes`` of every reader (subclasses included) are guarded: a strided
    view is checked against its storage before any allocation, and unexpected exceptions become one-line
    :class:`CheckpointError` naming the file.
    """

    format: str = "unknown"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _GUARDED:
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "__sdlens_guarded__", False):
                setattr(cls, name, _guard_read(method))

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tensors: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        self.extras: dict[str, Any] = {}  # top-level non-tensor entries of a pickle (epoch, global_step, ...)
        self.configs: dict[
            str, dict[str, Any]
        ] = {}  # a diffusers folder's config.json files, by part (empty: none)
        # file-wide markers of a quantisation taken out of ``tensors`` (ComfyUI's ``scaled_fp8``)
        self.quant_markers: dict[str, TensorInfo] = {}
        self._last_quant: tuple[TensorInfo, Any] | None = None  # the last dequantised tensor (``read``)
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
        """Bytes the tensors take in the files (a quantised tensor's blocks and companions, not its values)."""
        return sum(map(stored_nbytes, self.tensors.values()))

    def in_file_order(self, keys: Iterable[str] | None = None) -> list[str]:
        """Keys sorted by (file, byte offset), so that a pass over them reads each file front to back."""
        keys = self.tensors.keys() if keys is None else keys
        return sorted(keys, key=lambda k: (self.tensors[k].source, self.tensors[k].offset))

    # ------------------------------------------------------------------ data
    def _map(self, source: str) -> mmap.mmap:
        m = self._maps.get(source)
        if m is None:
            f = open_regular(source)
            try:
                # ACCESS_COPY: pages are shared with the page cache and copy-on-write, so tensors built on the
                # map are writable without ever being able to modify the input file.
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError) as e:  # an empty file cannot be mapped
                f.close()
                raise CheckpointError(source, f"cannot map the file: {e}") from None
            self._files[source] = f
            self._maps[source] = m
        return m

    def check_view(self, key: str) -> None:
        """Refuse, before anything is read or allocated, a tensor whose shape would materialise far more
        bytes than the storage backing it (stride-0 or overlapping views: 4 bytes seen as 4 TB)."""
        info = self.tensors[key]
        if self.is_plain(key) or isinstance(info.extra, Quant):  # a reader checked a Quant's parts' sizes
            return
        backing = getattr(info.extra, "storage_nbytes", None)
        if isinstance(backing, int) and info.nbytes > max(backing, MAX_VIEW_EXPANSION):
            raise CheckpointError(
                info.source,
                f"tensor {short(key)} is a view of {info.nbytes} bytes over a {backing}-byte storage "
                "(stride-0 or overlapping strides); refused",
            )

    def _check_bounds(self, info: TensorInfo, m: mmap.mmap) -> None:
        if info.nbytes == 0:
            return  # an empty tensor reads no bytes, wherever its (possibly huge) offset points
        if info.offset < 0 or info.offset + info.nbytes > len(m):
            from sdlens.io.limits import short

            raise CheckpointError(
                info.source,
                f"tensor {short(info.key)} needs bytes {info.offset}..{info.offset + info.nbytes} "
                f"but the file has {len(m)} (truncated?)",
            )

    def is_plain(self, key: str) -> bool:
        """Whether the tensor's bytes are one contiguous run at ``offset`` of its dtype (false for strided
        torch views and for quantised tensors, which are decoded)."""
        return not isinstance(self.tensors[key].extra, Quant)

    def stored(self, info: TensorInfo):
        """A stored tensor's bytes (a quantised tensor's main part or a companion) as a flat numpy view of
        its dtype (bf16 / fp8 as unsigned integers), bounds-checked."""
        import numpy as np

        m = self._map(info.source)
        self._check_bounds(info, m)
        if info.numel == 0:
            return np.empty(0, dtype=_NUMPY.get(info.dtype, "u1"))
        return np.frombuffer(m, dtype=_NUMPY.get(info.dtype, "u1"), count=info.numel, offset=info.offset)

    def _dequantised(self, info: TensorInfo):
        """A quantised tensor's values: float32 of its logical shape, dequantised by its scheme. The last one
        is kept (shared, read-only), as a fused tensor's row slices read it several times in a row."""
        import numpy as np

        if self._last_quant is not None and self._last_quant[0] is info:
            return self._last_quant[1]
        self._last_quant = None
        values = self._decode(info, 0, info.numel)
        out = np.ascontiguousarray(values, dtype=np.float32).reshape(info.shape)
        out.flags.writeable = False
        self._last_quant = (info, out)
        return out

    @_guard_read
    def read(self, key: str, *, copy: bool = True):
        """One tensor, in its stored dtype. ``copy=False`` returns a view on the file's memory map."""
        import torch

        info = self.tensors[key]
        if isinstance(info.extra, Quant):
            import warnings

            with warnings.catch_warnings():  # the shared array is read-only: torch says so once
                warnings.simplefilter("ignore", UserWarning)
                t = torch.from_numpy(self._dequantised(info)).to(torch_dtype(info.dtype))
            return t.clone() if copy and t.dtype == torch.float32 else t
        m = self._map(info.source)
        self._check_bounds(info, m)
        if info.numel == 0:
            return torch.empty(info.shape, dtype=torch_dtype(info.dtype))
        t = torch.frombuffer(m, dtype=torch_dtype(info.dtype), count=info.numel, offset=info.offset)
        t = t.view(info.shape)
        return t.clone() if copy else t

    @_guard_read
    def read_numpy(self, key: str):
        """A small tensor as a numpy array, without importing torch (bf16 widened to float32)."""
        import numpy as np

        info = self.tensors[key]
        if isinstance(info.extra, Quant):
            return self._dequantised(info).copy()
        if not self.is_plain(key) or info.dtype not in _NUMPY:
            t = self.read(key)
            return (t.float() if t.is_floating_point() else t).numpy()
        m = self._map(info.source)
        self._check_bounds(info, m)
        raw = np.frombuffer(m, dtype=_NUMPY[info.dtype], count=info.numel, offset=info.offset).reshape(
            info.shape
        )
        if info.dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.copy()

    def read_quantised(self, key: str, start: int, stop: int):
        """Elements ``start .. stop`` of a quantised tensor (flat float32; ``start`` a multiple of its
        ``Quant.unit``, ``stop`` one or the end): a chunk of a big tensor for the streaming engines."""
        info = self.tensors[key]
        with reading(info.source, f"cannot read tensor {short(key)}"):
            return self._decode(info, start, stop)

    def _decode(self, info: TensorInfo, start: int, stop: int):
        q: Quant = info.extra
        values = q.decode(self.stored, start, stop)
        if values.size != stop - start:
            raise CheckpointError(
                info.source,
                f"tensor {short(info.key)} ({q.scheme}) decodes to {values.size} values, not {stop - start}",
            )
        return values

    @_guard_read
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

    def iter_tensors(
        self, keys: Iterable[str] | None = None, *, copy: bool = False
    ) -> Iterator[tuple[str, Any]]:
        """(key, tensor) pairs in file-offset order; by default views on the memory map (no copy)."""
        for k in self.in_file_order(keys):
            yield k, self.read(k, copy=copy)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._last_quant = None
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
