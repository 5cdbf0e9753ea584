"""Trainer, segmentation-net training, checkpoints, configs and the train CLI (tiny sizes, CPU)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from pipeline.errors import CacheError, ConfigError
from resail_train import checkpoint as ckpt
from resail_train.config import CONFIG_DIR, load_config
from resail_train.training.data import CacheDataset
from resail_train.models.segnet import SegNet
from resail_train.training.segnet_trainer import evaluate, train_segnet
from resail_train.training.trainer import TrainOptions, linear_decay, train
from tests.conftest import REPO
from tests.fixtures.cli import train_cli
from tests.fixtures.train_cache import make_train_cache
from tests.fixtures.training import tensors_equal, write_config, write_untrained_segnet


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory) -> Path:
    # 6 training images: 3 steps per epoch at batch 2, so runs cross epoch boundaries.
    return make_train_cache(tmp_path_factory.mktemp("train"), n_train=6, n_val=2, size=(64, 64), noise=20,
                            guidance="shifted", variants=2)


@pytest.fixture(autouse=True)
def _two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- segmentation net
def test_segnet_overfits_eight_toy_images(tmp_path):
    cache_dir = make_train_cache(tmp_path, n_train=8, n_val=2, size=(64, 64), noise=20, seed=1)
    cfg = load_config(write_config(tmp_path / "seg.yaml", data={"flip": False}))
    res = train_segnet(cache_dir, tmp_path / "run", cfg, progress=False)
    assert res.steps == 60 and res.train_pixel_acc >= 0.9
    obj = torch.load(res.path, weights_only=True)
    assert obj["num_classes"] == 5 and obj["base_width"] == 8 and obj["spectral"] is False
    net = SegNet(5, base_width=8, spectral=False)
    net.load_state_dict(obj["state_dict"])
    ds = CacheDataset(cache_dir, "train", load_size=None, crop_size=[64, 64], train=False, guidance=None,
                      distortions=False)
    scores = evaluate(net, ds, torch.device("cpu"), 8)
    ds.close()
    assert scores["pixel_acc"] >= 0.9, scores
    metrics = json.loads((tmp_path / "run" / "segnet_logs" / "metrics.json").read_text())
    assert metrics["train"]["pixel_acc"] >= 0.9


# --------------------------------------------------------------------------- training and resume
def test_resume_is_bit_exact(toy_cache, tmp_path):
    cfg = load_config(write_config(tmp_path / "tiny.yaml", segnet={"path": str(tmp_path / "segnet.pt")}))
    write_untrained_segnet(tmp_path / "segnet.pt")
    straight = train(toy_cache, tmp_path / "a", cfg, TrainOptions(max_steps=4, progress=False, device="cpu"))
    assert straight.step == 4 and straight.total_steps == 6 and straight.epoch == 1
    half = train(toy_cache, tmp_path / "b", cfg, TrainOptions(max_steps=2, progress=False, device="cpu"))
    assert half.step == 2
    resumed = train(toy_cache, tmp_path / "b", cfg, TrainOptions(max_steps=4, resume=True, progress=False, device="cpu"))
    assert resumed.step == 4
    a = torch.load(tmp_path / "a" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "latest.pt", weights_only=True)
    for part in ("models", "optimizers", "schedulers"):
        assert tensors_equal(a[part], b[part]), part
    assert (a["step"], a["epoch"], a["batch_in_epoch"]) == (b["step"], b["epoch"], b["batch_in_epoch"]) == (4, 1, 1)
    # The LR decay is running (last epoch of 2 decays) and the straight run kept step checkpoints.
    assert a["optimizers"]["G"]["param_groups"][0]["lr"] < cfg.optim.lr_G
    assert (tmp_path / "a" / "checkpoints" / "step_0000002.pt").is_file()
    assert (tmp_path / "a" / "checkpoints" / "step_0000004.pt").is_file()
    g = torch.load(tmp_path / "a" / "generator.pt", weights_only=True)
    assert tensors_equal(g["state_dict"], a["models"]["G"]) and g["label_nc"] == 5
    assert sorted(p.name for p in (tmp_path / "a" / "samples").iterdir()) == ["step_0000002.png", "step_0000004.png"]
    metrics = json.loads((tmp_path / "a" / "logs" / "metrics.json").read_text())
    assert metrics["step"] == 4 and "G_seg" in metrics["train"] and 0 <= metrics["perf"]["data_wait_fraction"] <= 1
    assert torch.are_deterministic_algorithms_enabled() is False  # restored after the run


def test_checkpoint_loads_weights_only_and_restores_rng(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    state = ckpt.capture_rng_state()
    expect = (random.random(), float(np.random.rand()), float(torch.rand(())))
    path = ckpt.save_atomic({"rng": state, "step": 7, "cfg": {"a": [1, 2.5, None, "x"]}}, tmp_path / "c" / "x.pt")
    assert not list((tmp_path / "c").glob("*.tmp"))
    obj = torch.load(path, weights_only=True)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    ckpt.restore_rng_state(obj["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expect
    with pytest.raises(CacheError, match="checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CacheError, match="cannot read checkpoint"):
        ckpt.load_checkpoint(tmp_path / "bad.pt")


def test_linear_decay_schedule():
    f = linear_decay(200, 100)
    assert f(0) == f(99) == 1.0 and f(100) == 1.0 and f(150) == 0.5 and f(200) == 0.0
    assert linear_decay(10, 0)(9) == 1.0


# --------------------------------------------------------------------------- configs
def test_paper_configs_carry_the_paper_values():
    for name in ("cityscapes", "ade20k", "coco-stuff"):
        c = load_config(name)
        assert (c.optim.lr_G, c.optim.lr_D, c.optim.beta1, c.optim.beta2) == (1e-4, 4e-4, 0.0, 0.9)
        assert (c.optim.epochs, c.optim.decay_epochs) == (200, 100)
        assert (c.loss.lambda_fm, c.loss.lambda_vgg, c.loss.lambda_seg) == (10.0, 10.0, 5.0)
        assert (c.model.ngf, c.model.ndf, c.model.num_D, c.model.n_layers_D) == (64, 64, 2, 4)
        assert c.loss.vgg_required and c.data.guidance_mode == "retrieval+distorted-gt" and c.loss.vgg_input == "raw"
    cs = load_config("cityscapes")
    assert cs.data.crop_size == [256, 512] and cs.model.num_upsampling == 6
    ade = load_config("ade20k")
    assert ade.data.load_size == [286, 286] and ade.data.crop_size == [256, 256] and ade.model.num_upsampling == 5
    assert not load_config("demo").loss.vgg_required


def test_bad_configs_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown config name"):
        load_config("imagenet")
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "bad.yaml")
    full = yaml.safe_load((CONFIG_DIR / "demo.yaml").read_text())
    del full["optim"]["lr_G"]
    (tmp_path / "missing.yaml").write_text(yaml.safe_dump(full))
    with pytest.raises(ConfigError, match="missing key: optim.lr_G"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config("demo", ["optim.lr_g=0.1"])
    with pytest.raises(ConfigError, match="divisible"):
        load_config("demo", ["data.crop_size=[100, 128]"])
    assert load_config("demo", ["optim.lr_G=2e-4"]).optim.lr_G == 2e-4


# --------------------------------------------------------------------------- CLI
_EMPTY_PARAMS: list[Path] = []


def _empty_params() -> str:
    """An empty params file, so the tests do not read the repository's params.yaml."""
    if not _EMPTY_PARAMS:
        import tempfile

        p = Path(tempfile.mkdtemp()) / "params.yaml"
        p.write_text("{}\n")
        _EMPTY_PARAMS.append(p)
    return str(_EMPTY_PARAMS[0])


def _invoke(args: list[str]):
    res = CliRunner().invoke(train_cli(), ["--params", _empty_params(), *args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception  # a bug, not an expected error: show its traceback
    return res, res.output  # click >= 8.2: stdout and stderr together


def test_cli_trains_and_writes_the_run_folder(toy_cache, tmp_path):
    cfgp = write_config(tmp_path / "tiny.yaml", segnet={"epochs": 1, "batch_size": 2})
    res, out = _invoke(["train-segnet", "--cache", str(toy_cache), "--out", str(tmp_path / "run"), "--config", str(cfgp),
                        "--max-steps", "2", "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, out
    base = ["train", "--cache", str(toy_cache), "--out", str(tmp_path / "run"), "--config", str(cfgp), "--device", "cpu",
            "--no-progress", "--set", "model.norm=spade"]
    res, out = _invoke([*base, "--max-steps", "1"])
    assert res.exit_code == 0, out
    assert "VGG perceptual loss is OFF" in out
    from resail_train.models.vgg import VGG19Features

    torch.save(VGG19Features().state_dict(), tmp_path / "vgg19.pth")  # random weights, torchvision key layout
    res, out = _invoke([*base, "--max-steps", "2", "--resume", "--vgg-weights", str(tmp_path / "vgg19.pth")])
    assert res.exit_code == 0, out
    assert "VGG perceptual loss on" in out and "resumed from" in out and "step 2/6" in out
    run = tmp_path / "run"
    for rel in ("segnet.pt", "generator.pt", "config.yaml", "train_summary.json", "checkpoints/latest.pt",
                "samples/step_0000002.png", "logs/metrics.json", "segnet_logs/metrics.json"):
        assert (run / rel).is_file(), rel
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["norm"] == "spade"
    assert "G_vgg" in json.loads((run / "logs" / "metrics.json").read_text())["train"]


@pytest.mark.parametrize("case", ["unknown_name", "bad_yaml", "missing_key", "missing_cache", "paper_without_vgg",
                                  "missing_segnet"])
def test_cli_errors_are_one_line(case, toy_cache, tmp_path):
    cache_dir, config, extra = str(toy_cache), str(write_config(tmp_path / "tiny.yaml")), []
    expect = None
    if case == "unknown_name":
        config, expect = "imagenet", "unknown config name"
    elif case == "bad_yaml":
        (tmp_path / "bad.yaml").write_text("optim: {batch_size: 2\n")
        config, expect = str(tmp_path / "bad.yaml"), "invalid YAML"
    elif case == "missing_key":
        full = yaml.safe_load((CONFIG_DIR / "demo.yaml").read_text())
        del full["model"]["ngf"]
        (tmp_path / "m.yaml").write_text(yaml.safe_dump(full))
        config, expect = str(tmp_path / "m.yaml"), "missing key: model.ngf"
    elif case == "missing_cache":
        cache_dir, extra, expect = str(tmp_path / "no_cache"), ["--set", "loss.lambda_seg=0"], "segments.parquet"
    elif case == "paper_without_vgg":
        config, expect = "cityscapes", "VGG19"
    elif case == "missing_segnet":
        expect = "segmentation net not found"
    res, out = _invoke(["train", "--cache", cache_dir, "--out", str(tmp_path / "run"), "--config", config,
                        "--device", "cpu", "--no-progress", *extra])
    assert res.exit_code != 0
    assert "Traceback" not in out and expect in out and "error:" in out, out
    if case == "missing_cache":
        res, out = _invoke(["train-segnet", "--cache", cache_dir, "--out", str(tmp_path / "run"), "--config", config])
        assert res.exit_code != 0 and "segments.parquet" in out and "Traceback" not in out


# --------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_two_gloo_processes(toy_cache, tmp_path):
    cfgp = write_config(tmp_path / "tiny.yaml", optim={"batch_size": 4, "epochs": 2, "decay_epochs": 1},
                        segnet={"path": str(tmp_path / "segnet.pt")})
    write_untrained_segnet(tmp_path / "segnet.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = tmp_path / "resail_cli.py"  # `resail` with the train commands registered (if cli.py lacks them)
    launcher.write_text("from tests.fixtures.cli import train_cli\ntrain_cli()()\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launcher),
           "--params", _empty_params(), "train", "--cache", str(toy_cache), "--out", str(tmp_path / "run"),
           "--config", str(cfgp), "--max-steps", "2", "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    st = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    assert st["step"] == 2 and st["world_size"] == 2
    assert "2 process(es)" in proc.stderr


@pytest.mark.slow
def test_segnet_overfits_eight_demo_frames():
    """The segmentation net + class-balanced CE memorise 8 real CamVid frames of the committed demo
    data (64×128): pixel accuracy ≥ 0.85 after 400 full-batch steps (measured ≈ 0.94)."""
    import cv2

    from pipeline.datasets import open_dataset
    from resail_train.training.losses import balanced_cross_entropy

    torch.manual_seed(0)
    adapter = open_dataset("folder", REPO / "data" / "camvid_demo")
    lut = adapter.classes().lookup_table()
    images, labels = [], []
    for ref in adapter.refs("train")[:8]:
        s = adapter.load(ref)
        images.append(cv2.resize(s.image, (128, 64), interpolation=cv2.INTER_AREA))
        labels.append(lut[cv2.resize(s.labels.astype(np.uint8), (128, 64), interpolation=cv2.INTER_NEAREST)])
    x = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.tensor(np.stack(labels))
    ignore = adapter.classes().num_classes
    net = SegNet(ignore, base_width=16, spectral=False)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(400):
        loss = balanced_cross_entropy(net(x), y, ignore_index=ignore)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(x).argmax(1)
    valid = y != ignore
    assert (pred == y)[valid].float().mean().item() >= 0.85
