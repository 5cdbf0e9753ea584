"""FID and KID between two folders of images (``resail fid DIR_A DIR_B``), like pytorch-fid's command line.

Every image file directly inside each folder (pytorch-fid's extensions: bmp, jpg, jpeg, pgm, png,
ppm, tif, tiff, webp) is read as RGB. With ``size=(H, W)`` each image is first resized to H×W with
the project's antialiased resizer (:func:`pipeline.resize.resize_image`, PIL bicubic: what the
training loader and the evaluation do to real photos), so a folder of full-resolution photos is
compared at the protocol size; without it images keep their own size (the network resizes every
image to 299×299 itself). Features are computed in batches of ``batch_size`` images of equal size and
the Fréchet distance of the two Gaussians is :func:`resail_train.metrics.fid.frechet_distance_features`'s
(exact in the small space below 2049 images, :func:`resail_train.metrics.fid.fid_from_features`
otherwise); KID is :func:`resail_train.metrics.kid.kid_from_features` on the same features (100 subsets
of min(1000, N) images, seeded). ``resail score`` computes both with the same functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.datasets.base import check_target_size, read_image_rgb
from pipeline.errors import ConfigError, DataError
from pipeline.resize import resize_image
from resail_train.metrics.fid import (FEATURE_DIM, describe_weights, frechet_distance_features, inception_features,
                                      resolve_fid_inception)
from resail_train.metrics.kid import kid_from_features

IMAGE_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name (DataError when there are none)."""
    d = Path(folder)
    if not d.is_dir():
        raise DataError(d, "image folder not found")
    files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
    if len(files) < 2:
        raise DataError(d, f"FID needs at least 2 images per folder, found {len(files)} "
                           f"({', '.join(IMAGE_EXTENSIONS)})")
    return files


def parse_size(text: str | None, what: str = "--size") -> tuple[int, int] | None:
    """``"HxW"`` → (H, W); None → None (ConfigError on anything else, and on a size above the pixel cap
    of the readers, :func:`pipeline.datasets.base.max_pixels`: every image would be resized to it)."""
    if text is None:
        return None
    parts = str(text).lower().replace(" ", "").split("x")
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        raise ConfigError(None, f"{what} {text!r}: expected HxW, e.g. 256x512") from None
    if h < 1 or w < 1:
        raise ConfigError(None, f"{what} {text!r}: height and width must be positive")
    check_target_size(h, w, f"{what} {h}x{w}")
    return h, w


def folder_features(model, files: Sequence[Path], size: tuple[int, int] | None = None, batch_size: int = 50,
                    device: str = "cpu", on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Pool3 features ``[N, 2048]`` of ``files`` (in order), resized to ``size`` first when given."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    out = np.empty((len(files), FEATURE_DIM), np.float64)
    pending: dict[tuple, list[tuple[int, np.ndarray]]] = {}

    def flush(shape: tuple) -> None:
        items = pending.pop(shape)
        idx = [i for i, _ in items]
        out[idx] = inception_features(model, np.stack([a for _, a in items]), batch_size=len(items), device=device)
        if on_batch is not None:
            on_batch(len(items))

    for i, f in enumerate(files):
        img = read_image_rgb(f)
        if size is not None:
            img = resize_image(img, size[0], size[1])
        pending.setdefault(img.shape, []).append((i, img))
        if len(pending[img.shape]) >= batch_size:
            flush(img.shape)
    for shape in list(pending):
        flush(shape)
    return out


def fid_of_folders(dir_a: str | Path, dir_b: str | Path, weights: str | Path | None = "auto",
                   size: tuple[int, int] | None = None, batch_size: int = 50, device: str = "cpu",
                   progress: bool = False) -> dict:
    """``{"fid", "kid", "kid_std", "n_a", "n_b", "size", "weights"}`` for two image folders (module docstring)."""
    files_a, files_b = list_images(dir_a), list_images(dir_b)
    model = resolve_fid_inception(weights)
    if model is None:
        raise ConfigError(None, "resail fid needs Inception weights (--inception-weights auto or a path)")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files_a) + len(files_b), desc="fid", unit="img", dynamic_ncols=True)
    try:
        tick = bar.update if bar is not None else None
        fa = folder_features(model, files_a, size, batch_size, device, tick)
        fb = folder_features(model, files_b, size, batch_size, device, tick)
    finally:
        if bar is not None:
            bar.close()
    kid, kid_std = kid_from_features(fa, fb)
    return {"fid": frechet_distance_features(fa, fb), "kid": kid, "kid_std": kid_std,
            "n_a": len(files_a), "n_b": len(files_b),
            "size": None if size is None else list(size), "weights": describe_weights(weights),
            "convention": getattr(model, "convention", None)}
