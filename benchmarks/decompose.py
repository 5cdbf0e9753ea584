"""Decompose throughput: images/s with 1 and 2 workers, against the cost of decoding the images.

The reference measured in the same run is decoding (image + label PNG/JPEG) alone, so the ratio
says how much of the stage is our work rather than I/O.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import decode_seconds
from pipeline.datasets import open_dataset
from pipeline.decompose.build import DecomposeParams, build_segment_db, collect_refs


def run_decompose_bench(fmt: str, data_root: str | Path, jobs_list=(1, 2), repeat: int = 1) -> dict:
    adapter = open_dataset(fmt, data_root)
    refs = collect_refs(adapter, None)
    decode = decode_seconds(adapter, refs, repeat)
    results = {"images": len(refs), "decode_s": decode, "runs": {}}
    for jobs in jobs_list:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            for k in range(repeat):
                build_segment_db(adapter, Path(tmp) / str(k), params=DecomposeParams(), jobs=jobs, progress=False)
            results["runs"][jobs] = (time.perf_counter() - t0) / repeat
    n = len(refs)
    print(f"decompose benchmark: {n} images of {data_root} ({fmt})")
    print("| run | seconds | images/s | × decode time |")
    print("|---|---|---|---|")
    print(f"| decode only (reference) | {decode:.2f} | {n / decode:.1f} | 1.00 |")
    for jobs, sec in results["runs"].items():
        print(f"| decompose --jobs {jobs} | {sec:.2f} | {n / sec:.1f} | {sec / decode:.2f} |")
    return results
