"""``evaluate``: metrics.json / per-class CSV / eval images of the tiny run, FID path, reference row."""
from __future__ import annotations

import csv
import json
import math
import shutil

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.errors import ConfigError
from tests.test_synthesis import _one_thread, cli, tiny_run  # noqa: F401  (autouse fixture)


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
        m = evaluate(copy, cache_dir, split="val", device="cpu", batch_size=2)
    finally:
        torch.set_num_threads(n)
    return copy, cache_dir, m


def test_metrics_files_and_keys(evaluated):
    run_dir, cache_dir, m = evaluated
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    details = json.loads((run_dir / "eval_details.json").read_text())
    assert {**on_disk, "details": details} == json.loads(json.dumps(m))
    for k in ("miou", "pixel_acc", "fid", "fid_reason", "n_images", "split", "reference", "per_class_iou"):
        assert k in on_disk, k
    assert "details" not in on_disk  # metrics only: dvc metrics/exp show stay readable
    assert on_disk["n_images"] == 2 and on_disk["split"] == "val"
    assert on_disk["fid"] is None and "InceptionV3" in on_disk["fid_reason"]
    assert 0 <= on_disk["miou"] <= 1 and 0 <= on_disk["pixel_acc"] <= 1
    assert set(on_disk["reference"]) >= {"miou", "pixel_acc"}
    assert list(m["per_class_iou"]) == ["sky", "road", "tree", "car", "person"]  # class-list order
    assert set(on_disk["per_class_iou"]) == set(m["per_class_iou"])
    assert details["guidance_source"] == "guidance.h5"
    assert details["cache_dir"] == str(cache_dir)
    rows = list(csv.DictReader((run_dir / "per_class_iou.csv").open()))
    assert rows and set(rows[0]) == {"class", "iou"}
    for r in rows:
        assert math.isclose(float(r["iou"]), on_disk["per_class_iou"][r["class"]], abs_tol=1e-6)
    pngs = sorted(p.name for p in (run_dir / "eval" / "val").iterdir())
    assert pngs == ["val_000.png", "val_001.png"]
    assert not list((run_dir / "eval").glob(".*"))  # no temp folders left


def test_eval_images_are_what_synthesize_writes(evaluated):
    run_dir, cache_dir, _ = evaluated
    from pipeline.datasets import open_dataset
    from resail_train.synthesis import Synthesizer

    with Synthesizer.load(run_dir, cache_dir, device="cpu") as syn:  # cache recorded by evaluate? given anyway
        adapter = open_dataset("folder", syn.online.db.attrs["data_root"])
        for ref in adapter.refs("val"):
            s = adapter.load(ref)
            img, _, _ = syn.synthesize(s.labels, s.instances)
            saved = cv2.imread(str(run_dir / "eval" / "val" / f"{ref.image_id}.png"))[:, :, ::-1]
            assert saved.shape == img.shape
            # batch of 2 vs 1: float rounding may move a value by one level at most
            assert np.abs(saved.astype(int) - img.astype(int)).max() <= 1


def test_reference_row_equals_hand_computation(evaluated):
    run_dir, cache_dir, m = evaluated
    from pipeline.datasets import open_dataset
    from resail_train.data import Geometry, apply_geometry, rgb_to_tensor
    from resail_train.metrics.segmentation import confusion_matrix, segmentation_scores
    from resail_train.synthesis import Synthesizer
    from resail_train.trainer import load_segnet, segment

    with Synthesizer.load(run_dir, cache_dir, device="cpu") as syn:
        meta, (h, w) = syn.meta, syn.size
        net = load_segnet(run_dir / "segnet.pt", meta, torch.device("cpu"))
        adapter = open_dataset("folder", syn.online.db.attrs["data_root"])
        geo = Geometry((h, w), (0, 0, h, w), False)
        c = meta.num_classes
        conf = np.zeros((c, c), np.int64)
        lut = meta.lookup_table()
        for ref in adapter.refs("val"):
            s = adapter.load(ref)
            real = rgb_to_tensor(apply_geometry(s.image, geo, nearest=False))[None]
            labels = apply_geometry(lut[s.labels], geo, nearest=True)
            with torch.no_grad():
                pred = segment(net, real).argmax(1)[0].numpy()
            conf += confusion_matrix(pred, labels, c, ignore_index=c)
    hand = segmentation_scores(conf)
    assert math.isclose(m["reference"]["miou"], hand["miou"], rel_tol=0, abs_tol=1e-12)
    assert math.isclose(m["reference"]["pixel_acc"], hand["pixel_acc"], rel_tol=0, abs_tol=1e-12)
    assert np.array_equal(np.asarray(m["details"]["reference_confusion"]), conf)


def test_online_guidance_when_guidance_h5_is_absent(evaluated, tmp_path):
    """Without guidance.h5 the guidance is composed on-line — the same pixels, so the same metrics."""
    from resail_train.evaluation import evaluate

    run_dir, cache_dir, m = evaluated
    cache2 = tmp_path / "cache"
    shutil.copytree(cache_dir, cache2, ignore=shutil.ignore_patterns("guidance.h5", "distortions.h5"))
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2, ignore=shutil.ignore_patterns("eval"))
    m2 = evaluate(run2, cache2, split="val", device="cpu", batch_size=2, save_images=False)
    assert m2["details"]["guidance_source"] == "online"
    assert m2["details"]["confusion"] == m["details"]["confusion"]
    assert m2["miou"] == m["miou"] and m2["pixel_acc"] == m["pixel_acc"]
    assert not (run2 / "eval").exists()


def test_fid_with_random_inception_weights(evaluated, tmp_path):
    """Only checks that the FID path works end to end and gives a finite number."""
    from resail_train.evaluation import evaluate
    from resail_train.metrics.fid import FIDInceptionV3

    run_dir, cache_dir, _ = evaluated
    torch.manual_seed(0)
    weights = tmp_path / "random_inception.pth"
    torch.save(FIDInceptionV3().state_dict(), weights)
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2, ignore=shutil.ignore_patterns("eval"))
    m = evaluate(run2, cache_dir, split="val", inception_weights=weights, device="cpu", batch_size=2,
                 save_images=False)
    assert m["fid"] is not None and math.isfinite(m["fid"]) and m["fid"] >= -1e-6
    assert m["fid_reason"] is None and m["details"]["inception_weights"] == str(weights)
    with pytest.raises(ConfigError, match="FID Inception weights file not found"):
        evaluate(run2, cache_dir, inception_weights=tmp_path / "missing.pth", device="cpu")


def test_evaluate_cli_table_and_errors(evaluated, tmp_path):
    run_dir, cache_dir, _ = evaluated
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2)
    r = CliRunner().invoke(cli(), ["evaluate", "--run", str(run2), "--cache", str(cache_dir), "--split", "val",
                                   "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "| generated |" in r.output and "| real images (reference) |" in r.output and "FID: no InceptionV3" in r.output
    (run2 / "segnet.pt").unlink()
    before = (run2 / "metrics.json").read_bytes()
    r = CliRunner().invoke(cli(), ["evaluate", "--run", str(run2), "--cache", str(cache_dir), "--device", "cpu",
                                   "--no-progress"])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "segnet.pt" in r.output, r.output
    assert (run2 / "metrics.json").read_bytes() == before  # nothing replaced
    r = CliRunner().invoke(cli(), ["evaluate", "--run", str(run_dir), "--cache", str(cache_dir), "--split", "test",
                                   "--device", "cpu", "--no-progress"])
    assert r.exit_code == 1 and "no images of split 'test'" in r.output, r.output


@pytest.mark.parametrize("n1,n2,d", [(20, 30, 64), (30, 20, 64), (5, 7, 16), (80, 90, 32)])
def test_low_rank_frechet_distance_matches_sqrtm(n1, n2, d):
    from resail_train.evaluation import frechet_distance_features
    from resail_train.metrics.fid import fid_from_features

    rng = np.random.default_rng(n1 + n2 + d)
    a = rng.normal(size=(n1, d))
    b = rng.normal(size=(n2, d)) * 1.3 + 0.2
    assert math.isclose(frechet_distance_features(a, b), fid_from_features(a, b), rel_tol=1e-5)
