"""Distorted ground truth drawn fresh in the loader (``data.distortion: online``): the distort stage's own
operator, reproducible per (seed, epoch, index) whatever the worker count, distributed like the cache."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from pipeline import cache
from pipeline.datasets import open_dataset
from pipeline.decompose.build import DecomposeParams, build_segment_db
from pipeline.distort.build import (DistortParams, build_distortions, read_distortion_valid, read_distortions,
                                    variant_rng)
from pipeline.distort.fresh import params_from_h5
from pipeline.errors import CacheError, ConfigError
from pipeline.retrieve.build import run_retrieval
from resail_train.config import load_config
from resail_train.training.data import CacheDataset, EpochBatchSampler, collate, worker_init
from tests.fixtures.toy_dataset import make_toy_dataset

K = 16  # cached variants per image: enough draws for the distribution check
PARAMS = DistortParams(variants=K, seed=7, probs={"shape": 0.7})


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory) -> Path:
    """6 train + 2 val toy images, decomposed, retrieved, and K distorted variants of the train images."""
    base = tmp_path_factory.mktemp("fresh")
    root = make_toy_dataset(base / "toy", n_train=6, n_val=2, seed=3)
    build_segment_db(open_dataset("folder", root), base / "cache", params=DecomposeParams(min_area=4, mask_size=32),
                     progress=False)
    run_retrieval(base / "cache", progress=False)
    build_distortions(base / "cache", PARAMS, progress=False)
    return base / "cache"


def online(cache_dir: Path, **kw) -> CacheDataset:
    """The whole image (no resize, no crop, no flip): samples are the operator's output as it is."""
    return CacheDataset(cache_dir, "train", load_size=None, crop_size=[48, 64], train=False, flip=False,
                        guidance=None, distortion="online", **kw)


def as_uint8(t: torch.Tensor) -> np.ndarray:
    return ((t + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_parameters_are_those_distortions_h5_was_made_with(toy_cache):
    made = dataclasses.replace(PARAMS, color_targets="retrieval")  # the file records the mode "auto" resolved to
    assert params_from_h5(toy_cache / cache.DISTORTIONS_H5) == made
    ds = online(toy_cache)
    assert ds.fresh.params == made and ds.fresh.color_targets == "retrieval"


def test_same_operator_as_the_cache(toy_cache):
    """Given the generator the stage used for variant v, the on-line path returns the stored variant."""
    ds = online(toy_cache)
    for i, (row, ref) in enumerate(zip(ds.rows, ds.refs)):
        sample = ds.adapter.load(ref)
        stored = read_distortions(toy_cache, row["split"], row["image_id"])
        valid = read_distortion_valid(toy_cache, row["split"], row["image_id"])
        for v in (0, 5, K - 1):
            out, ok, records = ds.fresh.distort(i, sample, variant_rng(PARAMS.seed, row["split"], row["image_id"], v))
            assert np.array_equal(out, stored[v]) and np.array_equal(ok, valid[v]), (row["image_id"], v)
            assert any(r["applied"] for r in records)
    ds.close()


def test_reproducible_per_seed_epoch_index_and_fresh_per_epoch(toy_cache):
    a, b = online(toy_cache, seed=4), online(toy_cache, seed=4)
    for i in range(len(a)):
        x, y = a[(2, i)], b[(2, i)]
        assert torch.equal(x["distorted"], y["distorted"]) and torch.equal(x["distorted_valid"], y["distorted_valid"])
        assert torch.equal(x["distorted"], a[(2, i)]["distorted"])  # the same bytes twice
        assert not torch.equal(x["distorted"], a[(3, i)]["distorted"])  # another epoch: another draw
    other = online(toy_cache, seed=5)
    assert not torch.equal(a[(2, 0)]["distorted"], other[(2, 0)]["distorted"])
    # A fresh draw is not one of the cached variants (those come from the stage's own generators).
    row = a.rows[0]
    stored = read_distortions(toy_cache, row["split"], row["image_id"])
    assert not any(np.array_equal(as_uint8(a[(2, 0)]["distorted"]), s) for s in stored)


def test_independent_of_the_number_of_workers(toy_cache):
    batches = {}
    # Spawned workers, each loader on a fresh dataset: forked children of a test process that already
    # runs OpenCV/HDF5 thread pools can deadlock; the draws must not depend on how workers start.
    for workers in (2, 0):
        ds = online(toy_cache, seed=1)
        sampler = EpochBatchSampler(len(ds), 2, seed=1)
        sampler.set_position(3)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                                             worker_init_fn=worker_init if workers else None,
                                             multiprocessing_context="spawn" if workers else None)
        batches[workers] = [b["distorted"] for b in loader]
        ds.close()
    assert len(batches[0]) == 3 and len(batches[2]) == 3
    assert all(torch.equal(x, y) for x, y in zip(batches[0], batches[2]))


def sharpness(img: np.ndarray, valid: np.ndarray) -> float:
    """Mean absolute horizontal step between pasted neighbours (the resolution distortion lowers it)."""
    img, both = img.astype(np.float64), valid[:, 1:] & valid[:, :-1]
    return float(np.abs(img[:, 1:] - img[:, :-1])[both].mean())


def fresh_statistics(ds: CacheDataset, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    share, sharp = [], []
    for epoch in range(epochs):
        for i in range(len(ds)):
            s = ds[(epoch, i)]
            v = s["distorted_valid"].numpy()
            share.append(v.mean())
            sharp.append(sharpness(as_uint8(s["distorted"]), v))
    return np.asarray(share), np.asarray(sharp)


def same_mean(a: np.ndarray, b: np.ndarray) -> bool:
    """The means agree within 4 standard errors of their difference."""
    return abs(a.mean() - b.mean()) < 4 * np.sqrt(a.var() / a.size + b.var() / b.size) + 1e-12


def test_distributed_like_the_cached_variants(toy_cache):
    """Over K draws per image, the pasted-pixel share (shape distortion, paste rules) and the sharpness
    of the pasted pixels (resolution distortion) match those of the K cached variants; an operator
    with another shape probability or scale range does not (the check has the power to see it)."""
    ds = online(toy_cache, seed=0)
    cached_share, cached_sharp = [], []
    for row in ds.rows:
        stored = read_distortions(toy_cache, row["split"], row["image_id"])
        valid = read_distortion_valid(toy_cache, row["split"], row["image_id"])
        cached_share += [v.mean() for v in valid]
        cached_sharp += [sharpness(s, v) for s, v in zip(stored, valid)]
    cached_share, cached_sharp = np.asarray(cached_share), np.asarray(cached_sharp)
    share, sharp = fresh_statistics(ds, K)
    assert share.size == cached_share.size == K * len(ds)
    assert same_mean(share, cached_share) and same_mean(sharp, cached_sharp)
    assert share.std() > 0 and sharp.std() > 0  # the draws vary
    ds.close()
    for other in (dataclasses.replace(PARAMS, probs={"shape": 0.0}), dataclasses.replace(PARAMS, scale_range=(0.2, 0.4))):
        share, sharp = fresh_statistics(online(toy_cache, seed=0, distort_params=other), K // 4)
        assert not (same_mean(share, cached_share) and same_mean(sharp, cached_sharp)), other


def test_online_needs_no_distortions_h5_and_cached_says_so(toy_cache, tmp_path):
    work = tmp_path / "cache"
    shutil.copytree(toy_cache, work)
    (work / cache.DISTORTIONS_H5).unlink()
    with pytest.raises(CacheError, match="data.distortion: online"):
        CacheDataset(work, "train", load_size=None, crop_size=[48, 64], guidance=None)
    ds = online(work)  # without the file: DistortParams' defaults
    assert ds.fresh.params == DistortParams()
    ds = online(work, distort_params=PARAMS)  # given: exactly the cache's draws for the cache's generators
    row = ds.rows[1]
    out, _, _ = ds.fresh.distort(1, ds.adapter.load(ds.refs[1]), variant_rng(PARAMS.seed, "train", row["image_id"], 3))
    assert np.array_equal(out, read_distortions(toy_cache, "train", row["image_id"])[3])
    s = ds[(0, 1)]
    assert s["distorted"].shape == (3, 48, 64) and s["distorted_valid"].dtype == torch.bool
    with pytest.raises(ConfigError):
        CacheDataset(work, "train", load_size=None, crop_size=[48, 64], guidance=None, distortion="sometimes")


def test_config_key(tmp_path):
    assert load_config("demo").data.distortion == "cached"  # filled for configs written before the key
    assert load_config("demo", ["data.distortion=online"]).data.distortion == "online"
    with pytest.raises(ConfigError, match="data.distortion"):
        load_config("demo", ["data.distortion=fresh"])


def test_train_cli_runs_online_without_distortions_h5(toy_cache, tmp_path):
    from stages.cli import main
    from stages.train import command as train_command
    from tests.fixtures.training import TINY, write_untrained_segnet

    if train_command.name not in main.commands:
        main.add_command(train_command)
    work = tmp_path / "cache"
    shutil.copytree(toy_cache, work)
    (work / cache.DISTORTIONS_H5).unlink()
    write_untrained_segnet(tmp_path / "segnet.pt")
    cfg = {**TINY, "data": {**TINY["data"], "crop_size": [48, 64], "distortion": "online",
                            "guidance_mode": "distorted-gt"},  # the pass that reads it; no guidance.h5 here
           "segnet": {**TINY["segnet"], "path": str(tmp_path / "segnet.pt")}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"distort": {"seed": 7, "p_shape": 0.7}}))
    res = CliRunner().invoke(main, ["--params", str(tmp_path / "params.yaml"), "train", "--cache", str(work),
                                    "--out", str(tmp_path / "run"), "--config", str(tmp_path / "tiny.yaml"),
                                    "--device", "cpu", "--max-steps", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "drawn fresh per sample" in res.output and "params.yaml distort" in res.output
    assert "step 1/" in res.output
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["distortion"] == "online"
