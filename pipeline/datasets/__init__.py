"""Dataset adapters: the only code that knows an on-disk layout.

``open_dataset(format, root)`` is the single entry point; ``FORMATS`` lists the layouts.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets.base import ClassInfo, ClassMeta, DatasetAdapter, Sample, SampleRef
from pipeline.datasets.resized import ResizedAdapter, ResizeSpec
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


def open_dataset(fmt: str, root: str | Path, options: dict[str, str | None] | None = None,
                 resize: str | None = None) -> DatasetAdapter:
    """The adapter of a layout. ``options``: the layout's options (e.g. Cityscapes ``label_space``,
    ADE20K ``subset``; ``None`` values = default); ``resize``: a working resolution (``HxW`` or
    shorter side ``S``, see :mod:`pipeline.datasets.resized`) the samples are loaded at."""
    adapters = _registry()
    if fmt not in adapters:
        raise DataError(root, f"unknown dataset format '{fmt}' (known: {', '.join(sorted(adapters))})")
    adapter = adapters[fmt](root, **(options or {}))
    spec = ResizeSpec.parse(resize)
    return adapter if spec is None else ResizedAdapter(adapter, spec)


def class_list(spec: str) -> tuple[str, ClassMeta]:
    """A class list by name, for label maps given without a dataset (``resail score --dataset``,
    ``resail labels check --dataset``): ``cityscapes`` (labelIds 0..33, 255 void) | ``ade20k``
    (1..150, 0 void) | ``coco-stuff`` (0..181, 255 unlabeled) | ``folder:CLASSES.json`` → (name, meta)."""
    from pipeline.datasets import ade20k, cityscapes, coco_stuff
    from pipeline.errors import ConfigError

    spec = str(spec or "").strip()
    if spec == "cityscapes":
        return spec, cityscapes.LABEL_ID_META
    if spec == "ade20k":
        return spec, ClassMeta.from_json_file(ade20k.CLASSES_FILE)
    if spec == "coco-stuff":
        return spec, ClassMeta.from_json_file(coco_stuff.CLASSES_FILE)
    if spec.startswith("folder:"):
        meta = ClassMeta.from_json_file(Path(spec[len("folder:"):]))
        return meta.dataset, meta
    raise ConfigError(None, f"--dataset {spec!r}: expected cityscapes, ade20k, coco-stuff or folder:CLASSES.json")


def option_names() -> dict[str, list[str]]:
    """Every adapter option name → the formats that accept it (for CLI help and checks)."""
    out: dict[str, list[str]] = {}
    for fmt, cls in _registry().items():
        for name in cls.option_choices:
            out.setdefault(name, []).append(fmt)
    return out


__all__ = ["ClassInfo", "ClassMeta", "DatasetAdapter", "Sample", "SampleRef", "ResizeSpec", "ResizedAdapter",
           "open_dataset", "option_names", "class_list", "FORMATS"]
