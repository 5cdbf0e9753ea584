"""`resail bench pipeline`: every stage measured on the data given, projection rows printed."""
from __future__ import annotations

import pickle

import numpy as np

from benchmarks.pipeline import DATASET_SIZES, measure, print_report
from pipeline.distort.build import CompressedArray
from tests.fixtures.toy_dataset import make_toy_dataset


def test_measure_covers_every_stage_and_projection_prints(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = make_toy_dataset(tmp_path / "toy", n_train=4, n_val=0, seed=1)
    res = measure("folder", root, variants=2)
    assert res["images"] == 4 and list(res["stages"]) == ["decompose", "retrieve", "compose", "distort"]
    for name, st in res["stages"].items():
        assert st["cpu"] > 0 and st["disk_bytes"] > 0, name
    for name in ("decompose", "compose", "distort"):  # per-image stages: results shipped to the client
        st = res["stages"][name]
        assert st["net_bytes"] > 0 and st["worker_cpu"] > 0 and st["client_cpu"] >= 0, name
    assert res["stages"]["retrieve"]["net_bytes"] == 0  # one process, no per-image map
    print_report(res, cores=2)
    out = capsys.readouterr().out
    for ds, size in DATASET_SIZES.items():
        assert f"| {ds} | {size:,} |" in out


def test_compressed_chunks_round_trip_and_are_what_crosses_the_wire(tmp_path):
    import h5py

    arr = np.zeros((3, 40, 50, 3), np.uint8)
    arr[1, 10:20, 5:30] = 200
    arr[2] = np.arange(50, dtype=np.uint8)[None, :, None]
    valid = arr.any(-1)
    ca, cv = CompressedArray.of(arr), CompressedArray.of(valid)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ca.write(f, "a")
        cv.write(f, "v")
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert np.array_equal(f["a"][...], arr) and np.array_equal(f["v"][...], valid)
        assert f["a"].compression == "gzip" and f["a"].chunks == (1, 40, 50, 3)
    assert len(pickle.dumps(ca)) < arr.nbytes / 4 and ca.nbytes < arr.nbytes / 4
