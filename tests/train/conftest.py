"""Fixtures shared by the tests of tests/train/."""
from __future__ import annotations

import shutil

import pytest
import torch

from tests.fixtures.tiny_run import tiny_run


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A copy of the tiny run (evaluate writes into the run folder) evaluated without FID weights."""
    from resail_train.evaluation import evaluate

    run_dir, cache_dir = tiny_run(tmp_path_factory)
    copy = tmp_path_factory.mktemp("eval") / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = evaluate(copy, cache_dir, split="val", device="cpu", batch_size=2, inception_weights="none")
    finally:
        torch.set_num_threads(n)
    return copy, cache_dir, m
