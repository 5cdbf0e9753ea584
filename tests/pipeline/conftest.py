"""Fixtures shared by the tests of tests/pipeline/."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.datasets import open_dataset
from pipeline.decompose.build import DecomposeParams, build_segment_db
from pipeline.retrieve.build import run_retrieval
from tests.fixtures.toy_dataset import make_toy_dataset


@pytest.fixture(scope="module")
def retrieved_cache(tmp_path_factory) -> Path:
    """A decomposed toy dataset (6 train + 2 val images) with its retrieval, the distort stage's input;
    tests copy it before writing into it."""
    base = tmp_path_factory.mktemp("distort")
    root = make_toy_dataset(base / "toy", n_train=6, n_val=2, seed=3)
    build_segment_db(open_dataset("folder", root), base / "cache", params=DecomposeParams(min_area=4, mask_size=32),
                     progress=False)
    run_retrieval(base / "cache", progress=False)
    return base / "cache"
