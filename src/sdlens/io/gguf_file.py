"""Header-only opening of GGUF files (ComfyUI-GGUF / llama.cpp containers).

The header is parsed by a bounded walk (``_Walk``): every count, length and offset is checked against the
file before it is used, so a crafted file cannot make sdlens loop, allocate or read out of bounds, and a
header-only open stays in milliseconds (the ``gguf`` package's reader costs about 0.3 s for a FLUX file, and
importing the package 0.2 s more). The ``gguf`` package dequantises (``Q8_0``, ``Q4_K`` …, a bounded number
of rows at a time), and is the independent judge of this parser in the tests (``GGML_TYPES`` equals its
``GGML_QUANT_SIZES``; keys, shapes, types and metadata equal its ``GGUFReader``'s). ``F32`` / ``F16`` /
``BF16`` tensors are plain and read from the memory map like safetensors'.

ComfyUI-GGUF stores a diffusion model's original (BFL / LDM / SAI) keys without the
``model.diffusion_model.`` prefix, its tensors' dimensions in GGML order (innermost first), and the shape of
a tensor it had to reshape in ``comfy.gguf.orig_shape.<key>``.
"""

from __future__ import annotations

import functools
import math
import os
import struct
from pathlib import Path
from typing import Any

from sdlens.errors import CheckpointError
from sdlens.io.base import Checkpoint, TensorInfo, open_regular, os_problem
from sdlens.io.limits import MAX_HEADER_BYTES, MAX_TENSORS, clip, short
from sdlens.io.quant import SCHEMES, Quant

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_KV = 100_000  # metadata entries (a diffusion GGUF has tens, plus one per reshaped tensor)
MAX_ARRAY = 4_000_000  # elements of one metadata array (an LLM tokenizer has ~250,000)
MAX_ELEMENTS = 2_000_000  # metadata array elements in all (a header walk of them stays within seconds)
MAX_GGML_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32
ORIG_SHAPE = "comfy.gguf.orig_shape."
_SHOWN = 64  # metadata array elements kept as text (longer arrays are summarised)
_DEQUANT_VALUES = 1 << 22  # values dequantised at a time (the package's temporaries stay bounded)

# GGML tensor type id -> (name, values per block, bytes per block): the gguf package's GGML_QUANT_SIZES
# (a test holds them equal), here so that a header-only open need not import the package
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}  # fmt: skip
# GGML tensor types stored as plain arrays -> safetensors dtype names
PLAIN_TYPES = {0: "F32", 1: "F16", 30: "BF16", 28: "F64", 24: "I8", 25: "I16", 26: "I32", 27: "I64"}
# GGUF metadata value types: id -> struct format (STRING = 8 and ARRAY = 9 have variable size)
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


# llama.cpp's tensor names for the text encoders ComfyUI-GGUF loads from GGUF files -> the transformers
# names every sdlens reader gives (ComfyUI-GGUF's own loader renames them the same way): by
# ``general.architecture``, substring replacements applied in order
LLAMA_CPP_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "t5encoder": (
        ("enc.", "encoder."),
        (".blk.", ".block."),
        ("token_embd", "shared"),
        ("output_norm", "final_layer_norm"),
        ("attn_q", "layer.0.SelfAttention.q"),
        ("attn_k", "layer.0.SelfAttention.k"),
        ("attn_v", "layer.0.SelfAttention.v"),
        ("attn_o", "layer.0.SelfAttention.o"),
        ("attn_norm", "layer.0.layer_norm"),
        ("attn_rel_b", "layer.0.SelfAttention.relative_attention_bias"),
        ("ffn_up", "layer.1.DenseReluDense.wi_1"),
        ("ffn_down", "layer.1.DenseReluDense.wo"),
        ("ffn_gate", "layer.1.DenseReluDense.wi_0"),
        ("ffn_norm", "layer.1.layer_norm"),
    ),
}
LLAMA_CPP_NAMES["t5"] = LLAMA_CPP_NAMES["t5encoder"]


def is_gguf(head: bytes) -> bool:
    return head.startswith(MAGIC)


def _renamed(name: str, rules: tuple[tuple[str, str], ...]) -> str:
    for old, new in rules:
        name = name.replace(old, new)
    return name


class _Walk:
    """A bounded cursor over the header bytes: every length is checked against what is left of the file."""

    def __init__(self, path: str, data: memoryview):
        self.path, self.data, self.pos = path, data, 0
        self.elements = 0  # metadata array elements walked so far

    def fail(self, problem: str) -> CheckpointError:
        return CheckpointError(self.path, problem)

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(
                f"GGUF header ends inside {what} (needs bytes {self.pos}..{self.pos + n}, "
                f"{len(self.data)} available; truncated?)"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        if self.pos > MAX_HEADER_BYTES:
            raise self.fail(f"GGUF header is larger than {MAX_HEADER_BYTES} bytes")
        return out

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def text(self, what: str, strict: bool = True) -> str:
        raw = bytes(self.take(self.scalar("Q", f"the length of {what}"), what))
        try:
            return raw.decode("utf-8", "strict" if strict else "replace")
        except UnicodeDecodeError:
            raise self.fail(f"GGUF {what} is not UTF-8 text: {short(raw[:40])}") from None

    def value(self, vtype: int, key: str, depth: int = 0) -> Any:
        """One metadata value (a long array summarised as ``[N values]``)."""
        name = short(key)
        if vtype in _SCALAR:
            return self.scalar(_SCALAR[vtype], f"the value of {name}")
        if vtype == _STRING:
            return self.text(f"the value of {name}", strict=False)
        if vtype != _ARRAY:
            raise self.fail(f"GGUF metadata {name} has an unknown value type {vtype}")
        itype = self.scalar("I", f"the array type of {name}")
        count = self.scalar("Q", f"the array length of {name}")
        self.elements += count
        if count > MAX_ARRAY or self.elements > MAX_ELEMENTS:
            raise self.fail(
                f"GGUF metadata {name} is an array of {count} values (limits {MAX_ARRAY} per array, "
                f"{MAX_ELEMENTS} in all)"
            )
        if itype in _SCALAR:
            fmt = _SCALAR[itype]
            raw = self.take(count * struct.calcsize(fmt), f"the array {name}")
            return list(struct.unpack(f"<{count}{fmt}", raw)) if count <= _SHOWN else f"[{count} values]"
        if itype == _STRING or (itype == _ARRAY and depth == 0):
            items = [self.value(itype, key, depth + 1) for _ in range(count)]
            return items if count <= _SHOWN else f"[{count} values]"
        raise self.fail(f"GGUF metadata {name} has an unsupported array type {itype}")


def walk_header(
    path: str, data: memoryview
) -> tuple[dict[str, Any], list[tuple[str, tuple[int, ...], int, int]], int]:
    """Parse and check the whole header: (metadata, every tensor's (name, GGML dims, type id, relative
    offset), where the data region starts)."""
    w = _Walk(path, data)
    if bytes(w.take(4, "the magic")) != MAGIC:
        raise w.fail("not a GGUF file (bad magic)")
    version = w.scalar("I", "the version")
    if version not in VERSIONS:
        if version & 0xFFFF == 0 and version:
            raise w.fail("big-endian GGUF files are not supported")
        raise w.fail(f"GGUF version {version} is not supported (only versions 2 and 3)")
    n_tensors, n_kv = w.scalar("Q", "the tensor count"), w.scalar("Q", "the metadata count")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
        raise w.fail(
            f"GGUF header lists {n_tensors} tensors and {n_kv} metadata entries (limits {MAX_TENSORS}, {MAX_KV})"
        )
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = w.text("a metadata key")
        if key in meta:
            raise w.fail(f"GGUF metadata key {short(key)} appears twice")
        meta[key] = w.value(w.scalar("I", f"the type of {short(key)}"), key)
    table = []
    names: set[str] = set()
    for _ in range(n_tensors):
        name = w.text("a tensor name")
        if name in names:
            raise w.fail(f"GGUF tensor {short(name)} appears twice")
        names.add(name)
        n_dims = w.scalar("I", f"the dimension count of {short(name)}")
        if not 1 <= n_dims <= MAX_GGML_DIMS:
            raise w.fail(f"GGUF tensor {short(name)} has {n_dims} dimensions (1 to 4 allowed)")
        dims = struct.unpack(f"<{n_dims}Q", w.take(8 * n_dims, f"the dimensions of {short(name)}"))
        gtype = w.scalar("I", f"the type of {short(name)}")
        offset = w.scalar("Q", f"the offset of {short(name)}")
        if gtype not in GGML_TYPES:
            raise w.fail(f"GGUF tensor {short(name)} has an unknown quantisation type {gtype}")
        if math.prod(dims) > 1 << 48:
            raise w.fail(f"GGUF tensor {short(name)} has impossible dimensions {short(dims)}")
        table.append((name, dims, gtype, offset))
    align = meta.get("general.alignment", DEFAULT_ALIGNMENT)
    if type(align) is not int or align <= 0 or align & (align - 1):
        raise w.fail(f"GGUF general.alignment {short(align)} is not a power of two")
    return meta, table, -(-w.pos // align) * align


def _metadata_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(_metadata_text, value)) + "]"
    return str(value)


class GgufCheckpoint(Checkpoint):
    format = "gguf"

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._open()

    def _open(self) -> None:
        src = str(self.path)
        with open_regular(src) as f:
            try:
                size = os.fstat(f.fileno()).st_size
            except OSError as e:
                raise CheckpointError(src, f"cannot read: {os_problem(e)}") from None
        with memoryview(self._map(src)) as whole:
            meta, table, start = walk_header(src, whole[: min(size, MAX_HEADER_BYTES + (1 << 20))])
        orig = {k[len(ORIG_SHAPE) :]: v for k, v in meta.items() if k.startswith(ORIG_SHAPE)}
        self.metadata = {
            k: clip(_metadata_text(v), 4096) for k, v in meta.items() if not k.startswith(ORIG_SHAPE)
        }
        rules = LLAMA_CPP_NAMES.get(str(meta.get("general.architecture", "")))
        if rules:  # a text encoder in llama.cpp's names: indexed under the transformers names
            table = [(_renamed(n, rules), *rest) for n, *rest in table]
            orig = {_renamed(k, rules): v for k, v in orig.items()}
            if len({n for n, *_ in table}) < len(table):
                raise CheckpointError(src, "GGUF tensor names collide once renamed from llama.cpp's names")
        self.tensors = self._index(
            src, table, start, int(meta.get("general.alignment", DEFAULT_ALIGNMENT)), size, orig
        )

    def _index(
        self, src: str, table: list, start: int, align: int, size: int, orig: dict[str, Any]
    ) -> dict[str, TensorInfo]:
        spans = []
        out: dict[str, TensorInfo] = {}
        for name, dims, gtype, rel in table:
            scheme, block, type_size = GGML_TYPES[gtype]
            if dims[0] % block:
                raise CheckpointError(
                    src,
                    f"GGUF tensor {short(name)}: rows of {dims[0]} values are not whole {block}-value blocks",
                )
            if rel % align:
                raise CheckpointError(src, f"GGUF tensor {short(name)} is not aligned to {align} bytes")
            numel = math.prod(dims)
            nbytes = numel // block * type_size
            begin = start + rel
            if begin + nbytes > size:
                raise CheckpointError(
                    src,
                    f"tensor {short(name)} needs bytes {begin}..{begin + nbytes} but the file has {size} (truncated?)",
                )
            if nbytes:  # an empty tensor takes no bytes, wherever its offset points
                spans.append((begin, begin + nbytes, name))
            shape = self._shape(src, name, dims, orig.get(name), numel)
            if numel == 0:
                out[name] = TensorInfo(name, shape, PLAIN_TYPES.get(gtype, "F32"), src, begin)
                continue
            if gtype in PLAIN_TYPES:
                out[name] = TensorInfo(name, shape, PLAIN_TYPES[gtype], src, begin)
                continue
            if scheme not in SCHEMES:
                raise CheckpointError(
                    src, f"GGUF tensor {short(name)} is {scheme}, a type sdlens cannot dequantise"
                )
            main = TensorInfo(name, (nbytes,), "U8", src, begin)
            decode = functools.partial(_decode, gtype, main)
            quant = Quant(scheme, main, decode, unit=block)
            out[name] = TensorInfo(name, shape, "F32", src, begin, quant)
        spans.sort()
        for (_b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:], strict=False):
            if b1 < e0:
                raise CheckpointError(src, f"tensors {short(n0)} and {short(n1)} overlap in the data region")
        return dict(sorted(out.items(), key=lambda kv: kv[1].offset))

    @staticmethod
    def _shape(src: str, name: str, dims: tuple[int, ...], orig: Any, numel: int) -> tuple[int, ...]:
        shape = tuple(reversed(dims))
        if orig is None:
            return shape
        want = tuple(orig) if isinstance(orig, list) and all(type(d) is int for d in orig) else ()
        if not want or len(want) > 8 or min(want) < 0 or math.prod(want) != numel:
            raise CheckpointError(
                src, f"GGUF {ORIG_SHAPE}{short(name)} does not fit the tensor's {numel} values"
            )
        return want


def _decode(gtype: int, main: TensorInfo, raw: Any, start: int, stop: int) -> Any:
    """Values ``start .. stop`` (whole blocks from ``start``; float32, flat) of a quantised tensor, by the
    gguf package, a bounded number of blocks at a time (each GGML block decodes on its own)."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = GGMLQuantizationType(gtype)
    _name, block, type_size = GGML_TYPES[gtype]
    b0, b1 = start // block, -(-stop // block)
    data = raw(main)[b0 * type_size : b1 * type_size]
    out = np.empty((b1 - b0) * block, dtype=np.float32)
    step = max(1, _DEQUANT_VALUES // block)  # blocks at a time
    with np.errstate(all="ignore"):  # a crafted block's Inf / NaN scale: its values are reported, not warned
        for k in range(0, b1 - b0, step):
            chunk = data[k * type_size : (k + step) * type_size]
            out[k * block : k * block + chunk.size // type_size * block] = dequantize(
                chunk.reshape(1, -1), qtype
            ).reshape(-1)
    return out[: stop - start]
