"""KID: the unbiased polynomial-kernel MMD² against a hand-written double loop, subsets, determinism."""
from __future__ import annotations

import math

import numpy as np
import pytest

from resail_train.metrics.kid import kid_from_features, mmd2_unbiased


def _kernel(u, v) -> float:
    d = len(u)
    dot = 0.0
    for a, b in zip(u, v):
        dot += float(a) * float(b)
    return (dot / d + 1.0) ** 3


def _mmd2_by_hand(x, y) -> float:
    """Bińkowski et al. eq. (3): the unbiased estimator, written out pair by pair."""
    m = len(x)
    sxx = syy = sxy = 0.0
    for i in range(m):
        for j in range(m):
            if i != j:
                sxx += _kernel(x[i], x[j])
                syy += _kernel(y[i], y[j])
            sxy += _kernel(x[i], y[j])
    return sxx / (m * (m - 1)) + syy / (m * (m - 1)) - 2.0 * sxy / (m * m)


@pytest.mark.parametrize("m,d,shift", [(6, 4, 0.0), (9, 7, 0.5), (12, 3, 2.0)])
def test_mmd2_matches_double_loop(m, d, shift):
    rng = np.random.default_rng(m * 10 + d)
    x = rng.normal(size=(m, d))
    y = rng.normal(size=(m, d)) + shift
    assert math.isclose(mmd2_unbiased(x, y), _mmd2_by_hand(x, y), rel_tol=1e-10, abs_tol=1e-12)


def test_kid_with_whole_sets_is_the_direct_value():
    """Subset size >= N: every subset is the whole set (reordered), so mean = the direct MMD², std ≈ 0."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 5))
    y = rng.normal(size=(10, 5)) * 1.5 + 0.3
    kid, std = kid_from_features(x, y, num_subsets=7, subset_size=1000)
    assert math.isclose(kid, _mmd2_by_hand(x, y), rel_tol=1e-9)
    assert std < 1e-9


def test_kid_subsets_are_seeded_and_sized():
    """N1 != N2: subsets of min(1000, N1, N2) drawn by RandomState(seed); reproduced here by hand."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(14, 3))
    y = rng.normal(size=(9, 3)) + 0.4
    kid, std = kid_from_features(x, y, num_subsets=5, seed=7)
    assert kid_from_features(x, y, num_subsets=5, seed=7) == (kid, std)  # deterministic
    draw = np.random.RandomState(7)
    vals = []
    for _ in range(5):
        xs = x[draw.choice(14, 9, replace=False)]
        ys = y[draw.choice(9, 9, replace=False)]
        vals.append(_mmd2_by_hand(xs, ys))
    assert math.isclose(kid, float(np.mean(vals)), rel_tol=1e-9)
    assert math.isclose(std, float(np.std(vals)), rel_tol=1e-6, abs_tol=1e-12)
    assert kid_from_features(x, y, num_subsets=5, seed=8) != (kid, std)


def test_kid_separates_distributions_and_refuses_tiny_sets():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    far = rng.normal(size=(40, 8)) + 3.0
    same, _ = kid_from_features(a, b, num_subsets=20)
    diff, _ = kid_from_features(a, far, num_subsets=20)
    assert abs(same) < 0.1 * diff
    with pytest.raises(ValueError, match="at least 2"):
        kid_from_features(a[:1], b)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        kid_from_features(a, b[:, :3])
