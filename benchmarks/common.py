"""Helpers shared by the benchmarks: the decode-only reference every per-image stage is compared to."""
from __future__ import annotations

import time

from pipeline.datasets.base import DatasetAdapter, SampleRef


def decode_seconds(adapter: DatasetAdapter, refs: list[SampleRef], repeat: int = 1) -> float:
    """Seconds to read and validate every sample once (image + label + instances), averaged."""
    t0 = time.perf_counter()
    for _ in range(repeat):
        for r in refs:
            adapter.load(r)
    return (time.perf_counter() - t0) / repeat
