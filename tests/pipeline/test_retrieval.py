"""Geometric-consistency score and the exact top-k engine (pipeline/retrieve/retrieval.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.retrieve.retrieval import (
    NO_EXCLUDE,
    RetrievalParams,
    SegmentIndex,
    TopK,
    _torch_popcount64,
    brute_force_topk,
    geometric_score,
    log_areas,
    mask_size_from_packed,
    pack_masks,
    pair_scores,
    tile_counts,
    unpack_masks,
)

STEP = RetrievalParams()
LOG = RetrievalParams(scale_term="log")


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in r] for r in rows], dtype=bool)


# ------------------------------------------------------------------------------------------------
# Score, by hand
# ------------------------------------------------------------------------------------------------
A = _mask(["##..",
           "##..",
           "....",
           "...."])  # 4 px
B = _mask(["###.",
           "###.",
           "....",
           "...."])  # 6 px; A xor B = 2 px
C = _mask(["....",
           "....",
           "..##",
           "..##"])  # 4 px, disjoint from A


def test_shape_term_by_hand():
    score, shape, scale = geometric_score(A, B, 100, 150, STEP)
    assert shape == 2 / 6
    assert scale == 0.0  # ratio 1.5 < 2
    assert score == 2 / 6
    # symmetric
    assert geometric_score(B, A, 150, 100, STEP) == (score, shape, scale)
    # disjoint: xor = 8, max = 4
    assert geometric_score(A, C, 10, 10, STEP)[1] == 2.0
    # identical
    assert geometric_score(A, A, 10, 10, STEP) == (0.0, 0.0, 0.0)


def test_empty_masks_score_zero_shape():
    e = np.zeros((4, 4), bool)
    assert geometric_score(e, e, 10, 10, STEP) == (0.0, 0.0, 0.0)
    # one empty: xor = |A| = max -> 1
    assert geometric_score(A, e, 10, 10, STEP)[1] == 1.0


def test_step_scale_term_ratio_two_counts():
    assert geometric_score(A, A, 50, 100, STEP)[2] == 1.0  # ratio exactly 2
    assert geometric_score(A, A, 100, 50, STEP)[2] == 1.0
    assert geometric_score(A, A, 100, 199, STEP)[2] == 0.0  # 1.99
    assert geometric_score(A, A, 100, 201, STEP)[2] == 1.0
    assert geometric_score(A, B, 100, 200, STEP)[0] == 2 / 6 + 1.0


def test_log_scale_term_and_alpha():
    score, shape, scale = geometric_score(A, B, 100, 150, LOG)
    assert scale == pytest.approx(math.log(1.5), abs=1e-15)
    assert score == shape + scale
    p = RetrievalParams(scale_term="log", alpha=0.25)
    s2 = geometric_score(A, B, 100, 150, p)
    assert s2[0] == 2 / 6 + 0.25 * s2[2]
    assert geometric_score(A, B, 150, 100, LOG)[2] == scale  # |ln| symmetric
    s0 = geometric_score(A, B, 100, 200, RetrievalParams(alpha=0.0))
    assert s0[0] == 2 / 6 and s0[2] == 1.0


def test_pair_scores_is_exact_float64_expression():
    xor = np.array([3, 0, 7])
    pq = np.array([10, 0, 9])
    pc = np.array([12, 0, 5])
    aq = np.array([10.0, 5.0, 8.0])
    ac = np.array([20.0, 5.0, 9.0])
    s, sh, sc = pair_scores(xor, pq, pc, aq, ac, log_areas(aq), log_areas(ac), STEP)
    assert sh.tolist() == [3 / 12, 0.0, 7 / 9]
    assert sc.tolist() == [1.0, 0.0, 0.0]
    assert s.dtype == np.float64


def test_params_validation():
    with pytest.raises(ValueError):
        RetrievalParams(k=0)
    with pytest.raises(ValueError):
        RetrievalParams(alpha=-1)
    with pytest.raises(ValueError):
        RetrievalParams(scale_term="linear")
    with pytest.raises(ValueError):
        RetrievalParams(max_score=float("nan"))


# ------------------------------------------------------------------------------------------------
# Packed masks
# ------------------------------------------------------------------------------------------------
def test_pack_roundtrip_and_size():
    rng = np.random.default_rng(0)
    for s in (4, 5, 16, 24, 128):
        m = rng.random((3, s, s)) < 0.5
        p = pack_masks(m)
        assert p.shape == (3, (s * s + 7) // 8)
        assert np.array_equal(p[1], np.packbits(m[1].reshape(-1)))
        assert np.array_equal(unpack_masks(p, s), m)
        assert mask_size_from_packed(p.shape[1]) == s
    with pytest.raises(ValueError):
        mask_size_from_packed(3)


@pytest.mark.parametrize("s", [8, 12, 24, 64, 128])
def test_tile_counts_match_naive(s):
    rng = np.random.default_rng(s)
    m = rng.random((5, s, s)) < 0.4
    t = tile_counts(pack_masks(m), s)
    g = min(8, s)
    edges = list((np.arange(g) * s) // g) + [s]
    naive = np.array([[mm[edges[i]:edges[i + 1], edges[j]:edges[j + 1]].sum()
                       for i in range(g) for j in range(g)] for mm in m])
    assert np.array_equal(t, naive)
    assert np.array_equal(t.sum(1), m.reshape(5, -1).sum(1))


def test_torch_popcount_matches_numpy():
    rng = np.random.default_rng(1)
    w = rng.integers(0, 2**63, (50, 7), dtype=np.uint64)
    w[0, 0] = np.uint64(2**64 - 1)  # all bits, negative as int64
    w[0, 1] = np.uint64(2**63)
    got = _torch_popcount64(torch.from_numpy(w.view(np.int64))).numpy()
    assert np.array_equal(got, np.bitwise_count(w).astype(np.int64))


# ------------------------------------------------------------------------------------------------
# Engine == brute force
# ------------------------------------------------------------------------------------------------
def _random_db(seed: int, n: int = 500, s: int = 16, n_classes: int = 4, dup: int = 30):
    """Random masks of varied density, a group of exact duplicates with equal areas (ties), a
    class with fewer than k candidates, permuted segment ids, some non-candidates."""
    rng = np.random.default_rng(seed)
    m = rng.random((n, s, s)) < rng.random((n, 1, 1))
    cls = rng.integers(0, n_classes, n)
    area = rng.integers(1, 3000, n).astype(np.int64)
    m[:dup] = m[0]
    area[:dup] = area[0]
    cls[:dup] = cls[0]
    cls[dup:dup + 4] = n_classes  # a tiny class (< k candidates)
    img = rng.integers(0, n // 5, n)
    ids = rng.permutation(n) + 1000
    cand = rng.random(n) < 0.85
    cand[:dup] = True
    return pack_masks(m), cls, area, img, ids, cand


def _queries(rng, n, nq, img, own=0.5):
    qsel = rng.integers(0, n, nq)
    excl = np.where(rng.random(nq) < own, img[qsel], NO_EXCLUDE)
    return qsel, excl


PARAMS = [
    RetrievalParams(),
    RetrievalParams(scale_term="log", alpha=0.3),
    RetrievalParams(k=3, max_score=0.9),
    RetrievalParams(k=25, scale_term="log", alpha=0.05),
    RetrievalParams(k=1, alpha=0.0),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"k{p.k}-{p.scale_term}-a{p.alpha}")
def test_engine_equals_brute_force(seed, params):
    packed, cls, area, img, ids, cand = _random_db(seed)
    rng = np.random.default_rng(100 + seed)
    qsel, excl = _queries(rng, len(cls), 120, img)
    qsel[:5] = np.arange(5)  # duplicates: many exact ties
    ref = brute_force_topk(packed[qsel], cls[qsel], area[qsel], excl, packed, cls, area, img, ids,
                           cand, params)
    for chunk, tex in ((16, False), (8192, False), (40, True)):
        index = SegmentIndex.build(packed, cls, area, img, ids, cand, chunk_size=chunk,
                                   _torch_exact=tex)
        for qb in (1, 13, 500):
            got = index.search(packed[qsel], cls[qsel], area[qsel], excl, params, query_batch=qb)
            assert got.first_difference(ref) is None, (chunk, tex, qb)


def test_engine_on_blob_masks_128():
    """Realistic masks at the default size (tight bounds, popcount/octave windows, sweeps)."""
    from benchmarks.retrieval import synthetic_database

    db = synthetic_database(1500, 128, n_classes=3, seed=3)
    rng = np.random.default_rng(4)
    qsel = rng.choice(len(db), 60, replace=False)
    excl = db.image_keys[qsel]
    for params in (STEP, RetrievalParams(scale_term="log", alpha=0.5, max_score=0.6)):
        ref = brute_force_topk(db.packed[qsel], db.class_ids[qsel], db.box_areas[qsel], excl,
                               db.packed, db.class_ids, db.box_areas, db.image_keys,
                               db.segment_ids, None, params)
        for chunk in (64, 8192):
            index = SegmentIndex.build(db.packed, db.class_ids, db.box_areas, db.image_keys,
                                       db.segment_ids, chunk_size=chunk)
            stats: dict = {}
            got = index.search(db.packed[qsel], db.class_ids[qsel], db.box_areas[qsel], excl,
                               params, query_batch=16, stats=stats)
            assert got.first_difference(ref) is None
            # pruning works: far fewer exact scores than pairs
            assert stats["scored_pairs"] < 0.5 * stats["bounded_pairs"]


def test_ties_broken_by_lower_id():
    s = 8
    m = np.zeros((15, s, s), bool)
    m[:, 2:6, 1:7] = True
    ids = np.array([50, 3, 77, 12, 9, 41, 8, 99, 1, 60, 23, 5, 31, 70, 2])
    packed = pack_masks(m)
    cls = np.zeros(15, int)
    area = np.full(15, 100)
    img = np.arange(15)
    index = SegmentIndex.build(packed, cls, area, img, ids)
    got = index.search(packed[:1], [0], [100], [NO_EXCLUDE], STEP)
    assert got.candidate_id.tolist() == sorted(ids)[:10]
    assert got.rank.tolist() == list(range(10))
    assert np.all(got.score == 0)
    # own image excluded: id 50 (row 0) is the query's image
    got = index.search(packed[:1], [0], [100], [0], STEP)
    assert 50 not in got.candidate_id.tolist()
    assert got.candidate_id.tolist() == sorted(i for i in ids if i != 50)[:10]


def test_exclusion_candidates_max_score_and_empty_results():
    packed, cls, area, img, ids, cand = _random_db(7)
    index = SegmentIndex.build(packed, cls, area, img, ids, cand, chunk_size=32)
    qsel = np.arange(0, 400, 3)
    res = index.search(packed[qsel], cls[qsel], area[qsel], img[qsel], RetrievalParams(k=10))
    by_id = dict(zip(ids, range(len(ids))))
    rows = np.array([by_id[i] for i in res.candidate_id])
    assert np.all(cand[rows])  # non-candidates never returned
    assert np.all(img[rows] != img[qsel[res.query_index]])  # own image excluded
    assert np.all(cls[rows] == cls[qsel[res.query_index]])  # same class only
    # ranks dense, scores ascending per query
    for q in np.unique(res.query_index):
        r = res.for_query(int(q))
        assert r.rank.tolist() == list(range(len(r)))
        assert np.all(np.diff(r.score) >= 0)
    # max_score filter
    ms = RetrievalParams(max_score=0.5)
    res2 = index.search(packed[qsel], cls[qsel], area[qsel], img[qsel], ms)
    assert np.all(res2.score <= np.float32(0.5))
    # no admissible candidate -> no rows: unknown class, negative threshold, all excluded
    assert len(index.search(packed[:3], [99, 99, 99], area[:3], None, STEP)) == 0
    assert len(index.search(packed[:3], cls[:3], area[:3], None,
                            RetrievalParams(max_score=-1.0))) == 0
    one = SegmentIndex.build(packed[:2], [0, 0], [5, 5], [7, 7])
    assert len(one.search(packed[:1], [0], [5], [7], STEP)) == 0
    assert len(one.search(packed[:1], [0], [5], [NO_EXCLUDE], STEP)) == 2
    # class with fewer than k candidates returns what it has
    tiny = int(cls.max())
    q = np.flatnonzero(cls == tiny)[:1]
    r = index.search(packed[q], cls[q], area[q], None, STEP)
    assert len(r) == int(np.sum((cls == tiny) & cand))


def test_results_independent_of_batching():
    packed, cls, area, img, ids, cand = _random_db(11, n=700)
    rng = np.random.default_rng(12)
    qsel, excl = _queries(rng, 700, 200, img)
    params = RetrievalParams(k=7, scale_term="log")
    base = None
    for chunk in (8, 33, 128, 100000):
        index = SegmentIndex.build(packed, cls, area, img, ids, cand, chunk_size=chunk)
        for qb in (1, 5, 64, 1000):
            got = index.search(packed[qsel], cls[qsel], area[qsel], excl, params, query_batch=qb)
            if base is None:
                base = got
            assert got.same_as(base)
    # a query's results do not depend on the other queries of the call
    index = SegmentIndex.build(packed, cls, area, img, ids, cand)
    for i in (0, 17, 150):
        single = index.search(packed[qsel[i:i + 1]], cls[qsel[i:i + 1]], area[qsel[i:i + 1]],
                              excl[i:i + 1], params)
        b = base.for_query(i)
        assert np.array_equal(single.candidate_id, b.candidate_id)
        assert np.array_equal(single.score, b.score)


def test_topk_columns_and_dtypes():
    packed, cls, area, img, ids, cand = _random_db(5, n=200)
    index = SegmentIndex.build(packed, cls, area, img, ids, cand)
    res = index.search(packed[:20], cls[:20], area[:20], img[:20], STEP)
    assert res.query_index.dtype == np.int64 and res.rank.dtype == np.int32
    assert res.candidate_id.dtype == np.int64
    for f in ("score", "shape_term", "scale_term"):
        assert getattr(res, f).dtype == np.float32
    assert np.allclose(res.score, res.shape_term + res.scale_term, atol=1e-6)
    assert np.all(np.diff(res.query_index) >= 0)
    assert TopK.empty().same_as(index.search(packed[:0], [], [], [], STEP))


def test_input_validation():
    packed, cls, area, img, ids, cand = _random_db(6, n=50)
    with pytest.raises(ValueError):
        SegmentIndex.build(packed, cls, np.zeros(50), img, ids)
    index = SegmentIndex.build(packed, cls, area, img, ids)
    with pytest.raises(ValueError):
        index.search(packed[:, :-1], cls, area, img, STEP)
    with pytest.raises(ValueError):
        index.search(packed[:2], cls[:3], area[:2], None, STEP)


# ------------------------------------------------------------------------------------------------
# Property: any small instance
# ------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    s=st.sampled_from([3, 8, 16]),
    k=st.integers(1, 12),
    scale_term=st.sampled_from(["step", "log"]),
    alpha=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    max_score=st.sampled_from([float("inf"), 0.0, 0.4, 1.2]),
    chunk=st.sampled_from([1, 4, 64]),
)
def test_property_engine_equals_brute_force(seed, n, s, k, scale_term, alpha, max_score, chunk):
    rng = np.random.default_rng(seed)
    # few distinct masks and areas so ties and exact duplicates are common
    base = rng.random((4, s, s)) < rng.random((4, 1, 1))
    m = base[rng.integers(0, 4, n)] ^ (rng.random((n, s, s)) < 0.05 * rng.integers(0, 2, (n, 1, 1)))
    packed = pack_masks(m)
    cls = rng.integers(0, 3, n)
    area = rng.choice([4, 7, 8, 15, 16, 100], n)
    img = rng.integers(0, 5, n)
    ids = rng.permutation(n)
    cand = rng.random(n) < 0.8
    nq = int(rng.integers(1, 12))
    qsel = rng.integers(0, n, nq)
    excl = np.where(rng.random(nq) < 0.5, img[qsel], NO_EXCLUDE)
    params = RetrievalParams(k=k, max_score=max_score, alpha=alpha, scale_term=scale_term)
    ref = brute_force_topk(packed[qsel], cls[qsel], area[qsel], excl, packed, cls, area, img, ids,
                           cand, params)
    index = SegmentIndex.build(packed, cls, area, img, ids, cand, chunk_size=chunk)
    got = index.search(packed[qsel], cls[qsel], area[qsel], excl, params, query_batch=3)
    assert got.first_difference(ref) is None


# ------------------------------------------------------------------------------------------------
# Benchmark smoke (small)
# ------------------------------------------------------------------------------------------------
def test_benchmark_smoke():
    from benchmarks.retrieval import run_retrieval_bench

    lines: list[str] = []
    res = run_retrieval_bench(sizes=(600,), n_queries=40, mask_size=32, ref_budget_s=0.5,
                              online_queries=10, print_fn=lines.append)
    r = res[600]
    assert r["identical"] and r["engine_qps"] > 0 and r["ref_queries"] >= 3
    assert "| 600 |" in lines[0]


def test_benchmark_smoke_real_masks():
    from benchmarks.retrieval import run_retrieval_bench, synthetic_database

    seeds = synthetic_database(100, 32, n_classes=4, seed=9)
    res = run_retrieval_bench(sizes=(400,), n_queries=30, real_masks=seeds.packed,
                              real_classes=seeds.class_ids, ref_budget_s=0.3, online_queries=5,
                              jobs=1, print_fn=lambda s: None)
    assert res[400]["identical"]


# ------------------------------------------------------------------ Table B: mean score per rank
def test_rank_mean_scores_equal_a_brute_force_on_a_toy_table():
    from pipeline.retrieve.rank_scores import rank_mean_scores

    rng = np.random.default_rng(3)
    rows = []  # (query, rank, score): queries hold 0..9 ranks, ascending scores
    for q in range(40):
        scores = np.sort(rng.random(int(rng.integers(0, 10))) * 2)
        rows += [(q, r, float(s)) for r, s in enumerate(scores)]
    rows = [rows[i] for i in rng.permutation(len(rows))]  # any row order
    q, r, s = (np.array(c) for c in zip(*rows))
    counted = rng.random(40) < 0.6
    ranks = (0, 1, 4, 8, 9, 12)
    for queries, require in ((None, None), (counted, None), (None, 8), (counted, 6)):
        got = rank_mean_scores(q, r, s, ranks, queries=queries, require_rank=require)
        for want, res in zip(ranks, got):
            per_query = {}
            for qq, rr, ss in rows:
                per_query.setdefault(qq, {})[rr] = ss
            vals = [d[want] for qq, d in per_query.items()
                    if want in d and (queries is None or queries[qq]) and (require is None or require in d)]
            assert res.rank == want and res.n == len(vals)
            if vals:
                assert res.mean == pytest.approx(sum(vals) / len(vals), rel=1e-12)
            else:
                assert math.isnan(res.mean)
