"""Shared fixtures: the repo paths, a tiny folder-format dataset with known segments, the tiny trained
run (built once per session, see tests/fixtures/tiny_run.py) and one intra-op thread.

Folder conftests add what only their folder shares (tests/pipeline, tests/train, tests/studio,
tests/e2e); plain helpers live in tests/fixtures/."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.toy_dataset import make_toy_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    return make_toy_dataset(tmp_path / "toy")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not present at {SHARED_DATA} (only in the developers' checkout)")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """One intra-op torch thread during the test: the test machine is shared, and one thread avoids OpenMP
    spin-waiting under contention. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """(run_dir, cache_dir) of the tiny trained run; tests must not modify these folders (copy them first)."""
    from tests.fixtures.tiny_run import tiny_run

    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def syn(run):
    """A Synthesizer on the tiny run (tests/studio overrides it with the guidance-sensitive copy)."""
    from resail_train.synthesis import Synthesizer

    s = Synthesizer.load(run[0], run[1], device="cpu")
    yield s
    s.close()
