"""Colour label maps: an RGB label PNG read as class ids through a dataset's published palette.

``--palette cityscapes|ade20k|coco-stuff|PATH.json`` wherever a label map comes from the user
(``resail synthesize``, ``edit``, the studio's uploads, ``resail score --labels``, the ``folder``
adapter's ``palette`` option). A pixel's colour maps to exactly one class id; a colour the palette
does not have is refused in one line naming the file, the colour, its pixel count and the nearest
palette colours. A single-channel PNG (or an RGB one with equal channels that the palette does not
paint) is taken as class ids, as without a palette.

The three published palettes ship beside this module (``palette_<name>.json``), each naming its
source:

* ``cityscapes`` — the ``color`` column of cityscapesScripts' ``helpers/labels.py``, on labelIds
  0..33 (for a run in the 19-trainId space the ids are then mapped to trainIds);
* ``ade20k`` — ``data/color150.mat`` of CSAILVision/semantic-segmentation-pytorch (row k−1 =
  class k, what ``mit_semseg.utils.colorEncode`` paints), void 0 black;
* ``coco-stuff`` — ``getCMap()`` of nightrome/cocostuffapi (the table ``cocoSegmentationToPng``
  writes into the COCO-Stuff challenge PNGs), indexed by the 1-based challenge id = stuffthingmaps
  id + 1. It paints every thing class black.

Palettes are not injective: Cityscapes paints five void labelIds black and pole/polegroup alike;
ADE20K paints road and skyscraper alike; COCO-Stuff paints all things black. Each shared colour reads
as ONE id, fixed in the file's ``shared`` table and explained in its ``shared_note`` (in short:
the id the evaluation scores, else the first listed). :meth:`Palette.inexpressible` lists the ids
a colour map cannot carry.

A palette file of one's own (``PATH.json``): ``{"name": …, "classes": [{"id": 7, "name": "road",
"color": [128, 64, 128]}, …]}`` with optional ``"void_id"`` and ``"shared": {"r,g,b": id}``; a
colour listed for several ids without a ``shared`` entry reads as the first listed. A project
``classes.json`` whose classes carry ``"color"`` is such a file.

Array conventions: colour images H×W×3 uint8 RGB; class maps H×W int64.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.datasets.base import read_image_rgb, read_index_map
from pipeline.errors import ConfigError, DataError

NAMES = ("cityscapes", "ade20k", "coco-stuff")
_FILES = {n: Path(__file__).with_name(f"palette_{n.replace('-', '_')}.json") for n in NAMES}


def _code(rgb) -> int:
    r, g, b = (int(v) for v in rgb)
    return (r << 16) | (g << 8) | b


def _rgb(code: int) -> tuple[int, int, int]:
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


@dataclass(frozen=True)
class Palette:
    """A dataset's colour table. ``colors``: id → the colour it is painted with (first listed);
    ``lookup``: packed colour ``r<<16 | g<<8 | b`` → the id it reads as; ``names``: id → name."""

    name: str
    colors: dict[int, tuple[int, int, int]]
    lookup: dict[int, int]
    names: dict[int, str] = field(default_factory=dict)
    void_id: int | None = None
    source: str = ""
    path: str = ""

    # ------------------------------------------------------------------ colours → ids
    def decode(self, rgb: np.ndarray, path: str | Path | None = None) -> np.ndarray:
        """H×W×3 uint8 RGB → H×W int64 class ids; an unknown colour is one DataError line."""
        a = np.asarray(rgb)
        if a.ndim != 3 or a.shape[2] < 3:
            raise DataError(path, f"a colour label map must be RGB, got shape {a.shape}")
        codes = (a[:, :, 0].astype(np.int64) << 16) | (a[:, :, 1].astype(np.int64) << 8) | a[:, :, 2].astype(np.int64)
        uniq, inverse, counts = np.unique(codes.reshape(-1), return_inverse=True, return_counts=True)
        ids = np.array([self.lookup.get(int(c), -1) for c in uniq], np.int64)
        bad = np.flatnonzero(ids < 0)
        if bad.size:
            order = bad[np.argsort(-counts[bad], kind="stable")]
            worst = int(uniq[order[0]])
            more = f" (and {bad.size - 1} more unknown colour{'s' if bad.size > 2 else ''})" if bad.size > 1 else ""
            raise DataError(path, f"colour {_rgb(worst)} ({int(counts[order[0]])} px) is not in the {self.name} "
                                  f"palette{more}; nearest: {self.nearest_text(_rgb(worst))}")
        return ids[inverse].reshape(codes.shape)

    def nearest(self, rgb, k: int = 3) -> list[tuple[tuple[int, int, int], int]]:
        """The ``k`` palette colours closest to ``rgb`` (Euclidean in RGB) with the id each reads as."""
        c = np.array([_rgb(x) for x in self.lookup], np.float64)
        d = ((c - np.asarray(rgb, np.float64)) ** 2).sum(1)
        keys = list(self.lookup)
        return [(_rgb(keys[i]), self.lookup[keys[i]]) for i in np.argsort(d, kind="stable")[:k]]

    def nearest_text(self, rgb, k: int = 3) -> str:
        return ", ".join(f"{c} = {self.names.get(i, 'id')} ({i})" for c, i in self.nearest(rgb, k))

    # ------------------------------------------------------------------ ids → colours
    def encode(self, ids: np.ndarray, path: str | Path | None = None) -> np.ndarray:
        """H×W class ids → H×W×3 uint8 RGB (each id's first listed colour); an id without one is a DataError."""
        a = np.asarray(ids).astype(np.int64)
        uniq, inverse = np.unique(a.reshape(-1), return_inverse=True)
        missing = [int(u) for u in uniq if int(u) not in self.colors]
        if missing:
            raise DataError(path, f"id(s) {', '.join(map(str, missing[:8]))} have no colour in the {self.name} palette")
        table = np.array([self.colors[int(u)] for u in uniq], np.uint8)
        return table[inverse].reshape(*a.shape, 3)

    def inexpressible(self, ids) -> dict[int, int | None]:
        """Of ``ids``, those a colour map cannot carry → the id their colour reads as (None: no colour)."""
        out: dict[int, int | None] = {}
        for i in sorted({int(v) for v in np.asarray(ids).reshape(-1).tolist()}):
            c = self.colors.get(i)
            back = None if c is None else self.lookup.get(_code(c))
            if back != i:
                out[i] = back
        return out

    @property
    def ids(self) -> set[int]:
        return set(self.colors) | set(self.lookup.values())

    def to_space(self, ids: np.ndarray, meta) -> np.ndarray:
        """Palette ids → the class space of ``meta``. The same ids unless ``meta`` is a class list of the
        palette's dataset with other ids (Cityscapes' 19 trainIds): then by class name, and a palette id
        whose name is not in ``meta`` becomes ``meta.ignore_id``."""
        if meta is None or getattr(meta, "dataset", None) != self.name:
            return ids
        by_name = {c.name: c.id for c in meta.classes}
        if all(by_name.get(self.names.get(c.id)) == c.id for c in meta.classes):
            return ids
        if not set(by_name) <= set(self.names.values()):
            return ids
        top = max(self.ids) + 1
        lut = np.full(top, meta.ignore_id, np.int64)
        for i, name in self.names.items():
            lut[i] = by_name.get(name, meta.ignore_id)
        return lut[np.clip(ids, 0, top - 1)]

    def describe(self) -> str:
        return f"{self.name} ({self.path or 'bundled'})"


def _parse(d: dict, source: Path) -> Palette:
    if not isinstance(d, dict) or not isinstance(d.get("classes"), list) or not d["classes"]:
        raise ConfigError(source, "not a palette: expected {\"name\": …, \"classes\": "
                                  "[{\"id\", \"color\": [r, g, b]}, …]}")
    colors: dict[int, tuple[int, int, int]] = {}
    lookup: dict[int, int] = {}
    names: dict[int, str] = {}
    for c in d["classes"]:
        if not isinstance(c, dict) or "id" not in c:
            raise ConfigError(source, f"palette entry {c!r:.60} has no id")
        col = c.get("color", c.get("rgb"))
        i = c["id"]
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= 65535:
            raise ConfigError(source, f"palette id {i!r} must be an integer in 0..65535")
        if col is None:
            continue  # a class without a colour (classes.json without colours for some)
        if (not isinstance(col, (list, tuple)) or len(col) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in col)):
            raise ConfigError(source, f"colour of id {i} must be [r, g, b] in 0..255, got {col!r:.40}")
        col = (int(col[0]), int(col[1]), int(col[2]))
        colors.setdefault(i, col)
        lookup.setdefault(_code(col), i)
        if c.get("name"):
            names.setdefault(i, str(c["name"]))
    if not colors:
        raise ConfigError(source, "palette has no colours (entries need \"color\": [r, g, b])")
    for key, i in (d.get("shared") or {}).items():
        try:
            rgb = tuple(int(v) for v in str(key).split(","))
            code = _code(rgb)
        except (TypeError, ValueError):
            raise ConfigError(source, f"shared colour {key!r} must be 'r,g,b'") from None
        if code not in lookup:
            raise ConfigError(source, f"shared colour {key!r} is not painted by any class")
        lookup[code] = int(i)
    void = d.get("void_id", d.get("ignore_id"))
    return Palette(name=str(d.get("name") or source.stem), colors=colors, lookup=lookup, names=names,
                   void_id=None if void is None else int(void), source=str(d.get("source", "")),
                   path="" if source in _FILES.values() else str(source))


_CACHE: dict[str, Palette] = {}


def load_palette(spec: str | Path | None) -> Palette | None:
    """``cityscapes`` | ``ade20k`` | ``coco-stuff`` | a palette JSON path → :class:`Palette`; None/"none" → None."""
    if spec is None or str(spec).strip().lower() in ("", "none", "null", "ids"):
        return None
    key = str(spec).strip()
    if key in _CACHE:
        return _CACHE[key]
    path = _FILES.get(key.lower())
    if path is None:
        path = Path(key)
        if not path.is_file():
            raise ConfigError(path, f"--palette: not one of {', '.join(NAMES)} and no such palette file")
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(path, f"cannot read palette ({e})") from None
    _CACHE[key] = p = _parse(d, path)
    return p


def is_colour(arr: np.ndarray) -> bool:
    """A decoded PNG is a colour map: 3/4 channels that are not all equal (grey-saved ids are not)."""
    return (arr.ndim == 3 and arr.shape[2] >= 3
            and not (np.array_equal(arr[:, :, 0], arr[:, :, 1]) and np.array_equal(arr[:, :, 1], arr[:, :, 2])))


def read_label_map(path: str | Path, palette: Palette | None = None, what: str = "label map",
                   meta=None) -> np.ndarray:
    """A label PNG as H×W int64 class ids. Without ``palette``: :func:`pipeline.datasets.base.read_index_map`.
    With one: a single-channel file is ids; an RGB(A) file is read through the palette (:func:`pixels_to_ids`)
    and the ids are put into ``meta``'s class space (:meth:`Palette.to_space`)."""
    path = Path(path)
    if palette is None or _channels(path, what) == 1:
        try:
            return read_index_map(path, what)
        except DataError as e:
            if palette is None and "single-channel" in str(e.problem):
                raise DataError(path, f"{e.problem}: a colour label map needs --palette "
                                      f"(cityscapes | ade20k | coco-stuff | PATH.json)") from None
            raise
    return pixels_to_ids(read_image_rgb(path), palette, path, meta)


def pixels_to_ids(rgb: np.ndarray, palette: Palette, path=None, meta=None) -> np.ndarray:
    """An RGB label image → class ids. Colours go through ``palette``; an image whose channels are all
    equal is a colour map only when the palette paints every one of its grey levels (Cityscapes'
    building is (70, 70, 70)), else it is an index map saved as RGB and its values are the ids."""
    a = np.asarray(rgb)
    if a.ndim == 2:
        return a.astype(np.int64)
    if not is_colour(a):
        grey = np.unique(a[:, :, 0])
        if not all(_code((g, g, g)) in palette.lookup for g in grey.tolist()):
            return a[:, :, 0].astype(np.int64)
    return palette.to_space(palette.decode(a[:, :, :3], path), meta)


def _channels(path: Path, what: str) -> int:
    """Channel count of a PNG from its header (1 = grey, 3 = colour or indexed), without decoding."""
    if not path.is_file():
        raise DataError(path, f"{what} is missing")
    with open(path, "rb") as fh:
        head = fh.read(33)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return 1 if head[25] in (0, 4) else 3  # colour type 0 grey, 4 grey+alpha; 2 RGB, 3 indexed, 6 RGBA
    return 3


def decode_label_bytes(arr: np.ndarray, palette: Palette, what: str = "label map", meta=None) -> np.ndarray:
    """An already decoded image in OpenCV's order (H×W, or H×W×3/4 BGR[A]) → class ids through ``palette``
    (:func:`pixels_to_ids`): the studio's uploads."""
    if arr.ndim == 2:
        return arr.astype(np.int64)
    return pixels_to_ids(np.ascontiguousarray(arr[:, :, 2::-1]), palette, what, meta)


def palette_for_dataset(name: str | None) -> Palette | None:
    """The bundled palette of a dataset name (cityscapes, ade20k, coco-stuff), else None."""
    return load_palette(name) if name in NAMES else None
