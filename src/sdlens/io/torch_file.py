"""Lazy, code-free indexing of torch checkpoints (``torch.save`` zip archives and pre-1.6 legacy pickles).

Nothing from a file is ever executed or imported. Every pickle is first scanned opcode by opcode
(:mod:`sdlens.io.pickle_scan`) and refused if it names a global outside a small allow-list; only then is it
unpickled by the restricted unpickler of :mod:`sdlens.io.torch_pickle`, whose ``find_class`` hands out inert
stand-ins (tensor records, dtype markers, recording stubs) instead of real classes. Tensor data is never read while indexing: each tensor's
absolute byte offset is computed from the zip local headers (or, for legacy files, by seeking over the
storages), and data is read on demand from the memory map. torch is not imported to build the index.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from sdlens.errors import CheckpointError, UnsafeArchiveError, UnsafePickleError
from sdlens.io.base import Checkpoint, TensorInfo, open_regular
from sdlens.io.dtypes import DTYPES, torch_dtype
from sdlens.io.limits import clip, short
from sdlens.io.pickle_scan import PickleScan, scan_next_pickle, scan_pickle, scan_pickle_globals
from sdlens.io.torch_pickle import (
    _ALLOWED,
    MAX_BROADCAST_BYTES,
    MAX_DIMS,
    MAX_ENTRIES,
    MAX_KEY_CHARS,
    StorageRef,
    TensorRef,
    TorchTensorLocation,
    _BadPickle,
    _brief,
    _NdArray,
    _Refused,
    _RestrictedUnpickler,
    _StorageIndex,
    is_allowed_global,
)
from sdlens.io.torch_zip import crc_ok, read_member, torch_zip_members

__all__ = [
    "TorchCheckpoint",
    "TorchTensorLocation",
    "is_allowed_global",
    "open_torch_checkpoint",
    "scan_pickle_globals",
]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a pre-1.6 torch.save file
LEGACY_PROTOCOL = 1001
WRAPPER_KEYS = ("state_dict", "model", "module", "params", "model_state_dict")

# ---------------------------------------------------------------------------------------------- unwrapping


class _Walk:
    """One traversal of the unpickled object: whether each container holds a tensor, computed once per
    object (by identity, so memo DAGs and cycles cost their number of distinct objects, not their expansion)."""

    def __init__(self) -> None:
        self.has: dict[int, bool] = {}

    def has_tensor(self, obj: Any) -> bool:
        if isinstance(obj, TensorRef):
            return True
        if not isinstance(obj, (dict, list, tuple)):
            return False
        known = self.has.get(id(obj))
        if known is not None:
            return known
        self.has[id(obj)] = False  # in progress: a cycle adds nothing
        values = obj.values() if isinstance(obj, dict) else obj
        found = any(self.has_tensor(v) for v in values)
        self.has[id(obj)] = found
        return found


def _key_text(k: Any) -> str:
    if isinstance(k, str):
        return k
    if type(k) is int and k.bit_length() <= 64:
        return str(k)
    return _brief(k)


def _summary(value: Any) -> Any:
    """A JSON-friendly stand-in for a non-tensor value: scalars and strings as-is, the rest described."""
    if value is None or isinstance(value, (bool, float, str)):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else _brief(value)
    if isinstance(value, TensorRef):
        return f"<tensor {value.dtype_name or value.torch_name} {list(value.shape)[:MAX_DIMS]}>"
    if isinstance(value, dict):
        return f"<dict: {len(value)} keys>"
    if isinstance(value, (list, tuple, set, frozenset)):
        return f"<{type(value).__name__}: {len(value)} items>"
    if isinstance(value, bytes):
        return f"<bytes: {len(value)}>"
    if isinstance(value, _NdArray):
        return value.summary()
    return f"<{type(value).__name__}>"


def _unwrap(root: Any, walk: _Walk) -> tuple[Any, dict[str, Any]]:
    """The object holding the tensors (below ``state_dict``/``model``/... wrappers) and the extras found on
    the way down, keyed by their dotted path."""
    extras: dict[str, Any] = {}
    prefix, obj, seen = "", root, set()
    while isinstance(obj, dict) and id(obj) not in seen:
        seen.add(id(obj))
        inner = next(
            (k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict) and walk.has_tensor(obj[k])), None
        )
        if inner is None:
            break
        extras.update({prefix + _key_text(k): _summary(v) for k, v in obj.items() if k != inner})
        obj, prefix = obj[inner], f"{prefix}{inner}."
    return obj, extras


def _flatten(obj: Any, prefix: str, tensors: dict[str, TensorRef], extras: dict[str, Any], seen: set[int],
             walk: _Walk) -> None:  # fmt: skip
    """Tensors of a (possibly nested) dict/list under dotted keys; every other value to ``extras``."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for k, v in items:
        name = f"{prefix}{_key_text(k)}"
        if len(name) > MAX_KEY_CHARS:  # a long memo'd key copied into every sibling's name would cost k × n
            raise CheckpointError(
                None, f"a key path is longer than {MAX_KEY_CHARS} characters ({short(name)}); refused"
            )
        if len(tensors) + len(extras) >= MAX_ENTRIES:
            raise CheckpointError(None, f"more than {MAX_ENTRIES:,} tensors and values; refused")
        if isinstance(v, TensorRef):
            tensors[name] = v
        elif isinstance(v, (dict, list, tuple)) and walk.has_tensor(v):
            _flatten(v, name + ".", tensors, extras, seen, walk)
        else:
            extras[name] = _summary(v)


# ---------------------------------------------------------------------------------------------- checkpoint


def _contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for dim, st in zip(reversed(shape), reversed(stride), strict=True):
        if dim == 0:
            return True
        if dim != 1 and st != expected:
            return False
        expected *= dim
    return True


class TorchCheckpoint(Checkpoint):
    """A torch checkpoint indexed from its pickle alone; ``format`` is ``torch-zip`` or ``torch-legacy``."""

    format = "torch-zip"

    def __init__(self, path: str | Path):
        super().__init__(path)
        src = str(self.path)
        try:
            if not os.path.lexists(src):
                raise CheckpointError(src, "no such file")
            if os.path.isdir(src):
                raise CheckpointError(src, "is a directory, not a torch checkpoint file")
            with open_regular(src) as f:  # regular files only, checked on the open descriptor (no race)
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise CheckpointError(src, "empty file (0 bytes)")
                head = f.read(512)
                if head.startswith(b"PK\x03\x04"):
                    root, starts, storages = self._index_zip(f, size)
                elif head.startswith(b"PK\x05\x06"):
                    raise CheckpointError(src, "empty zip archive (not a torch.save checkpoint)")
                elif head[257:262] == b"ustar":
                    raise CheckpointError(src, "tar-format torch checkpoint (torch < 0.4) is not supported")
                else:
                    self.format = "torch-legacy"
                    root, starts, storages = self._index_legacy(f, size)
            self._build_index(root, starts, storages, size)
        except FileNotFoundError:
            raise CheckpointError(src, "no such file") from None
        except IsADirectoryError:
            raise CheckpointError(src, "is a directory, not a torch checkpoint file") from None
        except OSError as e:
            raise CheckpointError(src, f"cannot read: {e.strerror or e}") from None
        except CheckpointError:
            raise
        except RecursionError:
            raise CheckpointError(src, "the pickled object is nested too deeply to index") from None
        except (_BadPickle, ValueError, TypeError, KeyError, AttributeError, IndexError, MemoryError,
                OverflowError, UnicodeError, struct.error) as e:  # fmt: skip
            raise CheckpointError(
                src, f"malformed torch checkpoint ({type(e).__name__}: {str(e)[:200]})"
            ) from None

    # ------------------------------------------------------------------ pickles
    def _load(self, data: bytes, what: str, storages: _StorageIndex, *, first: bool = False) -> Any:
        """Scan ``data`` (one complete pickle), refuse disallowed globals (all named), report malformed or
        oversized pickles, else unpickle it restrictedly."""
        result = scan_pickle(data)
        self._check_scan(result, what, first=first)
        return self._unpickle(data[: result.end], what, storages)

    def _check_scan(self, result: PickleScan, what: str, *, first: bool = False) -> None:
        src = str(self.path)
        unsafe = [g for g in result.globals if g not in _ALLOWED]
        if unsafe:
            raise UnsafePickleError(src, unsafe)
        if result.error is not None:
            if first and not result.limit:
                raise CheckpointError(
                    src, f"not a torch checkpoint (neither a zip archive nor a pickle: {result.error})"
                )
            raise CheckpointError(src, f"{what} is {result.error}")

    def _unpickle(self, data: bytes, what: str, storages: _StorageIndex) -> Any:
        src = str(self.path)
        try:
            return _RestrictedUnpickler(data, storages).load()
        except _Refused as e:  # unreachable after the scan; kept as a second line of defence
            raise UnsafePickleError(src, [e.qualname]) from None
        except CheckpointError:
            raise
        except RecursionError:
            raise CheckpointError(src, f"cannot unpickle {what}: nested too deeply") from None
        except _BadPickle as e:
            raise CheckpointError(src, f"cannot unpickle {what}: {str(e)[:200]}") from None
        except Exception as e:  # any malformation of the pickle's content
            raise CheckpointError(
                src, f"cannot unpickle {what}: {type(e).__name__}: {clip(str(e))}"
            ) from None

    # ------------------------------------------------------------------ zip
    def _index_zip(self, f: BinaryIO, size: int) -> tuple[Any, dict[str, tuple[int, int]], _StorageIndex]:
        """Index a torch zip read exactly as torch reads it (see :mod:`sdlens.io.torch_zip`): every pickle
        member is scanned, not only the ``data.pkl`` that torch (and sdlens) unpickles."""
        src = str(self.path)
        prefix, listed, problems = torch_zip_members(f, size, src)
        if not problems and any(m.name in (prefix + "constants.pkl",) or m.name.startswith(prefix + "code/")
                                for m in listed):  # fmt: skip
            # torch.load hands these to torch.jit.load, whose unpickler resolves only TorchScript types
            raise CheckpointError(
                src, "TorchScript archive (torch.jit.save) is not supported; save a state dict"
            )
        unsafe, blobs = self._scan_pkl_members(f, listed, problems)
        if unsafe:
            raise UnsafePickleError(src, unsafe)
        if problems:
            raise UnsafeArchiveError(src, problems[0])
        members = {m.name: m for m in listed}
        pkl = prefix + "data.pkl"
        if pkl not in members:
            raise CheckpointError(src, "zip archive has no data.pkl (not a torch.save checkpoint)")
        order = (
            read_member(f, members[prefix + "byteorder"], src, 64)
            if prefix + "byteorder" in members
            else b"little"
        )
        if order.strip() != b"little":
            raise CheckpointError(
                src, f"byte order {_brief(order.decode('latin1'))} is not supported (only little-endian)"
            )
        storages = _StorageIndex()
        root = self._load(blobs[pkl], pkl, storages)
        starts = self._storage_starts(members, prefix, storages)
        unsafe = self._scan_other_members(f, members, prefix, blobs, storages)
        if unsafe:
            raise UnsafePickleError(src, unsafe)
        return root, starts, storages

    def _scan_pkl_members(
        self, f: BinaryIO, listed: list[Any], problems: list[str]
    ) -> tuple[list[str], dict[str, bytes]]:
        """Every *.pkl member (every copy of a duplicate, by either of its names) is a pickle some loader may
        run: all are scanned, so that every unsafe global is named before an ambiguous archive is refused.
        Returns the unsafe globals and the members' bytes by name (CRC mismatches are added to ``problems``)."""
        src = str(self.path)
        unsafe: list[str] = []
        blobs: dict[str, bytes] = {}
        for m in listed:
            if not (m.name.endswith(".pkl") or m.local_name.endswith(".pkl")):
                continue
            blob = read_member(f, m, src, check_crc=False)
            unsafe += [g for g in scan_pickle(blob).globals if g not in _ALLOWED]
            if not crc_ok(blob, m):
                problems.append(
                    f"CRC-32 mismatch in {m.name!r} (altered after writing; torch may read other bytes)"
                )
            blobs.setdefault(m.name, blob)
        return unsafe, blobs

    def _storage_starts(
        self, members: dict[str, Any], prefix: str, storages: _StorageIndex
    ) -> dict[str, tuple[int, int]]:
        """Each referenced storage's (data offset, size) in the archive; stored uncompressed, or refused."""
        src = str(self.path)
        starts: dict[str, tuple[int, int]] = {}
        for key in storages:
            name = f"{prefix}data/{key}"
            m = members.get(name)
            if m is None:
                raise CheckpointError(
                    src, f"storage {short(key)} is missing from the archive (no entry {name})"
                )
            if m.method != zipfile.ZIP_STORED:
                raise CheckpointError(
                    src,
                    f"zip entry {name} is compressed or encrypted; torch checkpoints store tensors uncompressed",
                )
            starts[key] = (m.data_start, m.file_size)
        return starts

    def _scan_other_members(
        self,
        f: BinaryIO,
        members: dict[str, Any],
        prefix: str,
        blobs: dict[str, bytes],
        storages: _StorageIndex,
    ) -> list[str]:
        """Members sdlens does not read as tensors but that hold a pickle: scanned too; their unsafe globals."""
        src = str(self.path)
        unsafe: list[str] = []
        for name, m in members.items():
            rest = name[len(prefix) :]
            if name in blobs or rest.startswith("data/") and rest[5:] in storages or m.file_size < 2:
                continue
            f.seek(m.data_start)
            if m.method == zipfile.ZIP_STORED and f.read(1) != b"\x80":
                continue
            try:
                blob = read_member(f, m, src)
            except CheckpointError:
                continue  # not readable as a pickle by anyone either
            if blob[:1] == b"\x80":
                unsafe += [g for g in scan_pickle(blob).globals if g not in _ALLOWED]
        return unsafe

    # ------------------------------------------------------------------ legacy
    def _next_pickle(
        self, f: BinaryIO, size: int, what: str, storages: _StorageIndex, *, first: bool = False
    ) -> Any:
        data, result = scan_next_pickle(f, size)
        self._check_scan(result, what, first=first)
        return self._unpickle(data[: result.end], what, storages)

    def _index_legacy(self, f: BinaryIO, size: int) -> tuple[Any, dict[str, tuple[int, int]], _StorageIndex]:
        src = str(self.path)
        f.seek(0)
        storages = _StorageIndex()
        magic = self._next_pickle(f, size, "the magic number", storages, first=True)
        if type(magic) is not int or magic != LEGACY_MAGIC:
            raise CheckpointError(src, "not a torch checkpoint (a pickle without torch's magic number)")
        version = self._next_pickle(f, size, "the protocol version", storages)
        if type(version) is not int or version != LEGACY_PROTOCOL:
            raise CheckpointError(src, f"unsupported legacy torch protocol version {_brief(version)}")
        sys_info = self._next_pickle(f, size, "the system info", storages)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise CheckpointError(src, "big-endian legacy checkpoints are not supported")
        root = self._next_pickle(f, size, "the main pickle", storages)
        keys = self._next_pickle(f, size, "the storage key list", storages)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CheckpointError(src, "legacy storage key list is not a list of strings")
        starts: dict[str, tuple[int, int]] = {}
        pos = f.tell()
        for key in keys:
            if key not in storages:
                raise CheckpointError(
                    src, f"storage {key[:40]!r} in the data section is not referenced by the pickle"
                )
            if key in starts:
                raise CheckpointError(src, f"storage {key[:40]!r} is listed twice in the data section")
            f.seek(pos)
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(
                    src, f"file ends at byte {size} before storage {short(key)} (truncated?)"
                )
            count = int.from_bytes(raw, "little")
            nbytes, numel = storages.nbytes(key), storages.records[key][1]
            if count != numel:  # torch reads `count` elements: any other count and it reads other bytes
                raise CheckpointError(
                    src,
                    f"storage {short(key)} header says {count} elements, the pickle says "
                    f"{numel} ({nbytes} bytes)",
                )
            starts[key] = (pos + 8, nbytes)
            pos += 8 + nbytes
            if pos > size:
                raise CheckpointError(
                    src, f"storage {short(key)} needs bytes up to {pos} but the file has {size} (truncated?)"
                )
        missing = sorted(set(storages) - set(starts))
        if missing:
            raise CheckpointError(src, f"storage {missing[0]!r} is missing from the data section")
        return root, starts, storages

    # ------------------------------------------------------------------ index
    def _build_index(
        self, root: Any, starts: dict[str, tuple[int, int]], storages: _StorageIndex, size: int
    ) -> None:
        src = str(self.path)
        refs: dict[str, TensorRef] = {}
        inner_extras: dict[str, Any] = {}
        walk = _Walk()
        obj, extras = _unwrap(root, walk)
        if isinstance(obj, TensorRef):
            refs["tensor"] = obj
        elif isinstance(obj, (dict, list, tuple)):
            try:
                _flatten(obj, "", refs, inner_extras, set(), walk)
            except CheckpointError as e:
                raise CheckpointError(src, e.problem) from None
        else:
            extras["object"] = _summary(obj)
        extras.update(inner_extras)
        self.extras = extras
        for key, (start, length) in starts.items():
            if start + length > size:
                raise CheckpointError(
                    src,
                    f"storage {short(key)} needs bytes {start}..{start + length} but the file has {size} (truncated?)",
                )
        for key, ref in refs.items():
            self.tensors[key] = self._tensor_info(key, ref, starts, storages)

    def _tensor_info(
        self, key: str, ref: TensorRef, starts: dict[str, tuple[int, int]], storages: _StorageIndex
    ) -> TensorInfo:
        """Re-validate one tensor against the storage index, then place it: its shape and strides must stay
        inside its storage before anything is read or allocated."""
        src = str(self.path)
        label = _brief(key)
        storage = ref.storage
        if type(ref) is not TensorRef or type(storage) is not StorageRef or storage.key not in starts:
            raise CheckpointError(src, f"tensor {label} refers to a storage that is not in the archive")
        stype, numel = storages.records[storage.key]
        if stype.name != storage.stype.name or numel != storage.numel:
            raise CheckpointError(src, f"tensor {label} disagrees with its storage's type or size")
        dtype = ref.dtype_name
        if dtype is None:
            raise CheckpointError(
                src, f"tensor {label} has dtype {ref.torch_name}, which sdlens does not support"
            )
        start, available = starts[storage.key]
        if storage.nbytes > available:
            raise CheckpointError(
                src,
                f"storage {short(storage.key)} holds {available} bytes but the pickle says {storage.nbytes}",
            )
        itemsize = DTYPES[dtype].itemsize
        storage_nbytes = storage.nbytes - storage.view_bytes
        if storage_nbytes < 0:
            raise CheckpointError(
                src, f"tensor {label} views past the end of its storage {short(storage.key)}"
            )
        numel_t = math.prod(ref.shape)
        if numel_t:
            last = ref.storage_offset + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride, strict=True))
            if (last + 1) * itemsize > storage_nbytes:
                raise CheckpointError(
                    src,
                    f"tensor {label} extends past the end of its storage {short(storage.key)} ({storage_nbytes} bytes)",
                )
            if numel_t * itemsize > max(storage_nbytes, MAX_BROADCAST_BYTES):
                raise CheckpointError(
                    src,
                    f"tensor {label} claims {numel_t * itemsize:,} bytes from a {storage_nbytes:,}-byte storage "
                    f"(a broadcast view larger than the {MAX_BROADCAST_BYTES >> 30} GiB limit)",
                )
        storage_start = start + storage.view_bytes
        loc = TorchTensorLocation(
            storage.key,
            storage_start,
            storage_nbytes,
            ref.storage_offset,
            ref.stride,
            _contiguous(ref.shape, ref.stride),
        )
        return TensorInfo(key, ref.shape, dtype, src, storage_start + ref.storage_offset * itemsize, loc)

    # ------------------------------------------------------------------ data
    def is_plain(self, key: str) -> bool:
        loc = self.tensors[key].extra
        return not isinstance(loc, TorchTensorLocation) or loc.contiguous

    def read(self, key: str, *, copy: bool = True) -> Any:
        """One tensor, in its stored dtype; strided views (transposes, slices) are rebuilt exactly."""
        info = self.tensors[key]
        loc = info.extra
        if not isinstance(loc, TorchTensorLocation) or loc.contiguous or info.numel == 0:
            return super().read(key, copy=copy)
        import torch

        m = self._map(info.source)
        if loc.storage_start + loc.storage_nbytes > len(m):
            raise CheckpointError(
                info.source,
                f"tensor {key!r} needs bytes {loc.storage_start}..{loc.storage_start + loc.storage_nbytes} "
                f"but the file has {len(m)} (truncated?)",
            )
        dt = torch_dtype(info.dtype)
        base = torch.frombuffer(
            m, dtype=dt, count=loc.storage_nbytes // info.itemsize, offset=loc.storage_start
        )
        t = torch.as_strided(base, info.shape, loc.stride, loc.storage_offset)
        return t.contiguous() if copy else t


def open_torch_checkpoint(path: str | Path) -> TorchCheckpoint:
    """Index a torch checkpoint lazily (no torch import, no tensor data read, no code from the file run).

    Raises :class:`~sdlens.errors.UnsafePickleError` for pickles naming disallowed globals and
    :class:`~sdlens.errors.CheckpointError` for anything unreadable.
    """
    return TorchCheckpoint(path)
