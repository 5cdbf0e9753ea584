"""`resail studio`: the JSON API with FastAPI's test client, on the tiny trained run of
tests/fixtures/tiny_run.py (every endpoint, every bad input, rank 0 = `resail synthesize`, edits equal
the Synthesizer's own editing, repaints reuse retrieval and equal a fresh map, bounded sessions)."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from tests.fixtures.cli import cli
from tests.fixtures.studio import open_map, png, rgb_of
from tests.fixtures.tiny_run import unseen_map, write_map

pytestmark = pytest.mark.usefixtures("one_thread")

fastapi = pytest.importorskip("fastapi", reason="fastapi is not installed (pip install -e .[dev])")
pytest.importorskip("httpx", reason="httpx (the test client's transport) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from resail_studio.pngio import decode_index_png, encode_index  # noqa: E402
from resail_studio.server import create_app  # noqa: E402
from resail_studio.sessions import SessionStore  # noqa: E402


def brute_force(syn, segs):
    """The exact top-k of ``segs`` by the plain reference search (no index, no batching)."""
    from pipeline.retrieve.retrieval import NO_EXCLUDE, brute_force_topk
    from pipeline.decompose.segments import normalised_mask, pack_mask

    db = syn.online.db
    pq = np.stack([pack_mask(normalised_mask(s.mask, db.mask_size)) for s in segs])
    images = np.unique(db.col("image_id"), return_inverse=True)[1]
    return brute_force_topk(pq, [s.class_id for s in segs], [s.box_area for s in segs], np.full(len(segs), NO_EXCLUDE),
                            db.norm_masks(), db.col("class_id"), db.col("box_area"), images, np.arange(len(db)),
                            db.col("candidate"), syn.online.params)


def edited_segment(state: dict) -> int:
    """A segment with at least two candidates (so rank 1 exists)."""
    return next(s["index"] for s in state["segments"] if s["n_candidates"] >= 2)


# --------------------------------------------------------------------------- basics
def test_health_info_and_page(client, syn):
    assert client.get("/api/health").json() == {"status": "ok"}
    info = client.get("/api/info").json()
    assert [c["id"] for c in info["classes"]] == [c.id for c in syn.meta.classes]
    assert [c["name"] for c in info["classes"]] == [c.name for c in syn.meta.classes]
    assert all(c["color"].startswith("#") and len(c["color"]) == 7 for c in info["classes"])
    assert info["k"] == syn.online.params.k and info["generator_size"] == list(syn.size)
    # the validation maps are the starting points; the references are the training images with candidates
    assert sorted(e["image_id"] for e in info["examples"]) == ["val_000", "val_001"]
    cand = np.asarray(syn.online.db.col("candidate"), bool)
    ids = np.asarray(syn.online.db.col("image_id"), object)
    assert set(info["references"]) == set(ids[cand].tolist())
    page = client.get("/")
    assert page.status_code == 200 and "RESAIL studio" in page.text
    for asset in ("/static/studio.js", "/static/studio.css"):
        assert client.get(asset).status_code == 200


def test_rank0_image_equals_resail_synthesize(client, srun, tmp_path):
    from click.testing import CliRunner

    lab, inst = unseen_map(seed=4242)
    lp, ip = write_map(tmp_path / "l.png", lab), write_map(tmp_path / "i.png", inst)
    out, gout = tmp_path / "out.png", tmp_path / "g.png"
    res = CliRunner().invoke(cli(), ["synthesize", "--run", str(srun[0]), "--cache", str(srun[1]), "--labels", str(lp),
                                     "--instances", str(ip), "--out", str(out), "--save-guidance", str(gout),
                                     "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    st = open_map(client, lab, inst)
    assert (st["width"], st["height"]) == (lab.shape[1], lab.shape[0])
    img = rgb_of(client.get(st["image_url"]))
    assert np.array_equal(img, cv2.imread(str(out))[:, :, ::-1])
    assert np.array_equal(rgb_of(client.get(st["guidance_url"])), cv2.imread(str(gout))[:, :, ::-1])
    # the label and instance maps download as id PNGs that read back unchanged
    assert np.array_equal(rgb_of(client.get(st["labels_url"])), lab)
    assert np.array_equal(rgb_of(client.get(f"/api/maps/{st['map_id']}/instances.png")), inst)
    raw = client.get(f"/api/maps/{st['map_id']}/labels.raw").content
    assert np.array_equal(np.frombuffer(raw, "<u2").reshape(lab.shape), lab)
    col = rgb_of(client.get(f"/api/maps/{st['map_id']}/labels.png?color=true"))
    assert col.shape == (*lab.shape, 3)


def test_edits_equal_the_synthesizers_editing(client, syn):
    lab, inst = unseen_map(seed=77)
    st = open_map(client, lab, inst)
    mid = st["map_id"]
    segs = syn.segments(lab, inst)
    assert [(s["index"], s["class_id"], tuple(s["box"]), s["n_candidates"]) for s in st["segments"]] == \
        [(s.index, s.class_id, s.box, s.n_candidates) for s in segs]
    q = edited_segment(st)
    # candidates: the exact top-k of that segment, in rank order, with thumbnails of the crops
    cands = client.get(f"/api/maps/{mid}/segments/{q}/candidates").json()
    top = syn.online.retrieve(lab, inst)[1].for_query(q)
    assert [c["segment_id"] for c in cands] == top.candidate_id.tolist()
    assert [c["rank"] for c in cands] == list(range(len(top)))
    np.testing.assert_allclose([c["score"] for c in cands], top.score, atol=1e-5)
    assert [c["chosen"] for c in cands] == [True] + [False] * (len(cands) - 1)
    thumb = cv2.imdecode(np.frombuffer(client.get(cands[1]["thumbnail_url"]).content, np.uint8), cv2.IMREAD_UNCHANGED)
    rgb, m = syn.online.crop(cands[1]["segment_id"])
    assert thumb.shape == (*m.shape, 4) and np.array_equal(thumb[:, :, 3] > 0, m)
    assert client.get(cands[1]["source_url"]).status_code == 200
    img0 = rgb_of(client.get(st["image_url"]))

    # local edit
    st1 = client.put(f"/api/maps/{mid}/segments/{q}", json={"rank": 1}).json()
    img1 = rgb_of(client.get(st1["image_url"]))
    want, gwant, _ = syn.synthesize(lab, inst, overrides={q: 1})
    assert np.array_equal(img1, want) and not np.array_equal(img1, img0)
    assert np.array_equal(rgb_of(client.get(st1["guidance_url"])), gwant)  # the layered composition is exact
    assert st1["segments"][q]["rank"] == 1 and st1["overrides"] == {str(q): 1}
    assert st1["timings"]["segments_retrieved"] == 0
    # global edit clears the local one
    st2 = client.put(f"/api/maps/{mid}/ranks", json={"rank": 1}).json()
    want, gwant, _ = syn.synthesize(lab, inst, rank=1)
    assert np.array_equal(rgb_of(client.get(st2["image_url"])), want) and st2["overrides"] == {}
    assert np.array_equal(rgb_of(client.get(st2["guidance_url"])), gwant)
    # reference edit
    ref = client.get("/api/info").json()["references"][1]
    st3 = client.put(f"/api/maps/{mid}/reference", json={"image_id": ref}).json()
    want, gwant, _ = syn.synthesize(lab, inst, rank=1, reference=ref)
    assert st3["reference"] == ref
    assert np.array_equal(rgb_of(client.get(st3["image_url"])), want)
    assert np.array_equal(rgb_of(client.get(st3["guidance_url"])), gwant)
    st4 = client.put(f"/api/maps/{mid}/reference", json={"image_id": None}).json()
    assert st4["reference"] is None
    # history: one snapshot per change; restoring the first gives the first image back
    hist = client.get(f"/api/maps/{mid}/history").json()
    assert [h["what"] for h in hist] == ["start", f"segment {q} → rank 1", "all → rank 1", f"reference {ref}",
                                         "reference off"]
    assert client.get(hist[0]["thumbnail_url"]).status_code == 200
    st5 = client.post(f"/api/maps/{mid}/history/0/restore").json()
    assert st5["current"] == 0 and st5["rank"] == 0
    assert np.array_equal(rgb_of(client.get(st5["image_url"])), img0)
    # segment lookup by pixel, and its mask overlay
    s = syn.online.decompose(lab, inst)[q]
    ys, xs = np.nonzero(s.mask)
    x, y = int(xs[0] + s.box[1]), int(ys[0] + s.box[0])
    assert client.get(f"/api/maps/{mid}/segment_at?x={x}&y={y}").json() == {"index": q}
    assert client.get(f"/api/maps/{mid}/segment_at?x=0&y=0").json() == {"index": None}  # void corner
    mask = rgb_of(client.get(f"/api/maps/{mid}/segments/{q}/mask.png"))
    assert np.array_equal(mask[:, :, 3] > 0, s.mask)


def test_repaint_retrieves_only_changed_segments(client, syn):
    lab, inst = unseen_map(seed=5)
    st = open_map(client, lab, inst)
    mid = st["map_id"]
    n0 = len(st["segments"])
    assert st["timings"]["segments_retrieved"] == n0
    painted = lab.copy()
    painted[30:40, 40:52] = 4  # a person on the road: road and the new person change, the sky does not
    r = client.put(f"/api/maps/{mid}/labels", files={"labels": ("l.png", png(painted), "image/png")})
    assert r.status_code == 200, r.text
    st2 = r.json()
    t = st2["timings"]
    assert 0 < t["segments_retrieved"] < len(st2["segments"]) and t["segments_reused"] > 0
    # the instance ids survive where the class did not change
    inst_kept = np.where(painted == lab, inst, 0)
    edit = client.app.state.studio.store.get(mid)
    assert np.array_equal(edit.instances, inst_kept)
    # the reused + re-retrieved top-k is exactly the top-k of the painted map (brute force), with the
    # per-image query pruning of the whole painted map applied as `resail synthesize` applies it
    from pipeline.decompose.segments import segment_query_flags

    segs = syn.online.decompose(painted, inst_kept)
    flags = segment_query_flags(segs, syn.online.pruning, syn.online.preserved_ratio)
    assert not flags.all()  # this map has a pruned query: repainting must not bring it guidance
    exact = brute_force(syn, segs).only_queries(flags)
    assert edit.top.first_difference(exact) is None and len(edit.segs) == len(segs)
    assert np.array_equal(rgb_of(client.get(st2["image_url"])), syn.synthesize(painted, inst_kept)[0])
    from pipeline.online import choose

    g, _ = syn.online.compose(painted, segs, choose(exact, len(segs)))
    assert np.array_equal(rgb_of(client.get(st2["guidance_url"])), g)
    assert np.array_equal(rgb_of(client.get(st2["image_url"])), syn.render(painted, g, inst_kept))
    # a local edit on an unchanged segment survives a repaint elsewhere; one on a changed segment does not
    sky = next(s["index"] for s in st2["segments"] if s["class_name"] == "sky" and s["n_candidates"] >= 2)
    client.put(f"/api/maps/{mid}/segments/{sky}", json={"rank": 1})
    again = painted.copy()
    again[44:47, 2:8] = 3
    st3 = client.put(f"/api/maps/{mid}/labels", files={"labels": ("l.png", png(again), "image/png")}).json()
    skies = [s["index"] for s in st3["segments"] if s["class_name"] == "sky"]
    assert st3["overrides"] == {str(skies[0]): 1}


def test_examples_open_the_validation_maps(client, syn):
    from pipeline.datasets import open_dataset

    adapter = open_dataset("folder", syn.online.db.attrs["data_root"])
    ref = next(r for r in adapter.refs("val") if r.image_id == "val_001")
    sample = adapter.load(ref)
    r = client.post("/api/examples/val_001")
    assert r.status_code == 201
    st = r.json()
    assert np.array_equal(rgb_of(client.get(st["labels_url"])), sample.labels)
    assert np.array_equal(rgb_of(client.get(st["image_url"])), syn.synthesize(sample.labels, sample.instances)[0])
    assert client.get("/api/examples/val_001/thumbnail.png").status_code == 200
    assert client.get("/api/images/train_000/thumbnail.png").status_code == 200


# --------------------------------------------------------------------------- bad input
def _png_header_only(w: int, h: int) -> bytes:
    """A PNG signature + IHDR declaring w×h (a decompression bomb's first bytes)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    crc = zlib.crc32(b"IHDR" + ihdr)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", crc) + b"\0" * 64


def test_bad_input_is_a_4xx_json_error_and_the_server_keeps_serving(client):
    lab, inst = unseen_map(seed=8)
    mid = open_map(client, lab)["map_id"]

    def post(files, url="/api/maps", method="post"):
        return getattr(client, method)(url, files=files)

    cases = [
        (post({"labels": ("l.png", b"GIF89a not a png", "image/png")}), 415, "not a PNG"),
        (post({"labels": ("l.png", cv2.imencode(".png", np.dstack([lab, lab * 2, lab]).astype(np.uint8))[1].tobytes(),
                          "image/png")}), 400, "not a class map"),
        (post({"labels": ("l.png", png(np.where(lab == 1, 77, lab)), "image/png")}), 400, "77 not in the class list"),
        (post({"labels": ("l.png", png(lab), "image/png"), "instances": ("i.png", png(inst[:10]), "image/png")}), 400,
         "does not match"),
        (post({"labels": ("l.png", _png_header_only(5000, 4000), "image/png")}), 413, "20.0 Mpx is over the limit of 16 Mpx"),
        (post({"labels": ("l.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image/png")}), 415, "not a PNG"),
        (post({"labels": ("l.png", b"", "image/png")}), 400, "empty"),
        (post({}), 422, "labels"),
        (post({"labels": ("l.png", b"junk", "image/png")}, f"/api/maps/{mid}/labels", "put"), 415, "not a PNG"),
        (client.put(f"/api/maps/{mid}/ranks", json={"rank": -1}), 400, "rank must be"),
        (client.put(f"/api/maps/{mid}/ranks", json={"rank": True}), 400, "rank must be"),
        (client.put(f"/api/maps/{mid}/ranks", json={"rank": "2"}), 400, "rank must be"),
        (client.put(f"/api/maps/{mid}/ranks", json=[1]), 400, "JSON object"),
        (client.put(f"/api/maps/{mid}/ranks", content=b"{not json", headers={"content-type": "application/json"}),
         422, ""),
        (client.put(f"/api/maps/{mid}/segments/0", json={}), 400, "JSON object"),
        (client.put(f"/api/maps/{mid}/reference", json={"image_id": 5}), 400, "string or null"),
        (client.put(f"/api/maps/{mid}/reference", json={"image_id": "val_000"}), 404, "not a reference image"),
        (client.put(f"/api/maps/{mid}/segments/abc", json={"rank": 1}), 422, "index"),
        (client.get(f"/api/maps/{mid}/segment_at?x=a&y=1"), 422, "x"),
    ]
    for r, status, text in cases:
        assert r.status_code == status, (r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")
        assert text in r.json()["error"], r.json()
    # unknown ids → 404 with a JSON error, for every kind of id
    for method, url in [("get", "/api/maps/nope"), ("get", "/api/maps/nope/image.png"),
                        ("put", "/api/maps/nope/ranks"), ("get", f"/api/maps/{mid}/segments/999/candidates"),
                        ("put", f"/api/maps/{mid}/segments/999"), ("get", f"/api/maps/{mid}/segments/999/mask.png"),
                        ("get", f"/api/maps/{mid}/history/99/thumbnail.png"),
                        ("post", f"/api/maps/{mid}/history/99/restore"), ("get", f"/api/maps/{mid}/instances.png"),
                        ("post", "/api/examples/train_000"), ("post", "/api/examples/..%2F..%2Fetc%2Fpasswd"),
                        ("get", "/api/examples/nope/thumbnail.png"), ("get", "/api/images/val_000/thumbnail.png"),
                        ("get", "/api/segments/999999/thumbnail.png"), ("get", "/api/segments/-1/source.png"),
                        ("get", "/api/nothing")]:
        kw = {"json": {"rank": 0}} if method == "put" else {}
        r = getattr(client, method)(url, **kw)
        assert r.status_code == 404, (url, r.status_code, r.text)
        assert "error" in r.json()
    assert client.get("/api/health").json() == {"status": "ok"}
    assert client.get(f"/api/maps/{mid}").status_code == 200  # the map survived every bad request


def test_decode_index_png_follows_read_index_map(tmp_path):
    from pipeline.datasets.base import read_index_map

    a16 = (np.arange(12 * 9).reshape(9, 12) * 500).astype(np.uint16)
    grey_rgb = np.repeat((np.arange(20).reshape(4, 5) % 7).astype(np.uint8)[:, :, None], 3, 2)
    for arr in (a16, grey_rgb):
        p = tmp_path / "m.png"
        cv2.imwrite(str(p), arr)
        assert np.array_equal(decode_index_png(p.read_bytes(), "m", 10 ** 6), read_index_map(p))
    assert np.array_equal(decode_index_png(encode_index(a16), "m", 10 ** 6), a16)


# --------------------------------------------------------------------------- bounds
def test_sessions_are_bounded_oldest_evicted(syn):
    c = TestClient(create_app(syn, max_maps=2))
    lab, _ = unseen_map(seed=3)
    ids = [open_map(c, lab)["map_id"] for _ in range(3)]
    assert c.get(f"/api/maps/{ids[0]}").status_code == 404
    assert "evicted" in c.get(f"/api/maps/{ids[0]}").json()["error"]
    # touching a map keeps it: the least recently *used* one goes
    assert c.get(f"/api/maps/{ids[1]}").status_code == 200
    ids.append(open_map(c, lab)["map_id"])
    assert [c.get(f"/api/maps/{i}").status_code for i in ids] == [404, 200, 404, 200]
    # memory bound: with room for about one map, only the newest stays
    small = TestClient(create_app(syn, max_bytes=1))
    a, b = open_map(small, lab)["map_id"], open_map(small, lab)["map_id"]
    assert small.get(f"/api/maps/{a}").status_code == 404 and small.get(f"/api/maps/{b}").status_code == 200
    assert small.app.state.studio.store.evicted == 1
    # the pixel limit is configurable
    tiny = TestClient(create_app(syn, max_pixels=100))
    r = tiny.post("/api/maps", files={"labels": ("l.png", png(lab), "image/png")})
    assert r.status_code == 413 and "over the limit" in r.json()["error"]


def test_session_store_unit():
    class Fake:
        def __init__(self, i, n):
            self.map_id, self.nbytes = i, n

    s = SessionStore(max_maps=3, max_bytes=100)
    for i, n in enumerate([10, 20, 30]):
        s.add(Fake(str(i), n))
    s.get("0")
    s.add(Fake("3", 50))  # 4 maps > 3: the LRU one ("1") goes; then 90 bytes, 3 maps: both bounds hold
    assert [k for k in ("0", "1", "2", "3") if k in s] == ["0", "2", "3"] and s.evicted == 1
    s.add(Fake("4", 45))  # 4 maps and 135 bytes: "2" (least recently used) goes, then 105 bytes: "0" goes
    assert [k for k in ("0", "2", "3", "4") if k in s] == ["3", "4"] and s.evicted == 3
    s.add(Fake("big", 1000))  # alone over the bound: kept (the newest is never evicted), the rest go
    assert len(s) == 1 and "big" in s and s.evicted == 5
    with pytest.raises(KeyError):
        s.get("0")


def test_studio_command_binds_localhost_by_default():
    from stages.studio import command

    opts = {o.name: o for o in command.params}
    assert opts["host"].default == "127.0.0.1" and opts["port"].default == 8765
    assert {"run", "cache", "checkpoint", "device"} <= set(opts)


def test_studio_command_passes_checkpoint_and_fails_in_one_line(srun, tmp_path):
    from click.testing import CliRunner

    from stages.cli import main

    res = CliRunner().invoke(main, ["studio", "--run", str(srun[0]), "--cache", str(srun[1]), "--checkpoint",
                                    str(tmp_path / "missing.pt"), "--device", "cpu"])
    assert res.exit_code == 1 and res.output.startswith("error: ") and "missing.pt" in res.output
    assert "Traceback" not in res.output
