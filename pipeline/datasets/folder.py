"""The project's generic layout: ``<root>/<split>/{images,labels,instances}`` + ``classes.json``.

Adapter option ``palette`` (``cityscapes`` | ``ade20k`` | ``coco-stuff`` | a palette JSON path, see
:mod:`pipeline.datasets.palette`): label PNGs may be colour maps, read through that palette into the
class ids of ``classes.json`` (single-channel label PNGs are still read as ids). Without it (the
default, not recorded) label PNGs must hold class ids.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from pipeline.datasets.base import ClassMeta, DatasetAdapter, SampleRef, list_images
from pipeline.datasets.palette import NAMES as PALETTE_NAMES
from pipeline.datasets.palette import load_palette, read_label_map
from pipeline.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
SPLIT_ORDER = ("train", "val", "test")


def ordered_splits(names: list[str]) -> list[str]:
    """train, val, test first, then any other split name alphabetically."""
    known = [s for s in SPLIT_ORDER if s in names]
    return known + sorted(set(names) - set(known))


class FolderAdapter(DatasetAdapter):
    format = "folder"
    #: ``palette`` accepts these names or a palette JSON path; it is absent from ``options`` unless given
    option_choices = {"palette": PALETTE_NAMES}

    @classmethod
    def resolve_options(cls, options: dict[str, str | None]) -> dict[str, str]:
        options = dict(options)
        palette = options.pop("palette", None)
        out = super().resolve_options(options)
        out.pop("palette", None)
        if palette is not None and str(palette).strip().lower() not in ("", "none"):
            load_palette(palette)  # a bad name or file is one ConfigError line now, not per sample
            name = str(palette).strip()
            out["palette"] = name.lower() if name.lower() in PALETTE_NAMES else str(Path(name).resolve())
        return out

    @cached_property
    def _palette(self):
        return load_palette(self.options.get("palette"))

    def read_labels(self, ref: SampleRef) -> np.ndarray:
        return read_label_map(ref.label, self._palette, "label map", self._meta)

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
