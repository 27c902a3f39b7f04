"""Quantised weights: a tensor whose stored bytes are not a plain array of its dtype.

A GGUF ``Q4_K`` block, a ComfyUI scaled-fp8 weight (fp8 bytes × a ``scale_weight``) and a bitsandbytes NF4
weight (packed 4-bit codes, ``absmax`` blocks, a code book) all stand for one logical tensor. Readers index
such a tensor under its own key with its *logical* shape and the dtype its dequantised values are exact in
(``TensorInfo.dtype``); its :class:`Quant` (in ``TensorInfo.extra``) says how it is stored: the scheme, the
stored tensors (the main bytes and the companions that belong to it), and how to decode them. Every
command then reads it like any other tensor (``Checkpoint.read`` dequantises it), while ``inspect`` reports
the scheme, the bits per weight and the companions as what they are.

The scheme table is data: for every scheme, its block size and its grid, from which the quantisation step of
each block is known (``steps``): ``diff`` calls a difference that stays within one step of every value a
quantisation, not a change.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from sdlens.io.base import TensorInfo

RawReader = Callable[["TensorInfo"], "np.ndarray"]  # a stored tensor's bytes as a flat numpy view (its dtype)


@dataclass(frozen=True)
class Grid:
    """How a scheme's values sit in one block, enough to know each value's quantisation step from the
    block's dequantised values: ``sym`` (d·q, |q| ≤ ``top``: step = max|v| / top), ``affine`` (m + d·q, q in
    0..``top``: step = (max − min) / top), ``codebook`` (max|v| × a fixed ``table`` of levels in [−1, 1]: the
    step is the width of the value's level's rounding interval, which varies along the table), ``float`` (a
    float format of ``mantissa`` bits times a scale: the spacing at the value's binade)."""

    kind: str  # sym | affine | codebook | float
    block: int  # elements sharing one scale (a K-quant's sub-block)
    top: float = 1.0
    table: tuple[float, ...] = ()  # codebook levels, the largest magnitude 1
    mantissa: int = 0
    min_exp: int = 0  # float: the exponent of the smallest normal


@dataclass(frozen=True)
class Scheme:
    """One quantisation scheme: its name as users know it, its grid, and the family of files it comes from."""

    name: str
    grid: Grid
    origin: str  # gguf | scaled fp8 | bitsandbytes
    approximate: bool = False  # the step is an estimate (lattice code books: IQ1–IQ3, TQ)


def _levels(*values: float) -> tuple[float, ...]:
    top = max(abs(v) for v in values)
    return tuple(sorted({v / top for v in values}))


# the code books' levels: IQ4_NL / IQ4_XS (kvalues_iq4nl), bitsandbytes NF4 and FP4, e2m1 (MXFP4 / NVFP4)
_IQ4 = _levels(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
_NF4 = _levels(
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)  # fmt: skip
_FP4 = _levels(0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0625, -8, -12, -4, -6, -2, -3)
_E2M1 = _levels(0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.5, -1, -1.5, -2, -3, -4, -6)

# every scheme sdlens can dequantise (GGUF's Q8_1, Q8_K and Q1_0 are not: the gguf package cannot, and no
# diffusion model is stored in them; a file that uses them is refused when opened)
SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in [
        Scheme("Q8_0", Grid("sym", 32, 127), "gguf"),
        Scheme("Q5_0", Grid("sym", 32, 16), "gguf"),
        Scheme("Q5_1", Grid("affine", 32, 31), "gguf"),
        Scheme("Q4_0", Grid("sym", 32, 8), "gguf"),
        Scheme("Q4_1", Grid("affine", 32, 15), "gguf"),
        Scheme("Q6_K", Grid("sym", 16, 32), "gguf"),
        Scheme("Q5_K", Grid("affine", 32, 31), "gguf"),
        Scheme("Q4_K", Grid("affine", 32, 15), "gguf"),
        Scheme("Q3_K", Grid("sym", 16, 4), "gguf"),
        Scheme("Q2_K", Grid("affine", 16, 3), "gguf"),
        Scheme("IQ4_NL", Grid("codebook", 32, table=_IQ4), "gguf"),
        Scheme("IQ4_XS", Grid("codebook", 32, table=_IQ4), "gguf"),
        Scheme("IQ3_S", Grid("sym", 32, 4), "gguf", approximate=True),
        Scheme("IQ3_XXS", Grid("sym", 32, 4), "gguf", approximate=True),
        Scheme("IQ2_S", Grid("sym", 32, 2), "gguf", approximate=True),
        Scheme("IQ2_XS", Grid("sym", 32, 2), "gguf", approximate=True),
        Scheme("IQ2_XXS", Grid("sym", 32, 2), "gguf", approximate=True),
        Scheme("IQ1_S", Grid("sym", 32, 1), "gguf", approximate=True),
        Scheme("IQ1_M", Grid("sym", 32, 1), "gguf", approximate=True),
        Scheme("TQ1_0", Grid("sym", 256, 1), "gguf"),
        Scheme("TQ2_0", Grid("sym", 256, 1), "gguf"),
        Scheme("MXFP4", Grid("codebook", 32, table=_E2M1), "gguf"),
        Scheme("NVFP4", Grid("codebook", 16, table=_E2M1), "gguf"),
        Scheme("F8_E4M3 scaled", Grid("float", 0, mantissa=3, min_exp=-6), "scaled fp8"),
        Scheme("F8_E5M2 scaled", Grid("float", 0, mantissa=2, min_exp=-14), "scaled fp8"),
        Scheme("NF4", Grid("codebook", 64, table=_NF4), "bitsandbytes"),
        Scheme("FP4", Grid("codebook", 64, table=_FP4), "bitsandbytes"),
    ]
}


@dataclass(frozen=True)
class Quant:
    """How one logical tensor is stored: ``scheme`` (a :data:`SCHEMES` name), ``main`` (the stored bytes: a
    GGUF tensor's blocks, the fp8 weight, the packed 4-bit codes), ``parts`` (role -> the companion tensors
    that belong to it: ``scale_weight``, ``absmax``, ``quant_map`` …) and ``decode``, which turns the stored
    tensors (read through the given reader) into logical values: ``decode(raw, start, stop)`` gives
    elements ``start .. stop`` (flat, storage order) as float32, where ``start`` is a multiple of ``unit``
    (a GGUF row, a scaled-fp8 row, a bitsandbytes block) and ``stop`` one or the tensor's end, so the
    streaming engines dequantise a big tensor chunk by chunk.
    ``block`` overrides the scheme's block size where the file sets it (bitsandbytes' blocksize)."""

    scheme: str
    main: TensorInfo
    decode: Callable[[RawReader, int, int], np.ndarray] = field(compare=False, repr=False)
    parts: Mapping[str, TensorInfo] = field(default_factory=dict, hash=False)
    block: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict, hash=False)  # scheme facts worth reporting
    unit: int = 1  # elements per decodable unit

    @property
    def stored_nbytes(self) -> int:
        """Bytes in the file: the main tensor and every companion."""
        return self.main.nbytes + sum(p.nbytes for p in self.parts.values())

    @property
    def stored(self) -> list[TensorInfo]:
        return [self.main, *self.parts.values()]

    def scales(self, raw: RawReader) -> np.ndarray | None:
        """A scaled float scheme's scale (one value, or one per output row) as float64; else ``None``."""
        import numpy as np

        part = self.parts.get("scale")
        if part is None:
            return None
        a = raw(part)
        if part.dtype == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        return a.astype(np.float64).reshape(-1)


def quant_of(info: TensorInfo) -> Quant | None:
    """The tensor's :class:`Quant`, or ``None`` for a plain tensor."""
    q = info.extra
    return q if isinstance(q, Quant) else None


def stored_dtype(info: TensorInfo) -> str:
    """What a report calls the tensor's storage: the scheme of a quantised tensor, else its dtype."""
    q = quant_of(info)
    return q.scheme if q is not None else info.dtype


def stored_nbytes(info: TensorInfo) -> int:
    q = quant_of(info)
    return q.stored_nbytes if q is not None else info.nbytes


def bits_per_weight(info: TensorInfo) -> float:
    """Stored bits per logical value, the scales and companions included."""
    return 8 * stored_nbytes(info) / max(1, info.numel)


# --------------------------------------------------------------------------- quantisation steps


def steps(quant: Quant, values: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """The quantisation step at each of a tensor's dequantised ``values`` (flat float32, in storage order):
    the width of the interval of reals that round to the value's level. A round-to-nearest quantiser errs by
    at most half of it; the scheme's expected rounding error is about step² / 12 per value. ``scale``: a
    scaled float scheme's scales (one, or one per output row: :meth:`Quant.scales`)."""
    import numpy as np

    g = SCHEMES[quant.scheme].grid
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    if g.kind == "float":
        scale = np.ones(1, np.float64) if scale is None else np.asarray(scale, np.float64).reshape(-1)
        return _float_steps(v, g, np.repeat(scale, v.size // scale.size) if scale.size > 1 else scale)
    block = quant.block or g.block
    out = np.empty_like(v)
    whole = v.size // block * block
    out[:whole] = _block_steps(v[:whole].reshape(-1, block), g).reshape(-1)
    if whole < v.size:
        out[whole:] = _block_steps(v[whole:].reshape(1, -1), g).reshape(-1)
    return out


def _block_steps(rows: np.ndarray, g: Grid) -> np.ndarray:
    """The step of every value of ``rows`` (one block a row), same shape."""
    import numpy as np

    if rows.size == 0:
        return rows.copy()
    if g.kind == "affine":
        step = (rows.max(1, keepdims=True) - rows.min(1, keepdims=True)) / np.float32(g.top)
        return np.broadcast_to(step, rows.shape).copy()
    amax = np.abs(rows).max(1, keepdims=True)
    if g.kind == "sym":
        return np.broadcast_to(amax / np.float32(g.top), rows.shape).copy()
    table = np.asarray(g.table, dtype=np.float64)
    # each level's interval: from the midpoint to the level below to the midpoint to the level above (the
    # ends: the gap to the one neighbour, as no value lies beyond the block's largest magnitude)
    gaps = np.diff(table)
    width = np.empty_like(table)
    width[1:-1] = (gaps[:-1] + gaps[1:]) / 2
    width[0], width[-1] = gaps[0], gaps[-1]
    code = np.divide(rows, amax, out=np.zeros_like(rows), where=amax > 0)
    level = np.clip(np.searchsorted(table, code), 1, table.size - 1)
    nearest = np.where(code - table[level - 1] < table[level] - code, level - 1, level)
    return (width[nearest] * amax).astype(np.float32)


def _float_steps(v: np.ndarray, g: Grid, scale: np.ndarray) -> np.ndarray:
    """The spacing of a scaled float format at each value: 2^(e − mantissa) × scale at the value's binade e
    (subnormals: that of the smallest normal binade)."""
    import numpy as np

    safe = np.where(scale > 0, scale, 1.0)
    _m, e = np.frexp(np.abs(v.astype(np.float64)) / safe)  # m · 2^e, m in [0.5, 1): binade e − 1
    binade = np.maximum(e - 1, g.min_exp)
    return (np.ldexp(1.0, binade - g.mantissa) * safe).astype(np.float32)


# --------------------------------------------------------------------------- typical error


@functools.cache
def typical_error(scheme: str) -> float:
    """The relative RMS error a scheme's rounding gives normal-distributed weights (‖Δ‖ / ‖W‖): what
    ``recipe`` and ``lineage`` take as a quantised file's rounding floor. From the scheme's own steps on a
    seeded normal sample: √(mean step² / 12)."""
    import numpy as np

    g = SCHEMES[scheme].grid
    x = np.random.default_rng(0).standard_normal(1 << 14).astype(np.float32)
    block = g.block or 1
    q = Quant(scheme, None, None, block=block if g.kind != "float" else None)  # type: ignore[arg-type]
    s = steps(q, x, np.full(1, 1 / 64) if g.kind == "float" else None)
    return float(np.sqrt(np.mean(s.astype(np.float64) ** 2) / 12))


def dominant_storage(tensors) -> str:
    """The storage (dtype, or quantisation scheme) holding most values among ``tensors``; F32 for none."""
    counts: dict[str, int] = {}
    for t in tensors:
        counts[stored_dtype(t)] = counts.get(stored_dtype(t), 0) + t.numel
    return max(counts, key=counts.get) if counts else "F32"
