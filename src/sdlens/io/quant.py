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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from sdlens.io.base import TensorInfo

RawReader = Callable[["TensorInfo"], "np.ndarray"]  # a stored tensor's bytes as a flat numpy view (its dtype)


@dataclass(frozen=True)
class Grid:
    """How a scheme's values sit in one block, enough to know the block's quantisation step from its
    dequantised values: ``sym`` (d·q, |q| ≤ ``top``: step = max|v| / top), ``affine`` (m + d·q, q in
    0..``top``: step = (max − min) / top), ``codebook`` (absmax × a fixed table whose widest gap is
    ``gap`` of its largest magnitude: step = max|v| · gap), ``float`` (a float format of ``mantissa`` bits:
    step = |v| · 2^−mantissa, at least ``floor`` × the scale)."""

    kind: str  # sym | affine | codebook | float
    block: int  # elements sharing one scale (a K-quant's sub-block)
    top: float = 1.0
    gap: float = 0.0
    mantissa: int = 0


@dataclass(frozen=True)
class Scheme:
    """One quantisation scheme: its name as users know it, its grid, and the family of files it comes from."""

    name: str
    grid: Grid
    origin: str  # gguf | scaled fp8 | bitsandbytes
    approximate: bool = False  # the step is an estimate (lattice code books: IQ*, TQ*)


_IQ4 = 24 / 127  # IQ4_NL's table: -127 … 113, widest gap 24 (89 → 113)
_NF4_GAP = 1 - 0.6961928009986877  # the NF4 code book's widest gap (-1 → -0.696)
_FP4_GAP = 1 / 3  # bitsandbytes FP4: widest gap at the top (0.667 → 1)
_MXFP4_GAP = 2 / 6  # e2m1 values 0 … 6, widest gap 4 → 6

SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in [
        Scheme("Q8_0", Grid("sym", 32, 127), "gguf"),
        Scheme("Q8_1", Grid("sym", 32, 127), "gguf"),
        Scheme("Q5_0", Grid("sym", 32, 16), "gguf"),
        Scheme("Q5_1", Grid("affine", 32, 31), "gguf"),
        Scheme("Q4_0", Grid("sym", 32, 8), "gguf"),
        Scheme("Q4_1", Grid("affine", 32, 15), "gguf"),
        Scheme("Q8_K", Grid("sym", 256, 127), "gguf"),
        Scheme("Q6_K", Grid("sym", 16, 32), "gguf"),
        Scheme("Q5_K", Grid("affine", 32, 31), "gguf"),
        Scheme("Q4_K", Grid("affine", 32, 15), "gguf"),
        Scheme("Q3_K", Grid("sym", 16, 4), "gguf"),
        Scheme("Q2_K", Grid("affine", 16, 3), "gguf"),
        Scheme("IQ4_NL", Grid("codebook", 32, gap=_IQ4), "gguf"),
        Scheme("IQ4_XS", Grid("codebook", 32, gap=_IQ4), "gguf"),
        Scheme("IQ3_S", Grid("sym", 32, 4), "gguf", approximate=True),
        Scheme("IQ3_XXS", Grid("sym", 32, 4), "gguf", approximate=True),
        Scheme("IQ2_S", Grid("sym", 32, 2), "gguf", approximate=True),
        Scheme("IQ2_XS", Grid("sym", 32, 2), "gguf", approximate=True),
        Scheme("IQ2_XXS", Grid("sym", 32, 2), "gguf", approximate=True),
        Scheme("IQ1_S", Grid("sym", 32, 1), "gguf", approximate=True),
        Scheme("IQ1_M", Grid("sym", 32, 1), "gguf", approximate=True),
        Scheme("TQ1_0", Grid("sym", 256, 1), "gguf"),
        Scheme("TQ2_0", Grid("sym", 256, 1), "gguf"),
        Scheme("MXFP4", Grid("codebook", 32, gap=_MXFP4_GAP), "gguf"),
        Scheme("NVFP4", Grid("codebook", 16, gap=_MXFP4_GAP), "gguf"),
        Scheme("Q1_0", Grid("sym", 128, 1), "gguf"),
        Scheme("F8_E4M3 scaled", Grid("float", 0, mantissa=3), "scaled fp8"),
        Scheme("F8_E5M2 scaled", Grid("float", 0, mantissa=2), "scaled fp8"),
        Scheme("NF4", Grid("codebook", 64, gap=_NF4_GAP), "bitsandbytes"),
        Scheme("FP4", Grid("codebook", 64, gap=_FP4_GAP), "bitsandbytes"),
    ]
}


@dataclass(frozen=True)
class Quant:
    """How one logical tensor is stored: ``scheme`` (a :data:`SCHEMES` name), ``main`` (the stored bytes: a
    GGUF tensor's blocks, the fp8 weight, the packed 4-bit codes), ``parts`` (role -> the companion tensors
    that belong to it: ``scale_weight``, ``absmax``, ``quant_map`` …) and ``decode``, which turns the stored
    tensors (read through the given reader) into the logical values as float32 of the logical shape.
    ``block`` overrides the scheme's block size where the file sets it (bitsandbytes' blocksize)."""

    scheme: str
    main: TensorInfo
    decode: Callable[[RawReader], np.ndarray] = field(compare=False, repr=False)
    parts: Mapping[str, TensorInfo] = field(default_factory=dict, hash=False)
    block: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict, hash=False)  # scheme facts worth reporting

    @property
    def stored_nbytes(self) -> int:
        """Bytes in the file: the main tensor and every companion."""
        return self.main.nbytes + sum(p.nbytes for p in self.parts.values())

    @property
    def stored(self) -> list[TensorInfo]:
        return [self.main, *self.parts.values()]


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


def _block_view(values: np.ndarray, block: int) -> tuple[np.ndarray, int]:
    """The whole blocks of ``values`` (flat) as rows of ``block``, and how many values they hold."""
    n = values.size
    whole = n // block * block
    return values[:whole].reshape(-1, block), whole


def steps(quant: Quant, values: np.ndarray) -> np.ndarray:
    """The quantisation step at each of a tensor's dequantised ``values`` (flat float32, in storage order):
    the distance between neighbouring representable values of its block. A value's rounding error is at most
    half of it for a round-to-nearest quantiser."""
    import numpy as np

    scheme = SCHEMES[quant.scheme]
    g = scheme.grid
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    if g.kind == "float":
        scale = float(quant.detail.get("scale_max", 1.0))
        floor = np.float32(scale * 2.0 ** -(9 if g.mantissa == 3 else 16))
        return np.maximum(np.abs(v) * np.float32(2.0**-g.mantissa), floor)
    block = quant.block or g.block
    out = np.empty_like(v)
    body, whole = _block_view(v, block)
    out[:whole] = np.repeat(_block_steps(body, g), block)
    if whole < v.size:
        out[whole:] = _block_steps(v[whole:].reshape(1, -1), g)[0]
    return out


def _block_steps(rows: np.ndarray, g: Grid) -> np.ndarray:
    import numpy as np

    if rows.size == 0:
        return np.zeros(rows.shape[0], np.float32)
    if g.kind == "affine":
        return (rows.max(1) - rows.min(1)) / np.float32(g.top)
    amax = np.abs(rows).max(1)
    return amax * np.float32(g.gap) if g.kind == "codebook" else amax / np.float32(g.top)
