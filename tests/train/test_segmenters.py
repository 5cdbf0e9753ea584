"""The published Table-1 segmenters on random weights: key layouts, strict loading, wrong-file refusal,
preprocessing, scales and label mapping (no weights can be downloaded here).

Expected keys and shapes below are written from the published repositories (fyu/drn ``drn.py`` +
``segment.py``; CSAILVision ``mit_semseg/models``; kazuto1011 ``libs/models``), not from our modules.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from resail_train.metrics.segmenters.base import IGNORE
from resail_train.metrics.segmenters.registry import load_segmenter

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread


def _save(state, path, prefix=""):
    torch.save({prefix + k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Random-weight checkpoints in the published layouts (BN counters dropped, as in 2018-era files)."""
    from resail_train.metrics.segmenters.deeplabv2 import MSC, DeepLabV2
    from resail_train.metrics.segmenters.drn import DRNSeg
    from resail_train.metrics.segmenters.upernet import UPerNetR101

    d = tmp_path_factory.mktemp("segmenters")
    torch.manual_seed(0)
    drn, up, dl = DRNSeg(), UPerNetR101(), MSC(DeepLabV2())
    for m in (drn, up, dl):  # non-trivial BN statistics
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return {
        "drn_model": drn,
        "drn_state": drn.state_dict(), "up_enc": up.encoder.state_dict(), "up_dec": up.decoder.state_dict(),
        "dl_state": dl.state_dict(),
        "drn": _save(drn.state_dict(), d / "drn_d_105_cityscapes.pth", prefix="module."),
        "enc": _save(up.encoder.state_dict(), d / "encoder_epoch_50.pth"),
        "dec": _save(up.decoder.state_dict(), d / "decoder_epoch_50.pth"),
        "dl": _save(dl.state_dict(), d / "deeplabv2_resnet101_msc-cocostuff164k-100000.pth"),
        "dir": d,
    }


def _shape(state, key):
    return tuple(state[key].shape)


# --------------------------------------------------------------------------- key layouts
def test_drn_d_105_key_layout(files):
    s = files["drn_state"]
    assert {k.split(".")[1] for k in s if k.startswith("base.")} == {str(i) for i in range(9)}
    assert _shape(s, "base.0.0.weight") == (16, 3, 7, 7)                       # layer0 stem
    assert _shape(s, "base.2.0.weight") == (32, 16, 3, 3)                      # layer2 conv, stride 2
    assert _shape(s, "base.3.0.downsample.0.weight") == (256, 32, 1, 1)        # layer3 bottleneck 64×4
    assert "base.3.1.downsample.0.weight" not in s
    assert _shape(s, "base.5.22.conv2.weight") == (256, 256, 3, 3)             # 23 blocks in layer5
    assert "base.5.23.conv1.weight" not in s
    assert _shape(s, "base.6.2.conv3.weight") == (2048, 512, 1, 1)             # layer6: 3 blocks
    assert _shape(s, "base.7.0.weight") == (512, 2048, 3, 3)                   # layer7 conv (dilation 2)
    assert _shape(s, "base.8.0.weight") == (512, 512, 3, 3)
    assert _shape(s, "seg.weight") == (19, 512, 1, 1) and _shape(s, "seg.bias") == (19,)
    assert _shape(s, "up.weight") == (19, 1, 16, 16)
    # parameters of the classification net (fc 512→1000 instead of seg/up): docs/evaluation.md says 54.8M
    n = sum(v.numel() for k, v in s.items() if "running" not in k and "num_batches" not in k
            and not k.startswith(("seg.", "up.")))
    assert round((n + 512 * 1000 + 1000) / 1e6, 1) == 54.8


def test_drn_dilations_and_fixed_upsampling(files):
    m = files["drn_model"]
    assert m.base[5][0].conv2.dilation == (2, 2) and m.base[6][0].conv2.dilation == (4, 4)
    assert m.base[3][0].conv2.stride == (2, 2) and m.base[4][0].conv2.stride == (2, 2)
    assert m.base[7][0].dilation == (2, 2) and m.base[8][0].dilation == (1, 1)
    assert (m.up.stride, m.up.padding, m.up.groups) == ((8, 8), (4, 4), 19)
    # segment.py's fill_up_weights, re-done with loops
    f = math.ceil(16 / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    k = torch.tensor([[(1 - abs(i / f - c)) * (1 - abs(j / f - c)) for j in range(16)] for i in range(16)])
    for ch in (0, 7, 18):
        torch.testing.assert_close(m.up.weight[ch, 0], k)


def test_upernet_key_layout(files):
    e, d = files["up_enc"], files["up_dec"]
    assert _shape(e, "conv1.weight") == (64, 3, 3, 3) and _shape(e, "conv3.weight") == (128, 64, 3, 3)
    assert _shape(e, "layer1.0.downsample.0.weight") == (256, 128, 1, 1)
    assert _shape(e, "layer3.22.conv3.weight") == (1024, 256, 1, 1) and "layer3.23.conv1.weight" not in e
    assert _shape(e, "layer4.2.conv3.weight") == (2048, 512, 1, 1)
    assert not any(k.startswith(("fc.", "avgpool")) for k in e)
    assert _shape(d, "ppm_conv.3.0.weight") == (512, 2048, 1, 1) and "ppm_conv.4.0.weight" not in d
    assert _shape(d, "ppm_last_conv.0.weight") == (512, 2048 + 4 * 512, 3, 3)
    assert _shape(d, "fpn_in.2.0.weight") == (512, 1024, 1, 1) and "fpn_in.3.0.weight" not in d
    assert _shape(d, "fpn_out.0.0.0.weight") == (512, 512, 3, 3)
    assert _shape(d, "conv_last.0.0.weight") == (512, 4 * 512, 3, 3)
    assert _shape(d, "conv_last.1.weight") == (150, 512, 1, 1) and _shape(d, "conv_last.1.bias") == (150,)


def test_deeplabv2_key_layout(files):
    from resail_train.metrics.segmenters.deeplabv2 import MSC, DeepLabV2

    s = files["dl_state"]
    assert all(k.startswith("base.") for k in s)
    assert _shape(s, "base.layer1.conv1.conv.weight") == (64, 3, 7, 7)
    assert _shape(s, "base.layer2.block1.shortcut.conv.weight") == (256, 64, 1, 1)
    assert "base.layer2.block2.shortcut.conv.weight" not in s
    assert _shape(s, "base.layer4.block23.increase.conv.weight") == (1024, 256, 1, 1)
    assert "base.layer4.block24.reduce.conv.weight" not in s
    assert _shape(s, "base.layer5.block1.reduce.conv.weight") == (512, 1024, 1, 1)
    for i in range(4):
        assert _shape(s, f"base.aspp.c{i}.weight") == (182, 2048, 3, 3) and _shape(s, f"base.aspp.c{i}.bias") == (182,)
    m = MSC(DeepLabV2())
    assert [m.base.aspp.get_submodule(f"c{i}").dilation for i in range(4)] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert m.base.layer4.block2.conv3x3.conv.dilation == (2, 2) and m.base.layer5.block3.conv3x3.conv.dilation == (4, 4)
    assert m.base.layer3.block1.reduce.conv.stride == (2, 2) and m.base.layer1.pool.ceil_mode


# --------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def loaded(files):
    wrapped = files["dir"] / "wrapped.pth"
    torch.save({"state_dict": files["dl_state"]}, wrapped)
    return {"drn": load_segmenter("drn-d-105", str(files["drn"])),  # saved with DataParallel's "module."
            "up": load_segmenter("upernet-r101", f"{files['enc']},{files['dec']}"),
            "dl": load_segmenter("deeplabv2-r101", [str(wrapped)])}  # inside a {"state_dict": ...}


def test_published_files_load_strictly(files, loaded):
    drn, up, dl = loaded["drn"], loaded["up"], loaded["dl"]
    for k, v in files["drn_state"].items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(drn.model.state_dict()[k], v), k
    assert torch.equal(up.model.decoder.state_dict()["conv_last.1.bias"], files["up_dec"]["conv_last.1.bias"])
    assert torch.equal(dl.model.state_dict()["base.aspp.c2.weight"], files["dl_state"]["base.aspp.c2.weight"])
    assert (drn.num_classes, up.num_classes, dl.num_classes) == (19, 150, 182)


def test_wrong_files_are_refused_with_one_line(files, tmp_path):
    cases = [("drn-d-105", str(files["dl"]), files["dl"]), ("upernet-r101", f"{files['dec']},{files['enc']}", files["dec"])]  # swapped encoder/decoder
    for name, weights, culprit in cases:
        with pytest.raises(ConfigError) as e:
            load_segmenter(name, weights)
        msg = str(e.value)
        assert "\n" not in msg and str(culprit) in msg and "not a" in msg, msg
    cut = dict(files["drn_state"])
    cut.pop("seg.bias")
    with pytest.raises(ConfigError, match="missing keys 1 .seg.bias"):
        load_segmenter("drn-d-105", str(_save(cut, tmp_path / "cut.pth")))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        load_segmenter("drn-d-105", str(tmp_path / "junk.pth"))
    with pytest.raises(ConfigError, match="two weights files"):
        load_segmenter("upernet-r101", str(files["enc"]))
    with pytest.raises(ConfigError, match="unknown segmenter"):
        load_segmenter("segformer", str(files["drn"]))
    with pytest.raises(ConfigError, match="not found"):
        load_segmenter("drn-d-105", str(tmp_path / "absent.pth"))


# --------------------------------------------------------------------------- prediction
@torch.no_grad()
def test_drn_prediction_by_hand(loaded):
    drn = loaded["drn"]
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 21, 30, 3), dtype=np.uint8)  # not a multiple of 8
    pred = drn.predict(img)
    assert pred.shape == (2, 21, 30) and pred.dtype == torch.int64 and 0 <= int(pred.min()) <= int(pred.max()) < 19
    # by hand: info.json normalisation, replicate-pad to 24×32, DRNSeg forward, crop, argmax
    mean = torch.tensor([0.29010095242892997, 0.32808144844279574, 0.28696394422942517]).view(1, 3, 1, 1)
    std = torch.tensor([0.1829540508368939, 0.18656561047509476, 0.18447508988480435]).view(1, 3, 1, 1)
    x = (torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255 - mean) / std
    x = F.pad(x, (0, 2, 0, 3), mode="replicate")
    m = drn.model
    out = m.up(m.seg(m.base(x)))[..., :21, :30]
    assert out.shape[-2:] == (21, 30)
    assert torch.equal(pred, out.argmax(1))
    assert torch.equal(drn.predict(img, scales=(1.0,)), pred)  # the default is one forward


@torch.no_grad()
def test_deeplab_msc_max_by_hand(loaded):
    dl = loaded["dl"]
    img = np.random.default_rng(1).integers(0, 256, (1, 25, 33, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(0, 3, 1, 2).float()
    bgr = x[:, [2, 1, 0]] - torch.tensor([104.008, 116.669, 122.675]).view(1, 3, 1, 1)
    base = dl.model.base
    full = base(bgr)
    merged = full
    for s in (0.5, 0.75):
        xs = F.interpolate(x, size=(round(25 * s), round(33 * s)), mode="bilinear", align_corners=False)
        xs = xs[:, [2, 1, 0]] - torch.tensor([104.008, 116.669, 122.675]).view(1, 3, 1, 1)
        merged = torch.maximum(merged, F.interpolate(base(xs), size=full.shape[-2:], mode="bilinear",
                                                     align_corners=False))
    expected = F.interpolate(merged, size=(25, 33), mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(dl.predict(img), expected)
    single = F.interpolate(full, size=(25, 33), mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(dl.predict(img, scales=(1.0,)), single)


@torch.no_grad()
def test_upernet_prediction_and_protocol_sizes(loaded):
    from resail_train.metrics.segmenters.upernet import test_sizes

    up = loaded["up"]
    img = np.random.default_rng(2).integers(0, 256, (1, 24, 40, 3), dtype=np.uint8)
    x = (torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255
         - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    logits = up.model(x)
    expected = F.softmax(F.interpolate(logits, size=(24, 40), mode="bilinear", align_corners=False), 1).argmax(1)
    assert torch.equal(up.predict(img, scales=(1.0,)), expected)
    # eval.py: short side → 300…600, long side ≤ 1000, both rounded up to a multiple of 32
    assert test_sizes(256, 512) == [(320, 608), (384, 768), (480, 928), (512, 1024), (512, 1024)]
    assert test_sizes(1024, 2048)[0] == (320, 608) and test_sizes(600, 400)[0] == (480, 320)


# --------------------------------------------------------------------------- label spaces
def test_label_mapping():
    from pipeline.datasets import cityscapes
    from pipeline.datasets.base import ClassMeta, ClassInfo
    from resail_train.metrics.segmenters.deeplabv2 import DeepLabV2Segmenter
    from resail_train.metrics.segmenters.drn import DRNSegmenter
    from resail_train.metrics.segmenters.upernet import UPerNetSegmenter

    drn = DRNSegmenter.__new__(DRNSegmenter)
    lab = np.array([[7, 8, 26], [0, 255, 33]])  # road, sidewalk, car / unlabeled, void, bicycle
    assert drn.map_labels(lab, cityscapes.LABEL_ID_META).tolist() == [[0, 1, 13], [IGNORE, IGNORE, 18]]
    tr = np.array([[0, 18, 255]])
    assert drn.map_labels(tr, cityscapes.TRAIN_ID_META).tolist() == [[0, 18, IGNORE]]
    up = UPerNetSegmenter.__new__(UPerNetSegmenter)
    ade = ClassMeta("ade20k", 0, tuple(ClassInfo(i, f"c{i}", False) for i in range(1, 151)))
    assert up.map_labels(np.array([[0, 1, 150]]), ade).tolist() == [[IGNORE, 0, 149]]
    dl = DeepLabV2Segmenter.__new__(DeepLabV2Segmenter)
    coco = ClassMeta("coco-stuff", 255, tuple(ClassInfo(i, f"c{i}", i < 91) for i in range(182)))
    assert dl.map_labels(np.array([[0, 181, 255]]), coco).tolist() == [[0, 181, IGNORE]]
