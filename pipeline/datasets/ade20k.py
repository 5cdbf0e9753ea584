"""ADE20K SceneParsing (ADEChallengeData2016): ``<root>/images/{training,validation}/*.jpg``,
``<root>/annotations/{training,validation}/<name>.png`` and, optionally, instance annotations.

Splits are exposed as ``train`` (= ``training``) and ``val`` (= ``validation``).
Labels: uint8, 1..150 = the objectInfo150 classes, 0 = "other" (``IGNORE_ID``); no conversion.

Instances, first found wins per image:

1. ``<root>/annotations_instance/{training,validation}/<name>.png`` — the Places-challenge
   instance-segmentation files the released RESAIL code reads: an RGB PNG whose R channel is the
   instance class (an id of ``<root>/categoryMapping.txt``, which maps it to one of the 150
   classes) and whose G channel is the instance index (0 = no instance). An object is one
   (R, G) pair; its id here is ``R·256 + G``. It is kept only on pixels whose 150-class label is
   the class ``categoryMapping.txt`` gives for R and that class is a thing of our class list;
   elsewhere 0, so stuff and disagreeing pixels fall back to connected components downstream.
2. ``<root>/instances/{training,validation}/<name>.png`` — a 16-bit single-channel map, 0 = none,
   one id per whole object (e.g. derived from the full ADE20K release, as in ``../shared/data/ade20k``).
   Ids are kept on thing pixels only.

Subsets (adapter option ``subset``, ``resail decompose --subset``): ``all`` (default) or
``outdoor`` — ADE20K-outdoor, the images whose scene in ``<root>/sceneCategories.txt``
(``<name> <scene>`` per line, shipped with ADEChallengeData2016) is an outdoor scene: a scene in
``ade20k_outdoor_scenes.txt`` beside this module, or any scene whose name ends in ``_outdoor``.

Class names and thing flags ship in ``ade20k_classes.json``. Thing/stuff is the public ADE20K-150
panoptic split (100 things, 50 stuff) as registered by MaskFormer/Mask2Former for Detectron2
(``ADE20K_150_CATEGORIES``, ``isthing``); names are the full objectInfo150 names.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from pipeline.datasets.base import BundledClassesAdapter, SampleRef, list_images, read_image_rgb
from pipeline.errors import DataError

CLASSES_FILE = Path(__file__).with_name("ade20k_classes.json")
OUTDOOR_SCENES_FILE = Path(__file__).with_name("ade20k_outdoor_scenes.txt")
SPLIT_FOLDERS = {"train": "training", "val": "validation"}
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
INSTANCE_DIR = "annotations_instance"  # Places-challenge RGB files (R class, G index)
INSTANCE16_DIR = "instances"  # single-channel 16-bit object ids
CATEGORY_MAPPING = "categoryMapping.txt"
SCENE_CATEGORIES = "sceneCategories.txt"
SUBSETS = ("all", "outdoor")
INSTANCE_CODE = 256  # object id = R * 256 + G


def read_category_mapping(path: Path) -> dict[int, int]:
    """``categoryMapping.txt`` → {instance class id (R value): 150-class id}. One header line,
    then whitespace-separated ``<instance id> <class id> <name>`` rows."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise DataError(path, f"missing (needed to read {INSTANCE_DIR}/: maps its R channel to the 150 classes)") from None
    out: dict[int, int] = {}
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        try:
            inst, cls = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            raise DataError(path, f"line {n}: expected '<instance id> <class id> <name>', got {line.strip()!r}") from None
        if not (0 < inst < 256 and 0 < cls <= 150) or inst in out:
            raise DataError(path, f"line {n}: instance id {inst} / class id {cls} out of range or repeated")
        out[inst] = cls
    if not out:
        raise DataError(path, "no category rows")
    return out


def read_scene_categories(path: Path) -> dict[str, str]:
    """``sceneCategories.txt`` → {image name: scene}."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise DataError(path, "missing (the ADE20K-outdoor subset is defined by the scene of each image)") from None
    out: dict[str, str] = {}
    for n, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(path, f"line {n}: expected '<image name> <scene>', got {line.strip()!r}")
        out[parts[0]] = parts[1]
    return out


def outdoor_scenes() -> frozenset[str]:
    """The bundled outdoor scene names (comments after '#', one name per line)."""
    names = (line.split("#", 1)[0].strip() for line in OUTDOOR_SCENES_FILE.read_text().splitlines())
    return frozenset(n for n in names if n)


def is_outdoor(scene: str, listed: frozenset[str]) -> bool:
    return scene in listed or scene.endswith("_outdoor")


class ADE20KAdapter(BundledClassesAdapter):
    format = "ade20k"
    option_choices = {"subset": SUBSETS}

    classes_file = CLASSES_FILE

    def splits(self) -> list[str]:
        return [s for s, folder in SPLIT_FOLDERS.items() if (self.root / "images" / folder).is_dir()]

    @cached_property
    def _outdoor(self) -> set[str] | None:
        """Image names of the outdoor subset, or None for ``subset=all``."""
        if self.options["subset"] == "all":
            return None
        listed = outdoor_scenes()
        scenes = read_scene_categories(self.root / SCENE_CATEGORIES)
        return {name for name, scene in scenes.items() if is_outdoor(scene, listed)}

    @cached_property
    def _category_mapping(self) -> dict[int, int]:
        return read_category_mapping(self.root / CATEGORY_MAPPING)

    def refs(self, split: str) -> list[SampleRef]:
        folder = SPLIT_FOLDERS.get(split)
        images = self.root / "images" / (folder or split)
        if folder is None or not images.is_dir():
            raise DataError(images, f"split '{split}' not found (ADE20K splits: train = training, "
                                    f"val = validation)")
        labels = self.root / "annotations" / folder
        rgb_inst = self.root / INSTANCE_DIR / folder
        inst16 = self.root / INSTANCE16_DIR / folder
        keep = self._outdoor
        out = []
        for stem, image in list_images(images, IMAGE_EXTS).items():
            if keep is not None and stem not in keep:
                continue
            inst = next((p for p in (rgb_inst / f"{stem}.png", inst16 / f"{stem}.png") if p.is_file()), None)
            out.append(SampleRef(image_id=stem, split=split, image=image, label=labels / f"{stem}.png", instance=inst))
        return out

    @staticmethod
    def _is_rgb_instance(ref: SampleRef) -> bool:
        return ref.instance is not None and ref.instance.parent.parent.name == INSTANCE_DIR

    def read_instances(self, ref: SampleRef) -> np.ndarray:
        """``annotations_instance`` files → ``R·256 + G`` (H×W int64); 16-bit maps unchanged."""
        if not self._is_rgb_instance(ref):
            return super().read_instances(ref)
        if not ref.instance.is_file():
            raise DataError(ref.instance, "instance map is missing")
        rgb = read_image_rgb(ref.instance).astype(np.int64)
        return rgb[:, :, 0] * INSTANCE_CODE + rgb[:, :, 1]

    def convert_instances(self, raw: np.ndarray, raw_labels: np.ndarray, labels: np.ndarray, ref: SampleRef) -> np.ndarray:
        """Object ids (H×W int64) on thing pixels, 0 on stuff and "other"."""
        things = np.isin(labels, self.thing_id_array)
        if not self._is_rgb_instance(ref):
            return np.where(things, raw, 0).astype(np.int64)
        cls_of = np.zeros(256, dtype=np.int64)  # R value → 150-class id, 0 = not an instance class
        for inst, cls in self._category_mapping.items():
            cls_of[inst] = cls
        r, g = raw // INSTANCE_CODE, raw % INSTANCE_CODE
        unknown = np.unique(r[(g > 0) & (cls_of[r] == 0)])
        if unknown.size:
            raise DataError(ref.instance, f"instance class(es) {', '.join(map(str, unknown[:8].tolist()))} (R channel) "
                                          f"are not in {CATEGORY_MAPPING}")
        keep = (g > 0) & things & (cls_of[r] == labels)
        return np.where(keep, raw, 0).astype(np.int64)
