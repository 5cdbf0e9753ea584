"""PNG bytes in and out for the studio: uploads are checked and decoded in memory.

An upload is refused *before* decoding when its header declares more pixels than the limit (a
small file can declare a huge image), and a decoded class map follows the rules of
:func:`pipeline.datasets.base.read_index_map` (8/16-bit single channel, or RGB(A) with equal
channels), so a file the studio accepts is a file ``resail synthesize`` accepts, and vice versa.
"""
from __future__ import annotations

import struct

import cv2
import numpy as np

from pipeline.resize import resize_image, resize_index_map

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class UploadError(ValueError):
    """A bad upload; ``status`` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def png_size(data: bytes, what: str) -> tuple[int, int]:
    """(height, width) from the IHDR chunk; UploadError (415) when the bytes are not a PNG."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise UploadError(f"{what}: not a PNG file", 415)
    w, h = struct.unpack(">II", data[16:24])
    return int(h), int(w)


def decode_index_png(data: bytes, what: str, max_pixels: int) -> np.ndarray:
    """An index map (class ids or instance ids) from PNG bytes, as int64 H×W."""
    h, w = png_size(data, what)
    if h * w > max_pixels:
        raise UploadError(f"{what}: {w}x{h} = {h * w / 1e6:.1f} Mpx is over the limit of {max_pixels / 1e6:g} Mpx",
                          413)
    if h == 0 or w == 0:
        raise UploadError(f"{what}: empty image")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        raise UploadError(f"{what}: unreadable or corrupt PNG")
    if arr.ndim == 3:
        if arr.shape[2] >= 3 and np.array_equal(arr[:, :, 0], arr[:, :, 1]) and np.array_equal(arr[:, :, 1],
                                                                                             arr[:, :, 2]):
            arr = arr[:, :, 0]
        else:
            raise UploadError(f"{what}: not a class map: must be single-channel (class ids), got a "
                              f"{arr.shape[2]}-channel colour image")
    return arr.astype(np.int64)


def encode_rgb(rgb: np.ndarray) -> bytes:
    """H×W×3 (or ×4 RGBA) uint8 → PNG bytes (fast compression: these are served, not archived)."""
    rgb = np.asarray(rgb, np.uint8)
    bgr = rgb[:, :, [2, 1, 0, 3]] if rgb.shape[2] == 4 else rgb[:, :, ::-1]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("could not encode PNG")
    return buf.tobytes()


def encode_index(arr: np.ndarray) -> bytes:
    """H×W ids → a single-channel PNG (8-bit when every id fits, else 16-bit) that
    ``resail synthesize --labels`` reads back unchanged."""
    arr = np.asarray(arr)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ValueError("ids must be in 0..65535 to be stored as PNG")
    dt = np.uint8 if (arr.size == 0 or arr.max() < 256) else np.uint16
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr.astype(dt)), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("could not encode PNG")
    return buf.tobytes()


def thumbnail(img: np.ndarray, max_side: int, index: bool = False) -> np.ndarray:
    """Shrink so the longer side is at most ``max_side`` (never enlarges): photos with the project's
    antialiased resizer, label/colour-coded maps (``index=True``) nearest, so no mixed colours appear."""
    h, w = img.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return img
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    return resize_index_map(img, nh, nw) if index else resize_image(img, nh, nw)
