"""Header-only opening of .safetensors files, with every value type-checked and every offset validated
against the file before it is trusted.

A header of 200,000 tensors is checked column by column (C-level ``map`` / ``set`` passes over all entries,
one sort), not entry by entry; only when that finds something wrong does a per-entry pass run, to name the
first bad entry precisely.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from itertools import chain, repeat
from operator import add, itemgetter, lt, mul, sub
from pathlib import Path

from sdlens.errors import CheckpointError
from sdlens.io.base import Checkpoint, TensorInfo, gc_paused, open_regular, os_problem, tensor_infos
from sdlens.io.dtypes import DTYPES
from sdlens.io.limits import MAX_DIMS, MAX_HEADER_BYTES, MAX_TENSORS, clip, short

_ITEMSIZE = {name: d.itemsize for name, d in DTYPES.items()}
_DTYPE_NAMES = frozenset(DTYPES)
_MAX_DIM = 1 << 62  # a dimension larger than this cannot describe bytes in a real file


def is_safetensors(head: bytes, file_size: int) -> bool:
    """Whether the first bytes look like a safetensors file: u64 header length, then a JSON object."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= min(MAX_HEADER_BYTES, file_size - 8) and head[8:9] == b"{"


def read_safetensors_header(path: str | Path) -> tuple[dict, int, int]:
    """The parsed JSON header, the byte offset where the data region starts, and the file's size."""
    path = str(path)
    with open_regular(path) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            raw_len = f.read(8)
        except OSError as e:
            raise CheckpointError(path, f"cannot read: {os_problem(e)}") from None
        if len(raw_len) < 8:
            raise CheckpointError(path, f"file is too short to be safetensors ({size} bytes)")
        n = int.from_bytes(raw_len, "little")
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise CheckpointError(
                path,
                f"bad safetensors header length {n} (file has {size} bytes, limit {MAX_HEADER_BYTES}; "
                "truncated or not safetensors)",
            )
        try:
            raw = f.read(n)
        except (OSError, MemoryError) as e:
            raise CheckpointError(path, f"cannot read the header: {e}") from None
    if len(raw) < n:
        raise CheckpointError(path, f"file ended inside the safetensors header ({len(raw)} of {n} bytes)")
    header = _parse_json(path, raw)
    if not isinstance(header, dict):
        raise CheckpointError(path, "safetensors header is not a JSON object")
    return header, 8 + n, size


def _parse_json(path: str, raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"safetensors header is not valid JSON ({clip(str(e))})") from None
    except RecursionError:
        raise CheckpointError(path, "safetensors header is not valid: JSON nested too deeply") from None
    except ValueError as e:  # an integer of more than 4300 digits (int parsing limit)
        raise CheckpointError(path, f"safetensors header is not valid: {clip(str(e))}") from None
    except MemoryError:
        raise CheckpointError(
            path, "safetensors header is too large to parse in the memory available"
        ) from None


def _check_text(src: str, header: dict, meta: dict) -> None:
    """Refuse lone surrogates (``\\ud800`` escapes): not UTF-8, so not text the format can hold."""
    try:
        "".join(header).encode("utf-8")
        "".join(chain(meta, (v for v in meta.values() if isinstance(v, str)))).encode("utf-8")
    except UnicodeEncodeError:
        bad = next(s for s in chain(header, meta, meta.values()) if isinstance(s, str) and not _utf8(s))
        raise CheckpointError(
            src, f"safetensors header holds text that is not UTF-8 (lone surrogate): {short(bad)}"
        ) from None


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _metadata(src: str, meta: object) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise CheckpointError(src, "safetensors __metadata__ is not a JSON object")
    try:
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    except (RecursionError, ValueError):
        raise CheckpointError(src, "safetensors __metadata__ holds a value nested too deeply") from None


class SafetensorsCheckpoint(Checkpoint):
    format = "safetensors"

    def __init__(self, path: str | Path, *, quantised: bool = True):
        """``quantised=False``: leave scaled-fp8 / bitsandbytes companions as stored tensors (a shard: its
        weights' companions may be in another shard; the shard set recognises them as a whole)."""
        super().__init__(path)
        self._quantised = quantised
        with gc_paused():
            self._open()

    def _open(self) -> None:
        header, data_start, size = read_safetensors_header(self.path)
        src = str(self.path)
        meta = header.pop("__metadata__", None)
        self.metadata = _metadata(src, meta)  # (refuses a non-object first)
        _check_text(src, header, meta or {})
        if len(header) > MAX_TENSORS:
            raise CheckpointError(
                src, f"safetensors header lists {len(header)} tensors (limit {MAX_TENSORS})"
            )
        self.tensors = _index(src, header, data_start, size - data_start)
        if self._quantised:
            from sdlens.io.quant_keys import recognise

            self.tensors, self.quant_markers = recognise(src, self.tensors, self.stored)


def _index(src: str, header: dict, data_start: int, data_len: int) -> dict[str, TensorInfo]:
    """The validated tensor index, in file order."""
    keys = list(header)
    cols = _columns(list(header.values()), data_len)
    if cols is None:  # something is wrong: find the first bad entry and say what
        for key, entry in header.items():
            _check_entry(src, key, entry, data_len)
        raise CheckpointError(src, "safetensors header is malformed")  # unreachable: _check_entry raised
    dtypes, shapes, begins, ends, numels, nbytes = cols
    # file order: by (begin, end), packed into one int per tensor so that the sort is one C-level pass
    packed = list(map(add, map(mul, begins, repeat(data_len + 1)), ends))
    order = sorted(range(len(keys)), key=packed.__getitem__)
    sb = list(map(begins.__getitem__, order))
    se = list(map(ends.__getitem__, order))
    if any(map(lt, sb[1:], se[:-1])):
        i = next(i for i in range(1, len(order)) if sb[i] < se[i - 1])
        k0, k1 = keys[order[i - 1]], keys[order[i]]
        raise CheckpointError(src, f"tensors {short(k0)} and {short(k1)} overlap in the data region")

    def pick(column: list) -> Iterator:
        return map(column.__getitem__, order)

    return tensor_infos(
        pick(keys),
        map(tuple, pick(shapes)),
        pick(dtypes),
        src,
        map(data_start.__add__, sb),
        pick(numels),
        pick(nbytes),
    )


def _columns(entries: list, data_len: int) -> tuple[list, ...] | None:
    """Every entry's (dtype, shape, begin, end, numel, nbytes) as columns, or ``None`` if any entry is
    malformed (wrong type, unknown dtype, negative or non-integer dims, offsets out of range, size mismatch)."""
    if set(map(type, entries)) - {dict}:
        return None
    try:
        dtypes = list(map(itemgetter("dtype"), entries))
        shapes = list(map(itemgetter("shape"), entries))
        offsets = list(map(itemgetter("data_offsets"), entries))
    except KeyError:
        return None
    if set(map(type, dtypes)) - {str} or set(map(type, shapes)) - {list} or set(map(type, offsets)) - {list}:
        return None
    if not _DTYPE_NAMES.issuperset(dtypes) or set(map(len, offsets)) - {2}:
        return None
    if shapes and max(map(len, shapes)) > MAX_DIMS:
        return None
    dims = list(chain.from_iterable(shapes))
    if set(map(type, dims)) - {int} or (dims and (min(dims) < 0 or max(dims) > _MAX_DIM)):
        return None
    flat = list(chain.from_iterable(offsets))
    if set(map(type, flat)) - {int} or (flat and (min(flat) < 0 or max(flat) > data_len)):
        return None
    begins, ends = flat[0::2], flat[1::2]
    numels = list(map(math.prod, shapes))
    nbytes = list(map(mul, numels, map(_ITEMSIZE.__getitem__, dtypes)))
    if list(map(sub, ends, begins)) != nbytes:
        return None
    return dtypes, shapes, begins, ends, numels, nbytes


def _check_entry(src: str, key: str, entry: object, data_len: int) -> None:
    """Raise the precise error for one header entry, or return if it is well formed."""
    name = short(key)
    if not isinstance(entry, dict):
        raise CheckpointError(src, f"header entry {name} is not an object")
    dtype, shape, offs = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if type(dtype) is not str or dtype not in DTYPES:
        raise CheckpointError(src, f"tensor {name} has unknown dtype {short(dtype)}")
    if (
        type(shape) is not list
        or len(shape) > MAX_DIMS
        or not all(type(d) is int and 0 <= d <= _MAX_DIM for d in shape)
    ):
        raise CheckpointError(src, f"tensor {name} has an invalid shape {short(shape)}")
    if (
        type(offs) is not list
        or len(offs) != 2
        or not all(type(o) is int and o >= 0 for o in offs)
        or offs[1] < offs[0]
    ):
        raise CheckpointError(src, f"tensor {name} has invalid data_offsets {short(offs)}")
    if offs[1] > data_len:
        raise CheckpointError(
            src,
            f"tensor {name} ends at byte {short(offs[1])} of a {data_len}-byte data region (file truncated?)",
        )
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if offs[1] - offs[0] != expected:
        raise CheckpointError(
            src,
            f"tensor {name}: {dtype}{short(shape)} needs {expected} bytes but data_offsets span {offs[1] - offs[0]}",
        )
