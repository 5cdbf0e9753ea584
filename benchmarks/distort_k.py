"""What the number K of pre-generated distorted variants costs, and what drawing them fresh costs.

Three measurements on one cache (``resail bench distort-k``):

1. **K table.** ``build_distortions`` for each K (serial, ``--jobs 1``, into a temporary folder:
   the cache's own files are left alone): bytes per image on disk (``distortions.h5`` +
   ``distortions.parquet``) and CPU seconds per image, next to the reference measured in the same
   run, decoding the same images (``adapter.load``). Over ``epochs`` epochs a sample reads one of
   its K variants per epoch, so each variant serves ``epochs / K`` times on average.
2. **Deflate settings.** The variants of one K re-compressed with the other settings the plain HDF5
   gzip filter allows (ISA-L levels 0–3, zlib 1/6/9): what a larger K could save on disk without a
   schema change, and the CPU it would cost.
3. **Loader.** :class:`resail_train.training.data.CacheDataset` in the main process, one thread (one
   worker core), at the cache's working resolution (no resize, no crop; flips on, as the paper
   configs), with the guidance when ``guidance.h5`` exists: CPU seconds per sample with the cached
   distorted ground truth and with a fresh one (``data.distortion: online``); images/s per worker core
   and the DataLoader workers a GPU step rate needs, ``ceil(rate / images-per-s-per-core)``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
import zlib
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from benchmarks.common import decode_seconds
from pipeline import cache
from pipeline.cache import SegmentDB
from pipeline.distort.build import DistortParams, build_distortions

#: The cache files a training loader may read, linked into the loader benchmark's folder.
_LINKED = (cache.SEGMENTS_PARQUET, cache.IMAGES_PARQUET, cache.SEGMENTS_H5, cache.RETRIEVAL_PARQUET,
           cache.GUIDANCE_H5)


def _deflaters() -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    try:
        from isal import isal_zlib

        out += [(f"ISA-L level {lvl}", (lambda b, lvl=lvl: isal_zlib.compress(b, lvl))) for lvl in (0, 1, 2, 3)]
    except ImportError:  # pragma: no cover - isal is a dependency
        pass
    out += [(f"zlib level {lvl}", (lambda b, lvl=lvl: zlib.compress(b, lvl))) for lvl in (1, 6, 9)]
    return out


def deflate_table(h5_path: str | Path, limit: int = 64) -> list[dict]:
    """kB and CPU ms per variant of the first ``limit`` variants of ``h5_path`` under each deflate setting."""
    variants: list[np.ndarray] = []
    with h5py.File(h5_path, "r") as f:
        def take(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset) and obj.ndim == 4:  # [K, H, W, 3] variants, not the [K, H, W] masks
                variants.extend(obj[k] for k in range(obj.shape[0]) if len(variants) < limit)
        f.visititems(take)
    rows = []
    for name, fn in _deflaters():
        c0 = time.process_time()
        size = sum(len(fn(np.ascontiguousarray(v).data)) for v in variants)
        cpu = time.process_time() - c0
        rows.append({"setting": name, "kB": size / len(variants) / 1e3, "ms": 1e3 * cpu / len(variants),
                     "raw_kB": variants[0].nbytes / 1e3})
    return rows


def _link_cache(cache_dir: Path, into: Path) -> None:
    for name in _LINKED:
        if (cache_dir / name).is_file():
            os.symlink((cache_dir / name).resolve(), into / name)


def loader_seconds(cache_dir: str | Path, distortion: str, params: DistortParams, epochs: int, seed: int = 0) -> dict:
    """CPU seconds per training sample of ``CacheDataset`` (one thread) with ``distortion`` cached|online."""
    import cv2
    import torch

    from resail_train.training.data import CacheDataset

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    cache_dir = Path(cache_dir)
    with SegmentDB.open(cache_dir) as db:
        row = db.image_rows()[0]
    size = [int(row["height"]), int(row["width"])]
    guidance = "rank0" if (cache_dir / cache.GUIDANCE_H5).is_file() else None
    ds = CacheDataset(cache_dir, str(row["split"]), load_size=None, crop_size=size, train=True, flip=True,
                      guidance=guidance, distortion=distortion, distort_params=params, seed=seed)
    try:
        ds[(0, 0)]  # open the files and warm the caches outside the clock
        c0, t0 = time.process_time(), time.perf_counter()
        for epoch in range(epochs):
            for i in range(len(ds)):
                ds[(epoch, i)]
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    finally:
        ds.close()
    n = epochs * len(ds)
    return {"samples": n, "cpu_s": cpu / n, "wall_s": wall / n, "size": size, "guidance": guidance}


def run_distort_k_bench(cache_dir: str | Path, ks: Sequence[int] = (1, 4, 16, 32),
                        params: DistortParams = DistortParams(), *, epochs: int = 200, loader_epochs: int = 3,
                        step_rate: float = 10.0, deflate_k: int = 4) -> dict:
    """Print the K table, the deflate table and the loader table (module docstring); return the numbers."""
    cache_dir = Path(cache_dir)
    with SegmentDB.open(cache_dir) as db:
        adapter = db.open_adapter()
        rows = db.image_rows(str(db.attrs.get("db_split", "train")))
        refs = db.sample_refs(adapter, rows)
        resize = db.resize
    n = len(refs)
    c0 = time.process_time()
    decode_wall = decode_seconds(adapter, refs)
    decode_cpu = (time.process_time() - c0) / n
    out: dict = {"images": n, "decode_cpu_s": decode_cpu, "decode_wall_s": decode_wall / n, "k": {},
                 "resize": resize, "size": (int(rows[0]["height"]), int(rows[0]["width"])) if rows else None}
    deflate = None
    with tempfile.TemporaryDirectory() as tmp:
        for k in ks:
            folder = Path(tmp) / f"k{k}"
            folder.mkdir()
            p = dataclasses.replace(params, variants=int(k))
            c0, t0 = time.process_time(), time.perf_counter()
            summary = build_distortions(cache_dir, p, out_dir=folder, jobs=1, progress=False)
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            h5 = (folder / cache.DISTORTIONS_H5).stat().st_size
            pq = (folder / cache.DISTORTIONS_PARQUET).stat().st_size
            out["k"][k] = {"bytes": (h5 + pq) / n, "h5_bytes": h5 / n, "cpu_s": cpu / n, "wall_s": wall / n,
                           "color_targets": summary.color_targets}
            if k == deflate_k:
                deflate = deflate_table(folder / cache.DISTORTIONS_H5)
            if k != deflate_k:
                (folder / cache.DISTORTIONS_H5).unlink()
        out["deflate"] = deflate
        loader: dict = {}
        if loader_epochs > 0:
            link = Path(tmp) / "loader"
            link.mkdir()
            _link_cache(cache_dir, link)
            kept = Path(tmp) / f"k{deflate_k}"
            if (kept / cache.DISTORTIONS_H5).is_file():
                for name in (cache.DISTORTIONS_H5, cache.DISTORTIONS_PARQUET):
                    os.replace(kept / name, link / name)
                loader["cached"] = loader_seconds(link, "cached", params, loader_epochs)
            loader["online"] = loader_seconds(link, "online", params, loader_epochs)
        out["loader"] = loader

    size = out["size"]
    where = f"{adapter.format} at {adapter.root}" + (f", decomposed with --resize {resize}" if resize else "")
    print(f"distort-k benchmark: {n} images ({where}), working size {size[1]}×{size[0]} (W×H); "
          f"serial, one process; colour targets {summary.color_targets}, canvas {params.canvas}")
    print(f"| K | bytes/image (h5 + parquet) | CPU s/image | × decode CPU | wall s/image | "
          f"reads of each variant in {epochs} epochs |")
    print("|---|---|---|---|---|---|")
    print(f"| decode only (reference) | – | {decode_cpu:.3f} | 1.0 | {out['decode_wall_s']:.3f} | – |")
    for k, r in out["k"].items():
        print(f"| {k} | {r['bytes'] / 1e6:.2f} MB | {r['cpu_s']:.3f} | {r['cpu_s'] / decode_cpu:.1f} "
              f"| {r['wall_s']:.3f} | {epochs / k:g} |")
    if deflate:
        print(f"\ndeflate settings on the K = {deflate_k} variants (raw {deflate[0]['raw_kB']:.0f} kB/variant; "
              "the stage writes ISA-L level 1)")
        print("| setting | kB/variant | CPU ms/variant |")
        print("|---|---|---|")
        for r in deflate:
            print(f"| {r['setting']} | {r['kB']:.0f} | {r['ms']:.1f} |")
    if loader:
        g = next(iter(loader.values()))
        print(f"\nloader: CacheDataset, one thread, {g['samples']} samples at {g['size'][1]}×{g['size'][0]}, "
              f"guidance {g['guidance'] or 'off'}, flips; workers for {step_rate:g} images/s = "
              f"ceil({step_rate:g} / images/s per core)")
        print("| data.distortion | CPU s/sample | images/s per worker core | workers for "
              f"{step_rate:g} images/s | wall s/sample |")
        print("|---|---|---|---|---|")
        for mode, r in loader.items():
            rate = 1.0 / r["cpu_s"]
            r["images_per_core_s"], r["workers"] = rate, math.ceil(step_rate / rate)
            print(f"| {mode} | {r['cpu_s']:.3f} | {rate:.1f} | {r['workers']} | {r['wall_s']:.3f} |")
    return out
