"""Guidance composition (docs/method.md §3): the four paste rules on hand-made maps, paste order, range,
and the ``resail compose`` driver end to end (keys, determinism, ranks, overrides, errors)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import cache
from pipeline.cache import SegmentDB
from pipeline.compose.composition import QuerySegment, class_maps, compose_guidance, paste_order, paste_segment
from pipeline.datasets import open_dataset
from pipeline.datasets.base import ClassMeta
from pipeline.decompose.build import DecomposeParams, build_segment_db
from pipeline.errors import CacheError, ConfigError, DataError
from pipeline.compose.build import compose_dataset, preview, select_matches
from pipeline.decompose.segments import nearest_indices
from pipeline.resize import resize_image
from tests.fixtures.toy_dataset import make_toy_dataset

ROAD, CAR, SKY, VOID = 0, 5, 7, 255
META = ClassMeta.from_dict({"name": "toy", "ignore_id": VOID, "classes": [
    {"id": ROAD, "name": "road", "thing": False}, {"id": CAR, "name": "car", "thing": True},
    {"id": SKY, "name": "sky", "thing": False}]})

# 8×10 label map: sky above road, a car query in box (2,2,6,6), another car touching its box.
#   col: 0 1 2 3 4 5 6 7 8 9
LABELS = np.array([
    [7, 7, 7, 7, 7, 7, 7, 7, 7, 7],
    [7, 7, 7, 7, 7, 7, 7, 7, 7, 7],
    [7, 7, 5, 5, 5, 5, 7, 7, 7, 7],  # (2,5): the *other* car (thing, not Mq)
    [7, 7, 7, 5, 5, 5, 7, 7, 7, 7],  # (3,2): sky (stuff) inside the box, not Mq
    [0, 0, 5, 5, 5, 5, 0, 0, 0, 0],
    [0, 0, 255, 5, 5, 5, 0, 0, 0, 0],  # (5,2): void inside the box
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
], dtype=np.int32)
BOX = (2, 2, 6, 6)
MQ = np.array([[1, 1, 1, 0],
               [0, 1, 1, 1],
               [1, 1, 1, 1],
               [0, 1, 1, 1]], bool)
MR = np.array([[1, 1, 1, 1],  # (2,5) Mr\Mq on a thing   → rule 4
               [1, 1, 1, 1],  # (3,2) Mr\Mq on stuff     → rule 3 (thing) / rule 2 (stuff)
               [1, 1, 1, 0],  # (4,5) Mq\Mr              → stays as it was
               [1, 1, 1, 1]], bool)  # (5,2) Mr\Mq on void → not pasted
RGB = np.stack([*np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), np.zeros((4, 4), int)], -1)
RGB = (RGB * np.array([40, 50, 0]) + np.array([10, 20, 30])).astype(np.uint8)  # distinct per pixel


def paste(is_thing: bool, rgb=RGB, mr=MR, fill: int = 0):
    g = np.full((8, 10, 3), fill, np.uint8)
    v = np.zeros((8, 10), bool)
    things, stuff = class_maps(LABELS, META)
    n = paste_segment(g, v, BOX, MQ, is_thing, things, rgb, mr, stuff_map=stuff)
    return g, v, n


def at(y, x):
    return y - BOX[0], x - BOX[1]


def test_class_maps_leave_void_out():
    things, stuff = class_maps(LABELS, META)
    assert things[2, 5] and not stuff[2, 5]
    assert stuff[3, 2] and not things[3, 2]
    assert not things[5, 2] and not stuff[5, 2]


@pytest.mark.parametrize("is_thing", [False, True])
def test_rule1_intersection_is_pasted(is_thing):
    g, v, _ = paste(is_thing)
    inter = np.zeros((8, 10), bool)
    inter[2:6, 2:6] = MQ & MR
    ys, xs = np.nonzero(inter)
    for y, x in zip(ys, xs):
        assert tuple(g[y, x]) == tuple(RGB[at(y, x)]) and v[y, x]


def test_rule2_stuff_query_does_not_paste_outside_its_mask():
    g, v, n = paste(False)
    assert n == int((MQ & MR).sum())
    for y, x in ((3, 2), (2, 5), (5, 2)):
        assert tuple(g[y, x]) == (0, 0, 0) and not v[y, x]
    outside = np.ones((8, 10), bool)
    outside[2:6, 2:6] = ~(MQ & MR)
    assert not g[outside].any() and not v[outside].any()


def test_rule3_thing_query_pastes_overflow_on_stuff():
    g, v, n = paste(True)
    assert tuple(g[3, 2]) == tuple(RGB[at(3, 2)]) and v[3, 2]
    assert n == int((MQ & MR).sum()) + 1


def test_rule4_thing_query_does_not_paste_overflow_on_things_or_void():
    g, v, _ = paste(True)
    assert tuple(g[2, 5]) == (0, 0, 0) and not v[2, 5]  # another car: rule 4
    assert tuple(g[5, 2]) == (0, 0, 0) and not v[5, 2]  # void: ours, not stuff → not pasted


@pytest.mark.parametrize("is_thing", [False, True])
def test_query_pixels_not_covered_keep_what_was_there(is_thing):
    g, v, _ = paste(is_thing, fill=77)
    assert tuple(g[4, 5]) == (77, 77, 77) and not v[4, 5]
    g, v, _ = paste(is_thing)
    assert tuple(g[4, 5]) == (0, 0, 0)


def test_retrieved_crop_is_resized_to_the_query_box():
    """8×6 crop → 4×4 box: mask nearest (pipeline.decompose.segments indices), RGB bicubic (flat colour stays exact)."""
    mr = np.zeros((8, 6), bool)
    mr[::2, :] = True
    mr[:, 5] = True
    rgb = np.full((8, 6, 3), (12, 200, 99), np.uint8)
    g, v, _ = paste(False, rgb=rgb, mr=mr)
    expect_mr = mr[np.ix_(nearest_indices(8, 4), nearest_indices(6, 4))]
    assert np.array_equal(v[2:6, 2:6], expect_mr & MQ)
    assert (g[v] == (12, 200, 99)).all()
    # a non-flat crop goes through the antialiased bicubic of pipeline.resize exactly
    rgb = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    g, v, _ = paste(False, rgb=rgb, mr=np.ones((8, 6), bool))
    cubic = resize_image(rgb, 4, 4)
    assert np.array_equal(g[2:6, 2:6][MQ], cubic[MQ])


def test_a_high_frequency_crop_shrunk_4x_is_antialiased():
    """A 3-px checkerboard crop pasted into a box 4× smaller comes out mean grey (PIL bicubic, as the
    released code), not the moiré of cv2.INTER_CUBIC, and equals pipeline.resize's output."""
    yy, xx = np.mgrid[:48, :60]
    board = np.where(((yy // 3) + (xx // 3)) % 2 == 0, 255, 0).astype(np.uint8)
    rgb = np.repeat(board[:, :, None], 3, axis=2)
    h, w = 12, 15
    g = np.zeros((h, w, 3), np.uint8)
    v = np.zeros((h, w), bool)
    things, stuff = class_maps(np.zeros((h, w), int), META)  # all road: a stuff query
    paste_segment(g, v, (0, 0, h, w), np.ones((h, w), bool), False, things, rgb, np.ones((48, 60), bool), stuff)
    assert v.all()
    assert np.array_equal(g, resize_image(rgb, h, w))
    inner = g[1:-1, 1:-1].astype(float)  # away from the border taps
    assert abs(inner.mean() - 127.5) < 2 and np.abs(inner - 127.5).max() <= 8
    aliased = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_CUBIC)[1:-1, 1:-1].astype(float)
    assert np.abs(aliased - 127.5).max() > 100  # the cv2 kernel keeps full-contrast moiré


def test_unmatched_segments_are_black():
    q = QuerySegment(BOX, MQ, True, int(MQ.sum()))
    sky = LABELS == SKY
    s = QuerySegment((0, 0, 4, 10), sky[0:4, 0:10], False, int(sky.sum()))
    g, v = compose_guidance(LABELS, META, [s, q], [None, None])
    assert g.dtype == np.uint8 and g.shape == (8, 10, 3) and not g.any() and not v.any()
    g, v = compose_guidance(LABELS, META, [s, q], [None, (RGB, MR)])
    assert v.sum() == v[2:6, 2:6].sum() == int((MQ & MR).sum()) + 1
    assert not g[~v].any() and g[v].all()


def test_paste_order_stuff_first_then_things_larger_first():
    """All three queries cover pixel (4,6) (road): the stuff query by its mask, the two cars by overflow.
    Listed small car, big car, road: the small car must end on top, the road below both."""
    road = LABELS == ROAD
    road_q = QuerySegment((4, 0, 8, 10), road[4:8, :], False, int(road.sum()))
    small = QuerySegment((4, 5, 6, 7), np.array([[1, 0], [1, 0]], bool), True, 2)
    big_wide = QuerySegment((2, 3, 6, 7), np.pad(MQ[:, 1:], ((0, 0), (0, 1))), True, 11)
    queries = [small, big_wide, road_q]
    red, green, blue = ((np.full(s, c, np.uint8), np.ones(s[:2], bool)) for s, c in
                        (((2, 2, 3), (255, 0, 0)), ((4, 4, 3), (0, 255, 0)), ((4, 10, 3), (0, 0, 255))))
    assert paste_order(queries) == [2, 1, 0]
    g, v = compose_guidance(LABELS, META, queries, [red, green, blue])
    assert tuple(g[4, 6]) == (255, 0, 0)  # small car over big car over road
    assert tuple(g[5, 6]) == (255, 0, 0)
    assert tuple(g[3, 6]) == (0, 255, 0)  # big car overflow on sky (only the big car reaches it)
    assert tuple(g[7, 0]) == (0, 0, 255)
    # ties on area: lower index first, so the later one ends on top
    twin = QuerySegment(small.box, small.mask, True, 2)
    g, _ = compose_guidance(LABELS, META, [small, twin], [red, (np.full((2, 2, 3), 9, np.uint8), np.ones((2, 2), bool))])
    assert tuple(g[4, 6]) == (9, 9, 9)


def test_overlapping_pastes_overwrite_and_stay_in_range():
    g = np.zeros((8, 10, 3), np.uint8)
    v = np.zeros((8, 10), bool)
    things, stuff = class_maps(LABELS, META)
    for value in (200, 255, 100):
        paste_segment(g, v, BOX, MQ, True, things, np.full((4, 4, 3), value, np.uint8), np.ones((4, 4), bool), stuff)
    assert g.dtype == np.uint8 and (g[v] == 100).all()
    # bicubic overshoot of a hard 0/255 edge is saturated, not wrapped
    edge = np.zeros((3, 3, 3), np.uint8)
    edge[:, 1:] = 255
    g[:] = 0
    paste_segment(g, v, (0, 0, 8, 10), np.ones((8, 10), bool), False, things, edge, np.ones((3, 3), bool), stuff)
    expect = resize_image(edge, 8, 10)
    assert np.array_equal(g, expect)
    assert g[:, -1].min() == 255 and g[:, 0].max() < 128


def test_select_matches_missing_ranks_are_black():
    import pyarrow as pa

    t = pa.table({"query_id": [0, 0, 2], "rank": pa.array([0, 1, 0], pa.int32()), "candidate_id": [5, 6, 7]})
    assert select_matches(t, 4, 0).tolist() == [5, -1, 7, -1]
    assert select_matches(t, 4, 1).tolist() == [6, -1, -1, -1]
    assert select_matches(t, 4, 0, {0: 1, 2: 3}).tolist() == [6, -1, -1, -1]
    with pytest.raises(ConfigError):
        select_matches(t, 4, -1)
    with pytest.raises(ConfigError):
        select_matches(t, 4, 0, {9: 0})


# --------------------------------------------------------------------------- end to end
def hand_made_retrieval(cache_dir: Path, *, drop_rank1_of_class: int | None = 0, bad_candidate: int | None = None) -> dict:
    """Rank 0/1 = the first same-class candidates of other images (by id); no rank 1 for one class."""
    with SegmentDB.open(cache_dir) as db:
        cls, img, cand = db.col("class_id"), db.col("image_id"), db.col("candidate")
        n = len(db)
    cols = {k: [] for k in ("query_id", "rank", "candidate_id", "score", "shape_term", "scale_term")}
    for q in range(n):
        cs = np.flatnonzero((cls == cls[q]) & cand & (img != img[q]))[:2]
        if cls[q] == drop_rank1_of_class:
            cs = cs[:1]
        for r, c in enumerate(cs):
            for k, val in zip(cols, (q, r, c, 0.1 * r, 0.1 * r, 0.0)):
                cols[k].append(val)
    if bad_candidate is not None:
        cols["candidate_id"][-1] = bad_candidate
    cache.write_retrieval({k: np.asarray(v) for k, v in cols.items()}, cache_dir / cache.RETRIEVAL_PARQUET,
                          {"k": 2, "max_score": 1.0, "alpha": 1.0, "scale_term": "step"})
    return cols


@pytest.fixture(scope="module")
def composed(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("compose")
    data = make_toy_dataset(base / "toy", n_train=4, n_val=2, seed=3)
    cache_dir = base / "cache"
    build_segment_db(open_dataset("folder", data), cache_dir, params=DecomposeParams(min_area=4, preserved_ratio=1.0),
                     progress=False)
    cols = hand_made_retrieval(cache_dir)
    s = compose_dataset(cache_dir, progress=False)
    out = cache_dir / cache.GUIDANCE_H5
    return {"data": data, "cache": cache_dir, "cols": cols, "summary": s, "bytes": out.read_bytes()}


def read_all(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[...]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_guidance_h5_keys_shapes_and_content(composed):
    cache_dir = composed["cache"]
    with SegmentDB.open(cache_dir) as db, h5py.File(cache_dir / cache.GUIDANCE_H5, "r") as f:
        rows = db.image_rows()
        assert f.attrs["rank"] == 0 and f.attrs["n_images"] == len(rows) == 6
        assert {r["split"] for r in rows} == {"train", "val"}
        for r in rows:
            g, v = f[cache.image_key(r["split"], r["image_id"])], f[cache.valid_key(r["split"], r["image_id"])]
            assert g.shape == (r["height"], r["width"], 3) and g.dtype == np.uint8
            assert v.shape == (r["height"], r["width"]) and v.dtype == bool
            assert g.compression == "gzip"
            assert not g[...][~v[...]].any()
        # one image recomposed by hand from the DB equals the driver's output
        r = rows[-1]
        sample = open_dataset("folder", composed["data"]).load(
            next(x for x in open_dataset("folder", composed["data"]).refs(r["split"]) if x.image_id == r["image_id"]))
        ids = range(r["first_segment"], r["first_segment"] + r["n_segments"])
        match = select_matches(cache.read_retrieval(cache_dir)[0], len(db), 0)
        y0, x0, y1, x1, th, area = (db.col(c) for c in ("y0", "x0", "y1", "x1", "is_thing", "area"))
        queries = [QuerySegment((y0[s], x0[s], y1[s], x1[s]), db.crop(s)[1], bool(th[s]), int(area[s])) for s in ids]
        matches = [db.crop(int(match[s])) if match[s] >= 0 else None for s in ids]
        g, v = compose_guidance(sample.labels, db.meta, queries, matches)
        assert np.array_equal(g, f[cache.image_key(r["split"], r["image_id"])][...])
        assert np.array_equal(v, f[cache.valid_key(r["split"], r["image_id"])][...])
        assert v.any()


def test_deterministic_bytes_for_repeat_runs_and_jobs(composed):
    cache_dir = composed["cache"]
    out = cache_dir / cache.GUIDANCE_H5
    compose_dataset(cache_dir, progress=False, jobs=1)
    assert out.read_bytes() == composed["bytes"]
    compose_dataset(cache_dir, progress=False, jobs=2)
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(composed["bytes"]).digest()


def test_rank1_differs_and_missing_ranks_are_black(composed, tmp_path):
    cache_dir = composed["cache"]
    out = cache_dir / cache.GUIDANCE_H5
    try:
        s1 = compose_dataset(cache_dir, rank=1, progress=False)
        assert s1.n_matched == sum(1 for r in composed["cols"]["rank"] if r == 1) < composed["summary"].n_matched
        g0 = {k: v for k, v in read_all_bytes(composed["bytes"], tmp_path).items()}
        g1 = read_all(out)
        assert g0.keys() == g1.keys()
        assert any(not np.array_equal(g0[k], g1[k]) for k in g0 if not k.endswith("__valid"))
        with h5py.File(out, "r") as f:
            assert f.attrs["rank"] == 1
        # class 0 (sky) has no rank 1: its rows 0..1 (above everything else) are black at rank 1
        with SegmentDB.open(cache_dir) as db:
            for r in db.image_rows():
                top = g1[cache.valid_key(r["split"], r["image_id"]).lstrip("/")][:2]
                assert not top.any()
                assert g0[cache.valid_key(r["split"], r["image_id"]).lstrip("/")][:2, 3:].any()
        # overrides: one query at rank 1, everything else rank 0 → only its image changes
        with SegmentDB.open(cache_dir) as db:
            img_of = db.col("image_id")
            q = next(i for i, (qq, rr) in enumerate(zip(composed["cols"]["query_id"], composed["cols"]["rank"]))
                     if rr == 1 and db.col("is_thing")[qq])
            qid = composed["cols"]["query_id"][q]
            split = db.col("split")[qid]
            key = cache.image_key(split, img_of[qid]).lstrip("/")
        compose_dataset(cache_dir, overrides={int(qid): 1}, progress=False)
        go = read_all(out)
        changed = [k for k in g0 if not np.array_equal(g0[k], go[k])]
        assert key in changed and all(k.split("__")[0] == key for k in changed)
        with h5py.File(out, "r") as f:
            assert f.attrs["rank"] == "per-segment" and f.attrs["base_rank"] == 0
    finally:
        out.write_bytes(composed["bytes"])


def read_all_bytes(blob: bytes, tmp: Path) -> dict[str, np.ndarray]:
    p = tmp / "reference.h5"
    p.write_bytes(blob)
    try:
        return read_all(p)
    finally:
        p.unlink()


def test_errors_are_one_line_and_leave_no_output(composed, tmp_path):
    import shutil

    cache_dir = tmp_path / "cache"
    shutil.copytree(composed["cache"], cache_dir)
    (cache_dir / cache.GUIDANCE_H5).unlink()
    out = cache_dir / cache.GUIDANCE_H5
    with SegmentDB.open(cache_dir) as db:
        n = len(db)
    hand_made_retrieval(cache_dir, bad_candidate=n + 5)
    with pytest.raises(CacheError, match=r"retrieval\.parquet.*refers to segment") as e:
        compose_dataset(cache_dir, progress=False)
    assert "\n" not in str(e.value)
    assert not out.exists() and not list(out.parent.glob(out.name + ".*.tmp"))

    # through the CLI: one line on stderr, exit 1
    from stages.cli import main
    from stages.compose import command

    main.add_command(command)
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    res = CliRunner().invoke(main, ["--params", str(params), "compose", "--cache", str(cache_dir), "--no-progress"])
    assert res.exit_code == 1 and "retrieval.parquet" in res.output and "Traceback" not in res.output
    assert not out.exists()

    # a stale file whose ids fit but whose classes do not
    with SegmentDB.open(cache_dir) as db:
        cls = db.col("class_id")
    other = int(np.flatnonzero(cls != cls[0])[0])
    cache.write_retrieval({"query_id": np.array([0]), "rank": np.array([0]), "candidate_id": np.array([other]),
                           "score": np.zeros(1), "shape_term": np.zeros(1), "scale_term": np.zeros(1)},
                          cache_dir / cache.RETRIEVAL_PARQUET, {})
    with pytest.raises(CacheError, match=r"retrieval\.parquet: query 0 .* of class"):
        compose_dataset(cache_dir, progress=False)

    (cache_dir / cache.RETRIEVAL_PARQUET).unlink()
    with pytest.raises(CacheError, match=r"retrieval\.parquet: missing"):
        compose_dataset(cache_dir, progress=False)
    hand_made_retrieval(cache_dir)
    with pytest.raises(DataError, match="does not exist"):
        compose_dataset(cache_dir, data_root=tmp_path / "nowhere", progress=False)

    # a label map whose size no longer matches the DB (image and label both replaced)
    data = tmp_path / "toy"
    shutil.copytree(composed["data"], data)
    lab = data / "val" / "labels" / "val_001.png"
    cv2.imwrite(str(lab), np.zeros((20, 30), np.uint8))
    cv2.imwrite(str(data / "val" / "images" / "val_001.png"), np.zeros((20, 30, 3), np.uint8))
    cv2.imwrite(str(data / "val" / "instances" / "val_001.png"), np.zeros((20, 30), np.uint16))
    with pytest.raises(DataError, match=r"val_001\.png: label map is 30x20 but the segment database recorded 64x48"):
        compose_dataset(cache_dir, data_root=data, progress=False, jobs=1)
    assert not out.exists() and not list(out.parent.glob(out.name + ".*.tmp"))
    for p in (cache.SEGMENTS_H5, cache.SEGMENTS_PARQUET):
        assert (cache_dir / p).exists()


def test_cli_defaults_from_the_db_and_preview(composed, tmp_path):
    import shutil

    from stages.cli import main
    from stages.compose import command

    cache_dir = tmp_path / "cache"
    shutil.copytree(composed["cache"], cache_dir)
    (cache_dir / cache.GUIDANCE_H5).unlink()
    main.add_command(command)
    params = tmp_path / "params.yaml"
    params.write_text("compose:\n  preview: 3\n")
    res = CliRunner().invoke(main, ["--params", str(params), "compose", "--cache", str(cache_dir), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "6 images" in res.output
    assert (cache_dir / cache.GUIDANCE_H5).read_bytes() == composed["bytes"]
    pngs = sorted((cache_dir / "guidance_preview").glob("guidance_*.png"))
    assert len(pngs) == 3
    im = cv2.imread(str(pngs[0]))
    assert im.shape == (48, 3 * 64 + 2 * 2, 3)
    assert len(preview(cache_dir, 1)) == 1 and len(list((cache_dir / "guidance_preview").glob("*.png"))) == 1
