"""Dataset adapters: the only code that knows an on-disk layout.

``open_dataset(format, root)`` is the single entry point; ``FORMATS`` lists the layouts.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets.base import ClassInfo, ClassMeta, DatasetAdapter, Sample, SampleRef
from pipeline.errors import DataError


def _registry() -> dict[str, type[DatasetAdapter]]:
    from pipeline.datasets.ade20k import ADE20KAdapter
    from pipeline.datasets.camvid import CamVidAdapter
    from pipeline.datasets.cityscapes import CityscapesAdapter
    from pipeline.datasets.coco_stuff import CocoStuffAdapter
    from pipeline.datasets.folder import FolderAdapter

    return {"folder": FolderAdapter, "camvid": CamVidAdapter, "cityscapes": CityscapesAdapter,
            "ade20k": ADE20KAdapter, "coco-stuff": CocoStuffAdapter}


FORMATS = tuple(_registry())  # the --format choices: exactly the registered layouts


def open_dataset(fmt: str, root: str | Path) -> DatasetAdapter:
    adapters = _registry()
    if fmt not in adapters:
        raise DataError(root, f"unknown dataset format '{fmt}' (known: {', '.join(sorted(adapters))})")
    return adapters[fmt](root)


__all__ = ["ClassInfo", "ClassMeta", "DatasetAdapter", "Sample", "SampleRef", "open_dataset", "FORMATS"]
