"""Distortions of the ground-truth image (paper appendix A.2; method notes §4).

Pure library: arrays in, arrays out, no file I/O. A ground-truth image is decomposed into its segments,
every segment is distorted independently (colour, shape, resolution, in that order — the order of the
paper), and the distorted segments are recomposed into a *distorted ground truth* that mimics the
retrieval-based guidance (same kinds of defects: wrong colours, shape gaps, blur).

Array conventions
-----------------
- images / crops: ``H×W×3`` ``uint8`` RGB; masks: ``H×W`` ``bool``;
- boxes: ``(y0, x0, y1, x1)`` half-open, in image pixels; a segment's mask crop has the box's shape;
- points: ``(N, 2)`` float ``(x, y)`` = (column, row), pixel centres at integers;
- colours in lαβ: ``float64`` ``[..., 3]`` (``l``, ``α``, ``β``).

Colour (Reinhard et al. 2001)
-----------------------------
RGB (0–255 scale, whatever the dtype) → LMS with Reinhard's matrix → ``log10`` → lαβ with the
decorrelating matrix ``diag(1/√3, 1/√6, 1/√2)·[[1,1,1],[1,1,−2],[1,−1,0]]``. The inverse uses the
*exact* matrix inverses (the paper prints a 4-decimal rounding of the LMS→RGB matrix), so the round
trip is exact up to floating point. ``log10(0)`` is guarded by clamping LMS at ``LMS_EPS = 0.01``:
that is below the smallest LMS component of any non-black ``uint8`` colour (0.0241 for RGB (1,0,0)),
so every ``uint8`` colour round-trips exactly; pure black maps to a finite lαβ value
(l ≈ −3.46) that converts back to RGB ≈ 0.01, i.e. 0 after rounding. Colour transfer is per channel
``x' = (x − μs)·σt/σs + μt`` with population statistics (ddof 0); a source channel with
``σs ≤ SIGMA_EPS`` is only shifted (ratio 1), never divided by zero.

Shape (thin-plate spline)
-------------------------
``n_points = 10`` points evenly spaced by arc length on the largest external contour (largest by
enclosed area, ties by point count, then first), ``n_moved = 3`` of them chosen without replacement and
each axis shifted by ``U(−amp, amp)·k·√area`` (amp 0.4, k 0.22, area = mask pixel count). A TPS is
estimated from the **target** points to the **source** points (the backward map), so every output
pixel looks up its source position: RGB bilinear (``cv2.remap``, border replicated), mask nearest
(outside the crop = background). The crop keeps its size: pixels warped outside it are lost. This
mirrors the retrieval guidance, whose retrieved segment is resized *into the query's bounding box*
and never extends beyond it. Degenerate cases return the input unchanged with ``info["skipped"]`` set
(``"empty_mask"``, ``"contour_too_short"``, ``"duplicate_points"``, ``"collinear_points"``,
``"degenerate_targets"``, ``"estimate_failed"``).

Resolution
----------
Bicubic downsample by ``scale`` then bicubic upsample to the original size, both with
:func:`pipeline.resize.resize_image` (PIL ``Image.BICUBIC``, antialiased when shrinking — the
released code's ``resize(new_size, Image.BICUBIC)`` twice; ``cv2.INTER_CUBIC`` aliased at small
scales). The mask is returned unchanged (as in the released code: the resolution distortion
degrades the segment *image*; shape defects are the shape distortion's job). At ``scale`` 1 (or any
scale that rounds to the original size) the crop is returned exactly.

Which scale: the released code draws ``ratio ~ U(0.5, 1)`` and shrinks the image at its *source*
size (before the loader's resize to the working size), so after that resize only
``min(1, ratio·source/working)`` of the working resolution is lost per axis
(:func:`effective_scale`); a Cityscapes frame at 2048 → 512 keeps all of it. ``resolution_factor``
(per axis ``source/working``, default 1: the crop's own size is the reference) brings that in.

Recomposition (:func:`distort_image`)
-------------------------------------
Only the segments marked ``paste`` (default: all; the stage passes "has a retrieval match") are
distorted and pasted, on a **black canvas** (default, ``canvas="black"``): ignore/void pixels,
unmatched segments and segments too small to be queries stay 0, exactly where the retrieval
guidance is black — the released code composes its distorted GT the same way (segments without a
match are skipped). ``canvas="real"`` keeps the earlier behaviour: the real image outside the
pasted segments' original masks. Each distorted segment is pasted where its distorted mask says,
stuff first, then things, each group larger (original area) first, ties by input order;
overwrite, never sum. With ``paste_rules="a1"`` (default) the pastes follow the retrieval
composition rules of appendix A.1 (method notes §3): a stuff segment only paints inside its own
original mask; a thing paints inside its own mask and on pixels of *stuff* segments (matched or
not: the label map's stuff, as rule 3), never on other things' pixels. With
``paste_rules="free"`` the distorted mask alone decides (restricted to the union of all
segments). Either way shape distortion leaves black holes, as real retrieval guidance does. The
returned ``valid`` map marks every pasted pixel (the stage stores it beside the variant, as
``guidance.h5`` stores the guidance's).

Randomness
----------
Everything is a deterministic function of the ``np.random.Generator`` passed in. Per segment, in
input order, :func:`distort_image` draws exactly one fixed block from it — 3 gate uniforms
(colour, shape, resolution) then 3 child seeds — whatever fires. Each kind then draws only from its
own child generator. So changing one kind's probability (or dropping it from ``kinds``) never changes
the random numbers the other kinds, or the other segments, see.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pipeline.lab_colour import (  # the colour space lives with the segment statistics it defines
    _LAB2LNLMS,
    _LMS2RGB_32,
    _LNLMS2LAB,
    LMS_EPS,
    SIGMA_EPS,
    lab_stats,
    lab_stats_ln,
    lab_to_rgb,
    ln_lms,
    rgb_to_lab,
)
from pipeline.resize import resize_image

__all__ = [
    "KINDS",
    "CANVASES",
    "ThinPlateSpline",
    "LMS_EPS",
    "SIGMA_EPS",
    "rgb_to_lab",
    "lab_to_rgb",
    "lab_stats",
    "color_transfer",
    "contour_control_points",
    "estimate_backward_tps",
    "tps_warp",
    "shape_distort",
    "resolution_distort",
    "effective_scale",
    "distort_image",
    "distort_variants",
    "tps_grid_step",
]

KINDS = ("color", "shape", "resolution")
#: What a distorted variant shows outside its pasted segments (see :func:`distort_image`).
CANVASES = ("black", "real")


# Pixels per chunk when evaluating the TPS on a dense grid (bounds the N×10 kernel matrix).
TPS_GRID_STEP = 4  # spline evaluated exactly every 4 px, bilinear between (see _dense_map)
#: Crops whose shorter side is at least this use twice the step, at twice this side four times it,
#: … (:func:`tps_grid_step`).
TPS_COARSE_SIDE = 256
#: The coarsest node spacing (crops of shorter side ≥ 512 px; measured interpolation error ≤ 1.1 px there,
#: against shifts of ~40–90 px at that size).
TPS_MAX_STEP = 16
_TPS_CHUNK = 1 << 18


# --------------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------------
def color_transfer(
    src_rgb: np.ndarray,
    target_stats: tuple[Sequence[float], Sequence[float]],
    source_stats: tuple[Sequence[float], Sequence[float]] | None = None,
) -> np.ndarray:
    """Reinhard colour transfer of RGB pixels ``[..., 3]`` towards lαβ ``target_stats=(mean, std)``.

    Per lαβ channel ``x' = (x − μs)·σt/σs + μt``; ``source_stats`` defaults to
    ``lab_stats(src_rgb)`` (pass the statistics of a masked subset to transfer a whole crop with
    its segment's statistics). Channels with ``σs ≤ SIGMA_EPS`` are shifted only. Returns ``uint8``
    of the input's shape, clipped and rounded (``np.rint``). Identity (±1 per channel) when the
    target statistics equal the source statistics.
    """
    src = np.asarray(src_rgb)
    if src.shape[-1:] != (3,):
        raise ValueError(f"color_transfer: expected [..., 3], got shape {src.shape}")
    if src.size == 0:
        return np.zeros(src.shape, dtype=np.uint8)
    return _transfer_ln(ln_lms(src), src.shape, target_stats, source_stats)


def _transfer_ln(ln: np.ndarray, shape: tuple[int, ...], target_stats, source_stats) -> np.ndarray:
    """:func:`color_transfer` of pixels already in ln-LMS (:func:`ln_lms`, ``[n, 1, 3]`` float32).

    Vectorised: lαβ is linear in ln LMS, so the per-channel transfer is one 3×3 affine map in
    ln-LMS space (``A = Mᵀ·diag(r)·M⁻ᵀ``); a pixel then costs one small product, one exp and the
    product back to RGB, in float32 (the ln-LMS half is shared: the stage converts each image once).
    """
    mu_t = np.asarray(target_stats[0], dtype=np.float64).reshape(3)
    sd_t = np.asarray(target_stats[1], dtype=np.float64).reshape(3)
    if source_stats is None:
        mu_s, sd_s = lab_stats_ln(ln)
    else:
        mu_s = np.asarray(source_stats[0], dtype=np.float64).reshape(3)
        sd_s = np.asarray(source_stats[1], dtype=np.float64).reshape(3)
    ratio = np.where(sd_s > SIGMA_EPS, sd_t / np.where(sd_s > SIGMA_EPS, sd_s, 1.0), 1.0)
    # ln LMS' = (ln LMS · Lᵀ − μs)·r + μt, back through L⁻¹ (L = ln-LMS → lαβ).
    lin = _LNLMS2LAB.T @ np.diag(ratio) @ _LAB2LNLMS.T
    bias = (mu_t - mu_s * ratio) @ _LAB2LNLMS.T
    out = cv2.transform(ln, np.hstack([lin.T, bias[:, None]]).astype(np.float32))
    cv2.exp(out, out)
    rgb = cv2.transform(out, _LMS2RGB_32)
    # clip to [0, 255] and round half to even (np.rint's rule) in two passes: negatives to 0, then
    # OpenCV's convertScaleAbs (|x| of non-negatives, saturate_cast: cvRound, saturating at 255).
    np.maximum(rgb, np.float32(0.0), out=rgb)
    return cv2.convertScaleAbs(rgb).reshape(shape)


# --------------------------------------------------------------------------------------------------
# Shape
# --------------------------------------------------------------------------------------------------
def _check_crop(rgb: np.ndarray, mask: np.ndarray, where: str) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"{where}: rgb must be H×W×3 uint8, got {rgb.shape} {rgb.dtype}")
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"{where}: mask shape {mask.shape} != rgb shape {rgb.shape[:2]}")


def _largest_contour(mask: np.ndarray) -> np.ndarray | None:
    """Largest external contour (area, then point count, then first) as ``(m, 2)`` float (x, y)."""
    contours, _ = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    if not contours:
        return None
    best = max(
        range(len(contours)),
        key=lambda i: (cv2.contourArea(contours[i]), len(contours[i]), -i),
    )
    return contours[best].reshape(-1, 2).astype(np.float64)


def _sample_closed_curve(points: np.ndarray, n: int) -> np.ndarray:
    """``n`` points evenly spaced by arc length along the closed polyline ``points`` (from point 0)."""
    m = points.shape[0]
    nxt = np.roll(points, -1, axis=0)
    seg = np.linalg.norm(nxt - points, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    total = cum[-1]
    if m == 1 or total <= 0:
        return np.repeat(points[:1], n, axis=0)
    t = np.arange(n, dtype=np.float64) * (total / n)
    idx = np.clip(np.searchsorted(cum, t, side="right") - 1, 0, m - 1)
    frac = np.divide(t - cum[idx], seg[idx], out=np.zeros(n), where=seg[idx] > 0)
    return points[idx] + frac[:, None] * (nxt[idx] - points[idx])


def contour_control_points(mask: np.ndarray, n: int = 10) -> np.ndarray:
    """``(n, 2)`` float ``(x, y)`` points evenly spaced by arc length on the largest external contour.

    Contour from ``cv2.findContours(RETR_EXTERNAL, CHAIN_APPROX_NONE)`` (pixel centres), sampled from
    its first point (OpenCV's top-left start). Points may repeat for contours shorter than ``n``.
    Raises ``ValueError`` for an empty mask.
    """
    contour = _largest_contour(np.asarray(mask, dtype=bool))
    if contour is None:
        raise ValueError("contour_control_points: empty mask")
    return _sample_closed_curve(contour, n)


def _degeneracy(points: np.ndarray) -> str | None:
    """``"duplicate_points"`` / ``"collinear_points"`` / ``None`` for a set of control points."""
    r = np.round(points, 6)
    same = (r[:, None, :] == r[None, :, :]).all(axis=-1)  # equal rows after rounding (n is ~10)
    np.fill_diagonal(same, False)
    if same.any():
        return "duplicate_points"
    # Singular values of the centred n×2 points = square roots of the eigenvalues of their 2×2
    # scatter matrix [[a, b], [b, c]] (closed form; an SVD per call cost more than the rest).
    c = points - points.mean(axis=0)
    a, b, d = float(c[:, 0] @ c[:, 0]), float(c[:, 0] @ c[:, 1]), float(c[:, 1] @ c[:, 1])
    root = np.hypot(0.5 * (a - d), b)
    big, small = 0.5 * (a + d) + root, max(0.5 * (a + d) - root, 0.0)
    if np.sqrt(small) <= 1e-6 * max(1.0, np.sqrt(big)):
        return "collinear_points"
    return None


class ThinPlateSpline:
    """A 2-D thin-plate spline ``f(p) = a0 + A·p + Σ wᵢ·U(|p − cᵢ|)``, ``U(r) = r²·ln r``, that
    interpolates ``n`` control points exactly (fitted by one ``(n+3)²`` linear solve).

    Called on ``(m, 2)`` points (x, y) it returns ``(m, 2)``. Small and self-contained: scikit-image's
    estimator cost more in validation overhead than the fit itself for the 10 points used here.
    """

    def __init__(self, centres: np.ndarray, values: np.ndarray) -> None:
        c = np.asarray(centres, dtype=np.float64)
        n = c.shape[0]
        system = np.zeros((n + 3, n + 3))
        system[:n, :n] = self._kernel(np.linalg.norm(c[:, None] - c[None], axis=-1))
        system[:n, n] = system[n, :n] = 1.0
        system[:n, n + 1:] = c
        system[n + 1:, :n] = c.T
        rhs = np.zeros((n + 3, 2))
        rhs[:n] = values
        self.coef = np.linalg.solve(system, rhs)  # LinAlgError when singular
        self.centres = c

    @staticmethod
    def _kernel(r: np.ndarray) -> np.ndarray:
        return ThinPlateSpline._kernel_sq(r * r)

    @staticmethod
    def _kernel_sq(r2: np.ndarray) -> np.ndarray:
        """``U`` from squared distances: ``r² ln r = ½·r²·ln r²`` (no square root); U(0) = 0."""
        return 0.5 * r2 * np.log(np.maximum(r2, 1e-300))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        n = self.centres.shape[0]
        # Explicit sums over the ~10 centres: a matmul would go to the threaded BLAS (see lab_colour.ln_lms).
        out = self.coef[n] + p[:, :1] * self.coef[n + 1] + p[:, 1:] * self.coef[n + 2]
        x, y = p[:, 0], p[:, 1]
        for (cx, cy), w in zip(self.centres, self.coef[:n]):
            dx, dy = x - cx, y - cy
            u = self._kernel_sq(dx * dx + dy * dy)
            out += u[:, None] * w
        return out


def estimate_backward_tps(src_pts: np.ndarray, dst_pts: np.ndarray) -> ThinPlateSpline | None:
    """TPS mapping ``dst_pts`` (target, output positions) → ``src_pts`` (where to read).

    Returns None when either point set has duplicates or is collinear (the system is then singular
    or meaningless), when the solve fails, or when the fit does not interpolate the control points
    (residual > 1e-3 px).
    """
    src = np.asarray(src_pts, dtype=np.float64)
    dst = np.asarray(dst_pts, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 3:
        return None
    if _degeneracy(src) is not None or _degeneracy(dst) is not None:
        return None
    try:
        tform = ThinPlateSpline(dst, src)
    except np.linalg.LinAlgError:
        return None
    residual = np.abs(tform(dst) - src).max()
    if not np.isfinite(residual) or residual > 1e-3:
        return None
    return tform


def _eval_points(tform, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Evaluate the transform at the grid ``xs × ys`` → [len(ys), len(xs), 2] (x, y), in chunks."""
    gx, gy = np.meshgrid(xs, ys)
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float64)
    coords = np.empty_like(grid)
    for start in range(0, grid.shape[0], _TPS_CHUNK):
        coords[start:start + _TPS_CHUNK] = tform(grid[start:start + _TPS_CHUNK])
    return coords.reshape(len(ys), len(xs), 2)


def tps_grid_step(h: int, w: int) -> int:
    """Spline node spacing of an ``h×w`` crop: :data:`TPS_GRID_STEP` below :data:`TPS_COARSE_SIDE`,
    doubled each time the shorter side doubles beyond it, at most :data:`TPS_MAX_STEP`.

    The shifts grow with √area and spread over a length ∝ √area, so the warp's curvature falls as
    1/side and the interpolation error (∝ step² · curvature) grows only ∝ step when the step grows
    with the side: measured worst case 0.3 px at step 4, 0.5 px at 8, 1.1 px at 16 (shorter side 512;
    half that at 1024), against shifts of up to 0.4·0.22·√area px (~50–90 px there). Large crops (Cityscapes'
    road, sky, buildings) then cost a few thousand spline nodes instead of tens of thousands."""
    step, side = TPS_GRID_STEP, min(h, w)
    while step < TPS_MAX_STEP and side >= TPS_COARSE_SIDE * (step // TPS_GRID_STEP):
        step *= 2
    return step


def _dense_map(tform, h: int, w: int, step: int = TPS_GRID_STEP) -> np.ndarray:
    """Dense backward map, float32 ``h×w×2`` (x, y), of a crop (the layout ``cv2.remap`` takes as one map).

    The spline is smooth at the scale of a few pixels, so it is evaluated exactly on nodes every
    ``step`` pixels (0, step, 2·step, … up to the first node at or past the last row/column) and
    interpolated bilinearly in between — ``cv2.warpAffine`` of the node grid by ``1/step`` (``step``
    a power of two, so the positions are exact in OpenCV's 1/32-pixel fixed point; it equals a
    ``cv2.remap`` at positions ``x/step`` without building them): exact at the nodes and for affine
    maps (identity included), within ~0.3 px elsewhere for the warps of shape_distort, and ~step²
    times cheaper than evaluating every pixel.
    """
    if h < 2 * step or w < 2 * step:
        return _eval_points(tform, np.arange(w), np.arange(h)).astype(np.float32)
    nx = -(-(w - 1) // step) + 1
    ny = -(-(h - 1) // step) + 1
    nodes = _eval_points(tform, np.arange(nx) * step, np.arange(ny) * step).astype(np.float32)
    scale = np.array([[1.0 / step, 0.0, 0.0], [0.0, 1.0 / step, 0.0]])
    return cv2.warpAffine(nodes, scale, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def tps_warp(
    rgb: np.ndarray, mask: np.ndarray, src_pts: np.ndarray, dst_pts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Warp a crop so the content at ``src_pts`` moves to ``dst_pts`` (same crop size).

    RGB bilinear with replicated border, mask nearest with outside = False. Raises ``ValueError``
    when the TPS cannot be estimated.
    """
    rgb = np.asarray(rgb)
    mask = np.asarray(mask, dtype=bool)
    _check_crop(rgb, mask, "tps_warp")
    tform = estimate_backward_tps(src_pts, dst_pts)
    if tform is None:
        raise ValueError("tps_warp: thin-plate spline estimation failed")
    h, w = mask.shape
    xy = _dense_map(tform, h, w, tps_grid_step(h, w))
    out_rgb = cv2.remap(rgb, xy, None, interpolation=cv2.INTER_LINEAR,  # (a crop view is fine: rows contiguous)
                        borderMode=cv2.BORDER_REPLICATE)
    out_mask = cv2.remap(mask.view(np.uint8), xy, None, interpolation=cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    return out_rgb, out_mask


def shape_distort(
    rgb: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    n_points: int = 10,
    n_moved: int = 3,
    amp: float = 0.4,
    k: float = 0.22,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """TPS shape distortion of one segment crop → ``(rgb, mask, info)`` (crop size unchanged).

    Draws, always and in this order, ``rng.choice(n_points, n_moved, replace=False)`` and
    ``rng.uniform(-amp, amp, (n_moved, 2))`` — also when the segment ends up skipped. Each chosen
    point moves by ``uniform·k·√area`` per axis. ``info``: ``skipped`` (None or a reason; then the
    returned arrays are copies of the inputs), ``moved`` (indices), ``shifts`` (pixels, (dx, dy)),
    and when the contour was usable ``src``/``dst`` control points (x, y).
    """
    rgb = np.asarray(rgb)
    mask = np.asarray(mask, dtype=bool)
    _check_crop(rgb, mask, "shape_distort")
    moved = rng.choice(n_points, size=n_moved, replace=False)
    unit = rng.uniform(-amp, amp, size=(n_moved, 2))
    area = int(mask.sum())
    shifts = unit * (k * np.sqrt(area))
    info: dict[str, Any] = {
        "skipped": None,
        "moved": [int(i) for i in moved],
        "shifts": shifts.tolist(),
    }

    def skip(reason: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        info["skipped"] = reason
        return rgb.copy(), mask.copy(), info

    if area == 0:
        return skip("empty_mask")
    contour = _largest_contour(mask)
    if contour is None or contour.shape[0] < n_points:
        return skip("contour_too_short")
    src = _sample_closed_curve(contour, n_points)
    info["src"] = src.tolist()
    reason = _degeneracy(src)
    if reason is not None:
        return skip(reason)
    dst = src.copy()
    dst[moved] += shifts
    info["dst"] = dst.tolist()
    if _degeneracy(dst) is not None:
        return skip("degenerate_targets")
    try:
        out_rgb, out_mask = tps_warp(rgb, mask, src, dst)
    except ValueError:
        return skip("estimate_failed")
    return out_rgb, out_mask, info


# --------------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------------
def effective_scale(scale: float, factor: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float]:
    """``(scale_y, scale_x)`` to apply at the working size for a ``scale`` drawn against a reference
    ``factor = (source_h/working_h, source_w/working_w)`` times larger: ``min(1, scale·factor)`` per axis.

    The released code shrinks the source image by ``scale`` and later resizes it to the working size;
    what survives at the working size is the smaller of the two bandwidths. ``factor`` 1 gives ``scale``.
    """
    fy, fx = (float(v) for v in factor)
    return min(1.0, float(scale) * fy), min(1.0, float(scale) * fx)


def resolution_distort(
    rgb: np.ndarray, mask: np.ndarray, scale: float | tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Bicubic down (× ``scale``, 0 < scale ≤ 1, one factor or ``(scale_y, scale_x)``) and back up to
    the crop size, antialiased (:func:`pipeline.resize.resize_image`) → ``(rgb, mask)``.

    Small size = ``max(1, round(side·scale))`` per side. The mask is returned unchanged (a copy).
    Exact identity when the small size equals the original size (e.g. ``scale == 1``).
    """
    rgb = np.asarray(rgb)
    mask = np.asarray(mask, dtype=bool)
    _check_crop(rgb, mask, "resolution_distort")
    sy, sx = (scale, scale) if np.ndim(scale) == 0 else scale
    for s in (sy, sx):
        if not 0.0 < s <= 1.0:
            raise ValueError(f"resolution_distort: scale must be in (0, 1], got {scale}")
    h, w = mask.shape
    sh, sw = max(1, round(h * sy)), max(1, round(w * sx))
    if (sh, sw) == (h, w):
        return rgb.copy(), mask.copy()
    small = resize_image(rgb, sh, sw)
    back = resize_image(small, h, w)
    return back.reshape(h, w, 3), mask.copy()


# --------------------------------------------------------------------------------------------------
# Whole image
# --------------------------------------------------------------------------------------------------
def _resolve_color_target(
    color_targets: Any, index: int, class_id: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, Any] | None:
    if color_targets is None:
        return None
    if callable(color_targets):
        target = color_targets(index, class_id, rng)
    else:
        target = color_targets[index]
    if target is None:
        return None
    if len(target) not in (2, 3):
        raise ValueError(f"colour target of segment {index} must be (mean, std[, id]), got {target!r}")
    mean = np.asarray(target[0], dtype=np.float64).reshape(3)
    std = np.asarray(target[1], dtype=np.float64).reshape(3)
    target_id = target[2] if len(target) == 3 else None
    if isinstance(target_id, np.generic):
        target_id = target_id.item()
    return mean, std, target_id


def distort_image(
    image: np.ndarray,
    segments: Sequence[tuple],
    color_targets: Callable[[int, int, np.random.Generator], tuple | None] | Sequence[tuple | None] | None,
    rng: np.random.Generator,
    probs: Mapping[str, float] | None = None,
    kinds: Sequence[str] = KINDS,
    *,
    scale_range: tuple[float, float] = (0.5, 1.0),
    paste_rules: str = "a1",
    shape_kwargs: Mapping[str, Any] | None = None,
    paste: Sequence[bool] | None = None,
    canvas: str = "black",
    resolution_factor: tuple[float, float] = (1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Distort the segments of ``image`` independently and recompose → ``(uint8 image, valid, records)``.

    ``segments``: ``(box, mask_crop, class_id)`` or ``(box, mask_crop, class_id, is_thing)`` with
    ``box = (y0, x0, y1, x1)`` half-open and ``mask_crop`` bool of the box's shape (missing
    ``is_thing`` = stuff). ``color_targets``: None (no colour distortion), a sequence aligned with
    ``segments`` of ``(mean, std)`` / ``(mean, std, target_id)`` / None in lαβ, or a callable
    ``f(segment_index, class_id, rng) -> same`` (called only when colour fires, with the colour
    child generator — use it to pick a random same-class segment). ``probs``: per-kind probability
    (missing kinds: 1.0, as the released code applies all three); a kind not in ``kinds`` never
    fires. ``scale_range``: the resolution scale is ``U(*scale_range)``. ``paste_rules``: ``"a1"``
    or ``"free"`` (module docstring). ``shape_kwargs``: passed to :func:`shape_distort`.
    ``paste``: per segment, whether it is distorted and pasted (default: all) — the driver passes
    "has a retrieval match", so the variant shows exactly the segments the guidance pastes; a
    segment not pasted still draws its block of random numbers (the others' draws do not depend
    on which segments match) but costs nothing else. ``canvas``: ``"black"`` (default: everything
    not pasted is 0, as the released code composes its distorted GT) or ``"real"`` (the real image
    outside the pasted segments' original masks). ``valid`` (H×W bool): pixels that received a
    paste, plus, on the real canvas, the real pixels outside the pasted segments.
    ``resolution_factor``: ``(source_h/H, source_w/W)`` of the image the drawn resolution scale refers
    to (:func:`effective_scale`; default 1: the image itself, as before).

    Each record: ``segment`` (input index), ``class_id``, ``is_thing``, ``box``, ``area``,
    ``pasted``, ``paste_rank`` (None when not pasted), ``applied`` (kinds actually applied, in order), and per kind ``color`` /
    ``shape`` / ``resolution``: None when it did not fire, else a dict — colour
    ``{target_id, mean, std}`` or ``{skipped: "no_target"}``; shape: :func:`shape_distort`'s info;
    resolution ``{scale, effective}`` (drawn scale, applied ``[scale_y, scale_x]``). Records are
    JSON-serialisable.
    """
    (out, valid, records), = distort_variants(
        image, segments, color_targets, [rng], probs, kinds, scale_range=scale_range, paste_rules=paste_rules,
        shape_kwargs=shape_kwargs, paste=paste, canvas=canvas, resolution_factor=resolution_factor)
    return out, valid, records


@dataclass
class _Prepared:
    """What every variant of one image shares (computed once: validation, the paint zones, the paste
    order, and lazily each segment's source lαβ statistics)."""

    box: tuple[int, int, int, int]
    mask: np.ndarray  # the original mask crop
    class_id: int
    is_thing: bool
    area: int
    pasted: bool
    zone: np.ndarray | None  # where its distorted mask may paint (paste rules); None when not pasted
    stats: tuple[np.ndarray, np.ndarray] | None = None


def _prepare(image: np.ndarray, segments: Sequence[tuple], paste: Sequence[bool] | None,
             paste_rules: str) -> list[_Prepared]:
    img_h, img_w = image.shape[:2]
    union = np.zeros((img_h, img_w), dtype=bool)
    things = np.zeros((img_h, img_w), dtype=bool)
    prepared: list[_Prepared] = []
    for index, seg in enumerate(segments):
        if len(seg) not in (3, 4):
            raise ValueError(f"distort_image: segment {index} must be (box, mask, class_id[, is_thing])")
        box, mask_crop, class_id = seg[0], np.asarray(seg[1], dtype=bool), int(seg[2])
        is_thing = bool(seg[3]) if len(seg) == 4 else False
        y0, x0, y1, x1 = (int(v) for v in box)
        if not (0 <= y0 < y1 <= img_h and 0 <= x0 < x1 <= img_w):
            raise ValueError(f"distort_image: segment {index} box {box} outside image {img_h}×{img_w}")
        if mask_crop.shape != (y1 - y0, x1 - x0):
            raise ValueError(
                f"distort_image: segment {index} mask {mask_crop.shape} != box size {(y1 - y0, x1 - x0)}"
            )
        union[y0:y1, x0:x1] |= mask_crop
        if is_thing:
            things[y0:y1, x0:x1] |= mask_crop
        pasted = True if paste is None else bool(paste[index])
        prepared.append(_Prepared((y0, x0, y1, x1), mask_crop, class_id, is_thing, int(mask_crop.sum()), pasted, None))
    for seg in prepared:  # zones need the whole union and thing map
        if not seg.pasted:
            continue
        y0, x0, y1, x1 = seg.box
        u = union[y0:y1, x0:x1]
        if paste_rules == "a1":
            seg.zone = (seg.mask | (u & ~things[y0:y1, x0:x1])) if seg.is_thing else seg.mask
        else:
            seg.zone = u
    return prepared


def distort_variants(
    image: np.ndarray,
    segments: Sequence[tuple],
    color_targets: Callable[[int, int, np.random.Generator], tuple | None] | Sequence[tuple | None] | None,
    rngs: Sequence[np.random.Generator],
    probs: Mapping[str, float] | None = None,
    kinds: Sequence[str] = KINDS,
    *,
    scale_range: tuple[float, float] = (0.5, 1.0),
    paste_rules: str = "a1",
    shape_kwargs: Mapping[str, Any] | None = None,
    paste: Sequence[bool] | None = None,
    canvas: str = "black",
    resolution_factor: tuple[float, float] = (1.0, 1.0),
) -> list[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]]:
    """:func:`distort_image` once per generator in ``rngs`` → one ``(image, valid, records)`` each.

    Variant ``v`` equals ``distort_image(..., rngs[v], ...)`` exactly; what the variants share (the
    segments' validation, paint zones and paste order, each segment's source colour statistics) is
    computed once — the stage's K variants of an image cost less than K calls."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"distort_image: image must be H×W×3 uint8, got {image.shape} {image.dtype}")
    if paste_rules not in ("a1", "free"):
        raise ValueError(f"distort_image: paste_rules must be 'a1' or 'free', got {paste_rules!r}")
    if canvas not in CANVASES:
        raise ValueError(f"distort_image: canvas must be one of {', '.join(CANVASES)}, got {canvas!r}")
    if paste is not None and len(paste) != len(segments):
        raise ValueError("distort_image: paste must have one entry per segment")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"distort_image: unknown kinds {sorted(unknown)}")
    p = {kind: 1.0 for kind in KINDS}
    if probs:
        bad = set(probs) - set(KINDS)
        if bad:
            raise ValueError(f"distort_image: unknown kinds in probs {sorted(bad)}")
        p.update({kind: float(v) for kind, v in probs.items()})
    if color_targets is not None and not callable(color_targets) and len(color_targets) != len(segments):
        raise ValueError("distort_image: color_targets must have one entry per segment")
    lo, hi = scale_range
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"distort_image: scale_range must satisfy 0 < lo <= hi <= 1, got {scale_range}")
    factor = tuple(float(v) for v in resolution_factor)
    if len(factor) != 2 or not all(0.0 < v < float("inf") for v in factor):
        raise ValueError(f"distort_image: resolution_factor must be two positive numbers, got {resolution_factor}")
    shape_kwargs = dict(shape_kwargs or {})
    prepared = _prepare(image, segments, paste, paste_rules)
    # Paste order: stuff first, then things, each group larger (original area) first, ties by input order.
    order = sorted((i for i, seg in enumerate(prepared) if seg.pasted),
                   key=lambda i: (prepared[i].is_thing, -prepared[i].area, i))
    # ln LMS of the whole image once (per pixel, so each crop's values are exact): the first half of
    # every colour transfer and source statistic of every variant.
    colour = color_targets is not None and "color" in kinds and p["color"] > 0 and bool(order)
    ln_image = ln_lms(image).reshape(image.shape) if colour else None
    return [_one_variant(image, ln_image, prepared, order, color_targets, rng, p, kinds, (lo, hi), shape_kwargs,
                         canvas, factor) for rng in rngs]


def _one_variant(image: np.ndarray, ln_image: np.ndarray | None, prepared: list[_Prepared], order: list[int],
                 color_targets: Any,
                 rng: np.random.Generator, p: Mapping[str, float], kinds: Sequence[str],
                 scale_range: tuple[float, float], shape_kwargs: dict[str, Any],
                 canvas: str, resolution_factor: tuple[float, float] = (1.0, 1.0)
                 ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    lo, hi = scale_range
    img_h, img_w = image.shape[:2]
    crops: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # index -> distorted (rgb, mask)
    records: list[dict[str, Any]] = []
    for index, seg in enumerate(prepared):
        # Fixed block of draws per segment, whatever fires.
        gates = rng.random(3)
        seeds = rng.integers(0, 2**63 - 1, size=3, dtype=np.int64)
        y0, x0, y1, x1 = seg.box
        record: dict[str, Any] = {
            "segment": index,
            "class_id": seg.class_id,
            "is_thing": seg.is_thing,
            "box": [y0, x0, y1, x1],
            "area": seg.area,
            "pasted": seg.pasted,
            "paste_rank": None,
            "applied": [],
            "color": None,
            "shape": None,
            "resolution": None,
        }
        records.append(record)
        if not seg.pasted:
            continue
        fires = {kind: (kind in kinds) and bool(gates[i] < p[kind]) for i, kind in enumerate(KINDS)}
        child = {kind: np.random.default_rng(int(seeds[i])) for i, kind in enumerate(KINDS)}
        rgb = image[y0:y1, x0:x1]
        mask = seg.mask

        if fires["color"]:
            target = _resolve_color_target(color_targets, index, seg.class_id, child["color"])
            if target is None or seg.area == 0:
                record["color"] = {"skipped": "no_target" if target is None else "empty_mask"}
            else:
                mean, std, target_id = target
                ln = ln_image[y0:y1, x0:x1]
                if seg.stats is None:  # the original crop's statistics: the same in every variant
                    seg.stats = lab_stats_ln(ln[mask].reshape(-1, 1, 3))
                rgb = _transfer_ln(ln, rgb.shape, (mean, std), seg.stats)
                record["color"] = {"target_id": target_id, "mean": mean.tolist(), "std": std.tolist()}
                record["applied"].append("color")

        if fires["shape"]:
            rgb, mask, info = shape_distort(rgb, mask, child["shape"], **shape_kwargs)
            record["shape"] = info
            if info["skipped"] is None:
                record["applied"].append("shape")

        if fires["resolution"]:
            scale = float(child["resolution"].uniform(lo, hi))
            effective = effective_scale(scale, resolution_factor)
            rgb, mask = resolution_distort(rgb, mask, effective)
            record["resolution"] = {"scale": scale, "effective": list(effective)}
            record["applied"].append("resolution")
        crops[index] = (rgb, mask)

    if canvas == "real":
        out = image.copy()
        valid = np.ones((img_h, img_w), dtype=bool)
        for index in order:  # the pasted segments' own pixels start black
            y0, x0, y1, x1 = prepared[index].box
            out[y0:y1, x0:x1][prepared[index].mask] = 0
            valid[y0:y1, x0:x1][prepared[index].mask] = False
    else:
        out = np.zeros_like(image)
        valid = np.zeros((img_h, img_w), dtype=bool)
    for rank, index in enumerate(order):
        seg = prepared[index]
        y0, x0, y1, x1 = seg.box
        rgb, mask = crops[index]
        allowed = mask & seg.zone
        # Masked copy in place (out's crop is a view): OpenCV's is ~40× np.copyto(where=) here.
        cv2.copyTo(np.ascontiguousarray(rgb), allowed.view(np.uint8), out[y0:y1, x0:x1])
        valid[y0:y1, x0:x1] |= allowed
        records[index]["paste_rank"] = rank
    return out, valid, records
