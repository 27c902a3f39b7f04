"""Lazy, code-free indexing of torch checkpoints (``torch.save`` zip archives and pre-1.6 legacy pickles).

Nothing from a file is ever executed or imported. Every pickle is first scanned opcode by opcode
(:func:`scan_pickle_globals`) and refused if it names a global outside a small allow-list; only then is it
unpickled by a restricted unpickler whose ``find_class`` hands out inert stand-ins (tensor records, dtype
markers, recording stubs) instead of real classes. Tensor data is never read while indexing: each tensor's
absolute byte offset is computed from the zip local headers (or, for legacy files, by seeking over the
storages), and data is read on demand from the memory map. torch is not imported to build the index.
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import os
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sdlens.errors import CheckpointError, UnsafePickleError
from sdlens.io.base import Checkpoint, TensorInfo
from sdlens.io.dtypes import DTYPES, TORCH_STORAGE_DTYPES, torch_dtype
from sdlens.io.limits import clip

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

# ---------------------------------------------------------------------------------------------- records


@dataclass(eq=False)
class StorageType:
    """Stand-in for a ``torch.*Storage`` class named by a pickle."""

    name: str
    dtype: str | None  # safetensors dtype name; None when sdlens has no equivalent
    itemsize: int


@dataclass(eq=False)
class TorchDType:
    """Stand-in for a ``torch.<dtype>`` global (used by ``_rebuild_tensor_v3``)."""

    name: str  # torch spelling
    dtype: str | None


@dataclass(eq=False)
class StorageRef:
    """One storage of the file, identified by its key; ``view_bytes`` offsets legacy storage views."""

    key: str
    stype: StorageType
    numel: int
    view_bytes: int = 0

    @property
    def nbytes(self) -> int:
        return self.numel * self.stype.itemsize


@dataclass(eq=False)
class TensorRef:
    """A tensor as the pickle describes it: a strided view of a storage, no data."""

    storage: StorageRef
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: TorchDType | None = None  # only set by _rebuild_tensor_v3

    def __setstate__(self, state: Any) -> None:  # BUILD on a tensor: ignore, never setattr
        pass

    @property
    def dtype_name(self) -> str | None:
        return self.dtype.dtype if self.dtype is not None else self.storage.stype.dtype

    @property
    def torch_name(self) -> str:
        return self.dtype.name if self.dtype is not None else self.storage.stype.name


@dataclass(frozen=True)
class TorchTensorLocation:
    """``TensorInfo.extra`` of a torch tensor: enough to rebuild any strided view of its storage."""

    storage_key: str
    storage_start: int  # absolute byte offset of the storage's first element
    storage_nbytes: int
    storage_offset: int  # in elements of the tensor's dtype
    stride: tuple[int, ...]
    contiguous: bool


class _Dict(dict):
    """``collections.OrderedDict`` stand-in: a dict that keeps BUILD state aside instead of setting attributes."""

    def __setstate__(self, state: Any) -> None:
        self.pickle_state = state


class _Stub:
    """An inert stand-in for an allowed class: records what the pickle gives it and runs nothing."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        self = object.__new__(cls)
        self.args, self.state, self.items, self.values = args, None, {}, []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.values.append(value)

    def extend(self, values: Any) -> None:
        self.values.extend(values)


_STUB_CLASSES: dict[str, type[_Stub]] = {}


def _stub_class(qualname: str) -> type[_Stub]:
    cls = _STUB_CLASSES.get(qualname)
    if cls is None:
        cls = type(qualname.rsplit(".", 1)[-1], (_Stub,), {"qualname": qualname})
        _STUB_CLASSES[qualname] = cls
    return cls


class _BadPickle(ValueError):
    """A pickle whose allowed calls got arguments no torch checkpoint would contain."""


class _Refused(pickle.UnpicklingError):
    def __init__(self, qualname: str):
        super().__init__(qualname)
        self.qualname = qualname


# ---------------------------------------------------------------------------------------------- handlers


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise _BadPickle(f"tensor {what} {value!r} is not a tuple of non-negative ints")
    return tuple(int(v) for v in value)


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: Any = None) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise _BadPickle(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    if not isinstance(offset, int) or offset < 0:
        raise _BadPickle(f"tensor storage offset {offset!r} is not a non-negative int")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise _BadPickle(f"tensor size {shape} and stride {strides} differ in length")
    if dtype is not None and not isinstance(dtype, TorchDType):
        raise _BadPickle(f"tensor dtype {dtype!r} is not a torch dtype")
    return TensorRef(storage, offset, shape, strides, dtype)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> TensorRef:
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> TensorRef:
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, dtype: Any, *_rest: Any
) -> TensorRef:
    return _tensor(storage, offset, size, stride, dtype)


def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    if func not in _TENSOR_BUILDERS or not isinstance(args, tuple):
        raise _BadPickle("_rebuild_from_type_v2 with an unexpected rebuild function")
    return func(*args)


_TENSOR_BUILDERS: frozenset[Callable[..., Any]] = frozenset(
    {_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter}
)


def _torch_size(dims: Any = ()) -> tuple[int, ...]:
    return _ints(dims, "size")


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise _BadPickle(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not a bytes literal")
    return text.encode(encoding)


class _NpDType:
    """``numpy.dtype`` stand-in: remembers the type code and byte order."""

    def __init__(self, spec: Any = "", align: Any = False, copy: Any = False):
        self.spec, self.order = str(spec), "<"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]


_NP_STRUCT = {
    "f2": "e", "f4": "f", "f8": "d", "i1": "b", "i2": "h", "i4": "i", "i8": "q",
    "u1": "B", "u2": "H", "u4": "I", "u8": "Q", "b1": "?", "c8": "ff", "c16": "dd",
}  # fmt: skip


def _np_scalar(dtype: Any, data: Any = b"") -> Any:
    """A numpy scalar decoded to a Python number with ``struct``; anything else becomes a stub."""
    fmt = _NP_STRUCT.get(dtype.spec) if isinstance(dtype, _NpDType) else None
    if fmt is None or not isinstance(data, bytes) or len(data) != struct.calcsize("<" + fmt):
        return _stub_class("numpy.scalar")(dtype, data)
    values = struct.unpack((">" if dtype.order == ">" else "<") + fmt, data)
    return complex(*values) if len(values) == 2 else values[0]


class _NdArray(_Stub):
    qualname = "numpy.ndarray"

    def summary(self) -> str:
        state = self.state if isinstance(self.state, tuple) and len(self.state) >= 3 else (None, (), None)
        spec = state[2].spec if isinstance(state[2], _NpDType) else "?"
        shape = list(state[1]) if isinstance(state[1], tuple) else "?"
        return f"<ndarray {spec} {shape}>"


def _np_reconstruct(cls: Any, shape: Any = (0,), typecode: Any = b"b") -> _NdArray:
    return _NdArray()


# ---------------------------------------------------------------------------------------------- allow-list

_EXTRA_STORAGES = {  # torch storage classes sdlens cannot read, with their element sizes
    "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "QInt8Storage": 1, "QUInt8Storage": 1,
    "QInt32Storage": 4, "QUInt4x2Storage": 1, "QUInt2x4Storage": 1,
}  # fmt: skip
_EXTRA_TORCH_DTYPES = (
    "uint16", "uint32", "uint64", "complex32", "complex64", "complex128", "float8_e4m3fnuz",
    "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "qint8", "quint8", "qint32", "quint4x2",
)  # fmt: skip
_STUBS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.early_stopping.EarlyStopping",
    "lightning.fabric.utilities.data.AttributeDict",
    "torch.torch_version.TorchVersion",
    "argparse.Namespace",
    "torch.Tensor",
    "torch.nn.parameter.Parameter",
)


def _build_allowed() -> dict[str, Any]:
    allowed: dict[str, Any] = {
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        "torch.Size": _torch_size,
        "collections.OrderedDict": _Dict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "_codecs.encode": _codecs_encode,
        "numpy.dtype": _NpDType,
        "numpy.ndarray": _NdArray,
    }
    for np_core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{np_core}.scalar"] = _np_scalar
        allowed[f"{np_core}._reconstruct"] = _np_reconstruct
    storages = {n: (d, DTYPES[d].itemsize) for n, d in TORCH_STORAGE_DTYPES.items()}
    storages.update({n: (None, size) for n, size in _EXTRA_STORAGES.items()})
    for name, (dtype, size) in storages.items():
        for module in ("torch", "torch.cuda"):
            allowed[f"{module}.{name}"] = StorageType(name, dtype, size)
    for qual in ("torch.UntypedStorage", "torch.storage.UntypedStorage"):
        allowed[qual] = StorageType("UntypedStorage", "U8", 1)
    for name, d in DTYPES.items():
        allowed[f"torch.{d.torch_name}"] = TorchDType(d.torch_name, name)
    for tname in _EXTRA_TORCH_DTYPES:
        allowed[f"torch.{tname}"] = TorchDType(tname, None)
    for qual in _STUBS:
        allowed[qual] = _stub_class(qual)
    return allowed


_ALLOWED = _build_allowed()


def _qualname(module: str, name: str) -> str:
    """``module.name`` as the unpickler would resolve it (Python 2 names mapped as ``fix_imports`` does)."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def is_allowed_global(qualname: str) -> bool:
    """Whether a pickle may reference ``module.name`` (after mapping Python 2 module names)."""
    module, _, name = qualname.rpartition(".")
    return _qualname(module, name) in _ALLOWED


# ---------------------------------------------------------------------------------------------- scanning

_STRING_OPS = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
_MARK = object()
_UNKNOWN = object()


def _stack_effect(op: pickletools.OpcodeInfo) -> tuple[bool, int, tuple[Any, ...]]:
    """(pops to a MARK first?, items popped besides, items pushed) for one opcode."""
    before, mark = op.stack_before, pickletools.markobject
    pushed = tuple(_MARK if a is mark else _UNKNOWN for a in op.stack_after)
    return mark in before, before.index(mark) if mark in before else len(before), pushed


_EFFECTS = {op.name: _stack_effect(op) for op in pickletools.opcodes}


def _scan(stream: BinaryIO) -> tuple[list[str], str | None]:
    """Every global a pickle references, and an error message if its opcodes are malformed (else None).

    Reads opcodes with :func:`pickletools.genops` (which executes nothing) up to STOP, simulating the
    stack and memo just enough to know which strings a STACK_GLOBAL consumes.
    """
    found: dict[str, None] = {}
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    try:
        for op, arg, _pos in pickletools.genops(stream):
            name = op.name
            if name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = stack[-1] if stack else _UNKNOWN
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else _UNKNOWN
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo.get(arg, _UNKNOWN))
            elif name == "DUP":
                stack.append(stack[-1] if stack else _UNKNOWN)
            elif name in _STRING_OPS:
                stack.append(arg)
            elif name == "STACK_GLOBAL":
                attr = stack.pop() if stack else _UNKNOWN
                module = stack.pop() if stack else _UNKNOWN
                ok = isinstance(module, str) and isinstance(attr, str)
                found[_qualname(module, attr) if ok else "<unresolved STACK_GLOBAL>"] = None
                stack.append(_UNKNOWN)
            else:
                if name in ("GLOBAL", "INST"):
                    module, _, attr = str(arg).partition(" ")
                    found[_qualname(module, attr)] = None
                elif name.startswith("EXT"):
                    found[f"<extension registry code {arg}>"] = None
                to_mark, n_pop, pushed = _EFFECTS[name]
                if to_mark:
                    while stack and stack.pop() is not _MARK:
                        pass
                if n_pop:
                    del stack[-n_pop:]
                stack.extend(pushed)
    except ValueError as e:
        msg = str(e)
        if "exhausted" in msg or "remain" in msg:
            return list(found), f"truncated (the pickle ends before its STOP opcode: {msg})"
        return list(found), f"corrupt ({msg})"
    return list(found), None


def scan_pickle_globals(data: bytes) -> list[str]:
    """Every ``module.name`` global that a pickle references (GLOBAL, INST, STACK_GLOBAL), in first-use
    order, without executing anything. Raises ``ValueError`` if the pickle is truncated or malformed."""
    found, error = _scan(io.BytesIO(data))
    if error is not None:
        raise ValueError(f"pickle is {error}")
    return found


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only the allow-list, mapping storages to :class:`StorageRef` records."""

    def __init__(self, data: bytes, storages: dict[str, StorageRef]):
        super().__init__(io.BytesIO(data), encoding="latin1")
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        qual = _qualname(module, name)
        if qual not in _ALLOWED:
            raise _Refused(qual)
        return _ALLOWED[qual]

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise _BadPickle(f"unexpected persistent id {pid!r:.80}")
        stype, key, _location, numel = pid[1:5]
        if not isinstance(stype, StorageType) or not isinstance(numel, int) or numel < 0:
            raise _BadPickle(f"malformed storage reference {pid!r:.80}")
        key = str(key)
        root = self._storages.setdefault(key, StorageRef(key, stype, numel))
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[1], int) and view[1] >= 0):
            raise _BadPickle(f"malformed storage view {view!r:.80}")
        return StorageRef(key, stype, numel, view[1] * stype.itemsize)


# ---------------------------------------------------------------------------------------------- unwrapping


def _has_tensor(obj: Any, seen: set[int] | None = None) -> bool:
    if isinstance(obj, TensorRef):
        return True
    if not isinstance(obj, (dict, list, tuple)):
        return False
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return False
    seen.add(id(obj))
    values = obj.values() if isinstance(obj, dict) else obj
    return any(_has_tensor(v, seen) for v in values)


def _summary(value: Any) -> Any:
    """A JSON-friendly stand-in for a non-tensor value: scalars and strings as-is, the rest described."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, TensorRef):
        return f"<tensor {value.dtype_name or value.torch_name} {list(value.shape)}>"
    if isinstance(value, dict):
        return f"<dict: {len(value)} keys>"
    if isinstance(value, (list, tuple, set, frozenset)):
        return f"<{type(value).__name__}: {len(value)} items>"
    if isinstance(value, bytes):
        return f"<bytes: {len(value)}>"
    if isinstance(value, _NdArray):
        return value.summary()
    return f"<{type(value).__name__}>"


def _unwrap(root: Any) -> tuple[Any, dict[str, Any]]:
    """The object holding the tensors (below ``state_dict``/``model``/... wrappers) and the extras found on
    the way down, keyed by their dotted path."""
    extras: dict[str, Any] = {}
    prefix, obj, seen = "", root, set()
    while isinstance(obj, dict) and id(obj) not in seen:
        seen.add(id(obj))
        inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict) and _has_tensor(obj[k])), None)
        if inner is None:
            break
        extras.update({prefix + str(k): _summary(v) for k, v in obj.items() if k != inner})
        obj, prefix = obj[inner], f"{prefix}{inner}."
    return obj, extras


def _flatten(obj: Any, prefix: str, tensors: dict[str, TensorRef], extras: dict[str, Any], seen: set[int]) -> None:
    """Tensors of a (possibly nested) dict/list under dotted keys; every other value to ``extras``."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for k, v in items:
        name = f"{prefix}{k}"
        if isinstance(v, TensorRef):
            tensors[name] = v
        elif isinstance(v, (dict, list, tuple)) and _has_tensor(v):
            _flatten(v, name + ".", tensors, extras, seen)
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
            size = os.stat(src).st_size
            with open(src, "rb") as f:
                if size == 0:
                    raise CheckpointError(src, "empty file (0 bytes)")
                head = f.read(512)
                if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
                    root, starts = self._index_zip(f)
                elif head[257:262] == b"ustar":
                    raise CheckpointError(src, "tar-format torch checkpoint (torch < 0.4) is not supported")
                else:
                    self.format = "torch-legacy"
                    root, starts = self._index_legacy(f, size)
        except FileNotFoundError:
            raise CheckpointError(src, "no such file") from None
        except IsADirectoryError:
            raise CheckpointError(src, "is a directory, not a torch checkpoint file") from None
        except OSError as e:
            raise CheckpointError(src, f"cannot read: {e.strerror or e}") from None
        self._build_index(root, starts, size)

    # ------------------------------------------------------------------ pickles
    def _unpickle(self, data: bytes, what: str, storages: dict[str, StorageRef]) -> Any:
        """Scan then restricted-unpickle one pickle; UnsafePickleError if it names a disallowed global."""
        found, error = _scan(io.BytesIO(data))
        return self._load_scanned(data, found, error, what, storages)

    def _load_scanned(
        self,
        data: bytes,
        found: list[str],
        error: str | None,
        what: str,
        storages: dict[str, StorageRef],
        *,
        first: bool = False,
    ) -> Any:
        """Refuse disallowed globals (all named), report malformed opcodes, else unpickle restrictedly."""
        src = str(self.path)
        unsafe = [g for g in found if g not in _ALLOWED]
        if unsafe:
            raise UnsafePickleError(src, unsafe)
        if error is not None:
            if first:
                raise CheckpointError(src, f"not a torch checkpoint (neither a zip archive nor a pickle: {error})")
            raise CheckpointError(src, f"{what} is {error}")
        try:
            return _RestrictedUnpickler(data, storages).load()
        except _Refused as e:  # unreachable after the scan; kept as a second line of defence
            raise UnsafePickleError(src, [e.qualname]) from None
        except CheckpointError:
            raise
        except RecursionError:
            raise CheckpointError(src, f"cannot unpickle {what}: nested too deeply") from None
        except Exception as e:  # any malformation of the pickle's content
            raise CheckpointError(src, f"cannot unpickle {what}: {type(e).__name__}: {clip(str(e))}") from None

    # ------------------------------------------------------------------ zip
    def _index_zip(self, f: BinaryIO) -> tuple[Any, dict[str, tuple[int, int]]]:
        src = str(self.path)
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as e:
            raise CheckpointError(src, f"truncated or corrupt zip archive ({clip(str(e))})") from None
        with zf:
            return self._index_zip_entries(f, zf)

    def _index_zip_entries(self, f: BinaryIO, zf: zipfile.ZipFile) -> tuple[Any, dict[str, tuple[int, int]]]:
        src = str(self.path)
        names = zf.namelist()
        candidates = sorted((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), key=len)
        if not candidates:
            raise CheckpointError(src, "zip archive has no data.pkl (not a torch.save checkpoint)")
        pkl = candidates[0]
        prefix = pkl[: -len("data.pkl")]
        if prefix + "constants.pkl" in names or any(n.startswith(prefix + "code/") for n in names):
            raise CheckpointError(src, "TorchScript archive (torch.jit.save) is not supported; save a state dict")
        try:
            data = zf.read(pkl)
            order = zf.read(prefix + "byteorder") if prefix + "byteorder" in names else b"little"
        except Exception as e:  # BadZipFile (CRC), zlib.error, EOFError, NotImplementedError...
            raise CheckpointError(src, f"cannot read {clip(pkl)} from the zip archive ({clip(str(e))})") from None
        if order.strip() != b"little":
            raise CheckpointError(src, f"byte order {order.decode('latin1')!r} is not supported (only little-endian)")
        storages: dict[str, StorageRef] = {}
        root = self._unpickle(data, pkl, storages)
        starts: dict[str, tuple[int, int]] = {}
        for key in storages:
            name = f"{prefix}data/{key}"
            try:
                info = zf.getinfo(name)
            except KeyError:
                raise CheckpointError(src, f"storage {key!r} is missing from the archive (no entry {name})") from None
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                raise CheckpointError(
                    src, f"zip entry {name} is compressed or encrypted; torch checkpoints store tensors uncompressed"
                )
            f.seek(info.header_offset)
            header = f.read(30)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise CheckpointError(src, f"zip entry {name} has no valid local header (corrupt archive)")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            starts[key] = (info.header_offset + 30 + name_len + extra_len, info.file_size)
        return root, starts

    # ------------------------------------------------------------------ legacy
    def _next_pickle(self, f: BinaryIO, what: str, storages: dict[str, StorageRef], *, first: bool = False) -> Any:
        start = f.tell()
        found, error = _scan(f)
        end = f.tell()
        f.seek(start)
        return self._load_scanned(f.read(end - start), found, error, what, storages, first=first)

    def _index_legacy(self, f: BinaryIO, size: int) -> tuple[Any, dict[str, tuple[int, int]]]:
        src = str(self.path)
        f.seek(0)
        storages: dict[str, StorageRef] = {}
        magic = self._next_pickle(f, "the magic number", storages, first=True)
        if type(magic) is not int or magic != LEGACY_MAGIC:
            raise CheckpointError(src, "not a torch checkpoint (a pickle without torch's magic number)")
        version = self._next_pickle(f, "the protocol version", storages)
        if version != LEGACY_PROTOCOL:
            raise CheckpointError(src, f"unsupported legacy torch protocol version {version!r}")
        sys_info = self._next_pickle(f, "the system info", storages)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise CheckpointError(src, "big-endian legacy checkpoints are not supported")
        root = self._next_pickle(f, "the main pickle", storages)
        keys = self._next_pickle(f, "the storage key list", storages)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CheckpointError(src, "legacy storage key list is not a list of strings")
        starts: dict[str, tuple[int, int]] = {}
        pos = f.tell()
        for key in keys:
            ref = storages.get(key)
            if ref is None:
                raise CheckpointError(src, f"storage {key!r} in the data section is not referenced by the pickle")
            f.seek(pos)
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(src, f"file ends at byte {size} before storage {key!r} (truncated?)")
            count = int.from_bytes(raw, "little")
            nbytes = ref.nbytes
            if (count == 0) != (nbytes == 0) or (count and (nbytes % count or nbytes // count > 16)):
                raise CheckpointError(src, f"storage {key!r} header says {count} elements, pickle says {nbytes} bytes")
            starts[key] = (pos + 8, nbytes)
            pos += 8 + nbytes
        missing = sorted(set(storages) - set(starts))
        if missing:
            raise CheckpointError(src, f"storage {missing[0]!r} is missing from the data section")
        return root, starts

    # ------------------------------------------------------------------ index
    def _build_index(self, root: Any, starts: dict[str, tuple[int, int]], size: int) -> None:
        src = str(self.path)
        refs: dict[str, TensorRef] = {}
        inner_extras: dict[str, Any] = {}
        try:
            obj, extras = _unwrap(root)
            if isinstance(obj, TensorRef):
                refs["tensor"] = obj
            elif isinstance(obj, (dict, list, tuple)):
                _flatten(obj, "", refs, inner_extras, set())
            else:
                extras["object"] = _summary(obj)
        except RecursionError:
            raise CheckpointError(src, "the pickled object is nested too deeply to index") from None
        extras.update(inner_extras)
        self.extras = extras
        for key, (start, length) in starts.items():
            if start + length > size:
                raise CheckpointError(
                    src, f"storage {key!r} needs bytes {start}..{start + length} but the file has {size} (truncated?)"
                )
        for key, ref in refs.items():
            self.tensors[key] = self._tensor_info(key, ref, starts)

    def _tensor_info(self, key: str, ref: TensorRef, starts: dict[str, tuple[int, int]]) -> TensorInfo:
        src = str(self.path)
        dtype = ref.dtype_name
        if dtype is None:
            raise CheckpointError(src, f"tensor {key!r} has dtype {ref.torch_name}, which sdlens does not support")
        storage = ref.storage
        start, available = starts[storage.key]
        if storage.nbytes > available:
            raise CheckpointError(
                src, f"storage {storage.key!r} holds {available} bytes but the pickle says {storage.nbytes}"
            )
        itemsize = DTYPES[dtype].itemsize
        storage_nbytes = storage.nbytes - storage.view_bytes
        if math.prod(ref.shape):
            last = ref.storage_offset + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride, strict=True))
            if (last + 1) * itemsize > storage_nbytes:
                raise CheckpointError(
                    src, f"tensor {key!r} extends past the end of its storage {storage.key!r} ({storage_nbytes} bytes)"
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
        base = torch.frombuffer(m, dtype=dt, count=loc.storage_nbytes // info.itemsize, offset=loc.storage_start)
        t = torch.as_strided(base, info.shape, loc.stride, loc.storage_offset)
        return t.contiguous() if copy else t


def open_torch_checkpoint(path: str | Path) -> TorchCheckpoint:
    """Index a torch checkpoint lazily (no torch import, no tensor data read, no code from the file run).

    Raises :class:`~sdlens.errors.UnsafePickleError` for pickles naming disallowed globals and
    :class:`~sdlens.errors.CheckpointError` for anything unreadable.
    """
    return TorchCheckpoint(path)
