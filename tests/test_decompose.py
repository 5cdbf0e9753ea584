"""The decompose stage end to end: schemas, crops, determinism, parallel backends, bad input."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline import cache
from pipeline.cache import SegmentDB
from pipeline.datasets import open_dataset
from pipeline.decomposition import DecomposeParams, build_segment_db
from pipeline.segments import decompose, normalised_mask, pack_mask
from stages.cli import main

OUTPUTS = (cache.SEGMENTS_PARQUET, cache.IMAGES_PARQUET, cache.SEGMENTS_H5)


@pytest.fixture(autouse=True)
def _outside_the_repo(tmp_path, monkeypatch):
    """Run where no params.yaml gives defaults, so only the options passed count."""
    monkeypatch.chdir(tmp_path)



def decompose_cli(data: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["decompose", "--format", "folder", "--data-root", str(data), "--out", str(out),
                                     "--no-progress", *extra])


def digest(folder: Path) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in OUTPUTS}


def test_schema_and_content_match_the_dataset(toy_dataset: Path, tmp_path: Path):
    out = tmp_path / "cache"
    res = decompose_cli(toy_dataset, out, "--min-area", "4", "--mask-size", "32")
    assert res.exit_code == 0, res.output
    table = pq.read_table(out / cache.SEGMENTS_PARQUET)
    assert table.schema.equals(cache.SEGMENT_SCHEMA, check_metadata=False)
    adapter = open_dataset("folder", toy_dataset)
    with SegmentDB.open(out) as db:
        assert db.mask_size == 32 and db.h5["norm_masks"].shape == (len(db), 32 * 32 // 8)
        assert np.array_equal(db.col("segment_id"), np.arange(len(db)))
        images = db.images.to_pylist()
        assert [r["image_id"] for r in images] == [r.image_id for s in ("train", "val") for r in adapter.refs(s)]
        # Re-derive every image's segments independently and compare row by row.
        for img in images:
            sample = adapter.load(next(r for r in adapter.refs(img["split"]) if r.image_id == img["image_id"]))
            segs = decompose(sample.labels, sample.instances, adapter.classes(), min_area=4)
            assert img["n_segments"] == len(segs) and (img["height"], img["width"]) == sample.labels.shape
            for k, s in enumerate(segs):
                sid = img["first_segment"] + k
                row = {c: db.col(c)[sid] for c in ("class_id", "y0", "x0", "y1", "x1", "area", "source", "is_thing")}
                assert (row["class_id"], (row["y0"], row["x0"], row["y1"], row["x1"]), row["area"], row["source"],
                        row["is_thing"]) == (s.class_id, s.box, s.area, s.source, s.is_thing)
                rgb, mask = db.crop(sid)
                y0, x0, y1, x1 = s.box
                assert np.array_equal(rgb, sample.image[y0:y1, x0:x1]) and np.array_equal(mask, s.mask)
                assert np.array_equal(db.norm_masks([sid])[0], pack_mask(normalised_mask(s.mask, 32)))
                assert db.col("norm_area")[sid] == normalised_mask(s.mask, 32).sum()
        # candidates only in the database split
        assert not db.col("candidate")[db.col("split") == "val"].any()
        assert db.col("candidate")[db.col("split") == "train"].any()
    assert json.loads((out / cache.SKIPPED_JSON).read_text()) == []


def test_bytes_identical_for_jobs_1_and_2_and_threads(toy_dataset: Path, tmp_path: Path):
    adapter = open_dataset("folder", toy_dataset)
    outs = []
    for name, kw in (("j1", dict(jobs=1)), ("j2", dict(jobs=2)), ("thr", dict(jobs=2, backend="threads"))):
        build_segment_db(adapter, tmp_path / name, progress=False, **kw)
        outs.append(digest(tmp_path / name))
    assert outs[0] == outs[1] == outs[2]


@pytest.mark.slow
def test_dask_backend_gives_the_same_bytes(toy_dataset: Path, tmp_path: Path):
    distributed = pytest.importorskip("distributed")
    adapter = open_dataset("folder", toy_dataset)
    build_segment_db(adapter, tmp_path / "loky", progress=False, jobs=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cl:
        build_segment_db(adapter, tmp_path / "dask", progress=False, backend="dask", scheduler=cl.scheduler_address)
    assert digest(tmp_path / "loky") == digest(tmp_path / "dask")


def _corrupt(kind: str, root: Path) -> Path:
    """Damage one training sample; return the file the error must name."""
    img = root / "train" / "images" / "train_002.png"
    lab = root / "train" / "labels" / "train_002.png"
    if kind == "missing label":
        lab.unlink()
        return lab
    if kind == "size mismatch":
        cv2.imwrite(str(lab), np.zeros((10, 10), np.uint8))
        return lab
    if kind == "unknown class":
        arr = cv2.imread(str(lab), cv2.IMREAD_UNCHANGED)
        arr[5, 5] = 42
        cv2.imwrite(str(lab), arr)
        return lab
    if kind == "corrupt image":
        img.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        return img
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["missing label", "size mismatch", "unknown class", "corrupt image"])
def test_bad_input_fails_with_one_line_naming_the_file_and_writes_nothing(kind, toy_dataset, tmp_path):
    bad = _corrupt(kind, toy_dataset)
    out = tmp_path / "cache"
    res = decompose_cli(toy_dataset, out)
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(bad) in lines[0], res.output
    assert "Traceback" not in res.output
    assert not any((out / n).exists() for n in OUTPUTS)
    assert not list(out.glob("*.tmp")) if out.exists() else True


def test_failure_keeps_previous_complete_outputs(toy_dataset, tmp_path):
    out = tmp_path / "cache"
    assert decompose_cli(toy_dataset, out).exit_code == 0
    before = digest(out)
    _corrupt("unknown class", toy_dataset)
    assert decompose_cli(toy_dataset, out).exit_code != 0
    assert digest(out) == before and not list(out.glob("*.tmp"))


def test_on_error_skip_lists_bad_samples(toy_dataset, tmp_path):
    bad = _corrupt("size mismatch", toy_dataset)
    out = tmp_path / "cache"
    res = decompose_cli(toy_dataset, out, "--on-error", "skip")
    assert res.exit_code == 0, res.output
    skipped = json.loads((out / cache.SKIPPED_JSON).read_text())
    assert [s["image_id"] for s in skipped] == ["train_002"] and str(bad) in skipped[0]["error"]
    with SegmentDB.open(out) as db:
        assert "train_002" not in set(db.col("image_id")) and len(db.image_rows()) == 7


def test_empty_dataset_and_missing_root(tmp_path):
    empty = tmp_path / "empty"
    (empty / "train" / "images").mkdir(parents=True)
    (empty / "classes.json").write_text(json.dumps({"name": "e", "ignore_id": 0, "classes": []}))
    res = decompose_cli(empty, tmp_path / "c1")
    assert res.exit_code != 0 and "no images found" in res.output and str(empty) in res.output
    res = decompose_cli(tmp_path / "nope", tmp_path / "c2")
    assert res.exit_code != 0 and "does not exist" in res.output
    res = decompose_cli(empty, tmp_path / "c3", "--splits", "test")
    assert res.exit_code != 0 and "split 'test' not found" in res.output


def test_corrupt_cache_is_reported(toy_dataset, tmp_path):
    out = tmp_path / "cache"
    build_segment_db(open_dataset("folder", toy_dataset), out, params=DecomposeParams(), progress=False)
    import h5py

    with h5py.File(out / cache.SEGMENTS_H5, "a") as f:  # drop the last mask row
        f["norm_masks"].resize(f["norm_masks"].shape[0] - 1, axis=0)
    with pytest.raises(cache.CacheError, match="norm_masks") as e:
        SegmentDB.open(out)
    assert str(out / cache.SEGMENTS_H5) in str(e.value)
    (out / cache.SEGMENTS_PARQUET).write_bytes(b"not parquet")
    with pytest.raises(cache.CacheError, match="Parquet"):
        SegmentDB.open(out)


def test_contact_sheet(toy_dataset, tmp_path):
    out = tmp_path / "cache"
    build_segment_db(open_dataset("folder", toy_dataset), out, progress=False)
    res = CliRunner().invoke(main, ["contact-sheet", "--cache", str(out), "--per-class", "3", "--tile", "20"])
    assert res.exit_code == 0, res.output
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet.shape[0] >= 5 * 20 and sheet.shape[1] >= 5 * 20  # 5 classes × (name + 3 tiles)
