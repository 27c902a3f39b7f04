"""The fused pair kernel against a float64 brute force, for every dtype it reads."""

from __future__ import annotations

import numpy as np
import pytest

from sdlens.analysis import kernels
from sdlens.analysis.kernels import bits_equal, pair_stats


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (truncation is fine: any bf16 value is a test value)."""
    return (x.view(np.uint32) >> 16).astype(np.uint16)


def _values(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return raw.astype(np.float64)


def _pair(n: int, dtype: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n, dtype=np.float32)
    b = a.copy()
    b[::3] += rng.standard_normal(b[::3].size, dtype=np.float32) * np.float32(0.01)
    b[5:6] = 0.0
    if dtype == "F16":
        return a.astype(np.float16), b.astype(np.float16)
    if dtype == "BF16":
        return _bf16(a), _bf16(b)
    return a, b


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32"])
@pytest.mark.parametrize("n", [0, 1, 511, 513, 100_003])
def test_pair_stats_equal_float64(dtype, n):
    a, b = _pair(n, dtype)
    s = pair_stats(a, b, dtype)
    x, y = _values(a, dtype), _values(b, dtype)
    d = x - y
    assert s.saa == pytest.approx((x * x).sum(), rel=1e-6, abs=1e-12)
    assert s.sbb == pytest.approx((y * y).sum(), rel=1e-6, abs=1e-12)
    assert s.sab == pytest.approx((x * y).sum(), rel=1e-6, abs=1e-12)
    assert s.sdd == pytest.approx((d * d).sum(), rel=1e-5, abs=1e-12)
    assert s.l1 == pytest.approx(np.abs(d).sum(), rel=1e-6, abs=1e-12)
    assert s.l0 == int((d != 0).sum())
    assert s.max_abs == pytest.approx(np.abs(d).max() if n else 0.0, rel=1e-6)


def test_threaded_split_gives_the_same_sums(monkeypatch):
    a, b = _pair(300_001, "F16", seed=4)
    whole = pair_stats(a, b, "F16")
    monkeypatch.setattr(kernels, "_SPLIT", 1000)
    monkeypatch.setattr(kernels.os, "cpu_count", lambda: 4)
    split = pair_stats(a, b, "F16")
    assert split.l0 == whole.l0 and split.max_abs == whole.max_abs
    assert split.sdd == pytest.approx(whole.sdd, rel=1e-9)
    assert split.sab == pytest.approx(whole.sab, rel=1e-9)


def test_tiny_differences_are_counted():
    # the smallest differences each dtype can hold: fp16 subnormal steps, float32 denormals
    a = np.zeros(4, np.float16)
    b = np.array([0, 2.0**-24, 0, -(2.0**-24)], np.float16)
    assert pair_stats(a, b, "F16").l0 == 2
    a32 = np.zeros(3, np.float32)
    b32 = np.array([1e-45, 0, 0], np.float32)
    assert pair_stats(a32, b32, "F32").l0 == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_left_to_the_exact_path(bad):
    a = np.ones(1000, np.float16)
    b = a.copy()
    b[10] = bad
    assert pair_stats(a, b, "F16") is None


def test_bits_equal():
    a = np.arange(100_000, dtype=np.float32)  # above the memcmp threshold: the kernel path
    b = a.copy()
    assert bits_equal(a, b)
    b[99_999] = -b[99_999]
    assert not bits_equal(a, b)
    z, nz = np.zeros(3, np.float32), -np.zeros(3, np.float32)
    assert not bits_equal(z, nz)  # equal values, other bits
    assert not bits_equal(a, a[:10])


def test_bits_equal_small_arrays():
    a = np.arange(100, dtype=np.float16)
    assert bits_equal(a, a.copy())
    b = a.copy()
    b[0] = -0.0
    assert not bits_equal(a, b)
