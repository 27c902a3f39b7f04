"""``--scan``: read every tensor once and find NaN / Inf values and all-zero tensors.

Float tensors are checked on their bit patterns (numpy max over integer views of the data): a NaN or Inf is
any value whose exponent bits are all ones, so two max-reductions per chunk find both signs, and the same
two maxima say whether a tensor holds only ±0. This runs at several GB/s and overlaps with reading.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sdlens.io.base import Checkpoint
from sdlens.io.stream import stream
from sdlens.words import plural

# dtype -> (signed view, unsigned view, first non-finite positive pattern, first non-finite negative, sign bit)
_BITS: dict[str, tuple[Any, Any, int, int, int]] = {
    "F16": (np.int16, np.uint16, 0x7C00, 0xFC00, 0x8000),
    "BF16": (np.int16, np.uint16, 0x7F80, 0xFF80, 0x8000),
    "F32": (np.int32, np.uint32, 0x7F800000, 0xFF800000, 0x80000000),
    "F64": (np.int64, np.uint64, 0x7FF0000000000000, 0xFFF0000000000000, 0x8000000000000000),
}


@dataclass
class ScanResult:
    tensors: int
    bytes: int
    nan: dict[str, int] = field(default_factory=dict)  # key -> NaN count
    inf: dict[str, int] = field(default_factory=dict)
    all_zero: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def problems(self) -> list[str]:
        out = []
        if self.nan:
            out.append(f"NaN values in {plural(len(self.nan), 'tensor')} (e.g. {next(iter(self.nan))}: {next(iter(self.nan.values()))})")
        if self.inf:
            out.append(f"Inf values in {plural(len(self.inf), 'tensor')} (e.g. {next(iter(self.inf))}: {next(iter(self.inf.values()))})")
        if self.all_zero:
            out.append(f"{plural(len(self.all_zero), 'tensor')} {'is' if len(self.all_zero) == 1 else 'are'} all zeros (e.g. {self.all_zero[0]})")
        return out


_BLOCK = 1 << 17  # elements per cache-sized block


def _piece_stats(dtype: str, arr: np.ndarray) -> tuple[bool, bool]:
    """(has a non-finite value, has a non-zero value) for one flat chunk."""
    if arr.size == 0:
        return False, False
    bits = _BITS.get(dtype)
    if bits is not None:
        signed, unsigned, pos, neg, sign = bits
        raw = arr.view(signed)
        uraw = arr.view(unsigned)
        smax = umax = 0
        # both maxima per cache-sized block: the second reduction reads from cache, not memory
        for i in range(0, raw.size, _BLOCK):
            smax = max(smax, int(raw[i : i + _BLOCK].max()))
            umax = max(umax, int(uraw[i : i + _BLOCK].max()))
        return smax >= pos or umax >= neg, smax > 0 or umax not in (0, sign)
    if dtype in ("F8_E4M3", "F8_E5M2"):  # small: decode with torch
        import torch

        f = torch.from_numpy(arr).view(getattr(torch, "float8_e4m3fn" if dtype == "F8_E4M3" else "float8_e5m2")).float()
        return not bool(f.isfinite().all()), bool(f.any())
    return False, bool(arr.any())


def _count_nonfinite(dtype: str, arr: np.ndarray) -> tuple[int, int]:
    """(NaN count, Inf count) from the bit patterns: exponent all ones; mantissa zero for Inf."""
    if dtype not in _BITS:
        import torch

        f = torch.from_numpy(arr).view(getattr(torch, "float8_e4m3fn" if dtype == "F8_E4M3" else "float8_e5m2")).float()
        return int(f.isnan().sum()), int(f.isinf().sum())
    _signed, unsigned, pos, _neg, sign = _BITS[dtype]
    u = arr.view(unsigned)
    mag = u & unsigned(sign - 1)
    nonfinite = mag >= unsigned(pos)
    inf = int(np.count_nonzero(mag == unsigned(pos)))
    return int(np.count_nonzero(nonfinite)) - inf, inf


def scan_tensors(ckpt: Checkpoint, progress: Callable[[int], None] | None = None) -> ScanResult:
    """Stream the whole checkpoint once in file order (no torch needed for fp16/bf16/fp32/fp64)."""
    res = ScanResult(len(ckpt.tensors), 0)
    nonzero: dict[str, bool] = {}
    for piece in stream(ckpt):
        dtype = piece.info.dtype
        bad, nz = _piece_stats(dtype, piece.array)
        if bad:
            n_nan, n_inf = _count_nonfinite(dtype, piece.array)
            if n_nan:
                res.nan[piece.key] = res.nan.get(piece.key, 0) + n_nan
            if n_inf:
                res.inf[piece.key] = res.inf.get(piece.key, 0) + n_inf
        nonzero[piece.key] = nonzero.get(piece.key, False) or nz
        nb = piece.count * piece.info.itemsize
        res.bytes += nb
        if progress:
            progress(nb)
    res.all_zero = [k for k, nz in nonzero.items() if not nz and ckpt.tensors[k].numel]
    return res
