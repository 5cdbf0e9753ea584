"""DRN-D-105 for Cityscapes (fyu/drn, ``segment.py``'s ``DRNSeg('drn_d_105', 19)``): the Table-1 segmenter.

Architecture (``drn.py``: ``DRN(Bottleneck, [1, 1, 3, 4, 23, 3, 1, 1], arch='D')``), written here with the
module names of the published state dict: ``base`` is the DRN's children without ``avgpool``/``fc``
(``base.0`` = layer0 7×7 stem, ``base.1``/``base.2`` = single conv layers (stride 1, 2), ``base.3``..
``base.6`` = bottleneck layers 3/4/23/3 (strides 2, 2, dilations 2, 4, stride on the 3×3), ``base.7``/
``base.8`` = conv layers with dilation 2 and 1), ``seg`` = 1×1 conv to 19 classes, ``up`` = the fixed
bilinear ``ConvTranspose2d(19, 19, 16, stride=8, padding=4, groups=19)``.

Input: RGB in [0, 1] normalised with the Cityscapes mean/std of ``datasets/cityscapes/info.json``,
padded (replicate) to a multiple of 8 so that ``up`` returns exactly the input size, then cropped.
Output: ``log_softmax`` of ``up``'s map (what ``DRNSeg.forward`` returns). ``scales=None`` = one
forward at the input size (``segment.py``'s default single-scale test); several scales are summed
(``test_ms``). Labels: Cityscapes labelIds → the 19 trainIds (other labelIds ignored); a run in the
trainId space is used as is.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.datasets import cityscapes
from pipeline.errors import ConfigError
from resail_train.metrics.segmenters.base import IGNORE, Segmenter, load_state_strict

CITYSCAPES_MEAN = (0.29010095242892997, 0.32808144844279574, 0.28696394422942517)
CITYSCAPES_STD = (0.1829540508368939, 0.18656561047509476, 0.18447508988480435)
NUM_CLASSES = 19
CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)
LAYERS_D105 = (1, 1, 3, 4, 23, 3, 1, 1)


class Bottleneck(nn.Module):
    """DRN bottleneck: 1×1 → 3×3 (stride, dilation) → 1×1 ×4, identity or 1×1 projection."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, downsample: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(planes * 4)) if downsample else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _conv_layers(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _bottleneck_layer(cin: int, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    # drn.py: the first block of a dilated layer (new_level=False) already uses the full dilation
    layers = [Bottleneck(cin, planes, stride, dilation, downsample=stride != 1 or cin != planes * 4)]
    layers += [Bottleneck(planes * 4, planes, 1, dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def drn_d_base(layers: Sequence[int] = LAYERS_D105, channels: Sequence[int] = CHANNELS) -> nn.Sequential:
    """The DRN-D trunk as ``DRNSeg.base`` holds it (children 0..8)."""
    c = channels
    stem = nn.Sequential(nn.Conv2d(3, c[0], 7, padding=3, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU(inplace=True))
    if layers[0] != 1 or layers[1] != 1 or layers[6] != 1 or layers[7] != 1:
        raise ValueError("DRN-D variants here have single conv layers at levels 1, 2, 7, 8")
    mods = [stem, _conv_layers(c[0], c[0]), _conv_layers(c[0], c[1], stride=2),
            _bottleneck_layer(c[1], c[2], layers[2], stride=2),
            _bottleneck_layer(c[2] * 4, c[3], layers[3], stride=2),
            _bottleneck_layer(c[3] * 4, c[4], layers[4], dilation=2),
            _bottleneck_layer(c[4] * 4, c[5], layers[5], dilation=4),
            _conv_layers(c[5] * 4, c[6], dilation=2), _conv_layers(c[6], c[7])]
    return nn.Sequential(*mods)


def bilinear_up_weights(up: nn.ConvTranspose2d) -> None:
    """The fixed bilinear kernel DRN's ``fill_up_weights`` puts into ``up`` (same in every group)."""
    k = up.weight.shape[2]
    f = int(np.ceil(k / 2))
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    r = 1 - np.abs(np.arange(k) / f - c)
    with torch.no_grad():
        up.weight.copy_(torch.from_numpy(np.outer(r, r)).float().expand_as(up.weight))


class DRNSeg(nn.Module):
    """``base`` → ``seg`` (1×1) → ``up`` (×8 transposed conv); returns the up-sampled logits."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.base = drn_d_base()
        self.seg = nn.Conv2d(CHANNELS[-1], num_classes, 1, bias=True)
        self.up = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, padding=4, groups=num_classes,
                                     bias=False)
        bilinear_up_weights(self.up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.seg(self.base(x)))


class DRNSegmenter(Segmenter):
    name = "drn-d-105"
    dataset = "cityscapes"
    num_classes = NUM_CLASSES
    default_scales = (1.0,)
    combine = "mean"

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(CITYSCAPES_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CITYSCAPES_STD, device=x.device).view(1, 3, 1, 1)
        return (x / 255.0 - mean) / std

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return F.log_softmax(self.model(x)[..., :h, :w], dim=1)

    def label_lut(self, meta) -> np.ndarray:
        if meta == cityscapes.TRAIN_ID_META:
            lut = np.full(256, IGNORE, np.int64)
            lut[:NUM_CLASSES] = np.arange(NUM_CLASSES)
            return lut
        lut = np.asarray(cityscapes.LABEL_TO_TRAIN_LUT, np.int64).copy()
        lut[lut < 0] = IGNORE
        return lut


def load(weights: list[str], device="cpu") -> DRNSegmenter:
    if len(weights) != 1:
        raise ConfigError(None, "drn-d-105 takes one weights file (DRNSeg state dict, e.g. drn_d_105_cityscapes.pth)")
    model = load_state_strict(DRNSeg(), weights[0], "DRN-D-105 (DRNSeg, 19 Cityscapes classes)")
    return DRNSegmenter(model, device, weights)
