"""Dataset adapters: layouts, conversions, validation errors, and a check on the real samples."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.datasets import FORMATS, open_dataset
from pipeline.datasets.base import ClassMeta
from pipeline.errors import DataError

from tests.conftest import SHARED_DATA as SHARED
from tests.fixtures.dataset_layouts import BUILDERS, CITYSCAPES_TRAIN_ID, COLOUR, Built, write_index, write_rgb


@pytest.fixture(params=sorted(BUILDERS))
def built(request, tmp_path: Path) -> Built:
    return BUILDERS[request.param](tmp_path / request.param)


def _ref(ds, b: Built):
    return next(r for r in ds.refs(b.split) if r.image_id == b.image_id)


# ------------------------------------------------------------------ every adapter, its own layout
def test_all_formats_registered():
    assert set(BUILDERS) == set(FORMATS)


def test_splits_and_ref_order(built: Built):
    ds = open_dataset(built.format, built.root)
    assert ds.splits() == built.splits
    for split, ids in built.ids.items():
        refs = ds.refs(split)
        assert [r.image_id for r in refs] == ids
        assert all(r.split == split for r in refs)
    assert [r.image_id for r in ds.iter_refs()] == [i for s in built.splits for i in built.ids[s]]


def test_load_image_labels_instances(built: Built):
    ds = open_dataset(built.format, built.root)
    s = ds.load(_ref(ds, built))
    assert s.image_id == built.image_id and s.split == built.split
    assert s.image.dtype == np.uint8 and s.image.shape == (*built.labels.shape, 3)
    if built.exact_colour:
        assert (s.image == np.array(COLOUR, dtype=np.uint8)).all()
    else:  # JPEG: a few levels off, but a channel swap would be ~100 off
        assert np.abs(s.image.astype(int) - np.array(COLOUR)).max() <= 4
    assert s.labels.dtype == np.int32
    np.testing.assert_array_equal(s.labels, built.labels)
    if built.instances is None:
        assert s.instances is None
    else:
        assert s.instances is not None and s.instances.dtype == np.int64
        np.testing.assert_array_equal(s.instances, built.instances)


def test_refs_do_not_fail_for_missing_label(built: Built):
    ds = open_dataset(built.format, built.root)
    ref = _ref(ds, built)
    ref.label.unlink()
    again = _ref(ds, built)  # still listed, pointing at the expected path
    assert again.label == ref.label
    with pytest.raises(DataError, match="label map is missing") as e:
        ds.load(again)
    assert str(ref.label) in str(e.value)


def test_label_size_mismatch(built: Built):
    ds = open_dataset(built.format, built.root)
    ref = _ref(ds, built)
    h, w = built.labels.shape
    write_index(ref.label, np.zeros((h + 1, w + 2), dtype=np.uint8))
    with pytest.raises(DataError, match="does not match image size") as e:
        ds.load(ref)
    assert str(ref.label) in str(e.value)


def test_unknown_class_value(built: Built):
    ds = open_dataset(built.format, built.root)
    ref = _ref(ds, built)
    bad = built.labels.astype(np.uint8).copy()
    bad[0, 0] = built.bad_class_value
    write_index(ref.label, bad)
    with pytest.raises(DataError, match=str(built.bad_class_value)) as e:
        ds.load(ref)
    assert str(ref.label) in str(e.value)


@pytest.mark.parametrize("content", [b"not an image at all", "header-only"])
def test_corrupt_image(built: Built, content):
    ds = open_dataset(built.format, built.root)
    ref = _ref(ds, built)
    data = ref.image.read_bytes()
    ref.image.write_bytes(data[:40] if content == "header-only" else content)
    with pytest.raises(DataError, match="corrupt") as e:
        ds.load(ref)
    assert str(ref.image) in str(e.value)


def test_jpeg_truncated_mid_file(tmp_path: Path):
    b = BUILDERS["ade20k"](tmp_path / "ade")
    ds = open_dataset("ade20k", b.root)
    ref = _ref(ds, b)
    rng = np.random.default_rng(0)  # textured, so the cut falls inside the entropy-coded data
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (*b.labels.shape, 3), dtype=np.uint8))
    ref.image.write_bytes(buf.tobytes()[: len(buf) - 20])
    with pytest.raises(DataError, match="truncated") as e:
        ds.load(ref)
    assert str(ref.image) in str(e.value)


def test_unknown_split_and_missing_root(built: Built, tmp_path: Path):
    ds = open_dataset(built.format, built.root)
    with pytest.raises(DataError, match="nope"):
        ds.refs("nope")
    with pytest.raises(DataError, match="does not exist") as e:
        open_dataset(built.format, tmp_path / "absent")
    assert str(tmp_path / "absent") in str(e.value)


def test_instance_size_mismatch(built: Built):
    ds = open_dataset(built.format, built.root)
    ref = _ref(ds, built)
    if ref.instance is None:
        pytest.skip(f"{built.format} fixture sample has no instance map")
    write_index(ref.instance, np.zeros((2, 2), dtype=np.uint16))
    with pytest.raises(DataError, match="instance map size") as e:
        ds.load(ref)
    assert str(ref.instance) in str(e.value)


def test_class_meta_round_trips(built: Built):
    meta = open_dataset(built.format, built.root).classes()
    assert ClassMeta.from_dict(json.loads(meta.to_json())) == meta
    lut = meta.lookup_table()
    assert lut[meta.ignore_id] == meta.num_classes
    assert sorted(lut[meta.ids].tolist()) == list(range(meta.num_classes))


# ------------------------------------------------------------------ per-dataset specifics
def test_camvid_classes(tmp_path: Path):
    meta = open_dataset("camvid", BUILDERS["camvid"](tmp_path / "cv").root).classes()
    assert meta.ignore_id == 11
    assert meta.ids.tolist() == list(range(11))
    assert [c.name for c in meta.classes] == ["Sky", "Building", "Pole", "Road", "Pavement", "Tree",
                                              "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"]
    assert meta.thing_ids == {8, 9, 10}


def test_camvid_splits_follow_image_folders(tmp_path: Path):
    b = BUILDERS["camvid"](tmp_path / "cv")
    write_rgb(b.root / "test" / "x.png", (1, 1, 1), (2, 2))  # testannot missing: listed, load fails
    ds = open_dataset("camvid", b.root)
    assert ds.splits() == ["train", "val", "test"]
    (ref,) = ds.refs("test")
    assert ref.label == b.root / "testannot" / "x.png"
    with pytest.raises(DataError, match="testannot"):
        ds.load(ref)


# The official Cityscapes label table (cityscapesscripts labels.py), written out here independently:
# labelId → (name, trainId or 255, hasInstances).
OFFICIAL_CITYSCAPES = {
    0: ("unlabeled", 255, False), 1: ("ego vehicle", 255, False), 2: ("rectification border", 255, False),
    3: ("out of roi", 255, False), 4: ("static", 255, False), 5: ("dynamic", 255, False), 6: ("ground", 255, False),
    7: ("road", 0, False), 8: ("sidewalk", 1, False), 9: ("parking", 255, False), 10: ("rail track", 255, False),
    11: ("building", 2, False), 12: ("wall", 3, False), 13: ("fence", 4, False), 14: ("guard rail", 255, False),
    15: ("bridge", 255, False), 16: ("tunnel", 255, False), 17: ("pole", 5, False), 18: ("polegroup", 255, False),
    19: ("traffic light", 6, False), 20: ("traffic sign", 7, False), 21: ("vegetation", 8, False),
    22: ("terrain", 9, False), 23: ("sky", 10, False), 24: ("person", 11, True), 25: ("rider", 12, True),
    26: ("car", 13, True), 27: ("truck", 14, True), 28: ("bus", 15, True), 29: ("caravan", 255, True),
    30: ("trailer", 255, True), 31: ("train", 16, True), 32: ("motorcycle", 17, True), 33: ("bicycle", 18, True),
}


def test_cityscapes_label_id_table(tmp_path: Path):
    ds = open_dataset("cityscapes", BUILDERS["cityscapes"](tmp_path / "cs").root)
    meta = ds.classes()
    assert ds.options == {"label_space": "label-ids"}  # the default, as SPADE/OASIS/released code
    assert meta.num_classes == 34 and meta.ids.tolist() == list(range(34)) and meta.ignore_id == 255
    assert {c.id: c.name for c in meta.classes} == {i: v[0] for i, v in OFFICIAL_CITYSCAPES.items()}
    assert meta.thing_ids == frozenset(range(24, 34))  # released code's fg_mask_id_list
    # with the void code, 35 values: SPADE's --label_nc 35
    assert len(meta.lookup_table()) == 256 and meta.lookup_table()[255] == 34


def test_cityscapes_label_to_train_ids_matches_the_official_table():
    from pipeline.datasets.cityscapes import LABEL_TO_TRAIN_LUT, label_to_train_ids

    ids = np.array([list(range(34)) + [255]])
    expected = [OFFICIAL_CITYSCAPES[i][1] for i in range(34)] + [255]
    assert label_to_train_ids(ids)[0].tolist() == expected
    assert LABEL_TO_TRAIN_LUT[:34].tolist() == expected[:34]
    assert {i: t for i, t in CITYSCAPES_TRAIN_ID.items()} == {i: v[1] for i, v in OFFICIAL_CITYSCAPES.items() if v[1] != 255}
    with pytest.raises(ValueError, match="40"):
        label_to_train_ids(np.array([[7, 40]]))


@pytest.mark.parametrize("space", ["label-ids", "train-ids"])
def test_cityscapes_full_label_table(tmp_path: Path, space: str):
    b = BUILDERS["cityscapes"](tmp_path / "cs")
    ds = open_dataset("cityscapes", b.root, {"label_space": space})
    ref = _ref(ds, b)
    raw = np.array([list(range(34)) + [255]], dtype=np.uint8).repeat(2, axis=0)  # 255: license plate (-1)
    write_rgb(ref.image, COLOUR, raw.shape)
    write_index(ref.label, raw)
    ref.instance.unlink()
    ref = _ref(ds, b)
    assert ref.instance is None
    s = ds.load(ref)
    if space == "label-ids":
        expected = list(range(34)) + [255]
    else:
        expected = [CITYSCAPES_TRAIN_ID.get(i, 255) for i in range(34)] + [255]
    assert s.labels[0].tolist() == expected
    assert s.instances is None


def test_cityscapes_train_ids_space(tmp_path: Path):
    b = BUILDERS["cityscapes"](tmp_path / "cs")
    ds = open_dataset("cityscapes", b.root, {"label_space": "train-ids"})
    s = ds.load(_ref(ds, b))
    np.testing.assert_array_equal(s.labels, b.extra["train_labels"])
    np.testing.assert_array_equal(s.instances, b.extra["train_instances"])  # caravan instance dropped (ignore)


def test_adapter_options_are_checked(tmp_path: Path):
    from pipeline.errors import ConfigError

    b = BUILDERS["cityscapes"](tmp_path / "cs")
    with pytest.raises(ConfigError, match="label_space"):
        open_dataset("cityscapes", b.root, {"label_space": "trainids"})
    with pytest.raises(ConfigError, match="no option 'subset'"):
        open_dataset("cityscapes", b.root, {"subset": "outdoor"})
    assert open_dataset("cityscapes", b.root, {"label_space": None}).options == {"label_space": "label-ids"}


def test_cityscapes_classes_and_missing_instances(tmp_path: Path):
    b = BUILDERS["cityscapes"](tmp_path / "cs")
    ds = open_dataset("cityscapes", b.root, {"label_space": "train-ids"})
    meta = ds.classes()
    assert meta.ignore_id == 255 and meta.ids.tolist() == list(range(19))
    names = [c.name for c in meta.classes]
    assert names[:3] == ["road", "sidewalk", "building"] and names[13] == "car" and names[18] == "bicycle"
    assert {names[i] for i in meta.thing_ids} == {"person", "rider", "car", "truck", "bus", "train",
                                                   "motorcycle", "bicycle"}
    ref = next(r for r in ds.refs("train") if r.image_id == b.extra["no_instance_id"])
    assert ref.instance is None
    assert ds.load(ref).instances is None


def test_ade20k_classes(tmp_path: Path):
    ds = open_dataset("ade20k", BUILDERS["ade20k"](tmp_path / "ade").root)
    meta = ds.classes()
    assert meta.ignore_id == 0 and meta.ids.tolist() == list(range(1, 151))
    assert len(meta.thing_ids) == 100
    assert meta.by_id(1).name == "wall" and meta.by_id(150).name == "flag"
    assert meta.by_id(13).name.startswith("person") and meta.by_id(21).name.startswith("car")
    for stuff in (1, 2, 3, 7, 10, 22):  # wall, building, sky, road, grass, water
        assert not meta.by_id(stuff).thing
    for thing in (13, 21, 20, 81, 128, 150):  # person, car, chair, bus, bicycle, flag
        assert meta.by_id(thing).thing
    with pytest.raises(DataError, match="training"):
        ds.refs("training")  # exposed as "train"
    assert all(r.instance is None for r in ds.refs("val"))


def test_coco_stuff_classes(tmp_path: Path):
    ds = open_dataset("coco-stuff", BUILDERS["coco-stuff"](tmp_path / "cs").root)
    meta = ds.classes()
    assert meta.ignore_id == 255 and meta.ids.tolist() == list(range(182))
    assert meta.thing_ids == frozenset(range(91))
    assert meta.by_id(0).name == "person" and meta.by_id(156).name == "sky-other"
    assert meta.by_id(181).name == "wood" and meta.by_id(11).name == "street sign"
    assert all(r.instance is None for r in ds.refs("val"))  # no val_inst folder


def test_coco_stuff_instances_are_unique_per_object(tmp_path: Path):
    b = BUILDERS["coco-stuff"](tmp_path / "cs")
    ds = open_dataset("coco-stuff", b.root)
    s = ds.load(_ref(ds, b))
    # person counter 0, person counter 1 and car counter 0 are three different objects
    assert len({s.instances[0, 0], s.instances[0, 1], s.instances[1, 1]}) == 3
    assert (s.instances[s.labels >= 91] == 0).all()


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"name": "x", "ignore_id": 1})])
def test_folder_missing_or_invalid_classes_json(tmp_path: Path, content):
    b = BUILDERS["folder"](tmp_path / "f")
    path = b.root / "classes.json"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    ds = open_dataset("folder", b.root)
    with pytest.raises(DataError, match="class list") as e:
        ds.load(_ref(ds, b))
    assert str(path) in str(e.value)


def test_folder_duplicate_class_id(tmp_path: Path):
    b = BUILDERS["folder"](tmp_path / "f")
    path = b.root / "classes.json"
    path.write_text(json.dumps({"name": "x", "ignore_id": 255, "classes": [
        {"id": 1, "name": "a", "thing": False}, {"id": 1, "name": "b", "thing": True}]}))
    with pytest.raises(DataError, match="duplicate") as e:
        open_dataset("folder", b.root).classes()
    assert str(path) in str(e.value)


# ------------------------------------------------------------------ real samples in ../shared/data
def _shared(name: str) -> Path:
    root = SHARED / name
    if not root.is_dir():
        pytest.skip(f"real sample data not found at {root} (the repo's sibling ../shared/data)")
    return root


def _check_sample(ds, s) -> None:
    meta = ds.classes()
    assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
    assert s.labels.shape == s.image.shape[:2]
    assert np.isin(s.labels, np.append(meta.ids, meta.ignore_id)).all()
    if s.instances is not None:
        assert s.instances.shape == s.labels.shape and s.instances.min() >= 0
        for obj in np.unique(s.instances[s.instances > 0]):  # one class per object
            assert np.unique(s.labels[s.instances == obj]).size == 1, obj


def test_real_camvid_folder():
    root = _shared("camvid")
    ds = open_dataset("folder", root)
    assert ds.splits() == ["train", "val"]
    assert len(ds.refs("train")) == 367 and len(ds.refs("val")) == 101
    s = ds.load(ds.refs("val")[0])
    _check_sample(ds, s)
    assert s.image.shape == (360, 480, 3) and s.instances is None
    # the built-in CamVid class list is the same as the shipped folder-format one
    assert ds.classes().to_dict()["classes"] == open_dataset("camvid", root).classes().to_dict()["classes"]


def test_real_cityscapes():
    ds = open_dataset("cityscapes", _shared("cityscapes"), {"label_space": "train-ids"})
    assert ds.splits() == ["train", "val"]
    assert [r.image_id for r in ds.refs("train")][:2] == ["aachen_000000_000019", "aachen_000001_000019"]
    for ref in (ds.refs("val")[0], ds.refs("train")[0]):
        s = ds.load(ref)
        _check_sample(ds, s)
        raw = cv2.imread(str(ref.label), cv2.IMREAD_UNCHANGED)
        lut = np.array([CITYSCAPES_TRAIN_ID.get(i, 255) for i in range(256)])
        np.testing.assert_array_equal(s.labels, lut[raw])
        inst = s.instances
        assert inst is not None and (inst > 0).any()
        on = inst > 0
        np.testing.assert_array_equal(s.labels[on], lut[inst[on] // 1000])
    assert s.image.shape == (1024, 2048, 3)


def test_real_ade20k():
    ds = open_dataset("ade20k", _shared("ade20k"))
    assert ds.splits() == ["train", "val"]
    train, val = ds.refs("train")[0], ds.refs("val")[0]
    assert train.instance is not None and val.instance is None
    s = ds.load(train)
    _check_sample(ds, s)
    assert (s.instances > 0).any()
    assert not np.isin(s.labels[s.instances > 0], [0, *[c.id for c in ds.classes().classes if not c.thing]]).any()
    _check_sample(ds, ds.load(val))


def test_real_coco_stuff():
    ds = open_dataset("coco-stuff", _shared("coco_stuff"))
    assert ds.splits() == ["train", "val"]
    assert len(ds.refs("train")) == 13 and len(ds.refs("val")) == 8
    for ref in (ds.refs("train")[0], ds.refs("val")[0]):
        s = ds.load(ref)
        _check_sample(ds, s)
        on = s.instances > 0
        assert on.any()
        np.testing.assert_array_equal((s.instances[on] - 1) // 256, s.labels[on])
        assert (s.labels[on] <= 90).all()


def test_real_coco_panoptic_folder():
    ds = open_dataset("folder", _shared("coco_panoptic"))
    assert ds.splits() == ["train"]
    ref = ds.refs("train")[0]
    assert ref.instance is not None
    s = ds.load(ref)
    _check_sample(ds, s)
    assert ds.classes().num_classes == 133 and len(ds.classes().thing_ids) == 80
    assert np.unique(s.instances[s.instances > 0]).size > 1


def test_real_cityscapes_label_ids():
    ds = open_dataset("cityscapes", _shared("cityscapes"))
    ref = ds.refs("train")[0]
    s = ds.load(ref)
    _check_sample(ds, s)
    raw = cv2.imread(str(ref.label), cv2.IMREAD_UNCHANGED).astype(np.int64)
    np.testing.assert_array_equal(s.labels, raw)  # labelIds kept as they are
    on = s.instances > 0
    np.testing.assert_array_equal(s.labels[on], s.instances[on] // 1000)
    assert (s.labels[on] >= 24).all()


# ------------------------------------------------------------------ ADE20K instance-challenge files, outdoor subset
from tests.fixtures.dataset_layouts import make_ade20k_instance_challenge  # noqa: E402


def test_ade20k_annotations_instance_one_object_per_instance(tmp_path: Path):
    b = make_ade20k_instance_challenge(tmp_path / "ade")
    ds = open_dataset("ade20k", b.root)
    ref = _ref(ds, b)
    assert ref.instance == b.root / "annotations_instance" / "training" / f"{b.image_id}.png"
    s = ds.load(ref)
    np.testing.assert_array_equal(s.labels, b.labels)
    np.testing.assert_array_equal(s.instances, b.instances)
    from pipeline.decompose.segments import decompose

    segs = decompose(s.labels, s.instances, ds.classes(), min_area=1)
    things = sorted((seg.class_id, seg.area) for seg in segs if seg.source == "instance")
    assert things == [(13, 3), (21, 1), (21, 2), (150, 1)]  # two cars stay two segments


def test_ade20k_instance_mapping_errors(tmp_path: Path):
    b = make_ade20k_instance_challenge(tmp_path / "ade")
    ds = open_dataset("ade20k", b.root)
    ref = _ref(ds, b)
    (b.root / "categoryMapping.txt").write_text("Instance_ID ADE_ID Name\n1 13 person\n2 21 car\n")  # no R = 3
    with pytest.raises(DataError, match="instance class"):
        open_dataset("ade20k", b.root).load(ref)
    (b.root / "categoryMapping.txt").unlink()
    with pytest.raises(DataError, match="categoryMapping.txt"):
        open_dataset("ade20k", b.root).load(ref)


def test_ade20k_outdoor_subset(tmp_path: Path):
    b = make_ade20k_instance_challenge(tmp_path / "ade")
    ds = open_dataset("ade20k", b.root, {"subset": "outdoor"})
    for split, ids in b.extra["outdoor"].items():
        assert [r.image_id for r in ds.refs(split)] == ids
    assert [r.image_id for r in open_dataset("ade20k", b.root).refs("train")] == b.ids["train"]
    (b.root / "sceneCategories.txt").unlink()
    with pytest.raises(DataError, match="sceneCategories.txt"):
        open_dataset("ade20k", b.root, {"subset": "outdoor"}).refs("train")


def test_outdoor_scene_list_is_clean():
    from pipeline.datasets.ade20k import is_outdoor, outdoor_scenes

    names = outdoor_scenes()
    assert len(names) > 100 and all(n == n.lower() and " " not in n and "/" not in n for n in names)
    for indoor in ("bathroom", "bedroom", "kitchen", "living_room", "airport_terminal", "art_gallery"):
        assert not is_outdoor(indoor, names)
    for outdoor in ("street", "highway", "mountain_snowy", "church_outdoor", "coast"):
        assert is_outdoor(outdoor, names)


# ------------------------------------------------------------------ class tables are validated
@pytest.mark.parametrize("bad, match", [
    ({"ignore_id": -1}, "ignore_id"),  # would have overwritten the highest class in lookup_table
    ({"ignore_id": 70000}, "ignore_id"),
    ({"classes": [{"id": 10 ** 12, "name": "huge", "thing": False}]}, "0..65535"),
    ({"classes": [{"id": -3, "name": "neg", "thing": False}]}, "0..65535"),
    ({"classes": [{"id": 1.5, "name": "float", "thing": False}]}, "integer"),
    ({"classes": [{"id": "2", "name": "text", "thing": False}]}, "integer"),
    ({"classes": [{"id": 2, "name": "car", "thing": "false"}]}, "true or false"),
    ({"classes": [{"id": 2, "name": "car", "thing": 1}]}, "true or false"),
    ({"classes": []}, "empty"),
])
def test_class_table_types_and_ranges(tmp_path: Path, bad: dict, match: str):
    b = BUILDERS["folder"](tmp_path / "f")
    table = {"name": "x", "ignore_id": 255, "classes": [{"id": 0, "name": "road", "thing": False}]}
    if "classes" in bad:
        table["classes"] = table["classes"] + bad["classes"] if bad["classes"] else []
    else:
        table.update(bad)
    (b.root / "classes.json").write_text(json.dumps(table))
    with pytest.raises(DataError, match=match) as e:
        open_dataset("folder", b.root).classes()
    assert str(b.root / "classes.json") in str(e.value)


def test_negative_ignore_id_used_to_overwrite_the_highest_class():
    """The bug the validation prevents: lut[-1] is the last entry, i.e. the highest class id."""
    from pipeline.datasets.base import ClassInfo

    with pytest.raises(ValueError, match="ignore_id"):
        ClassMeta("x", -1, (ClassInfo(0, "a", False), ClassInfo(5, "b", True)))


def test_uppercase_jpg_is_listed_and_loaded(tmp_path: Path):
    b = BUILDERS["folder"](tmp_path / "f")
    img = b.root / "train" / "images" / "a.png"
    jpg = img.with_name("a.JPG")
    write_rgb(jpg.with_suffix(".jpg"), COLOUR, b.labels.shape)
    jpg.with_suffix(".jpg").rename(jpg)
    img.unlink()
    ds = open_dataset("folder", b.root)
    ref = _ref(ds, b)
    assert ref.image == jpg
    s = ds.load(ref)
    assert np.abs(s.image.astype(int) - np.array(COLOUR)).max() <= 4
