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

import cv2
import numpy as np

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


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _components(mask: np.ndarray) -> list[tuple[tuple[int, int, int, int], np.ndarray, int]]:
    """8-connected components of a bool mask as (box, mask crop, area), in label (raster) order."""
    n, cc, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    out = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        crop = cc[y:y + h, x:x + w] == k
        out.append(((y, x, y + h, x + w), crop, area))
    return out


def decompose(labels: np.ndarray, instances: np.ndarray | None, meta: ClassMeta, min_area: int = 16) -> list[Segment]:
    """All segments of one label map, ordered by class id, then instances by id, then components.

    The order is a pure function of the inputs, so segment ids are reproducible.
    """
    things = meta.thing_ids
    segments: list[Segment] = []
    present = np.unique(labels)
    for cid in present.tolist():
        if cid == meta.ignore_id:
            continue
        cls_mask = labels == cid
        is_thing = cid in things
        rest = cls_mask
        if is_thing and instances is not None:
            inst_here = np.where(cls_mask, instances, 0)
            for iid in np.unique(inst_here).tolist():
                if iid == 0:
                    continue
                m = inst_here == iid
                area = int(m.sum())
                if area < min_area:
                    continue
                y0, x0, y1, x1 = _bbox(m)
                segments.append(Segment(cid, True, (y0, x0, y1, x1), area, SOURCE_INSTANCE, m[y0:y1, x0:x1].copy()))
            rest = cls_mask & (inst_here == 0)
            if not rest.any():
                continue
        for box, crop, area in _components(rest):
            if area >= min_area:
                segments.append(Segment(cid, is_thing, box, area, SOURCE_COMPONENT, crop))
    return segments


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
