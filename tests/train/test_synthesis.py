"""Synthesis and editing with a tiny trained run (real pipeline: decompose → retrieve → compose →
distort → train-segnet → train), the on-line path, and the synthesize/edit CLI."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.errors import CacheError, ConfigError, DataError
from pipeline.online import OnlineGuidance
from tests.fixtures.cli import cli
from tests.fixtures.tiny_run import unseen_map, write_map

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- synthesis
def test_unseen_label_map_end_to_end(run, syn):
    run_dir, cache_dir = run
    lab, inst = unseen_map()
    from pipeline.datasets import open_dataset
    from pipeline.cache import SegmentDB

    with SegmentDB.open(cache_dir) as db:
        adapter = open_dataset("folder", db.attrs["data_root"])
    for split in ("train", "val"):
        for ref in adapter.refs(split):
            assert not np.array_equal(adapter.load(ref).labels, lab)  # not in the database
    img, guid, res = syn.synthesize(lab, inst, seed=3)
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert guid.shape == (48, 64, 3) and guid.dtype == np.uint8
    assert len(res.segments) >= 3 and (res.matches >= 0).any() and res.valid.any()
    with OnlineGuidance(cache_dir) as og:  # the same guidance as the pipeline's on-line API
        assert np.array_equal(og.guidance(lab, inst).guidance, guid)
    # same inputs + same seed → the same image, also from a freshly loaded synthesizer
    from resail_train.synthesis import Synthesizer

    img2, _, _ = syn.synthesize(lab, inst, seed=3)
    with Synthesizer.load(run_dir, cache_dir, device="cpu") as other:
        img3, _, _ = other.synthesize(lab, inst, seed=3)
    assert np.array_equal(img, img2) and np.array_equal(img, img3)
    # a map of another size: generated at the generator size, returned at the map's size
    lab2, inst2 = unseen_map(5, 40, 56)
    img4, guid4, _ = syn.synthesize(lab2, inst2)
    assert img4.shape == (40, 56, 3) and guid4.shape == (40, 56, 3) and syn.size == (48, 64)


def test_bad_inputs_raise_named_errors(syn, tmp_path):
    lab, inst = unseen_map()
    bad = lab.copy()
    bad[0, 0] = 7
    with pytest.raises(DataError, match=r"x\.png: class id\(s\) 7 not in the class list"):
        syn.synthesize(bad, source="x.png")
    with pytest.raises(DataError, match="instance map shape"):
        syn.synthesize(lab, inst[:10], source="x.png")
    with pytest.raises(CacheError, match="run folder not found"):
        from resail_train.synthesis import Synthesizer

        Synthesizer.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheError, match="generator.pt: generator checkpoint not found"):
        Synthesizer.load(tmp_path / "empty")


def _pick_segment(syn, lab, inst, thing: bool = True):
    infos = [s for s in syn.segments(lab, inst) if s.n_candidates >= 2]
    pool = [s for s in infos if s.is_thing] if thing else infos
    return max(pool or infos, key=lambda s: s.area)


def test_local_edit_changes_only_the_segment(syn):
    """Guidance: exactly unchanged outside the edited segment's box. Image: the generator spreads a
    guidance change (conv receptive fields; the fine branch's instance norm is image-global), so
    the check is statistical, on a generator with PyTorch's default (non-tiny) init: the mean
    change inside the box dilated by 6 px is ≥ 4× the mean change outside, and the largest change
    is inside."""
    lab, inst = unseen_map()
    seg = _pick_segment(syn, lab, inst)
    base = syn.guidance(lab, inst)
    edit = syn.guidance(lab, inst, overrides={seg.index: 1})
    y0, x0, y1, x1 = seg.box
    box = np.zeros(lab.shape, bool)
    box[y0:y1, x0:x1] = True
    diff = (base.guidance != edit.guidance).any(2)
    assert diff.any() and not diff[~box].any()
    assert edit.matches[seg.index] != base.matches[seg.index]
    others = np.arange(len(base.matches)) != seg.index
    assert np.array_equal(edit.matches[others], base.matches[others])
    # the same edit named by a pixel inside the segment
    s = edit.segments[seg.index]
    ys, xs = np.nonzero(s.mask)
    px = (int(xs[0] + s.box[1]), int(ys[0] + s.box[0]))
    by_pixel = syn.guidance(lab, inst, overrides={px: 1})
    assert np.array_equal(by_pixel.guidance, edit.guidance)
    with pytest.raises(ConfigError, match="does not exist"):
        syn.guidance(lab, inst, overrides={len(base.segments): 1}, source="m.png")
    with pytest.raises(DataError, match="not in any segment"):
        syn.guidance(lab, inst, overrides={(0, 0): 1})  # void corner of the toy maps

    # image-level locality on a copy of the generator with default init (the tiny run's G is ~constant)
    import copy

    from resail_train.synthesis import Synthesizer

    G = copy.deepcopy(syn.G)
    torch.manual_seed(0)
    for m in G.modules():
        if hasattr(m, "reset_parameters") and not isinstance(m, torch.nn.BatchNorm2d):
            m.reset_parameters()
    s2 = Synthesizer(G, syn.cfg, syn.meta, syn.online, syn.device)
    f0 = s2.generate(*s2.prepare(lab, base.guidance, inst))[0]
    f1 = s2.generate(*s2.prepare(lab, edit.guidance, inst))[0]
    d = (f0 - f1).abs().sum(0).numpy()
    near = np.zeros(lab.shape, bool)
    near[max(0, y0 - 6):y1 + 6, max(0, x0 - 6):x1 + 6] = True
    assert d[near].mean() >= 4 * d[~near].mean() and d[near].max() > d[~near].max()


def test_global_edit_rank1_changes_every_segment_with_a_rank1_candidate(syn):
    lab, inst = unseen_map()
    r0 = syn.guidance(lab, inst)
    r1 = syn.guidance(lab, inst, rank=1)
    top = r0.topk
    has1 = {int(q): int(c) for q, r, c in zip(top.query_index, top.rank, top.candidate_id) if r == 1}
    assert has1, "the toy map should have segments with a second candidate"
    for i, seg in enumerate(r0.segments):
        if i in has1:
            assert r1.matches[i] == has1[i] != r0.matches[i]
            y0, x0, y1, x1 = seg.box
            assert (r1.guidance[y0:y1, x0:x1] != r0.guidance[y0:y1, x0:x1]).any(), i
        else:
            assert r1.matches[i] == -1  # no rank-1 candidate: black, as `resail compose --rank 1`
    img0, _, _ = syn.synthesize(lab, inst)
    img1, _, _ = syn.synthesize(lab, inst, rank=1)
    assert img0.shape == img1.shape


def test_reference_edit_takes_each_segments_best_candidate_from_the_image(syn):
    lab, inst = unseen_map()
    r0 = syn.guidance(lab, inst)
    top = r0.topk
    ids = np.asarray(syn.online.db.col("image_id"), dtype=object)
    ref = ids[top.candidate_id[top.rank == 1][0]]
    res = syn.guidance(lab, inst, reference=ref)
    for i in range(len(res.segments)):
        rows = np.flatnonzero(top.query_index == i)
        from_ref = [(int(top.rank[k]), int(top.candidate_id[k])) for k in rows if ids[top.candidate_id[k]] == ref]
        expect = min(from_ref)[1] if from_ref else r0.matches[i]
        assert res.matches[i] == expect, i
    assert any(ids[c] == ref for c in res.matches if c >= 0)
    with pytest.raises(ConfigError, match="no retrieval candidates"):
        syn.guidance(lab, inst, reference="no_such_image")


# --------------------------------------------------------------------------- CLI
def test_synthesize_and_edit_cli(run, tmp_path):
    run_dir, cache_dir = run
    lab, inst = unseen_map()
    lp, ip = write_map(tmp_path / "in" / "a.png", lab), write_map(tmp_path / "inst" / "a.png", inst)
    write_map(tmp_path / "in" / "b.png", unseen_map(7)[0])
    write_map(tmp_path / "inst" / "b.png", unseen_map(7)[1])
    common = ["--run", str(run_dir), "--cache", str(cache_dir), "--device", "cpu"]
    r = CliRunner().invoke(cli(), ["synthesize", *common, "--labels", str(lp), "--instances", str(ip),
                                   "--out", str(tmp_path / "a_out.png"), "--save-guidance", str(tmp_path / "a_g.png"),
                                   "--seed", "3"])
    assert r.exit_code == 0, r.output
    out = cv2.imread(str(tmp_path / "a_out.png"))[:, :, ::-1]
    from resail_train.synthesis import Synthesizer

    with Synthesizer.load(run_dir, cache_dir, device="cpu") as s:
        img, guid, _ = s.synthesize(lab, inst, seed=3)
    assert np.array_equal(out, img)
    assert np.array_equal(cv2.imread(str(tmp_path / "a_g.png"))[:, :, ::-1], guid)
    # folder in → folder out
    r = CliRunner().invoke(cli(), ["synthesize", *common, "--labels", str(tmp_path / "in"), "--instances",
                                   str(tmp_path / "inst"), "--out", str(tmp_path / "outdir"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "outdir").iterdir()) == ["a.png", "b.png"]
    assert np.array_equal(cv2.imread(str(tmp_path / "outdir" / "a.png"))[:, :, ::-1], img)
    # edits
    r = CliRunner().invoke(cli(), ["edit", *common, "--labels", str(lp), "--instances", str(ip), "--list-segments"])
    assert r.exit_code == 0 and "| 0 |" in r.output, r.output
    for args in (["--segment", "3", "--rank", "1"], ["--segment", "10,40", "--rank", "2"], ["--all", "--rank", "1"],
                 ["--reference", "train_001"]):
        o = tmp_path / "edit.png"
        o.unlink(missing_ok=True)
        r = CliRunner().invoke(cli(), ["edit", *common, "--labels", str(lp), "--instances", str(ip), *args,
                                       "--out", str(o)])
        assert r.exit_code == 0, (args, r.output)
        assert o.is_file() and r.output.startswith("edit: ")
    r = CliRunner().invoke(cli(), ["edit", *common, "--labels", str(lp), "--all", "--out", str(tmp_path / "e.png")])
    assert r.exit_code == 2 and "--rank R is required" in r.output


def _assert_one_line_error(r, *needles):
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for n in needles:
        assert n in lines[0], r.output


def test_cli_bad_inputs_one_line_and_nothing_written(run, tmp_path):
    run_dir, cache_dir = run
    lab, inst = unseen_map()
    good = write_map(tmp_path / "good.png", lab)
    bad = lab.copy()
    bad[5, 5] = 9
    badp = write_map(tmp_path / "bad_ids.png", bad)
    small = write_map(tmp_path / "small_inst.png", inst[:20, :20])
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG not really")
    empty_run = tmp_path / "run_without_generator"
    empty_run.mkdir()
    out = tmp_path / "out.png"
    common = ["--cache", str(cache_dir), "--device", "cpu", "--out", str(out)]
    cases = [
        (["synthesize", "--run", str(run_dir), "--labels", str(badp), *common], (str(badp), "class id(s) 9")),
        (["synthesize", "--run", str(run_dir), "--labels", str(good), "--instances", str(small), *common],
         (str(small), "instance map")),
        (["synthesize", "--run", str(tmp_path / "missing_run"), "--labels", str(good), *common],
         ("missing_run", "run folder not found")),
        (["synthesize", "--run", str(empty_run), "--labels", str(good), *common], ("generator.pt", "not found")),
        (["synthesize", "--run", str(run_dir), "--labels", str(junk), *common], (str(junk), "unreadable")),
        (["edit", "--run", str(run_dir), "--labels", str(badp), "--all", "--rank", "1", *common], (str(badp),)),
        (["edit", "--run", str(run_dir), "--labels", str(good), "--segment", "99", "--rank", "1", *common],
         (str(good), "segment 99 does not exist")),
        (["edit", "--run", str(run_dir), "--labels", str(good), "--reference", "nope", *common],
         ("'nope'", "no retrieval candidates")),
    ]
    for args, needles in cases:
        r = CliRunner().invoke(cli(), args)
        _assert_one_line_error(r, *needles)
        assert not out.exists() and not list(tmp_path.glob("*.tmp")), args
    # a folder with one bad map writes nothing at all
    d = tmp_path / "maps"
    write_map(d / "a.png", lab)
    write_map(d / "z.png", bad)
    r = CliRunner().invoke(cli(), ["synthesize", "--run", str(run_dir), "--labels", str(d), "--cache", str(cache_dir),
                                   "--device", "cpu", "--out", str(tmp_path / "outdir"), "--no-progress"])
    _assert_one_line_error(r, str(d / "z.png"))
    assert not (tmp_path / "outdir").exists() or not any((tmp_path / "outdir").iterdir())


def test_run_without_recorded_cache_asks_for_one(run, tmp_path):
    run_dir, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "metrics.json"))
    from resail_train.checkpoint import recorded_cache_dir
    from resail_train.synthesis import Synthesizer

    if recorded_cache_dir(copy) is None:
        with pytest.raises(ConfigError, match="pass --cache"):
            Synthesizer.load(copy, device="cpu")
