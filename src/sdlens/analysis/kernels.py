"""Fused one-pass arithmetic over raw tensor bytes, for diff (and any pairwise comparison).

``pair_stats(a, b, dtype)`` walks two equally long arrays once and returns every sum the diff needs:
‖a‖², ‖b‖², ⟨a,b⟩, ‖a−b‖², Σ|a−b|, the number of differing values and max |a−b|. The inputs are the file's own
bits (fp16 / bf16 as uint16, fp32 as float32, typically mmap views), widened to float32 inside the loop, so
no converted copy of a tensor is ever made. Arithmetic is float32 (never fp16), summed in float32 over
blocks of 512 and in float64 across blocks: relative error about 1e-7 (tested against float64). Tensors of
more than ``_SPLIT`` elements are split across threads (the kernels release the GIL). The numba kernels
(``_jit``) are imported on first use (~0.5 s once per process, then cached compiled code); small tensors, and
the first few million elements of a process, take an exact float64 numpy path instead, so comparing small
files never waits for numba. Both paths give the same exact counts and sums within 1e-7."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import pairwise
from typing import NamedTuple

import numpy as np

KERNEL_DTYPES = ("F16", "BF16", "F32")
_KIND = {"F16": 0, "BF16": 1, "F32": 2}  # = _jit.F16, _jit.BF16, _jit.F32 (without importing numba)
_SPLIT = 1 << 20  # tensors of more elements are split across threads (~1 ms of work per part)
_SMALL_BYTES = 1 << 18
_SMALL_ELEMENTS = 1 << 16  # pair_stats of smaller tensors always in numpy (cheaper than a kernel dispatch)
# larger ones also in numpy until this many elements were compared, unless the kernels are already loaded: a
# diff of small files never pays numba's start-up (~0.5 s a process), a large one loads it early
_NUMPY_BUDGET = 1 << 23
_numpy_used = 0
_MAGNITUDE = {2: np.uint16(0x7FFF), 4: np.uint32(0x7FFFFFFF)}


class PairSums(NamedTuple):
    saa: float  # ‖a‖²
    sbb: float  # ‖b‖²
    sab: float  # ⟨a, b⟩
    sdd: float  # ‖a−b‖²
    l1: float  # Σ|a−b|
    l0: int  # positions where the values differ
    max_abs: float  # max |a−b|


_threads: int | None = None  # None: every core


def set_threads(n: int | None) -> int | None:
    """How many threads the kernels use (``None``: one per core); returns the previous setting."""
    global _threads
    previous, _threads = _threads, (n if n and n > 0 else None)
    return previous


def threads() -> int:
    return _threads or os.cpu_count() or 1


@cache
def _executor(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="sdlens-kernel")


def _pool() -> ThreadPoolExecutor:
    return _executor(threads())


def _parts(n: int, align: int, work: int = 1) -> list[tuple[int, int]]:
    """``0:n`` cut into one part per thread (each a multiple of ``align`` long, but the last), when the work
    (``n × work`` element operations) is worth the threads."""
    k = min(threads(), max(1, n * work // _SPLIT), max(1, n // align))
    edges = [n * i // k // align * align for i in range(k)] + [n]
    return list(pairwise(edges))


def stored_bits(x: np.ndarray, dtype: str) -> np.ndarray:
    """The stored bits of a flat fp16 / bf16 / float32 array (uint16 / uint32), as ``precision`` reads them."""
    return _raw(x, dtype)


def _raw(x: np.ndarray, dtype: str) -> np.ndarray:
    x = np.ascontiguousarray(x).reshape(-1)
    return x.view(np.uint16) if dtype in ("F16", "BF16") else x.view(np.uint32)


def _values(raw: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values of stored bits (exact for fp16, bf16 and float32)."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return raw.view(np.float16 if dtype == "F16" else np.float32).astype(np.float64)


def _small_pair_stats(ra: np.ndarray, rb: np.ndarray, dtype: str) -> PairSums | None:
    """``pair_stats`` in float64 numpy, for small tensors; the count is the kernel's, on the stored bits."""
    differs = (ra != rb) & (((ra | rb) & _MAGNITUDE[ra.itemsize]) != 0)
    return _float64_sums(_values(ra, dtype), _values(rb, dtype), int(np.count_nonzero(differs)))


def _float64_sums(x: np.ndarray, y: np.ndarray, l0: int | None = None) -> PairSums | None:
    """The sums of ``pair_stats`` over two float64 arrays (``l0``: the count, if known, else values that
    differ as numbers); ``None`` when a value is NaN / Inf."""
    d = x - y
    ad = np.abs(d)
    sums = [
        float(np.dot(x, x)),
        float(np.dot(y, y)),
        float(np.dot(x, y)),
        float(np.dot(d, d)),
        float(ad.sum()),
    ]
    if not all(math.isfinite(v) for v in sums):
        return None
    return PairSums(
        *sums, l0=int(np.count_nonzero(d)) if l0 is None else l0, max_abs=float(ad.max(initial=0.0))
    )


_mixed_used = 0


def mixed_pair_stats(a: np.ndarray, dtype_a: str, b: np.ndarray, dtype_b: str) -> PairSums | None:
    """``pair_stats`` of two tensors stored as different ``KERNEL_DTYPES`` (an fp16 copy beside a bf16 one),
    in float64 numpy, for small comparisons only: ``None`` once torch is loaded or after the first 8 M elements
    of a process (the caller's torch path is then as cheap and faster), or when a value is NaN / Inf. The count
    is of values that differ as numbers (both widenings are exact)."""
    global _mixed_used
    ra, rb = _raw(a, dtype_a), _raw(b, dtype_b)
    if (
        ra.size != rb.size
        or ra.size > _SMALL_ELEMENTS
        and ("torch" in sys.modules or _mixed_used + ra.size > _NUMPY_BUDGET)
    ):
        return None
    _mixed_used += ra.size if ra.size > _SMALL_ELEMENTS else 0
    return _float64_sums(_values(ra, dtype_a), _values(rb, dtype_b))


def pair_stats(a: np.ndarray, b: np.ndarray, dtype: str) -> PairSums | None:
    """All sums for two equally long tensors stored as ``dtype`` (one of ``KERNEL_DTYPES``); ``None`` when
    the tensors hold NaN or Inf (the caller then takes an exact slow path that reports them faithfully)."""
    global _numpy_used
    ra, rb, kind = _raw(a, dtype), _raw(b, dtype), _KIND[dtype]
    if ra.size <= _SMALL_ELEMENTS:
        return _small_pair_stats(ra, rb, dtype)
    if "sdlens.analysis._jit" not in sys.modules and _numpy_used + ra.size <= _NUMPY_BUDGET:
        _numpy_used += ra.size
        return _small_pair_stats(ra, rb, dtype)
    from sdlens.analysis import _jit

    parts = _parts(ra.size, _jit.BLOCK)
    if len(parts) == 1:
        results = [_jit.pair_sums(ra, rb, kind)]
    else:
        results = list(_pool().map(lambda p: _jit.pair_sums(ra[p[0] : p[1]], rb[p[0] : p[1]], kind), parts))
    sums = [float(sum(r[i] for r in results)) for i in range(5)]
    if not all(math.isfinite(x) for x in sums):
        return None
    return PairSums(*sums, l0=int(sum(r[5] for r in results)), max_abs=float(max(r[6] for r in results)))


KERNEL_DELTA_MIN = 1 << 20  # delta_stats on fewer elements: the caller's torch path (no numba start-up)


def delta_stats(
    a: np.ndarray, b: np.ndarray, dtype: str, out: np.ndarray
) -> tuple[float, float, float] | None:
    """Δ = a − b of two tensors stored as ``dtype`` (one of ``KERNEL_DTYPES``) into the float32 array ``out``,
    and (‖Δ‖², ‖b‖², Σ (2^⌊log₂|b|⌋)²), in one pass split over the kernel threads; ``None`` for tensors
    smaller than :data:`KERNEL_DELTA_MIN` or holding NaN / Inf (the caller's torch path then)."""
    ra, rb = _raw(a, dtype), _raw(b, dtype)
    if ra.size < KERNEL_DELTA_MIN or ra.size != rb.size or out.size != ra.size:
        return None
    from sdlens.analysis import _jit

    kind = _KIND[dtype]
    flat = out.reshape(-1)
    parts = _parts(ra.size, _jit.BLOCK)
    results = list(
        _pool().map(
            lambda p: _jit.delta_sums(ra[p[0] : p[1]], rb[p[0] : p[1]], kind, flat[p[0] : p[1]]), parts
        )
    )
    sums = tuple(float(sum(r[i] for r in results)) for i in range(3))
    return sums if all(math.isfinite(x) for x in sums) else None


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two arrays hold the same bytes (stops at the first differing block). Uses the numba kernel
    once it is loaded, numpy block compares before (no numba start-up for small files)."""
    if a.nbytes != b.nbytes:
        return False
    if a.nbytes <= _SMALL_BYTES:  # a memcmp beats the kernel's dispatch cost
        return a.tobytes() == b.tobytes()
    a = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    b = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    width = next(w for w in (8, 4, 2, 1) if a.size % w == 0)  # bytes are bytes: compare in the widest words
    view = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[width]
    a, b = a.view(view), b.view(view)
    if "sdlens.analysis._jit" in sys.modules:
        from sdlens.analysis import _jit

        parts = _parts(a.size, 4096)
        if len(parts) == 1:
            return bool(_jit.bits_equal(a, b))
        return all(_pool().map(lambda p: bool(_jit.bits_equal(a[p[0] : p[1]], b[p[0] : p[1]])), parts))
    step = _SMALL_BYTES // width
    return all(np.array_equal(a[s : s + step], b[s : s + step]) for s in range(0, a.size, step))


def pair_rows(rows: Sequence[np.ndarray], dtype: str, start: int, stop: int, want: int):
    """(d2, dp, l1, sq) over elements ``start:stop`` of equally long flat arrays ``rows`` (the stored values of
    ``dtype`` in ``KERNEL_DTYPES``, typically views on mapped files), see ``_jit.pair_rows``; ``want`` is a
    combination of ``_jit.D2 | DP | L1 | SQ``. The kernel reads the rows where they lie (no copy); the range is
    cut into one part per thread and the parts' sums are added."""
    from sdlens.analysis import _jit

    view = np.uint16 if dtype in ("F16", "BF16") else np.float32
    flat = [np.ascontiguousarray(r).reshape(-1).view(view) for r in rows]  # kept alive during the calls
    addrs = np.array([f.ctypes.data for f in flat], dtype=np.uint64)
    kind = _KIND[dtype]
    work = max(1, len(flat) * (len(flat) - 1) // 2) * bin(want & (_jit.D2 | _jit.DP | _jit.L1)).count("1")
    parts = [(start + a, start + b) for a, b in _parts(stop - start, _jit.ROWS_BLOCK, work)]
    if len(parts) == 1:
        results = [_jit.pair_rows(addrs, kind, start, stop, want)]
    else:
        results = list(_pool().map(lambda p: _jit.pair_rows(addrs, kind, p[0], p[1], want), parts))
    d2, dp, l1, sq = results[0]
    for r in results[1:]:
        d2, dp, l1, sq = d2 + r[0], dp + r[1], l1 + r[2], sq + r[3]
    return d2, dp, l1, sq


SIG_BINS = 400  # = (3 − _jit.SIG_LO) / _jit.SIG_WIDTH


def element_signature(rows: Sequence[np.ndarray], dtype: str, stride: int, tol: float, resolve: float):
    """(out, hist) of ``_jit.element_signature`` over equally long flat rows (row 0 the model, then the
    candidates) of one ``KERNEL_DTYPES`` dtype: every ``stride``-th block of ``_jit.ROWS_BLOCK`` values,
    cut into one part per thread; the parts' counts are added."""
    from sdlens.analysis import _jit

    view = np.uint16 if dtype in ("F16", "BF16") else np.float32
    flat = [np.ascontiguousarray(r).reshape(-1).view(view) for r in rows]  # kept alive during the calls
    addrs = np.array([f.ctypes.data for f in flat], dtype=np.uint64)
    c = len(flat) - 1
    n = flat[0].size

    def part(p: tuple[int, int]):
        out = np.zeros((c, c, len(_jit.SIG_FIELDS)))
        hist = np.zeros((c, c, SIG_BINS))
        _jit.element_signature(addrs, _KIND[dtype], p[0], p[1], stride, tol, resolve, out, hist)
        return out, hist

    parts = _parts(n, _jit.ROWS_BLOCK * stride, max(1, c * (c - 1) // stride))
    results = [part(parts[0])] if len(parts) == 1 else list(_pool().map(part, parts))
    return sum(r[0] for r in results), sum(r[1] for r in results)
