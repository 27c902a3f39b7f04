"""Broken and hostile GGUF files, packed by hand (``struct``), each with the problem it has.

GGUF v3 layout (little-endian): magic ``b"GGUF"``, u32 version, u64 tensor_count, u64 kv_count; kv_count
key/values (key: u64 length + UTF-8 bytes; u32 value type; value — an array is u32 element type, u64 count,
elements); tensor_count tensor infos (name string, u32 n_dims, n_dims × u64 ``ne`` (reversed numpy shape),
u32 ggml type, u64 offset from the data start); zero padding to ``general.alignment`` (default 32); data.

:func:`build_bad_gguf` writes every case and returns :class:`BadGguf` rows: a reader must refuse each one
with one line that names the file and contains one of ``mention`` (case-insensitive) — without looping,
allocating the claimed sizes or crashing — except where ``may_open`` is set: then opening is allowed too,
as long as nothing printed carries the raw bytes (no ESC, valid text).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
GGML_F32, GGML_F16 = 0, 1
ALIGN = 32


class BadGguf(NamedTuple):
    name: str
    path: Path
    mention: tuple[str, ...]  # the error line should contain one of these (lower case)
    problem: str  # what is wrong, in words
    may_open: bool = False  # a reader may also open it (sanitising what it shows)


def _str(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    """One key/value: key, type, packed value."""
    return _str(key) + struct.pack("<I", vtype) + payload


def kv_string(key: str | bytes, value: str | bytes) -> bytes:
    return kv(key, STRING, _str(value))


def kv_u32(key: str | bytes, value: int) -> bytes:
    return kv(key, U32, struct.pack("<I", value))


def tensor_info(
    name: str | bytes, ne: tuple[int, ...], ggml_type: int, offset: int, n_dims: int | None = None
) -> bytes:
    n = len(ne) if n_dims is None else n_dims
    dims = b"".join(struct.pack("<Q", d) for d in ne)
    return _str(name) + struct.pack("<I", n) + dims + struct.pack("<IQ", ggml_type, offset)


def header(n_tensors: int, n_kv: int, version: int = 3, magic: bytes = b"GGUF") -> bytes:
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv)


def assemble(
    kvs: list[bytes],
    infos: list[bytes],
    data: bytes,
    *,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    version: int = 3,
    magic: bytes = b"GGUF",
    align: int = ALIGN,
) -> bytes:
    """A file from its parts, padded to ``align`` before the data; counts default to the parts given."""
    head = header(
        len(infos) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv, version, magic
    )
    body = head + b"".join(kvs) + b"".join(infos)
    pad = (-len(body)) % align if align > 0 else 0
    return body + b"\0" * pad + data


# the valid file every case starts from: a [4, 8] F32 and a [16] F16 tensor of a "flux" file
A_BYTES, B_BYTES = 4 * 8 * 4, 16 * 2
B_OFFSET = A_BYTES  # 128: already aligned


def _base_kvs() -> list[bytes]:
    return [kv_string("general.architecture", "flux"), kv_u32("general.quantization_version", 2)]


def _base_infos() -> list[bytes]:
    return [tensor_info("a.weight", (8, 4), GGML_F32, 0), tensor_info("b.bias", (16,), GGML_F16, B_OFFSET)]


def _data() -> bytes:
    return bytes(range(256))[:A_BYTES] + b"\x00\x3c" * 16  # float16 1.0s


def valid_gguf() -> bytes:
    """The well-formed file the cases are made from (gguf.GGUFReader reads it)."""
    return assemble(_base_kvs(), _base_infos(), _data())


def _with_info(*infos: bytes, data: bytes | None = None, kvs: list[bytes] | None = None, **kw) -> bytes:
    return assemble(_base_kvs() if kvs is None else kvs, list(infos), _data() if data is None else data, **kw)


def _nested_array(depth: int) -> bytes:
    """An array of arrays ``depth`` deep, the innermost holding one u8."""
    return struct.pack("<IQ", ARRAY, 1) * (depth - 1) + struct.pack("<IQ", U8, 1) + b"\x07"


def _cut_inside(blob: bytes, part_end: int, back: int = 3) -> bytes:
    return blob[: max(part_end - back, 0)]


def _cases() -> list[tuple[str, Callable[[], bytes], tuple[str, ...], str, bool]]:
    base = valid_gguf()
    head_len = 24
    kvs_len = sum(len(k) for k in _base_kvs())
    infos_len = sum(len(i) for i in _base_infos())
    trunc = ("truncated", "unexpected end", "too short", "past the end", "end of file")
    bounds = ("out of bounds", "past the end", "beyond", "truncated", "exceeds")
    a_info = tensor_info("a.weight", (8, 4), GGML_F32, 0)
    return [
        ("empty", lambda: b"", trunc + ("empty",), "a zero-byte file", False),
        ("truncated_header", lambda: base[:12], trunc, "cut inside the header (tensor count)", False),
        (
            "truncated_kv",
            lambda: _cut_inside(base, head_len + kvs_len - 6),
            trunc,
            "cut inside the key/values",
            False,
        ),
        (
            "truncated_tensor_info",
            lambda: _cut_inside(base, head_len + kvs_len + infos_len - 4),
            trunc,
            "cut inside the tensor-info table",
            False,
        ),
        (
            "truncated_data",
            lambda: base[: len(base) - 40],
            trunc + bounds,
            "cut inside the tensor data",
            False,
        ),
        ("wrong_magic", lambda: b"GGUX" + base[4:], ("magic", "not a gguf"), "magic b'GGUX'", False),
        (
            "big_endian",
            lambda: base[:4] + struct.pack(">I", 3) + base[8:],
            ("version", "endian"),
            "version written big-endian (reads as 50331648)",
            False,
        ),
        ("version_0", lambda: base[:4] + struct.pack("<I", 0) + base[8:], ("version",), "version 0", False),
        (
            "version_1",
            lambda: base[:4] + struct.pack("<I", 1) + base[8:],
            ("version",),
            "version 1 (32-bit counts, unsupported)",
            False,
        ),
        ("version_4", lambda: base[:4] + struct.pack("<I", 4) + base[8:], ("version",), "version 4", False),
        (
            "version_2_31",
            lambda: base[:4] + struct.pack("<I", 2**31) + base[8:],
            ("version",),
            "version 2^31",
            False,
        ),
        (
            "data_out_of_bounds",
            lambda: _with_info(a_info, tensor_info("b.bias", (16,), GGML_F16, 1 << 20)),
            bounds,
            "tensor b.bias at offset 1 MiB, past the end of the file",
            False,
        ),
        (
            "offset_huge",
            lambda: _with_info(a_info, tensor_info("b.bias", (16,), GGML_F16, 2**63 + 32)),
            bounds,
            "tensor offset 2^63 + 32 (overflows a signed 64-bit sum)",
            False,
        ),
        (
            "overlapping_tensors",
            lambda: _with_info(a_info, tensor_info("b.bias", (16,), GGML_F16, 64)),
            ("overlap",),
            "b.bias starts at 64, inside a.weight (0..128)",
            False,
        ),
        (
            "unaligned_offset",
            lambda: _with_info(
                a_info, tensor_info("b.bias", (16,), GGML_F16, B_OFFSET + 2), data=_data() + b"\0" * 32
            ),
            ("align",),
            "b.bias at offset 130, not a multiple of 32",
            False,
        ),
        (
            "unknown_qtype",
            lambda: _with_info(
                tensor_info("a.weight", (8, 4), 200, 0), tensor_info("b.bias", (16,), GGML_F16, B_OFFSET)
            ),
            ("200", "unknown", "type"),
            "a.weight has ggml type 200",
            False,
        ),
        (
            "n_dims_0",
            lambda: _with_info(
                tensor_info("a.weight", (), GGML_F32, 0), tensor_info("b.bias", (16,), GGML_F16, B_OFFSET)
            ),
            ("dim",),
            "a.weight has 0 dimensions",
            False,
        ),
        (
            "n_dims_9",
            lambda: _with_info(
                tensor_info("a.weight", (2, 2, 2, 2, 1, 1, 1, 1, 2), GGML_F32, 0),
                tensor_info("b.bias", (16,), GGML_F16, B_OFFSET),
            ),
            ("dim",),
            "a.weight has 9 dimensions (GGML_MAX_DIMS is 4)",
            False,
        ),
        (
            "dim_zero",
            lambda: _with_info(
                tensor_info("a.weight", (8, 0), GGML_F32, 0), tensor_info("b.bias", (16,), GGML_F16, B_OFFSET)
            ),
            ("dim", "shape", "empty", "zero"),
            "a.weight has ne [8, 0] (no elements)",
            True,
        ),
        (
            "dim_huge",
            lambda: _with_info(
                tensor_info("a.weight", (2**62, 4), GGML_F32, 0),
                tensor_info("b.bias", (16,), GGML_F16, B_OFFSET),
            ),
            ("dim", "size", "element", "large", "bounds", "overflow", "past the end"),
            "a.weight has a dimension of 2^62",
            False,
        ),
        (
            "tensor_count_huge",
            lambda: assemble(_base_kvs(), _base_infos(), _data(), n_tensors=2**60),
            ("tensor", "count") + trunc,
            "tensor_count 2^60",
            False,
        ),
        (
            "kv_count_huge",
            lambda: assemble(_base_kvs(), _base_infos(), _data(), n_kv=2**60),
            ("key", "count", "kv") + trunc,
            "kv_count 2^60",
            False,
        ),
        (
            "string_len_huge",
            lambda: _with_info(*_base_infos(), kvs=[struct.pack("<Q", 2**62) + b"general.architecture"]),
            ("string", "length", "key") + trunc,
            "a key claims 2^62 bytes",
            False,
        ),
        (
            "array_huge",
            lambda: _with_info(
                *_base_infos(),
                kvs=_base_kvs() + [kv("general.tags", ARRAY, struct.pack("<IQ", U32, 2**50) + b"\0" * 16)],
            ),
            ("array", "length", "count") + trunc,
            "an array claims 2^50 u32 elements",
            False,
        ),
        (
            "nested_arrays",
            lambda: _with_info(
                *_base_infos(), kvs=_base_kvs() + [kv("general.nested", ARRAY, _nested_array(100_000))]
            ),
            ("nest", "array", "depth"),
            "arrays nested 100 000 deep",
            False,
        ),
        (
            "bad_value_type",
            lambda: _with_info(*_base_infos(), kvs=_base_kvs() + [kv("general.odd", 99, b"\0" * 8)]),
            ("type", "99"),
            "a value of type 99",
            False,
        ),
        (
            "duplicate_tensor",
            lambda: _with_info(a_info, tensor_info("a.weight", (16,), GGML_F16, B_OFFSET)),
            ("duplicate",),
            "two tensors named a.weight",
            False,
        ),
        (
            "duplicate_key",
            lambda: _with_info(*_base_infos(), kvs=_base_kvs() + [kv_string("general.architecture", "sd3")]),
            ("duplicate",),
            "general.architecture given twice",
            False,
        ),
        (
            "escape_key",
            lambda: _with_info(
                *_base_infos(),
                kvs=_base_kvs() + [kv_string("general.\x1b[31mred\x1b[0m", "\x1b]0;pwned\x07")],
            ),
            ("escape", "control", "invalid"),
            "a key and value with terminal escapes (ESC [31m, OSC title)",
            True,
        ),
        (
            "escape_tensor_name",
            lambda: _with_info(
                tensor_info("a.\x1b[2Jweight", (8, 4), GGML_F32, 0),
                tensor_info("b.bias", (16,), GGML_F16, B_OFFSET),
            ),
            ("escape", "control", "invalid"),
            "a tensor name holding ESC [2J (clear screen)",
            True,
        ),
        (
            "invalid_utf8_key",
            lambda: _with_info(*_base_infos(), kvs=_base_kvs() + [kv_string(b"general.\xff\xfe\xc3", "x")]),
            ("utf-8", "utf8", "decode", "encoding"),
            "a key that is not UTF-8 (ff fe c3)",
            True,
        ),
        (
            "alignment_0",
            lambda: assemble(_base_kvs() + [kv_u32("general.alignment", 0)], _base_infos(), _data()),
            ("align",),
            "general.alignment = 0",
            False,
        ),
        (
            "alignment_3",
            lambda: assemble(_base_kvs() + [kv_u32("general.alignment", 3)], _base_infos(), _data(), align=3),
            ("align",),
            "general.alignment = 3 (not a power of two)",
            False,
        ),
        (
            "alignment_string",
            lambda: assemble(_base_kvs() + [kv_string("general.alignment", "32")], _base_infos(), _data()),
            ("align",),
            "general.alignment is a string",
            False,
        ),
    ]


def build_bad_gguf(folder: str | Path) -> list[BadGguf]:
    """Write every case as ``<name>.gguf`` under ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: list[BadGguf] = []
    for name, make, mention, problem, may_open in _cases():
        path = folder / f"{name}.gguf"
        path.write_bytes(make())
        out.append(BadGguf(name, path, mention, problem, may_open))
    return out
