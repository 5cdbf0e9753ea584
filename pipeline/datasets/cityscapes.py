"""Cityscapes in the official layout, labels mapped to the 19 evaluation classes (trainIds).

``<root>/leftImg8bit/<split>/<city>/<base>_leftImg8bit.png`` (image),
``<root>/gtFine/<split>/<city>/<base>_gtFine_labelIds.png`` (uint8 labelIds 0..33) and
``<root>/gtFine/<split>/<city>/<base>_gtFine_instanceIds.png`` (uint16; optional). ``image_id`` is
``<base>``, e.g. ``aachen_000000_000019``.

Labels: the public labelId → trainId table of the benchmark; the 15 labelIds without a trainId
(unlabeled … ground, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer,
and the license plate id -1, stored as 255 if ever written) become ``IGNORE_ID`` 255. Any other raw
value is not a labelId (e.g. a trainId or colour map given by mistake) and is a DataError.

Instances: instanceIds value ≥ 1000 is ``labelId·1000 + k``, unique within the image, and is kept
as the object id; values < 1000 (stuff, or crowd "groups") become 0. Ids are also zeroed where the
mapped label is not a thing class (caravan/trailer instances lie on ignore pixels).
"""
from __future__ import annotations


import numpy as np

from pipeline.datasets.base import ClassInfo, ClassMeta, DatasetAdapter, SampleRef
from pipeline.datasets.folder import ordered_splits
from pipeline.errors import DataError

IGNORE_ID = 255
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
INSTANCE_DIVISOR = 1000

# trainId → (name, thing, labelId)
TRAIN_CLASSES: tuple[tuple[str, bool, int], ...] = (
    ("road", False, 7), ("sidewalk", False, 8), ("building", False, 11), ("wall", False, 12),
    ("fence", False, 13), ("pole", False, 17), ("traffic light", False, 19), ("traffic sign", False, 20),
    ("vegetation", False, 21), ("terrain", False, 22), ("sky", False, 23), ("person", True, 24),
    ("rider", True, 25), ("car", True, 26), ("truck", True, 27), ("bus", True, 28), ("train", True, 31),
    ("motorcycle", True, 32), ("bicycle", True, 33),
)
NUM_LABEL_IDS = 34  # labelIds 0..33

CITYSCAPES_META = ClassMeta(
    dataset="cityscapes",
    ignore_id=IGNORE_ID,
    classes=tuple(ClassInfo(i, name, thing) for i, (name, thing, _) in enumerate(TRAIN_CLASSES)),
)


def _label_lut() -> np.ndarray:
    """``lut[raw]`` = trainId, 255 for labelIds without one, -1 for values that are no labelId."""
    lut = np.full(256, -1, dtype=np.int64)
    lut[:NUM_LABEL_IDS] = IGNORE_ID
    lut[255] = IGNORE_ID  # license plate (-1) if a writer wrapped it to uint8
    for train_id, (_, _, label_id) in enumerate(TRAIN_CLASSES):
        lut[label_id] = train_id
    return lut


LABEL_LUT = _label_lut()


class CityscapesAdapter(DatasetAdapter):
    format = "cityscapes"

    def classes(self) -> ClassMeta:
        return CITYSCAPES_META

    def splits(self) -> list[str]:
        base = self.root / "leftImg8bit"
        if not base.is_dir():
            return []
        return ordered_splits([p.name for p in base.iterdir() if p.is_dir()])

    def refs(self, split: str) -> list[SampleRef]:
        images = self.root / "leftImg8bit" / split
        if not images.is_dir():
            raise DataError(images, f"split '{split}' not found")
        out = []
        for img in images.glob(f"*/*{IMAGE_SUFFIX}"):
            base = img.name[: -len(IMAGE_SUFFIX)]
            gt = self.root / "gtFine" / split / img.parent.name
            inst = gt / f"{base}{INSTANCE_SUFFIX}"
            out.append(SampleRef(image_id=base, split=split, image=img, label=gt / f"{base}{LABEL_SUFFIX}",
                                 instance=inst if inst.is_file() else None))
        return sorted(out, key=lambda r: r.image_id)

    def convert_labels(self, raw: np.ndarray, ref: SampleRef) -> np.ndarray:
        """labelIds (H×W int) → trainIds (H×W int64, 255 = ignore)."""
        in_range = (raw >= 0) & (raw < LABEL_LUT.size)
        out = np.where(in_range, LABEL_LUT[np.clip(raw, 0, LABEL_LUT.size - 1)], -1)
        if (out < 0).any():
            bad = np.unique(raw[out < 0])
            raise DataError(ref.label, f"value(s) {', '.join(map(str, bad[:8].tolist()))} are not Cityscapes "
                                       f"labelIds (0..33)")
        return out

    def convert_instances(self, raw: np.ndarray, raw_labels: np.ndarray, labels: np.ndarray, ref: SampleRef) -> np.ndarray:
        """instanceIds → object ids (H×W int64): raw ≥ 1000 on thing pixels, 0 elsewhere."""
        keep = (raw >= INSTANCE_DIVISOR) & np.isin(labels, self.thing_id_array)
        return np.where(keep, raw, 0).astype(np.int64)
