"""ADE20K SceneParsing (ADEChallengeData2016): ``<root>/images/{training,validation}/*.jpg``,
``<root>/annotations/{training,validation}/<name>.png`` and, optionally,
``<root>/instances/{training,validation}/<name>.png``.

Splits are exposed as ``train`` (= ``training``) and ``val`` (= ``validation``).
Labels: uint8, 1..150 = the objectInfo150 classes, 0 = "other" (``IGNORE_ID``); no conversion.
Instances (not part of the challenge release; e.g. derived from the full ADE20K): 16-bit PNG,
0 = none, one id per whole object, unique within the image. Ids are kept on thing pixels only,
because stuff segments are connected components downstream.

Class names and thing flags ship in ``ade20k_classes.json``. Thing/stuff is the public ADE20K-150
panoptic split (100 things, 50 stuff) as registered by MaskFormer/Mask2Former for Detectron2
(``ADE20K_150_CATEGORIES``, ``isthing``); names are the full objectInfo150 names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.datasets.base import BundledClassesAdapter, SampleRef, find_image
from pipeline.errors import DataError

CLASSES_FILE = Path(__file__).with_name("ade20k_classes.json")
SPLIT_FOLDERS = {"train": "training", "val": "validation"}
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


class ADE20KAdapter(BundledClassesAdapter):
    format = "ade20k"

    classes_file = CLASSES_FILE

    def splits(self) -> list[str]:
        return [s for s, folder in SPLIT_FOLDERS.items() if (self.root / "images" / folder).is_dir()]

    def refs(self, split: str) -> list[SampleRef]:
        folder = SPLIT_FOLDERS.get(split)
        images = self.root / "images" / (folder or split)
        if folder is None or not images.is_dir():
            raise DataError(images, f"split '{split}' not found (ADE20K splits: train = training, "
                                    f"val = validation)")
        labels = self.root / "annotations" / folder
        instances = self.root / "instances" / folder
        stems = sorted({p.stem for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTS})
        out = []
        for stem in stems:
            inst = instances / f"{stem}.png"
            out.append(SampleRef(image_id=stem, split=split, image=find_image(images, stem, IMAGE_EXTS),
                                 label=labels / f"{stem}.png", instance=inst if inst.is_file() else None))
        return out

    def convert_instances(self, raw: np.ndarray, raw_labels: np.ndarray, labels: np.ndarray, ref: SampleRef) -> np.ndarray:
        """Object ids (H×W int64) on thing pixels, 0 on stuff and "other"."""
        return np.where(np.isin(labels, self.thing_id_array), raw, 0).astype(np.int64)
