"""Resizing real images and index maps the way the paper's data pipeline does.

SPADE and the released RESAIL code load images through PIL and resize them with ``Image.BICUBIC``,
which widens its filter support when it shrinks (antialiasing); ``cv2.INTER_CUBIC`` does not and aliases
at the 4× reductions of Cityscapes/ADE20K. Every place that downsamples a *real photo* (decompose
``--resize``, the training loader, the FID reference, evaluation) calls :func:`resize_image`, so they
agree to the byte. Label, instance and mask maps are never interpolated: :func:`resize_index_map` is
nearest-neighbour with the pixel-centre convention of :func:`pipeline.decompose.segments.nearest_indices`.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.decompose.segments import nearest_indices


def resize_image(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of an ``H×W×3`` (or ``H×W``) uint8 image to ``height × width``, antialiased when shrinking.

    Returns a new C-contiguous uint8 array; the input is returned as a copy when the size already matches.
    """
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    arr = np.ascontiguousarray(rgb)
    if arr.dtype != np.uint8:
        raise TypeError(f"resize_image expects uint8, got {arr.dtype}")
    if arr.shape[:2] == (height, width):
        return arr.copy()
    return np.asarray(Image.fromarray(arr).resize((width, height), Image.BICUBIC))


def resize_index_map(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a class/instance/mask map (any dtype, ``H×W``) to ``height × width``."""
    return np.ascontiguousarray(arr[np.ix_(nearest_indices(arr.shape[0], int(height)),
                                            nearest_indices(arr.shape[1], int(width)))])
