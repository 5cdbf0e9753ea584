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
from pipeline.distorted_gt import DistortParams, build_distortions, matched_segments


def guidance_black_share(cache_dir: str | Path, distortions_dir: str | Path | None = None) -> dict:
    """How often the distorted GT shows content where the retrieval guidance is black.

    Over every (variant, pixel) of the images in ``distortions.h5`` whose ``guidance.h5`` pixel is
    not valid: ``any`` = share that is non-black in the variant; ``outside_matched`` = the same
    share restricted to pixels outside every matched segment's mask and every matched thing's box
    (void, unmatched, dropped or pruned segments: what issue 10 item 1 requires to be black; a
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
                      color_targets: str = "auto") -> dict:
    cache_dir = Path(cache_dir)
    with SegmentDB.open(cache_dir) as db:
        adapter = db.open_adapter()
        refs = db.sample_refs(adapter, db.image_rows(str(db.attrs.get("db_split", "train"))))
    decode = decode_seconds(adapter, refs, repeat)
    params = DistortParams(variants=variants, seed=seed, color_targets=color_targets)
    results = {"images": len(refs), "variants": variants, "decode_s": decode, "runs": {}, "stats_s": {}}
    for jobs in jobs_list:
        total = stats = 0.0
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                summary = build_distortions(cache_dir, params, out_dir=tmp, jobs=jobs, progress=False)
                total += time.perf_counter() - t0
                stats += summary.stats_s
        results["runs"][jobs] = total / repeat
        results["stats_s"][jobs] = stats / repeat
    n = len(refs)
    print(f"distort benchmark: {n} images of {cache_dir} ({adapter.format} at {adapter.root}), K = {variants} variants, "
          f"colour targets {summary.color_targets}")
    print("| run | seconds | images/s | ms/image | × decode time | of which colour stats (s) |")
    print("|---|---|---|---|---|---|")
    print(f"| decode only (reference) | {decode:.2f} | {n / decode:.1f} | {1e3 * decode / n:.1f} | 1.00 | – |")
    for jobs, sec in results["runs"].items():
        print(f"| distort --jobs {jobs} | {sec:.2f} | {n / sec:.1f} | {1e3 * sec / n:.1f} | {sec / decode:.1f} "
              f"| {results['stats_s'][jobs]:.2f} |")
    return results
