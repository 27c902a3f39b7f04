"""The fits of ``merge_fit`` from exact pairwise sums of numpy vectors whose combination is known."""

from __future__ import annotations

import numpy as np
import pytest

from sdlens.analysis.merge_fit import fit_group, residual_with

RNG = np.random.default_rng(0)
N = 20_000
A = RNG.normal(size=N)
B = A + 0.05 * RNG.normal(size=N)  # a fine-tune of A
C = RNG.normal(size=N)


def _sums(xs: list[np.ndarray]) -> dict[str, np.ndarray]:
    n = len(xs)
    d2 = np.array([[((x - y) ** 2).sum() for y in xs] for x in xs])
    sq = np.array([[(x * x).sum() for _ in xs] for x in xs])
    same = np.array([[float(np.array_equal(x, y)) for y in xs] for x in xs])
    return {"d2": d2, "dp": np.zeros((n, n)), "sq": sq, "same": same, "both": np.ones((n, n))}


@pytest.mark.parametrize(
    ("m", "weights"),
    [
        (0.3 * A + 0.7 * B, [0.3, 0.7, 0.0]),
        (C + 0.7 * (B - A), [-0.7, 0.7, 1.0]),
        (0.5 * A + 0.3 * B + 0.2 * C, [0.5, 0.3, 0.2]),
    ],
)
def test_affine_weights_exact(m, weights):
    f = fit_group("g", _sums([m, A, B, C]), 0, [1, 2, 3])
    assert np.allclose(f.affine.weights, weights, atol=1e-9) and f.affine.share < 1e-6
    assert f.verdict == "explained" and f.confidence != "low"
    assert (f.convex is not None) == (min(weights) < 0)  # only where a weight is negative


def test_free_fit_tells_a_scaled_merge():
    f = fit_group("g", _sums([1.1 * (0.5 * A + 0.5 * C), A, B, C]), 0, [1, 2, 3])
    assert abs(f.free.total - 1.1) < 1e-6 and f.free.share < 1e-6 < f.affine.share
    assert np.allclose(f.free.weights, [0.55, 0.0, 0.55], atol=1e-6)


def test_convex_fit_and_residual_with():
    m = C + 0.7 * (B - A)
    s = _sums([m, A, B, C])
    f = fit_group("g", s, 0, [1, 2, 3])
    assert min(f.convex.weights) >= 0 and abs(sum(f.convex.weights) - 1) < 1e-9
    assert f.convex.residual >= f.affine.residual
    assert residual_with(s, 0, [1, 2, 3], f.convex.weights) == pytest.approx(f.convex.residual, rel=1e-6)
    assert residual_with(s, 0, [1, 2, 3], [-0.7, 0.7, 1.0]) < 1e-6


def test_copies_identical_candidates_and_near_duplicates():
    s = _sums([B.copy(), A, B, C])
    f = fit_group("g", s, 0, [1, 2, 3])
    assert f.copy_of == 2 and f.affine.weights == [0.0, 1.0, 0.0] and f.verdict == "copy"
    f = fit_group("g", _sums([0.5 * A + 0.5 * C, A, A.copy(), C]), 0, [1, 2, 3])
    assert f.identical == [[1, 2]] and np.allclose(f.affine.weights, [0.5, 0.0, 0.5])
    near = C + 1e-7 * RNG.normal(size=N)
    f = fit_group("g", _sums([0.5 * A + 0.5 * C, A, C, near]), 0, [1, 2, 3])
    assert f.confidence == "low" and f.closest[:2] == (2, 3) and f.closest[2] < 1e-6


def test_trained_further_and_unrelated():
    noise = 0.2 * RNG.normal(size=N)
    m = 0.5 * A + 0.5 * C + noise
    f = fit_group("g", _sums([m, A, C]), 0, [1, 2])
    u = C - A
    perp = noise - (noise @ u) / (u @ u) * u  # what no weights of A, C can explain
    assert f.affine.residual == pytest.approx(np.linalg.norm(perp), rel=1e-6)
    assert f.verdict == "trained further"
    f = fit_group("g", _sums([RNG.normal(size=N), A, C]), 0, [1, 2])
    assert f.verdict == "not a merge"
