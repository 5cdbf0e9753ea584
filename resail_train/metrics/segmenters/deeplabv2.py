"""DeepLab v2 (ResNet-101 + ASPP) for COCO-Stuff (kazuto1011/deeplab-pytorch), the Table-1 COCO-Stuff segmenter.

The published ``deeplabv2_resnet101_msc-cocostuff164k-100000.pth`` is the state dict of
``MSC(DeepLabV2(n_classes=182, n_blocks=[3, 4, 23, 3], atrous_rates=[6, 12, 18, 24]), scales=[0.5, 0.75])``;
module names here follow it: ``base.layer1`` = stem (``conv1`` = conv 7×7/2 + BN + ReLU as ``conv``/``bn``,
then a 3×3/2 max pool with ``ceil_mode``), ``base.layer2..5`` = bottleneck stacks ``block1..N`` with
``reduce``/``conv3x3``/``increase``/``shortcut`` (a projection in every first block; stride on
``reduce``; layer4/5 dilated 2/4, output stride 8), ``base.aspp.c0..c3`` = 3×3 convolutions with
dilations 6/12/18/24 and bias, summed. BN eps 1e-5.

Input: BGR minus the Caffe means (B 104.008, G 116.669, R 122.675), 0..255, not scaled
(``libs/datasets/base.py``). ``scales=None`` = ``MSC`` at test time: logits of the image and of its
0.5× and 0.75× copies (bilinear), up-sampled to the full-scale logits and merged by a pixel-wise
max; then (``main.py``) bilinearly up-sampled to the image size. Explicit ``scales`` are merged the
same way (max). Labels: COCO-Stuff ids 0..181 are the network's 182 indices (255 = unlabeled).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError
from resail_train.metrics.segmenters.base import IGNORE, Segmenter, load_state_strict, to_tensor

CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)
NUM_CLASSES = 182
ATROUS_RATES = (6, 12, 18, 24)
MSC_SCALES = (1.0, 0.5, 0.75)


class ConvBnReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int, padding: int, dilation: int, relu: bool = True):
        super().__init__()
        self.add_module("conv", nn.Conv2d(cin, cout, k, stride, padding, dilation, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout, eps=1e-5))
        if relu:
            self.add_module("relu", nn.ReLU())


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dilation: int, downsample: bool) -> None:
        super().__init__()
        mid = cout // 4
        self.reduce = ConvBnReLU(cin, mid, 1, stride, 0, 1)
        self.conv3x3 = ConvBnReLU(mid, mid, 3, 1, dilation, dilation)
        self.increase = ConvBnReLU(mid, cout, 1, 1, 0, 1, relu=False)
        self.shortcut = ConvBnReLU(cin, cout, 1, stride, 0, 1, relu=False) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


class ResLayer(nn.Sequential):
    def __init__(self, n: int, cin: int, cout: int, stride: int, dilation: int) -> None:
        super().__init__()
        for i in range(n):
            self.add_module(f"block{i + 1}", Bottleneck(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                                                        dilation, downsample=i == 0))


class Stem(nn.Sequential):
    def __init__(self, cout: int) -> None:
        super().__init__()
        self.add_module("conv1", ConvBnReLU(3, cout, 7, 2, 3, 1))
        self.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int, rates=ATROUS_RATES) -> None:
        super().__init__()
        for i, r in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(cin, cout, 3, 1, padding=r, dilation=r, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(conv(x) for conv in self.children())


class DeepLabV2(nn.Sequential):
    """Dilated ResNet-101 + ASPP, output stride 8."""

    def __init__(self, num_classes: int = NUM_CLASSES, blocks=(3, 4, 23, 3), rates=ATROUS_RATES) -> None:
        super().__init__()
        ch = [64 * 2 ** p for p in range(6)]
        self.add_module("layer1", Stem(ch[0]))
        self.add_module("layer2", ResLayer(blocks[0], ch[0], ch[2], 1, 1))
        self.add_module("layer3", ResLayer(blocks[1], ch[2], ch[3], 2, 1))
        self.add_module("layer4", ResLayer(blocks[2], ch[3], ch[4], 1, 2))
        self.add_module("layer5", ResLayer(blocks[3], ch[4], ch[5], 1, 4))
        self.add_module("aspp", ASPP(ch[5], num_classes, rates))


class MSC(nn.Module):
    """Holds the network as ``base`` (the published key prefix); the scales live in the segmenter."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)


class DeepLabV2Segmenter(Segmenter):
    name = "deeplabv2-r101"
    dataset = "coco-stuff"
    num_classes = NUM_CLASSES
    default_scales = MSC_SCALES
    combine = "max"

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(CAFFE_MEAN_BGR, device=x.device).view(1, 3, 1, 1)
        return x.flip(1) - mean  # RGB → BGR, minus the Caffe means

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # logits at 1/8 of the input

    @torch.no_grad()
    def predict_scores(self, images, scales=None) -> torch.Tensor:
        """MSC: per-scale logits resized to the first scale's logit grid, pixel-wise max, then to H×W."""
        x = to_tensor(images).to(self.device)
        h, w = x.shape[-2:]
        scales = self.default_scales if scales is None else tuple(scales)
        merged = None
        for xs in self.scaled_inputs(x, scales):
            lg = self.scores(self.normalise(xs))
            if merged is None:
                merged = lg
            else:
                merged = torch.maximum(merged, F.interpolate(lg, size=merged.shape[-2:], mode="bilinear",
                                                             align_corners=False))
        return F.interpolate(merged, size=(h, w), mode="bilinear", align_corners=False).cpu()

    def label_lut(self, meta) -> np.ndarray:
        lut = np.full(256, IGNORE, np.int64)
        lut[:NUM_CLASSES] = np.arange(NUM_CLASSES)
        return lut


def load(weights: list[str], device="cpu") -> DeepLabV2Segmenter:
    if len(weights) != 1:
        raise ConfigError(None, "deeplabv2-r101 takes one weights file "
                                "(deeplabv2_resnet101_msc-cocostuff164k-100000.pth)")
    model = load_state_strict(MSC(DeepLabV2()), weights[0], "DeepLabV2 ResNet-101 MSC (182 COCO-Stuff classes)")
    return DeepLabV2Segmenter(model, device, weights)
