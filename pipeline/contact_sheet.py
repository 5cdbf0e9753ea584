"""A contact sheet of the segment database: one row per class, its largest segments as tiles.

Lets a person check the decomposition at a glance (are cars whole, is the sky one segment…).
"""
from __future__ import annotations

import numpy as np

from pipeline.cache import SegmentDB
from pipeline.visualize import class_colors, fit_tile, hstack, text_tile, vstack


def contact_sheet(db: SegmentDB, per_class: int = 8, tile: int = 72) -> np.ndarray:
    """RGB uint8 image: per class, a name tile then the ``per_class`` largest segments.

    Pixels outside a segment's mask are drawn grey so the mask shape is visible.
    """
    class_ids, areas = db.col("class_id"), db.col("area")
    colors = class_colors(db.meta)
    rows = []
    for c in db.meta.classes:
        ids = np.flatnonzero(class_ids == c.id)
        ids = ids[np.lexsort((ids, -areas[ids]))][:per_class]
        label = text_tile(f"{c.name} ({'thing' if c.thing else 'stuff'}) n={int((class_ids == c.id).sum())}", tile, 2 * tile)
        label[:, :6] = colors[c.id]
        tiles = [label]
        for sid in ids:
            rgb, mask = db.crop(int(sid))
            shown = np.where(mask[:, :, None], rgb, np.uint8(128))
            tiles.append(fit_tile(shown, tile))
        rows.append(hstack(tiles))
    return vstack(rows)
