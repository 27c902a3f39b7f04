"""The restricted unpickler of torch checkpoints: inert stand-ins for the few globals a checkpoint may name
(tensor and storage records, dtype markers, recording stubs), the allow-list that maps names to them, and an
unpickler whose ``find_class`` hands out nothing else. Pickles are scanned (:mod:`sdlens.io.pickle_scan`)
before they reach it; nothing from a file is ever executed or imported."""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sdlens.io.dtypes import DTYPES, TORCH_STORAGE_DTYPES

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
        raise _BadPickle(
            f"tensor {what} {_brief(value)} is not a tuple of at most {MAX_DIMS} non-negative ints"
        )
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
