"""The dtype table shared by every reader: safetensors names, byte sizes, torch and numpy equivalents."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str  # safetensors spelling: F16, BF16, ...
    itemsize: int
    torch_name: str  # attribute of the torch module
    is_float: bool


DTYPES: dict[str, DType] = {
    d.name: d
    for d in [
        DType("F64", 8, "float64", True),
        DType("F32", 4, "float32", True),
        DType("F16", 2, "float16", True),
        DType("BF16", 2, "bfloat16", True),
        DType("F8_E4M3", 1, "float8_e4m3fn", True),
        DType("F8_E5M2", 1, "float8_e5m2", True),
        DType("I64", 8, "int64", False),
        DType("I32", 4, "int32", False),
        DType("I16", 2, "int16", False),
        DType("I8", 1, "int8", False),
        DType("U8", 1, "uint8", False),
        DType("BOOL", 1, "bool", False),
    ]
}

# torch storage class names found in pickles (torch.FloatStorage, ...) -> safetensors dtype name
TORCH_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "Float8_e4m3fnStorage": "F8_E4M3",
    "Float8_e5m2Storage": "F8_E5M2",
}

# torch dtype attribute name -> safetensors name
TORCH_TO_ST: dict[str, str] = {d.torch_name: d.name for d in DTYPES.values()}


def torch_dtype(name: str):
    """The torch dtype for a safetensors dtype name (imports torch)."""
    import torch

    return getattr(torch, DTYPES[name].torch_name)


def st_name(torch_dtype_obj) -> str:
    """The safetensors dtype name of a torch dtype."""
    return TORCH_TO_ST[str(torch_dtype_obj).removeprefix("torch.")]


def dominant_dtype(tensors) -> str:
    """The stored dtype holding most values among ``tensors`` (TensorInfo-like: ``.dtype``, ``.numel``);
    F32 for none."""
    counts: dict[str, int] = {}
    for t in tensors:
        counts[t.dtype] = counts.get(t.dtype, 0) + t.numel
    return max(counts, key=counts.get) if counts else "F32"
