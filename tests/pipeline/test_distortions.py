"""Tests of pipeline.distort.distortions: colour (Reinhard lαβ), TPS shape, resolution, recomposition."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pipeline.distort import distortions as D
from pipeline.resize import resize_image
from tests.fixtures.distortion_scene import stats_scene


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def smooth_patch(seed: int, h: int = 48, w: int = 64, lo: float = 70, hi: float = 180) -> np.ndarray:
    """Smooth random RGB uint8 patch with values inside [lo, hi] (no clipping anywhere)."""
    rng = np.random.default_rng(seed)
    noise = rng.random((h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    field = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
    field = (field - field.min()) / (field.max() - field.min())
    return np.rint(lo + (hi - lo) * field).astype(np.uint8)


def disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r


def scene():
    """A 96×128 textured image and its segments (stuff: sky, road; things: 2 cars; ignore band)."""
    h, w = 96, 128
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    label = np.full((h, w), 255, dtype=np.int32)  # 255 = ignore
    label[:40] = 1  # sky (stuff)
    label[50:] = 2  # road (stuff); rows 40..49 stay ignore
    label[disc(h, w, 70, 40, 14)] = 3  # car (thing)
    label[disc(h, w, 72, 95, 10)] = 3  # another car
    segments = []
    for cls, is_thing in ((1, False), (2, False), (3, True)):
        n, comp = cv2.connectedComponents((label == cls).astype(np.uint8), connectivity=8)
        for c in range(1, n):
            m = comp == c
            ys, xs = np.nonzero(m)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            segments.append(((y0, x0, y1, x1), m[y0:y1, x0:x1], cls, is_thing))
    union = label != 255
    return image, segments, union


def color_targets_fn(index, class_id, rng):
    mean = np.array([4.0, 0.05, -0.02]) + rng.normal(0, 0.05, 3)
    std = np.array([0.1, 0.02, 0.02]) * rng.uniform(0.8, 1.2, 3)
    return mean, std, int(1000 * class_id + rng.integers(100))


# ------------------------------------------------------------------------------------------------
# colour
# ------------------------------------------------------------------------------------------------
def test_lab_roundtrip_uint8_exact():
    v = np.arange(0, 256, 5)
    rgb = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(-1, 3)
    rgb = np.concatenate([rgb, [[0, 0, 0], [255, 255, 255], [1, 0, 0], [0, 0, 1]]]).astype(np.uint8)
    back = D.lab_to_rgb(D.rgb_to_lab(rgb))
    assert back.dtype == np.float64 and back.shape == rgb.shape
    assert np.array_equal(np.rint(back).astype(np.uint8), rgb)
    nonblack = rgb.sum(axis=1) > 0
    assert np.allclose(back[nonblack], rgb[nonblack], atol=1e-9)


def test_lab_grey_is_achromatic_and_float_input():
    lab = D.rgb_to_lab(np.array([[100.0, 100.0, 100.0], [200, 200, 200]]))
    assert np.all(np.abs(lab[:, 1:]) < 1e-2)
    assert lab[1, 0] > lab[0, 0]
    img = smooth_patch(1).astype(np.float64) + 0.25
    assert np.allclose(D.lab_to_rgb(D.rgb_to_lab(img)), img, atol=1e-9)


def test_color_transfer_moves_stats_to_target():
    src = smooth_patch(2).reshape(-1, 3)
    tgt = smooth_patch(3, lo=90, hi=150).reshape(-1, 3)
    tgt = (tgt * np.array([1.0, 0.8, 0.6])).astype(np.uint8)  # a different hue
    t_mean, t_std = D.lab_stats(tgt)
    out = D.color_transfer(src, (t_mean, t_std))
    assert out.dtype == np.uint8 and out.shape == src.shape
    assert 0 < out.min() and out.max() < 255  # no clipping: the check below is meaningful
    o_mean, o_std = D.lab_stats(out)
    assert np.allclose(o_mean, t_mean, atol=5e-3)
    assert np.allclose(o_std, t_std, rtol=0.05, atol=1e-3)
    s_mean, _ = D.lab_stats(src)
    assert not np.allclose(s_mean, t_mean, atol=5e-2)  # it really moved


def test_color_transfer_identity_and_constant_source():
    src = smooth_patch(4)
    out = D.color_transfer(src, D.lab_stats(src.reshape(-1, 3)))
    assert out.shape == src.shape
    assert np.abs(out.astype(int) - src.astype(int)).max() <= 1
    flat = np.full((20, 3), 120, dtype=np.uint8)  # σs = 0: shift only, no NaN
    t_mean, _ = D.lab_stats(np.full((5, 3), (150, 100, 80), dtype=np.uint8))
    moved = D.color_transfer(flat, (t_mean, np.array([0.3, 0.3, 0.3])))
    assert np.all(moved == moved[0]) and np.abs(moved[0].astype(int) - (150, 100, 80)).max() <= 1
    with pytest.raises(ValueError):
        D.lab_stats(np.zeros((0, 3), np.uint8))


# ------------------------------------------------------------------------------------------------
# shape
# ------------------------------------------------------------------------------------------------
def test_contour_control_points_on_boundary_and_evenly_spaced():
    mask = disc(64, 64, 32, 32, 20)
    pts = D.contour_control_points(mask, n=10)
    assert pts.shape == (10, 2)
    r = np.hypot(pts[:, 0] - 32, pts[:, 1] - 32)
    assert np.all(np.abs(r - 20) < 1.5)
    gaps = np.linalg.norm(np.roll(pts, -1, 0) - pts, axis=1)
    assert gaps.max() / gaps.min() < 1.25
    with pytest.raises(ValueError):
        D.contour_control_points(np.zeros((5, 5), bool))


def test_tps_identity_when_points_do_not_move():
    rgb = smooth_patch(5, 64, 64)
    mask = disc(64, 64, 30, 34, 22)
    src = D.contour_control_points(mask)
    out_rgb, out_mask = D.tps_warp(rgb, mask, src, src)
    assert np.abs(out_rgb.astype(int) - rgb.astype(int)).max() <= 1
    assert np.array_equal(out_mask, mask)
    # the same through shape_distort with zero amplitude
    r2, m2, info = D.shape_distort(rgb, mask, np.random.default_rng(0), amp=0.0)
    assert info["skipped"] is None
    assert np.abs(r2.astype(int) - rgb.astype(int)).max() <= 1 and np.array_equal(m2, mask)


def test_tps_control_points_land_on_targets():
    h = w = 64
    angles = np.arange(10) * 2 * np.pi / 10
    src = np.rint(np.stack([32 + 20 * np.cos(angles), 32 + 20 * np.sin(angles)], 1))
    dst = src.copy()
    dst[0] += (-5, 4)  # point 0 = (52, 32) moves to (47, 36)
    dst[4] += (3, -2)
    tform = D.estimate_backward_tps(src, dst)
    assert tform is not None
    assert np.allclose(tform(dst), src, atol=1e-3)  # backward map: target -> source
    rgb = np.full((h, w, 3), 128, np.uint8)
    x0, y0 = src[0].astype(int)
    rgb[y0 - 1:y0 + 2, x0 - 1:x0 + 2] = (255, 0, 0)  # red blob at source point 0
    mask = disc(h, w, 32, 32, 21)
    out_rgb, out_mask = D.tps_warp(rgb, mask, src, dst)
    xt, yt = dst[0].astype(int)
    assert tuple(out_rgb[yt, xt]) == (255, 0, 0)
    assert out_mask[yt, xt]
    # the blob left its old place (nothing else maps there), within 1 px of the target
    reds = np.argwhere((out_rgb[..., 0] > 200) & (out_rgb[..., 1] < 60))
    assert np.all(np.abs(reds.mean(0) - (yt, xt)) <= 1.0)


def test_shape_distort_moves_three_points_within_amplitude():
    rgb = smooth_patch(6, 80, 80)
    mask = disc(80, 80, 40, 40, 25)
    out_rgb, out_mask, info = D.shape_distort(rgb, mask, np.random.default_rng(3))
    assert info["skipped"] is None and len(info["moved"]) == 3 and len(set(info["moved"])) == 3
    src, dst = np.array(info["src"]), np.array(info["dst"])
    delta = dst - src
    still = np.setdiff1d(np.arange(10), info["moved"])
    assert np.all(delta[still] == 0)
    assert np.all(np.abs(delta[info["moved"]]) <= 0.4 * 0.22 * np.sqrt(mask.sum()) + 1e-9)
    assert out_rgb.shape == rgb.shape and out_mask.shape == mask.shape
    assert not np.array_equal(out_mask, mask)
    for i in info["moved"]:  # control points sit on mask pixels -> their targets are in the mask
        x, y = np.floor(dst[i] + 0.5).astype(int)
        if 0 <= x < 80 and 0 <= y < 80:
            assert out_mask[y, x]


@pytest.mark.parametrize(
    "mask_fn, reasons",
    [
        (lambda m: m.__setitem__((slice(10, 12), slice(10, 12)), True), {"contour_too_short"}),
        (lambda m: m.__setitem__((20, slice(5, 35)), True), {"duplicate_points", "collinear_points"}),
        (lambda m: m.__setitem__((slice(5, 35), 7), True), {"duplicate_points", "collinear_points"}),
        (lambda m: None, {"empty_mask"}),
    ],
    ids=["tiny", "hline", "vline", "empty"],
)
def test_shape_distort_degenerate_inputs_are_skipped(mask_fn, reasons):
    rgb = smooth_patch(8, 40, 40)
    mask = np.zeros((40, 40), bool)
    mask_fn(mask)
    rng = np.random.default_rng(11)
    out_rgb, out_mask, info = D.shape_distort(rgb, mask, rng)
    assert info["skipped"] in reasons
    assert np.array_equal(out_rgb, rgb) and np.array_equal(out_mask, mask)
    # the same random numbers are consumed whether or not the segment is skipped
    ref = np.random.default_rng(11)
    D.shape_distort(rgb, disc(40, 40, 20, 20, 12), ref)
    assert rng.random() == ref.random()


def test_collinear_points_detected():
    pts = np.stack([np.arange(10.0), 2 * np.arange(10.0) + 1], 1)
    assert D._degeneracy(pts) == "collinear_points"
    assert D.estimate_backward_tps(pts, pts) is None


# ------------------------------------------------------------------------------------------------
# resolution
# ------------------------------------------------------------------------------------------------
def test_resolution_keeps_size_and_is_identity_at_scale_one():
    rng = np.random.default_rng(9)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    mask = rng.random((37, 53)) < 0.5
    same_rgb, same_mask = D.resolution_distort(rgb, mask, 1.0)
    assert np.array_equal(same_rgb, rgb) and np.array_equal(same_mask, mask)
    low_rgb, low_mask = D.resolution_distort(rgb, mask, 0.5)
    assert low_rgb.shape == rgb.shape and low_rgb.dtype == np.uint8
    assert np.array_equal(low_mask, mask)
    assert not np.array_equal(low_rgb, rgb)
    tiny, _ = D.resolution_distort(rgb[:1, :2], mask[:1, :2], 0.5)
    assert tiny.shape == (1, 2, 3)
    with pytest.raises(ValueError):
        D.resolution_distort(rgb, mask, 0.0)


def test_resolution_scale_per_axis_is_antialiased_and_relative_to_the_source():
    assert D.effective_scale(0.6) == (0.6, 0.6)
    assert D.effective_scale(0.3, (4.0, 2.0)) == (1.0, pytest.approx(0.6))  # min(1, scale·source/working)
    yy, xx = np.mgrid[:48, :60]
    board = np.repeat((((yy // 3) + (xx // 3)) % 2 * 255).astype(np.uint8)[..., None], 3, axis=2)
    mask = np.ones((48, 60), bool)
    out, _ = D.resolution_distort(board, mask, 0.25)
    small = resize_image(board, 12, 15)  # the down step is pipeline.resize's antialiased bicubic
    assert np.array_equal(out, resize_image(small, 48, 60))
    assert abs(small[1:-1, 1:-1].astype(float).mean() - 127.5) < 2 and small[1:-1, 1:-1].std() < 8
    rows_only, _ = D.resolution_distort(board, mask, (0.25, 1.0))
    assert np.array_equal(rows_only, resize_image(resize_image(board, 12, 60), 48, 60))
    with pytest.raises(ValueError):
        D.resolution_distort(board, mask, (0.5, 1.5))


# ------------------------------------------------------------------------------------------------
# recomposition
# ------------------------------------------------------------------------------------------------
def test_recomposition_leaves_non_segment_pixels_untouched():
    image, segments, union = scene()
    for rules in ("a1", "free"):
        out, valid, records = D.distort_image(
            image, segments, color_targets_fn, np.random.default_rng(1), paste_rules=rules, canvas="real"
        )
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.array_equal(out[~union], image[~union]) and valid[~union].all()
        assert not np.array_equal(out[union], image[union])
        assert len(records) == len(segments)
        assert sorted(r["paste_rank"] for r in records) == list(range(len(segments)))
        json.dumps(records)  # auditable: JSON-serialisable


def test_recomposition_without_distortion_is_identity_and_a1_confines_stuff():
    image, segments, union = scene()
    out, valid, records = D.distort_image(
        image, segments, None, np.random.default_rng(0),
        probs={"color": 0.0, "shape": 0.0, "resolution": 0.0}, canvas="real",
    )
    assert np.array_equal(out, image) and valid.all()
    assert all(r["applied"] == [] for r in records)
    # shape only, a1 rules: a stuff segment never paints outside its own mask, so every pixel
    # of a stuff segment is either its own (shape-warped) content or black
    out, _, records = D.distort_image(
        image, segments, None, np.random.default_rng(2), kinds=("shape",), canvas="real"
    )
    assert any("shape" in r["applied"] for r in records)
    things = np.zeros(union.shape, bool)
    for (y0, x0, y1, x1), m, _, is_thing in segments:
        if is_thing:
            things[y0:y1, x0:x1] |= m
    assert np.array_equal(out[things & ~union], image[things & ~union])


def test_color_targets_sequence_and_missing_target():
    image, segments, _ = scene()
    targets = [None] + [(np.array([4.0, 0.0, 0.0]), np.array([0.1, 0.01, 0.01]), f"t{i}")
                        for i in range(1, len(segments))]
    _, _, records = D.distort_image(image, segments, targets, np.random.default_rng(0), kinds=("color",))
    assert records[0]["color"] == {"skipped": "no_target"} and records[0]["applied"] == []
    assert records[1]["color"]["target_id"] == "t1" and records[1]["applied"] == ["color"]
    with pytest.raises(ValueError):
        D.distort_image(image, segments, targets[:-1], np.random.default_rng(0))


def test_determinism_and_independent_streams():
    image, segments, _ = scene()
    a, _, ra = D.distort_image(image, segments, color_targets_fn, np.random.default_rng(42))
    b, _, rb = D.distort_image(image, segments, color_targets_fn, np.random.default_rng(42))
    c, _, _ = D.distort_image(image, segments, color_targets_fn, np.random.default_rng(43))
    assert a.tobytes() == b.tobytes() and json.dumps(ra) == json.dumps(rb)
    assert a.tobytes() != c.tobytes()
    # turning shape off does not reshuffle the colour targets or the resolution scales
    _, _, rn = D.distort_image(
        image, segments, color_targets_fn, np.random.default_rng(42), probs={"shape": 0.0}
    )
    assert [r["color"] for r in rn] == [r["color"] for r in ra]
    assert [r["resolution"] for r in rn] == [r["resolution"] for r in ra]
    assert all(r["shape"] is None for r in rn)
    assert all(0.5 <= r["resolution"]["scale"] <= 1.0 for r in ra)


def test_dense_map_matches_exact_spline_evaluation():
    """The grid-interpolated map is exact at the nodes and within a small fraction of a pixel
    elsewhere, for a realistic warp (3 of 10 points moved by up to 0.4·0.22·√area)."""
    from pipeline.distort.distortions import TPS_GRID_STEP, _dense_map, _eval_points, estimate_backward_tps

    h, w = 61, 83
    rng = np.random.default_rng(3)
    t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    src = np.stack([w / 2 + 30 * np.cos(t), h / 2 + 22 * np.sin(t)], axis=1)
    dst = src.copy()
    dst[[1, 4, 7]] += rng.uniform(-0.4, 0.4, (3, 2)) * 0.22 * np.sqrt(h * w)
    tform = estimate_backward_tps(src, dst)
    exact = _eval_points(tform, np.arange(w), np.arange(h))
    xy = _dense_map(tform, h, w)
    map_x, map_y = xy[..., 0], xy[..., 1]
    err = np.hypot(map_x - exact[..., 0], map_y - exact[..., 1])
    assert err.max() < 0.5  # measured ≈ 0.3 px at the sharpest bend, invisible after bilinear sampling
    assert np.allclose(err[::TPS_GRID_STEP, ::TPS_GRID_STEP], 0, atol=1e-3)  # float32 nodes


def test_black_canvas_shows_only_pasted_segments():
    """Default canvas: void pixels and segments not pasted (no retrieval match) are exactly 0 and
    not valid; pasted segments show content; a segment not pasted does not change the others' draws."""
    image, segments, union = scene()
    image = np.maximum(image, 1)  # no real black pixel: 0 in the output means "not pasted"
    sky = [i for i, s in enumerate(segments) if s[2] == 1]
    paste = [s[2] != 1 for s in segments]  # the sky has no match
    sky_px = np.zeros(union.shape, bool)
    for i in sky:
        (y0, x0, y1, x1), m = segments[i][:2]
        sky_px[y0:y1, x0:x1] |= m
    out_all, valid_all, rec_all = D.distort_image(image, segments, color_targets_fn, np.random.default_rng(4))
    out, valid, rec = D.distort_image(image, segments, color_targets_fn, np.random.default_rng(4), paste=paste)
    for o, v in ((out, valid), (out_all, valid_all)):
        assert (o[~union] == 0).all() and not v[~union].any()  # void band: black, not valid
        assert np.array_equal(v, (o > 0).any(-1))  # valid = pasted (no pasted pixel is black here)
    assert (out[sky_px] == 0).all() and not valid[sky_px].any()
    assert valid[union & ~sky_px].mean() > 0.8 and valid_all[sky_px].mean() > 0.8
    for i in sky:
        assert rec[i]["pasted"] is False and rec[i]["applied"] == [] and rec[i]["paste_rank"] is None
    # the other segments drew exactly the same numbers and were pasted identically
    for a, b in zip(rec, rec_all):
        if a["pasted"]:
            assert a["color"] == b["color"] and a["resolution"] == b["resolution"]
    road = union & ~sky_px
    assert np.array_equal(out[road], out_all[road])
    # the real canvas keeps the real image outside the pasted segments
    out_r, valid_r, _ = D.distort_image(image, segments, color_targets_fn, np.random.default_rng(4), paste=paste,
                                        canvas="real")
    assert np.array_equal(out_r[sky_px | ~union], image[sky_px | ~union]) and valid_r[sky_px | ~union].all()
    with pytest.raises(ValueError):
        D.distort_image(image, segments, None, np.random.default_rng(0), canvas="grey")


# Statistics of the implementation before the speed work (float64 lαβ, scikit-image TPS, NumPy
# dense-map interpolation), measured on stats_scene() with seeds 0..15: PSNR (dB) of the variant
# against the real image over the segments' pixels, and the share of those pixels left black.
_BEFORE_PSNR = [16.687, 16.959, 18.126, 17.641, 17.367, 17.895, 17.32, 16.376, 16.859, 16.943, 16.993, 17.251,
                17.114, 17.921, 16.621, 17.985]
_BEFORE_HOLES = [0.0518, 0.0444, 0.0189, 0.0277, 0.0308, 0.0244, 0.0383, 0.0597, 0.0471, 0.0443, 0.0439, 0.034,
                 0.0466, 0.024, 0.0483, 0.0176]


def test_output_statistics_unchanged_by_the_speed_work():
    """Same draws, faster numerics (float32 colour, cv2.remap map interpolation): per seed the PSNR
    stays within 0.3 dB and the hole share within 0.01 of the earlier implementation's."""
    img, segments, targets, union = stats_scene()
    psnr, holes = [], []
    for seed in range(16):
        out, valid, _ = D.distort_image(img, segments, targets, np.random.default_rng(seed))
        err = (out[union].astype(float) - img[union]) ** 2
        psnr.append(10 * np.log10(255 ** 2 / err.mean()))
        holes.append(float((out[union] == 0).all(-1).mean()))
        assert np.array_equal(valid[union], ~(out[union] == 0).all(-1))  # no target colour rounds to 0 here
    assert np.abs(np.subtract(psnr, _BEFORE_PSNR)).max() < 0.3
    assert np.abs(np.subtract(holes, _BEFORE_HOLES)).max() < 0.01
    assert abs(np.mean(psnr) - np.mean(_BEFORE_PSNR)) < 0.05 and abs(np.mean(holes) - np.mean(_BEFORE_HOLES)) < 0.002


def test_dense_map_coarse_step_on_large_crops_stays_subpixel():
    """Large crops use step 8 (TPS_COARSE_SIDE): with shifts ∝ √area the error stays sub-pixel."""
    from pipeline.distort.distortions import TPS_COARSE_SIDE, _dense_map, _eval_points, estimate_backward_tps

    h, w = TPS_COARSE_SIDE, 2 * TPS_COARSE_SIDE
    rng = np.random.default_rng(5)
    t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    src = np.stack([w / 2 + 0.45 * w * np.cos(t), h / 2 + 0.45 * h * np.sin(t)], axis=1)
    dst = src.copy()
    dst[[0, 3, 6]] += rng.uniform(-0.4, 0.4, (3, 2)) * 0.22 * np.sqrt(0.6 * h * w)
    tform = estimate_backward_tps(src, dst)
    exact = _eval_points(tform, np.arange(0, w, 3), np.arange(0, h, 3))
    xy = _dense_map(tform, h, w, 8)
    map_x, map_y = xy[..., 0], xy[..., 1]
    err = np.hypot(map_x[::3, ::3] - exact[..., 0], map_y[::3, ::3] - exact[..., 1])
    assert err.max() < 0.5
