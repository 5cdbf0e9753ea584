"""Weights that fetch themselves (resail_train.models.weights) against a LOCAL HTTP server on 127.0.0.1:
a good file, a truncated one, a wrong hash, a 404, no server at all, the caches, and `--weights auto` end to end.
Nothing here touches the internet: every address is replaced through the URL base."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.errors import ConfigError
from resail_train.models import weights as W


def _state_bytes(seed: int, extra: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    state = {"features.0.weight": torch.randn(8, 3, 3, 3, generator=g), "features.0.bias": torch.randn(8 + extra,
                                                                                                         generator=g)}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    hits: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.hits.append(self.path)
        mode, _, rel = self.path.lstrip("/").partition("/")
        body = self.files.get(rel)
        if body is None or mode == "missing":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "garbage":
            body = b"<html>not a checkpoint</html>" * 10
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncated":  # the connection drops half-way
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    _Handler.hits = []
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """$RESAIL_HOME and torch's hub cache in tmp; no URL base from the environment."""
    monkeypatch.setenv("RESAIL_HOME", str(tmp_path / "resail"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("RESAIL_WEIGHTS_URL_BASE", raising=False)
    return tmp_path / "resail"


@pytest.fixture
def vgg_good(monkeypatch):
    """A torchvision-format file, with the registry's published 8-digit prefix set to its own sha256."""
    good, other = _state_bytes(0), _state_bytes(1, extra=1)
    prefix = hashlib.sha256(good).hexdigest()[:8]
    monkeypatch.setitem(W.FILES, "vgg19", dataclasses.replace(W.FILES["vgg19"], sha256_prefix=prefix))
    _Handler.files = {"vgg19-dcbb9e9d.pth": good}
    return good, other


def _closed_port_base() -> str:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def _leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in home.rglob("*") if p.name.endswith(".part"))


def test_good_download_is_atomic_cached_and_hashed(home, server, vgg_good):
    good, _ = vgg_good
    p = W.fetch("vgg19", url_base=server + "/good", progress=False)
    assert p == home / "weights" / "vgg19-dcbb9e9d.pth" and p.read_bytes() == good
    assert _Handler.hits == ["/good/vgg19-dcbb9e9d.pth"]
    side = json.loads((p.parent / ".vgg19-dcbb9e9d.pth.sha256").read_text())
    assert side["sha256"] == hashlib.sha256(good).hexdigest() == W.sha256_file(p)
    # cached: no network at all (the server is not even asked; a dead address would do)
    assert W.fetch("vgg19", url_base=_closed_port_base(), progress=False) == p
    assert W.resolve_vgg_weights("auto", url_base=_closed_port_base(), progress=False) == str(p)
    assert W.resolve_vgg_weights("/some/path.pth") == "/some/path.pth"
    assert _Handler.hits == ["/good/vgg19-dcbb9e9d.pth"] and _leftovers(home) == []


def test_environment_url_base_and_progress_bar(home, server, vgg_good, monkeypatch, capsys):
    monkeypatch.setenv("RESAIL_WEIGHTS_URL_BASE", server + "/good/")
    assert W.source_url("deeplabv2-r101") == server + "/good/deeplabv2/deeplabv2_resnet101_msc-cocostuff164k-100000.pth"
    p = W.fetch("vgg19")  # progress=True: a tqdm bar on stderr
    assert p.is_file() and "vgg19-dcbb9e9d.pth" in capsys.readouterr().err


@pytest.mark.parametrize("mode,key,needle", [
    ("truncated", "vgg19", "(truncated download|connection closed after)"),
    ("missing", "vgg19", "HTTP 404"),
    ("garbage", "deeplabv2-r101", "not a readable checkpoint"),  # no published hash: torch.load is the check
    ("garbage", "vgg19", "does not start with the published"),
])
def test_bad_downloads_are_one_line_and_leave_nothing(home, server, vgg_good, mode, key, needle):
    _Handler.files[W.FILES["deeplabv2-r101"].relpath] = _state_bytes(2)
    with pytest.raises(ConfigError) as e:
        W.fetch(key, url_base=f"{server}/{mode}", progress=False)
    msg = str(e.value)
    rel = W.FILES[key].relpath
    assert "\n" not in msg and re.search(needle, msg), msg
    assert f"{server}/{mode}/{rel}" in msg  # the address …
    assert str(home / "weights" / rel) in msg  # … and where to put the file by hand
    assert not (home / "weights" / rel).exists() and _leftovers(home) == []


def test_wrong_hash_is_refused(home, server, vgg_good):
    good, other = vgg_good
    _Handler.files = {"vgg19-dcbb9e9d.pth": other}  # a valid checkpoint, but not the published file
    with pytest.raises(ConfigError, match="does not start with the published") as e:
        W.fetch("vgg19", url_base=server + "/good", progress=False)
    assert "\n" not in str(e.value) and not (home / "weights" / "vgg19-dcbb9e9d.pth").exists()


def test_offline_is_one_line_naming_address_and_path(home):
    with pytest.raises(ConfigError) as e:
        W.fetch("upernet-r101-decoder", url_base=_closed_port_base(), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "decoder_epoch_50.pth" in msg
    assert str(home / "weights" / "ade20k-resnet101-upernet" / "decoder_epoch_50.pth") in msg
    # DRN-D-105: its authors publish a shared folder, not a file address
    with pytest.raises(ConfigError, match="no direct file address") as e:
        W.fetch("drn-d-105", progress=False)
    assert "go.yf.io/drn-cityscapes-models" in str(e.value)
    assert str(home / "weights" / "drn-d-105" / "drn-d-105_ms_cityscapes.pth") in str(e.value)


def test_published_addresses_are_the_authors():
    assert W.FILES["vgg19"].url == "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
    assert W.FILES["upernet-r101-encoder"].url == (
        "http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-resnet101-upernet/encoder_epoch_50.pth")
    assert W.FILES["deeplabv2-r101"].url == ("https://github.com/kazuto1011/deeplab-pytorch/releases/download/v1.0/"
                                             "deeplabv2_resnet101_msc-cocostuff164k-100000.pth")
    assert W.FILES["drn-d-105"].url is None and all(f.licence for f in W.FILES.values())


def test_vgg_from_torch_hub_cache_without_network(home, tmp_path):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "vgg19-dcbb9e9d.pth").write_bytes(_state_bytes(3))
    assert W.fetch("vgg19", url_base=_closed_port_base(), progress=False) == hub / "vgg19-dcbb9e9d.pth"
    assert not (home / "weights").exists()


def test_segmenter_auto_order_and_user_paths(home, server):
    _Handler.files = {"ade20k-resnet101-upernet/encoder_epoch_50.pth": _state_bytes(4),
                      "ade20k-resnet101-upernet/decoder_epoch_50.pth": _state_bytes(5)}
    got = W.resolve_segmenter_weights("upernet-r101", "auto", url_base=server + "/good", progress=False)
    assert [Path(p).name for p in got] == ["encoder_epoch_50.pth", "decoder_epoch_50.pth"]
    assert W.resolve_segmenter_weights("upernet-r101", "a.pth,b.pth") == "a.pth,b.pth"
    with pytest.raises(ConfigError, match="no published weights"):
        W.resolve_segmenter_weights("own", "auto")


def test_score_with_weights_auto_end_to_end(home, server, tmp_path, monkeypatch):
    """`resail score --dataset cityscapes --weights auto`: a random DRN-D-105 in the published layout is
    fetched from the local server, loaded strictly, and scores two images."""
    import cv2

    from resail_train.metrics.segmenters.drn import DRNSeg
    from stages.cli import main

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save({"module." + k: v for k, v in DRNSeg().state_dict().items() if not k.endswith("num_batches_tracked")},
               buf)
    _Handler.files = {"drn-d-105/drn-d-105_ms_cityscapes.pth": buf.getvalue()}
    monkeypatch.setenv("RESAIL_WEIGHTS_URL_BASE", server + "/good")
    rng = np.random.default_rng(0)
    for sub in ("fake", "real", "labels"):
        (tmp_path / sub).mkdir()
    for i in range(2):
        for sub in ("fake", "real"):
            cv2.imwrite(str(tmp_path / sub / f"f{i}.png"), rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
        cv2.imwrite(str(tmp_path / "labels" / f"f{i}.png"), rng.choice([0, 7, 26], (24, 40)).astype(np.uint8))
    torch.set_num_threads(1)
    r = CliRunner().invoke(main, ["score", "--fake", str(tmp_path / "fake"), "--real", str(tmp_path / "real"),
                                  "--labels", str(tmp_path / "labels"), "--dataset", "cityscapes", "--weights", "auto",
                                  "--inception-weights", "none", "--device", "cpu", "--no-progress",
                                  "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "out" / "score.json").read_text())
    dest = home / "weights" / "drn-d-105" / "drn-d-105_ms_cityscapes.pth"
    assert s["protocol"]["segmenter"]["weights"] == [str(dest)]
    assert s["protocol"]["segmenter"]["sha256"] == [hashlib.sha256(buf.getvalue()).hexdigest()]
    assert 0 <= s["miou"] <= 1 and s["pixel_acc_incl_void"] <= s["pixel_acc"]  # labelId 0 is void for DRN


def test_train_vgg_weights_auto_is_resolved_before_training(home, tmp_path, monkeypatch):
    """`resail train --vgg-weights auto` with a VGG loss fetches VGG19 first: offline it is one line naming
    the address and the path, before any cache is read; a config without VGG loss never fetches."""
    from stages.cli import main

    dead = _closed_port_base()
    monkeypatch.setenv("RESAIL_WEIGHTS_URL_BASE", dead)
    r = CliRunner().invoke(main, ["train", "--config", "cityscapes", "--vgg-weights", "auto", "--cache",
                                  str(tmp_path / "no_cache"), "--out", str(tmp_path / "run"), "--no-progress"])
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert f"{dead}/vgg19-dcbb9e9d.pth" in r.output and str(home / "weights" / "vgg19-dcbb9e9d.pth") in r.output
    r = CliRunner().invoke(main, ["train", "--config", "demo", "--set", "loss.lambda_vgg=0", "--vgg-weights", "auto",
                                  "--cache", str(tmp_path / "no_cache"), "--out", str(tmp_path / "run"),
                                  "--no-progress"])
    assert "vgg19" not in r.output and r.exit_code == 1  # fails on the missing cache, not on the weights
