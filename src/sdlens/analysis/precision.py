"""Are two stored copies of a tensor, in different float formats, the same weights at different precisions?

Each stored value ``v`` of a format stands for the interval of reals that round to ``v`` under
round-to-nearest-even: ``[v − ulp_below/2, v + ulp_above/2]``, the ends closed when ``v``'s mantissa is even
(a tie rounds to it) and open when odd. Subnormals have the fixed spacing of the smallest exponent; a power
of two (mantissa 0) has half the spacing below it; ±0 covers ``[−s/2, s/2]`` (s the smallest subnormal;
the sign of a zero is not held against a pair); ±Inf covers everything from ``max + ulp/2`` outwards; the
saturating fp8 e4m3fn (no Inf: torch and fp8 quantisers clamp to ±448) lets ±max cover everything beyond.
Two values are *consistent with one common source* when their intervals intersect; two NaNs are, a NaN
and a number are not. float64 values are taken as points (their half-ulp is below anything the others
resolve). All endpoints are exact in float64, so the test is exact.

The check streams: a tensor pair in chunks, first the cheap sufficient test (the finer copy rounded to the
coarser format equals it, in torch), then the interval test (numpy, vectorised) on the few values left.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FloatFormat:
    exp_bits: int
    man_bits: int
    has_inf: bool = True  # IEEE-style: exponent all ones = Inf (mantissa 0) or NaN
    saturates: bool = False  # no Inf: conversions clamp to ±max (fp8 e4m3fn); NaN is mantissa all ones

    @property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits


FORMATS: dict[str, FloatFormat] = {
    "F32": FloatFormat(8, 23),
    "F16": FloatFormat(5, 10),
    "BF16": FloatFormat(8, 7),
    "F8_E4M3": FloatFormat(4, 3, has_inf=False, saturates=True),
    "F8_E5M2": FloatFormat(5, 2),
}
_UINT = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}
_CHUNK = 1 << 22  # elements per chunk of the torch pre-check


@cache
def _ulps(dtype: str) -> np.ndarray:
    f = FORMATS[dtype]
    e = np.maximum(np.arange(1 << f.exp_bits), 1)
    return np.ldexp(1.0, e - f.bias - f.man_bits)


def intervals(bits: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, closed, nan) of each stored value, from its bit pattern (any unsigned integer array).

    ``lo``/``hi`` are float64 bounds of the reals that round to the value; ``closed`` whether both ends
    belong to it; ``nan`` marks NaNs (their bounds are meaningless). ``F64`` gives points."""
    if dtype == "F64":
        v = np.ascontiguousarray(bits).astype(np.uint64).view(np.float64)
        return v, v, np.ones(v.shape, bool), np.isnan(v)
    f = FORMATS[dtype]
    u = bits.astype(np.int32 if f.bits <= 16 else np.int64)
    m_mask, e_all = (1 << f.man_bits) - 1, (1 << f.exp_bits) - 1
    neg = (u >> (f.exp_bits + f.man_bits)) & 1 == 1
    e = (u >> f.man_bits) & e_all
    m = u & m_mask
    ulp = _ulps(dtype)[e]  # spacing at each exponent (subnormals: that of the smallest)
    val = (m + (e > 0) * (1 << f.man_bits)) * ulp
    # a power of two above the smallest normal has half the spacing below it
    lo_mag = val - ulp * np.where((m == 0) & (e > 1), 0.25, 0.5)
    hi_mag = val + ulp * 0.5
    if f.has_inf:
        top = e == e_all
        nan = top & (m != 0)
        hi_mag = np.where(top, np.inf, hi_mag)  # Inf: from max + ulp/2 outwards
    else:
        nan = (e == e_all) & (m == m_mask)
        if f.saturates:
            hi_mag = np.where((e == e_all) & (m == m_mask - 1), np.inf, hi_mag)  # ±max takes all beyond
    zero = val == 0
    lo_mag = np.where(zero, -hi_mag, lo_mag)  # ±0: [-s/2, s/2] whatever the sign
    lo = np.where(neg & ~zero, -hi_mag, lo_mag)
    hi = np.where(neg & ~zero, -lo_mag, hi_mag)
    return lo, hi, (m & 1) == 0, nan


def consistent(bits_a: np.ndarray, dtype_a: str, bits_b: np.ndarray, dtype_b: str) -> np.ndarray:
    """Per element: could one real have been rounded to both stored values? (their intervals intersect)"""
    lo1, hi1, c1, n1 = intervals(bits_a, dtype_a)
    lo2, hi2, c2, n2 = intervals(bits_b, dtype_b)
    lo, hi = np.maximum(lo1, lo2), np.minimum(hi1, hi2)
    # the closedness of whichever interval supplies each bound (both, on a tie)
    c_lo = np.where(lo1 > lo2, c1, np.where(lo2 > lo1, c2, c1 & c2))
    c_hi = np.where(hi1 < hi2, c1, np.where(hi2 < hi1, c2, c1 & c2))
    ok = (lo < hi) | ((lo == hi) & c_lo & c_hi)
    return np.where(n1 | n2, n1 & n2, ok)


def all_consistent(
    bits_a: np.ndarray, dtype_a: str, bits_b: np.ndarray, dtype_b: str, chunk: int = 1 << 18
) -> bool:
    """:func:`consistent` for every element, in chunks (its temporaries stay a few MB); stops at the first
    inconsistent chunk."""
    return all(
        consistent(bits_a[i : i + chunk], dtype_a, bits_b[i : i + chunk], dtype_b).all()
        for i in range(0, bits_a.size, chunk)
    )


def _ints(t: Any) -> Any:
    """A flat torch tensor's bits as a same-width integer tensor (a view when contiguous)."""
    import torch

    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(ints)


def _bits(t: Any) -> np.ndarray:
    """A flat torch tensor's stored bits as an unsigned numpy array."""
    return _ints(t).numpy().view(_UINT[t.element_size() * 8])


def _mantissa(dtype: str) -> int:
    return 52 if dtype == "F64" else FORMATS[dtype].man_bits


def same_within_precision(a: Any, dtype_a: str, b: Any, dtype_b: str) -> bool:
    """True when every pair of values of the flat torch tensors ``a`` (stored as ``dtype_a``) and ``b`` is
    consistent with one common source. Streams in chunks; stops at the first inconsistent chunk."""
    import torch

    if dtype_a not in FORMATS and dtype_a != "F64" or dtype_b not in FORMATS and dtype_b != "F64":
        return False
    fine, coarse = (a, b) if _mantissa(dtype_a) >= _mantissa(dtype_b) else (b, a)
    n = a.numel()
    for i in range(0, n, _CHUNK):
        fa, co = fine[i : i + _CHUNK], coarse[i : i + _CHUNK]
        # sufficient: the finer value rounds (RNE) to the coarser one's very bits (NaNs and zeros of the
        # other sign fall through to the exact test)
        # (not from float64: torch rounds it to float32 first, a double rounding)
        if fine.dtype == torch.float64:
            ra, rb = a[i : i + _CHUNK], b[i : i + _CHUNK]
        else:
            left = torch.ne(_ints(fa.to(co.dtype)), _ints(co)).nonzero().reshape(-1)
            if not left.numel():
                continue
            ra, rb = a[i : i + _CHUNK][left], b[i : i + _CHUNK][left]
        if not consistent(_bits(ra), dtype_a, _bits(rb), dtype_b).all():
            return False
    return True
