"""The project's generic layout: ``<root>/<split>/{images,labels,instances}`` + ``classes.json``."""
from __future__ import annotations

from functools import cached_property

from pipeline.datasets.base import ClassMeta, DatasetAdapter, SampleRef, list_images
from pipeline.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
SPLIT_ORDER = ("train", "val", "test")


def ordered_splits(names: list[str]) -> list[str]:
    """train, val, test first, then any other split name alphabetically."""
    known = [s for s in SPLIT_ORDER if s in names]
    return known + sorted(set(names) - set(known))


class FolderAdapter(DatasetAdapter):
    format = "folder"

    @cached_property
    def _meta(self) -> ClassMeta:
        return ClassMeta.from_json_file(self.root / "classes.json")

    def classes(self) -> ClassMeta:
        return self._meta

    def splits(self) -> list[str]:
        return ordered_splits([p.name for p in self.root.iterdir() if (p / "images").is_dir()])

    def refs(self, split: str) -> list[SampleRef]:
        base = self.root / split
        if not (base / "images").is_dir():
            raise DataError(base / "images", f"split '{split}' not found")
        has_inst = (base / "instances").is_dir()
        out = []
        for stem, image in list_images(base / "images", IMAGE_EXTS).items():
            inst = base / "instances" / f"{stem}.png" if has_inst else None
            out.append(SampleRef(
                image_id=stem,
                split=split,
                image=image,
                label=base / "labels" / f"{stem}.png",
                instance=inst if inst is not None and inst.exists() else None,
            ))
        return out
