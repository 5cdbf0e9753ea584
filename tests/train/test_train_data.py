"""Training data from a cache: shapes, dtypes, identical geometry across inputs, sampler, errors."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from pipeline import cache
from pipeline.datasets import open_dataset
from pipeline.decompose.build import build_segment_db
from pipeline.errors import CacheError, ConfigError
from resail_train.config import load_config
from resail_train.training.data import CacheDataset, EpochBatchSampler, collate, instance_edges, tensor_to_rgb
from tests.fixtures.toy_dataset import TOY_CLASSES
from tests.fixtures.train_cache import make_train_cache, mask_guidance, palette_image, write_toy_retrieval


@pytest.fixture(scope="module")
def geo_cache(tmp_path_factory) -> Path:
    return make_train_cache(tmp_path_factory.mktemp("geo"), n_train=6, n_val=2, size=(48, 64))


# --------------------------------------------------------------------------- shapes and geometry
def test_sample_shapes_and_dtypes(geo_cache):
    ds = CacheDataset(geo_cache, "train", load_size=[40, 56], crop_size=[32, 48], train=True, flip=True,
                      guidance="rank0", distortions=True, instance_edges=True, seed=3)
    assert len(ds) == 6 and ds.num_classes == 5 and ds.label_nc == 6
    s = ds[(0, 1)]
    assert s["image"].shape == (3, 32, 48) and s["image"].dtype == torch.float32
    assert s["guidance"].shape == s["distorted"].shape == (3, 32, 48)
    assert s["labels"].shape == (32, 48) and s["labels"].dtype == torch.int64
    assert s["edges"].shape == (1, 32, 48) and s["edges"].dtype == torch.float32
    assert float(s["image"].min()) >= -1 and float(s["image"].max()) <= 1
    assert int(s["labels"].max()) <= 5 and int(s["labels"].min()) >= 0
    assert s["index"] == 1 and s["image_id"] == "train_001"
    b = collate([ds[(0, i)] for i in range(3)])
    assert b["image"].shape == (3, 3, 32, 48) and b["image_id"] == ["train_000", "train_001", "train_002"]
    ds.close()


@pytest.mark.parametrize("load_size", [None, [56, 72]])
def test_identical_crop_and_flip_across_inputs(geo_cache, load_size):
    """guidance == distortion == image in the cache ⇒ identical tensors after resize/crop/flip;
    labels follow the same geometry (checked exactly without resize via the palette)."""
    ds = CacheDataset(geo_cache, "train", load_size=load_size, crop_size=[32, 40], train=True, flip=True,
                      guidance="rank0", distortions=True, seed=11)
    for epoch in range(4):
        for i in range(len(ds)):
            s = ds[(epoch, i)]
            assert torch.equal(s["image"], s["guidance"])
            assert torch.equal(s["image"], s["distorted"])
            if load_size is None:
                lab = s["labels"].numpy()
                expect = palette_image(np.where(lab == 5, 255, lab))
                np.testing.assert_array_equal(tensor_to_rgb(s["image"]), expect)
    # Different epochs draw different crops for the same image, and the same key is reproducible.
    a, c = ds[(0, 2)], ds[(0, 2)]
    assert torch.equal(a["image"], c["image"]) and torch.equal(a["labels"], c["labels"])
    assert not all(torch.equal(ds[(0, i)]["image"], ds[(1, i)]["image"]) for i in range(len(ds)))
    ds.close()


def test_flip_and_crop_match_numpy_reference(geo_cache):
    """A training sample equals the reference crop (+ flip) of the full-size eval view."""
    train = CacheDataset(geo_cache, "train", load_size=None, crop_size=[32, 40], train=True, flip=True, guidance=None,
                         distortions=False, seed=5)
    full = CacheDataset(geo_cache, "train", load_size=None, crop_size=[48, 64], train=False, flip=False, guidance=None,
                        distortions=False, seed=5)
    seen_flip = {False: 0, True: 0}
    for epoch in range(3):
        for i in range(len(train)):
            s, f = train[(epoch, i)], full[(epoch, i)]["labels"].numpy()
            lab = s["labels"].numpy()
            hits = []
            for flip in (False, True):
                for y in range(0, 48 - 32 + 1):
                    for x in range(0, 64 - 40 + 1):
                        crop = f[y:y + 32, x:x + 40]
                        if np.array_equal(crop[:, ::-1] if flip else crop, lab):
                            hits.append(flip)
            assert hits, "the labels are not a crop of the full label map"
            seen_flip[hits[0]] += 1
    assert seen_flip[True] and seen_flip[False]


def test_distortion_variant_and_guidance_values(tmp_path):
    cache_dir = make_train_cache(tmp_path, n_train=4, n_val=1, size=(48, 64), variants=3, guidance="shifted")
    ds = CacheDataset(cache_dir, "train", load_size=None, crop_size=[48, 64], train=False, flip=False,
                      guidance="rank0", distortions=True, seed=0)
    img = tensor_to_rgb(ds[(0, 0)]["image"]).astype(int)
    np.testing.assert_array_equal(tensor_to_rgb(ds[(0, 0)]["guidance"]), img // 2)
    seen = set()
    for epoch in range(12):
        d = tensor_to_rgb(ds[(epoch, 0)]["distorted"]).astype(int)
        k = [j for j in range(3) if np.array_equal(d, img // (j + 2))]
        assert len(k) == 1
        seen.add(k[0])
    assert seen == {0, 1, 2}  # every variant is drawn, a seeded choice per (epoch, index)
    ds.close()


def test_instance_edges():
    inst = np.zeros((5, 6), np.int64)
    inst[1:3, 2:4] = 7
    e = instance_edges(inst)
    assert e[1, 2] and e[0, 2] and e[1, 1] and not e[4, 0] and not e[0, 0]


def test_pickled_dataset_has_no_open_handles(geo_cache):
    import pickle

    ds = CacheDataset(geo_cache, "train", load_size=None, crop_size=[32, 32], guidance="rank0", distortions=True)
    ds[(0, 0)]
    assert ds._handles
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._handles == {} and clone._pid is None
    assert torch.equal(clone[(0, 0)]["image"], ds[(0, 0)]["image"])
    ds.close()
    clone.close()


def test_dataloader_workers_give_the_same_batches(geo_cache):
    ds = CacheDataset(geo_cache, "train", load_size=None, crop_size=[32, 32], guidance="rank0", distortions=True, seed=2)
    out = []
    for workers in (0, 2):
        sampler = EpochBatchSampler(len(ds), 2, seed=4)
        sampler.set_position(1, 0)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate)
        out.append([b["distorted"] for b in loader])
    assert len(out[0]) == 3 and all(torch.equal(a, b) for a, b in zip(*out))
    ds.close()


# --------------------------------------------------------------------------- sampler
def test_epoch_sampler_resume_and_sharding():
    s = EpochBatchSampler(10, 3, seed=1)
    assert s.batches_per_epoch == 3
    s.set_position(2, 0)
    full = list(s)
    s.set_position(2, 1)
    assert list(s) == full[1:] and len(s) == 2
    assert all(e == 2 for b in full for e, _ in b)
    s.set_position(3, 0)
    assert [i for b in s for _, i in b] != [i for b in full for _, i in b]
    r0, r1 = EpochBatchSampler(7, 2, seed=0, rank=0, world_size=2), EpochBatchSampler(7, 2, seed=0, rank=1, world_size=2)
    i0 = [i for b in r0 for _, i in b]
    i1 = [i for b in r1 for _, i in b]
    assert len(i0) == len(i1) == 4 and set(i0) | set(i1) <= set(range(7)) and len(set(i0) | set(i1)) >= 7 - 1


# --------------------------------------------------------------------------- errors
def test_missing_cache_files_raise_cache_error(tmp_path):
    cache_dir = make_train_cache(tmp_path, n_train=3, n_val=0, size=(32, 32))
    (cache_dir / cache.DISTORTIONS_H5).unlink()
    with pytest.raises(CacheError, match="distortions.h5"):
        CacheDataset(cache_dir, "train", load_size=None, crop_size=[32, 32])
    (cache_dir / cache.GUIDANCE_H5).unlink()
    with pytest.raises(CacheError, match="guidance.h5"):
        CacheDataset(cache_dir, "train", load_size=None, crop_size=[32, 32], distortions=False)
    with pytest.raises(CacheError, match="segments"):
        CacheDataset(tmp_path / "nowhere", "train", load_size=None, crop_size=[32, 32])


def test_stale_cache_entry_names_the_image(tmp_path):
    cache_dir = make_train_cache(tmp_path, n_train=3, n_val=0, size=(32, 32))
    with h5py.File(cache_dir / cache.GUIDANCE_H5, "a") as f:
        del f[cache.image_key("train", "train_001")]
    ds = CacheDataset(cache_dir, "train", load_size=None, crop_size=[32, 32])
    with pytest.raises(CacheError, match="train/train_001"):
        ds[(0, 1)]
    ds.close()


def test_crop_larger_than_image_is_a_config_error(geo_cache):
    ds = CacheDataset(geo_cache, "train", load_size=None, crop_size=[64, 64], guidance=None, distortions=False)
    with pytest.raises(ConfigError, match="crop_size"):
        ds[(0, 0)]


def test_topk_guidance_composes_from_retrieval(tmp_path):
    """topk: a fresh admissible rank per segment; with one candidate per query it is rank 0."""
    pytest.importorskip("pipeline.compose.composition")
    cache_dir = make_train_cache(tmp_path, n_train=4, n_val=0, size=(48, 64))
    write_toy_retrieval(cache_dir)
    ds = CacheDataset(cache_dir, "train", load_size=None, crop_size=[48, 64], train=False, flip=False,
                      guidance="topk", distortions=False, topk=3, seed=0)
    outs = [tensor_to_rgb(ds[(e, 0)]["guidance"]) for e in range(4)]
    assert all(o.shape == (48, 64, 3) for o in outs)
    assert any(o.any() for o in outs)
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])  # ranks are redrawn per epoch
    assert np.array_equal(tensor_to_rgb(ds[(2, 0)]["guidance"]), outs[2])
    one = CacheDataset(cache_dir, "train", load_size=None, crop_size=[48, 64], train=False, flip=False,
                       guidance="topk", distortions=False, topk=1, seed=0)
    assert np.array_equal(tensor_to_rgb(one[(0, 0)]["guidance"]), tensor_to_rgb(one[(5, 0)]["guidance"]))
    ds.close()
    one.close()


def test_demo_config_geometry_on_demo_images():
    cfg = load_config("demo")
    assert cfg.data.crop_size == [96, 128] and cfg.data.load_size == [120, 160]


# --------------------------------------------------------------------------- antialiased resize
def test_loader_downscale_is_antialiased_and_labels_keep_their_ids(tmp_path):
    """A 4× reduction in the loader: a 3-px checkerboard becomes flat grey (cv2.INTER_CUBIC, the old
    resizer, leaves a strong moiré); a map of 4×4 label blocks becomes exactly its block grid."""
    rng = np.random.default_rng(5)
    root = tmp_path / "data"
    for sub in ("images", "labels"):
        (root / "train" / sub).mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps(TOY_CLASSES))
    yy, xx = np.mgrid[:96, :96]
    board = np.repeat((((yy // 3) + (xx // 3)) % 2 * 255).astype(np.uint8)[..., None], 3, axis=2)
    blocks = rng.choice(np.array([0, 1, 2, 3, 4, 255], np.uint8), size=(24, 24))
    labels = np.kron(blocks, np.ones((4, 4), np.uint8))
    cv2.imwrite(str(root / "train" / "images" / "a.png"), board)
    cv2.imwrite(str(root / "train" / "labels" / "a.png"), labels)
    build_segment_db(open_dataset("folder", root), tmp_path / "cache", progress=False)
    ds = CacheDataset(tmp_path / "cache", "train", load_size=[24, 24], crop_size=[24, 24], train=False, flip=False,
                      guidance=None, distortions=False, allow_resize=True)
    out = ds[(0, 0)]
    ds.close()
    img = tensor_to_rgb(out["image"]).astype(float)[2:-2, 2:-2]  # borders see the replicated edge
    assert abs(img.mean() - 127.5) < 3 and img.std() < 8, (img.mean(), img.std())
    aliased = cv2.resize(board, (24, 24), interpolation=cv2.INTER_CUBIC).astype(float)[2:-2, 2:-2]
    assert aliased.std() > 50  # the test tells the two resizers apart
    dense = np.where(blocks == 255, 5, blocks)  # ignore → C (5 classes)
    np.testing.assert_array_equal(out["labels"].numpy(), dense)


# --------------------------------------------------------------------------- Table-4 loader outputs
def test_original_gt_is_the_real_image_masked_like_the_guidance(tmp_path):
    cache_dir = make_train_cache(tmp_path, n_train=3, n_val=0, size=(48, 64), guidance="shifted")
    mask_guidance(cache_dir, keep_rows=20)
    ds = CacheDataset(cache_dir, "train", load_size=None, crop_size=[48, 64], train=False, flip=False,
                      guidance="rank0", distortions=False, original_gt=True)
    s = ds[(0, 1)]
    ds.close()
    real, og = tensor_to_rgb(s["image"]), tensor_to_rgb(s["original_gt"])
    np.testing.assert_array_equal(og[:20], real[:20])
    assert not og[20:].any()
    assert "distorted" not in s and "guidance_distorted" not in s
    with pytest.raises(ConfigError, match="derived from the retrieval guidance"):
        CacheDataset(cache_dir, "train", load_size=None, crop_size=[48, 64], guidance=None, original_gt=True)


def test_distorted_retrieval_guidance_is_seeded_per_image_and_epoch(tmp_path):
    cache_dir = make_train_cache(tmp_path, n_train=4, n_val=0, size=(48, 64), guidance="image", noise=30)
    write_toy_retrieval(cache_dir)
    mask_guidance(cache_dir, keep_rows=30)
    kw = dict(load_size=None, crop_size=[48, 64], train=False, flip=False, guidance="rank0", distortions=False,
              distorted_retrieval=True, seed=3)
    ds = CacheDataset(cache_dir, "train", **kw)
    a0, a0_again, a1 = ds[(0, 0)], ds[(0, 0)], ds[(1, 0)]
    ds.close()
    g, d0 = tensor_to_rgb(a0["guidance"]), tensor_to_rgb(a0["guidance_distorted"])
    assert d0.shape == g.shape and not np.array_equal(d0, g)  # distorted (colour/shape/resolution)
    assert not d0[30:].any()  # black where the retrieval guidance is black
    np.testing.assert_array_equal(d0, tensor_to_rgb(a0_again["guidance_distorted"]))  # (image, epoch) → same
    assert not np.array_equal(d0, tensor_to_rgb(a1["guidance_distorted"]))  # a fresh draw next epoch
    np.testing.assert_array_equal(tensor_to_rgb(a1["guidance"]), g)  # the guidance itself is untouched
    # The distortion has its own random stream: the geometry/variant draws of the sample do not move.
    plain = CacheDataset(cache_dir, "train", **{**kw, "distorted_retrieval": False, "train": True, "flip": True,
                                                "crop_size": [32, 32]})
    both = CacheDataset(cache_dir, "train", **{**kw, "train": True, "flip": True, "crop_size": [32, 32]})
    np.testing.assert_array_equal(plain[(2, 1)]["guidance"].numpy(), both[(2, 1)]["guidance"].numpy())
    plain.close()
    both.close()


def test_distorted_valid_follows_the_drawn_variant(tmp_path):
    cache_dir = make_train_cache(tmp_path, n_train=3, n_val=0, size=(48, 64), variants=3, guidance="shifted")
    ds = CacheDataset(cache_dir, "train", load_size=None, crop_size=[48, 64], train=False, flip=False,
                      guidance="rank0", distortions=True)
    assert "distorted_valid" not in ds[(0, 0)]  # older distortions.h5 without masks: tolerated
    ds.close()
    with h5py.File(cache_dir / cache.DISTORTIONS_H5, "r+") as f:
        for split in list(f):
            for name in list(f[split]):
                key = f"/{split}/{name}"
                k, h, w = f[key].shape[:3]
                valid = np.zeros((k, h, w), bool)
                for v in range(k):
                    valid[v, : 10 * (v + 1)] = True  # variant v: the top 10·(v+1) rows
                f.create_dataset(key + "@valid", data=valid)
    ds = CacheDataset(cache_dir, "train", load_size=None, crop_size=[48, 64], train=False, flip=False,
                      guidance="rank0", distortions=True)
    img = tensor_to_rgb(ds[(0, 0)]["image"]).astype(int)
    seen = set()
    for epoch in range(8):
        s = ds[(epoch, 0)]
        d = tensor_to_rgb(s["distorted"]).astype(int)
        v = [j for j in range(3) if np.array_equal(d, img // (j + 2))][0]
        seen.add(v)
        assert s["distorted_valid"].dtype == torch.bool
        assert int(s["distorted_valid"].sum()) == 10 * (v + 1) * 64
    ds.close()
    assert len(seen) > 1
