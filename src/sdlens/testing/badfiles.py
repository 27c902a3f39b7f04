"""A corpus of malformed and hostile checkpoint files, each with the one-line error sdlens must give.

Every case is tiny (under 100 kB, except the 200,000-tensor header) and built from scratch, so that tests can
walk every command over all of them quickly. ``build_corpus(folder)`` returns ``{name: BadFile}``.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class BadFile:
    path: Path
    message: str  # a fragment of the one-line error that names what is wrong


def safetensors_bytes(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file's bytes from a header (a dict, or raw bytes taken as they are) and a data region."""
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def good_tensors() -> dict[str, np.ndarray]:
    """A few SD1-named float16 tensors with fixed random values."""
    rng = np.random.default_rng(0)
    names = {
        "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
        "model.diffusion_model.input_blocks.0.0.bias": (8,),
        "model.diffusion_model.out.2.weight": (4, 8, 3, 3),
        "first_stage_model.decoder.conv_in.weight": (8, 4, 3, 3),
    }
    return {k: rng.standard_normal(s).astype(np.float16) for k, s in names.items()}


def write_safetensors(
    path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> Path:
    """A valid safetensors file from numpy arrays (F16/F32), written without torch."""
    names = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}
    header: dict = {"__metadata__": metadata} if metadata else {}
    pos, blobs = 0, []
    for key, arr in tensors.items():
        b = np.ascontiguousarray(arr).tobytes()
        header[key] = {
            "dtype": names[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [pos, pos + len(b)],
        }
        blobs.append(b)
        pos += len(b)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
    return path


def many_tensors_header(n: int = 200_000) -> bytes:
    """A safetensors file of ``n`` small F16 tensors with real-looking keys (about 70 header bytes each:
    200,000 give a 14 MB header, the size of a big LoRA collection), data all zeros."""
    parts = (
        "attn1.to_q.weight",
        "attn1.to_k.weight",
        "attn1.to_v.weight",
        "attn1.to_out.0.weight",
        "attn1.to_out.0.bias",
        "ff.net.0.proj.weight",
        "ff.net.2.weight",
        "norm1.weight",
    )
    entries, pos = [], 0
    for i in range(n):
        key = f"blocks.{i // 8}.{parts[i % 8]}"
        entries.append(f'"{key}":{{"dtype":"F16","shape":[2],"data_offsets":[{pos},{pos + 4}]}}')
        pos += 4
    raw = ("{" + ",".join(entries) + "}").encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(pos)


def _entry(dtype: object = "F32", shape: object = (1,), offsets: object = (0, 4)) -> dict:
    return {
        "a": {
            "dtype": dtype,
            "shape": list(shape) if isinstance(shape, tuple) else shape,
            "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets,
        }
    }


# (name, header, data, message fragment) for safetensors headers whose values are wrong
HEADER_CASES: list[tuple[str, dict | bytes, bytes, str]] = [
    ("dtype_list", _entry(dtype=["F32"]), b"\0" * 4, "unknown dtype ['F32']"),
    ("dtype_object", _entry(dtype={"F32": 1}), b"\0" * 4, "unknown dtype {'F32': 1}"),
    ("dtype_null", _entry(dtype=None), b"\0" * 4, "unknown dtype None"),
    ("dtype_number", _entry(dtype=4), b"\0" * 4, "unknown dtype 4"),
    ("dtype_unknown", _entry(dtype="F128"), b"\0" * 4, "unknown dtype 'F128'"),
    ("shape_true", _entry(shape=True), b"\0" * 4, "invalid shape True"),
    ("shape_bools", _entry(shape=[True]), b"\0" * 4, "invalid shape [True]"),
    ("shape_float", _entry(shape=[1.0]), b"\0" * 4, "invalid shape [1.0]"),
    ("shape_string", _entry(shape="1"), b"\0" * 4, "invalid shape '1'"),
    ("shape_negative", _entry(shape=[-1]), b"\0" * 4, "invalid shape [-1]"),
    ("shape_nested", _entry(shape=[[1]]), b"\0" * 4, "invalid shape [[1]]"),
    ("shape_65_dims", _entry(shape=[1] * 65), b"\0" * 4, "invalid shape"),
    ("shape_huge", _entry(shape=[1 << 70, 1 << 70]), b"\0" * 4, "invalid shape"),
    ("shape_product", _entry(shape=[1 << 40, 1 << 40]), b"\0" * 4, "needs 4835703278458516698824704 bytes"),
    ("offsets_bools", _entry(offsets=[False, True]), b"\0" * 4, "invalid data_offsets [False, True]"),
    ("offsets_floats", _entry(offsets=[0.0, 4.0]), b"\0" * 4, "invalid data_offsets [0.0, 4.0]"),
    ("offsets_lists", _entry(offsets=[[0], [4]]), b"\0" * 4, "invalid data_offsets [[0], [4]]"),
    ("offsets_object", _entry(offsets={"0": 4}), b"\0" * 4, "invalid data_offsets {'0': 4}"),
    ("offsets_three", _entry(offsets=[0, 4, 8]), b"\0" * 8, "invalid data_offsets [0, 4, 8]"),
    ("offsets_one", _entry(offsets=[4]), b"\0" * 4, "invalid data_offsets [4]"),
    ("offsets_negative", _entry(offsets=[-4, 0]), b"\0" * 4, "invalid data_offsets [-4, 0]"),
    ("offsets_reversed", _entry(offsets=[4, 0]), b"\0" * 4, "invalid data_offsets [4, 0]"),
    ("offsets_missing", {"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "invalid data_offsets None"),
    (
        "offsets_past_end",
        _entry(offsets=[0, 1 << 40], shape=(1 << 38,)),
        b"\0" * 4,
        "ends at byte 1099511627776",
    ),
    ("offsets_huge", _entry(offsets=[0, 10**300]), b"\0" * 4, "ends at byte 1000000"),
    ("span_mismatch", _entry(shape=(2,)), b"\0" * 4, "needs 8 bytes but data_offsets span 4"),
    ("entry_list", {"a": [1, 2]}, b"", "header entry 'a' is not an object"),
    ("entry_string", {"a": "F32"}, b"", "header entry 'a' is not an object"),
    ("metadata_list", {"__metadata__": ["x"], **_entry()}, b"\0" * 4, "__metadata__ is not a JSON object"),
    ("header_list", b"[1, 2, 3]  ", b"", "not a JSON object"),
    (
        "overlap",
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        },
        b"\0" * 12,
        "overlap",
    ),
    (
        "overlap_same",
        {
            "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            "b": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]},
        },
        b"\0" * 4,
        "overlap",
    ),
    (
        "overlap_empty_inside",
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},
        },
        b"\0" * 8,
        "overlap",
    ),
    ("deep_json", b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"", "nested too deeply"),
    ("deep_metadata", b'{"__metadata__":{"x":' + b"[" * 5000 + b"]" * 5000 + b"}}", b"", "nested too deeply"),
    (
        "huge_int",
        b'{"a":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,4]}}',
        b"\0" * 4,
        "Exceeds the limit",
    ),
    (
        "lone_surrogate_key",
        b'{"a\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
        b"\0" * 4,
        "lone surrogate",
    ),
    (
        "lone_surrogate_meta",
        b'{"__metadata__":{"k":"\\udfff"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
        b"\0" * 4,
        "lone surrogate",
    ),
    (
        "not_utf8",
        b'{"\xff\xfe":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
        b"\0" * 4,
        "not valid JSON",
    ),
    ("not_json", b"{not json at all}", b"", "not valid JSON"),
    ("nul_header", b"{" + b"\0" * 63, b"", "not valid JSON"),
    (
        "long_key_dtype",
        {"k" * 100_000: {"dtype": "x" * 100_000, "shape": [1], "data_offsets": [0, 4]}},
        b"\0" * 4,
        "unknown dtype",
    ),
]


def torch_zip_bytes() -> bytes:
    """A real torch.save zip of a tiny state dict (two float16 tensors)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(
        {"state_dict": {"w": torch.arange(6, dtype=torch.float16).view(2, 3), "b": torch.ones(3)}}, buf
    )
    return buf.getvalue()


def build_corpus(folder: str | Path) -> dict[str, BadFile]:
    """Write every case into ``folder``; FIFOs and symlink loops where the platform has them."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, BadFile] = {}

    def put(name: str, data: bytes, message: str, suffix: str = ".safetensors") -> None:
        p = d / f"{name}{suffix}"
        p.write_bytes(data)
        out[name] = BadFile(p, message)

    for name, header, data, message in HEADER_CASES:
        put(name, safetensors_bytes(header, data), message)
    good = write_safetensors(d / "good.safetensors", good_tensors()).read_bytes()
    put("zero_length", b"", "empty file")
    put("zero_length_ckpt", b"", "empty file", ".ckpt")
    put("seven_bytes", b"\x10\0\0\0\0\0\0", "too short")
    put("truncated_header", good[:40], "bad safetensors header length")
    put("truncated_data", good[: len(good) - 100], "truncated")
    put("length_too_big", struct.pack("<Q", 1 << 60) + b"{}", "bad safetensors header length")
    put("garbage", np.random.default_rng(1).bytes(4096), "unrecognised format", ".bin")
    put("garbage_safetensors", np.random.default_rng(2).bytes(4096), "safetensors header length")
    zbytes = torch_zip_bytes()
    put("zip_truncated", zbytes[: len(zbytes) // 2], "zip", ".ckpt")
    put("zip_garbage_tail", b"PK\x03\x04" + np.random.default_rng(3).bytes(2000), "zip", ".ckpt")
    put("pickle_garbage", b"\x80\x02" + np.random.default_rng(4).bytes(500), "", ".ckpt")
    if hasattr(os, "mkfifo"):
        fifo = d / "fifo.safetensors"
        os.mkfifo(fifo)
        out["fifo"] = BadFile(fifo, "named pipe")
    loop_a, loop_b = d / "loop_a.safetensors", d / "loop_b.safetensors"
    try:
        os.symlink(loop_b.name, loop_a)
        os.symlink(loop_a.name, loop_b)
        out["symlink_loop"] = BadFile(loop_a, "symbolic link loop")
    except (OSError, NotImplementedError):
        pass
    if os.path.exists("/dev/zero"):
        dev = d / "device.safetensors"
        os.symlink("/dev/zero", dev)
        out["device"] = BadFile(dev, "character device")
    index = d / "bad.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": 5}))
    out["index_not_map"] = BadFile(index, "shard index")
    deep = d / "deep.safetensors.index.json"
    deep.write_text('{"weight_map":' + "[" * 100_000 + "]" * 100_000 + "}")
    out["index_deep"] = BadFile(deep, "")
    return out
