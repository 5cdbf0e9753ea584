"""The distortion speed work changes cost, not results: checked against slower references."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from pipeline import cache
from pipeline.distort import build as G
from pipeline.distort import distortions as D
from pipeline.cache import SegmentDB
from pipeline.deflate import DEFLATE_IMPL, CompressedArray
from pipeline.distort.build import DistortParams, build_color_targets, build_distortions
from tests.fixtures.distortion_scene import stats_scene


def test_tps_grid_step_schedule():
    assert [D.tps_grid_step(s, 4 * s) for s in (8, 100, 255, 256, 511, 512, 1023, 1024, 4096)] == \
        [4, 4, 4, 8, 8, 16, 16, 16, 16]
    assert D.tps_grid_step(2048, 300) == D.tps_grid_step(300, 2048) == 8  # the shorter side decides


@pytest.mark.parametrize("h,w", [(512, 1024), (1024, 1024)])
def test_coarse_steps_stay_near_the_exact_spline(h, w):
    """Step 16 on large crops: worst error ≤ 1.2 px, mean ≤ 0.3 px against the spline evaluated at
    every sampled pixel, for the shape distortion's own amplitudes (shift up to 0.4·0.22·√area)."""
    worst, mean = 0.0, []
    t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        src = np.stack([w / 2 + 0.45 * w * np.cos(t), h / 2 + 0.45 * h * np.sin(t)], axis=1)
        dst = src.copy()
        dst[rng.choice(10, 3, replace=False)] += rng.uniform(-0.4, 0.4, (3, 2)) * 0.22 * np.sqrt(0.6 * h * w)
        tform = D.estimate_backward_tps(src, dst)
        exact = D._eval_points(tform, np.arange(0, w, 5), np.arange(0, h, 5))
        xy = D._dense_map(tform, h, w, D.tps_grid_step(h, w))
        err = np.hypot(xy[::5, ::5, 0] - exact[..., 0], xy[::5, ::5, 1] - exact[..., 1])
        worst, mean = max(worst, float(err.max())), mean + [float(err.mean())]
    assert D.tps_grid_step(h, w) == 16 and worst < 1.2 and np.mean(mean) < 0.3


def test_tps_kernel_on_squared_distances_matches_r2_log_r():
    r = np.array([0.0, 1e-3, 0.5, 1.0, 2.0, 37.5])
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = np.where(r > 0, r * r * np.log(r), 0.0)
    assert np.allclose(D.ThinPlateSpline._kernel(r), ref, rtol=1e-12, atol=1e-300)


def test_variants_share_work_but_equal_single_calls():
    """distort_variants (the stage's path: shared zones, order, ln-LMS image, source statistics)
    gives, per generator, exactly what distort_image gives alone."""
    img, segments, targets, _ = stats_scene()
    many = D.distort_variants(img, segments, targets, [np.random.default_rng(s) for s in (3, 4, 5)])
    for seed, (out, valid, recs) in zip((3, 4, 5), many):
        o1, v1, r1 = D.distort_image(img, segments, targets, np.random.default_rng(seed))
        assert np.array_equal(out, o1) and np.array_equal(valid, v1) and recs == r1
    assert not np.array_equal(many[0][0], many[1][0])


def test_transfer_from_the_whole_image_ln_lms_equals_the_crop_path():
    img, segments, targets, _ = stats_scene()
    ln = D.ln_lms(img).reshape(img.shape)
    (y0, x0, y1, x1), mask, *_ = segments[2]
    crop = img[y0:y1, x0:x1]
    src = D.lab_stats(crop[mask])
    a = D.color_transfer(crop, targets[0][:2], source_stats=src)
    b = D._transfer_ln(ln[y0:y1, x0:x1], crop.shape, targets[0][:2], src)
    assert np.array_equal(a, b) and a.dtype == np.uint8
    # rounding/clipping rule: np.rint of the clipped float result (half to even), computed independently
    x = np.float32([[-3.2, 0.5, 1.5], [2.5, 254.5, 300.0]]).reshape(-1, 1, 3)
    ref = np.rint(np.clip(x, 0, 255)).astype(np.uint8)
    np.maximum(x, np.float32(0), out=x)
    assert np.array_equal(D.cv2.convertScaleAbs(x), ref)


def test_masks_from_labels_equal_the_stored_crops_and_fall_back(retrieved_cache, monkeypatch, tmp_path):
    with SegmentDB.open(retrieved_cache) as db:
        adapter = db.open_adapter()
        rows = db.image_rows("train")
        boxes = np.stack([db.col(c).astype(np.int64) for c in ("y0", "x0", "y1", "x1")], axis=1)
        for r, ref in zip(rows, db.sample_refs(adapter, rows)):
            a, b = r["first_segment"], r["first_segment"] + r["n_segments"]
            task = G._ImageTask(ref, r["height"], r["width"], a, boxes[a:b], db.col("class_id")[a:b].astype(np.int64),
                                db.col("is_thing")[a:b], np.ones(b - a, bool), db.col("area")[a:b].astype(np.int64))
            sample = adapter.load(ref)
            masks = G._masks_from_labels(sample, task, db)
            assert masks is not None and len(masks) == b - a
            assert all(np.array_equal(m, db.crop_mask(a + i)) for i, m in enumerate(masks))
            task.areas = task.areas.copy()
            task.areas[0] += 1  # a database that does not match the labels: the caller decodes crops
            assert G._masks_from_labels(sample, task, db) is None
    # The stage gives the same bytes whether the masks come from the labels or from the crops.
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    fast.mkdir(), slow.mkdir()
    build_distortions(retrieved_cache, DistortParams(variants=2), out_dir=fast, progress=False)
    monkeypatch.setattr(G, "_masks_from_labels", lambda *a: None)
    build_distortions(retrieved_cache, DistortParams(variants=2), out_dir=slow, progress=False)
    for name in (cache.DISTORTIONS_H5, cache.DISTORTIONS_PARQUET):
        assert (fast / name).read_bytes() == (slow / name).read_bytes()


def test_stored_lab_stats_and_a_database_without_them(retrieved_cache, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(retrieved_cache, old)
    with h5py.File(old / cache.SEGMENTS_H5, "a") as f:
        del f[cache.LAB_STATS]  # a database written before decompose stored them
    with SegmentDB.open(retrieved_cache) as db, SegmentDB.open(old) as db_old:
        stored = db.lab_stats()
        assert db_old.lab_stats() is None and stored.shape == (len(db), 6)
        for sid in range(0, len(db), 7):  # the masked crop's statistics, up to float32 rounding
            rgb, mask = db.crop(sid)
            mean, std = D.lab_stats(rgb[mask])
            assert np.allclose(stored[sid], np.r_[mean, std], rtol=0, atol=2e-6)
        new_t = build_color_targets(db, progress=False)
        old_t = build_color_targets(db_old, progress=False)
        have = ~np.isnan(new_t.stats[:, 0])
        assert have.any() and np.array_equal(have, ~np.isnan(old_t.stats[:, 0]))
        assert np.allclose(new_t.stats[have], old_t.stats[have], rtol=0, atol=2e-6)
        # only the targets the distorted segments can pick were computed (retrieved candidates here)
        assert have.sum() <= int(db.col("candidate").sum())
    out = tmp_path / "out"
    out.mkdir()
    build_distortions(old, DistortParams(variants=1), out_dir=out, progress=False)
    with h5py.File(out / cache.DISTORTIONS_H5) as f:
        assert f.attrs["deflate"] == DEFLATE_IMPL


def test_worker_deflated_chunks_read_back_as_ordinary_gzip(tmp_path):
    rng = np.random.default_rng(0)
    arr = np.zeros((3, 40, 50, 3), np.uint8)
    arr[:, 10:30, 5:45] = rng.integers(0, 255, (3, 20, 40, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = CompressedArray.of(arr).write(f, "a")
        CompressedArray.of(arr[..., 0] > 100).write(f, "b")
        assert ds.compression == "gzip" and ds.chunks == (1, 40, 50, 3)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert np.array_equal(f["a"][...], arr) and np.array_equal(f["b"][...], arr[..., 0] > 100)
