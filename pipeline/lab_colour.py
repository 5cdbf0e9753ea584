"""Reinhard lαβ colour space (Reinhard et al. 2001; paper appendix A.2, method notes §4).

The colour distortion moves a segment's lαβ mean/std to a retrieved segment's, so every segment's
lαβ statistics are a property of the segment database (``resail decompose`` stores them) and of the
distortion (``pipeline.distort.distortions``). RGB (0–255 scale) → LMS with Reinhard's matrix → ``log10`` →
lαβ with the decorrelating matrix; ``log10(0)`` is guarded by clamping LMS at :data:`LMS_EPS`.
See :mod:`pipeline.distort.distortions` for the conventions and the exactness of the round trip.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["LMS_EPS", "SIGMA_EPS", "rgb_to_lab", "lab_to_rgb", "ln_lms", "lab_stats", "lab_stats_ln"]

#: Clamp of LMS before ``log10`` (0–255 RGB scale); see the module docstring.
LMS_EPS = 0.01
#: A source channel whose lαβ std is at most this is shifted, not scaled.
SIGMA_EPS = 1e-6

# Reinhard et al. 2001, eq. 1 (RGB -> LMS) and eq. 4 (log LMS -> lαβ).
_RGB2LMS = np.array(
    [[0.3811, 0.5783, 0.0402],
     [0.1967, 0.7244, 0.0782],
     [0.0241, 0.1288, 0.8444]],
    dtype=np.float64,
)
_LMS2RGB = np.linalg.inv(_RGB2LMS)
_LOGLMS2LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1.0, 1.0, 1.0],
     [1.0, 1.0, -2.0],
     [1.0, -1.0, 0.0]]
)
_LAB2LOGLMS = np.linalg.inv(_LOGLMS2LAB)
# The same maps on natural logs (ln LMS = ln10 · log10 LMS), and float32 copies for the fast path.
_LNLMS2LAB = _LOGLMS2LAB / np.log(10.0)
_LAB2LNLMS = _LAB2LOGLMS * np.log(10.0)
_RGB2LMS_32 = _RGB2LMS.astype(np.float32)
_LMS2RGB_32 = _LMS2RGB.astype(np.float32)
_LNLMS2LAB_32 = _LNLMS2LAB.astype(np.float32)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """RGB ``[..., 3]`` (uint8 or float, 0–255 scale) → Reinhard lαβ ``float64 [..., 3]``.

    LMS is clamped at :data:`LMS_EPS` before ``log10`` (guards black pixels).
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.shape[-1:] != (3,):
        raise ValueError(f"rgb_to_lab: expected [..., 3], got shape {rgb.shape}")
    lms = rgb @ _RGB2LMS.T
    np.maximum(lms, LMS_EPS, out=lms)
    return np.log10(lms) @ _LOGLMS2LAB.T


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Reinhard lαβ ``[..., 3]`` → RGB ``float64 [..., 3]`` clipped to [0, 255] (not rounded)."""
    lab = np.asarray(lab, dtype=np.float64)
    if lab.shape[-1:] != (3,):
        raise ValueError(f"lab_to_rgb: expected [..., 3], got shape {lab.shape}")
    lms = np.power(10.0, lab @ _LAB2LOGLMS.T)
    rgb = lms @ _LMS2RGB.T
    return np.clip(rgb, 0.0, 255.0, out=rgb)


def lab_stats(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel lαβ ``(mean[3], std[3])`` (population std) of RGB pixels ``[n, 3]`` (n ≥ 1).

    Converted in float32 (the transcendental part dominated the stage in float64), accumulated in
    float64: within ~1e-5 of the float64 :func:`rgb_to_lab` statistics."""
    pixels = np.asarray(pixels).reshape(-1, 3)
    if pixels.shape[0] == 0:
        raise ValueError("lab_stats: no pixels")
    return lab_stats_ln(ln_lms(pixels))


def lab_stats_ln(ln: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`lab_stats` of pixels already converted by :func:`ln_lms` (``[n, 1, 3]``, n ≥ 1)."""
    mean, std = cv2.meanStdDev(cv2.transform(ln, _LNLMS2LAB_32))  # float64 accumulation, population std
    return mean.reshape(3), std.reshape(3)


def ln_lms(rgb: np.ndarray) -> np.ndarray:
    """``ln(max(LMS, LMS_EPS))`` of RGB ``[..., 3]`` (uint8) as float32 ``[n, 1, 3]`` (row-major pixels).

    The first half of both the colour statistics and the colour transfer; per pixel, so converting a
    whole image once gives each crop's values exactly (``pipeline.distort.distortions`` does that once per
    image instead of once per segment and variant). ``cv2.transform`` for the 3×3 products: NumPy's
    matmul hands ``(n, 3) @ (3, 3)`` to a threaded BLAS whose spinning threads cost 20–50× the
    arithmetic on a loaded machine (profiled)."""
    x = np.asarray(rgb).reshape(-1, 1, 3).astype(np.float32)
    lms = cv2.transform(x, _RGB2LMS_32)
    np.maximum(lms, np.float32(LMS_EPS), out=lms)
    cv2.log(lms, lms)
    return lms
