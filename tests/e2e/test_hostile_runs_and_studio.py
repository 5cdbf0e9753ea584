"""Hostile input against the run folder and the studio, each case reproduced end to end on tiny data:

* studio: a source image wider than the 200 px thumbnail (the demo's 240×180), ranks a JSON
  integer can carry but int64 cannot, ranks beyond the retrieval's k, seeds beyond 2**63, and one
  busy map holding up every other map;
* training: two ``train`` into one run folder, a non-positive ``max_steps``, a resume with another
  config, and a full disk while writing a checkpoint or a stage cache (compose, distort).
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import threading
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
import yaml

from pipeline import cache
from pipeline.datasets import open_dataset
from pipeline.datasets.base import read_image_rgb
from pipeline.decompose.build import DecomposeParams, build_segment_db
from pipeline.errors import BusyError, CacheError, ConfigError
from pipeline.resize import resize_image
from pipeline.retrieve.build import run_retrieval
from tests.fixtures.toy_dataset import TOY_CLASSES, make_toy_dataset, toy_label_map
from tests.fixtures.tiny_run import unseen_map

pytestmark = pytest.mark.usefixtures("one_thread")

fastapi = pytest.importorskip("fastapi", reason="fastapi is not installed (pip install -e .[dev])")
pytest.importorskip("httpx", reason="httpx (the test client's transport) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from resail_studio.pngio import encode_index  # noqa: E402
from resail_studio.server import create_app  # noqa: E402

ENOSPC_TEXT = os.strerror(errno.ENOSPC)  # "No space left on device"
WAIT = 60  # seconds an event may take to come (a bound against hanging, never a measurement)


def one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def files_of(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tmp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".tmp"))


# =========================================================================== studio
# ``run`` and ``syn`` (the tiny trained run and a Synthesizer on it) come from tests/conftest.py.
@pytest.fixture(scope="module")
def client(syn):
    return TestClient(create_app(syn))


def png(arr: np.ndarray) -> bytes:
    return encode_index(arr)


def open_map(c, lab, inst=None) -> dict:
    files = {"labels": ("l.png", png(lab), "image/png")}
    if inst is not None:
        files["instances"] = ("i.png", png(inst), "image/png")
    r = c.post("/api/maps", files=files)
    assert r.status_code == 201, r.text
    return r.json()


def decode_png(content: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
    return img[:, :, ::-1] if img.ndim == 3 and img.shape[2] == 3 else img


# --------------------------------------------------------------------------- source image of a 240×180 frame
def make_sized_dataset(root: Path, h: int, w: int, n_train: int = 3, n_val: int = 1) -> Path:
    """The toy classes at another size (the demo's frames are 240×180)."""
    import json

    rng = np.random.default_rng(11)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps(TOY_CLASSES))
    for split, n in (("train", n_train), ("val", n_val)):
        for sub in ("images", "labels", "instances"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            lab, inst = toy_label_map(rng, h, w)
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            stem = f"{split}_{i:03d}"
            cv2.imwrite(str(root / split / "images" / f"{stem}.png"), img)
            cv2.imwrite(str(root / split / "labels" / f"{stem}.png"), lab)
            cv2.imwrite(str(root / split / "instances" / f"{stem}.png"), inst)
    return root


def test_segment_source_of_a_240x180_image_is_the_shrunk_frame_with_the_box(run, tmp_path):
    from resail_train.synthesis import Synthesizer

    data = make_sized_dataset(tmp_path / "frames", 180, 240)
    cache_dir = tmp_path / "cache"
    build_segment_db(open_dataset("folder", data), cache_dir, progress=False)
    run_retrieval(cache_dir, progress=False)
    with Synthesizer.load(run[0], cache_dir, device="cpu") as syn:
        c = TestClient(create_app(syn))
        db = syn.online.db
        cand = np.flatnonzero(np.asarray(db.col("candidate"), bool))
        sid = int(cand[0])
        image_id, split = str(db.col("image_id")[sid]), str(db.col("split")[sid])
        box = [int(db.col(k)[sid]) for k in ("y0", "x0", "y1", "x1")]
        src = data / split / "images" / f"{image_id}.png"
        before = src.read_bytes()
        r = c.get(f"/api/segments/{sid}/source.png")
        assert r.status_code == 200, r.text
        got = decode_png(r.content)
    # 240×180 → at most 200 px wide: 200×150, the frame resized by the project's resizer ...
    assert got.shape == (150, 200, 3)
    want = resize_image(read_image_rgb(src), 150, 200)
    scale = 150 / 180
    y0, x0, y1, x1 = (int(round(v * scale)) for v in box)
    outline = np.zeros((150, 200), bool)
    cv2.rectangle(outline.view(np.uint8), (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), 1, 2)
    # ... everywhere except on the segment's box, which is drawn in the highlight colour
    assert np.array_equal(got[~outline], want[~outline])
    assert (got[outline] == (255, 230, 0)).all()
    assert src.read_bytes() == before  # drawn on a copy, never on the sample


# --------------------------------------------------------------------------- ranks
def test_rank_past_int64_or_past_k_is_a_422_and_the_map_keeps_working(client, syn):
    k = int(syn.online.params.k)
    lab, inst = unseen_map(seed=21)
    st = open_map(client, lab, inst)
    mid = st["map_id"]
    q = next(s["index"] for s in st["segments"] if s["n_candidates"] >= 2)
    for url in (f"/api/maps/{mid}/ranks", f"/api/maps/{mid}/segments/{q}"):
        for rank in (10 ** 30, 2 ** 63, k):
            r = client.put(url, json={"rank": rank})
            assert r.status_code == 422, (url, rank, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/json")
            assert f"rank must be in 0..{k - 1}" in r.json()["error"]
    # nothing was stored: the map is as it was opened, and later edits of it work
    again = client.get(f"/api/maps/{mid}")
    assert again.status_code == 200
    assert again.json()["rank"] == 0 and again.json()["overrides"] == {} and len(again.json()["history"]) == 1
    ok = client.put(f"/api/maps/{mid}/ranks", json={"rank": k - 1})
    assert ok.status_code == 200 and ok.json()["rank"] == k - 1
    ok = client.put(f"/api/maps/{mid}/segments/{q}", json={"rank": 1})
    assert ok.status_code == 200 and ok.json()["overrides"] == {str(q): 1}
    assert client.get(f"/api/maps/{mid}/image.png").status_code == 200


def test_check_rank_is_the_bound_the_cli_can_share(syn):
    from resail_studio.editor import RANK_LIMIT, MapEdit, check_rank

    assert check_rank(9, 10) == 9 and check_rank(np.int64(0), 10) == 0
    assert check_rank(RANK_LIMIT - 1) == RANK_LIMIT - 1
    for bad, k in ((10, 10), (-1, 10), (10 ** 30, 10), (RANK_LIMIT, None), (1.0, 10), (True, 10), ("1", 10)):
        with pytest.raises(ConfigError) as e:
            check_rank(bad, k, what="--rank")
        assert one_line(e.value).startswith("--rank must be"), str(e.value)
    assert "more than 4300 digits" in str(pytest.raises(ConfigError, check_rank, 10 ** 5000, 10).value)
    # the editor itself refuses before storing anything (a library caller, not only the server)
    lab, inst = unseen_map(seed=22)
    e = MapEdit("m", syn, lab, inst)
    state = e.state()
    with pytest.raises(ConfigError):
        e.set_rank(10 ** 30)
    with pytest.raises(ConfigError):
        e.set_segment_rank(0, 10 ** 30)
    assert e.state() == state


def test_an_edit_that_fails_half_way_leaves_the_map_as_it_was(syn, monkeypatch):
    from resail_studio.editor import MapEdit

    lab, inst = unseen_map(seed=23)
    e = MapEdit("m", syn, lab, inst)
    state, image = e.state(), e.image.copy()

    def broken(*a, **kw):
        raise RuntimeError("generator failed")

    monkeypatch.setattr(syn, "render", broken)
    painted = lab.copy()
    painted[30:40, 40:52] = 4
    for edit in (lambda: e.set_rank(1), lambda: e.set_segment_rank(0, 1), lambda: e.set_labels(painted)):
        with pytest.raises(RuntimeError):
            edit()
        assert e.state() == state and np.array_equal(e.image, image)
    monkeypatch.undo()
    e.set_rank(1)
    assert e.rank == 1 and len(e.history) == 2


# --------------------------------------------------------------------------- seeds
def test_seed_out_of_range_is_refused_at_start_in_one_line(syn):
    for bad in (10 ** 23, 2 ** 63, -1, 1.5):
        with pytest.raises(ConfigError) as e:
            create_app(syn, seed=bad)
        assert one_line(e.value).startswith("seed must be"), str(e.value)
    # the largest accepted seed synthesises
    c = TestClient(create_app(syn, seed=2 ** 63 - 1))
    st = open_map(c, *unseen_map(seed=24))
    assert c.get(st["image_url"]).status_code == 200


def test_studio_command_refuses_a_huge_seed_before_serving(run, monkeypatch):
    import uvicorn
    from click.testing import CliRunner

    from stages.cli import main

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: served.append(a))
    res = CliRunner().invoke(main, ["studio", "--run", str(run[0]), "--cache", str(run[1]), "--device", "cpu",
                                    "--seed", str(10 ** 23)])
    # refused by the option's range (0..2**63-1), as a click usage error: exit 2, no traceback
    assert res.exit_code == 2, res.output
    assert "Invalid value for '--seed'" in res.output and "Traceback" not in res.output, res.output
    assert served == []


# --------------------------------------------------------------------------- one lock per map
def test_a_second_maps_request_proceeds_while_the_first_map_is_busy(syn):
    c = TestClient(create_app(syn))
    studio = c.app.state.studio
    a = open_map(c, *unseen_map(seed=31))["map_id"]
    b = open_map(c, *unseen_map(seed=32))["map_id"]
    edit_a = studio.store.get(a)
    entered, release = threading.Event(), threading.Event()
    real_set_rank = edit_a.set_rank

    def slow_set_rank(rank):  # map A's edit is "long": it waits until the test lets it go
        entered.set()
        release.wait(WAIT)
        real_set_rank(rank)

    edit_a.set_rank = slow_set_rank
    results: dict[str, object] = {}

    def request(name, method, url, **kw):
        try:
            results[name] = getattr(c, method)(url, **kw)
        except BaseException as e:  # noqa: BLE001 - reported by the assertions below
            results[name] = e

    ta = threading.Thread(target=request, args=("a", "put", f"/api/maps/{a}/ranks"), kwargs={"json": {"rank": 1}})
    tb = threading.Thread(target=request, args=("b", "put", f"/api/maps/{b}/ranks"), kwargs={"json": {"rank": 1}})
    ta2 = threading.Thread(target=request, args=("a2", "get", f"/api/maps/{a}"))
    try:
        ta.start()
        assert entered.wait(WAIT), "map A's edit never started"
        tb.start()
        tb.join(WAIT)
        # map B was edited and synthesised while map A's edit was still running
        assert not tb.is_alive(), "map B's request waited for map A"
        assert ta.is_alive() and not release.is_set()
        rb = results["b"]
        assert not isinstance(rb, BaseException), rb
        assert rb.status_code == 200 and rb.json()["rank"] == 1, rb.text
        ta2.start()  # a second request on map A waits for A's edit, so it sees A after it
    finally:
        release.set()
        ta.join(WAIT)
        tb.join(WAIT)
        if ta2.ident is not None:
            ta2.join(WAIT)
    assert results["a"].status_code == 200 and results["a"].json()["rank"] == 1
    assert results["a2"].status_code == 200 and results["a2"].json()["rank"] == 1
    assert c.get(f"/api/maps/{b}").json()["rank"] == 1


def test_session_store_locks_one_map_at_a_time():
    from resail_studio.sessions import SessionStore

    class Fake:
        def __init__(self, i, n):
            self.map_id, self.nbytes = i, n

    s = SessionStore(max_maps=4, max_bytes=100)
    s.add(Fake("a", 10))
    s.add(Fake("b", 10))
    held, release, done = threading.Event(), threading.Event(), threading.Event()

    def hold_a():
        with s.session("a"):
            held.set()
            release.wait(WAIT)

    t = threading.Thread(target=hold_a)
    t.start()
    try:
        assert held.wait(WAIT)

        def use_b():
            with s.session("b") as e:
                assert e.map_id == "b"
            done.set()

        tb = threading.Thread(target=use_b)
        tb.start()
        tb.join(WAIT)
        assert done.is_set() and t.is_alive()  # b was used while a was held
    finally:
        release.set()
        t.join(WAIT)
    with pytest.raises(KeyError):
        with s.session("nope"):
            pass


# =========================================================================== training
@pytest.fixture(scope="module")
def train_cache(tmp_path_factory) -> Path:
    from tests.fixtures.train_cache import make_train_cache

    return make_train_cache(tmp_path_factory.mktemp("hostile_train") / "c", n_train=4, n_val=0, size=(32, 32), variants=1)


@pytest.fixture
def cfg(tmp_path):
    from resail_train.config import load_config
    from tests.fixtures.training import write_config, write_untrained_segnet

    write_untrained_segnet(tmp_path / "segnet.pt")
    return load_config(write_config(tmp_path / "tiny.yaml", data={"crop_size": [32, 32], "num_workers": 0},
                                    segnet={"path": str(tmp_path / "segnet.pt")},
                                    optim={"batch_size": 2, "epochs": 3, "decay_epochs": 1}))


def opts(**kw):
    from resail_train.training.trainer import TrainOptions

    return TrainOptions(progress=False, device="cpu", **kw)


@pytest.fixture
def trained(train_cache, cfg, tmp_path) -> Path:
    """A 2-step run (of the 6 the schedule has)."""
    from resail_train.training.trainer import train

    run_dir = tmp_path / "run"
    train(train_cache, run_dir, cfg, opts(max_steps=2))
    return run_dir


def outputs(run_dir: Path) -> dict:
    """The run's files (not the lock file, which records whoever holds it)."""
    return {k: v for k, v in files_of(run_dir).items() if not k.name.endswith(".lock")}


# --------------------------------------------------------------------------- two trainings, one folder
def test_a_second_training_into_a_busy_run_folder_refuses_in_one_line(train_cache, cfg, tmp_path, monkeypatch):
    from resail_train.training.trainer import Trainer, train

    run_dir = tmp_path / "run"
    entered, release = threading.Event(), threading.Event()
    first: dict[str, object] = {}
    real_save = Trainer._save

    def save(self, keep):  # the first training pauses at its first checkpoint
        if threading.current_thread().name == "first":
            entered.set()
            release.wait(WAIT)
        return real_save(self, keep)

    monkeypatch.setattr(Trainer, "_save", save)

    def go():
        try:
            first["result"] = train(train_cache, run_dir, cfg, opts(max_steps=2))
        except BaseException as e:  # noqa: BLE001
            first["result"] = e

    t = threading.Thread(target=go, name="first")
    t.start()
    try:
        assert entered.wait(WAIT), "the first training never reached its checkpoint"
        other = cfg.with_overrides(["seed=7"])
        with pytest.raises(BusyError) as e:
            train(train_cache, run_dir, other, opts(max_steps=2))
        msg = one_line(e.value)
        assert msg.startswith(f"{run_dir}: another run is writing it: pid {os.getpid()}"), msg
    finally:
        release.set()
        t.join(WAIT)
    res = first["result"]
    assert not isinstance(res, BaseException), res
    # the run is the first training's alone: its config, its checkpoint
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == cfg.seed
    ck = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert ck["step"] == 2 and ck["config"]["seed"] == cfg.seed
    assert tmp_files(run_dir) == []


def test_checkpoint_temp_names_are_unique_to_the_writer(tmp_path):
    from resail_train import checkpoint as ckpt

    target = tmp_path / "checkpoints" / "latest.pt"
    target.parent.mkdir()
    foreign = target.with_name("latest.pt.tmp")  # another writer's half-written file (the old fixed name)
    foreign.write_bytes(b"half")
    ckpt.save_atomic({"w": torch.arange(4)}, target)
    assert foreign.read_bytes() == b"half"
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(4))
    ckpt.save_training_checkpoint(tmp_path, {"w": torch.arange(3)}, 5, keep=True)
    assert torch.equal(torch.load(tmp_path / "checkpoints" / "step_0000005.pt", weights_only=True)["w"],
                       torch.arange(3))
    assert tmp_files(tmp_path) == [foreign]


# --------------------------------------------------------------------------- max_steps <= 0
@pytest.mark.parametrize("steps", [-5, 0])
def test_non_positive_max_steps_is_refused_before_the_run_folder_is_touched(trained, train_cache, cfg, steps):
    from resail_train.training.trainer import train

    before = outputs(trained)
    with pytest.raises(ConfigError) as e:
        train(train_cache, trained, cfg, opts(max_steps=steps))
    assert one_line(e.value) == f"max_steps (--max-steps) must be a whole number >= 1, got {steps}"
    assert outputs(trained) == before


# --------------------------------------------------------------------------- resume with another config
def test_resume_with_another_config_is_refused_naming_each_difference(trained, train_cache, cfg, capfd):
    from resail_train.training.trainer import train

    before = outputs(trained)
    changed = cfg.with_overrides(["seed=7", "optim.lr_G=0.001"])
    with pytest.raises(ConfigError) as e:
        train(train_cache, trained, changed, opts(max_steps=3, resume=True))
    msg = one_line(e.value)
    assert msg.startswith(f"{trained / 'checkpoints' / 'latest.pt'}: checkpoint was trained with another config: ")
    assert f"optim.lr_G: {cfg.optim.lr_G} → 0.001; seed: {cfg.seed} → 7;" in msg, msg
    assert "--allow-config-change" in msg
    assert outputs(trained) == before
    # explicitly allowed: the run goes on with the new config, and says what changed
    capfd.readouterr()
    res = train(train_cache, trained, changed, opts(max_steps=3, resume=True, allow_config_change=True))
    assert res.step == 3
    assert "resuming with a changed config (allowed): optim.lr_G" in capfd.readouterr().err
    assert yaml.safe_load((trained / "config.yaml").read_text())["seed"] == 7
    # what does not change the training (the config's name, logging cadence) may change freely
    cosmetic = changed.with_overrides(["log.scalar_every=5", "log.sample_every=3", "name=renamed"])
    assert train(train_cache, trained, cosmetic, opts(max_steps=4, resume=True)).step == 4


def test_config_differences_lists_changed_and_missing_keys():
    from resail_train.training.trainer import config_differences

    assert config_differences({"a": {"b": 1}, "log": {"x": 1}}, {"a": {"b": 2, "c": 3}, "log": {"x": 2}}) == \
        [("a.b", 1, 2), ("a.c", "(absent)", 3)]


# --------------------------------------------------------------------------- a full disk
def _enospc(filename=None):
    return OSError(errno.ENOSPC, ENOSPC_TEXT, None if filename is None else str(filename))


def assert_disk_full_line(msg: str, path: Path) -> None:
    assert msg.startswith(f"{path}: {ENOSPC_TEXT.lower()} while writing it ("), msg
    assert re.search(r"\(\d+(\.\d)? (B|kB|MB|GB|TB) free there, (about \d+(\.\d)? (B|kB|MB|GB|TB) needed|more needed)\)",
                     msg), msg


def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(trained, train_cache, cfg, monkeypatch):
    from resail_train.training.trainer import train

    before = outputs(trained)
    real_save = torch.save

    def full_disk_save(obj, f, *a, **kw):
        if hasattr(f, "write"):
            f.write(b"partial checkpoint bytes")
            raise _enospc()
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk_save)
    with pytest.raises(CacheError) as e:
        train(train_cache, trained, cfg, opts(max_steps=3, resume=True))
    assert_disk_full_line(one_line(e.value), trained / "checkpoints" / "latest.pt")
    after = outputs(trained)
    for name in ("checkpoints/latest.pt", "checkpoints/step_0000002.pt", "generator.pt", "config.yaml"):
        assert after[Path(name)] == before[Path(name)], name
    assert tmp_files(trained) == []


@pytest.fixture(scope="module")
def stage_cache(tmp_path_factory) -> dict:
    """decompose → retrieve → compose → distort on 4+2 toy images; tests copy it."""
    from pipeline.compose.build import compose_dataset
    from pipeline.distort.build import DistortParams, build_distortions

    base = tmp_path_factory.mktemp("fulldisk")
    data = make_toy_dataset(base / "toy", n_train=4, n_val=2, seed=5)
    cache_dir = base / "cache"
    build_segment_db(open_dataset("folder", data), cache_dir, params=DecomposeParams(min_area=4), progress=False)
    run_retrieval(cache_dir, progress=False)
    compose_dataset(cache_dir, progress=False)
    build_distortions(cache_dir, DistortParams(variants=1), progress=False)
    return {"data": data, "cache": cache_dir}


@pytest.fixture
def stage_copy(stage_cache, tmp_path) -> Path:
    data, cache_dir = tmp_path / "toy", tmp_path / "cache"
    shutil.copytree(stage_cache["data"], data)
    shutil.copytree(stage_cache["cache"], cache_dir)
    with h5py.File(cache_dir / cache.SEGMENTS_H5, "r+") as f:
        f.attrs["data_root"] = str(data)
    return cache_dir


def test_full_disk_during_compose_is_one_line_and_keeps_the_previous_guidance(stage_copy, monkeypatch):
    from pipeline.compose.build import compose_dataset

    before = files_of(stage_copy)

    def full(f, *a, **kw):
        raise _enospc(f.filename)

    monkeypatch.setattr(cache, "stamp_h5", full)
    with pytest.raises(CacheError) as e:
        compose_dataset(stage_copy, progress=False)
    assert_disk_full_line(one_line(e.value), stage_copy / cache.GUIDANCE_H5)
    assert {k: v for k, v in files_of(stage_copy).items() if not k.name.endswith(".lock")} == \
        {k: v for k, v in before.items() if not k.name.endswith(".lock")}
    assert tmp_files(stage_copy) == []


def test_full_disk_during_distort_names_the_file_and_keeps_both_outputs(stage_copy, monkeypatch):
    from pipeline.distort.build import DistortParams, build_distortions

    before = files_of(stage_copy)

    def full(table, path):
        Path(path).write_bytes(b"partial parquet")
        raise _enospc(path)

    monkeypatch.setattr(cache, "write_parquet", full)
    with pytest.raises(CacheError) as e:
        build_distortions(stage_copy, DistortParams(variants=1), progress=False)
    # the Parquet half failed after the HDF5 half was whole: neither is published
    assert_disk_full_line(one_line(e.value), stage_copy / cache.DISTORTIONS_PARQUET)
    after = files_of(stage_copy)
    for name in (cache.DISTORTIONS_H5, cache.DISTORTIONS_PARQUET):
        assert after[Path(name)] == before[Path(name)], name
    assert tmp_files(stage_copy) == []


def test_full_disk_errors_are_recognised_however_the_writer_words_them(tmp_path, monkeypatch):
    from pipeline.cache.atomic import atomic_outputs, write_json_atomic

    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")
    h5py_style = OSError(f"[Errno 28] Can't synchronously write data (file write failed: errno = 28, "
                         f"error message = '{ENOSPC_TEXT}')")  # errno not set as an attribute
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    for err in (_enospc(), h5py_style, quota):
        with pytest.raises(CacheError) as e:
            with atomic_outputs(target) as (tmp,):
                tmp.write_bytes(b"x" * 5000)
                raise err
        msg = one_line(e.value)
        assert msg.startswith(f"{target}: ") and "free there, about 5.0 kB needed" in msg, msg
        assert target.read_bytes() == b"previous" and tmp_files(tmp_path) == []
    # any other write error is left as it is
    with pytest.raises(PermissionError):
        with atomic_outputs(target) as (tmp,):
            raise PermissionError(errno.EACCES, "denied")
    # small side files (configs, summaries) go through the same path
    real = Path.write_text

    def full(self, *a, **kw):
        if self.name.endswith(".tmp"):
            raise _enospc(self)
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(CacheError) as e:
        write_json_atomic(tmp_path / "summary.json", {"a": 1})
    monkeypatch.undo()
    assert_disk_full_line(one_line(e.value), tmp_path / "summary.json")
    assert not (tmp_path / "summary.json").exists()
