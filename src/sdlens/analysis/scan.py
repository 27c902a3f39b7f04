"""``--scan``: read every tensor once and find NaN / Inf values and all-zero tensors.

All-zero tensors that the reference architectures make zero (``registry.ZERO_BY_DESIGN``: LDM's ``logvar``,
ControlNet zero convolutions, ...) are listed apart as information, never as problems.

Float tensors are checked on their bit patterns (numpy max over integer views of the data): a NaN or Inf is
any value whose exponent bits are all ones, so two max-reductions per chunk find both signs, and the same
two maxima say whether a tensor holds only ±0. This runs at several GB/s and overlaps with reading.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sdlens.arch import registry as R
from sdlens.io.base import Checkpoint
from sdlens.io.hashing import FileHashes
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
    all_zero: list[str] = field(default_factory=list)  # unexpected: problems
    zero_by_design: dict[str, str] = field(default_factory=dict)  # key -> why it is zero (information)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def problems(self) -> list[str]:
        out = []
        if self.nan:
            out.append(
                f"NaN values in {plural(len(self.nan), 'tensor')} (e.g. {next(iter(self.nan))}: {next(iter(self.nan.values()))})"
            )
        if self.inf:
            out.append(
                f"Inf values in {plural(len(self.inf), 'tensor')} (e.g. {next(iter(self.inf))}: {next(iter(self.inf.values()))})"
            )
        if self.all_zero:
            out.append(
                f"{plural(len(self.all_zero), 'tensor')} {'is' if len(self.all_zero) == 1 else 'are'} all zeros (e.g. {self.all_zero[0]})"
            )
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

        f = (
            torch.from_numpy(arr)
            .view(getattr(torch, "float8_e4m3fn" if dtype == "F8_E4M3" else "float8_e5m2"))
            .float()
        )
        return not bool(f.isfinite().all()), bool(f.any())
    return False, bool(arr.any())


def _count_nonfinite(dtype: str, arr: np.ndarray) -> tuple[int, int]:
    """(NaN count, Inf count) from the bit patterns: exponent all ones; mantissa zero for Inf."""
    if dtype not in _BITS:
        import torch

        f = (
            torch.from_numpy(arr)
            .view(getattr(torch, "float8_e4m3fn" if dtype == "F8_E4M3" else "float8_e5m2"))
            .float()
        )
        return int(f.isnan().sum()), int(f.isinf().sum())
    _signed, unsigned, pos, _neg, sign = _BITS[dtype]
    u = arr.view(unsigned)
    mag = u & unsigned(sign - 1)
    nonfinite = mag >= unsigned(pos)
    inf = int(np.count_nonzero(mag == unsigned(pos)))
    return int(np.count_nonzero(nonfinite)) - inf, inf


def zero_by_design(key: str, family: str | None) -> str | None:
    """Why ``key`` is all-zero by design in a ``family`` model (``registry.ZERO_BY_DESIGN``), or None."""
    for z in R.ZERO_BY_DESIGN:
        if (z.families is None or family in z.families) and re.search(z.pattern, key):
            return z.why
    return None


class _Scan:
    """Adds up the pieces of a pass (any order, any split on element boundaries) into a :class:`ScanResult`;
    ``family`` (a registry id) says which all-zero tensors are expected."""

    def __init__(self, ckpt: Checkpoint, family: str | None = None):
        self.ckpt = ckpt
        self.family = family
        self.res = ScanResult(len(ckpt.tensors), 0)
        self.nonzero: dict[str, bool] = {}

    def add(self, key: str, dtype: str, array: np.ndarray) -> None:
        bad, nz = _piece_stats(dtype, array)
        if bad:
            n_nan, n_inf = _count_nonfinite(dtype, array)
            if n_nan:
                self.res.nan[key] = self.res.nan.get(key, 0) + n_nan
            if n_inf:
                self.res.inf[key] = self.res.inf.get(key, 0) + n_inf
        self.nonzero[key] = self.nonzero.get(key, False) or nz
        self.res.bytes += array.size * self.ckpt.tensors[key].itemsize

    def result(self) -> ScanResult:
        t = self.ckpt.tensors
        for k in self.ckpt.in_file_order():
            if not t[k].numel or self.nonzero.get(k, False):
                continue
            why = zero_by_design(k, self.family)
            if why is None:
                self.res.all_zero.append(k)
            else:
                self.res.zero_by_design[k] = why
        return self.res


def scan_tensors(
    ckpt: Checkpoint, progress: Callable[[int], None] | None = None, family: str | None = None
) -> ScanResult:
    """Stream the whole checkpoint once in file order (no torch needed for fp16/bf16/fp32/fp64); ``family``
    (a registry id) says which all-zero tensors are expected."""
    acc = _Scan(ckpt, family)
    for piece in stream(ckpt):
        acc.add(piece.key, piece.info.dtype, piece.array)
        if progress:
            progress(piece.count * piece.info.itemsize)
    return acc.result()


def scan_and_hash(
    ckpt: Checkpoint,
    progress: Callable[[int], None] | None = None,
    *,
    block: int = 16 << 20,
    family: str | None = None,
) -> tuple[ScanResult, list[FileHashes]]:
    """``--scan`` and ``--hash`` in one sequential read of each file: every byte is hashed, and every
    tensor's bytes are scanned as they pass (strided torch views, which have no run of bytes of their own,
    are read after). ``progress`` totals :func:`scan_and_hash_bytes`."""
    from sdlens.io.onepass import read_once

    acc = _Scan(ckpt, family)
    hashes, strided = read_once(
        ckpt, lambda info, _first, arr: acc.add(info.key, info.dtype, arr), progress=progress, block=block
    )
    for piece in stream(ckpt, strided):
        acc.add(piece.key, piece.info.dtype, piece.array)
        if progress:
            progress(piece.count * piece.info.itemsize)
    return acc.result(), hashes


def scan_and_hash_bytes(ckpt: Checkpoint) -> int:
    """The bytes :func:`scan_and_hash` reads: the files once, plus any strided views."""
    return ckpt.file_size + sum(ckpt.tensors[k].nbytes for k in ckpt.tensors if not ckpt.is_plain(k))
