"""The one sample record and class metadata every dataset adapter yields.

Nothing outside ``pipeline/datasets`` knows an on-disk layout: stages ask an adapter for
:class:`SampleRef` objects (cheap, paths only) and turn them into :class:`Sample` arrays with
:meth:`DatasetAdapter.load`, which validates everything a later stage relies on.

Array conventions: images HWC uint8 RGB; ``labels`` HW int32 in the adapter's class-id space
(``ignore_id`` for void); ``instances`` HW int64, 0 = no instance, every other value one object,
unique within the image.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Iterator

import cv2
import numpy as np

from pipeline.errors import DataError


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    thing: bool


@dataclass(frozen=True)
class ClassMeta:
    """Class list of a dataset: ids (not necessarily contiguous), names, thing flags, ignore id."""

    dataset: str
    ignore_id: int
    classes: tuple[ClassInfo, ...]

    def __post_init__(self) -> None:
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.dataset}: duplicate class ids")
        if self.ignore_id in ids:
            raise ValueError(f"{self.dataset}: ignore id {self.ignore_id} is also a class id")

    @property
    def ids(self) -> np.ndarray:
        return np.array([c.id for c in self.classes], dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def thing_ids(self) -> frozenset[int]:
        return frozenset(c.id for c in self.classes if c.thing)

    def by_id(self, class_id: int) -> ClassInfo:
        for c in self.classes:
            if c.id == class_id:
                return c
        raise KeyError(class_id)

    def lookup_table(self, size: int | None = None) -> np.ndarray:
        """``lut[id]`` = dense index 0..C-1 of a class id, C for ignore, -1 for ids not in the list.

        Models work on dense indices; this table is the only bridge from dataset ids.
        """
        top = max([self.ignore_id, *[c.id for c in self.classes]]) + 1
        lut = np.full(max(size or 0, top), -1, dtype=np.int64)
        for i, c in enumerate(self.classes):
            lut[c.id] = i
        lut[self.ignore_id] = self.num_classes
        return lut

    def to_dict(self) -> dict:
        return {
            "name": self.dataset,
            "ignore_id": self.ignore_id,
            "classes": [{"id": c.id, "name": c.name, "thing": c.thing} for c in self.classes],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ClassMeta":
        return cls(
            dataset=str(d["name"]),
            ignore_id=int(d["ignore_id"]),
            classes=tuple(ClassInfo(int(c["id"]), str(c["name"]), bool(c["thing"])) for c in d["classes"]),
        )

    @classmethod
    def from_json_file(cls, path: Path) -> "ClassMeta":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise DataError(path, "class list not found") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(path, f"invalid class list ({e})") from None


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives. Paths may not exist: :meth:`DatasetAdapter.load` reports that."""

    image_id: str
    split: str
    image: Path
    label: Path
    instance: Path | None = None


@dataclass
class Sample:
    image_id: str
    split: str
    image: np.ndarray  # H×W×3 uint8 RGB
    labels: np.ndarray  # H×W int32, class ids of ClassMeta or ignore_id
    instances: np.ndarray | None = None  # H×W int64, 0 = no instance
    ref: SampleRef | None = field(default=None, repr=False)


def read_image_rgb(path: Path) -> np.ndarray:
    """Read an 8-bit colour image as H×W×3 uint8 RGB (grey is broadcast, alpha dropped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file is missing")
    data = path.read_bytes()
    if path.suffix.lower() in (".jpg", ".jpeg") and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        # libjpeg decodes a truncated file partially with only a warning; refuse it instead.
        raise DataError(path, "truncated or corrupt JPEG (no end-of-image marker)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise DataError(path, "unreadable or corrupt image")
    if img.dtype != np.uint8:
        raise DataError(path, f"expected an 8-bit image, got {img.dtype}")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img[:, :, ::-1])


def read_index_map(path: Path, what: str = "label map") -> np.ndarray:
    """Read a single-channel integer PNG (8 or 16 bit) unchanged, as int64."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} is missing")
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        raise DataError(path, f"unreadable or corrupt {what}")
    if arr.ndim == 3:
        # Palette/RGB-saved index maps with equal channels are accepted; true colour maps are not.
        if arr.shape[2] >= 3 and np.array_equal(arr[:, :, 0], arr[:, :, 1]) and np.array_equal(arr[:, :, 1], arr[:, :, 2]):
            arr = arr[:, :, 0]
        else:
            raise DataError(path, f"{what} must be single-channel (class ids), got {arr.shape[2]} channels")
    return arr.astype(np.int64)


class DatasetAdapter(ABC):
    """One on-disk layout. Subclasses implement :meth:`classes`, :meth:`splits`, :meth:`refs`
    and, where the layout stores other ids, :meth:`convert_labels` / :meth:`convert_instances`."""

    format: ClassVar[str]

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "dataset root does not exist or is not a folder")

    @abstractmethod
    def classes(self) -> ClassMeta: ...

    @abstractmethod
    def splits(self) -> list[str]:
        """Split names present on disk, in a stable order."""

    @abstractmethod
    def refs(self, split: str) -> list[SampleRef]:
        """All samples of a split, sorted by image id. Unknown split → DataError."""

    def convert_labels(self, raw: np.ndarray, ref: SampleRef) -> np.ndarray:
        """Raw label PNG values → class ids of :meth:`classes` (identity by default)."""
        return raw

    def convert_instances(self, raw: np.ndarray, raw_labels: np.ndarray, labels: np.ndarray, ref: SampleRef) -> np.ndarray:
        """Raw instance PNG values → per-image unique object ids, 0 = none (identity by default)."""
        return raw

    @cached_property
    def thing_id_array(self) -> np.ndarray:
        """Sorted thing class ids, for ``np.isin`` on label maps (instance conversion)."""
        return np.array(sorted(self.classes().thing_ids), dtype=np.int64)

    def iter_refs(self, splits: list[str] | None = None) -> Iterator[SampleRef]:
        for split in splits or self.splits():
            yield from self.refs(split)

    def load(self, ref: SampleRef) -> Sample:
        """Read and validate one sample; every problem is a :class:`DataError` naming the file."""
        image = read_image_rgb(ref.image)
        raw = read_index_map(ref.label, "label map")
        if raw.shape != image.shape[:2]:
            raise DataError(ref.label, f"label size {raw.shape[1]}x{raw.shape[0]} does not match image size "
                                       f"{image.shape[1]}x{image.shape[0]} ({ref.image.name})")
        labels = self.convert_labels(raw, ref).astype(np.int32)
        meta = self.classes()
        valid = np.append(meta.ids, meta.ignore_id)
        present = np.unique(labels)
        unknown = present[~np.isin(present, valid)]
        if unknown.size:
            raise DataError(ref.label, f"class id(s) {', '.join(map(str, unknown[:8].tolist()))} not in the class list of {meta.dataset}")
        instances = None
        if ref.instance is not None:
            raw_inst = read_index_map(ref.instance, "instance map")
            if raw_inst.shape != labels.shape:
                raise DataError(ref.instance, f"instance map size {raw_inst.shape[1]}x{raw_inst.shape[0]} does not match "
                                              f"label size {labels.shape[1]}x{labels.shape[0]}")
            instances = self.convert_instances(raw_inst, raw, labels, ref).astype(np.int64)
        return Sample(ref.image_id, ref.split, image, labels, instances, ref)


def find_image(folder: Path, stem: str, exts: tuple[str, ...] = (".png", ".jpg", ".jpeg")) -> Path:
    """The image file of a stem in a folder (first existing extension; .png if none exists)."""
    for ext in exts:
        p = folder / f"{stem}{ext}"
        if p.exists():
            return p
    return folder / f"{stem}{exts[0]}"


class BundledClassesAdapter(DatasetAdapter):
    """An adapter whose class list ships as a JSON file (ClassMeta format) beside its module."""

    classes_file: ClassVar[Path]

    @cached_property
    def _meta(self) -> ClassMeta:
        return ClassMeta.from_json_file(self.classes_file)

    def classes(self) -> ClassMeta:
        return self._meta
