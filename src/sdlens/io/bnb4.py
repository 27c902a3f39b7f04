"""bitsandbytes 4-bit (NF4 / FP4) serialised weights: recognise, validate and dequantise them with numpy.

A bnb-4bit ``Linear`` weight ``X.weight`` (bitsandbytes' ``Linear4bit._save_to_state_dict``, used by
diffusers / transformers bnb-4bit saves and by Forge's FLUX NF4 files) is stored as a U8 tensor of
``ceil(n / 2)`` bytes (shape ``[ceil(n/2), 1]``; two 4-bit codes per byte, high nibble first) next to:

``X.weight.absmax``            F32 ``[ceil(n / blocksize)]`` (U8 of the same length when the statistics are
                               nested, i.e. quantised again 8-bit blockwise)
``X.weight.quant_map``         F32 ``[16]``: the 4-bit code book
``X.weight.nested_absmax``     F32 ``[ceil(nblocks / nested_blocksize)]`` (nested only)
``X.weight.nested_quant_map``  F32 ``[256]``: the 8-bit code book of the absmax (nested only)
``X.weight.quant_state.bitsandbytes__nf4`` (or ``__fp4``): U8, the JSON of ``quant_type``, ``blocksize``,
                               ``dtype``, ``shape`` and (nested) ``nested_blocksize``, ``nested_dtype``,
                               ``nested_offset``.

The dequantisation reproduces bitsandbytes' ``dequantize_4bit`` bit for bit: the absmax is first restored in
float32 (nested: ``nested_quant_map[q] * nested_absmax[i // nested_blocksize] + nested_offset``), then each
value is ``code[nibble] * absmax[i // blocksize]`` in float32, rounded once to the state's dtype. Like
bitsandbytes, the built-in code table of the quant type is used (the stored ``quant_map`` must equal it).
Two bitsandbytes quirks are not copied: its CPU C kernel decodes FP4 code 8 to -0.0 where its torch path
and its table give +0.0 (here: +0.0), and it returns a 1-D weight of even length as ``[1, n]`` (here: the
state's shape).
numpy only: neither torch nor bitsandbytes is imported here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

QUANT_TYPES = ("nf4", "fp4")
DTYPES = ("float16", "bfloat16", "float32")
QUANT_STATE_PREFIX = ".quant_state.bitsandbytes__"

# role -> suffix after the weight key (quant_state: one of two, by quant type)
COMPANION_SUFFIXES: dict[str, tuple[str, ...]] = {
    "absmax": (".absmax",),
    "quant_map": (".quant_map",),
    "nested_absmax": (".nested_absmax",),
    "nested_quant_map": (".nested_quant_map",),
    "quant_state": tuple(QUANT_STATE_PREFIX + t for t in QUANT_TYPES),
}
ALL_SUFFIXES: tuple[str, ...] = tuple(s for group in COMPANION_SUFFIXES.values() for s in group)

MAX_STATE_JSON = 4096  # bytes; bitsandbytes writes ~80-170
MAX_STATE_BYTES = MAX_STATE_JSON
MAX_DIMS = 8
MAX_ELEMENTS = 1 << 40
MIN_BLOCKSIZE, MAX_BLOCKSIZE = 2, 1 << 16  # bitsandbytes itself loads 32..4096 (nested: 256)
CHUNK_BYTES = 1 << 15  # packed bytes per dequantisation step (64 Ki values: the passes stay in cache)

# The 4-bit code books, float32, in code order (index = the 4-bit code), as bitsandbytes builds them.
NF4_CODE = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=np.float32,
)
# FP4: 1 sign, 2 exponent, 1 mantissa bit (bias 2, subnormal 0 / 0.0625), normalised by the largest (12).
# Code 8 (sign bit, zero) is +0.0 in bitsandbytes' table and stored quant_map (its CPU C kernel gives -0.0).
FP4_CODE = (
    np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3], dtype=np.float32)
    / np.float32(12.0)
).astype(np.float32)
CODES: dict[str, np.ndarray] = {"nf4": NF4_CODE, "fp4": FP4_CODE}


@dataclass(frozen=True)
class Bnb4State:
    """The parsed ``quant_state.bitsandbytes__*`` JSON of one weight."""

    quant_type: str  # "nf4" | "fp4"
    blocksize: int
    dtype: str  # "float16" | "bfloat16" | "float32": what bitsandbytes dequantises to
    shape: tuple[int, ...]  # the logical weight shape
    nested: bool = False
    nested_blocksize: int | None = None
    nested_offset: float | None = None  # exactly a float32 value

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def packed_bytes(self) -> int:
        return -(-self.numel // 2)

    @property
    def nblocks(self) -> int:
        return -(-self.numel // self.blocksize)

    @property
    def nested_nblocks(self) -> int:
        return -(-self.nblocks // self.nested_blocksize) if self.nested else 0


# ---------------------------------------------------------------------------------------------- keys


def companions_of(weight_key: str, keys: Iterable[str]) -> dict[str, str]:
    """role -> key of the bnb-4bit companions of ``weight_key`` present in ``keys`` (empty: not bnb-4bit).
    ValueError if the weight has both an nf4 and an fp4 quant state."""
    keyset = keys if isinstance(keys, (set, frozenset, dict)) else set(keys)
    found: dict[str, str] = {}
    for role, suffixes in COMPANION_SUFFIXES.items():
        hits = [weight_key + s for s in suffixes if weight_key + s in keyset]
        if len(hits) > 1:
            raise ValueError(f"{weight_key}: more than one quant state ({', '.join(hits)})")
        if hits:
            found[role] = hits[0]
    return found if "quant_state" in found else {}


def find_bnb4(keys: Iterable[str]) -> dict[str, dict[str, str]]:
    """Every bnb-4bit weight in a key set (one per ``*.quant_state.bitsandbytes__nf4|fp4`` key):
    weight key -> {role: key}. The weight key itself need not be in ``keys`` (the caller checks)."""
    keyset = set(keys)
    weights: dict[str, dict[str, str]] = {}
    for key in sorted(keyset):
        for suffix in COMPANION_SUFFIXES["quant_state"]:
            if key.endswith(suffix) and len(key) > len(suffix):
                weight = key[: -len(suffix)]
                weights[weight] = companions_of(weight, keyset)
    return weights


def companion_keys(found: Mapping[str, Mapping[str, str]]) -> set[str]:
    """All companion keys (not the weights) of a ``find_bnb4`` result: keys that are not unknown tensors."""
    return {key for roles in found.values() for key in roles.values()}


def required_roles(state: Bnb4State) -> tuple[str, ...]:
    """The companions a weight with this state must have (quant_map included, as bitsandbytes requires)."""
    base = ("absmax", "quant_map", "quant_state")
    return base + ("nested_absmax", "nested_quant_map") if state.nested else base


# ---------------------------------------------------------------------------------------- quant state


def _as_int(d: dict, name: str, lo: int, hi: int) -> int:
    v = d.get(name)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"quant_state {name} is not an integer: {_short(v)}")
    if not lo <= v <= hi:
        raise ValueError(f"quant_state {name} {v} is out of range {lo}..{hi}")
    return v


def _blocksize(d: dict, name: str) -> int:
    v = _as_int(d, name, MIN_BLOCKSIZE, MAX_BLOCKSIZE)
    if v & (v - 1):
        raise ValueError(f"quant_state {name} {v} is not a power of two")
    return v


def _short(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _shape(v: object) -> tuple[int, ...]:
    if not isinstance(v, list) or not 1 <= len(v) <= MAX_DIMS:
        raise ValueError(f"quant_state shape is not a list of 1..{MAX_DIMS} sizes: {_short(v)}")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in v):
        raise ValueError(f"quant_state shape has a size that is not a positive integer: {_short(v)}")
    if math.prod(v) > MAX_ELEMENTS:
        raise ValueError(f"quant_state shape {_short(v)} is implausibly large")
    return tuple(v)


def parse_quant_state(
    raw: bytes | bytearray | memoryview | np.ndarray, quant_type: str | None = None
) -> Bnb4State:
    """Parse the JSON bytes of a ``quant_state.bitsandbytes__*`` tensor; ValueError (a short message) for
    anything bitsandbytes could not load. ``quant_type``: the type named by the key suffix, if known."""
    data = raw.tobytes() if isinstance(raw, np.ndarray) else bytes(raw)
    if len(data) > MAX_STATE_JSON:
        raise ValueError(
            f"quant_state is {len(data)} bytes (more than {MAX_STATE_JSON}): not a bnb quant state"
        )
    try:
        d = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("quant_state is not UTF-8 text") from None
    except (ValueError, RecursionError):
        raise ValueError("quant_state is not valid JSON") from None
    if not isinstance(d, dict):
        raise ValueError(f"quant_state JSON is not an object: {_short(d)}")
    qt = d.get("quant_type")
    if qt not in QUANT_TYPES:
        raise ValueError(f"quant_state quant_type {_short(qt)} is not one of {', '.join(QUANT_TYPES)}")
    if quant_type is not None and qt != quant_type:
        raise ValueError(f"quant_state says quant_type {qt} but its key says {quant_type}")
    dtype = d.get("dtype")
    if dtype not in DTYPES:
        raise ValueError(f"quant_state dtype {_short(dtype)} is not one of {', '.join(DTYPES)}")
    state = {
        "quant_type": qt,
        "blocksize": _blocksize(d, "blocksize"),
        "dtype": dtype,
        "shape": _shape(d.get("shape")),
    }
    nested_keys = [k for k in ("nested_blocksize", "nested_offset", "nested_dtype") if k in d]
    if not nested_keys:
        return Bnb4State(**state)
    if "nested_blocksize" not in d or "nested_offset" not in d:
        raise ValueError("quant_state has some nested fields but not nested_blocksize and nested_offset")
    if d.get("nested_dtype", "float32") != "float32":
        raise ValueError(f"quant_state nested_dtype {_short(d['nested_dtype'])} is not float32")
    off = d["nested_offset"]
    if isinstance(off, bool) or not isinstance(off, (int, float)) or not math.isfinite(off):
        raise ValueError(f"quant_state nested_offset is not a finite number: {_short(off)}")
    with np.errstate(over="ignore"):
        off32 = np.float32(off)
    if not np.isfinite(off32):
        raise ValueError(f"quant_state nested_offset {_short(off)} overflows float32")
    return Bnb4State(
        **state, nested=True, nested_blocksize=_blocksize(d, "nested_blocksize"), nested_offset=float(off32)
    )


def state_json(state: Bnb4State) -> bytes:
    """The quant state as bitsandbytes writes it (the bytes of ``quant_state.bitsandbytes__*``)."""
    d: dict[str, object] = {
        "quant_type": state.quant_type,
        "blocksize": state.blocksize,
        "dtype": state.dtype,
        "shape": list(state.shape),
    }
    if state.nested:
        d |= {
            "nested_blocksize": state.nested_blocksize,
            "nested_dtype": "float32",
            "nested_offset": state.nested_offset,
        }
    return json.dumps(d).encode("utf-8")


# ------------------------------------------------------------------------------------ layout / sizes


def expected_layout(state: Bnb4State) -> dict[str, tuple[str, int]]:
    """role -> (safetensors dtype, element count) of each tensor bitsandbytes writes for this state
    (the weight as role "weight"; quant_state excluded: its length is that of its JSON)."""
    layout = {"weight": ("U8", state.packed_bytes), "quant_map": ("F32", 16)}
    if state.nested:
        layout |= {
            "absmax": ("U8", state.nblocks),
            "nested_absmax": ("F32", state.nested_nblocks),
            "nested_quant_map": ("F32", 256),
        }
    else:
        layout["absmax"] = ("F32", state.nblocks)
    return layout


_ITEMSIZE = {"U8": 1, "I8": 1, "F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I16": 2, "I32": 4, "I64": 8}


def check_layout(state: Bnb4State, tensors: Mapping[str, tuple[str, Iterable[int]]]) -> None:
    """Check the header facts ``role -> (safetensors dtype, shape)`` of a weight and its companions against
    its state (no data read); ValueError naming the first role that does not fit. The packed weight may
    be stored in another dtype (bitsandbytes' ``quant_storage``) as long as its bytes are ``ceil(n/2)``;
    a plain absmax may be F32, F16 or BF16 (bitsandbytes converts it to float32)."""
    for role in ("weight", *required_roles(state)):
        if role not in tensors and role != "quant_state":
            raise ValueError(f"bnb-4bit weight has no {role} tensor")
    for role, (want_dtype, want_count) in expected_layout(state).items():
        dtype, shape = tensors[role]
        count = math.prod(shape)
        if role == "weight":
            nbytes = count * _ITEMSIZE.get(dtype, 0)
            if nbytes != state.packed_bytes:
                raise ValueError(
                    f"packed weight is {nbytes} bytes but shape {list(state.shape)} needs "
                    f"{state.packed_bytes}"
                )
            continue
        ok_dtypes = {want_dtype} | ({"F16", "BF16"} if role == "absmax" and not state.nested else set())
        if dtype not in ok_dtypes:
            raise ValueError(f"{role} is {dtype}, expected {want_dtype}")
        if count != want_count:
            raise ValueError(
                f"{role} has {count} values, expected {want_count} for shape {list(state.shape)}"
            )


def check_parts(state: Bnb4State, weight: Any, parts: Mapping[str, Any]) -> None:
    """:func:`check_layout` for reader records (anything with ``.dtype`` and ``.shape``, e.g. TensorInfo):
    the packed ``weight`` and its companions ``parts`` (role -> record, as :func:`find_bnb4` names them)."""
    qs = parts.get("quant_state")
    if qs is not None and qs.dtype != "U8":
        raise ValueError(f"quant_state is {qs.dtype}, expected U8")
    check_layout(
        state, {"weight": (weight.dtype, weight.shape)} | {r: (p.dtype, p.shape) for r, p in parts.items()}
    )


def storage_bytes(state: Bnb4State, *, state_json_bytes: int | None = None) -> dict[str, int]:
    """role -> bytes stored, as bitsandbytes lays the weight out (quant_state: its JSON length)."""
    out = {role: count * _ITEMSIZE[dtype] for role, (dtype, count) in expected_layout(state).items()}
    out["quant_state"] = state_json_bytes if state_json_bytes is not None else len(state_json(state))
    return out


def bits_per_weight(state: Bnb4State, nbytes: Mapping[str, int] | None = None) -> float:
    """Effective bits per weight: every stored byte (packed codes, absmax, code books, nested stats, the
    JSON) over the number of weights. ``nbytes``: role -> bytes actually stored (default: the layout's)."""
    sizes = dict(nbytes) if nbytes is not None else storage_bytes(state)
    return 8.0 * sum(sizes.values()) / state.numel


# ------------------------------------------------------------------------------------ dequantisation


F16_MAX = np.float32(65504.0)


def _round_low_bits(u: np.ndarray, bits: int, scratch: np.ndarray) -> None:
    """Round uint32 float patterns in place to ``bits`` fewer mantissa bits, ties to even."""
    t = np.right_shift(u, np.uint32(bits), out=scratch)
    t &= np.uint32(1)
    t += np.uint32((1 << (bits - 1)) - 1)
    u += t
    u &= np.uint32(~((1 << bits) - 1) & 0xFFFFFFFF)


def _round_to_f16(values: np.ndarray, scratch: np.ndarray, scratch2: np.ndarray, may_overflow: bool) -> None:
    """Round to float16 values in place: add and subtract ``c = ±2**(e + 13)`` (``e``: the exponent of
    ``x``, at least float16's smallest normal one, -14; ``c`` has the sign of ``x``), which leaves ``x``
    rounded to float16's spacing at ``x`` (subnormals included), ties to even; then the sign of zeros
    restored and overflow to inf."""
    u = values.view(np.uint32)
    c = np.right_shift(u, np.uint32(23), out=scratch)
    c &= np.uint32(0xFF)
    np.clip(c, np.uint32(127 - 14), np.uint32(127 + 16), out=c)
    c += np.uint32(13)
    c <<= np.uint32(23)
    c |= np.bitwise_and(u, np.uint32(0x80000000), out=scratch2)
    cf = c.view(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        values += cf
        values -= cf
    np.copysign(values, cf, out=values)
    if may_overflow:
        big = np.abs(values) > F16_MAX
        if big.any():
            values[big] = np.copysign(np.float32(np.inf), values[big])


def round_float32_to(
    values: np.ndarray, dtype: str, *, may_be_nan: bool = True, may_overflow: bool = True, scratch=None
) -> np.ndarray:
    """Round float32 values in place to the nearest ``dtype`` value (ties to even, overflow to inf, as
    torch's ``.to``), kept as float32. ``may_be_nan`` / ``may_overflow`` False: the caller knows the values
    hold no NaN / none beyond float16's range. ``scratch``: two uint32 arrays of the values' size, reused."""
    if dtype == "float32":
        return values
    if scratch is None:
        scratch = (np.empty(values.shape, np.uint32), np.empty(values.shape, np.uint32))
    if dtype == "bfloat16":
        nan = np.isnan(values) if may_be_nan else None
        _round_low_bits(values.view(np.uint32), 16, scratch[0])
        if nan is not None and nan.any():
            values[nan] = np.nan
    elif dtype == "float16":  # NaN stays NaN there
        _round_to_f16(values, scratch[0], scratch[1], may_overflow)
    else:
        raise ValueError(f"cannot round to {dtype}")
    return values


def absmax_float32(
    absmax: np.ndarray,
    state: Bnb4State,
    nested_absmax: np.ndarray | None = None,
    nested_quant_map: np.ndarray | None = None,
) -> np.ndarray:
    """The per-block absmax in float32 (nested: 8-bit blockwise dequantisation plus the offset)."""
    if not state.nested:
        a = np.asarray(absmax)
        if a.dtype not in (np.float32, np.float16):
            raise ValueError(f"absmax is {a.dtype}, expected float32")
        a = a.reshape(-1).astype(np.float32)
        if a.size != state.nblocks:
            raise ValueError(f"absmax has {a.size} values, expected {state.nblocks}")
        return a
    if nested_absmax is None or nested_quant_map is None:
        raise ValueError("nested quant state but no nested_absmax / nested_quant_map")
    q = np.asarray(absmax)
    if q.dtype != np.uint8 or q.size != state.nblocks:
        raise ValueError(f"nested absmax must be {state.nblocks} uint8 values, got {q.size} {q.dtype}")
    code = np.asarray(nested_quant_map)
    if code.dtype != np.float32 or code.size != 256:
        raise ValueError(f"nested_quant_map must be 256 float32 values, got {code.size} {code.dtype}")
    scale = np.asarray(nested_absmax)
    if scale.dtype != np.float32 or scale.size != state.nested_nblocks:
        raise ValueError(
            f"nested_absmax must be {state.nested_nblocks} float32 values, got {scale.size} {scale.dtype}"
        )
    values = code.reshape(-1)[q.reshape(-1)]
    values *= np.repeat(scale.reshape(-1), state.nested_blocksize)[: values.size]
    values += np.float32(state.nested_offset)
    return values


def check_quant_map(quant_map: np.ndarray | None, quant_type: str) -> None:
    """The stored 4-bit code book must be the quant type's own (bitsandbytes decodes with the built-in one)."""
    if quant_map is None:
        return
    q = np.asarray(quant_map)
    if q.dtype != np.float32 or q.size != 16:
        raise ValueError(f"quant_map must be 16 float32 values, got {q.size} {q.dtype}")
    if not np.array_equal(q.reshape(-1), CODES[quant_type]):
        raise ValueError(f"quant_map is not the {quant_type} code book")


def _pair_table(quant_type: str) -> np.ndarray:
    code = CODES[quant_type]
    byte = np.arange(256)
    return np.stack([code[byte >> 4], code[byte & 15]], axis=1)  # (256, 2): high nibble first


def dequantise_4bit(
    packed: np.ndarray,
    absmax: np.ndarray,
    quant_map: np.ndarray | None,
    state: Bnb4State,
    nested_absmax: np.ndarray | None = None,
    nested_quant_map: np.ndarray | None = None,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The weight as float32 in ``state.shape``: each value is bitsandbytes' ``dequantize_4bit`` result
    (rounded to ``state.dtype``), exactly. ``packed``: the stored weight (any dtype; its bytes are used).
    Works through the packed bytes in chunks (``CHUNK_BYTES``), so the only big array is the result."""
    check_quant_map(quant_map, state.quant_type)
    scales = absmax_float32(absmax, state, nested_absmax, nested_quant_map)
    data = np.ascontiguousarray(packed).reshape(-1).view(np.uint8)
    if data.size != state.packed_bytes:
        raise ValueError(f"packed weight is {data.size} bytes, expected {state.packed_bytes}")
    n, bs = state.numel, state.blocksize
    if out is None:
        out = np.empty(n, dtype=np.float32)
    elif out.dtype != np.float32 or out.size != n or not out.flags.c_contiguous:
        raise ValueError("out must be a contiguous float32 array of the weight's size")
    flat = out.reshape(-1)
    table = _pair_table(state.quant_type)
    flags = {
        "may_be_nan": not np.isfinite(scales).all(),
        "may_overflow": scales.size > 0 and not np.abs(scales).max() <= F16_MAX,
    }
    step = max(CHUNK_BYTES, bs // 2)  # whole blocks per chunk (both powers of two)
    scratch = (np.empty(2 * step, np.uint32), np.empty(2 * step, np.uint32))
    with np.errstate(over="ignore", invalid="ignore"):
        for b0 in range(0, data.size, step):
            b1 = min(b0 + step, data.size)
            v0, v1 = 2 * b0, min(2 * b1, n)
            direct = 2 * b1 <= n  # decode straight into the result (else: odd n, a padding nibble)
            if direct:
                vals = flat[v0:v1]
                np.take(table, data[b0:b1], axis=0, out=vals.reshape(-1, 2))
            else:
                vals = np.take(table, data[b0:b1], axis=0).reshape(-1)[: v1 - v0]
            k0, full = v0 // bs, (v1 - v0) // bs
            if full:
                blk = vals[: full * bs].reshape(full, bs)
                blk *= scales[k0 : k0 + full, None]
            if full * bs < vals.size:
                vals[full * bs :] *= scales[k0 + full]
            m = vals.size
            round_float32_to(vals, state.dtype, **flags, scratch=(scratch[0][:m], scratch[1][:m]))
            if not direct:
                flat[v0:v1] = vals
    return out.reshape(state.shape)


# ------------------------------------------------------------------------ numpy quantiser (for tests)

NESTED_BLOCKSIZE = 256
# A sorted, symmetric 8-bit code book for the nested absmax (bitsandbytes uses its "dynamic" map;
# any sorted 256-entry table decodes the same way through both dequantisers).
LINEAR8_CODE = np.linspace(-1.0, 1.0, 256, dtype=np.float32)


def _nearest_codes(scaled: np.ndarray, code: np.ndarray) -> np.ndarray:
    order = np.argsort(code, kind="stable")
    srt = code[order]
    mids = (srt[:-1] + srt[1:]) / np.float32(2)
    return order[np.searchsorted(mids, scaled, side="left")].astype(np.uint8)


def _blockwise_scale(x: np.ndarray, bs: int) -> tuple[np.ndarray, np.ndarray]:
    """(absmax per block, x / absmax clipped to [-1, 1]) for a flat float32 array."""
    nblocks = -(-x.size // bs)
    padded = np.zeros(nblocks * bs, dtype=np.float32)
    padded[: x.size] = x
    blocks = padded.reshape(nblocks, bs)
    amax = np.abs(blocks).max(axis=1).astype(np.float32)
    safe = np.maximum(amax, np.float32(1e-38))
    scaled = np.clip(blocks * (np.float32(1) / safe)[:, None], -1, 1).reshape(-1)[: x.size]
    return amax, scaled


def dequantise_parts(
    parts: Mapping[str, np.ndarray], state: Bnb4State, *, out: np.ndarray | None = None
) -> np.ndarray:
    """:func:`dequantise_4bit` of a quantised weight's parts by role (``weight``, ``absmax``, ``quant_map``,
    optional ``nested_absmax`` / ``nested_quant_map``: the keys ``quantise_4bit_numpy`` and a file use)."""
    return dequantise_4bit(
        parts["weight"],
        parts["absmax"],
        parts.get("quant_map"),
        state,
        parts.get("nested_absmax"),
        parts.get("nested_quant_map"),
        out=out,
    )


def quantise_4bit_numpy(
    w: np.ndarray,
    quant_type: str = "nf4",
    blocksize: int = 64,
    nested: bool = False,
    dtype: str | None = None,
) -> dict[str, np.ndarray]:
    """Quantise a float array the way bitsandbytes lays it out: role -> array ("weight": uint8
    ``[ceil(n/2), 1]``, "absmax", "quant_map", nested "nested_absmax" / "nested_quant_map", "quant_state":
    the JSON as uint8). ``dtype``: the state's dtype (default: float16 / float32 from ``w``; pass
    "bfloat16" for bf16 weights given as float32). Not bit-exact with bitsandbytes' quantiser, but its
    output decodes identically through both dequantisers."""
    if quant_type not in CODES:
        raise ValueError(f"quant_type {quant_type!r} is not one of {', '.join(QUANT_TYPES)}")
    w = np.asarray(w)
    dtype = dtype or ("float16" if w.dtype == np.float16 else "float32")
    x = w.reshape(-1).astype(np.float32)
    amax, scaled = _blockwise_scale(x, blocksize)
    codes = _nearest_codes(scaled, CODES[quant_type])
    if codes.size % 2:
        codes = np.append(codes, np.uint8(0))
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8).reshape(-1, 1)
    out = {"weight": packed, "quant_map": CODES[quant_type].copy()}
    fields: dict[str, object] = {
        "quant_type": quant_type,
        "blocksize": blocksize,
        "dtype": dtype,
        "shape": list(w.shape),
    }
    if nested:
        offset = np.float32(amax.mean(dtype=np.float32))
        amax2, scaled2 = _blockwise_scale(amax - offset, NESTED_BLOCKSIZE)
        out |= {
            "absmax": _nearest_codes(scaled2, LINEAR8_CODE),
            "nested_absmax": amax2,
            "nested_quant_map": LINEAR8_CODE.copy(),
        }
        fields |= {
            "nested_blocksize": NESTED_BLOCKSIZE,
            "nested_dtype": "float32",
            "nested_offset": float(offset),
        }
    else:
        out["absmax"] = amax
    out["quant_state"] = np.frombuffer(json.dumps(fields).encode("utf-8"), dtype=np.uint8).copy()
    return out
