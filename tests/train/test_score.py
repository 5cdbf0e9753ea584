"""``resail score``: pairing of the common output layouts, FID/KID equal to ``resail fid``, a folder against
itself, mIoU equal to ``resail evaluate``'s for the same images (one shared code path), void handling."""
from __future__ import annotations

import csv
import json
import math
import re

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def cli():
    from stages.cli import main

    return main


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(arr)
    assert cv2.imwrite(str(path), a[:, :, ::-1] if a.ndim == 3 else a), path
    return path


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    from resail_train.metrics.fid import FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3()
    for mod in net.modules():  # He init: the signal survives the ~95 layers (PyTorch's default fades it to ~0)
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    p = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(net.state_dict(), p)
    return p


def _images(folder, seed, n, hw=(48, 64), names=None, dark=False):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
        a = cv2.GaussianBlur(a, (5, 5), 1.5)  # natural-ish statistics: not pure noise
        if dark:  # another distribution: darker, a colour cast
            a = (a.astype(np.int32) // 3 + np.array([0, 60, 0])).astype(np.uint8)
        _png(folder / f"{names[i] if names else f'{i:03d}'}.png", a)
        out.append(a)
    return out


# --------------------------------------------------------------------------- pairing
def test_pairing_understands_the_common_layouts(tmp_path):
    from resail_train.metrics.score import pair_folders

    img = np.zeros((4, 6, 3), np.uint8)
    lab = np.zeros((4, 6), np.uint8)
    # SPADE: test_latest/images/{synthesized_image,real_image,input_label}/<stem>.png
    spade = tmp_path / "spade" / "test_latest"
    for stem in ("a", "b", "c"):
        _png(spade / "images" / "synthesized_image" / f"{stem}.png", img)
        _png(spade / "images" / "input_label" / f"{stem}.png", img)
    for stem in ("a", "b", "x"):
        _png(spade / "images" / "real_image" / f"{stem}.png", img)
    p = pair_folders(spade, spade, spade)
    assert p.stems == ["a", "b"]
    assert p.folders["fake"].endswith("images/synthesized_image") and p.folders["labels"].endswith("input_label")
    line = p.unpaired_line()
    assert line.count("\n") == 0 and "without real (c)" in line and "without fake and labels (x)" in line
    # OASIS: results/<name>/best/{image,label}; real/labels from Cityscapes' own layout (city folders, suffixes)
    oasis = tmp_path / "oasis" / "cityscapes"
    cs = tmp_path / "cityscapes"
    for stem in ("frankfurt_000000_000294", "frankfurt_000000_000576"):
        _png(oasis / "best" / "image" / f"{stem}.png", img)
        _png(oasis / "best" / "label" / f"{stem}.png", img)
        _png(cs / "leftImg8bit" / "val" / "frankfurt" / f"{stem}_leftImg8bit.png", img)
        _png(cs / "gtFine" / "val" / "frankfurt" / f"{stem}_gtFine_labelIds.png", lab)
        _png(cs / "gtFine" / "val" / "frankfurt" / f"{stem}_gtFine_color.png", img)
        _png(cs / "gtFine" / "val" / "frankfurt" / f"{stem}_gtFine_instanceIds.png", lab)
    p = pair_folders(oasis, cs / "leftImg8bit" / "val", cs / "gtFine" / "val")
    assert p.stems == ["frankfurt_000000_000294", "frankfurt_000000_000576"] and p.unpaired_line() is None
    assert all(f.name.endswith("_gtFine_labelIds.png") for f in p.labels.values())  # ids preferred over colours
    assert p.folders["fake"].endswith("best/image")
    p2 = pair_folders(oasis / "best", cs / "leftImg8bit" / "val", oasis / "best")
    assert p2.folders["labels"].endswith("best/label") and len(p2.stems) == 2
    # SPADE and OASIS keep Cityscapes' image names (``…_leftImg8bit.png``) in their own folders
    spade_cs = tmp_path / "spade_cs" / "test_latest"
    for stem in ("frankfurt_000000_000294", "frankfurt_000000_000576"):
        _png(spade_cs / "images" / "synthesized_image" / f"{stem}_leftImg8bit.png", img)
        _png(spade_cs / "images" / "input_label" / f"{stem}_leftImg8bit.png", img)
    p3 = pair_folders(spade_cs, cs / "leftImg8bit" / "val", cs / "gtFine" / "val")
    assert p3.stems == ["frankfurt_000000_000294", "frankfurt_000000_000576"] and p3.unpaired_line() is None
    # pix2pixHD: one folder, role suffixes
    ph = tmp_path / "pix2pixhd"
    for stem in ("u", "v_leftImg8bit"):
        for suf in ("synthesized_image", "real_image", "input_label"):
            _png(ph / f"{stem}_{suf}.jpg", img)
    p = pair_folders(ph, ph, ph)
    assert p.stems == ["u", "v"] and p.fake["u"].name == "u_synthesized_image.jpg"
    assert p.real["v"].name == "v_leftImg8bit_real_image.jpg" and p.labels["u"].name == "u_input_label.jpg"
    assert len(p.stems_sha256) == 64
    with pytest.raises(DataError, match="no file pairs"):
        pair_folders(spade, ph)
    with pytest.raises(DataError, match="two real files"):  # best/ holds image/ and label/: ambiguous as --real
        pair_folders(spade, oasis / "best")


# --------------------------------------------------------------------------- FID / KID
def test_real_folder_against_itself_and_against_another(tmp_path, random_inception):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    _images(a_dir, 0, 6)
    _images(b_dir, 1, 6, hw=(40, 56), dark=True)  # another size: --size brings both to one
    runner = CliRunner()
    base = ["--inception-weights", str(random_inception), "--device", "cpu", "--no-progress",
            "--dataset", "cityscapes", "--segmenter", "none", "--batch-size", "4"]
    r = runner.invoke(cli(), ["score", "--fake", str(a_dir), "--real", str(a_dir), "--out", str(tmp_path / "s0")] + base)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "s0" / "score.json").read_text())
    assert abs(m["fid"]) < 1e-6
    r = runner.invoke(cli(), ["score", "--fake", str(a_dir), "--real", str(b_dir), "--size", "32x48",
                              "--out", str(tmp_path / "s1")] + base)
    assert r.exit_code == 0, r.output
    last = r.output.strip().splitlines()[-1]
    assert re.fullmatch(r"FID [0-9.]+ KID -?[0-9.]+ ± [0-9.]+ mIoU — acc —", last), last
    m1 = json.loads((tmp_path / "s1" / "score.json").read_text())
    assert m1["fid"] > 1e-3 and m1["kid"] > 10 * abs(m["kid"])  # a folder against itself: FID, KID ≈ 0
    assert m1["protocol"]["size"] == "32x48" and m1["protocol"]["resize"]["files_resized"] == {"fake": 6, "real": 6}
    # the same numbers as `resail fid` on the same folders at the same size
    r = runner.invoke(cli(), ["fid", str(a_dir), str(b_dir), "--size", "32x48", "--inception-weights",
                              str(random_inception), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    words = r.output.strip().splitlines()[-1].split()
    assert words[0] == "FID:" and words[2] == "KID:"
    assert math.isclose(float(words[1]), m1["fid"], rel_tol=1e-5)  # printed with 6 digits
    assert math.isclose(float(words[3]), m1["kid"], rel_tol=1e-5, abs_tol=1e-9)
    from resail_train.metrics.fid_folders import fid_of_folders

    full = fid_of_folders(a_dir, b_dir, random_inception, (32, 48), batch_size=4)  # what `resail fid` prints
    assert math.isclose(full["fid"], m1["fid"], rel_tol=1e-6) and math.isclose(full["kid"], m1["kid"], rel_tol=1e-6)
    # the fingerprint: hashes, N and the paired-stem hash
    proto = m1["protocol"]
    import hashlib

    assert proto["inception"]["sha256"] == hashlib.sha256(random_inception.read_bytes()).hexdigest()
    assert proto["n_images"] == 6 and proto["pairs_sha256"] == hashlib.sha256(
        "\n".join(f"{i:03d}" for i in range(6)).encode()).hexdigest()
    assert proto["kid"]["subsets"] == 100 and proto["kid"]["subset_size"] == 6


# --------------------------------------------------------------------------- mIoU: the same code as evaluate
def test_score_equals_evaluate_on_the_same_images(evaluated, tmp_path):  # noqa: F811
    """The run's eval images scored by `resail score` with the same segmenter: the same confusion and numbers."""
    from resail_train.synthesis import Synthesizer

    run_dir, cache_dir, m = evaluated
    with Synthesizer.load(run_dir, cache_dir, device="cpu") as syn:
        root = syn.online.db.attrs["data_root"]
    classes = f"{root}/classes.json"
    out = tmp_path / "score"
    r = CliRunner().invoke(cli(), ["score", "--fake", str(run_dir / "eval" / "val"), "--real", f"{root}/val",
                                   "--labels", f"{root}/val", "--dataset", f"folder:{classes}", "--segmenter", "own",
                                   "--weights", str(run_dir / "eval_segnet.pt"), "--inception-weights", "none",
                                   "--batch-size", "2", "--device", "cpu", "--no-progress", "--out", str(out)])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "score.json").read_text())
    assert s["n_images"] == m["n_images"] == 2
    assert s["miou"] == m["miou"] and s["pixel_acc"] == m["pixel_acc"]
    assert s["reference"]["miou"] == m["reference"]["miou"]
    assert s["reference"]["pixel_acc"] == m["reference"]["pixel_acc"]
    vi = m["details"]["void_included"]
    assert s["miou_incl_void"] == vi["miou"] and s["pixel_acc_incl_void"] == vi["pixel_acc"]
    assert s["pixel_acc_incl_void"] < s["pixel_acc"]  # the toy maps have void pixels: they count as wrong
    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["class"] for r in rows] == ["sky", "road", "tree", "car", "person"]
    for row in rows:
        want = m["per_class_iou"][row["class"]]
        assert (row["iou"] == "" and want is None) or math.isclose(float(row["iou"]), want, abs_tol=1e-6)
    conf = np.asarray(m["details"]["confusion"])
    assert [int(r["pixels"]) for r in rows] == conf.sum(1).tolist()
    assert s["protocol"]["segmenter"]["name"] == "own" and len(s["protocol"]["segmenter"]["sha256"][0]) == 64
    last = r.output.strip().splitlines()[-1]
    assert last == (f"FID — KID — ± — mIoU {100 * m['miou']:.1f} acc {100 * m['pixel_acc']:.1f}")


def test_void_scores_by_hand():
    from resail_train.metrics.score import void_scores
    from resail_train.metrics.segmentation import segmentation_scores

    conf = np.array([[5, 1], [2, 4]])  # rows target, columns prediction
    void_pred = np.array([3, 0])  # 3 void pixels predicted as class 0
    v = void_scores(conf, void_pred, 3)
    assert math.isclose(v["pixel_acc"], 9 / 15)
    assert math.isclose(v["per_class_iou"][0], 5 / (5 + 2 + 1 + 3)) and math.isclose(v["per_class_iou"][1], 4 / 7)
    s = segmentation_scores(conf)
    assert math.isclose(s["pixel_acc"], 9 / 12) and s["per_class_iou"][1] == v["per_class_iou"][1]


def test_score_refuses_cleanly(tmp_path, random_inception):
    _images(tmp_path / "a", 0, 2)
    _images(tmp_path / "b", 1, 2)
    lab = tmp_path / "labels"
    _png(lab / "000.png", np.full((48, 64), 40, np.uint8))  # 40 is no Cityscapes labelId
    _png(lab / "001.png", np.zeros((48, 64), np.uint8))
    base = ["score", "--fake", str(tmp_path / "a"), "--real", str(tmp_path / "b"), "--device", "cpu", "--no-progress",
            "--inception-weights", "none"]
    r = CliRunner().invoke(cli(), base + ["--dataset", "cityscapes", "--labels", str(lab), "--segmenter", "own",
                                          "--weights", str(tmp_path / "missing.pt")])
    assert r.exit_code == 1 and "missing.pt" in r.output and r.output.count("\n") == 1, r.output
    r = CliRunner().invoke(cli(), base + ["--dataset", "nope"])
    assert r.exit_code == 1 and "--dataset 'nope'" in r.output, r.output
    r = CliRunner().invoke(cli(), base + ["--dataset", "cityscapes"])  # drn-d-105 by default: needs labels
    assert r.exit_code == 2 and "--labels" in r.output
    r = CliRunner().invoke(cli(), ["score", "--fake", str(tmp_path / "a"), "--real", str(tmp_path / "nowhere"),
                                   "--dataset", "cityscapes", "--segmenter", "none"])
    assert r.exit_code == 1 and "real folder not found" in r.output, r.output
