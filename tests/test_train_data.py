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
from pipeline.decomposition import build_segment_db
from pipeline.errors import CacheError, ConfigError
from resail_train.config import load_config
from resail_train.data import CacheDataset, EpochBatchSampler, collate, instance_edges, tensor_to_rgb
from tests.conftest import TOY_CLASSES, toy_label_map

# Class colours of the toy images (ids 0..4; ignore 255 → black): the image shows its labels.
PALETTE = np.array([[70, 130, 180], [128, 64, 128], [107, 142, 35], [0, 0, 142], [220, 20, 60]], np.uint8)


def palette_image(lab: np.ndarray) -> np.ndarray:
    img = np.zeros((*lab.shape, 3), np.uint8)
    for cid in range(len(PALETTE)):
        img[lab == cid] = PALETTE[cid]
    return img


def make_train_cache(tmp: Path, n_train: int = 8, n_val: int = 2, size: tuple[int, int] = (64, 64), seed: int = 0,
                     variants: int = 2, guidance: str = "image", noise: int = 0, instances: bool = True) -> Path:
    """A folder dataset of palette images + its segment DB + guidance.h5 + distortions.h5.

    ``guidance="image"``: guidance = the real image and every distortion variant = the real image
    (for geometry checks); ``"shifted"``: guidance = image // 2 and variant k = image // (k + 2).
    Returns the cache folder (the dataset lies in ``tmp / "data"``).
    """
    rng = np.random.default_rng(seed)
    root = tmp / "data"
    (root).mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps(TOY_CLASSES))
    h, w = size
    for split, n in (("train", n_train), ("val", n_val)):
        for sub in ("images", "labels") + (("instances",) if instances else ()):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            lab, inst = toy_label_map(rng, h, w)
            img = palette_image(lab).astype(np.int16)
            if noise:
                img = img + rng.integers(-noise, noise + 1, img.shape)
            img = np.clip(img, 0, 255).astype(np.uint8)
            stem = f"{split}_{i:03d}"
            cv2.imwrite(str(root / split / "images" / f"{stem}.png"), img[:, :, ::-1])
            cv2.imwrite(str(root / split / "labels" / f"{stem}.png"), lab)
            if instances:
                cv2.imwrite(str(root / split / "instances" / f"{stem}.png"), inst)
    cache_dir = tmp / "cache"
    build_segment_db(open_dataset("folder", root), cache_dir, progress=False)
    write_fake_stage_outputs(cache_dir, root, variants=variants, guidance=guidance)
    return cache_dir


def write_fake_stage_outputs(cache_dir: Path, root: Path, variants: int = 2, guidance: str = "image") -> None:
    """guidance.h5 (all images) and distortions.h5 (train images) following pipeline.cache's schema."""
    adapter = open_dataset("folder", root)
    with cache.SegmentDB.open(cache_dir) as db:
        rows = db.image_rows()
    refs = {(r.split, r.image_id): r for s in adapter.splits() for r in adapter.refs(s)}
    with h5py.File(cache_dir / cache.GUIDANCE_H5, "w") as g, h5py.File(cache_dir / cache.DISTORTIONS_H5, "w") as d:
        g.attrs["rank"] = 0
        g.attrs["n_images"] = len(rows)
        for r in rows:
            img = adapter.load(refs[(r["split"], r["image_id"])]).image
            gi = img if guidance == "image" else img // 2
            g.create_dataset(cache.image_key(r["split"], r["image_id"]), data=gi)
            g.create_dataset(cache.valid_key(r["split"], r["image_id"]), data=np.ones(img.shape[:2], bool))
            if r["split"] == "train":
                var = [img if guidance == "image" else img // (k + 2) for k in range(variants)]
                d.create_dataset(cache.image_key(r["split"], r["image_id"]), data=np.stack(var))
        # Declare them built from this segment DB (readers check lineage and schema, see pipeline.cache).
        up = cache.upstream_ids(cache_dir, retrieval=False)
        cache.stamp_h5(g, cache.make_lineage("compose", up, {"fake": guidance}), cache.GUIDANCE_SCHEMA_VERSION)
        cache.stamp_h5(d, cache.make_lineage("distort", up, {"fake": guidance}), cache.DISTORTIONS_SCHEMA_VERSION)


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
    pytest.importorskip("pipeline.composition")
    cache_dir = make_train_cache(tmp_path, n_train=4, n_val=0, size=(48, 64))
    with cache.SegmentDB.open(cache_dir) as db:
        cls, img = db.col("class_id"), db.col("image_id")
        n = len(db)
    # Each query: candidates = same-class segments of other images (at most 3), ranked by id.
    q, r, c = [], [], []
    for s in range(n):
        cands = [t for t in range(n) if cls[t] == cls[s] and img[t] != img[s]][:3]
        for k, t in enumerate(cands):
            q.append(s), r.append(k), c.append(t)
    z = np.zeros(len(q), np.float32)
    cache.write_retrieval({"query_id": np.array(q), "rank": np.array(r), "candidate_id": np.array(c), "score": z,
                           "shape_term": z, "scale_term": z}, cache_dir / cache.RETRIEVAL_PARQUET, {"k": 3})
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
