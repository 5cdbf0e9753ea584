"""Hostile-user cases, end to end on tiny data: concurrent writers, failed reruns,
cache lineage, multi-file commits, odd image ids, oversized and corrupt inputs, errors raised in
worker processes, and the last tracebacks (report, VGG). Each test reproduces one failure."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from pipeline import cache
from pipeline.cache import SegmentDB
from pipeline.datasets import open_dataset
from pipeline.datasets.base import read_image_rgb, read_index_map
from pipeline.decompose.build import DecomposeParams, build_segment_db
from pipeline.errors import BusyError, CacheError, ConfigError, DataError, ResailError
from pipeline.compose.build import compose_dataset, read_guidance
from pipeline.retrieve.build import run_retrieval
from tests.conftest import REPO
from tests.fixtures.toy_dataset import make_toy_dataset, toy_label_map

PY = sys.executable


def cli():
    from stages.cli import main

    return main


def invoke(args: list[str], tmp: Path):
    params = tmp / "empty_params.yaml"
    params.write_text("{}\n")
    return CliRunner().invoke(cli(), ["--params", str(params), *args], catch_exceptions=False)


def one_error_line(res) -> str:
    """The CLI failed with exactly one line ``error: …`` and no traceback."""
    out = res.output.strip()
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and len(out.splitlines()) == 1 and out.startswith("error: "), res.output
    return out


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory) -> dict:
    """decompose → retrieve → compose on 4+2 toy images (a few seconds); tests copy it."""
    base = tmp_path_factory.mktemp("hostile")
    data = make_toy_dataset(base / "toy", n_train=4, n_val=2, seed=5)
    cache_dir = base / "cache"
    build_segment_db(open_dataset("folder", data), cache_dir, params=DecomposeParams(min_area=4), progress=False)
    run_retrieval(cache_dir, progress=False)
    compose_dataset(cache_dir, progress=False)
    return {"data": data, "cache": cache_dir, "guidance": (cache_dir / cache.GUIDANCE_H5).read_bytes()}


@pytest.fixture
def work(base_cache, tmp_path) -> dict:
    data, cache_dir = tmp_path / "toy", tmp_path / "cache"
    shutil.copytree(base_cache["data"], data)
    shutil.copytree(base_cache["cache"], cache_dir)
    _repoint(cache_dir, data)
    return {"data": data, "cache": cache_dir, "guidance": base_cache["guidance"], "tmp": tmp_path}


def _repoint(cache_dir: Path, data: Path) -> None:
    """Record the copied dataset's root in the copied segment DB (the root is not part of the lineage)."""
    with h5py.File(cache_dir / cache.SEGMENTS_H5, "r+") as f:
        f.attrs["data_root"] = str(data)


# =========================================================================== concurrent writers
def test_temp_names_are_unique_and_a_writer_never_deletes_another_ones_temp(tmp_path):
    target = tmp_path / "out.bin"
    assert cache.tmp_path(target) != cache.tmp_path(target)
    foreign = tmp_path / f"out.bin.{os.getpid()}-deadbeef.tmp"  # a live writer's temp (our own pid is alive)
    foreign.write_bytes(b"half")
    with cache.atomic_outputs(target) as (tmp,):
        tmp.write_bytes(b"whole")
        assert not target.exists()  # nothing published before the end
    assert target.read_bytes() == b"whole" and foreign.read_bytes() == b"half"
    # a killed writer's temp (pid gone) is cleaned up by the next writer of the same output
    dead = subprocess.run([PY, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f"out.bin.{dead}-0badc0de.tmp"
    stale.write_bytes(b"stale")
    with cache.atomic_outputs(target) as (tmp,):
        tmp.write_bytes(b"again")
    assert not stale.exists() and foreign.exists()


_HOLDER = """
import sys, time
from pathlib import Path
from pipeline import cache
with cache.stage_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([PY, "-c", _HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_writer_refuses_naming_the_holder_then_waits_when_asked(work, monkeypatch):
    out = work["cache"] / cache.GUIDANCE_H5
    before = out.read_bytes()
    holder = _hold_lock(out, 60)
    try:
        res = invoke(["compose", "--cache", str(work["cache"]), "--rank", "1", "--no-progress"], work["tmp"])
        line = one_error_line(res)
        assert str(out) in line and f"pid {holder.pid}" in line and "another run is writing it" in line
        assert out.read_bytes() == before and not list(work["cache"].glob("*.tmp"))
        with pytest.raises(BusyError):
            compose_dataset(work["cache"], rank=1, progress=False)
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the killed holder's lock: the stage runs
    holder = _hold_lock(out, 1.0)
    monkeypatch.setenv(cache.LOCK_WAIT_ENV, "30")
    compose_dataset(work["cache"], rank=1, progress=False)  # waits for the holder, then writes
    holder.wait()
    assert out.read_bytes() != before


def test_two_concurrent_compose_runs_never_publish_a_torn_file(work):
    """`resail compose --rank 0 & resail compose --rank 1`: each run either publishes a whole file or
    refuses with the busy line; the published file is one of the two complete results."""
    cache_dir = work["cache"]
    compose_dataset(cache_dir, rank=1, progress=False)
    rank1 = (cache_dir / cache.GUIDANCE_H5).read_bytes()
    rank0 = work["guidance"]
    (cache_dir / cache.GUIDANCE_H5).unlink()
    # the compose command's own code path, minus the CLI's imports (keeps the test fast)
    script = ("import sys; from pipeline.errors import ResailError; from pipeline.compose.build import compose_dataset\n"
              "try: compose_dataset(sys.argv[1], rank=int(sys.argv[2]), progress=False)\n"
              "except ResailError as e: print(f'error: {e}', file=sys.stderr); sys.exit(1)\n")
    procs = [subprocess.Popen([PY, "-c", script, str(cache_dir), r], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in ("0", "1")]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes, outs
    for code, (_, err) in zip(codes, outs):
        if code:
            assert code == 1 and "another run is writing it" in err and "Traceback" not in err, err
    final = (cache_dir / cache.GUIDANCE_H5).read_bytes()
    assert final in (rank0, rank1)
    assert not list(cache_dir.glob("*.tmp"))


# =========================================================================== multi-file outputs as one unit
def test_kill_between_renames_is_rolled_forward(work, monkeypatch):
    a, b = work["tmp"] / "u" / "a.h5", work["tmp"] / "u" / "b.parquet"
    with cache.atomic_outputs(a, b) as (ta, tb):
        ta.write_bytes(b"old-a")
        tb.write_bytes(b"old-b")
    real = os.replace
    calls = []

    def dies_after_first_rename(src, dst):
        if str(src).endswith(".tmp") and not str(src).endswith(".commit." + str(os.getpid())) and ".commit" not in str(dst):
            calls.append(dst)
            if len(calls) == 2:
                raise KeyboardInterrupt  # "killed" between the two renames
        return real(src, dst)

    monkeypatch.setattr(cache.atomic.os, "replace", dies_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        with cache.atomic_outputs(a, b) as (ta, tb):
            ta.write_bytes(b"new-a")
            tb.write_bytes(b"new-b")
    monkeypatch.setattr(cache.atomic.os, "replace", real)
    assert a.read_bytes() == b"new-a" and b.read_bytes() == b"old-b"  # the torn state a kill leaves …
    assert cache.finish_interrupted_commit(a)  # … is completed by the next reader or writer
    assert (a.read_bytes(), b.read_bytes()) == (b"new-a", b"new-b")
    assert not list(a.parent.glob(".*.commit*")) and not list(a.parent.glob("*.tmp"))


def test_segment_db_files_from_two_runs_are_refused(work, tmp_path):
    other = tmp_path / "other_cache"
    build_segment_db(open_dataset("folder", work["data"]), other, params=DecomposeParams(min_area=9), progress=False)
    shutil.copy(other / cache.SEGMENTS_PARQUET, work["cache"] / cache.SEGMENTS_PARQUET)  # new parquet, old h5
    with pytest.raises(CacheError, match=r"segments\.parquet: comes from another decompose run .*rebuild with `resail decompose`"):
        SegmentDB.open(work["cache"])


def test_distort_writes_h5_and_parquet_with_one_lineage(work):
    from pipeline.distort.build import DistortParams, build_distortions

    build_distortions(work["cache"], DistortParams(variants=1), progress=False)
    h5_lin = cache.read_lineage(work["cache"] / cache.DISTORTIONS_H5)
    pq_lin = cache.read_lineage(work["cache"] / cache.DISTORTIONS_PARQUET)
    assert h5_lin is not None and h5_lin == pq_lin and h5_lin.stage == "distort"
    assert h5_lin.inputs["segments"] == cache.segments_lineage(work["cache"]).id
    cache.check_stage_h5(work["cache"] / cache.DISTORTIONS_H5)


# =========================================================================== lineage
def test_redecomposed_cache_makes_downstream_stages_refuse(work, tmp_path):
    """Another dataset decomposed into the same cache: retrieval and guidance are stale."""
    other = make_toy_dataset(tmp_path / "other", n_train=4, n_val=2, seed=99)
    build_segment_db(open_dataset("folder", other), work["cache"], params=DecomposeParams(min_area=4), progress=False)
    res = invoke(["compose", "--cache", str(work["cache"]), "--no-progress"], work["tmp"])
    line = one_error_line(res)
    assert "retrieval.parquet: was built from another segments.h5" in line and "rerun `resail retrieve`" in line
    # readers of guidance.h5 name the first stale stage upstream of it, then guidance itself
    with pytest.raises(CacheError, match=r"retrieval\.parquet: was built from another segments\.h5.*rerun `resail retrieve`"):
        read_guidance(work["cache"], "train", "train_000")
    from resail_train.training.data import CacheDataset

    with pytest.raises(CacheError, match=r"rerun `resail retrieve`"):
        CacheDataset(work["cache"], "train", load_size=None, crop_size=[32, 32], train=False, guidance="rank0",
                     distortions=False)
    run_retrieval(work["cache"], progress=False)  # rerunning the named stage fixes it
    with pytest.raises(CacheError, match=r"guidance\.h5: was built from another segments\.h5.*rerun `resail compose`"):
        CacheDataset(work["cache"], "train", load_size=None, crop_size=[32, 32], train=False, guidance="rank0",
                     distortions=False)
    compose_dataset(work["cache"], progress=False)
    cache.check_stage_h5(work["cache"] / cache.GUIDANCE_H5)


def test_label_edited_at_the_same_size_is_caught_by_compose(work):
    lab_p = work["data"] / "train" / "labels" / "train_001.png"
    lab = cv2.imread(str(lab_p), cv2.IMREAD_UNCHANGED)
    lab[10:14, 10:14] = 2 if lab[10, 10] != 2 else 1
    cv2.imwrite(str(lab_p), lab)
    res = invoke(["compose", "--cache", str(work["cache"]), "--no-progress"], work["tmp"])
    line = one_error_line(res)
    assert "train_001.png" in line and "changed since `resail decompose`" in line
    assert (work["cache"] / cache.GUIDANCE_H5).read_bytes() == work["guidance"]  # old output kept


def test_retrieval_params_and_lineage_ids_are_deterministic(base_cache, tmp_path):
    again = tmp_path / "again"
    build_segment_db(open_dataset("folder", base_cache["data"]), again, params=DecomposeParams(min_area=4), progress=False)
    assert cache.segments_lineage(again) == cache.segments_lineage(base_cache["cache"])
    # the dataset's location is not part of its identity; its content and the params are
    moved = tmp_path / "moved"
    shutil.copytree(base_cache["data"], moved)
    build_segment_db(open_dataset("folder", moved), tmp_path / "m", params=DecomposeParams(min_area=4), progress=False)
    assert cache.segments_lineage(tmp_path / "m").id == cache.segments_lineage(again).id
    build_segment_db(open_dataset("folder", moved), tmp_path / "p", params=DecomposeParams(min_area=5), progress=False)
    assert cache.segments_lineage(tmp_path / "p").id != cache.segments_lineage(again).id


def test_old_caches_without_lineage_ask_to_rebuild(work):
    g = work["cache"] / cache.GUIDANCE_H5
    with h5py.File(g, "r+") as f:
        del f.attrs["schema_version"]
    with pytest.raises(CacheError, match=r"guidance\.h5: schema version 1 \(expected 2\): rebuild with `resail compose`"):
        read_guidance(work["cache"], "train", "train_000")
    t = pq.read_table(work["cache"] / cache.RETRIEVAL_PARQUET)
    pq.write_table(t.replace_schema_metadata({b"resail": t.schema.metadata[b"resail"]}),
                   work["cache"] / cache.RETRIEVAL_PARQUET)
    res = invoke(["compose", "--cache", str(work["cache"]), "--no-progress"], work["tmp"])
    assert "retrieval.parquet: written by an older version (no lineage record): rebuild with `resail retrieve`" \
        in one_error_line(res)
    with h5py.File(work["cache"] / cache.SEGMENTS_H5, "r+") as f:
        del f.attrs[cache.LINEAGE_ATTR]
    with pytest.raises(CacheError, match=r"segments\.h5: written by an older version .*rebuild with `resail decompose`"):
        SegmentDB.open(work["cache"])


# =========================================================================== HDF5 keys from odd ids
def test_odd_stems_do_not_collide_in_guidance_and_distortions(tmp_path):
    from pipeline.distort.build import DistortParams, build_distortions, read_distortions

    data = make_toy_dataset(tmp_path / "odd", n_train=5, n_val=0, seed=2)
    imgs, labs, insts = (data / "train" / sub for sub in ("images", "labels", "instances"))
    stems = ["A", "A__valid", ".", "A@valid", "50%"]
    for old, new in zip(sorted(p.stem for p in imgs.iterdir()), stems):
        for folder in (imgs, labs, insts):
            (folder / f"{old}.png").rename(folder / f"{new}.png")
    cache_dir = tmp_path / "cache"
    build_segment_db(open_dataset("folder", data), cache_dir, progress=False)
    run_retrieval(cache_dir, progress=False)
    compose_dataset(cache_dir, progress=False)
    build_distortions(cache_dir, DistortParams(variants=1), progress=False)
    adapter = open_dataset("folder", data)
    keys = {cache.image_key("train", s) for s in stems} | {cache.valid_key("train", s) for s in stems}
    assert len(keys) == 2 * len(stems)
    for ref in adapter.refs("train"):
        g, v = read_guidance(cache_dir, "train", ref.image_id)
        lab = adapter.load(ref).labels
        assert g.shape == (*lab.shape, 3) and v.shape == lab.shape and v.dtype == bool
        assert read_distortions(cache_dir, "train", ref.image_id).shape == (1, *lab.shape, 3)
    with h5py.File(cache_dir / cache.GUIDANCE_H5, "r") as f:
        assert sorted(f["train"].keys()) == sorted(k.split("/")[-1] for k in keys)


# =========================================================================== pixel cap
def _big_png(path: Path, w: int, h: int) -> Path:
    """A valid, tiny (a few hundred KB at most) PNG of w×h zeros, written without the pixels in memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    comp, rows, parts = zlib.compressobj(6), b"\0" * ((w + 1) * 100), []
    for _ in range(h // 100):  # (h is a multiple of 100 here)
        parts.append(comp.compress(rows))
    parts.append(comp.flush())
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A decompression bomb: a ~400 KB PNG of 20000×20000 pixels (written once, ~3 s)."""
    return _big_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 20000, 20000)


def test_pixel_cap_is_checked_from_the_header_before_decoding(bomb, tmp_path, monkeypatch):
    big = bomb
    assert big.stat().st_size < 1_000_000
    with pytest.raises(DataError, match=r"bomb\.png: label map is 20000x20000 = 400\.0 Mpx, above the limit of 67\.1 Mpx"):
        read_index_map(big)
    with pytest.raises(DataError, match="above the limit"):
        read_image_rgb(big)
    lab, _ = toy_label_map(np.random.default_rng(0))
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), lab)
    assert read_index_map(small).shape == lab.shape
    monkeypatch.setenv("RESAIL_MAX_PIXELS", str(lab.size - 1))  # configurable
    with pytest.raises(DataError, match="above the limit"):
        read_index_map(small)
    ok, jpg = cv2.imencode(".jpg", np.zeros((40, 50, 3), np.uint8))
    (tmp_path / "x.jpg").write_bytes(jpg.tobytes())
    monkeypatch.setenv("RESAIL_MAX_PIXELS", str(40 * 50 - 1))
    with pytest.raises(DataError, match=r"x\.jpg: image is 50x40"):
        read_image_rgb(tmp_path / "x.jpg")


def test_synthesize_refuses_a_huge_label_map_in_one_line(bomb, tmp_path):
    from tests.fixtures.tiny_run import tiny_run

    run_dir, cache_dir = tiny_run(_Factory(tmp_path))
    big = shutil.copy(bomb, tmp_path / "huge.png")
    res = invoke(["synthesize", "--run", str(run_dir), "--cache", str(cache_dir), "--labels", str(big), "--out",
                  str(tmp_path / "o.png"), "--device", "cpu"], tmp_path)
    assert "huge.png: label map is 20000x20000" in one_error_line(res) and not (tmp_path / "o.png").exists()


class _Factory:
    """A stand-in for pytest's tmp_path_factory (tiny_run only calls mktemp)."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def mktemp(self, name: str) -> Path:
        p = self.base / f"{name}_factory"
        p.mkdir(parents=True, exist_ok=True)
        return p


# =========================================================================== corrupt JPEG data
def _corrupt_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(1)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    b = bytearray(buf.tobytes())
    sos = b.find(b"\xff\xda")
    start = sos + 2 + int.from_bytes(b[sos + 2:sos + 4], "big")
    for k in range(start + 40, start + 80):  # scramble entropy-coded bytes, keep every marker and the end
        if b[k] != 0xFF and b[k - 1] != 0xFF:
            b[k] ^= 0x5A
    path.write_bytes(bytes(b))
    return path


def test_corrupt_jpeg_data_is_an_error_and_skip_lists_it(tmp_path):
    bad = _corrupt_jpeg(tmp_path / "c.jpg")
    assert cv2.imread(str(bad)) is not None  # what the decoder alone accepts
    with pytest.raises(DataError, match=r"c\.jpg: corrupt JPEG data \(decoder: "):
        read_image_rgb(bad)
    data = make_toy_dataset(tmp_path / "toy", n_train=3, n_val=0, seed=1)
    img_dir = data / "train" / "images"
    for p in sorted(img_dir.glob("*.png")):
        ok, buf = cv2.imencode(".jpg", cv2.imread(str(p)), [cv2.IMWRITE_JPEG_QUALITY, 95])
        p.unlink()
        p.with_suffix(".jpg").write_bytes(buf.tobytes())
    _corrupt_jpeg(img_dir / "train_001.jpg")
    out = tmp_path / "cache"
    res = invoke(["decompose", "--format", "folder", "--data-root", str(data), "--out", str(out), "--on-error",
                  "skip", "--no-progress"], tmp_path)
    assert res.exit_code == 0, res.output
    skipped = json.loads((out / cache.SKIPPED_JSON).read_text())
    assert [s["image_id"] for s in skipped] == ["train_001"] and "corrupt JPEG data" in skipped[0]["error"]
    res = invoke(["decompose", "--format", "folder", "--data-root", str(data), "--out", str(tmp_path / "c2"),
                  "--no-progress"], tmp_path)
    assert "train_001.jpg: corrupt JPEG data" in one_error_line(res)


# =========================================================================== errors from worker processes
def test_errors_pickle_as_themselves():
    for cls in (ResailError, DataError, CacheError, ConfigError, BusyError):
        e = pickle.loads(pickle.dumps(cls("/some/file.h5", "is bad")))
        assert type(e) is cls and (e.path, e.problem, str(e)) == ("/some/file.h5", "is bad", "/some/file.h5: is bad")
    assert str(CacheError("a\nb.png", "line one\nline two")) == "a\\nb.png: line one line two"


def test_bad_cache_under_dataloader_workers_is_the_one_line_error(work):
    from resail_train.training.data import CacheDataset, collate

    with h5py.File(work["cache"] / cache.GUIDANCE_H5, "r+") as f:
        del f[cache.image_key("train", "train_002")]
    ds = CacheDataset(work["cache"], "train", load_size=None, crop_size=[32, 32], train=False, guidance="rank0",
                      distortions=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate,
                                         multiprocessing_context="spawn")
    with pytest.raises(CacheError) as e:
        for _ in loader:
            pass
    assert str(e.value) == f"{work['cache'] / cache.GUIDANCE_H5}: no guidance for train/train_002 (stale cache: re-run the stage)"
    ds.close()


# =========================================================================== a failed rerun keeps the old run
def test_failed_fresh_train_keeps_the_previous_run(tmp_path):
    from resail_train.config import load_config
    from resail_train.training.trainer import PREVIOUS_DIR, TrainOptions, train
    from tests.fixtures.train_cache import make_train_cache
    from tests.fixtures.training import write_config, write_untrained_segnet

    cache_dir = make_train_cache(tmp_path / "c", n_train=4, n_val=0, size=(32, 32), variants=1)
    cfgp = write_config(tmp_path / "tiny.yaml", data={"crop_size": [32, 32], "num_workers": 0},
                        segnet={"path": str(tmp_path / "segnet.pt")}, optim={"batch_size": 2, "epochs": 1,
                                                                             "decay_epochs": 0})
    write_untrained_segnet(tmp_path / "segnet.pt")
    cfg = load_config(cfgp)
    run = tmp_path / "run"
    opts = TrainOptions(max_steps=1, progress=False, device="cpu")
    train(cache_dir, run, cfg, opts)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert (run / "generator.pt").is_file() and (run / "checkpoints" / "latest.pt").is_file()

    # the rerun fails at its first batch (a cut distortions file): nothing of the old run is lost
    with h5py.File(cache_dir / cache.DISTORTIONS_H5, "r+") as f:
        for k in list(f["train"].keys()):
            del f["train"][k]
    with pytest.raises(CacheError, match="no distortions"):
        train(cache_dir, run, cfg, opts)
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before and not (run / PREVIOUS_DIR).exists()

    # a kill before the first checkpoint leaves .previous_run: the next start puts it back first
    (run / PREVIOUS_DIR).mkdir()
    for name in ("generator.pt", "checkpoints"):
        os.replace(run / name, run / PREVIOUS_DIR / name)
    (run / "checkpoints").mkdir()  # the killed attempt's partial output
    shutil.rmtree(cache_dir)
    cache_dir = make_train_cache(tmp_path / "c", n_train=4, n_val=0, size=(32, 32), variants=1)
    res = train(cache_dir, run, cfg, TrainOptions(max_steps=2, resume=True, progress=False, device="cpu"))
    assert res.step == 2 and not (run / PREVIOUS_DIR).exists()  # resumed the restored step-1 run
    assert torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["step"] == 2


# =========================================================================== report and VGG tracebacks
@pytest.fixture
def run_copy(tmp_path) -> tuple[Path, Path]:
    from tests.fixtures.tiny_run import tiny_run

    run_dir, cache_dir = tiny_run(_Factory(tmp_path.parent / "tiny_shared"))
    r2, c2 = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(run_dir, r2)
    shutil.copytree(cache_dir, c2)
    return r2, c2


def test_report_on_a_cut_guidance_file_or_text_metrics_is_one_line(run_copy, tmp_path):
    run_dir, cache_dir = run_copy
    g = cache_dir / cache.GUIDANCE_H5
    whole = g.read_bytes()
    g.write_bytes(whole[:len(whole) // 2])
    res = invoke(["report", "--run", str(run_dir), "--cache", str(cache_dir), "--device", "cpu", "--n-images", "1"],
                 tmp_path)
    assert "guidance.h5: not a readable HDF5 file" in one_error_line(res)
    g.write_bytes(whole)
    (run_dir / "metrics.json").write_text(json.dumps({"fid": "twelve", "miou": 0.5, "pixel_acc": 0.7}))
    res = invoke(["report", "--run", str(run_dir), "--cache", str(cache_dir), "--device", "cpu", "--n-images", "1"],
                 tmp_path)
    assert "metrics.json: 'fid' must be a number or null, got 'twelve'" in one_error_line(res)


def test_vgg_error_is_one_line(tmp_path):
    from resail_train.models.vgg import load_vgg19

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pth"
    torch.save({"features.0.weight": Evil()}, p)
    with pytest.raises(ConfigError) as e:
        load_vgg19(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p}: cannot read VGG19 weights: UnpicklingError") and len(msg) < 400, msg
