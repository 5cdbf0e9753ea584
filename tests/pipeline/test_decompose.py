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
from pipeline.errors import CacheError
from pipeline.cache import SegmentDB
from pipeline.datasets import open_dataset
from pipeline.decompose.build import DecomposeParams, build_segment_db
from pipeline.decompose.segments import decompose, normalised_mask, pack_mask
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
    with pytest.raises(CacheError, match="norm_masks") as e:
        SegmentDB.open(out)
    assert str(out / cache.SEGMENTS_H5) in str(e.value)
    (out / cache.SEGMENTS_PARQUET).write_bytes(b"not parquet")
    with pytest.raises(CacheError, match="Parquet"):
        SegmentDB.open(out)


def test_contact_sheet(toy_dataset, tmp_path):
    out = tmp_path / "cache"
    build_segment_db(open_dataset("folder", toy_dataset), out, progress=False)
    res = CliRunner().invoke(main, ["contact-sheet", "--cache", str(out), "--per-class", "3", "--tile", "20"])
    assert res.exit_code == 0, res.output
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet.shape[0] >= 5 * 20 and sheet.shape[1] >= 5 * 20  # 5 classes × (name + 3 tiles)


# ------------------------------------------------------------------ working resolution
from pipeline.datasets.resized import ResizeSpec  # noqa: E402
from pipeline.errors import ConfigError  # noqa: E402
from pipeline.resize import resize_index_map  # noqa: E402


def test_resize_spec_forms():
    assert ResizeSpec.parse("256x512").target(1024, 2048) == (256, 512)
    assert ResizeSpec.parse("256x512").target(100, 100) == (256, 512)  # fixed: aspect not kept
    assert ResizeSpec.parse(90).target(180, 240) == (90, 120)  # shorter side, landscape
    assert ResizeSpec.parse("90").target(240, 180) == (120, 90)  # portrait
    assert ResizeSpec.parse("100").target(333, 500) == (100, 150)  # 150.15 truncated, as SPADE's int()
    assert ResizeSpec.parse(None) is None and ResizeSpec.parse("None") is None  # DVC writes null as None
    assert str(ResizeSpec.parse(" 24 x 32 ")) == "24x32" and str(ResizeSpec.parse(24)) == "24"
    for bad in ("0", "abc", "24x", "-3", "1.5", True):
        with pytest.raises(ConfigError):
            ResizeSpec.parse(bad)


@pytest.mark.parametrize("spec, size", [("24x40", (24, 40)), ("30", (30, 40))])
def test_decompose_at_a_working_resolution(toy_dataset, tmp_path, spec, size):
    out = tmp_path / "cache"
    res = decompose_cli(toy_dataset, out, "--resize", spec, "--min-area", "1")
    assert res.exit_code == 0, res.output
    original = open_dataset("folder", toy_dataset)
    with SegmentDB.open(out) as db:
        assert db.resize == spec and db.attrs["resize"] == spec  # the schema records it
        rows = db.image_rows()
        assert {(r["height"], r["width"]) for r in rows} == {size}
        assert {(r["source_height"], r["source_width"]) for r in rows} == {(48, 64)}
        assert (db.col("y1") <= size[0]).all() and (db.col("x1") <= size[1]).all()
        adapter = db.open_adapter()  # later stages get samples at the working resolution, untold
        for ref in db.sample_refs(adapter)[:3]:
            small, big = adapter.load(ref), original.load(ref)
            assert small.image.shape == (*size, 3) and small.labels.shape == size and small.source_size == (48, 64)
            np.testing.assert_array_equal(small.labels, resize_index_map(big.labels, *size))  # nearest
            assert set(np.unique(small.labels)) <= set(np.unique(big.labels))  # no new class ids
            assert set(np.unique(small.instances)) <= set(np.unique(big.instances))  # instance ids kept
            # every object large enough to survive nearest sampling keeps its id and its one class
            for obj in np.unique(small.instances[small.instances > 0]):
                assert np.unique(small.labels[small.instances == obj]).size == 1
            # the segments stored are the segments of the resized sample
            segs = decompose(small.labels, small.instances, adapter.classes(), min_area=1)
            img = next(r for r in rows if r["image_id"] == ref.image_id)
            assert img["n_segments"] == len(segs)


def test_trainer_refuses_a_load_size_that_disagrees_with_the_cache(toy_dataset, tmp_path):
    from resail_train.training.data import CacheDataset

    out = tmp_path / "cache"
    assert decompose_cli(toy_dataset, out, "--resize", "24x32").exit_code == 0
    kw = dict(crop_size=(16, 16), guidance=None, distortions=False)
    with pytest.raises(ConfigError, match="disagrees with the cache's working resolution") as e:
        CacheDataset(out, load_size=(48, 64), **kw)
    assert "allow_resize" in str(e.value)
    for ok in (dict(load_size=(24, 32)), dict(load_size=None), dict(load_size=(48, 64), allow_resize=True)):
        ds = CacheDataset(out, **{**kw, **ok})
        assert len(ds) == 6
    out2 = tmp_path / "short"
    assert decompose_cli(toy_dataset, out2, "--resize", "24").exit_code == 0
    CacheDataset(out2, load_size=(24, 24), **kw)  # shorter side 24: a square load of 24 agrees
    with pytest.raises(ConfigError, match="shorter side 24"):
        CacheDataset(out2, load_size=(32, 32), **kw)


def test_config_key_allow_resize_is_optional():
    from resail_train.config import load_config

    assert load_config("demo").data.allow_resize is False
    assert load_config("demo", ["data.allow_resize=true"]).data.allow_resize is True


# ------------------------------------------------------------------ pruning flags in the cache
def test_query_flags_and_retrieval_skip_pruned_queries(toy_dataset, tmp_path):
    from pipeline.retrieve.retrieval import RetrievalParams
    from pipeline.retrieve.build import run_retrieval
    from pipeline.decompose.segments import image_pruning_flags, pruning_flags

    out = tmp_path / "cache"
    assert decompose_cli(toy_dataset, out, "--min-area", "1", "--preserved-ratio", "0.5").exit_code == 0  # pruning image
    with SegmentDB.open(out) as db:
        assert db.attrs["pruning"] == "image"
        keys = np.repeat(np.arange(len(db.images)), db.images.column("n_segments").to_numpy())
        query = image_pruning_flags(keys, db.col("class_id"), db.col("area"), 0.5)
        assert (db.col("query") == query).all() and (~query).any()
        assert (db.col("candidate") == (query & (db.col("split") == "train"))).all()
    run_retrieval(out, RetrievalParams(k=3), progress=False)
    q = set(pq.read_table(out / cache.RETRIEVAL_PARQUET).column("query_id").to_pylist())
    assert not q & set(np.flatnonzero(~query).tolist())  # pruned queries have no rows → compose leaves them black
    for mode in ("dataset", "none"):
        assert decompose_cli(toy_dataset, out, "--min-area", "1", "--preserved-ratio", "0.5", "--pruning", mode).exit_code == 0
        with SegmentDB.open(out) as db:
            in_db = db.col("split") == "train"
            cand, query = pruning_flags(mode, keys, db.col("class_id"), db.col("area"), in_db, 0.5)
            assert db.col("query").all() and (db.col("candidate") == cand).all()


# ------------------------------------------------------------------ adapter options recorded
@pytest.mark.parametrize("extra, n_classes", [((), 34), (("--label-space", "train-ids"), 19)])
def test_label_space_is_recorded_and_rebuilt(tmp_path, extra, n_classes):
    from tests.fixtures.dataset_layouts import make_cityscapes

    b = make_cityscapes(tmp_path / "cs")
    out = tmp_path / "cache"
    res = CliRunner().invoke(main, ["decompose", "--format", "cityscapes", "--data-root", str(b.root), "--out", str(out),
                                    "--no-progress", "--min-area", "1", *extra])
    assert res.exit_code == 0, res.output
    with SegmentDB.open(out) as db:
        assert db.meta.num_classes == n_classes
        adapter = db.open_adapter()  # told nothing: the recorded options rebuild the same adapter
        assert adapter.classes() == db.meta
        assert db.adapter_options == {"label_space": "train-ids" if extra else "label-ids"}
        assert set(db.col("class_id")) <= set(db.meta.ids.tolist())
        if not extra:  # labelIds: caravan (29) is a thing with its instance, 'static' (4) a stuff class
            assert {29, 4, 0, 9} <= set(db.col("class_id"))
            # images in order aachen_000000 (instanceIds), aachen_000001 (none), bochum, frankfurt (both with)
            assert db.col("source")[db.col("class_id") == 29].tolist() == ["instance", "component", "instance", "instance"]


def test_ade20k_outdoor_subset_counts_are_printed(tmp_path):
    from tests.fixtures.dataset_layouts import make_ade20k_instance_challenge

    b = make_ade20k_instance_challenge(tmp_path / "ade")
    out = tmp_path / "cache"
    res = CliRunner().invoke(main, ["decompose", "--format", "ade20k", "--data-root", str(b.root), "--out", str(out),
                                    "--no-progress", "--subset", "outdoor"])
    assert res.exit_code == 0, res.output
    assert "(2 train, 1 val; subset outdoor)" in res.output
    with SegmentDB.open(out) as db:
        assert db.adapter_options == {"subset": "outdoor"}
        assert [r.image_id for r in db.sample_refs(db.open_adapter())] == ["ADE_train_00000001", "ADE_train_00000003",
                                                                            "ADE_val_00000001"]
    res = CliRunner().invoke(main, ["decompose", "--format", "folder", "--data-root", str(b.root), "--out", str(out),
                                    "--subset", "outdoor"])
    assert res.exit_code != 0 and "not an option of --format folder" in res.output


# ------------------------------------------------------------------ hostile datasets: bad files are one line
def test_skip_with_every_sample_bad_keeps_the_old_database_and_its_skipped_json(toy_dataset, tmp_path):
    out = tmp_path / "cache"
    assert decompose_cli(toy_dataset, out).exit_code == 0
    before = {n: (out / n).read_bytes() for n in (*OUTPUTS, cache.SKIPPED_JSON)}
    for lab in (toy_dataset).glob("*/labels/*.png"):
        lab.unlink()
    res = decompose_cli(toy_dataset, out, "--on-error", "skip")
    assert res.exit_code != 0 and "every sample failed (8)" in res.output and "Traceback" not in res.output
    assert {n: (out / n).read_bytes() for n in before} == before


def test_explicitly_requested_empty_split_is_refused(toy_dataset, tmp_path):
    (toy_dataset / "test" / "images").mkdir(parents=True)
    res = decompose_cli(toy_dataset, tmp_path / "c", "--splits", "train,test")
    assert res.exit_code != 0 and "test contain no images" in res.output and str(toy_dataset) in res.output
    assert decompose_cli(toy_dataset, tmp_path / "c2").exit_code == 0  # all splits: the empty one is just empty


def test_an_older_segment_schema_says_rebuild(toy_dataset, tmp_path):
    import h5py

    out = tmp_path / "cache"
    assert decompose_cli(toy_dataset, out).exit_code == 0
    with h5py.File(out / cache.SEGMENTS_H5, "r+") as f:
        f.attrs["schema_version"] = 2  # before the query flag, source size, adapter options, resize
    with pytest.raises(CacheError, match="schema 2.*rebuild with `resail decompose`"):
        SegmentDB.open(out)
