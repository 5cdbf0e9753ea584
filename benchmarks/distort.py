"""Distort throughput: images/s with 1 and 2 workers, against the cost of decoding the same images.

The reference measured in the same run is ``adapter.load`` (image + label PNG/JPEG decoding) of the
images the stage distorts, so the ratio says what one image's K variants cost in units of reading
it. Outputs go to a temporary folder: the cache's own distortions.h5 is left alone.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from pipeline.cache import SegmentDB
from benchmarks.common import decode_seconds
from pipeline.distorted_gt import DistortParams, build_distortions


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
