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
            out.append(f"NaN values in {len(self.nan)} tensors (e.g. {next(iter(self.nan))}: {next(iter(self.nan.values()))})")
        if self.inf:
            out.append(f"Inf values in {len(self.inf)} tensors (e.g. {next(iter(self.inf))}: {next(iter(self.inf.values()))})")
        if self.all_zero:
            out.append(f"{len(self.all_zero)} tensors are all zeros (e.g. {self.all_zero[0]})")
        return out


def _signed_torch() -> dict[int, Any]:
    import torch

    return {2: torch.int16, 4: torch.int32, 8: torch.int64}


_SIGNED_TORCH: dict[int, Any] = {}
_BLOCK = 1 << 17  # elements per cache-sized block


def _piece_stats(dtype: str, data) -> tuple[bool, bool]:
    """(has a non-finite value, has a non-zero value) for one flat chunk."""
    if data.numel() == 0:
        return False, False
    bits = _BITS.get(dtype)
    if bits is not None:
        signed, unsigned, pos, neg, sign = bits
        raw = data.view(_SIGNED_TORCH[data.element_size()]).numpy().view(signed)
        uraw = raw.view(unsigned)
        smax = umax = 0
        # both maxima per cache-sized block: the second reduction reads from cache, not memory
        for i in range(0, raw.size, _BLOCK):
            smax = max(smax, int(raw[i : i + _BLOCK].max()))
            umax = max(umax, int(uraw[i : i + _BLOCK].max()))
        nonfinite = smax >= pos or umax >= neg
        nonzero = smax > 0 or umax not in (0, sign)
        return nonfinite, nonzero
    if data.is_floating_point():  # fp8: small, convert
        f = data.float()
        return not bool(f.isfinite().all()), bool(f.any())
    return False, bool(data.any())


def scan_tensors(ckpt: Checkpoint, progress: Callable[[int], None] | None = None) -> ScanResult:
    """Stream the whole checkpoint once in file order."""
    import torch

    _SIGNED_TORCH.update(_signed_torch())
    res = ScanResult(len(ckpt.tensors), 0)
    nonzero: dict[str, bool] = {}
    for piece in stream(ckpt):
        bad, nz = _piece_stats(piece.info.dtype, piece.data)
        if bad:
            f = piece.data.float()
            if n := int(torch.isnan(f).sum()):
                res.nan[piece.key] = res.nan.get(piece.key, 0) + n
            if n := int(torch.isinf(f).sum()):
                res.inf[piece.key] = res.inf.get(piece.key, 0) + n
        nonzero[piece.key] = nonzero.get(piece.key, False) or nz
        nb = piece.data.numel() * piece.info.itemsize
        res.bytes += nb
        if progress:
            progress(nb)
    res.all_zero = [k for k, nz in nonzero.items() if not nz and ckpt.tensors[k].numel]
    return res
