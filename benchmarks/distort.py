"""Distort throughput: images/s with 1 and 2 workers, against the cost of decoding the same images.

The reference measured in the same run is ``adapter.load`` (image + label PNG/JPEG decoding) of the
images the stage distorts, so the ratio says what one image's K variants cost in units of reading
it. Outputs go to a temporary folder: the cache's own distortions.h5 is left alone.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from benchmarks.common import decode_seconds
from pipeline import cache
from pipeline.cache import SegmentDB
from pipeline.distort.build import DistortParams, build_distortions, matched_segments


def guidance_black_share(cache_dir: str | Path, distortions_dir: str | Path | None = None) -> dict:
    """How often the distorted GT shows content where the retrieval guidance is black.

    Over every (variant, pixel) of the images in ``distortions.h5`` whose ``guidance.h5`` pixel is
    not valid: ``any`` = share that is non-black in the variant; ``outside_matched`` = the same
    share restricted to pixels outside every matched segment's mask and every matched thing's box
    (void, unmatched, dropped or pruned segments: the generator has no guidance there, so a
    distorted GT that shows content there would train it on content the guidance never gives; a
    matched segment's own pixels can be black in the guidance only where the retrieved shape does
    not cover it). ``n_black``/``n_outside``: the denominators.
    """
    cache_dir = Path(cache_dir)
    dist_path = Path(distortions_dir or cache_dir) / cache.DISTORTIONS_H5
    n_black = hit = n_out = hit_out = 0
    with SegmentDB.open(cache_dir) as db, h5py.File(cache_dir / cache.GUIDANCE_H5, "r") as g, \
            h5py.File(dist_path, "r") as d:
        matched = matched_segments(db)
        boxes = np.stack([db.col(c).astype(np.int64) for c in ("y0", "x0", "y1", "x1")], axis=1)
        is_thing = db.col("is_thing").astype(bool)
        for row in db.image_rows():
            key = cache.image_key(row["split"], row["image_id"])
            if key not in d:
                continue
            variants = d[key][...]
            shown = (variants > 0).any(-1)  # [K, H, W]
            black = ~g[cache.valid_key(row["split"], row["image_id"])][...]
            covered = np.zeros(black.shape, bool)
            for sid in range(row["first_segment"], row["first_segment"] + row["n_segments"]):
                if not matched[sid]:
                    continue
                y0, x0, y1, x1 = boxes[sid]
                if is_thing[sid]:
                    covered[y0:y1, x0:x1] = True
                else:
                    covered[y0:y1, x0:x1] |= db.crop(sid)[1]
            outside = black & ~covered
            k = shown.shape[0]
            n_black += k * int(black.sum())
            hit += int(shown[:, black].sum())
            n_out += k * int(outside.sum())
            hit_out += int(shown[:, outside].sum())
    return {"any": hit / n_black if n_black else 0.0, "outside_matched": hit_out / n_out if n_out else 0.0,
            "n_black": n_black, "n_outside": n_out}


def run_distort_bench(cache_dir: str | Path, jobs_list=(1, 2), variants: int = 4, repeat: int = 1, seed: int = 0,
                      color_targets: str = "auto", canvas: str = "black") -> dict:
    """Time ``build_distortions`` per ``--jobs`` against decoding the same images, in wall seconds
    and (serial run, robust on a loaded machine) CPU seconds; then how often the variants show
    content where the guidance is black (:func:`guidance_black_share`, needs ``guidance.h5``)."""
    cache_dir = Path(cache_dir)
    with SegmentDB.open(cache_dir) as db:
        adapter = db.open_adapter()
        refs = db.sample_refs(adapter, db.image_rows(str(db.attrs.get("db_split", "train"))))
    c0 = time.process_time()
    decode = decode_seconds(adapter, refs, repeat)
    decode_cpu = (time.process_time() - c0) / repeat
    params = DistortParams(variants=variants, seed=seed, color_targets=color_targets, canvas=canvas)
    results = {"images": len(refs), "variants": variants, "decode_s": decode, "decode_cpu_s": decode_cpu,
               "runs": {}, "cpu": {}, "stats_s": {}}
    shares = None
    for jobs in jobs_list:
        total = stats = cpu = 0.0
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as tmp:
                c0, t0 = time.process_time(), time.perf_counter()
                summary = build_distortions(cache_dir, params, out_dir=tmp, jobs=jobs, progress=False)
                total += time.perf_counter() - t0
                cpu += time.process_time() - c0
                stats += summary.stats_s
                if shares is None and (cache_dir / cache.GUIDANCE_H5).is_file():
                    shares = guidance_black_share(cache_dir, tmp)
        results["runs"][jobs] = total / repeat
        results["cpu"][jobs] = cpu / repeat if jobs == 1 else None  # workers' CPU is not ours to count
        results["stats_s"][jobs] = stats / repeat
    results["black_share"] = shares
    n = len(refs)
    print(f"distort benchmark: {n} images of {cache_dir} ({adapter.format} at {adapter.root}), K = {variants} variants, "
          f"colour targets {summary.color_targets}, canvas {canvas}")
    print("| run | seconds | images/s | ms/image | × decode time | CPU s | × decode CPU | of which colour stats (s) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| decode only (reference) | {decode:.2f} | {n / decode:.1f} | {1e3 * decode / n:.1f} | 1.00 "
          f"| {decode_cpu:.2f} | 1.00 | – |")
    for jobs, sec in results["runs"].items():
        c = results["cpu"][jobs]
        cpu_cols = f"{c:.2f} | {c / decode_cpu:.1f}" if c is not None else "– | –"
        print(f"| distort --jobs {jobs} | {sec:.2f} | {n / sec:.1f} | {1e3 * sec / n:.1f} | {sec / decode:.1f} "
              f"| {cpu_cols} | {results['stats_s'][jobs]:.2f} |")
    if shares is not None:
        print(f"guidance-black pixels showing content in the variants: {shares['any']:.1%} of all, "
              f"{shares['outside_matched']:.1%} outside the matched segments (void, unmatched, dropped)")
    return results
