"""Cityscapes in the official layout, in its full labelId space (default) or the 19 trainIds.

``<root>/leftImg8bit/<split>/<city>/<base>_leftImg8bit.png`` (image),
``<root>/gtFine/<split>/<city>/<base>_gtFine_labelIds.png`` (uint8 labelIds 0..33) and
``<root>/gtFine/<split>/<city>/<base>_gtFine_instanceIds.png`` (uint16; optional). ``image_id`` is
``<base>``, e.g. ``aachen_000000_000019``.

Label spaces (adapter option ``label_space``, ``resail decompose --label-space``):

* ``label-ids`` (default) — what SPADE, OASIS and the released RESAIL code train on
  (``--label_nc 35``): the 34 labelIds 0..33 of the official label table
  (``cityscapesscripts/helpers/labels.py``) are the classes, with their official names, including
  unlabeled, ego vehicle, rectification border, out of roi, static, dynamic, ground, parking, …
  Things are labelIds 24..33 (person … bicycle, caravan and trailer included), the released
  code's ``fg_mask_id_list``. The only void value is the license plate, labelId −1, which a uint8
  labelIds PNG cannot hold; written as 255 it is ``IGNORE_ID`` 255.
* ``train-ids`` — the 19 evaluation classes; the 15 labelIds without a trainId (and 255) become
  ``IGNORE_ID`` 255; things are the 8 trainIds person … bicycle.

Any other raw value is not a labelId (e.g. a trainId or colour map given by mistake) and is a
DataError. :func:`label_to_train_ids` / :data:`LABEL_TO_TRAIN_LUT` map labelIds to trainIds for
evaluation protocols that need the 19 classes.

Instances: instanceIds value ≥ 1000 is ``labelId·1000 + k``, unique within the image, and is kept
as the object id; values < 1000 (stuff, or crowd "groups") become 0. Ids are also zeroed where the
label is not a thing class of the chosen space (in train-ids, caravan/trailer lie on ignore pixels).
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
LABEL_SPACES = ("label-ids", "train-ids")  # first = default

# The official label table: labelId → (name, trainId or None, hasInstances). labelId −1 (license
# plate) is not listed: it is the void value (255 in a uint8 PNG).
LABELS: tuple[tuple[str, int | None, bool], ...] = (
    ("unlabeled", None, False), ("ego vehicle", None, False), ("rectification border", None, False),
    ("out of roi", None, False), ("static", None, False), ("dynamic", None, False), ("ground", None, False),
    ("road", 0, False), ("sidewalk", 1, False), ("parking", None, False), ("rail track", None, False),
    ("building", 2, False), ("wall", 3, False), ("fence", 4, False), ("guard rail", None, False),
    ("bridge", None, False), ("tunnel", None, False), ("pole", 5, False), ("polegroup", None, False),
    ("traffic light", 6, False), ("traffic sign", 7, False), ("vegetation", 8, False), ("terrain", 9, False),
    ("sky", 10, False), ("person", 11, True), ("rider", 12, True), ("car", 13, True), ("truck", 14, True),
    ("bus", 15, True), ("caravan", None, True), ("trailer", None, True), ("train", 16, True),
    ("motorcycle", 17, True), ("bicycle", 18, True),
)
NUM_LABEL_IDS = len(LABELS)  # labelIds 0..33

LABEL_ID_META = ClassMeta(
    dataset="cityscapes",
    ignore_id=IGNORE_ID,
    classes=tuple(ClassInfo(i, name, thing) for i, (name, _, thing) in enumerate(LABELS)),
)

# trainId → (name, thing, labelId)
TRAIN_CLASSES: tuple[tuple[str, bool, int], ...] = tuple(sorted(
    ((name, thing, label_id) for label_id, (name, train_id, thing) in enumerate(LABELS) if train_id is not None),
    key=lambda t: LABELS[t[2]][1]))

CITYSCAPES_META = ClassMeta(  # the train-ids space
    dataset="cityscapes",
    ignore_id=IGNORE_ID,
    classes=tuple(ClassInfo(i, name, thing) for i, (name, thing, _) in enumerate(TRAIN_CLASSES)),
)
TRAIN_ID_META = CITYSCAPES_META


def _label_lut() -> np.ndarray:
    """``lut[raw]`` = trainId, 255 for labelIds without one, -1 for values that are no labelId."""
    lut = np.full(256, -1, dtype=np.int64)
    lut[:NUM_LABEL_IDS] = IGNORE_ID
    lut[255] = IGNORE_ID  # license plate (-1) if a writer wrapped it to uint8
    for train_id, (_, _, label_id) in enumerate(TRAIN_CLASSES):
        lut[label_id] = train_id
    return lut


LABEL_LUT = _label_lut()
#: labelId (0..33, 255 = void) → trainId (0..18, 255 = ignore); -1 marks values that are no labelId.
LABEL_TO_TRAIN_LUT = LABEL_LUT


def label_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a labelId map (H×W, values 0..33 or 255) to trainIds (int64, 255 = ignore), for
    evaluation protocols defined on the 19 classes. Raises ValueError on other values."""
    raw = np.asarray(label_ids).astype(np.int64)
    in_range = (raw >= 0) & (raw < LABEL_LUT.size)
    out = np.where(in_range, LABEL_LUT[np.clip(raw, 0, LABEL_LUT.size - 1)], -1)
    if (out < 0).any():
        bad = np.unique(raw[out < 0])
        raise ValueError(f"value(s) {', '.join(map(str, bad[:8].tolist()))} are not Cityscapes labelIds (0..33, 255)")
    return out


def _identity_lut() -> np.ndarray:
    """``lut[raw]`` = labelId for 0..33, 255 for 255 (license plate), -1 for anything else."""
    lut = np.full(256, -1, dtype=np.int64)
    lut[:NUM_LABEL_IDS] = np.arange(NUM_LABEL_IDS)
    lut[255] = IGNORE_ID
    return lut


LABEL_ID_LUT = _identity_lut()


class CityscapesAdapter(DatasetAdapter):
    format = "cityscapes"
    option_choices = {"label_space": LABEL_SPACES}

    @property
    def label_space(self) -> str:
        return self.options["label_space"]

    def classes(self) -> ClassMeta:
        return LABEL_ID_META if self.label_space == "label-ids" else TRAIN_ID_META

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
        """labelIds (H×W int) → class ids of the label space (H×W int64, 255 = ignore)."""
        lut = LABEL_ID_LUT if self.label_space == "label-ids" else LABEL_LUT
        in_range = (raw >= 0) & (raw < lut.size)
        out = np.where(in_range, lut[np.clip(raw, 0, lut.size - 1)], -1)
        if (out < 0).any():
            bad = np.unique(raw[out < 0])
            raise DataError(ref.label, f"value(s) {', '.join(map(str, bad[:8].tolist()))} are not Cityscapes "
                                       f"labelIds (0..33)")
        return out

    def convert_instances(self, raw: np.ndarray, raw_labels: np.ndarray, labels: np.ndarray, ref: SampleRef) -> np.ndarray:
        """instanceIds → object ids (H×W int64): raw ≥ 1000 on thing pixels, 0 elsewhere."""
        keep = (raw >= INSTANCE_DIVISOR) & np.isin(labels, self.thing_id_array)
        return np.where(keep, raw, 0).astype(np.int64)
