"""The fused pair kernel against a float64 brute force, for every dtype it reads."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

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


@pytest.fixture(params=["kernel", "numpy"])
def path(request, monkeypatch):
    """Run a test through the numba kernel (every size) and through the small-tensor numpy path."""
    monkeypatch.setattr(kernels, "_SMALL_ELEMENTS", -1 if request.param == "kernel" else 1 << 30)
    monkeypatch.setattr(kernels, "_NUMPY_BUDGET", 0)
    return request.param


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32"])
@pytest.mark.parametrize("n", [0, 1, 511, 513, 100_003])
def test_pair_stats_equal_float64(dtype, n, path):
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
    monkeypatch.setattr(kernels, "_SMALL_ELEMENTS", -1)
    monkeypatch.setattr(kernels, "_NUMPY_BUDGET", 0)
    a, b = _pair(300_001, "F16", seed=4)
    whole = pair_stats(a, b, "F16")
    monkeypatch.setattr(kernels, "_SPLIT", 1000)
    monkeypatch.setattr(kernels.os, "cpu_count", lambda: 4)
    split = pair_stats(a, b, "F16")
    assert split.l0 == whole.l0 and split.max_abs == whole.max_abs
    assert split.sdd == pytest.approx(whole.sdd, rel=1e-9)
    assert split.sab == pytest.approx(whole.sab, rel=1e-9)


def test_tiny_differences_are_counted(path):
    # the smallest differences each dtype can hold: fp16 subnormal steps, float32 denormals; ±0 are equal
    a = np.zeros(4, np.float16)
    b = np.array([0, 2.0**-24, -0.0, -(2.0**-24)], np.float16)
    assert pair_stats(a, b, "F16").l0 == 2
    assert pair_stats(a, b, "F16").max_abs == 2.0**-24
    a32 = np.zeros(3, np.float32)
    b32 = np.array([1e-45, -0.0, 0], np.float32)
    assert pair_stats(a32, b32, "F32").l0 == 1
    bf = np.array([0, 1, 0x8000, 0x0080], np.uint16)  # 0, the smallest bf16 denormal, −0, the smallest normal
    assert pair_stats(np.zeros(4, np.uint16), bf, "BF16").l0 == 2


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32"])
def test_every_count_is_exact_at_every_length_and_offset(dtype, path):
    # a changed value at each position of blocks and vector lanes (the AVX-512 bug counted every value)
    n = 2 * 512 + 37
    base = _pair(n, dtype)[0]
    for k in (0, 1, 7, 8, 15, 16, 31, 63, 511, 512, 513, n - 1):
        b = base.copy()
        b.view(np.uint8)[k * b.itemsize] ^= 1  # the lowest mantissa bit of value k
        s = pair_stats(base, b, dtype)
        assert s.l0 == 1, k
        assert pair_stats(base[: k + 1], b[: k + 1], dtype).l0 == 1
        assert pair_stats(base[:k], b[:k], dtype).l0 == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_left_to_the_exact_path(bad, path):
    a = np.ones(1000, np.float16)
    b = a.copy()
    b[10] = bad
    assert pair_stats(a, b, "F16") is None


@pytest.mark.parametrize("loaded", [True, False])
def test_bits_equal(loaded, monkeypatch):
    from sdlens.analysis import _jit  # noqa: F401  (loaded: the kernel path)

    if not loaded:  # the numpy block path, taken before numba is loaded
        monkeypatch.delitem(sys.modules, "sdlens.analysis._jit")
    a = np.arange(100_000, dtype=np.float32)  # above the memcmp threshold
    b = a.copy()
    assert bits_equal(a, b)
    b[99_999] = -b[99_999]
    assert not bits_equal(a, b)
    z, nz = np.zeros(3, np.float32), -np.zeros(3, np.float32)
    assert not bits_equal(z, nz)  # equal values, other bits
    assert not bits_equal(a, a[:10])


def test_bits_equal_in_words_and_threads(monkeypatch):
    from sdlens.analysis import _jit  # noqa: F401  (the kernel path)

    monkeypatch.setattr(kernels, "_SPLIT", 1000)
    monkeypatch.setattr(kernels.os, "cpu_count", lambda: 4)
    for n in (300_001, 300_002, 300_004):  # odd, even and multiple-of-8 byte counts: 1-, 2- and 8-byte words
        a = np.frombuffer(np.random.default_rng(n).bytes(n), np.uint8)
        assert bits_equal(a, a.copy())
        for k in (0, n // 2, n - 1):  # a change in the first, a middle and the last part
            b = a.copy()
            b[k] ^= 0x80
            assert not bits_equal(a, b), (n, k)


def test_bits_equal_small_arrays():
    a = np.arange(100, dtype=np.float16)
    assert bits_equal(a, a.copy())
    b = a.copy()
    b[0] = -0.0
    assert not bits_equal(a, b)


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_every_16_bit_pattern_widens_exactly(dtype):
    # the kernels widen fp16 / bf16 with integer operations: check all 65536 bit patterns (Inf, NaN, subnormals)
    raw = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    want = (
        raw.view(np.float16).astype(np.float32)
        if dtype == "F16"
        else (raw.astype(np.uint32) << 16).view(np.float32)
    )
    rows = [raw.view(np.float16) if dtype == "F16" else raw, np.zeros_like(raw)]
    got_sq = kernels.pair_rows(rows, dtype, 0, raw.size, 8)[3][0]
    assert not np.isfinite(got_sq)  # Inf and NaN patterns reach the sums
    finite = np.abs(want) < 2.0**60  # (bf16 goes up to 3e38, whose square is beyond float32)
    fin = raw[finite]
    got = kernels.pair_rows([fin.view(np.float16) if dtype == "F16" else fin], dtype, 0, fin.size, 8)[3][0]
    assert got == pytest.approx((want[finite].astype(np.float64) ** 2).sum(), rel=1e-6)
    # and value by value, through the widening the pair sums use
    for v, w in zip(fin[::997], want[finite][::997], strict=True):
        one = np.array([v], np.uint16)
        s = kernels.pair_rows(
            [one.view(np.float16) if dtype == "F16" else one, np.zeros(1, np.uint16)], dtype, 0, 1, 4
        )[2][0, 1]
        assert s == abs(float(w))


def _rows(u: int, n: int, dtype: str, seed: int = 0):
    """u rows: a base, near copies (1e-3 relative) and far ones, stored as ``dtype``; with float64 values."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(n, dtype=np.float32)
    rows = [
        base + rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3 if i % 2 else 1.0) for i in range(u)
    ]
    stored = [r.astype(np.float16) if dtype == "F16" else _bf16(r) if dtype == "BF16" else r for r in rows]
    return stored, np.stack([_values(r, dtype) for r in stored])


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32"])
@pytest.mark.parametrize(("u", "n"), [(1, 1000), (2, 7), (3, 1025), (5, 4099), (8, 20_000), (11, 3000)])
def test_pair_rows_equal_float64(dtype, u, n):
    stored, x = _rows(u, n, dtype)
    d2, dp, l1, sq = kernels.pair_rows(stored, dtype, 0, n, 15)
    diff = x[:, None, :] - x[None, :, :]
    iu = np.triu_indices(u, 1)
    np.testing.assert_allclose(d2[iu], (diff**2).sum(-1)[iu], rtol=1e-6)
    np.testing.assert_allclose(l1[iu], np.abs(diff).sum(-1)[iu], rtol=1e-6)
    nsq = (x * x).sum(1)
    np.testing.assert_allclose(sq, nsq, rtol=1e-6)
    # ‖a‖²−‖b‖², summed term by term: accurate relative to the (small) distance, not to the norms
    scale = (diff**2).sum(-1)[iu].max(initial=0.0)
    np.testing.assert_allclose(dp[iu], (nsq[:, None] - nsq[None, :])[iu], rtol=0, atol=1e-6 * scale)
    assert not np.tril(d2).any() and not np.tril(l1).any()  # upper triangles only


def test_pair_rows_range_and_threads_add_up(monkeypatch):
    stored, _ = _rows(6, 50_001, "F16", seed=3)
    whole = kernels.pair_rows(stored, "F16", 0, 50_001, 15)
    halves = [
        kernels.pair_rows(stored, "F16", a, b, 15) for a, b in ((0, 20_480), (20_480, 50_001))
    ]  # block-aligned
    monkeypatch.setattr(kernels, "_SPLIT", 1000)
    monkeypatch.setattr(kernels.os, "cpu_count", lambda: 4)
    threaded = kernels.pair_rows(stored, "F16", 0, 50_001, 15)
    for k in range(4):
        np.testing.assert_allclose(halves[0][k] + halves[1][k], whole[k], rtol=1e-9)
        np.testing.assert_allclose(threaded[k], whole[k], rtol=1e-9)


def test_pair_rows_only_sums_what_is_wanted():
    stored, _ = _rows(4, 3000, "F32")
    d2, dp, l1, sq = kernels.pair_rows(stored, "F32", 0, 3000, 1)
    assert d2.any() and not dp.any() and not l1.any() and not sq.any()


def test_small_comparisons_do_not_load_numba():
    # a fresh process comparing a few small tensors never imports numba (its start-up is most of a small diff)
    code = (
        "import sys, numpy as np\n"
        "from sdlens.analysis.kernels import bits_equal, pair_stats\n"
        "a = np.linspace(-1, 1, 200_000).astype(np.float16); b = a.copy(); b[7] = 3\n"
        "s = pair_stats(a, b, 'F16'); t = pair_stats(a[:100], b[:100], 'F16')\n"
        "assert bits_equal(a, a.copy()) and not bits_equal(a, b)\n"
        "assert s.l0 == 1 and t.l0 == 1, (s, t)\n"
        "assert 'numba' not in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_kernels_on_numba_generic_target():
    """The same kernel tests compiled for numba's ``generic`` CPU (no AVX, no F16C: the integer fp16 path), so
    a developer on any machine checks the code users on other CPUs get."""
    env = dict(os.environ, NUMBA_CPU_NAME="generic")
    env.pop("NUMBA_CPU_FEATURES", None)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "0",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "not generic_target",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "failed" not in run.stdout


def test_the_compile_target_decides_the_fp16_path():
    from sdlens.analysis import _jit

    if os.environ.get("NUMBA_CPU_NAME") == "generic":
        assert not _jit.NATIVE_HALF  # the generic target has no half-to-float instruction
    elif platform.machine() == "x86_64" and Path("/proc/cpuinfo").exists():
        flags = Path("/proc/cpuinfo").read_text().split()
        has_f16c = "f16c" in flags
        assert has_f16c is _jit.NATIVE_HALF  # what the kernel uses is what this CPU has


def test_mixed_dtype_pairs_in_numpy_equal_float64(monkeypatch):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(5000, dtype=np.float32)
    a16, b_bf = x.astype(np.float16), _bf16(x)
    s = kernels.mixed_pair_stats(a16, "F16", b_bf, "BF16")
    va, vb = _values(a16, "F16"), _values(b_bf, "BF16")
    d = va - vb
    assert s.sdd == pytest.approx((d * d).sum(), rel=1e-12) and s.sab == pytest.approx(
        (va * vb).sum(), rel=1e-12
    )
    assert s.l0 == int(np.count_nonzero(d)) and s.max_abs == pytest.approx(np.abs(d).max())
    monkeypatch.setattr(kernels, "_NUMPY_BUDGET", 0)
    big = np.zeros(kernels._SMALL_ELEMENTS + 1, np.float16)
    assert (
        kernels.mixed_pair_stats(big, "F16", big.astype(np.float32), "F32") is None
    )  # over budget: torch path


def test_small_mixed_dtype_diff_does_not_load_torch(tmp_path):
    # an fp16 copy beside a bf16 one, both small: the verdict without torch's start-up (~1.5 s)
    import torch
    from safetensors.torch import save_file

    w = torch.randn(64, 32)
    save_file({"model.diffusion_model.x.weight": w.half()}, tmp_path / "a.safetensors")
    save_file({"model.diffusion_model.x.weight": w.bfloat16()}, tmp_path / "b.safetensors")
    code = (
        "import sys\n"
        "from sdlens.analysis.diff import diff\n"
        f"r = diff({str(tmp_path / 'a.safetensors')!r}, {str(tmp_path / 'b.safetensors')!r})\n"
        "assert 'same weights at different precisions' in ' '.join(r.verdict), r.verdict\n"
        "assert 'torch' not in sys.modules and 'numba' not in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def _signature_reference(rows: list[np.ndarray], tol: float, resolve: float, bins: int):
    """``_jit.element_signature`` in float64 numpy over every position (stride 1)."""
    from sdlens.analysis._jit import SIG_LO, SIG_WIDTH

    m, cands = rows[0].astype(np.float64), [r.astype(np.float64) for r in rows[1:]]
    c = len(cands)
    out, hist = np.zeros((c, c, 7)), np.zeros((c, c, bins))
    for b in range(c):
        for j in range(c):
            if b == j:
                continue
            pb, pj = cands[b], cands[j]
            d = pj - pb
            res = np.abs(d) > resolve * np.maximum(np.abs(pb), np.abs(m))
            e = m - pb
            eq_b = res & (np.abs(e) <= tol * np.abs(pb))
            eq_j = res & ~eq_b & (np.abs(m - pj) <= tol * np.abs(pj))
            rest = res & ~eq_b & ~eq_j
            k = np.floor((e[rest] / d[rest] - SIG_LO) / SIG_WIDTH).astype(int)
            inside = (k >= 0) & (k < bins)
            np.add.at(hist[b, j], k[inside], 1)
            out[b, j] = [
                res.sum(), eq_b.sum(), eq_j.sum(), np.abs(d[eq_b]).sum(), np.abs(d[res & ~eq_b]).sum(),
                (~inside).sum(), ((e[rest] > 0) == (d[rest] > 0)).sum(),
            ]  # fmt: skip
    return out, hist


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32"])
def test_element_signature_counts_exact(dtype):
    """Every count of the merge-method kernel equals a float64 reference: drops (M = base), takes (M = the
    candidate), the ratio histogram and the sign agreement, for a DARE-like mix of the three kinds."""
    import torch

    from sdlens.analysis.kernels import SIG_BINS, element_signature

    g = torch.Generator().manual_seed(3)
    n = 5000
    a = torch.randn(n, generator=g)
    b = a + 0.5 * torch.randn(n, generator=g)
    keep = torch.rand(n, generator=g) > 0.3
    take = torch.rand(n, generator=g) < 0.1
    m = torch.where(keep, a + (b - a) / 0.7, a)
    m = torch.where(take, b, m)
    tdt = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}[dtype]
    rows = [x.to(tdt) for x in (m, a, b)]
    stored = [
        r.view(torch.int16 if dtype != "F32" else torch.int32)
        .numpy()
        .view(np.uint16 if dtype != "F32" else np.float32)
        for r in rows
    ]
    out, hist = element_signature(stored, dtype, 1, 0.0, 1e-3)
    ref_out, ref_hist = _signature_reference([r.float().numpy() for r in rows], 0.0, 1e-3, SIG_BINS)
    np.testing.assert_array_equal(out[..., :3], ref_out[..., :3])
    np.testing.assert_array_equal(out[..., 5:], ref_out[..., 5:])
    np.testing.assert_allclose(out[..., 3:5], ref_out[..., 3:5], rtol=1e-5)
    np.testing.assert_array_equal(hist, ref_hist)
    assert 0.25 < out[0, 1, 1] / out[0, 1, 0] < 0.35  # the drops are seen as drops


def test_signature_constants_match_the_kernel():
    """merge_signature and kernels restate the kernel's histogram layout (so as not to import numba)."""
    from sdlens.analysis import _jit, kernels, merge_signature

    assert (merge_signature.SIG_LO, merge_signature.SIG_WIDTH) == (_jit.SIG_LO, _jit.SIG_WIDTH)
    assert round((3 - _jit.SIG_LO) / _jit.SIG_WIDTH) == kernels.SIG_BINS
    assert _jit.SIG_FIELDS.index("values") == merge_signature.VALUES
    assert merge_signature.AGREE == _jit.SIG_FIELDS.index("agree") == len(_jit.SIG_FIELDS) - 1


def _pow2_sq(y: np.ndarray) -> float:
    """Σ (2^⌊log₂|y|⌋)² in float64 for float32 values (0 for zeros and float32 subnormals, as the kernel)."""
    y32 = y.astype(np.float32)
    bits = y32.view(np.uint32) & np.uint32(0x7F800000)
    return float((bits.view(np.float32).astype(np.float64) ** 2).sum())


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32"])
@pytest.mark.parametrize("n", [0, 1, 511, 513, 100_003])
def test_delta_stats_writes_the_exact_delta_and_its_sums(dtype, n, monkeypatch):
    from sdlens.analysis.kernels import delta_stats

    monkeypatch.setattr(kernels, "KERNEL_DELTA_MIN", 0)
    a, b = _pair(n, dtype, seed=7)
    x, y = _values(a, dtype), _values(b, dtype)
    out = np.full(n, np.nan, np.float32)
    sdd, sbb, spp = delta_stats(a, b, dtype, out)
    assert np.array_equal(out, x.astype(np.float32) - y.astype(np.float32))  # bit for bit, as torch's sub
    d = out.astype(np.float64)
    assert sdd == pytest.approx((d * d).sum(), rel=1e-6, abs=1e-12)
    assert sbb == pytest.approx((y * y).sum(), rel=1e-6, abs=1e-12)
    assert spp == pytest.approx(_pow2_sq(y), rel=1e-6, abs=1e-12)


def test_delta_stats_threads_add_up_and_non_finite_is_left_to_torch(monkeypatch):
    from sdlens.analysis.kernels import delta_stats

    monkeypatch.setattr(kernels, "KERNEL_DELTA_MIN", 0)
    a, b = _pair(300_001, "F16", seed=8)
    out1, out2 = np.empty(a.size, np.float32), np.empty(a.size, np.float32)
    whole = delta_stats(a, b, "F16", out1)
    monkeypatch.setattr(kernels, "_SPLIT", 1000)
    monkeypatch.setattr(kernels.os, "cpu_count", lambda: 4)
    split = delta_stats(a, b, "F16", out2)
    assert np.array_equal(out1, out2) and split == pytest.approx(whole, rel=1e-9)
    b[17] = np.inf
    assert delta_stats(a, b, "F16", out1) is None
    monkeypatch.setattr(kernels, "KERNEL_DELTA_MIN", 1 << 30)
    assert delta_stats(a, a, "F16", out1) is None  # small: the caller's torch path
