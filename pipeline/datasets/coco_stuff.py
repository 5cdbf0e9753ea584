"""COCO-Stuff in the SPADE layout: ``<root>/<split>_img/<id>.jpg``, ``<root>/<split>_label/<id>.png``,
optional ``<root>/<split>_inst/<id>.png`` (splits ``train``, ``val``).

Labels: COCO-Stuff ``stuffthingmaps`` values, class ids 0..181 (0..90 things, 91..181 stuff; the 11
thing ids COCO never annotates are kept so ids stay the file values), 255 = unlabeled
(``IGNORE_ID``). Names ship in ``coco_stuff_classes.json``.

Instances — limitation: SPADE's maps (``coco_generate_instance_map.py``) start from the label map
and paint every non-crowd object with a running uint8 counter, so a thing pixel holds its object's
counter and every other pixel its label value; counters and labels share one 0..255 space. We
build ``id = class_id·256 + raw + 1`` on thing pixels and 0 elsewhere, which separates objects of
different classes even when their counters clash. It cannot separate (a) a crowd region left
with its label value from the object whose counter equals that value, in the same class, nor
(b) objects whose counters wrap past 255. Stuff pixels get 0 (stuff segments are connected
components downstream). For exact per-object ids, convert COCO panoptic to the folder format.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.datasets.base import BundledClassesAdapter, SampleRef, list_images
from pipeline.datasets.folder import ordered_splits
from pipeline.errors import DataError

CLASSES_FILE = Path(__file__).with_name("coco_stuff_classes.json")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
COUNTER_RANGE = 256  # SPADE instance maps are uint8


class CocoStuffAdapter(BundledClassesAdapter):
    format = "coco-stuff"

    classes_file = CLASSES_FILE

    def splits(self) -> list[str]:
        return ordered_splits([p.name[: -len("_img")] for p in self.root.iterdir()
                               if p.is_dir() and p.name.endswith("_img") and len(p.name) > len("_img")])

    def refs(self, split: str) -> list[SampleRef]:
        images = self.root / f"{split}_img"
        if not split or not images.is_dir():
            raise DataError(images, f"split '{split}' not found")
        labels = self.root / f"{split}_label"
        instances = self.root / f"{split}_inst"
        has_inst = instances.is_dir()
        out = []
        for stem, image in list_images(images, IMAGE_EXTS).items():
            inst = instances / f"{stem}.png"
            out.append(SampleRef(image_id=stem, split=split, image=image,
                                 label=labels / f"{stem}.png",
                                 instance=inst if has_inst and inst.is_file() else None))
        return out

    def convert_instances(self, raw: np.ndarray, raw_labels: np.ndarray, labels: np.ndarray, ref: SampleRef) -> np.ndarray:
        """SPADE instance map → object ids (H×W int64): ``class·256 + raw + 1`` on things, else 0."""
        if raw.min() < 0 or raw.max() >= COUNTER_RANGE:
            raise DataError(ref.instance, f"instance values must be 0..{COUNTER_RANGE - 1} (SPADE uint8 map), "
                                          f"got {raw.min()}..{raw.max()}")
        thing = np.isin(labels, self.thing_id_array)
        return np.where(thing, labels.astype(np.int64) * COUNTER_RANGE + raw + 1, 0)
