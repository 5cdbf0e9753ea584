"""Composition of the retrieval-based guidance image (docs/method.md §3, paper appendix A.1).

Pure array code, no file I/O: :mod:`pipeline.compose.build` feeds it crops from the segment database
and label maps from the dataset adapter.

For each query segment q with a retrieved segment r (RGB crop and mask crop, any size):
the crop is resized to q's bounding box (RGB bicubic, antialiased when shrinking:
:func:`pipeline.resize.resize_image`, PIL ``Image.BICUBIC`` as the released code's
``pil_segment_rgb.resize(..., Image.BICUBIC)``; ``cv2.INTER_CUBIC`` would alias a large crop pasted
into a small box; mask nearest, :func:`pipeline.decompose.segments.resize_mask_nearest`) and placed
at q's box. With Mq the
query mask and Mr the resized retrieved mask (both inside the box):

1. pixels in Mq ∩ Mr are pasted;
2. stuff query: pixels in Mr \\ Mq are not pasted;
3. thing query: pixels in Mr \\ Mq that lie on a *stuff* class of the label map L are pasted;
4. thing query: pixels in Mr \\ Mq that lie on a *thing* class of L are not pasted.

**Ours** (choices the paper leaves open):

* Void/ignore pixels of L are neither stuff nor thing: rule 3 does not paste onto them ("background
  categories" are classes; void is not one). Only pixels whose class is a non-thing class of the
  class list count as stuff.
* Pixels of Mq not covered by Mr, queries without a match, and pixels of segments too small to be
  queries stay black (0, 0, 0) and are marked not valid.
* Paste order: stuff first (segment order), then things by area descending (ties: lower segment id,
  i.e. earlier in the query list, first), so small objects stay on top. Every paste overwrites
  (never sums), so values stay in 0..255; ``valid`` marks every pixel that received a paste.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

from pipeline.datasets.base import ClassMeta
from pipeline.decompose.segments import resize_mask_nearest
from pipeline.resize import resize_image

Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (half-open), original pixels
Match = Optional[tuple[np.ndarray, np.ndarray]]  # (RGB crop h×w×3 uint8, mask crop h×w bool) or None


class QuerySegment(NamedTuple):
    """What composition needs of a query segment (:class:`pipeline.decompose.segments.Segment` also fits)."""

    box: Box
    mask: np.ndarray  # bool, box-sized crop (Mq)
    is_thing: bool
    area: int


def class_maps(labels: np.ndarray, meta: ClassMeta) -> tuple[np.ndarray, np.ndarray]:
    """(thing_map, stuff_map) of a label map: pixels whose class is a thing / a non-thing class.

    Ignore/void pixels (and ids outside the class list) are in neither.
    """
    things = sorted(meta.thing_ids)
    stuff = sorted(int(c) for c in meta.ids.tolist() if int(c) not in meta.thing_ids)
    return np.isin(labels, things), np.isin(labels, stuff)


def resize_rgb_cubic(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of an h×w×3 uint8 crop to ``height × width``, antialiased when shrinking
    (:func:`pipeline.resize.resize_image`; uint8, saturated to 0..255)."""
    if rgb.shape[:2] == (height, width):
        return rgb
    return resize_image(rgb, height, width)


def paste_mask(query_mask: np.ndarray, query_is_thing: bool, retrieved_mask_resized: np.ndarray,
               stuff_crop: np.ndarray) -> np.ndarray:
    """The four rules on box-sized arrays: which pixels of the box receive the retrieved RGB.

    ``stuff_crop`` is the stuff map of L cut to the query's box (thing and void pixels False).
    """
    mr = retrieved_mask_resized
    if query_is_thing:
        return mr & (query_mask | stuff_crop)  # rules 1, 3, 4
    return mr & query_mask  # rules 1, 2


def paste_segment(guidance: np.ndarray, valid: np.ndarray, query_box: Box, query_mask_crop: np.ndarray,
                  query_is_thing: bool, thing_map: np.ndarray, retrieved_rgb: np.ndarray,
                  retrieved_mask: np.ndarray, stuff_map: np.ndarray | None = None) -> int:
    """Paste one retrieved segment into ``guidance`` (H×W×3 uint8) in place; returns pixels pasted.

    ``thing_map``: pixels of L whose class is a thing. ``stuff_map``: pixels of L whose class is a
    non-thing class; when omitted it is taken as ``~thing_map`` (void then counts as stuff) — the
    driver always passes it so that void is not pasted onto. Pasted pixels overwrite whatever is
    there and are set in ``valid``.
    """
    y0, x0, y1, x1 = (int(v) for v in query_box)
    h, w = y1 - y0, x1 - x0
    H, W = guidance.shape[:2]
    if h <= 0 or w <= 0 or y0 < 0 or x0 < 0 or y1 > H or x1 > W:
        raise ValueError(f"query box {query_box} is empty or outside the {H}x{W} image")
    if query_mask_crop.shape != (h, w):
        raise ValueError(f"query mask crop {query_mask_crop.shape} does not match its box {h}x{w}")
    if retrieved_rgb.shape[:2] != retrieved_mask.shape:
        raise ValueError(f"retrieved RGB crop {retrieved_rgb.shape} and mask {retrieved_mask.shape} differ in size")
    mr = resize_mask_nearest(np.asarray(retrieved_mask, dtype=bool), h, w)
    if stuff_map is None:
        stuff_crop = ~thing_map[y0:y1, x0:x1]
    else:
        stuff_crop = stuff_map[y0:y1, x0:x1]
    paste = paste_mask(np.asarray(query_mask_crop, dtype=bool), bool(query_is_thing), mr, stuff_crop)
    n = int(paste.sum())
    if n:
        rgb = resize_rgb_cubic(retrieved_rgb, h, w)
        guidance[y0:y1, x0:x1][paste] = rgb[paste]
        valid[y0:y1, x0:x1] |= paste
    return n


def paste_order(queries: Sequence) -> list[int]:
    """Indices of ``queries`` in paste order: stuff first (list order), then things by area
    descending, ties by lower index (= lower segment id)."""
    return sorted(range(len(queries)),
                  key=lambda i: (0, 0, i) if not queries[i].is_thing else (1, -int(queries[i].area), i))


def compose_guidance(labels: np.ndarray, meta: ClassMeta, queries: Sequence, matches: Sequence[Match]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Guidance image (H×W×3 uint8) and valid map (H×W bool) of one label map.

    ``queries``: the image's segments in segment-id order (objects with ``box``, ``mask``,
    ``is_thing``, ``area``: :class:`QuerySegment` or :class:`pipeline.decompose.segments.Segment`).
    ``matches[i]``: ``None`` (no admissible candidate → black) or ``(rgb crop, mask crop)`` of the
    segment retrieved for ``queries[i]``.
    """
    if len(matches) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(matches)} matches")
    labels = np.asarray(labels)
    H, W = labels.shape
    guidance = np.zeros((H, W, 3), dtype=np.uint8)
    valid = np.zeros((H, W), dtype=bool)
    thing_map, stuff_map = class_maps(labels, meta)
    for i in paste_order(queries):
        m = matches[i]
        if m is None:
            continue
        q = queries[i]
        paste_segment(guidance, valid, q.box, q.mask, q.is_thing, thing_map, m[0], m[1], stuff_map=stuff_map)
    return guidance, valid
