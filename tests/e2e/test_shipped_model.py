"""The pretrained CamVid model shipped in models/camvid_small: it loads from a fresh clone, builds its
retrieval database from the repository's demo data, and draws pictures a trained model draws (sky bright
and blue above a dark road), the same bytes every time. Its generator file was written by the training
code of an earlier layout of this package, so this also shows that older checkpoints load."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO

MODEL = REPO / "models" / "camvid_small"
DEMO = REPO / "data" / "camvid_demo"
SKY, ROAD = 0, 3  # data/camvid_demo/classes.json


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> Path:
    """The recipe of `make studio`: the demo's training frames at the model's 96×128, then retrieval."""
    from pipeline.datasets import open_dataset
    from pipeline.decompose.build import DecomposeParams, build_segment_db
    from pipeline.retrieve.build import run_retrieval

    out = tmp_path_factory.mktemp("camvid_small_db")
    build_segment_db(open_dataset("folder", DEMO, None, "96x128"), out, splits=["train"], params=DecomposeParams(),
                     progress=False)
    run_retrieval(out, progress=False)
    return out


def test_the_shipped_model_is_small_and_complete():
    gen = MODEL / "generator.pt"
    assert gen.is_file() and gen.stat().st_size <= 10 * 2**20
    assert (MODEL / "config.yaml").is_file() and (MODEL / "metrics.json").is_file()


def test_the_shipped_model_synthesizes_trained_pictures(database):
    from resail_train.synthesis import Synthesizer

    syn = Synthesizer.load(MODEL, database, "cpu")
    stems = sorted(p.name for p in (DEMO / "val" / "labels").glob("*.png"))[:3]
    for stem in stems:
        labels = cv2.imread(str(DEMO / "val" / "labels" / stem), cv2.IMREAD_UNCHANGED)
        first = syn.synthesize(labels)[0]
        again = syn.synthesize(labels)[0]
        assert first.shape == (*labels.shape, 3) and first.dtype == np.uint8
        assert np.array_equal(first, again)
        rgb = first.astype(float)
        lum = rgb.mean(2)
        sky, road = labels == SKY, labels == ROAD
        assert sky.sum() > 100 and road.sum() > 100
        assert lum[sky].mean() > lum[road].mean() + 100  # an untrained generator paints both the same grey
        assert rgb[sky][:, 2].mean() > rgb[sky][:, 0].mean()  # blue over red in the sky
