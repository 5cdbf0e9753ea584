"""The distort stage end to end: shapes, untouched void pixels, determinism, colour targets, audit, errors."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline import cache
from pipeline.cache import SegmentDB
from pipeline.datasets import open_dataset
from pipeline.decompose.build import DecomposeParams, build_segment_db
from pipeline.distort.build import (DistortParams, build_color_targets, build_distortions, image_hash,
                                   matched_segments, read_distortion_valid, read_distortions, variant_rng)
from pipeline.retrieve.build import run_retrieval
from pipeline.distort.distortions import lab_stats
from pipeline.errors import CacheError, ConfigError
from stages.cli import main
from stages.distort import command as distort_command
from tests.fixtures.toy_dataset import make_toy_dataset

if "distort" not in main.commands:
    main.add_command(distort_command)

OUTPUTS = (cache.DISTORTIONS_H5, cache.DISTORTIONS_PARQUET)
K = 3


@pytest.fixture(autouse=True)
def _outside_the_repo(tmp_path, monkeypatch):
    """Run where no params.yaml gives defaults, so only the options passed count."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def work_cache(retrieved_cache, tmp_path) -> Path:
    out = tmp_path / "cache"
    shutil.copytree(retrieved_cache, out)
    return out


def digest(folder: Path) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in OUTPUTS}


def distort_cli(cache_dir: Path, *extra: str):
    return CliRunner().invoke(main, ["distort", "--cache", str(cache_dir), "--no-progress", *extra])


def real_images(cache_dir: Path, split: str = "train") -> dict[str, np.ndarray]:
    with SegmentDB.open(cache_dir) as db:
        adapter = open_dataset(db.attrs["dataset_format"], db.attrs["data_root"])
    return {r.image_id: adapter.load(r).image for r in adapter.refs(split)}


def union_masks(db: SegmentDB, row: dict) -> np.ndarray:
    union = np.zeros((row["height"], row["width"]), bool)
    for sid in range(row["first_segment"], row["first_segment"] + row["n_segments"]):
        _, mask = db.crop(sid)
        y0, x0, y1, x1 = (int(db.col(c)[sid]) for c in ("y0", "x0", "y1", "x1"))
        union[y0:y1, x0:x1] |= mask
    return union


# --------------------------------------------------------------------------------------------------
def test_shapes_untouched_pixels_and_audit_table(work_cache):
    """The real canvas (the earlier behaviour, kept as an option): every segment distorted, the rest real."""
    res = distort_cli(work_cache, "--variants", str(K), "--seed", "5", "--canvas", "real", "--color-targets", "class")
    assert res.exit_code == 0, res.output
    assert "6 images × 3 variants" in res.output
    real = real_images(work_cache)
    labels_root = Path(SegmentDB.open(work_cache).attrs["data_root"]) / "train" / "labels"
    table = pq.read_table(work_cache / cache.DISTORTIONS_PARQUET)
    assert table.schema.equals(cache.DISTORTION_SCHEMA, check_metadata=False)
    audit = table.to_pylist()
    with SegmentDB.open(work_cache) as db, h5py.File(work_cache / cache.DISTORTIONS_H5, "r") as f:
        rows = db.image_rows("train")
        assert set(f.keys()) == {"train"}  # only the database split: variants + valid masks of each image
        assert {f"/train/{k}" for k in f["train"].keys()} == ({cache.image_key("train", i) for i in real}
                                                              | {cache.valid_key("train", i) for i in real})
        assert (f.attrs["seed"], f.attrs["variants"], f.attrs["n_images"]) == (5, K, len(rows))
        assert f.attrs["kinds"] == "color,shape,resolution" and f.attrs["color_targets"] == "class"
        class_ids, splits, image_of = db.col("class_id"), db.col("split"), np.repeat(
            np.arange(len(db.image_rows())), [r["n_segments"] for r in db.image_rows()])
        expected_keys = []
        for row in rows:
            data = f[cache.image_key("train", row["image_id"])]
            assert data.shape == (K, row["height"], row["width"], 3) and data.dtype == np.uint8
            assert data.chunks == (1, row["height"], row["width"], 3)
            img = real[row["image_id"]]
            outside = ~union_masks(db, row)
            void = cv2.imread(str(labels_root / f"{row['image_id']}.png"), cv2.IMREAD_UNCHANGED) == 255
            assert void.any() and outside[void].all()
            valid = f[cache.valid_key("train", row["image_id"])]
            assert valid.shape == (K, row["height"], row["width"]) and valid.chunks == (1, *valid.shape[1:])
            for v in range(K):
                assert np.array_equal(data[v][outside], img[outside])
                assert not np.array_equal(data[v], img)
                assert valid[v][outside].all() and not valid[v][~outside].all()
            expected_keys += [("train", row["image_id"], v, sid) for v in range(K)
                              for sid in range(row["first_segment"], row["first_segment"] + row["n_segments"])]
    # audit: exactly K × segments rows, in h5 image order, then variant, then segment
    assert [(r["split"], r["image_id"], r["variant"], r["segment_id"]) for r in audit] == expected_keys
    for r in audit:
        kinds = r["applied"].split("+") if r["applied"] else []
        assert set(kinds) <= {"color", "shape", "resolution"} and "resolution" in kinds and 0.5 <= r["scale"] <= 1.0
        if "color" in kinds:  # a same-class segment of another training image
            t = r["color_target"]
            assert class_ids[t] == class_ids[r["segment_id"]] and splits[t] == "train"
            assert image_of[t] != image_of[r["segment_id"]]
        else:
            assert r["color_target"] == -1
        assert (r["n_moved"] == 3) == ("shape" in kinds)
        assert ("shape" in kinds) == (r["shape_skipped"] == "")
    assert sum("color" in r["applied"] for r in audit) > 0.8 * len(audit)
    assert sum("shape" in r["applied"] for r in audit) > 0.5 * len(audit)


def test_bytes_identical_across_jobs_and_runs_and_seed_matters(retrieved_cache, tmp_path):
    params = DistortParams(variants=2, seed=11)
    outs = {}
    for name, kw in (("j1", dict(jobs=1)), ("j1b", dict(jobs=1)), ("j2", dict(jobs=2)),
                     ("thr", dict(jobs=2, backend="threads"))):
        build_distortions(retrieved_cache, params, out_dir=tmp_path / name, progress=False, **kw)
        outs[name] = digest(tmp_path / name)
    assert outs["j1"] == outs["j1b"] == outs["j2"] == outs["thr"]
    build_distortions(retrieved_cache, DistortParams(variants=2, seed=12), out_dir=tmp_path / "s12", progress=False)
    with h5py.File(tmp_path / "j1" / cache.DISTORTIONS_H5, "r") as a, \
            h5py.File(tmp_path / "s12" / cache.DISTORTIONS_H5, "r") as b:
        for key in a["train"]:
            for v in range(2):
                assert not np.array_equal(a["train"][key][v], b["train"][key][v])
    # per-image seeding: adding the val split changes nothing for the training images
    build_distortions(retrieved_cache, params, splits=["val"], out_dir=tmp_path / "val", progress=False)
    with h5py.File(tmp_path / "j1" / cache.DISTORTIONS_H5, "r") as a, \
            h5py.File(tmp_path / "val" / cache.DISTORTIONS_H5, "r") as b:
        assert sorted(b.keys()) == ["train", "val"] and len(b["val"]) == 2 * 2 and b.attrs["splits"] == "train,val"  # variants + valid
        for key in a["train"]:
            assert np.array_equal(a["train"][key][...], b["train"][key][...])
    assert variant_rng(1, "train", "a", 0).random() != variant_rng(1, "train", "a", 1).random()
    assert image_hash("train", "a") == image_hash("train", "a") != image_hash("val", "a")


def test_resolution_only_keeps_colours_and_shapes(work_cache):
    res = distort_cli(work_cache, "--variants", "2", "--kinds", "resolution", "--canvas", "real")
    assert res.exit_code == 0, res.output
    audit = pq.read_table(work_cache / cache.DISTORTIONS_PARQUET).to_pylist()
    assert {r["applied"] for r in audit} == {"resolution"} and {r["color_target"] for r in audit} == {-1}
    real = real_images(work_cache)
    with SegmentDB.open(work_cache) as db:
        for row in db.image_rows("train"):
            out = read_distortions(work_cache, "train", row["image_id"])
            img = real[row["image_id"]].astype(float)
            union = union_masks(db, row)
            for v in range(2):
                assert (out[v][union] > 0).any(axis=1).mean() > 0.99  # no shape holes
                for sid in range(row["first_segment"], row["first_segment"] + row["n_segments"]):
                    _, mask = db.crop(sid)
                    y0, x0, y1, x1 = (int(db.col(c)[sid]) for c in ("y0", "x0", "y1", "x1"))
                    sel = np.zeros(union.shape, bool)
                    sel[y0:y1, x0:x1] = mask
                    if sel.sum() >= 20:
                        assert np.abs(out[v][sel].mean(0) - img[sel].mean(0)).max() < 25


def test_color_targets_from_retrieval_when_present(work_cache):
    with SegmentDB.open(work_cache) as db:
        class_ids, splits = db.col("class_id"), db.col("split")
        rows = db.image_rows()
        image_of = np.repeat(np.arange(len(rows)), [r["n_segments"] for r in rows])
        q, rank, c = [], [], []
        allowed = {}
        train = np.flatnonzero(splits == "train")
        for sid in train[::2]:  # every other query has retrieval rows; the rest fall back
            same = [int(t) for t in train if class_ids[t] == class_ids[sid] and image_of[t] != image_of[sid]]
            if not same:
                continue
            mate = [int(t) for t in train if class_ids[t] == class_ids[sid] and image_of[t] == image_of[sid]
                    and t != sid][:1]  # another segment of its image: a candidate, as in the released match list
            good = same[-2:] + mate
            bogus = [int(sid)]  # the query itself: must be dropped
            for k, t in enumerate(bogus + good):
                q.append(int(sid)), rank.append(k), c.append(t)
            allowed[int(sid)] = set(good)
    n = len(q)
    cache.write_retrieval({"query_id": q, "rank": rank, "candidate_id": c, "score": np.zeros(n),
                           "shape_term": np.zeros(n), "scale_term": np.zeros(n)},
                          work_cache / cache.RETRIEVAL_PARQUET, {"k": 3})
    res = distort_cli(work_cache, "--variants", "4", "--kinds", "color", "--canvas", "real")
    assert res.exit_code == 0, res.output
    with h5py.File(work_cache / cache.DISTORTIONS_H5, "r") as f:
        assert f.attrs["color_targets"] == "retrieval"
    audit = pq.read_table(work_cache / cache.DISTORTIONS_PARQUET).to_pylist()
    seen_fallback = 0
    for r in audit:
        assert r["applied"] in ("color", "")
        t = r["color_target"]
        if r["segment_id"] in allowed:
            assert t in allowed[r["segment_id"]]
        elif t != -1:
            seen_fallback += 1
            assert class_ids[t] == class_ids[r["segment_id"]] and image_of[t] != image_of[r["segment_id"]]
    assert seen_fallback and len({r["color_target"] for r in audit if r["segment_id"] in allowed}) > 1
    # --color-targets class ignores the file; a stale retrieval file is a clear error
    res = distort_cli(work_cache, "--variants", "1", "--color-targets", "class", "--canvas", "real")
    assert res.exit_code == 0, res.output
    with h5py.File(work_cache / cache.DISTORTIONS_H5, "r") as f:
        assert f.attrs["color_targets"] == "class"
    cache.write_retrieval({"query_id": [0], "rank": [0], "candidate_id": [10 ** 6], "score": [0.0],
                           "shape_term": [0.0], "scale_term": [0.0]}, work_cache / cache.RETRIEVAL_PARQUET, {})
    res = distort_cli(work_cache, "--variants", "1")
    assert res.exit_code != 0 and "stale cache" in res.output and cache.RETRIEVAL_PARQUET in res.output


def test_target_statistics_are_the_masked_crop_lab_stats(retrieved_cache):
    with SegmentDB.open(retrieved_cache) as db:
        targets = build_color_targets(db, "class", progress=False)
        train = np.flatnonzero(db.col("split") == "train")
        assert np.isnan(targets.stats[db.col("split") == "val"]).all()
        stored = db.lab_stats()
        assert stored is not None  # decompose stores them; build_color_targets reads them
        for sid in train[::5]:
            rgb, mask = db.crop(int(sid))
            mean, std = lab_stats(rgb[mask])
            # decompose converts the whole image to ln LMS once (float32): equal up to float32 rounding
            assert np.allclose(targets.stats[sid], np.concatenate([mean, std]), rtol=0, atol=2e-6)
            assert np.array_equal(targets.stats[sid], stored[sid])
        assert targets.mode == "class" and all(np.all(np.diff(p) > 0) for p in targets.pools.values())


@pytest.mark.filterwarnings("ignore:.*tasks which were still being processed")
def test_errors_are_one_line_and_leave_no_output(tmp_path):
    root = make_toy_dataset(tmp_path / "toy_err", n_train=3, n_val=0, seed=4)
    work_cache = tmp_path / "cache_err"
    build_segment_db(open_dataset("folder", root), work_cache, params=DecomposeParams(min_area=4, mask_size=32),
                     progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    res = distort_cli(empty)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert str(empty / cache.SEGMENTS_PARQUET) in lines[0] and not (empty / cache.DISTORTIONS_H5).exists()
    assert not list(empty.iterdir())
    res = distort_cli(work_cache, "--variants", "1")  # black canvas: needs the retrieval matches
    assert res.exit_code != 0 and res.output.count("\n") == 1 and "retrieval.parquet: missing" in res.output
    run_retrieval(work_cache, progress=False)

    moved = tmp_path / "moved_data"
    root.rename(moved)
    try:
        res = distort_cli(work_cache, "--variants", "1")
        assert res.exit_code != 0 and res.output.startswith("error:") and str(root) in res.output
        assert "does not exist" in res.output and not (work_cache / cache.DISTORTIONS_H5).exists()
        assert not (work_cache / (cache.DISTORTIONS_H5 + ".tmp")).exists()
        res = distort_cli(work_cache, "--variants", "1", "--data-root", str(moved))  # override works
        assert res.exit_code == 0, res.output
        before = digest(work_cache)
        (moved / "train" / "labels" / "train_002.png").unlink()  # fails in a worker: old outputs stay
        res = distort_cli(work_cache, "--variants", "2", "--data-root", str(moved), "--jobs", "2")
        assert res.exit_code != 0 and res.output.startswith("error:")
        assert str(moved / "train" / "labels" / "train_002.png") in res.output and "missing" in res.output
        assert digest(work_cache) == before
    finally:
        moved.rename(root)
    for bad in (["--kinds", "colour"], ["--p-shape", "1.5"]):
        res = distort_cli(work_cache, *bad)
        assert res.exit_code != 0 and res.output.startswith("error:"), (bad, res.output)
    for bad in (["--variants", "0"], ["--seed", "-1"]):  # outside the option's range: click's usage error
        res = distort_cli(work_cache, *bad)
        assert res.exit_code == 2 and f"Invalid value for '{bad[0]}'" in res.output, (bad, res.output)
    res = distort_cli(work_cache, "--splits", "test")
    assert res.exit_code != 0 and "no images of split 'test'" in res.output
    with pytest.raises(ConfigError):
        DistortParams(probs={"blur": 0.5})
    with pytest.raises(CacheError):
        read_distortions(tmp_path / "empty", "train", "x")


def test_preview_writes_strips(work_cache):
    res = distort_cli(work_cache, "--variants", "2", "--preview", "2")
    assert res.exit_code == 0, res.output
    pngs = sorted((work_cache / "distort_preview").glob("*.png"))
    assert [p.name for p in pngs] == ["train_train_000.png", "train_train_001.png"]
    strip = cv2.imread(str(pngs[0]))
    real = real_images(work_cache)["train_000"]
    h, w = real.shape[:2]
    assert strip.shape == (h, 3 * w + 2 * 4, 3)
    assert np.array_equal(strip[:, :w, ::-1], real)
    assert np.array_equal(strip[:, w + 4:2 * w + 4, ::-1], read_distortions(work_cache, "train", "train_000")[0])


def _handmade_dataset(root: Path) -> Path:
    """4 training images of sky over road with one car; train_000 also has a person (a class no
    other image has: no retrieval match), a void block and a 3×3 tree (below min_area)."""
    import json

    from tests.fixtures.toy_dataset import TOY_CLASSES

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps(TOY_CLASSES))
    for sub in ("images", "labels"):
        (root / "train" / sub).mkdir(parents=True)
    for i in range(4):
        lab = np.zeros((48, 64), np.uint8)
        lab[24:] = 1
        lab[30:40, 8 + 10 * i:22 + 10 * i] = 3
        if i == 0:
            lab[4:12, 40:50] = 4  # person: unique class
            lab[2:8, 4:12] = 255  # void
            lab[14:17, 25:28] = 2  # tiny tree: 9 px < min_area
        img = rng.integers(1, 256, (48, 64, 3), dtype=np.uint8)  # no black pixel in the real images
        cv2.imwrite(str(root / "train" / "images" / f"train_{i:03d}.png"), img)
        cv2.imwrite(str(root / "train" / "labels" / f"train_{i:03d}.png"), lab)
    return root


def test_black_canvas_is_black_exactly_where_the_guidance_is(tmp_path):
    from benchmarks.distort import guidance_black_share
    from pipeline.compose.build import compose_dataset, read_guidance

    root = _handmade_dataset(tmp_path / "hand")
    cache_dir = tmp_path / "cache"
    build_segment_db(open_dataset("folder", root), cache_dir, params=DecomposeParams(min_area=16, mask_size=32),
                     progress=False)
    run_retrieval(cache_dir, progress=False)
    compose_dataset(cache_dir, progress=False)
    build_distortions(cache_dir, DistortParams(variants=3, seed=1), progress=False)
    lab = cv2.imread(str(root / "train" / "labels" / "train_000.png"), cv2.IMREAD_UNCHANGED)
    black = (lab == 4) | (lab == 255) | (lab == 2)  # unmatched, void, too small
    with SegmentDB.open(cache_dir) as db:
        matched = matched_segments(db)
        cls = db.col("class_id")
        assert not matched[cls == 4].any() and not (cls == 2).any()  # premise: no match, dropped
        assert matched[cls != 4].all()
    for image_id in ("train_000", "train_001"):
        out = read_distortions(cache_dir, "train", image_id)
        valid = read_distortion_valid(cache_dir, "train", image_id)
        guidance, g_valid = read_guidance(cache_dir, "train", image_id)
        assert valid.shape == out.shape[:3] and valid.dtype == bool
        assert np.array_equal(valid, (out > 0).any(-1))  # real images have no black pixel
        if image_id == "train_000":
            assert (out[:, black] == 0).all() and not valid[:, black].any() and not g_valid[black].any()
        assert valid[:, ~black].mean() > 0.8  # matched segments show content (shape holes aside)
    shares = guidance_black_share(cache_dir)
    assert shares["outside_matched"] == 0.0  # no pixel outside the pasted segments shows anything
    assert shares["n_black"] > 0 and 0.0 <= shares["any"] <= 1.0
    # the earlier behaviour, as an option: real content where the guidance is black
    build_distortions(cache_dir, DistortParams(variants=1, seed=1, canvas="real"), progress=False)
    out = read_distortions(cache_dir, "train", "train_000")
    real = open_dataset("folder", root).load(open_dataset("folder", root).refs("train")[0]).image
    untouched = (lab == 255) | (lab == 2)  # in no segment; the real canvas distorts every segment (the person too)
    assert np.array_equal(out[0][untouched], real[untouched])
    assert guidance_black_share(cache_dir)["outside_matched"] > 0.9


# --------------------------------------------------------------------------- resolution reference (source | working)
def _textured_dataset(root: Path, h: int = 128, w: int = 160, n: int = 2) -> Path:
    """Two stuff classes (top / bottom half) over per-pixel noise: any blur shows."""
    import json

    from tests.fixtures.toy_dataset import TOY_CLASSES

    rng = np.random.default_rng(11)
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "labels").mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps(TOY_CLASSES))
    for i in range(n):
        lab = np.zeros((h, w), np.uint8)
        lab[h // 2:] = 1
        cv2.imwrite(str(root / "train" / "labels" / f"t{i}.png"), lab)
        cv2.imwrite(str(root / "train" / "images" / f"t{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return root


def _resolution_only(cache_dir: Path, reference: str, scale_range=(0.5, 1.0)) -> tuple[dict, list]:
    params = DistortParams(variants=2, seed=5, kinds="resolution", canvas="real", scale_range=scale_range,
                           resolution_reference=reference)
    build_distortions(cache_dir, params, progress=False)
    with SegmentDB.open(cache_dir) as db:
        out = {r["image_id"]: read_distortions(cache_dir, "train", r["image_id"]) for r in db.image_rows()}
    return out, pq.read_table(cache_dir / cache.DISTORTIONS_PARQUET).to_pylist()


def test_resolution_reference_without_resize_is_the_same_in_both_modes(tmp_path):
    root = _textured_dataset(tmp_path / "data", 32, 40)
    cache_dir = tmp_path / "cache"
    build_segment_db(open_dataset("folder", root), cache_dir, params=DecomposeParams(mask_size=32), progress=False)
    src, src_audit = _resolution_only(cache_dir, "source")
    work, work_audit = _resolution_only(cache_dir, "working")
    assert src_audit == work_audit and {r["applied"] for r in src_audit} == {"resolution"}
    assert all(np.array_equal(src[k], work[k]) for k in src)
    with h5py.File(cache_dir / cache.DISTORTIONS_H5, "r") as f:
        assert f.attrs["resolution_reference"] == "working"


def test_resolution_reference_source_after_a_4x_resize(tmp_path):
    """128×160 frames cached at 32×40: scales drawn against the source lose at most what the 4× resize
    lost already (released code: nearly a no-op), against the working image they blur it."""
    from pipeline.distort.distortions import effective_scale, resolution_distort

    root = _textured_dataset(tmp_path / "data")
    cache_dir = tmp_path / "cache"
    adapter = open_dataset("folder", root, None, "32x40")
    build_segment_db(adapter, cache_dir, params=DecomposeParams(mask_size=32), progress=False)
    with SegmentDB.open(cache_dir) as db:
        rows = db.image_rows()
        assert {(r["source_height"], r["source_width"], r["height"], r["width"]) for r in rows} == {(128, 160, 32, 40)}
    real = {r.image_id: adapter.load(r).image for r in adapter.refs("train")}

    def blur(out: dict) -> float:
        return float(np.mean([np.abs(v.astype(float) - real[k].astype(float)).mean() for k, v in out.items()]))

    src, _ = _resolution_only(cache_dir, "source")
    work, work_audit = _resolution_only(cache_dir, "working")
    assert all(0.5 <= r["scale"] <= 1.0 for r in work_audit)
    assert blur(work) > 4 and blur(src) == 0.0  # 4·U(0.5, 1) ≥ 1: nothing left to lose
    # scales small enough to matter at the working size too: each segment is exactly the crop
    # down/up-scaled by min(1, scale·source/working), and still blurs less than the working mode
    src, audit = _resolution_only(cache_dir, "source", scale_range=(0.1, 0.2))
    work, _ = _resolution_only(cache_dir, "working", scale_range=(0.1, 0.2))
    assert 0 < blur(src) < blur(work)
    with SegmentDB.open(cache_dir) as db:
        first = {r["image_id"]: r["first_segment"] for r in db.image_rows()}
        for r in audit:
            sid = r["segment_id"]
            y0, x0, y1, x1 = (int(db.col(c)[sid]) for c in ("y0", "x0", "y1", "x1"))
            _, mask = db.crop(sid)
            s = float(r["scale"])
            expected = (min(1.0, s * 128 / 32), min(1.0, s * 160 / 40))
            assert effective_scale(s, (4.0, 4.0)) == pytest.approx(expected)
            want, _ = resolution_distort(real[r["image_id"]][y0:y1, x0:x1], mask, expected)
            got = src[r["image_id"]][r["variant"], y0:y1, x0:x1]
            assert first[r["image_id"]] <= sid and np.array_equal(got[mask], want[mask])
