"""`resail retrieve` over a segment database, and the on-line guidance API."""
from __future__ import annotations

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline import cache
from pipeline.cache import SegmentDB
from pipeline.datasets import open_dataset
from pipeline.decompose.build import DecomposeParams, build_segment_db
from pipeline.errors import DataError
from pipeline.compose.build import compose_dataset
from pipeline.online import OnlineGuidance, choose
from pipeline.retrieve.retrieval import RetrievalParams, TopK, brute_force_topk
from pipeline.retrieve.build import image_keys
from pipeline.decompose.segments import unpack_mask
from stages.cli import main
from tests.fixtures.toy_dataset import make_toy_dataset


@pytest.fixture(autouse=True)
def _outside_the_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def toy_cache(tmp_path):
    root = make_toy_dataset(tmp_path / "toy", n_train=8, n_val=3, seed=4)
    out = tmp_path / "cache"
    build_segment_db(open_dataset("folder", root), out, params=DecomposeParams(min_area=4, mask_size=32),
                     progress=False)
    return root, out


def retrieve(out, *args):
    return CliRunner().invoke(main, ["retrieve", "--cache", str(out), "--no-progress", "--device", "cpu", *args])


def test_retrieval_table_equals_brute_force_with_exclusions(toy_cache):
    _, out = toy_cache
    res = retrieve(out, "--k", "3", "--max-score", "0.9", "--exclude", "image")
    assert res.exit_code == 0, res.output
    table = pq.read_table(out / cache.RETRIEVAL_PARQUET)
    assert table.schema.equals(cache.RETRIEVAL_SCHEMA, check_metadata=False)
    with SegmentDB.open(out) as db:
        keys = image_keys(db)
        split = db.col("split")
        packed = db.norm_masks()
        excl = np.where(split == "train", keys, -1)
        ref = brute_force_topk(packed, db.col("class_id"), db.col("box_area"), excl, packed, db.col("class_id"),
                               db.col("box_area"), keys, np.arange(len(db)), db.col("candidate"),
                               RetrievalParams(k=3, max_score=0.9))
        got = {c: table.column(c).to_numpy() for c in table.column_names}
        assert np.array_equal(got["query_id"], ref.query_index) and np.array_equal(got["candidate_id"], ref.candidate_id)
        assert np.array_equal(got["rank"], ref.rank) and np.array_equal(got["score"], ref.score)
        # invariants, checked independently of any engine
        q, c = got["query_id"], got["candidate_id"]
        assert np.all(db.col("class_id")[q] == db.col("class_id")[c])
        assert np.all(db.col("candidate")[c]) and np.all(split[c] == "train")
        assert not np.any((split[q] == "train") & (keys[q] == keys[c]))  # own image excluded
        assert (split[q] == "val").any()  # val queries do retrieve (from train)
        # one pair re-scored by hand from the unpacked masks
        i = len(q) // 2
        mq, mc = unpack_mask(packed[q[i]], 32), unpack_mask(packed[c[i]], 32)
        shape = (mq ^ mc).sum() / max(mq.sum(), mc.sum())
        sq, sc = db.col("box_area")[q[i]], db.col("box_area")[c[i]]
        scale = 1.0 if max(sq, sc) >= 2 * min(sq, sc) else 0.0
        assert got["score"][i] == pytest.approx(shape + scale, abs=1e-6)


def test_training_queries_exclude_themselves_or_their_image(toy_cache):
    """``self`` (default, released code): a training query never retrieves its own segment, other
    segments of its image may; ``image``: none of its image's segments. Both equal the brute force."""
    _, out = toy_cache
    got = {}
    with SegmentDB.open(out) as db:
        keys, split, packed, cls = image_keys(db), db.col("split"), db.norm_masks(), db.col("class_id")
        for mode, cand_keys in (("self", np.arange(len(db))), ("image", keys)):
            res = retrieve(out, "--k", "6", *(("--exclude", mode) if mode != "self" else ()))
            assert res.exit_code == 0, res.output
            table = pq.read_table(out / cache.RETRIEVAL_PARQUET)
            assert cache.read_retrieval(out)[1]["exclude"] == mode
            q, c = table.column("query_id").to_numpy(), table.column("candidate_id").to_numpy()
            excl = np.where(split == "train", cand_keys, -1)
            ref = brute_force_topk(packed, cls, db.col("box_area"), excl, packed, cls, db.col("box_area"), cand_keys,
                                   np.arange(len(db)), db.col("candidate"), RetrievalParams(k=6))
            sel = db.query_flags()[ref.query_index]
            assert np.array_equal(q, ref.query_index[sel]) and np.array_equal(c, ref.candidate_id[sel])
            got[mode] = (q, c)
    train = split == "train"
    q, c = got["self"]
    assert not np.any(q == c)  # never itself
    assert np.any(train[q] & (keys[q] == keys[c]))  # but other segments of its image do come back
    q, c = got["image"]
    assert not np.any(train[q] & (keys[q] == keys[c]))  # nothing of its image
    assert np.any((split[q] == "val") & (c >= 0))  # val queries search the whole database either way


def test_retrieve_errors_are_one_line_and_leave_nothing(toy_cache, tmp_path):
    _, out = toy_cache
    res = retrieve(tmp_path / "missing")
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "segments.parquet" in res.output
    with h5py.File(out / cache.SEGMENTS_H5, "a") as f:
        f["norm_masks"].attrs["mask_size"] = 64  # parquet/h5 disagree now
    res = retrieve(out)
    assert res.exit_code == 1 and "norm_masks" in res.output and "Traceback" not in res.output
    assert not (out / cache.RETRIEVAL_PARQUET).exists() and not list(out.glob("*.tmp"))
    res = retrieve(out, "--k", "0")
    assert res.exit_code != 0


def test_online_guidance_equals_offline_compose(toy_cache):
    root, out = toy_cache
    assert retrieve(out, "--max-score", "0.8").exit_code == 0
    compose_dataset(out, progress=False)
    adapter = open_dataset("folder", root)
    with OnlineGuidance(out) as og, h5py.File(out / cache.GUIDANCE_H5, "r") as f:
        assert og.params == RetrievalParams(max_score=0.8)  # taken from retrieval.parquet
        for ref in adapter.refs("val"):
            s = adapter.load(ref)
            res = og.guidance(s.labels, s.instances)
            assert np.array_equal(res.guidance, f[cache.image_key("val", ref.image_id)][...])
            assert np.array_equal(res.valid, f[cache.valid_key("val", ref.image_id)][...])


def test_online_rejects_bad_label_maps(toy_cache):
    _, out = toy_cache
    with OnlineGuidance(out) as og:
        with pytest.raises(DataError, match="class id.*42") as e:
            og.guidance(np.full((8, 8), 42), source="my.png")
        assert "my.png" in str(e.value)
        with pytest.raises(DataError, match="instance map shape"):
            og.guidance(np.zeros((8, 8), int), np.zeros((4, 4), int))


def test_choose_ranks_and_overrides():
    top = TopK(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 0, 0, 1, 2], np.int32), np.array([5, 6, 7, 8, 9, 10]),
               *(np.zeros(6, np.float32),) * 3)
    assert choose(top, 4).tolist() == [5, 7, 8, -1]
    assert choose(top, 4, rank=1).tolist() == [6, -1, 9, -1]
    assert choose(top, 4, overrides={2: 2}).tolist() == [5, 7, 10, -1]


def test_engine_equals_brute_force_on_the_real_demo_masks(tmp_path):
    """Real CamVid segments (the committed demo data): many near-ties and skewed classes."""
    from tests.conftest import REPO

    adapter = open_dataset("folder", REPO / "data" / "camvid_demo")
    refs = [r for s in ("train", "val") for r in adapter.refs(s)[::3]]
    out = tmp_path / "demo"
    build_segment_db(adapter, out, progress=False, refs=refs)
    from pipeline.retrieve.build import run_retrieval

    params = RetrievalParams(k=10, max_score=0.58)
    run_retrieval(out, params, device="cpu", batch=257, progress=False, exclude="image")
    table = pq.read_table(out / cache.RETRIEVAL_PARQUET)
    with SegmentDB.open(out) as db:
        keys = image_keys(db)
        packed = db.norm_masks()
        excl = np.where(db.col("split") == "train", keys, -1)
        q = np.flatnonzero(db.col("query"))  # per-image pruning (default): pruned segments are no queries
        assert 0 < len(q) < len(db)
        ref = brute_force_topk(packed[q], db.col("class_id")[q], db.col("box_area")[q], excl[q], packed,
                               db.col("class_id"), db.col("box_area"), keys, np.arange(len(db)), db.col("candidate"),
                               params)
        ref.query_index = q[ref.query_index]
    assert len(ref) > 1000
    for col, ref_col in (("query_id", "query_index"), ("rank", "rank"), ("candidate_id", "candidate_id"),
                         ("score", "score"), ("shape_term", "shape_term"), ("scale_term", "scale_term")):
        assert np.array_equal(table.column(col).to_numpy(), getattr(ref, ref_col)), col


def test_mean_score_per_rank_of_a_cache(toy_cache):
    """Table B's number for each pasted rank, from retrieval.parquet; ranks beyond k are refused."""
    from pipeline.errors import ConfigError
    from pipeline.retrieve.rank_scores import cache_rank_mean_scores

    _, out = toy_cache
    assert retrieve(out, "--k", "4").exit_code == 0
    rows, params = cache_rank_mean_scores(out, (0, 2, 3), split="val")
    table = pq.read_table(out / cache.RETRIEVAL_PARQUET).to_pydict()
    with SegmentDB.open(out) as db:
        val = db.col("split") == "val"
    for row in rows:
        want = [s for q, r, s in zip(table["query_id"], table["rank"], table["score"]) if r == row.rank and val[q]]
        assert row.n == len(want) > 0 and row.mean == pytest.approx(np.mean(want))
    assert params["k"] == 4 and rows[0].mean <= rows[1].mean <= rows[2].mean
    with pytest.raises(ConfigError, match="k >= 5"):
        cache_rank_mean_scores(out, (0, 4))
