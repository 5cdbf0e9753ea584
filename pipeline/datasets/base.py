"""The one sample record and class metadata every dataset adapter yields.

Nothing outside ``pipeline/datasets`` knows an on-disk layout: stages ask an adapter for
:class:`SampleRef` objects (cheap, paths only) and turn them into :class:`Sample` arrays with
:meth:`DatasetAdapter.load`, which validates everything a later stage relies on.

Array conventions: images HWC uint8 RGB; ``labels`` HW int32 in the adapter's class-id space
(``ignore_id`` for void); ``instances`` HW int64, 0 = no instance, every other value one object,
unique within the image.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import struct
import sys
import tempfile
import threading
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Iterator

import cv2
import numpy as np

from pipeline.errors import ConfigError, DataError


MAX_CLASS_ID = 65535  # class and ignore ids must fit uint16 (label PNGs are at most 16-bit)


def _is_int(v) -> bool:
    """A true integer (bool and float are not, even when integral)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


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
        # Ids index lookup tables and are stored as uint16 downstream: a negative id would wrap onto
        # the highest class (``lut[-1]``), a huge one would allocate a table of that size.
        for what, v in [("ignore_id", self.ignore_id), *[(f"class id of '{c.name}'", c.id) for c in self.classes]]:
            if not _is_int(v) or not 0 <= v <= MAX_CLASS_ID:
                raise ValueError(f"{self.dataset}: {what} must be an integer in 0..{MAX_CLASS_ID}, got {v!r}")
        for c in self.classes:
            if not isinstance(c.thing, bool):
                raise ValueError(f"{self.dataset}: 'thing' of class '{c.name}' must be true or false, got {c.thing!r}")
            if not isinstance(c.name, str) or not c.name:
                raise ValueError(f"{self.dataset}: class {c.id} needs a non-empty name, got {c.name!r}")
        ids = [c.id for c in self.classes]
        if not ids:
            raise ValueError(f"{self.dataset}: the class list is empty")
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
        """Strict parse: ids must be JSON integers and ``thing`` a JSON boolean (``"false"`` is not
        false); the range checks are :meth:`__post_init__`'s."""
        if not isinstance(d, dict) or not isinstance(d.get("classes"), list):
            raise ValueError("expected an object with 'name', 'ignore_id' and a 'classes' list")
        for c in d["classes"]:
            if not isinstance(c, dict):
                raise ValueError(f"class entry {c!r} is not an object")
        return cls(
            dataset=str(d["name"]),
            ignore_id=d["ignore_id"],
            classes=tuple(ClassInfo(c["id"], c["name"], c["thing"]) for c in d["classes"]),
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
    source_size: tuple[int, int] | None = None  # (H, W) on disk when loaded at a working resolution


MAX_PIXELS_ENV = "RESAIL_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 8192 * 8192  # 64 Mpx: every real dataset is far below, a decompression bomb is not


def max_pixels() -> int:
    """The pixel cap of every image/label reader: ``$RESAIL_MAX_PIXELS`` (set from params.yaml
    ``limits.max_pixels`` by the CLI, inherited by worker processes), else 64 Mpx."""
    raw = os.environ.get(MAX_PIXELS_ENV, "")
    try:
        return int(raw) if raw.strip() else DEFAULT_MAX_PIXELS
    except ValueError:
        raise ConfigError(None, f"${MAX_PIXELS_ENV} must be an integer number of pixels, got {raw!r}") from None


def check_target_size(height: int, width: int, what: str, cap: int | None = None) -> None:
    """:class:`ConfigError` when a size asked for (a resize target: ``--size``, ``--resize``) has more
    pixels than the readers' cap (``cap``, default :func:`max_pixels`): an image that large could not be
    read back, and making it can take more memory than the machine has. ``what`` names the value."""
    cap = max_pixels() if cap is None else int(cap)
    n = int(height) * int(width)
    if n > cap:
        shown = f"{n / 1e6:.1f}" if n >= 100_000 else f"{n / 1e6:g}"
        raise ConfigError(None, f"{what} is {shown} Mpx, above the pixel cap of {cap / 1e6:g} Mpx "
                                f"(raise limits.max_pixels in params.yaml or ${MAX_PIXELS_ENV})")


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])  # (width, height)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOF marker, walking the marker segments (no decoding)."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        m = data[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m in (0x01, *range(0xD0, 0xD8)):
            i += 2
            continue
        seg = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        if m in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        i += 2 + seg
    return None


def header_size(path: Path, data: bytes) -> tuple[int, int]:
    """(width, height) read from the file header only (PNG IHDR, JPEG SOF; other formats through
    PIL, which also reads just the header)."""
    size = _png_size(data) or _jpeg_size(data)
    if size is not None:
        return size
    try:
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Exception as e:  # noqa: BLE001 (PIL raises many kinds for a bad header; DecompressionBombError too)
        if type(e).__name__ == "DecompressionBombError":
            return (1 << 31, 1)
        raise DataError(path, "unreadable or corrupt image (unrecognised header)") from None


def _check_pixels(path: Path, data: bytes, what: str) -> None:
    w, h = header_size(path, data)
    cap = max_pixels()
    if w * h > cap:
        raise DataError(path, f"{what} is {w}x{h} = {w * h / 1e6:.1f} Mpx, above the limit of {cap / 1e6:.1f} Mpx "
                              f"(raise limits.max_pixels in params.yaml or ${MAX_PIXELS_ENV})")


_STDERR_LOCK = threading.Lock()
_LIBJPEG_WARNING = re.compile(r"JPEG|jpeg|^Corrupt|^Premature|^Warning|^Invalid|^Inconsistent|^Bogus")


def _decode_strict(data: bytes, path: Path, jpeg: bool) -> np.ndarray | None:
    """``cv2.imdecode``; for JPEG, libjpeg's warnings (which cv2 prints to the C stderr and then
    returns a half-grey image for, e.g. "Corrupt JPEG data: premature end of data segment") are
    captured from file descriptor 2 and raised as a DataError, so ``--on-error skip`` lists the file."""
    buf = np.frombuffer(data, np.uint8)
    if not jpeg:
        return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    with _STDERR_LOCK, tempfile.TemporaryFile() as cap:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(cap.fileno(), 2)
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        cap.seek(0)
        text = cap.read().decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    warn = [ln for ln in lines if _LIBJPEG_WARNING.search(ln)]
    other = [ln for ln in lines if ln not in warn]
    if other:  # another thread's output caught in the window: hand it back
        os.write(2, ("\n".join(other) + "\n").encode())
    if warn:
        raise DataError(path, f"corrupt JPEG data (decoder: {warn[0].rstrip('.')})")
    return img


def read_image_rgb(path: Path) -> np.ndarray:
    """Read an 8-bit colour image as H×W×3 uint8 RGB (grey is broadcast, alpha dropped).

    Refused before decoding: more than :func:`max_pixels` pixels (from the header). Refused after:
    a JPEG whose decoder warned (corrupt data inside an intact file) or that lacks its end marker."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file is missing")
    data = path.read_bytes()
    is_jpeg = data[:2] == b"\xff\xd8"
    if (is_jpeg or path.suffix.lower() in (".jpg", ".jpeg")) and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        # libjpeg decodes a truncated file partially with only a warning; refuse it instead.
        raise DataError(path, "truncated or corrupt JPEG (no end-of-image marker)")
    _check_pixels(path, data, "image")
    img = _decode_strict(data, path, is_jpeg)
    if img is None or img.size == 0:
        raise DataError(path, "unreadable or corrupt image")
    if img.dtype != np.uint8:
        raise DataError(path, f"expected an 8-bit image, got {img.dtype}")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img[:, :, ::-1])


def _png_format(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR (None for other files)."""
    if _png_size(data) is None or len(data) < 26:
        return None
    return data[24], data[25]


def _read_palette_png(data: bytes, path: Path, what: str) -> np.ndarray | None:
    """A palette PNG's stored values (ids), through PIL (OpenCV only returns the palette colours).

    When every used palette entry is grey, the image is a grey map that an optimiser stored with a
    palette, and its grey levels are the ids (as before). Otherwise the palette only colours the
    picture (VOC-style label maps) and the indices are the ids. None: PIL did not see a palette."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                if im.mode != "P":
                    return None
                idx = np.asarray(im, dtype=np.uint8)
                pal = np.asarray(im.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    except Exception:  # noqa: BLE001 (PIL raises many kinds for corrupt data)
        raise DataError(path, f"unreadable or corrupt {what}") from None
    used = np.unique(idx)
    if used.size and int(used[-1]) < len(pal) and (pal[used, 0] == pal[used, 1]).all() \
            and (pal[used, 1] == pal[used, 2]).all():
        return pal[:, 0][idx]
    return idx


def read_index_map(path: Path, what: str = "label map") -> np.ndarray:
    """Read a single-channel integer PNG unchanged, as int64 (at most :func:`max_pixels` pixels,
    checked from the header before decoding).

    The ids are the values the file stores: 8 and 16 bit grey as decoded; 1, 2 and 4 bit grey
    (which decoders scale to 8 bit: 4-bit 3 becomes 51) divided back; palette PNGs by
    :func:`_read_palette_png`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} is missing")
    data = path.read_bytes()
    _check_pixels(path, data, what)
    fmt = _png_format(data)
    if fmt is not None and fmt[1] == 3:  # palette
        arr = _read_palette_png(data, path, what)
        if arr is not None:
            return arr.astype(np.int64)
    arr = _decode_strict(data, path, data[:2] == b"\xff\xd8")
    if fmt is not None and fmt[1] == 0 and fmt[0] in (1, 2, 4) and arr is not None and arr.ndim == 2:
        # libpng expands low-bit grey by bit replication, v * 255 / (2**depth - 1): undo it exactly.
        scale = 255 // ((1 << fmt[0]) - 1)
        if arr.dtype != np.uint8 or (arr % scale).any():
            raise DataError(path, f"{what}: {fmt[0]}-bit grey PNG decoded to unexpected values")
        arr = arr // scale
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
    #: Options the layout accepts: name → allowed values, the first being the default. They change
    #: what the adapter yields (class space, subset), so the segment database records them and
    #: ``SegmentDB.open_adapter`` rebuilds the same adapter.
    option_choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, root: str | Path, **options: str | None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "dataset root does not exist or is not a folder")
        self.options = self.resolve_options(options)

    @classmethod
    def resolve_options(cls, options: dict[str, str | None]) -> dict[str, str]:
        """Every option of the layout with its value (``None`` = default); unknown ones are a ConfigError."""
        out = {name: choices[0] for name, choices in cls.option_choices.items()}
        for name, value in options.items():
            if value is None:
                continue
            if name not in cls.option_choices:
                known = ", ".join(sorted(cls.option_choices)) or "none"
                raise ConfigError(None, f"dataset format '{cls.format}' has no option '{name}' (its options: {known})")
            if value not in cls.option_choices[name]:
                raise ConfigError(None, f"dataset option {name} must be one of "
                                        f"{', '.join(cls.option_choices[name])} for '{cls.format}', got {value!r}")
            out[name] = str(value)
        return out

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

    def read_labels(self, ref: SampleRef) -> np.ndarray:
        """The raw label file of a sample as H×W ids (a single-channel PNG by default; the ``folder``
        layout reads colour maps through its ``palette`` option)."""
        return read_index_map(ref.label, "label map")

    def read_instances(self, ref: SampleRef) -> np.ndarray:
        """The raw instance file of a sample as an H×W(×C) array (a single-channel PNG by default;
        layouts with colour-coded instance files override this)."""
        return read_index_map(ref.instance, "instance map")

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
        raw = self.read_labels(ref)
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
            raw_inst = self.read_instances(ref)
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


def list_images(folder: Path, exts: tuple[str, ...] = (".png", ".jpg", ".jpeg")) -> dict[str, Path]:
    """``{stem: path}`` of the image files in a folder, sorted by stem, extensions matched without
    regard to case (``a.JPG`` is found and its real path returned). When a stem has several images
    the earlier extension in ``exts`` wins, as in :func:`find_image`."""
    rank = {e: k for k, e in enumerate(exts)}
    best: dict[str, tuple[int, Path]] = {}
    for p in folder.iterdir():
        k = rank.get(p.suffix.lower())
        if k is None or not p.is_file():
            continue
        if p.stem not in best or (k, p.name) < (best[p.stem][0], best[p.stem][1].name):
            best[p.stem] = (k, p)
    return {stem: best[stem][1] for stem in sorted(best)}


class BundledClassesAdapter(DatasetAdapter):
    """An adapter whose class list ships as a JSON file (ClassMeta format) beside its module."""

    classes_file: ClassVar[Path]

    @cached_property
    def _meta(self) -> ClassMeta:
        return ClassMeta.from_json_file(self.classes_file)

    def classes(self) -> ClassMeta:
        return self._meta
