"""Label map (+ instance map) → segments, the unit of retrieval (docs/method.md §1).

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
        """Bounding-box area w·h: the `s` of the scale term (docs/method.md §2)."""
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
            cls_px, inst_px = labels[is_thing_px].astype(np.int64), instances[is_thing_px].astype(np.int64)
            ys, xs = np.nonzero(is_thing_px)
            # Group the pixels by (class, instance), pairs in sorted order: one stable sort of a
            # combined key instead of a pixel scan per pair (ids are shifted to be non-negative).
            c0, i0 = int(cls_px.min()), int(inst_px.min())
            span = int(inst_px.max()) - i0 + 1
            key = (cls_px - c0) * span + (inst_px - i0)
            order = np.argsort(key, kind="stable")
            starts = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0])
            bounds = np.r_[starts, key.size]
            for g in range(starts.size):
                sel = order[bounds[g]:bounds[g + 1]]
                cid = int(cls_px[sel[0]])
                area = int(sel.size)
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
    """The S×S normalised mask of a crop (docs/method.md §1)."""
    return resize_mask_nearest(mask, size, size)


def pack_mask(mask: np.ndarray) -> np.ndarray:
    """Row-major bit-packed mask: ``np.packbits`` of the flattened bool array (S*S/8 bytes)."""
    return np.packbits(mask.reshape(-1).astype(bool))


def unpack_mask(packed: np.ndarray, size: int) -> np.ndarray:
    """Inverse of :func:`pack_mask` for S×S masks; works on [..., S*S/8] arrays."""
    bits = np.unpackbits(packed, axis=-1, count=size * size).astype(bool)
    return bits.reshape(*packed.shape[:-1], size, size)


PRUNING_MODES = ("image", "dataset", "none")  # first = default


def _keep_largest(groups: np.ndarray, areas: np.ndarray, preserved_ratio: float) -> np.ndarray:
    """Per group, segments sorted by area descending (ties: lower row first) are kept while the
    area kept *before* them is below ``preserved_ratio`` of the group's total — so the segment that
    takes the running total to the ratio is kept, as in the released ``sort_segments_by_area``."""
    n = len(groups)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    if preserved_ratio >= 1.0:
        keep[:] = True
        return keep
    order = np.lexsort((np.arange(n), -areas, groups))
    g, a = groups[order], areas[order].astype(np.int64)
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    counts = np.diff(np.r_[starts, n])
    totals = np.repeat(np.add.reduceat(a, starts), counts)
    csum = np.cumsum(a)
    offset = np.repeat(csum[starts] - a[starts], counts)  # running total before each group
    before = csum - a - offset
    keep[order] = before < preserved_ratio * totals
    return keep


def candidate_flags(class_ids: np.ndarray, areas: np.ndarray, in_db: np.ndarray, preserved_ratio: float) -> np.ndarray:
    """Dataset-wide database pruning (``decompose.pruning: dataset``), kept as a flag.

    Per class, over rows with ``in_db`` (the training split), segments sorted by area descending
    (ties: lower row first) are kept until ``preserved_ratio`` of the class's total area is covered;
    the segment that takes the running total to the ratio is kept. Rows outside the DB are False.
    """
    class_ids = np.asarray(class_ids, dtype=np.int64)
    areas = np.asarray(areas, dtype=np.int64)
    flags = np.zeros(len(class_ids), dtype=bool)
    rows = np.flatnonzero(np.asarray(in_db, dtype=bool))
    flags[rows] = _keep_largest(class_ids[rows], areas[rows], preserved_ratio)
    return flags


def image_pruning_flags(image_keys: np.ndarray, class_ids: np.ndarray, areas: np.ndarray,
                        preserved_ratio: float) -> np.ndarray:
    """Per-image pruning of the released code (``decompose.pruning: image``, docs/method.md §1).

    Within each image and class, the largest segments are kept until ``preserved_ratio`` of that
    class's area *in that image* is covered (same rule as :func:`candidate_flags`, grouped by
    (image, class) instead of class). The released ``sort_segments_by_area`` applies it to every
    image, so a pruned segment is neither a retrieval candidate nor a query (it gets no guidance).
    """
    image_keys = np.asarray(image_keys, dtype=np.int64)
    class_ids = np.asarray(class_ids, dtype=np.int64)
    if len(class_ids) == 0:
        return np.zeros(0, dtype=bool)
    _, groups = np.unique(np.stack([image_keys, class_ids], axis=1), axis=0, return_inverse=True)
    return _keep_largest(groups.reshape(-1), np.asarray(areas, dtype=np.int64), preserved_ratio)


def pruning_flags(mode: str, image_keys: np.ndarray, class_ids: np.ndarray, areas: np.ndarray,
                  in_db: np.ndarray, preserved_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """``(candidate, query)`` flags of every segment under a pruning mode.

    * ``image`` (released code): per image and class, for queries and candidates alike; a
      candidate is a kept row of the database split.
    * ``dataset``: per class over the database split, candidates only; every segment is a query.
    * ``none``: every database-split row is a candidate, every segment a query.
    """
    in_db = np.asarray(in_db, dtype=bool)
    n = len(in_db)
    if mode == "image":
        query = image_pruning_flags(image_keys, class_ids, areas, preserved_ratio)
        return query & in_db, query
    if mode == "dataset":
        return candidate_flags(class_ids, areas, in_db, preserved_ratio), np.ones(n, dtype=bool)
    if mode == "none":
        return in_db.copy(), np.ones(n, dtype=bool)
    raise ValueError(f"pruning must be one of {', '.join(PRUNING_MODES)}, got {mode!r}")


def segment_query_flags(segs: "list[Segment]", pruning: str, preserved_ratio: float) -> np.ndarray:
    """Query flags of one image's segments, as ``resail decompose`` records them (``query`` column):
    with ``pruning="image"`` the per-image rule of :func:`image_pruning_flags`, else all True.
    The on-line API calls this so a label map from the database gets the guidance compose wrote."""
    if pruning != "image" or not segs:
        return np.ones(len(segs), dtype=bool)
    return image_pruning_flags(np.zeros(len(segs), np.int64), [s.class_id for s in segs], [s.area for s in segs],
                               preserved_ratio)
