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
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sdlens.errors import CheckpointError, UnsafeArchiveError, UnsafePickleError
from sdlens.io.base import Checkpoint, TensorInfo, open_regular
from sdlens.io.dtypes import DTYPES, TORCH_STORAGE_DTYPES, torch_dtype
from sdlens.io.limits import clip, short
from sdlens.io.pickle_scan import MAX_PICKLE_BYTES, PickleScan, scan_pickle
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

# ---------------------------------------------------------------------------------------------- records
#
# Every object handed to the unpickler is inert and frozen: slotted, refusing attribute assignment and BUILD
# (``__setstate__``), so that no pickle can change a stand-in shared with the next file. Objects a pickle
# builds (tensor and storage references, dicts, stubs) are fresh per use.


class _BadPickle(ValueError):
    """A pickle whose allowed calls got arguments no torch checkpoint would contain."""


class _Frozen:
    """Base of the slotted, immutable stand-ins."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise _BadPickle(f"the pickle sets attribute {_brief(name)} on {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise _BadPickle(f"the pickle deletes attribute {_brief(name)} of {type(self).__name__}")

    def __setstate__(self, state: Any) -> None:
        raise _BadPickle(f"the pickle BUILDs state onto {self!r} (refused: stand-ins are immutable)")

    def _init(self, **fields: Any) -> None:
        for k, v in fields.items():
            object.__setattr__(self, k, v)


class StorageType(_Frozen):
    """Stand-in for a ``torch.*Storage`` class named by a pickle."""

    __slots__ = ("name", "dtype", "itemsize")
    name: str
    dtype: str | None  # safetensors dtype name; None when sdlens has no equivalent
    itemsize: int

    def __init__(self, name: str, dtype: str | None, itemsize: int):
        self._init(name=name, dtype=dtype, itemsize=itemsize)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class TorchDType(_Frozen):
    """Stand-in for a ``torch.<dtype>`` global (used by ``_rebuild_tensor_v3``)."""

    __slots__ = ("name", "dtype")
    name: str  # torch spelling
    dtype: str | None

    def __init__(self, name: str, dtype: str | None):
        self._init(name=name, dtype=dtype)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class StorageRef(_Frozen):
    """One use of a storage of the file, identified by its key; ``view_bytes`` offsets legacy storage views."""

    __slots__ = ("key", "stype", "numel", "view_bytes")
    key: str
    stype: StorageType
    numel: int
    view_bytes: int

    def __init__(self, key: str, stype: StorageType, numel: int, view_bytes: int = 0):
        self._init(key=key, stype=stype, numel=numel, view_bytes=view_bytes)

    @property
    def nbytes(self) -> int:
        return self.numel * self.stype.itemsize

    def __repr__(self) -> str:
        return f"<storage {self.key[:40]!r}>"


class TensorRef(_Frozen):
    """A tensor as the pickle describes it: a strided view of a storage, no data."""

    __slots__ = ("storage", "storage_offset", "shape", "stride", "dtype")
    storage: StorageRef
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: TorchDType | None  # only set by _rebuild_tensor_v3

    def __init__(self, storage: StorageRef, storage_offset: int, shape: tuple[int, ...], stride: tuple[int, ...],
                 dtype: TorchDType | None = None):  # fmt: skip
        self._init(storage=storage, storage_offset=storage_offset, shape=shape, stride=stride, dtype=dtype)

    def __setstate__(self, state: Any) -> None:  # BUILD on a (fresh) tensor: ignored, nothing is set
        pass

    def __repr__(self) -> str:
        return f"<tensor {self.torch_name} ndim={len(self.shape)}>"

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


class _Callable(_Frozen):
    """An allowed global that the pickle may call (REDUCE): a frozen wrapper around sdlens's own handler."""

    __slots__ = ("qualname", "fn")
    qualname: str
    fn: Callable[..., Any]

    def __init__(self, qualname: str, fn: Callable[..., Any]):
        self._init(qualname=qualname, fn=fn)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __repr__(self) -> str:
        return self.qualname


class _FrozenType(type):
    """Metaclass of the stub classes: a pickle cannot set attributes on a class shared between files."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise _BadPickle(f"the pickle sets attribute {_brief(name)} on class {cls.__name__}")

    def __delattr__(cls, name: str) -> None:
        raise _BadPickle(f"the pickle deletes attribute {_brief(name)} of class {cls.__name__}")


class _Dict(dict, metaclass=_FrozenType):
    """``collections.OrderedDict`` stand-in: a dict that keeps BUILD state aside instead of setting attributes."""

    def __setstate__(self, state: Any) -> None:
        self.pickle_state = state  # e.g. the _metadata of a state dict; kept on this (fresh) dict only


def _ordered_dict(*args: Any) -> _Dict:
    d = _Dict()
    if args:  # Python 2 era: OrderedDict([[key, value], ...]); keys were size-checked by the scan
        if len(args) != 1 or not isinstance(args[0], list):
            raise _BadPickle("OrderedDict rebuilt from unexpected arguments")
        for pair in args[0]:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[0], (str, int)):
                raise _BadPickle("OrderedDict rebuilt from unexpected items")
            d[pair[0]] = pair[1]
    return d


class _Stub(metaclass=_FrozenType):
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
        cls = _FrozenType(qualname.rsplit(".", 1)[-1], (_Stub,), {"qualname": qualname})
        _STUB_CLASSES[qualname] = cls
    return cls


class _Refused(pickle.UnpicklingError):
    def __init__(self, qualname: str):
        super().__init__(qualname)
        self.qualname = qualname


def _brief(value: Any, limit: int = 60) -> str:
    """Bounded text of an untrusted value: never ``str()``/``repr()`` of a container (memo DAGs expand)."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else f"<int of {value.bit_length()} bits>"
    if isinstance(value, (bytes, bytearray)):
        return f"<bytes: {len(value)}>"
    if isinstance(value, (tuple, list, dict, set, frozenset)):
        return f"<{type(value).__name__}: {len(value)} items>"
    if isinstance(value, (_Frozen, _Stub)):
        return object.__repr__(value) if isinstance(value, _Stub) else type(value).__repr__(value)
    return f"<{type(value).__name__}>"


# ---------------------------------------------------------------------------------------------- handlers

MAX_DIMS = 64  # tensor rank
MAX_KEY_CHARS = 4096  # one dotted key path (real ones are under 200)
MAX_ENTRIES = 1_000_000  # tensors and other values in one checkpoint
MAX_BROADCAST_BYTES = 1 << 30  # a stride-0 view may claim more bytes than its storage holds, up to this


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if (
        not isinstance(value, (tuple, list))
        or len(value) > MAX_DIMS
        or not all(type(v) is int and 0 <= v < 1 << 62 for v in value)
    ):
        raise _BadPickle(f"tensor {what} {_brief(value)} is not a tuple of at most {MAX_DIMS} non-negative ints")
    return tuple(value)


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: Any = None) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise _BadPickle(f"tensor rebuilt from {_brief(storage)}, not a storage")
    if type(offset) is not int or not 0 <= offset < 1 << 62:
        raise _BadPickle(f"tensor storage offset {_brief(offset)} is not a non-negative int")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise _BadPickle(f"tensor size and stride differ in length ({len(shape)} and {len(strides)})")
    if dtype is not None and not isinstance(dtype, TorchDType):
        raise _BadPickle(f"tensor dtype {_brief(dtype)} is not a torch dtype")
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
    if not any(func is b for b in _TENSOR_BUILDERS) or not isinstance(args, tuple):  # identity: never hash
        raise _BadPickle("_rebuild_from_type_v2 with an unexpected rebuild function")
    return func(*args)


_TENSOR_BUILDERS: list[_Callable] = []  # filled by _build_allowed


def _torch_size(dims: Any = ()) -> tuple[int, ...]:
    return _ints(dims, "size")


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise _BadPickle(f"_codecs.encode({type(text).__name__}, {_brief(encoding)}) is not a bytes literal")
    return text.encode(encoding)


class _NpDType:
    """``numpy.dtype`` stand-in: remembers the type code and byte order (one per use)."""

    def __init__(self, spec: Any = "", align: Any = False, copy: Any = False):
        self.spec, self.order = (spec[:8] if isinstance(spec, str) else "?"), "<"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and isinstance(state[1], str) and state[1] in "<>|=":
            self.order = state[1]


_NP_STRUCT = {
    "f2": "e", "f4": "f", "f8": "d", "i1": "b", "i2": "h", "i4": "i", "i8": "q",
    "u1": "B", "u2": "H", "u4": "I", "u8": "Q", "b1": "?", "c8": "ff", "c16": "dd",
}  # fmt: skip


def _np_scalar(dtype: Any, data: Any = b"") -> Any:
    """A numpy scalar decoded to a Python number with ``struct``; anything else becomes a stub."""
    fmt = _NP_STRUCT.get(dtype.spec) if isinstance(dtype, _NpDType) else None
    if fmt is None or not isinstance(data, bytes) or len(data) != struct.calcsize("<" + fmt):
        return _stub_class("numpy.scalar")()
    values = struct.unpack((">" if dtype.order == ">" else "<") + fmt, data)
    return complex(*values) if len(values) == 2 else values[0]


class _NdArray(_Stub):
    qualname = "numpy.ndarray"

    def summary(self) -> str:
        state = self.state if isinstance(self.state, tuple) and len(self.state) >= 3 else (None, (), None)
        spec = state[2].spec if isinstance(state[2], _NpDType) else "?"
        shape = [d for d in state[1] if type(d) is int][:8] if isinstance(state[1], tuple) else "?"
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
    calls: dict[str, Callable[..., Any]] = {
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        "torch.Size": _torch_size,
        "collections.OrderedDict": _ordered_dict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "_codecs.encode": _codecs_encode,
        "numpy.dtype": _NpDType,
        "numpy.ndarray": _NdArray,
    }
    for np_core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        calls[f"{np_core}.scalar"] = _np_scalar
        calls[f"{np_core}._reconstruct"] = _np_reconstruct
    allowed: dict[str, Any] = {q: _Callable(q, fn) for q, fn in calls.items()}
    _TENSOR_BUILDERS.extend(allowed[f"torch._utils.{n}"] for n in
                            ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter"))  # fmt: skip
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


def scan_pickle_globals(data: bytes) -> list[str]:
    """Every ``module.name`` global that a pickle references (GLOBAL, INST, STACK_GLOBAL), in first-use
    order, without executing anything. Raises ``ValueError`` if the pickle is truncated, malformed or over
    a work limit (see :mod:`sdlens.io.pickle_scan`)."""
    result = scan_pickle(bytes(data))
    if result.error is not None:
        raise ValueError(f"pickle is {result.error}")
    return result.globals


class _StorageIndex:
    """The storages a file's pickles reference: key -> (storage type, element count), first use wins; a key
    referenced again with another type or size is refused (torch would silently use the first)."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[StorageType, int]] = {}

    def use(self, key: str, stype: StorageType, numel: int) -> None:
        known = self.records.setdefault(key, (stype, numel))
        if known[0].name != stype.name or known[1] != numel:
            raise _BadPickle(f"storage {key[:40]!r} is referenced as two different types or sizes")

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __iter__(self):
        return iter(self.records)

    def nbytes(self, key: str) -> int:
        stype, numel = self.records[key]
        return numel * stype.itemsize


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only the allow-list, mapping each storage use to a fresh :class:`StorageRef`."""

    def __init__(self, data: bytes, storages: _StorageIndex | dict | None = None):
        super().__init__(io.BytesIO(data), encoding="latin1")
        self._storages = storages if isinstance(storages, _StorageIndex) else _StorageIndex()

    def find_class(self, module: str, name: str) -> Any:
        qual = _qualname(module, name)
        if qual not in _ALLOWED:
            raise _Refused(qual)
        return _ALLOWED[qual]

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (type(pid) is tuple and len(pid) in (5, 6) and type(pid[0]) is str and pid[0] == "storage"):
            raise _BadPickle(f"unexpected persistent id {_brief(pid)}")
        stype, key, _location, numel = pid[1:5]
        if not isinstance(stype, StorageType) or type(numel) is not int or not 0 <= numel < 1 << 62:
            raise _BadPickle("malformed storage reference (type or element count)")
        if type(key) is int and 0 <= key < 1 << 64:
            key = str(key)
        if type(key) is not str or len(key) > 256:
            raise _BadPickle(f"malformed storage key {_brief(key)}")
        self._storages.use(key, stype, numel)
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return StorageRef(key, stype, numel)
        if not (type(view) is tuple and len(view) == 3 and type(view[1]) is int and 0 <= view[1] <= numel):
            raise _BadPickle("malformed storage view")
        return StorageRef(key, stype, numel, view[1] * stype.itemsize)


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
        inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict) and walk.has_tensor(obj[k])), None)
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
            raise CheckpointError(None, f"a key path is longer than {MAX_KEY_CHARS} characters "
                                        f"({short(name)}); refused")
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
            raise CheckpointError(src, f"malformed torch checkpoint ({type(e).__name__}: {str(e)[:200]})") from None

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
            raise CheckpointError(src, f"cannot unpickle {what}: {type(e).__name__}: {clip(str(e))}") from None

    # ------------------------------------------------------------------ zip
    def _index_zip(self, f: BinaryIO, size: int) -> tuple[Any, dict[str, tuple[int, int]], _StorageIndex]:
        """Index a torch zip read exactly as torch reads it (see :mod:`sdlens.io.torch_zip`): every pickle
        member is scanned, not only the ``data.pkl`` that torch (and sdlens) unpickles."""
        src = str(self.path)
        prefix, listed, problems = torch_zip_members(f, size, src)
        if not problems and any(m.name in (prefix + "constants.pkl",) or m.name.startswith(prefix + "code/")
                                for m in listed):  # fmt: skip
            # torch.load hands these to torch.jit.load, whose unpickler resolves only TorchScript types
            raise CheckpointError(src, "TorchScript archive (torch.jit.save) is not supported; save a state dict")
        # every *.pkl member (every copy of a duplicate, by either of its names) is a pickle some loader may
        # run: all are scanned and every unsafe global named before an ambiguous archive is refused
        unsafe: list[str] = []
        blobs: dict[str, bytes] = {}
        for m in listed:
            if not (m.name.endswith(".pkl") or m.local_name.endswith(".pkl")):
                continue
            blob = read_member(f, m, src, check_crc=False)
            unsafe += [g for g in scan_pickle(blob).globals if g not in _ALLOWED]
            if not crc_ok(blob, m):
                problems.append(f"CRC-32 mismatch in {m.name!r} (altered after writing; torch may read other bytes)")
            blobs.setdefault(m.name, blob)
        if unsafe:
            raise UnsafePickleError(src, unsafe)
        if problems:
            raise UnsafeArchiveError(src, problems[0])
        members = {m.name: m for m in listed}
        pkl = prefix + "data.pkl"
        if pkl not in members:
            raise CheckpointError(src, "zip archive has no data.pkl (not a torch.save checkpoint)")
        order = read_member(f, members[prefix + "byteorder"], src, 64) if prefix + "byteorder" in members else b"little"
        if order.strip() != b"little":
            raise CheckpointError(src, f"byte order {_brief(order.decode('latin1'))} is not supported (only little-endian)")
        storages = _StorageIndex()
        root = self._load(blobs[pkl], pkl, storages)
        starts: dict[str, tuple[int, int]] = {}
        for key in storages:
            name = f"{prefix}data/{key}"
            m = members.get(name)
            if m is None:
                raise CheckpointError(src, f"storage {short(key)} is missing from the archive (no entry {name})")
            if m.method != zipfile.ZIP_STORED:
                raise CheckpointError(
                    src, f"zip entry {name} is compressed or encrypted; torch checkpoints store tensors uncompressed"
                )
            starts[key] = (m.data_start, m.file_size)
        # members sdlens does not read as tensors but that hold a pickle: scanned too
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
        if unsafe:
            raise UnsafePickleError(src, unsafe)
        return root, starts, storages

    # ------------------------------------------------------------------ legacy
    def _next_pickle(self, f: BinaryIO, size: int, what: str, storages: _StorageIndex, *, first: bool = False) -> Any:
        start = f.tell()
        want = 1 << 20
        available = min(MAX_PICKLE_BYTES, size - start)
        while True:  # read 1 MiB, then more while the pickle runs past what was read, up to the limit
            data = f.read(min(want, available))  # bounded: never what a length field claims
            result = scan_pickle(data, max_bytes=len(data))
            ran_out = result.error is not None and result.error.startswith(("larger than", "truncated"))
            if not ran_out or len(data) >= available:
                break
            want *= 8
            f.seek(start)
        if ran_out and size - start > MAX_PICKLE_BYTES:
            result = PickleScan(result.globals, f"larger than the {MAX_PICKLE_BYTES >> 20} MiB limit for one pickle",
                                result.end, True)  # fmt: skip
        elif ran_out:
            result = PickleScan(result.globals, "truncated (the pickle ends before its STOP opcode)", result.end)
        self._check_scan(result, what, first=first)
        f.seek(start + result.end)
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
                raise CheckpointError(src, f"storage {key[:40]!r} in the data section is not referenced by the pickle")
            if key in starts:
                raise CheckpointError(src, f"storage {key[:40]!r} is listed twice in the data section")
            f.seek(pos)
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(src, f"file ends at byte {size} before storage {short(key)} (truncated?)")
            count = int.from_bytes(raw, "little")
            nbytes, numel = storages.nbytes(key), storages.records[key][1]
            if count != numel:  # torch reads `count` elements: any other count and it reads other bytes
                raise CheckpointError(src, f"storage {short(key)} header says {count} elements, the pickle says "
                                           f"{numel} ({nbytes} bytes)")
            starts[key] = (pos + 8, nbytes)
            pos += 8 + nbytes
            if pos > size:
                raise CheckpointError(src, f"storage {short(key)} needs bytes up to {pos} but the file has {size} (truncated?)")
        missing = sorted(set(storages) - set(starts))
        if missing:
            raise CheckpointError(src, f"storage {missing[0]!r} is missing from the data section")
        return root, starts, storages

    # ------------------------------------------------------------------ index
    def _build_index(self, root: Any, starts: dict[str, tuple[int, int]], storages: _StorageIndex, size: int) -> None:
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
                    src, f"storage {short(key)} needs bytes {start}..{start + length} but the file has {size} (truncated?)"
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
            raise CheckpointError(src, f"tensor {label} has dtype {ref.torch_name}, which sdlens does not support")
        start, available = starts[storage.key]
        if storage.nbytes > available:
            raise CheckpointError(
                src, f"storage {short(storage.key)} holds {available} bytes but the pickle says {storage.nbytes}"
            )
        itemsize = DTYPES[dtype].itemsize
        storage_nbytes = storage.nbytes - storage.view_bytes
        if storage_nbytes < 0:
            raise CheckpointError(src, f"tensor {label} views past the end of its storage {short(storage.key)}")
        numel_t = math.prod(ref.shape)
        if numel_t:
            last = ref.storage_offset + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride, strict=True))
            if (last + 1) * itemsize > storage_nbytes:
                raise CheckpointError(
                    src, f"tensor {label} extends past the end of its storage {short(storage.key)} ({storage_nbytes} bytes)"
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
        base = torch.frombuffer(m, dtype=dt, count=loc.storage_nbytes // info.itemsize, offset=loc.storage_start)
        t = torch.as_strided(base, info.shape, loc.stride, loc.storage_offset)
        return t.contiguous() if copy else t


def open_torch_checkpoint(path: str | Path) -> TorchCheckpoint:
    """Index a torch checkpoint lazily (no torch import, no tensor data read, no code from the file run).

    Raises :class:`~sdlens.errors.UnsafePickleError` for pickles naming disallowed globals and
    :class:`~sdlens.errors.CheckpointError` for anything unreadable.
    """
    return TorchCheckpoint(path)
