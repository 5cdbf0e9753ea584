"""The studio's shuffle, strip of samples and reference photo, through FastAPI's test client, on the
guidance-sensitive copy of the tiny run (tests/fixtures/studio.py). Expectations come from the
Synthesizer's own samples / photo reference (themselves tested in tests/train/test_samples.py and
tests/train/test_reference_photo.py)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.fixtures.studio import open_map, png, rgb_of
from tests.fixtures.tiny_run import unseen_map

pytestmark = pytest.mark.usefixtures("one_thread")

pytest.importorskip("fastapi", reason="fastapi is not installed (pip install -e .[dev])")
pytest.importorskip("httpx", reason="httpx (the test client's transport) is not installed")

PERSON = 4


def rgb_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]))
    assert ok
    return buf.tobytes()


def one_line_error(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    msg = r.json()["error"]
    assert isinstance(msg, str) and "\n" not in msg
    return msg


def test_strip_of_samples_equals_resail_synthesize_samples(client, syn):
    lab, inst = unseen_map(seed=31)
    st = open_map(client, lab, inst)
    mid = st["map_id"]
    assert st["samples"] is None and st["reference_photo"] is None
    r = client.post(f"/api/maps/{mid}/samples", json={"n": 3, "temperature": 2.0})
    assert r.status_code == 200, r.text
    strip = r.json()
    assert strip["temperature"] == 2.0 and strip["seed"] == 0 and len(strip["items"]) == 3
    expect = syn.samples(lab, inst, 3, temperature=2.0, seed=0)
    for item, (img, guid, _) in zip(strip["items"], expect):
        assert np.array_equal(rgb_of(client.get(item["image_url"])), img)
        assert np.array_equal(rgb_of(client.get(item["guidance_url"])), guid)
    assert len({client.get(i["guidance_url"]).content for i in strip["items"]}) >= 2  # they differ
    assert client.get(f"/api/maps/{mid}").json()["samples"]["items"] == strip["items"]
    # picking one makes it the map's choices
    st = client.post(f"/api/maps/{mid}/samples/1/apply").json()
    assert np.array_equal(rgb_of(client.get(st["image_url"])), expect[1][0])
    assert np.array_equal(rgb_of(client.get(st["guidance_url"])), expect[1][1])
    assert [s["candidate_id"] if s["candidate_id"] is not None else -1 for s in st["segments"]] == \
        expect[1][2].matches.tolist()
    assert st["history"][-1]["what"].startswith("sample 1")
    # bad requests: one-line JSON errors, the map keeps serving
    for body in ({"n": 0}, {"n": 17}, {"n": "3"}, {"n": 2, "temperature": 0}, {"n": 2, "temperature": -1},
                 {"n": 2, "temperature": "hot"}, [1, 2]):
        one_line_error(client.post(f"/api/maps/{mid}/samples", json=body), 400)
    one_line_error(client.get(f"/api/maps/{mid}/samples/7/image.png"), 404)
    one_line_error(client.post(f"/api/maps/{mid}/samples/9/apply"), 404)
    # a repaint makes the strip stale
    lab2 = lab.copy()
    lab2[30:40, 5:15] = 2
    files = {"labels": ("l.png", png(lab2), "image/png")}
    st = client.put(f"/api/maps/{mid}/labels", files=files).json()
    assert st["samples"] is None
    one_line_error(client.get(f"/api/maps/{mid}/samples/0/image.png"), 404)


def test_shuffle_all_gives_the_samples_in_turn_and_one_segment_changes_only_it(client, syn):
    lab, inst = unseen_map(seed=32)
    st = open_map(client, lab, inst)
    mid = st["map_id"]
    expect = syn.samples(lab, inst, 2, temperature=1.5, seed=0)
    for i in range(2):
        st = client.post(f"/api/maps/{mid}/shuffle", json={"temperature": 1.5}).json()
        assert st["shuffles"] == i + 1
        assert np.array_equal(rgb_of(client.get(st["guidance_url"])), expect[i][1])
        assert np.array_equal(rgb_of(client.get(st["image_url"])), expect[i][0])
    before = [s["candidate_id"] for s in st["segments"]]
    q = next(s["index"] for s in st["segments"] if s["n_candidates"] >= 2)
    for _ in range(3):
        st = client.post(f"/api/maps/{mid}/shuffle", json={"segment": q}).json()
        after = [s["candidate_id"] for s in st["segments"]]
        assert after[q] != before[q]  # a new candidate for the segment ...
        assert after[:q] + after[q + 1:] == before[:q] + before[q + 1:]  # ... and only for it
        assert st["segments"][q]["edited"]
        before = after
    # undo through the history: back to the first shuffle
    first = next(h["index"] for h in st["history"] if h["what"].startswith("shuffle all"))
    st = client.post(f"/api/maps/{mid}/history/{first}/restore").json()
    assert np.array_equal(rgb_of(client.get(st["guidance_url"])), expect[0][1])
    one_line_error(client.post(f"/api/maps/{mid}/shuffle", json={"segment": 999}), 404)
    one_line_error(client.post(f"/api/maps/{mid}/shuffle", json={"segment": "x"}), 400)
    one_line_error(client.post(f"/api/maps/{mid}/shuffle", json={"temperature": -3}),
                   400)
    one_line_error(client.post("/api/maps/nope/shuffle", json={}), 404)


def test_reference_photo_upload(client, syn):
    lab, inst = unseen_map(seed=33)
    st = open_map(client, lab, inst)
    mid = st["map_id"]
    base = rgb_of(client.get(st["guidance_url"]))
    db = syn.online.db
    adapter = db.open_adapter()
    row = next(r for r in db.image_rows() if r["image_id"] == "train_004")
    s = adapter.load(db.sample_refs(adapter, [row])[0])
    plab = s.labels.copy()
    plab[plab == PERSON] = syn.meta.ignore_id
    files = {"photo": ("photo<b>.png", rgb_png(s.image), "image/png"), "labels": ("l.png", png(plab), "image/png")}
    r = client.put(f"/api/maps/{mid}/reference-photo", files=files)
    assert r.status_code == 200, r.text
    st = r.json()
    ph = st["reference_photo"]
    assert ph["source"] == "photo<b>.png" and ph["strict"] is False and PERSON not in ph["classes"]
    expect = syn.guidance(lab, inst, reference_photo=syn.photo_reference(s.image, plab))
    assert np.array_equal(rgb_of(client.get(st["guidance_url"])), expect.guidance)
    assert ph["segments_from_photo"] == np.flatnonzero(expect.photo_matches >= 0).tolist()
    assert client.get(ph["thumbnail_url"]).status_code == 200
    # strict: classes the photo lacks stay black
    files["strict"] = (None, "true")
    st = client.put(f"/api/maps/{mid}/reference-photo", files=files).json()
    strict = syn.guidance(lab, inst, reference_photo=syn.photo_reference(s.image, plab), strict=True)
    assert st["reference_photo"]["strict"] is True
    assert np.array_equal(rgb_of(client.get(st["guidance_url"])), strict.guidance)
    assert not np.array_equal(strict.guidance, expect.guidance)
    # a local edit wins over the photo; removing the photo returns to the database choice
    q = next(s_["index"] for s_ in st["segments"] if s_["n_candidates"] >= 2 and s_["class_id"] != PERSON)
    st = client.put(f"/api/maps/{mid}/segments/{q}", json={"rank": 0}).json()
    assert q not in st["reference_photo"]["segments_from_photo"]
    st = client.delete(f"/api/maps/{mid}/reference-photo").json()
    assert st["reference_photo"] is None
    assert np.array_equal(rgb_of(client.get(st["guidance_url"])), base)
    one_line_error(client.get(f"/api/maps/{mid}/reference-photo/thumbnail.png"), 404)
    # bad pairs: one line, the map keeps its state
    small = {"photo": ("p.png", rgb_png(s.image[:40, :60]), "image/png"), "labels": ("l.png", png(plab), "image/png")}
    assert "is 60x40 but its label map is 64x48" in one_line_error(
        client.put(f"/api/maps/{mid}/reference-photo", files=small), 400)
    bad = plab.copy()
    bad[0, 5] = 9
    badf = {"photo": ("p.png", rgb_png(s.image), "image/png"), "labels": ("l.png", png(bad), "image/png")}
    assert "class id(s) 9" in one_line_error(client.put(f"/api/maps/{mid}/reference-photo", files=badf), 400)
    junk = {"photo": ("p.png", b"not an image at all, really", "image/png"), "labels": ("l.png", png(plab), "image/png")}
    one_line_error(client.put(f"/api/maps/{mid}/reference-photo", files=junk), 415)
    assert client.get(f"/api/maps/{mid}").json()["reference_photo"] is None


def test_page_puts_data_strings_in_as_text_only():
    from resail_studio.server import STATIC

    js = (STATIC / "studio.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "outerHTML" not in js
    html = (STATIC / "index.html").read_text()
    for element in ('id="shuffle-all"', 'id="shuffle-segment"', 'id="samples-strip"', 'id="photo-form"'):
        assert element in html
