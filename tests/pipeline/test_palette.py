"""Colour label maps: the published palettes, one id per shared colour, stray colours refused in one line,
the folder adapter's ``palette`` option, ``resail labels check``, and — on a tiny Cityscapes run — colour
label maps that synthesize exactly what their id maps (taken through the palette and back) synthesize."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from pipeline.errors import ConfigError, DataError
from tests.conftest import SHARED_DATA
from tests.fixtures.toy_dataset import TOY_CLASSES, make_toy_dataset
from tests.fixtures.tiny_run import TINY_RUN_CONFIG

pytestmark = pytest.mark.usefixtures("one_thread")


def cli():
    from stages.cli import main

    return main


def _write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1])), path
    return path


def _write_ids(path: Path, ids: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), ids.astype(np.uint8)), path
    return path


TOY_COLOURS = {0: (70, 130, 180), 1: (128, 64, 128), 2: (107, 142, 35), 3: (0, 0, 142), 4: (220, 20, 60),
               255: (0, 0, 0)}


def _toy_palette(path: Path) -> Path:
    d = {"name": "toy", "void_id": 255, "classes": [{"id": i, "name": n, "color": list(TOY_COLOURS[i])}
                                                    for i, n in [(c["id"], c["name"]) for c in TOY_CLASSES["classes"]]
                                                    + [(255, "void")]]}
    path.write_text(json.dumps(d))
    return path


# --------------------------------------------------------------------------- the published palettes
def test_published_palettes_and_their_shared_colours():
    from pipeline.datasets.palette import load_palette

    cs = load_palette("cityscapes")
    assert cs.colors[7] == (128, 64, 128) and cs.colors[26] == (0, 0, 142) and cs.colors[23] == (70, 130, 180)
    assert cs.colors[33] == (119, 11, 32) and len(cs.colors) == 34  # labelIds 0..33 (labels.py)
    # shared colours read as ONE documented id: the one the evaluation scores, else the first listed
    assert cs.lookup[0x000000] == 0 and cs.lookup[(153 << 16) | (153 << 8) | 153] == 17
    assert cs.lookup[142] == 26
    assert cs.inexpressible(np.arange(34)) == {1: 0, 2: 0, 3: 0, 4: 0, 18: 17}
    ade = load_palette("ade20k")
    assert ade.colors[1] == (120, 120, 120) and ade.colors[150] == (92, 0, 255) and ade.colors[0] == (0, 0, 0)
    assert ade.inexpressible(np.arange(151)) == {49: 7}  # road and skyscraper share (140, 140, 140)
    coco = load_palette("coco-stuff")
    assert coco.lookup[0] == 255 and coco.void_id == 255
    assert set(coco.inexpressible(np.arange(91))) == set(range(91))  # getCMap paints every thing black
    assert coco.inexpressible(np.arange(91, 182)) == {116: 99}
    for p in (cs, ade, coco):
        assert p.source and all(0 <= v <= 255 for c in p.colors.values() for v in c)


def test_decode_encode_and_a_stray_colour_in_one_line(tmp_path):
    from pipeline.datasets.palette import load_palette, read_label_map

    cs = load_palette("cityscapes")
    ids = np.array([[7, 7, 26, 0], [11, 17, 23, 24]])
    rgb = cs.encode(ids)
    assert np.array_equal(cs.decode(rgb), ids)
    f = _write_rgb(tmp_path / "map.png", rgb)
    assert np.array_equal(read_label_map(f, cs), ids)
    bad = rgb.copy()
    bad[0, :2] = (1, 2, 3)
    f2 = _write_rgb(tmp_path / "stray.png", bad)
    with pytest.raises(DataError) as e:
        read_label_map(f2, cs)
    msg = str(e.value)
    assert msg.count("\n") == 0 and str(f2) in msg and "(1, 2, 3)" in msg and "(2 px)" in msg
    assert "nearest: (0, 0, 0) = unlabeled (0)" in msg
    # single-channel files stay ids with a palette; an RGB-saved id map whose grey levels are not all
    # palette colours is ids too; a grey-looking colour map (building, pole) is read as colours
    _write_ids(tmp_path / "ids.png", ids)
    assert np.array_equal(read_label_map(tmp_path / "ids.png", cs), ids)
    grey_ids = np.repeat(ids[:, :, None].astype(np.uint8), 3, axis=2)
    _write_rgb(tmp_path / "grey_ids.png", grey_ids)
    assert np.array_equal(read_label_map(tmp_path / "grey_ids.png", cs), ids)
    grey_colours = cs.encode(np.array([[11, 17], [0, 11]]))
    _write_rgb(tmp_path / "grey_colours.png", grey_colours)
    assert np.array_equal(read_label_map(tmp_path / "grey_colours.png", cs), [[11, 17], [0, 11]])
    # a run in the 19-trainId space gets trainIds
    from pipeline.datasets import cityscapes

    assert read_label_map(f, cs, meta=cityscapes.TRAIN_ID_META).tolist() == [[0, 0, 13, 255], [2, 5, 10, 11]]


def test_palette_files_of_ones_own(tmp_path):
    from pipeline.datasets.palette import load_palette

    p = load_palette(_toy_palette(tmp_path / "toy.json"))
    assert p.name == "toy" and p.colors[3] == (0, 0, 142) and p.lookup[0] == 255
    (tmp_path / "bad.json").write_text(json.dumps({"classes": [{"id": 1, "color": [300, 0, 0]}]}))
    with pytest.raises(ConfigError, match="must be \\[r, g, b\\]"):
        load_palette(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="not one of cityscapes, ade20k, coco-stuff"):
        load_palette(tmp_path / "nope.json")
    assert load_palette(None) is None and load_palette("none") is None


def test_folder_adapter_reads_colour_labels(tmp_path):
    from pipeline.datasets import open_dataset
    from pipeline.datasets.palette import load_palette

    ids_root = make_toy_dataset(tmp_path / "ids", n_train=2, n_val=1, instances=False)
    col_root = tmp_path / "colours"
    shutil.copytree(ids_root, col_root)
    pal_file = _toy_palette(tmp_path / "toy.json")
    pal = load_palette(pal_file)
    for f in (col_root / "train" / "labels").glob("*.png"):
        _write_rgb(f, pal.encode(cv2.imread(str(f), cv2.IMREAD_UNCHANGED)))
    a = open_dataset("folder", ids_root)
    b = open_dataset("folder", col_root, {"palette": str(pal_file)})
    assert a.options == {} and b.options == {"palette": str(pal_file)}
    for ra, rb in zip(a.refs("train"), b.refs("train")):
        assert np.array_equal(a.load(ra).labels, b.load(rb).labels)
    with pytest.raises(DataError, match="single-channel"):
        open_dataset("folder", col_root).load(a.refs("train")[0].__class__(**{**a.refs("train")[0].__dict__,
                                                                            "label": b.refs("train")[0].label}))
    with pytest.raises(ConfigError, match="--palette"):
        open_dataset("folder", col_root, {"palette": "no-such-palette"})


# --------------------------------------------------------------------------- resail labels check
def test_labels_check_command(tmp_path):
    root = make_toy_dataset(tmp_path / "toy", n_train=2, n_val=1, instances=False)
    pal_file = _toy_palette(tmp_path / "toy.json")
    runner = CliRunner()
    r = runner.invoke(cli(), ["labels", "check", str(root / "train" / "labels"), "--dataset",
                              f"folder:{root / 'classes.json'}"])
    assert r.exit_code == 0, r.output
    assert "look like class ids" in r.output and "| 1 | road |" in r.output
    assert "every label map matches its image" in r.output
    # colour maps, one stray colour, one size mismatch
    from pipeline.datasets.palette import load_palette

    pal = load_palette(pal_file)
    lab_dir = root / "val" / "labels"
    f = next(lab_dir.glob("*.png"))
    rgb = pal.encode(cv2.imread(str(f), cv2.IMREAD_UNCHANGED))
    rgb[0, 0] = (9, 9, 250)
    _write_rgb(f, rgb)
    cv2.imwrite(str(root / "val" / "images" / f.name), np.zeros((10, 10, 3), np.uint8))
    r = runner.invoke(cli(), ["labels", "check", str(lab_dir), "--palette", str(pal_file)])
    assert r.exit_code == 1, r.output
    assert "look like colours" in r.output and "unknown colours: (9, 9, 250) (1 px)" in r.output
    assert "nearest to (9, 9, 250)" in r.output and "size differs from the image" in r.output
    r = runner.invoke(cli(), ["labels", "check", str(lab_dir)])
    assert r.exit_code == 1 and "pass --palette" in r.output, r.output


def test_labels_check_warns_what_a_colour_map_cannot_express(tmp_path, shared_data):
    from pipeline.resize import resize_index_map

    src = shared_data / "cityscapes_label_maps" / "labels"
    out = tmp_path / "labels"
    for f in sorted(src.glob("*.png"))[:3]:
        _write_ids(out / f.name, resize_index_map(cv2.imread(str(f), cv2.IMREAD_UNCHANGED), 128, 256))
    r = CliRunner().invoke(cli(), ["labels", "check", str(out), "--dataset", "cityscapes"])
    assert r.exit_code == 0, r.output
    assert "look like class ids" in r.output and "| 26 | car |" in r.output
    assert "warning: a cityscapes colour map cannot express ids used here:" in r.output
    assert "reads back as 0" in r.output  # e.g. ego vehicle (1) / static (4) are painted black like unlabeled


# --------------------------------------------------------------------------- a tiny Cityscapes run
@pytest.fixture(scope="module")
def cityscapes_run(tmp_path_factory):
    """(run, cache, label maps) of a 1-step run on 8 Cityscapes label maps (32×64) with random photos."""
    shared = SHARED_DATA / "cityscapes_label_maps" / "labels"
    if not shared.is_dir():
        pytest.skip(f"the Cityscapes label maps are not present at {shared} (../shared relative to the repo)")
    from pipeline.compose.build import compose_dataset
    from pipeline.datasets import cityscapes, open_dataset
    from pipeline.decompose.build import build_segment_db
    from pipeline.distort.build import DistortParams, build_distortions
    from pipeline.resize import resize_index_map
    from pipeline.retrieve.build import run_retrieval
    from resail_train.config import load_config
    from resail_train.training.trainer import TrainOptions, train

    base = tmp_path_factory.mktemp("cs_run")
    root = base / "data"
    root.mkdir()
    (root / "classes.json").write_text(json.dumps(cityscapes.LABEL_ID_META.to_dict()))
    maps = {f.stem: cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in sorted(shared.glob("*.png"))}
    rng = np.random.default_rng(0)
    for i, (stem, lab) in enumerate(list(maps.items())[:8]):
        split = "train" if i < 6 else "val"
        _write_ids(root / split / "labels" / f"{stem}.png", resize_index_map(lab, 32, 64))
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / split / "images" / f"{stem}.png"), rng.integers(0, 256, (32, 64, 3), dtype=np.uint8))
    cache = base / "cache"
    build_segment_db(open_dataset("folder", root), cache, progress=False)
    run_retrieval(cache, progress=False)
    compose_dataset(cache, progress=False)
    build_distortions(cache, DistortParams(variants=1), progress=False)
    cfg_d = json.loads(json.dumps(TINY_RUN_CONFIG))
    cfg_d["data"]["crop_size"] = [32, 64]
    (base / "tiny.yaml").write_text(yaml.safe_dump(cfg_d))
    cfg = load_config(base / "tiny.yaml", ["loss.lambda_seg=0"])
    run = base / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cache, run, cfg, TrainOptions(max_steps=1, progress=False, device="cpu"))
    finally:
        torch.set_num_threads(n)
    return run, cache, maps


def test_colour_maps_synthesize_like_their_id_maps(cityscapes_run, tmp_path):
    """Colour versions of the Cityscapes label maps (made with the official palette) synthesize exactly what
    their id maps, taken through the palette and back, synthesize; a stray colour is refused in one line."""
    from pipeline.datasets.palette import load_palette
    from pipeline.resize import resize_index_map

    run, cache, maps = cityscapes_run
    pal = load_palette("cityscapes")
    colour_dir, ids_dir = tmp_path / "colour", tmp_path / "ids"
    changed = 0
    for stem, lab in list(maps.items())[-4:]:
        lab = resize_index_map(lab, 64, 128)
        rgb = pal.encode(lab)
        _write_rgb(colour_dir / f"{stem}.png", rgb)
        back = pal.decode(rgb)  # the id map through the palette and back (ids 1-4 → 0, 18 → 17)
        changed += int((back != lab).sum())
        _write_ids(ids_dir / f"{stem}.png", back)
    assert changed > 0  # the maps use ids that share a colour: the round trip is not the identity
    runner = CliRunner()
    common = ["--run", str(run), "--cache", str(cache), "--device", "cpu", "--no-progress"]
    r = runner.invoke(cli(), ["synthesize", "--labels", str(colour_dir), "--palette", "cityscapes",
                              "--out", str(tmp_path / "from_colour")] + common)
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli(), ["synthesize", "--labels", str(ids_dir), "--out", str(tmp_path / "from_ids")] + common)
    assert r.exit_code == 0, r.output
    outs = sorted(p.name for p in (tmp_path / "from_ids").glob("*.png"))
    assert len(outs) == 4 and outs == sorted(p.name for p in (tmp_path / "from_colour").glob("*.png"))
    for name in outs:
        a = cv2.imread(str(tmp_path / "from_colour" / name))
        b = cv2.imread(str(tmp_path / "from_ids" / name))
        assert a.shape == (64, 128, 3) and np.array_equal(a, b), name
    # without --palette a colour map is refused; with it, a stray colour is one line and nothing is written
    r = runner.invoke(cli(), ["synthesize", "--labels", str(colour_dir / outs[0]), "--out",
                              str(tmp_path / "x.png")] + common)
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "single-channel" in r.output, r.output
    stray = cv2.imread(str(colour_dir / outs[0]))
    stray[5, 5] = (3, 2, 1)  # BGR of the RGB colour (1, 2, 3)
    cv2.imwrite(str(colour_dir / outs[0]), stray)
    r = runner.invoke(cli(), ["synthesize", "--labels", str(colour_dir), "--palette", "cityscapes",
                              "--out", str(tmp_path / "stray")] + common)
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert outs[0] in r.output and "(1, 2, 3) (1 px)" in r.output and "nearest:" in r.output
    assert not (tmp_path / "stray").exists() or not list((tmp_path / "stray").iterdir())


def test_studio_upload_with_a_palette(cityscapes_run, tmp_path):
    pytest.importorskip("httpx", reason="httpx (the test client's transport) is not installed")
    from fastapi.testclient import TestClient

    from pipeline.datasets.palette import load_palette
    from pipeline.resize import resize_index_map
    from resail_studio.server import create_app
    from resail_train.synthesis import Synthesizer

    run, cache, maps = cityscapes_run
    pal = load_palette("cityscapes")
    lab = resize_index_map(next(iter(maps.values())), 32, 64)
    ok, png = cv2.imencode(".png", np.ascontiguousarray(pal.encode(lab)[:, :, ::-1]))
    with Synthesizer.load(run, cache, device="cpu") as syn:
        client = TestClient(create_app(syn, palette=pal))
        r = client.post("/api/maps", files={"labels": ("l.png", png.tobytes(), "image/png")})
        assert r.status_code == 201, r.text
        got = client.get(f"/api/maps/{r.json()['map_id']}/labels.png")
        ids = cv2.imdecode(np.frombuffer(got.content, np.uint8), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(ids, pal.decode(pal.encode(lab)))
        bad = pal.encode(lab)
        bad[0, 0] = (1, 2, 3)
        _, png2 = cv2.imencode(".png", np.ascontiguousarray(bad[:, :, ::-1]))
        r = client.post("/api/maps", files={"labels": ("l.png", png2.tobytes(), "image/png")})
        assert r.status_code == 400 and "(1, 2, 3) (1 px)" in r.json()["error"]
        plain = TestClient(create_app(syn))  # without a palette: a colour upload is not a class map
        r = plain.post("/api/maps", files={"labels": ("l.png", png.tobytes(), "image/png")})
        assert r.status_code == 400 and "colour" in r.json()["error"]
