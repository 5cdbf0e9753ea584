"""Appearance from a photo (`resail edit --reference-photo`): the photo's segments as the candidates,
on the tiny trained run of tests/fixtures/tiny_run.py. The expected choice is computed here by brute
force from the database rows of the same image (class, candidate flag, normalised mask, box area →
geometric score), independently of the photo path."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.decompose.segments import normalised_mask, segment_query_flags
from pipeline.errors import ConfigError, DataError
from pipeline.retrieve.retrieval import geometric_score, unpack_masks
from tests.fixtures.cli import cli
from tests.fixtures.tiny_run import unseen_map, write_map

pytestmark = pytest.mark.usefixtures("one_thread")

PERSON = 4  # a thing class of the toy dataset


def db_image(syn, image_id: str):
    db = syn.online.db
    adapter = db.open_adapter()
    row = next(r for r in db.image_rows() if r["image_id"] == image_id)
    return adapter.load(db.sample_refs(adapter, [row])[0])


def expected_choice(syn, segs, image_id: str) -> np.ndarray:
    """Per query segment: the database segment of ``image_id`` (a candidate of the same class) with
    the lowest geometric score, ties to the lower id; −1 when none or the query is pruned."""
    db = syn.online.db
    ids = np.asarray(db.col("image_id"), object)
    rows = np.flatnonzero((ids == image_id) & np.asarray(db.col("candidate"), bool))
    masks = unpack_masks(db.norm_masks(rows), db.mask_size)
    cls, area = db.col("class_id")[rows], db.col("box_area")[rows]
    query = segment_query_flags(segs, syn.online.pruning, syn.online.preserved_ratio)
    out = np.full(len(segs), -1, np.int64)
    for i, s in enumerate(segs):
        if not query[i]:
            continue
        qm = normalised_mask(s.mask, db.mask_size)
        best = None
        for k in np.flatnonzero(cls == s.class_id):
            sc = geometric_score(qm, masks[k], s.box_area, float(area[k]), syn.online.params)[0]
            if sc <= syn.online.params.max_score and (best is None or (sc, rows[k]) < best):
                best = (sc, int(rows[k]))
        out[i] = -1 if best is None else best[1]
    return out


def test_a_database_image_as_photo_gives_todays_reference_edit(syn, run, tmp_path):
    db = syn.online.db
    ids = np.asarray(db.col("image_id"), object)
    train = [r["image_id"] for r in db.image_rows("train")]
    equal = 0
    for seed in (999, 7, 4242):
        lab, inst = unseen_map(seed)
        for iid in train:
            s = db_image(syn, iid)
            photo = syn.photo_reference(s.image, s.labels, s.instances, source=iid)
            res = syn.guidance(lab, inst, reference_photo=photo)
            expect = expected_choice(syn, res.segments, iid)
            first = int(np.flatnonzero(ids == iid)[0])  # photo segment j = database segment first + j
            got = np.where(res.photo_matches >= 0, res.photo_matches + first, -1)
            assert np.array_equal(got, expect), (seed, iid)
            assert np.all(res.matches[got >= 0] == -1)
            ref = syn.guidance(lab, inst, reference=iid)
            top = ref.topk
            in_topk = np.zeros(len(res.segments), bool)
            in_topk[top.query_index[ids[top.candidate_id] == iid]] = True
            # today's reference edit: the image's best candidate where the top-k has one, else rank 0
            assert np.array_equal(ref.matches[in_topk], expect[in_topk]), (seed, iid)
            if np.all(in_topk | (expect < 0)):
                assert np.array_equal(res.guidance, ref.guidance), (seed, iid)
                equal += 1
            else:  # documented difference: the photo is not limited to the database's top-k
                out = ~in_topk & (expect >= 0)
                base = syn.guidance(lab, inst)
                assert np.array_equal(ref.matches[out], base.matches[out])
    assert equal >= 12
    # the same through the CLI: identical PNG bytes
    lab, inst = unseen_map(999)
    lp, ip = write_map(tmp_path / "l.png", lab), write_map(tmp_path / "i.png", inst)
    root = db.attrs["data_root"]
    common = ["edit", "--run", str(run[0]), "--cache", str(run[1]), "--device", "cpu", "--labels", str(lp),
              "--instances", str(ip)]
    r1 = CliRunner().invoke(cli(), [*common, "--reference", "train_001", "--out", str(tmp_path / "ref.png")])
    r2 = CliRunner().invoke(cli(), [*common, "--reference-photo", f"{root}/train/images/train_001.png",
                                    "--reference-labels", f"{root}/train/labels/train_001.png",
                                    "--reference-instances", f"{root}/train/instances/train_001.png",
                                    "--out", str(tmp_path / "photo.png"), "--save-guidance", str(tmp_path / "g.png")])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    assert (tmp_path / "ref.png").read_bytes() == (tmp_path / "photo.png").read_bytes()
    assert "take a segment of it" in r2.output


def test_classes_the_photo_lacks_fall_back_or_stay_black(syn):
    lab, inst = unseen_map()
    s = db_image(syn, "train_001")
    plab, pinst = s.labels.copy(), s.instances.copy()
    plab[plab == PERSON] = syn.meta.ignore_id  # no person in the photo's label map
    pinst[s.labels == PERSON] = 0
    photo = syn.photo_reference(s.image, plab, pinst)
    assert PERSON not in photo.class_ids and photo.class_ids
    base = syn.guidance(lab, inst)
    res = syn.guidance(lab, inst, reference_photo=photo)
    persons = [i for i, g in enumerate(res.segments) if g.class_id == PERSON]
    others = [i for i, g in enumerate(res.segments) if g.class_id in photo.class_ids]
    assert persons and others
    for i in persons:  # fallback: the database's rank 0
        assert res.photo_matches[i] == -1 and res.matches[i] == base.matches[i] >= 0
    for i in others:
        assert res.photo_matches[i] >= 0 and res.matches[i] == -1
    strict = syn.guidance(lab, inst, reference_photo=photo, strict=True)
    for i in persons:  # a thing's own pixels are pasted by itself only: black
        m = np.zeros(lab.shape, bool)
        y0, x0, y1, x1 = res.segments[i].box
        m[y0:y1, x0:x1] = res.segments[i].mask
        assert strict.matches[i] == -1 and strict.photo_matches[i] == -1
        assert not strict.guidance[m].any() and not strict.valid[m].any()
        assert res.valid[m].any()
    assert np.array_equal(strict.photo_matches, res.photo_matches)
    # an explicit local choice wins over the photo and over --strict
    p = persons[0]
    top = base.topk
    rank1 = top.candidate_id[(top.query_index == p) & (top.rank == 1)]
    ov = syn.guidance(lab, inst, reference_photo=photo, strict=True, overrides={p: 1})
    assert ov.matches[p] == rank1[0] and ov.photo_matches[p] == -1
    o = others[0]
    ov = syn.guidance(lab, inst, reference_photo=photo, overrides={o: 0})
    assert ov.matches[o] == base.matches[o] and ov.photo_matches[o] == -1


def test_bad_photo_and_label_pairs_are_one_line_errors(syn, run, tmp_path):
    s = db_image(syn, "train_001")
    with pytest.raises(DataError, match=r"p\.png: reference photo is 64x48 but its label map is 60x40"):
        syn.photo_reference(s.image, s.labels[:40, :60], source="p.png")
    bad = s.labels.copy()
    bad[3, 3] = 7
    with pytest.raises(DataError, match=r"class id\(s\) 7 not in the class list"):
        syn.photo_reference(s.image, bad, source="p.png")
    with pytest.raises(DataError, match="H×W×3 uint8 RGB"):
        syn.photo_reference(s.image[:, :, 0], s.labels)
    with pytest.raises(DataError, match="instance map shape"):
        syn.photo_reference(s.image, s.labels, s.instances[:10])
    lab, inst = unseen_map()
    with pytest.raises(ConfigError, match="not both"):
        syn.guidance(lab, inst, reference="train_001", reference_photo=syn.photo_reference(s.image, s.labels))

    root = syn.online.db.attrs["data_root"]
    photo = f"{root}/train/images/train_001.png"
    lp = write_map(tmp_path / "l.png", lab)
    small = write_map(tmp_path / "small.png", s.labels[:40, :60])
    badp = write_map(tmp_path / "bad.png", bad)
    out = tmp_path / "out.png"
    common = ["edit", "--run", str(run[0]), "--cache", str(run[1]), "--device", "cpu", "--labels", str(lp),
              "--out", str(out), "--reference-photo", photo]
    for args, needles in (
            (["--reference-labels", str(small)], (str(small), "is 60x40 but the photo")),
            (["--reference-labels", str(badp)], (str(badp), "class id(s) 7")),
            (["--reference-labels", str(tmp_path / "none.png")], ("not a file",)),
            (["--reference-labels", "auto", "--segmenter", "drn-d-105"], ("needs --segmenter-weights",))):
        r = CliRunner().invoke(cli(), [*common, *args])
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code in (1, 2) and len(lines) >= 1, (args, r.output)
        if r.exit_code == 1:
            assert len(lines) == 1 and lines[0].startswith("error: "), (args, r.output)
        assert all(n in r.output for n in needles), (args, r.output)
        assert not out.exists()
    for args, needle in ((["--strict"], "go with --reference-photo"),):
        r = CliRunner().invoke(cli(), ["edit", "--run", str(run[0]), "--cache", str(run[1]), "--labels", str(lp),
                                       "--all", "--rank", "1", "--out", str(out), *args])
        assert r.exit_code == 2 and needle in r.output, r.output
    r = CliRunner().invoke(cli(), common)
    assert r.exit_code == 2 and "needs --reference-labels" in r.output, r.output


def test_reference_labels_auto_predicts_with_the_runs_eval_net(syn, run, tmp_path):
    from pipeline.resize import resize_image, resize_index_map
    from resail_train.metrics.segmenters.registry import load_segmenter

    s = db_image(syn, "train_002")
    seg = load_segmenter("own", [str(run[0] / "eval_segnet.pt")], "cpu", meta=syn.meta)
    got = seg.label_map(s.image, syn.meta, size=syn.size)
    h, w = syn.size
    dense = seg.predict(resize_image(s.image, h, w)[None])[0].numpy()  # indices in class-list order
    expect = resize_index_map(syn.meta.ids[dense], *s.labels.shape)
    assert got.shape == s.labels.shape and np.array_equal(got, expect)
    lab, _ = unseen_map()
    lp = write_map(tmp_path / "l.png", lab)
    root = syn.online.db.attrs["data_root"]
    r = CliRunner().invoke(cli(), ["edit", "--run", str(run[0]), "--cache", str(run[1]), "--device", "cpu",
                                   "--labels", str(lp), "--reference-photo", f"{root}/train/images/train_002.png",
                                   "--reference-labels", "auto", "--out", str(tmp_path / "o.png"),
                                   "--save-guidance", str(tmp_path / "g.png")])
    assert r.exit_code == 0, r.output
    assert f"reference labels: predicted by own ({run[0] / 'eval_segnet.pt'})" in r.output
    photo = syn.photo_reference(s.image, got)
    res = syn.guidance(lab, reference_photo=photo)
    assert np.array_equal(cv2.imread(str(tmp_path / "g.png"))[:, :, ::-1], res.guidance)
