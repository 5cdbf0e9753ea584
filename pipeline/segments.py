"""Label map (+ instance map) → segments, the unit of retrieval (method.md §1).

* Thing pixels that carry an instance id: one segment per instance id (``source="instance"``),
  even when the instance is split into several blobs.
* Every other pixel of a class (stuff, and things without an instance id): one segment per
  8-connected component (``source="component"``).
* The ignore id is never a segment; segments with fewer than ``min_area`` pixels are dropped.

Array conventions: labels H×W int (class ids); instances H×W int (0 = none); masks bool;
boxes half-open ``(y0, x0, y1, x1)`` in original-image pixels; normalised masks S×S bool.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import measure

from pipeline.datasets.base import ClassMeta

SOURCE_INSTANCE = "instance"
SOURCE_COMPONENT = "component"


@dataclass
class Segment:
    class_id: int
    is_thing: bool
    box: tuple[int, int, int, int]  # y0, x0, y1, x1 (half-open)
    area: int  # mask pixels at original resolution
    source: str
    mask: np.ndarray  # bool, box-sized crop

    @property
    def box_area(self) -> int:
        """Bounding-box area w·h: the `s` of the scale term (method.md §2)."""
        y0, x0, y1, x1 = self.box
        return (y1 - y0) * (x1 - x0)


def decompose(labels: np.ndarray, instances: np.ndarray | None, meta: ClassMeta, min_area: int = 16) -> list[Segment]:
    """All segments of one label map, ordered by class id, then instances by id, then components
    in raster order of their first pixel.

    The order is a pure function of the inputs, so segment ids are reproducible. Components of all
    classes come from one labelling pass over the map (pixels of instances and void excluded).
    """
    things = meta.thing_ids
    ignore = meta.ignore_id
    labels = np.asarray(labels)
    by_class: dict[int, list[Segment]] = {}
    comp_map = labels.astype(np.int64, copy=True)
    if instances is not None:
        is_thing_px = np.isin(labels, list(things)) & (instances != 0)
        if is_thing_px.any():
            keys = labels[is_thing_px].astype(np.int64), instances[is_thing_px].astype(np.int64)
            pairs = np.unique(np.stack(keys, axis=1), axis=0)  # (class, instance) sorted
            ys, xs = np.nonzero(is_thing_px)
            for cid, iid in pairs.tolist():
                sel = (keys[0] == cid) & (keys[1] == iid)
                area = int(sel.sum())
                if area < min_area:
                    continue
                yy, xx = ys[sel], xs[sel]
                y0, x0, y1, x1 = int(yy.min()), int(xx.min()), int(yy.max()) + 1, int(xx.max()) + 1
                m = np.zeros((y1 - y0, x1 - x0), bool)
                m[yy - y0, xx - x0] = True
                by_class.setdefault(cid, []).append(Segment(cid, True, (y0, x0, y1, x1), area, SOURCE_INSTANCE, m))
            comp_map[is_thing_px] = ignore
    # One 8-connected labelling of all classes at once: equal neighbouring values share a component.
    cc = measure.label(comp_map, background=ignore, connectivity=2)
    for k, sl in enumerate(ndimage.find_objects(cc), start=1):
        if sl is None:
            continue
        crop = cc[sl] == k
        area = int(crop.sum())
        if area < min_area:
            continue
        cid = int(comp_map[sl][crop][0])
        box = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
        by_class.setdefault(cid, []).append(Segment(cid, cid in things, box, area, SOURCE_COMPONENT, crop))
    return [seg for cid in sorted(by_class) for seg in by_class[cid]]


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for nearest-neighbour resizing (pixel-centre aligned).

    Defined here once so the database, the on-line queries and composition resize identically.
    """
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def resize_mask_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to ``height × width``."""
    return mask[np.ix_(nearest_indices(mask.shape[0], height), nearest_indices(mask.shape[1], width))]


def normalised_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """The S×S normalised mask of a crop (method.md §1)."""
    return resize_mask_nearest(mask, size, size)


def pack_mask(mask: np.ndarray) -> np.ndarray:
    """Row-major bit-packed mask: ``np.packbits`` of the flattened bool array (S*S/8 bytes)."""
    return np.packbits(mask.reshape(-1).astype(bool))


def unpack_mask(packed: np.ndarray, size: int) -> np.ndarray:
    """Inverse of :func:`pack_mask` for S×S masks; works on [..., S*S/8] arrays."""
    bits = np.unpackbits(packed, axis=-1, count=size * size).astype(bool)
    return bits.reshape(*packed.shape[:-1], size, size)


def candidate_flags(class_ids: np.ndarray, areas: np.ndarray, in_db: np.ndarray, preserved_ratio: float) -> np.ndarray:
    """Database pruning of the released code, kept as a flag (method.md §1).

    Per class, over rows with ``in_db`` (the training split), segments sorted by area descending
    (ties: lower row first) are kept until ``preserved_ratio`` of the class's total area is covered;
    the segment that takes the running total to the ratio is kept. Rows outside the DB are False.
    """
    class_ids = np.asarray(class_ids)
    areas = np.asarray(areas, dtype=np.int64)
    flags = np.zeros(len(class_ids), dtype=bool)
    rows = np.flatnonzero(np.asarray(in_db, dtype=bool))
    if preserved_ratio >= 1.0:
        flags[rows] = True
        return flags
    for cid in np.unique(class_ids[rows]):
        r = rows[class_ids[rows] == cid]
        order = r[np.lexsort((r, -areas[r]))]
        a = areas[order]
        before = np.cumsum(a) - a  # running total before this segment
        flags[order[before < preserved_ratio * a.sum()]] = True
    return flags
