"""`dvc repro` of the shipped pipeline in a fresh git repo: runs, skips when nothing changed,
re-runs only what a changed parameter touches."""
from __future__ import annotations

import sys

import pyarrow.parquet as pq
import pytest

from tests.fixtures.dvc_repo import set_params, sh

pytestmark = pytest.mark.slow


def test_dvc_repro_runs_skips_and_reruns_on_param_change(repo_copy):
    """The whole shipped pipeline, shrunk (2 training steps), then selective re-runs."""
    repo, env = repo_copy
    set_params(repo, distort={"variants": 1}, train={"max_steps": 2, "segnet_max_steps": 2},
               evaluate={"limit": 3}, report={"n_images": 2})
    dvc = [sys.executable, "-m", "dvc"]
    out = sh([*dvc, "repro"], repo, env)
    for stage in ("decompose", "contact_sheet", "retrieve", "compose", "distort", "train_segnet", "train",
                  "evaluate", "report"):
        assert f"Running stage '{stage}'" in out, stage
    cache = repo / "datasets_cache" / "camvid_demo"
    for name in ("segments.parquet", "images.parquet", "segments.h5", "contact_sheet.png", "retrieval.parquet",
                 "guidance.h5", "distortions.h5"):
        assert (cache / name).is_file(), name
    run = repo / "runs" / "camvid_demo"
    for name in ("segnet.pt", "generator.pt", "metrics.json", "report/index.html"):
        assert (run / name).is_file(), name
    metrics = sh([*dvc, "metrics", "show", "--json"], repo, env)
    assert "miou" in metrics and "pixel_acc" in metrics
    n_before = pq.read_metadata(cache / "segments.parquet").num_rows

    out = sh([*dvc, "repro"], repo, env)
    assert "Running stage" not in out  # nothing changed → nothing re-runs

    set_params(repo, report={"n_images": 1})
    out = sh([*dvc, "repro"], repo, env)
    assert "Running stage 'report'" in out and "Running stage 'train'" not in out \
        and "Running stage 'decompose'" not in out

    set_params(repo, decompose={"min_area": 64})
    out = sh([*dvc, "repro", "decompose"], repo, env)
    assert "Running stage 'decompose'" in out and "Running stage 'retrieve'" not in out
    assert pq.read_metadata(cache / "segments.parquet").num_rows < n_before
