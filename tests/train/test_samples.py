"""Several images for one label map: the candidate draw (pipeline.online.draw_ranks / choose), the
Synthesizer's samples on the tiny trained run of tests/fixtures/tiny_run.py, and `resail synthesize
--samples`. Expectations are written out independently: the softmax by hand, the pixels a changed
candidate may touch from the four paste rules, rank 0 from today's synthesis."""
from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.errors import ConfigError
from pipeline.online import MAX_SAMPLES, check_samples, check_temperature, choose, draw_ranks, sample_rng
from pipeline.retrieve.retrieval import TopK
from tests.fixtures.cli import cli
from tests.fixtures.tiny_run import unseen_map, write_map

pytestmark = pytest.mark.usefixtures("one_thread")


def topk(rows: list[tuple[int, list[float]]]) -> TopK:
    """A TopK from [(query, [score of rank 0, rank 1, …])]; candidate id = 100·query + rank."""
    q, r, c, s = [], [], [], []
    for qi, scores in rows:
        for ri, sc in enumerate(scores):
            q.append(qi), r.append(ri), c.append(100 * qi + ri), s.append(sc)
    z = np.zeros(len(q), np.float32)
    return TopK(np.asarray(q, np.int64), np.asarray(r, np.int32), np.asarray(c, np.int64), np.asarray(s, np.float32),
                z, z)


# --------------------------------------------------------------------------- the draw
def test_tiny_temperature_draws_rank_0_even_where_scores_tie():
    top = topk([(0, [0.0, 0.0, 0.0, 0.5]), (1, [0.1, 0.2]), (3, [0.0, 0.0])])
    for sample in range(200):
        ranks = draw_ranks(top, 4, 1e-6, sample_rng(7, sample))
        assert ranks.tolist() == [0, 0, 0, 0]
        assert np.array_equal(choose(top, 4, temperature=1e-6, rng=sample_rng(7, sample)), choose(top, 4))
    assert choose(top, 4).tolist() == [0, 100, -1, 300]  # query 2 has no candidate: black


def test_draw_follows_the_softmax_over_minus_score_over_t():
    scores = [0.0, 0.3, 1.0]
    n = 6000
    top = topk([(q, scores) for q in range(n)])  # 6000 independent draws in one call
    for t in (0.5, 2.0):
        p = np.exp(-np.asarray(scores) / t)
        p /= p.sum()
        ranks = draw_ranks(top, n, t, sample_rng(0, 0))
        freq = np.bincount(ranks, minlength=3) / n
        assert np.abs(freq - p).max() < 0.025, (t, freq, p)
    # equal scores: equally likely at T = 1
    top = topk([(q, [0.2, 0.2, 0.2]) for q in range(n)])
    freq = np.bincount(draw_ranks(top, n, 1.0, sample_rng(1, 0)), minlength=3) / n
    assert np.abs(freq - 1 / 3).max() < 0.025


def test_draw_is_reproducible_per_seed_and_sample_and_per_segment():
    rows = [(q, [0.0, 0.05, 0.1, 0.2]) for q in range(40)]
    top = topk(rows)
    a = draw_ranks(top, 40, 1.0, sample_rng(3, 2))
    assert np.array_equal(a, draw_ranks(top, 40, 1.0, sample_rng(3, 2)))
    assert not np.array_equal(a, draw_ranks(top, 40, 1.0, sample_rng(3, 3)))
    assert not np.array_equal(a, draw_ranks(top, 40, 1.0, sample_rng(4, 2)))
    # a segment's draw depends only on its own candidates (one uniform per segment, in order)
    rows2 = list(rows)
    rows2[5] = (5, [0.0, 0.9])
    b = draw_ranks(topk(rows2), 40, 1.0, sample_rng(3, 2))
    keep = np.arange(40) != 5
    assert np.array_equal(a[keep], b[keep])


def test_avoid_draws_another_candidate():
    top = topk([(0, [0.0, 0.0, 0.0]), (1, [0.0])])
    for s in range(50):
        r = draw_ranks(top, 2, 1.0, sample_rng(0, s), avoid={0: 1, 1: 0})
        assert r[0] != 1 and r[1] == 0  # a single candidate is kept
    # at T → 0 the best remaining one
    assert draw_ranks(top, 2, 1e-9, sample_rng(0, 0), avoid={0: 0})[0] == 1


def test_sample_and_temperature_checks_are_one_line_config_errors():
    assert check_samples(1) == 1 and check_samples(MAX_SAMPLES) == MAX_SAMPLES
    for bad in (0, -3, MAX_SAMPLES + 1, 2.5, True, "4"):
        with pytest.raises(ConfigError, match=r"samples must be an integer in 1\.\.64") as e:
            check_samples(bad)
        assert "\n" not in str(e.value)
    assert check_temperature(1e-6) == 1e-6
    for bad in (0, -1, float("inf"), float("nan"), "warm", None, True):
        with pytest.raises(ConfigError, match="temperature must be") as e:
            check_temperature(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no global rank"):
        choose(topk([(0, [0.0, 0.1])]), 1, rank=1, temperature=1.0, rng=sample_rng(0, 0))


# --------------------------------------------------------------------------- the synthesizer
def test_t_to_zero_equals_todays_synthesis_bit_for_bit(syn):
    lab, inst = unseen_map()
    img0, g0, r0 = syn.synthesize(lab, inst, seed=3)
    top = r0.topk
    first = top.rank == 0
    second = np.flatnonzero(top.rank == 1)
    ties = [int(top.query_index[k]) for k in second if top.score[k] == top.score[k - 1]]
    assert ties, "the toy maps have tied scores at rank 0/1 (rectangular segments): the case the tie-break is for"
    assert first.sum() >= 3
    for i in range(4):
        img, g, r = syn.synthesize(lab, inst, seed=3, temperature=1e-6, sample=i)
        assert np.array_equal(r.matches, r0.matches)
        assert np.array_equal(g, g0) and np.array_equal(img, img0)


def _placed(seg, shape) -> np.ndarray:
    m = np.zeros(shape, bool)
    y0, x0, y1, x1 = seg.box
    m[y0:y1, x0:x1] = seg.mask
    return m


def _reach(seg, shape, stuff: np.ndarray) -> np.ndarray:
    """Pixels a segment's paste can write (paste rules 1-4): its own mask; a thing also the stuff
    pixels of its box."""
    m = _placed(seg, shape)
    if seg.is_thing:
        y0, x0, y1, x1 = seg.box
        box = np.zeros(shape, bool)
        box[y0:y1, x0:x1] = True
        m |= box & stuff
    return m


def test_samples_differ_where_candidates_differ_and_only_there(syn):
    lab, inst = unseen_map()
    base = syn.guidance(lab, inst)
    meta = syn.meta
    stuff = np.isin(lab, [c.id for c in meta.classes if not c.thing])
    samples = syn.samples(lab, inst, 6, temperature=2.0, seed=11)
    assert len(samples) == 6
    n_changed_pairs = 0
    for (_, ga, ra), (_, gb, rb) in itertools.combinations(samples, 2):
        segs = ra.segments
        changed = [i for i in range(len(segs)) if ra.matches[i] != rb.matches[i]]
        same = [i for i in range(len(segs)) if ra.matches[i] == rb.matches[i]]
        diff = (ga != gb).any(2)
        reach = np.zeros(lab.shape, bool)
        for i in changed:
            reach |= _reach(segs[i], lab.shape, stuff)
        assert not diff[~reach].any()  # only where a candidate changed
        for i in changed:  # and there: the toy images are noise, different crops differ
            y0, x0, y1, x1 = segs[i].box
            assert diff[y0:y1, x0:x1].any(), i
        # segments that keep rank 0 in both samples: equal pixels (except where a changed thing may paste)
        for i in same:
            if ra.matches[i] == base.matches[i]:
                own = _placed(segs[i], lab.shape) & ~reach
                assert not diff[own].any(), i
        n_changed_pairs += bool(changed)
    assert n_changed_pairs >= 10


def test_samples_are_reproducible_for_a_fixed_seed(syn):
    lab, inst = unseen_map(7)
    a = syn.samples(lab, inst, 3, temperature=1.0, seed=5)
    b = syn.samples(lab, inst, 3, temperature=1.0, seed=5)
    for (ia, ga, ra), (ib, gb, rb) in zip(a, b):
        assert np.array_equal(ia, ib) and np.array_equal(ga, gb) and np.array_equal(ra.matches, rb.matches)
    c = syn.samples(lab, inst, 3, temperature=1.0, seed=6)
    assert any(not np.array_equal(x[2].matches, y[2].matches) for x, y in zip(a, c))
    # sample i alone = sample i of the set; the on-line API draws the same
    one = syn.synthesize(lab, inst, temperature=1.0, seed=5, sample=2)
    assert np.array_equal(one[0], a[2][0]) and np.array_equal(one[1], a[2][1])
    assert np.array_equal(syn.online.guidance(lab, inst, temperature=1.0, seed=5, sample=2).guidance, a[2][1])
    with pytest.raises(ConfigError, match="samples must be"):
        syn.samples(lab, inst, 65)
    with pytest.raises(ConfigError, match="temperature must be"):
        syn.samples(lab, inst, 2, temperature=0.0)


# --------------------------------------------------------------------------- CLI
def _read(p):
    return cv2.imread(str(p))[:, :, ::-1]


def test_synthesize_samples_cli(run, syn, tmp_path):
    run_dir, cache_dir = run
    lab, inst = unseen_map()
    lp, ip = write_map(tmp_path / "in" / "a.png", lab), write_map(tmp_path / "inst" / "a.png", inst)
    common = ["synthesize", "--run", str(run_dir), "--cache", str(cache_dir), "--device", "cpu", "--labels", str(lp),
              "--instances", str(ip)]
    r = CliRunner().invoke(cli(), [*common, "--out", str(tmp_path / "o" / "a.png"), "--save-guidance",
                                   str(tmp_path / "o" / "g.png"), "--samples", "3", "--seed", "5",
                                   "--temperature", "2"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_s0.png", "a_s1.png", "a_s2.png",
                                                                   "g_s0.png", "g_s1.png", "g_s2.png"]
    assert "3 sample(s), temperature 2, seed 5" in r.output
    expect = syn.samples(lab, inst, 3, temperature=2.0, seed=5)
    for i, (img, guid, _) in enumerate(expect):
        assert np.array_equal(_read(tmp_path / "o" / f"a_s{i}.png"), img)
        assert np.array_equal(_read(tmp_path / "o" / f"g_s{i}.png"), guid)
    # --samples 1 without --temperature: today's name and bytes
    r1 = CliRunner().invoke(cli(), [*common, "--out", str(tmp_path / "one" / "a.png"), "--samples", "1"])
    r0 = CliRunner().invoke(cli(), [*common, "--out", str(tmp_path / "plain" / "a.png")])
    assert r1.exit_code == 0 and r0.exit_code == 0, r1.output + r0.output
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["a.png"]
    assert (tmp_path / "one" / "a.png").read_bytes() == (tmp_path / "plain" / "a.png").read_bytes()
    # --samples N without --temperature: T = 1
    r = CliRunner().invoke(cli(), [*common, "--out", str(tmp_path / "t1" / "a.png"), "--samples", "2"])
    assert r.exit_code == 0 and "temperature 1," in r.output, r.output
    assert np.array_equal(_read(tmp_path / "t1" / "a_s1.png"), syn.samples(lab, inst, 2, temperature=1.0)[1][0])
    # a folder: NAME_s{i}.png per map
    write_map(tmp_path / "in" / "b.png", unseen_map(7)[0])
    write_map(tmp_path / "inst" / "b.png", unseen_map(7)[1])
    r = CliRunner().invoke(cli(), ["synthesize", "--run", str(run_dir), "--cache", str(cache_dir), "--device", "cpu",
                                   "--labels", str(tmp_path / "in"), "--instances", str(tmp_path / "inst"),
                                   "--out", str(tmp_path / "dir"), "--samples", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["a_s0.png", "a_s1.png", "b_s0.png", "b_s1.png"]


def test_synthesize_samples_cli_bad_values_are_one_line(run, tmp_path):
    run_dir, cache_dir = run
    lp = write_map(tmp_path / "a.png", unseen_map()[0])
    out = tmp_path / "out" / "a.png"
    base = ["synthesize", "--run", str(run_dir), "--cache", str(cache_dir), "--device", "cpu", "--labels", str(lp),
            "--out", str(out)]
    cases = [(["--temperature", "0"], "--temperature must be > 0 and finite"),
             (["--temperature", "-2", "--samples", "2"], "--temperature must be > 0 and finite"),
             (["--temperature", "inf"], "--temperature must be > 0 and finite"),
             (["--temperature", "nan"], "--temperature must be > 0 and finite"),
             (["--samples", "2", "--rank", "1"], "drop --rank 1")]
    for args, needle in cases:
        r = CliRunner().invoke(cli(), [*base, *args])
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], \
            (args, r.output)
        assert not out.parent.exists() or not any(out.parent.iterdir()), args
    # --samples outside 1..64: refused by the option's type (click's usage error, one "Error:" line)
    for n in ("0", "65"):
        r = CliRunner().invoke(cli(), [*base, "--samples", n])
        errors = [ln for ln in r.output.splitlines() if "Error" in ln or ln.startswith("error: ")]
        assert r.exit_code in (1, 2) and len(errors) == 1 and "--samples" in errors[0] and n in errors[0], r.output
        assert "1<=x<=64" in errors[0] or "1..64" in errors[0], r.output
        assert not out.parent.exists() or not any(out.parent.iterdir())
