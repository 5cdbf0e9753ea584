"""Pictures for people: label colouring, tiles, grids and atomic PNG writing.

Shared by every preview (contact sheet, guidance previews, distortion strips, sample grids, report)
so that a class has the same colour everywhere.
"""
from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np

from pipeline.cache import atomic_outputs
from pipeline.datasets.base import ClassMeta
from pipeline.errors import ResailError


def class_colors(meta: ClassMeta) -> dict[int, tuple[int, int, int]]:
    """A stable, well-spread RGB colour per class id (golden-ratio hues); ignore is black."""
    colors = {}
    for i, c in enumerate(meta.classes):
        h = (i * 0.618033988749895) % 1.0
        s = 0.55 + 0.35 * ((i * 7) % 3) / 2
        v = 0.95 - 0.25 * ((i * 5) % 2)
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        colors[c.id] = (int(r * 255), int(g * 255), int(b * 255))
    colors[meta.ignore_id] = (0, 0, 0)
    return colors


def colorize_labels(labels: np.ndarray, meta: ClassMeta) -> np.ndarray:
    """H×W class ids → H×W×3 uint8 RGB; ids outside the list render white."""
    lut = np.full((max(int(labels.max(initial=0)) + 1, meta.ignore_id + 1, int(meta.ids.max()) + 1), 3), 255, np.uint8)
    for cid, col in class_colors(meta).items():
        lut[cid] = col
    return lut[np.clip(labels, 0, len(lut) - 1)]


def fit_tile(img: np.ndarray, size: int, background: int = 96) -> np.ndarray:
    """Resize an H×W×3 image to fit a size×size tile (aspect kept, centred)."""
    h, w = img.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    small = cv2.resize(img, (nw, nh), interpolation=interp)
    tile = np.full((size, size, 3), background, np.uint8)
    y, x = (size - nh) // 2, (size - nw) // 2
    tile[y:y + nh, x:x + nw] = small
    return tile


def text_tile(text: str, height: int, width: int, color=(255, 255, 255), background: int = 32) -> np.ndarray:
    tile = np.full((height, width, 3), background, np.uint8)
    scale = 0.4
    for k, line in enumerate(_wrap(text, max(4, width // 8))[:3]):
        cv2.putText(tile, line, (10, 14 + 14 * k), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
    return tile


def _wrap(text: str, n: int) -> list[str]:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > n:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return lines + ([cur] if cur else [])


def hstack(images: list[np.ndarray], gap: int = 2, background: int = 255) -> np.ndarray:
    h = max(i.shape[0] for i in images)
    parts = []
    for k, im in enumerate(images):
        if im.shape[0] < h:
            im = np.vstack([im, np.full((h - im.shape[0], im.shape[1], 3), background, np.uint8)])
        parts.append(im)
        if k < len(images) - 1:
            parts.append(np.full((h, gap, 3), background, np.uint8))
    return np.hstack(parts)


def vstack(images: list[np.ndarray], gap: int = 2, background: int = 255) -> np.ndarray:
    w = max(i.shape[1] for i in images)
    parts = []
    for k, im in enumerate(images):
        if im.shape[1] < w:
            im = np.hstack([im, np.full((im.shape[0], w - im.shape[1], 3), background, np.uint8)])
        parts.append(im)
        if k < len(images) - 1:
            parts.append(np.full((gap, w, 3), background, np.uint8))
    return np.vstack(parts)


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG atomically."""
    path = Path(path)
    with atomic_outputs(path, lock=False) as (tmp,):  # previews: no lock files in preview folders
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
        if not ok:
            raise ResailError(path, "could not encode PNG")
        tmp.write_bytes(buf.tobytes())
