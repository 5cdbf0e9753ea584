"""Kernel Inception Distance (Bińkowski et al., "Demystifying MMD GANs", ICLR 2018).

KID is the squared maximum mean discrepancy between two sets of Inception pool3 features (the same
2048-d features as FID: :func:`resail_train.metrics.fid.inception_features`) under the cubic
polynomial kernel ``k(x, y) = (xᵀy / d + 1)³`` (``d`` = feature dimension), estimated without bias:

    MMD²ᵤ(X, Y) = Σ_{i≠j} k(xᵢ, xⱼ) / (m(m−1)) + Σ_{i≠j} k(yᵢ, yⱼ) / (m(m−1)) − 2 Σ_{i,j} k(xᵢ, yⱼ) / m²

for two subsets of ``m`` features each. As torch-fidelity and clean-fid compute it, the estimate is
repeated over ``num_subsets`` = 100 random subsets of size ``m = min(1000, N_fake, N_real)`` drawn
without replacement (independently from each set), and KID is the mean of the 100 values, reported
with their standard deviation (``np.std``, as torch-fidelity's ``kernel_inception_distance_std``).
The subsets come from ``numpy.random.RandomState(seed)``: the same features always give the same
numbers. Being unbiased, the estimate can be slightly negative when both sets come from one
distribution (and is not exactly 0 for a set against itself).
"""
from __future__ import annotations

import numpy as np

__all__ = ["KID_SUBSETS", "KID_SUBSET_SIZE", "KID_SEED", "polynomial_kernel", "mmd2_unbiased", "kid_from_features"]

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 2020  # torch-fidelity's default seed; any fixed value makes the result deterministic


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """``k(x, y) = (xᵀy / d + coef0)^degree`` for every row pair of ``x [m, d]`` and ``y [n, d]`` → ``[m, n]``."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² of two equal-size feature sets ``[m, d]`` under the cubic polynomial kernel."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    m = x.shape[0]
    if y.shape[0] != m or m < 2:
        raise ValueError(f"need two feature sets of the same size >= 2, got {x.shape[0]} and {y.shape[0]}")
    kxx = polynomial_kernel(x, x)
    kyy = polynomial_kernel(y, y)
    kxy = polynomial_kernel(x, y)
    off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off - 2.0 * kxy.sum() / (m * m))


def kid_from_features(f_fake: np.ndarray, f_real: np.ndarray, num_subsets: int = KID_SUBSETS,
                      subset_size: int = KID_SUBSET_SIZE, seed: int = KID_SEED) -> tuple[float, float]:
    """``(kid, kid_std)`` of two feature sets ``[N1, D]``, ``[N2, D]`` (see the module docstring)."""
    a = np.asarray(f_fake, np.float64)
    b = np.asarray(f_real, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be [N, D] with one D, got {a.shape} and {b.shape}")
    m = min(int(subset_size), a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 feature vectors per set")
    if num_subsets < 1:
        raise ValueError("num_subsets must be >= 1")
    rng = np.random.RandomState(seed)
    values = np.empty(int(num_subsets), np.float64)
    for s in range(int(num_subsets)):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        values[s] = mmd2_unbiased(x, y)
    return float(values.mean()), float(values.std())
