"""Pictures that the run report and the run comparison share: line plots of training curves drawn
with OpenCV (no plotting library), dvclive TSV reading, and image tiles with captions."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from pipeline.visualize import text_tile, vstack

TILE_H = 160
TILE_MAX_W = 320

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def read_tsv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """dvclive TSV (``step\\t<name>`` header) → (steps, values) as float arrays."""
    xs, ys = [], []
    lines = Path(path).read_text().splitlines()
    for line in lines[1:]:
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        try:
            x, y = float(parts[0]), float(parts[-1])
        except ValueError:
            continue
        if math.isfinite(x) and math.isfinite(y):
            xs.append(x)
            ys.append(y)
    return np.asarray(xs, float), np.asarray(ys, float)


def _fmt(v: float) -> str:
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{v:.1e}"
    return f"{v:.3g}"


def line_plot(series: dict[str, tuple[np.ndarray, np.ndarray]], title: str, width: int = 560,
              height: int = 300) -> np.ndarray:
    """RGB uint8 line plot of named (x, y) series: axes, 5 ticks per axis, legend, title."""
    img = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    left, right, top, bottom = 70, 12, 26, 34
    pw, ph = width - left - right, height - top - bottom
    cv2.putText(img, title, (left, 17), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    data = {k: v for k, v in series.items() if len(v[0])}
    if not data:
        cv2.putText(img, "no data", (left + 10, top + ph // 2), font, 0.45, (90, 90, 90), 1, cv2.LINE_AA)
        return img
    xs = np.concatenate([v[0] for v in data.values()])
    ys = np.concatenate([v[1] for v in data.values()])
    x0, x1 = float(xs.min()), float(xs.max())
    y0, y1 = float(ys.min()), float(ys.max())
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    pad = 0.05 * (y1 - y0)
    # non-negative series (losses of a hinge GAN aside: LRs, fractions, times) keep a floor of 0
    y0, y1 = (y0 - pad if y0 < 0 else max(0.0, y0 - pad)), y1 + pad

    def px(x, y):
        return (left + (np.asarray(x) - x0) / (x1 - x0) * pw, top + (1 - (np.asarray(y) - y0) / (y1 - y0)) * ph)

    for k in range(5):
        fy = k / 4
        yv = y0 + fy * (y1 - y0)
        yy = int(round(top + (1 - fy) * ph))
        cv2.line(img, (left, yy), (left + pw, yy), (232, 232, 232), 1)
        cv2.putText(img, _fmt(yv), (2, yy + 4), font, 0.35, (60, 60, 60), 1, cv2.LINE_AA)
        xv = x0 + fy * (x1 - x0)
        xx = int(round(left + fy * pw))
        cv2.line(img, (xx, top + ph), (xx, top + ph + 4), (0, 0, 0), 1)
        label = f"{xv:.0f}" if x1 - x0 >= 4 else f"{xv:.2g}"
        cv2.putText(img, label, (max(0, xx - 12), top + ph + 16), font, 0.35, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
    cv2.putText(img, "step", (left + pw // 2 - 12, height - 4), font, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
    for i, (name, (x, y)) in enumerate(data.items()):
        color = PALETTE[i % len(PALETTE)]
        X, Y = px(x, y)
        pts = np.stack([X, Y], 1).round().astype(np.int32)
        if len(pts) == 1:
            cv2.circle(img, tuple(int(v) for v in pts[0]), 3, color, -1, cv2.LINE_AA)
        else:
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, color, 1, cv2.LINE_AA)
        ly = top + 12 + 13 * i
        lx = left + pw - 120
        cv2.line(img, (lx, ly - 4), (lx + 14, ly - 4), color, 2)
        cv2.putText(img, name[:16], (lx + 18, ly), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def tile(img: np.ndarray, height: int = TILE_H, max_width: int = TILE_MAX_W, nearest: bool = False) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(height / h, max_width / w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    return cv2.resize(np.ascontiguousarray(img), (nw, nh), interpolation=interp)


def labelled(img: np.ndarray, text: str) -> np.ndarray:
    return vstack([text_tile(text, 20, img.shape[1]), img], gap=0)
