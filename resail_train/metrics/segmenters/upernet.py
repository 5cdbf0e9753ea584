"""UperNet on ResNet-101 for ADE20K (CSAILVision/semantic-segmentation-pytorch, ``ade20k-resnet101-upernet``).

Two published files, loaded unchanged and strictly: ``encoder_epoch_50.pth`` — ``mit_semseg``'s
``Resnet`` wrapper of its deep-stem ResNet-101 (``conv1``/``bn1`` 3→64 stride 2, ``conv2``/``bn2``
64→64, ``conv3``/``bn3`` 64→128, max pool, ``layer1..4`` = 3/4/23/3 bottlenecks with the stride on
the 3×3 conv, no dilation) — and ``decoder_epoch_50.pth`` — ``UPerNet(num_class=150, fc_dim=2048,
fpn_dim=512)``: ``ppm_conv.{0..3}`` (1×1 2048→512 after adaptive pools 1, 2, 3, 6), ``ppm_last_conv``
(3×3 → 512), ``fpn_in.{0..2}`` (1×1 from 256/512/1024), ``fpn_out.{0..2}.0`` (3×3), ``conv_last``
(3×3 of the 4 fused levels → 512, then 1×1 → 150 with bias).

Both files were saved by code that used ``mit_semseg``'s ``SynchronizedBatchNorm2d``, which keeps
three extra buffers per BatchNorm (``_tmp_running_mean``, ``_tmp_running_var``, ``_running_iter``:
bookkeeping of its multi-GPU moving average that inference never reads), and by a PyTorch without
``num_batches_tracked``. Exactly those differences are accepted (the extra buffers dropped, after a
shape check); any other missing or unexpected key still refuses the file.

Input: RGB [0, 1] normalised with the ImageNet mean/std (``mit_semseg/dataset.py``); output: class
probabilities in ``UPerNet.forward(use_softmax=True)``'s order: the logits (at 1/4 of the network
input) are up-sampled bilinearly (``align_corners=False``) to the output size first, and the softmax
is taken there. ``scales=None`` is the repository's test protocol (``eval.py``): short side resized
to each of 300, 375, 450, 525, 600 (long side at most 1000, both rounded up to a multiple of 32),
each scale's probabilities at the image's size averaged over the five; explicit ``scales`` are
factors of the input size. Labels: ADE20K ids 1..150 → 0..149 (0 = void ignored).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError
from resail_train.metrics.segmenters.base import IGNORE, Segmenter, load_state_strict, read_state_dict, to_tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 150
TEST_SHORT_SIDES = (300, 375, 450, 525, 600)
TEST_MAX_SIZE = 1000
PADDING_CONSTANT = 32


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(planes * 4))
                           if stride != 1 or cin != planes * 4 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _layer(cin: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(Bottleneck(cin, planes, stride), *[Bottleneck(planes * 4, planes) for _ in range(1, blocks)])


class ResNetEncoder(nn.Module):
    """Deep-stem ResNet-101 returning the four stage outputs (C2..C5)."""

    def __init__(self, blocks=(3, 4, 23, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        self.layer1 = _layer(128, 64, blocks[0], 1)
        self.layer2 = _layer(256, 128, blocks[1], 2)
        self.layer3 = _layer(512, 256, blocks[2], 2)
        self.layer4 = _layer(1024, 512, blocks[3], 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs


class UPerNetDecoder(nn.Module):
    """Pyramid pooling on C5 + FPN over C2..C5, fused at C2's resolution → class logits."""

    def __init__(self, num_classes: int = NUM_CLASSES, fc_dim: int = 2048, pool_scales=(1, 2, 3, 6),
                 fpn_inplanes=(256, 512, 1024, 2048), fpn_dim: int = 512) -> None:
        super().__init__()
        self.pool_scales = tuple(pool_scales)
        self.ppm_conv = nn.ModuleList([_conv_bn_relu(fc_dim, 512, 1) for _ in pool_scales])
        self.ppm_last_conv = _conv_bn_relu(fc_dim + len(pool_scales) * 512, fpn_dim)
        self.fpn_in = nn.ModuleList([_conv_bn_relu(c, fpn_dim, 1) for c in fpn_inplanes[:-1]])
        self.fpn_out = nn.ModuleList([nn.Sequential(_conv_bn_relu(fpn_dim, fpn_dim)) for _ in fpn_inplanes[:-1]])
        self.conv_last = nn.Sequential(_conv_bn_relu(len(fpn_inplanes) * fpn_dim, fpn_dim),
                                       nn.Conv2d(fpn_dim, num_classes, 1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        c5 = feats[-1]
        size = c5.shape[-2:]
        ppm = [c5] + [conv(F.interpolate(F.adaptive_avg_pool2d(c5, s), size, mode="bilinear", align_corners=False))
                      for s, conv in zip(self.pool_scales, self.ppm_conv)]
        f = self.ppm_last_conv(torch.cat(ppm, 1))
        levels = [f]
        for i in reversed(range(len(feats) - 1)):
            lat = self.fpn_in[i](feats[i])
            f = lat + F.interpolate(f, size=lat.shape[-2:], mode="bilinear", align_corners=False)
            levels.append(self.fpn_out[i](f))
        levels.reverse()
        out_size = levels[0].shape[-2:]
        fused = [levels[0]] + [F.interpolate(l, out_size, mode="bilinear", align_corners=False) for l in levels[1:]]
        return self.conv_last(torch.cat(fused, 1))


class UPerNetR101(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.encoder = ResNetEncoder()
        self.decoder = UPerNetDecoder(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def test_sizes(h: int, w: int, short_sides=TEST_SHORT_SIDES) -> list[tuple[int, int]]:
    """``eval.py``'s resized test sizes (H, W) for an H×W image."""
    def up32(v: float) -> int:
        return ((int(v) - 1) // PADDING_CONSTANT + 1) * PADDING_CONSTANT

    out = []
    for s in short_sides:
        scale = min(s / float(min(h, w)), TEST_MAX_SIZE / float(max(h, w)))
        out.append((up32(h * scale), up32(w * scale)))
    return out


class UPerNetSegmenter(Segmenter):
    name = "upernet-r101"
    dataset = "ade20k"
    num_classes = NUM_CLASSES
    default_scales = "protocol"  # the repository's five short-side sizes (see scaled_inputs)
    combine = "mean"

    def scaled_inputs(self, x, scales):
        if scales == "protocol":
            return [F.interpolate(x, size=s, mode="bilinear", align_corners=False) if s != tuple(x.shape[-2:]) else x
                    for s in test_sizes(*x.shape[-2:])]
        return super().scaled_inputs(x, scales)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x / 255.0 - mean) / std

    def scores(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Class probabilities at ``size`` (default: the input's): logits up-sampled, then softmax."""
        logits = self.model(x)
        size = tuple(x.shape[-2:]) if size is None else tuple(size)
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return F.softmax(logits, dim=1)

    @torch.no_grad()
    def predict_scores(self, images, scales=None) -> torch.Tensor:
        """Per scale: logits up-sampled straight to H×W, softmax there; then the mean over the scales
        (``eval.py``: ``scores += segmentation_module(img, segSize) / len(imgSizes)``). Up-sampling
        probabilities instead (softmax at 1/4) changes the argmax wherever neighbouring logit cells
        disagree."""
        x = to_tensor(images).to(self.device)
        h, w = x.shape[-2:]
        scales = self.default_scales if scales is None else tuple(scales)
        inputs = self.scaled_inputs(x, scales)
        total = None
        for xs in inputs:
            p = self.scores(self.normalise(xs), (h, w))
            total = p if total is None else total + p
        return (total / len(inputs)).cpu()

    def label_lut(self, meta) -> np.ndarray:
        lut = np.full(256, IGNORE, np.int64)
        lut[1:NUM_CLASSES + 1] = np.arange(NUM_CLASSES)
        return lut


SYNC_BN_BUFFERS = ("_tmp_running_mean", "_tmp_running_var", "_running_iter")


def drop_sync_bn_buffers(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the ``SynchronizedBatchNorm2d`` buffers of ``module``'s BatchNorm layers.

    Only ``<bn>._tmp_running_mean`` / ``<bn>._tmp_running_var`` (one value per channel) and
    ``<bn>._running_iter`` (one value) of a BatchNorm2d ``<bn>`` are removed; anything else, and these
    names anywhere else or with another shape, stays for the strict loader to refuse."""
    channels = {name: m.num_features for name, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)}
    out = {}
    for key, value in state.items():
        prefix, _, buf = key.rpartition(".")
        n = channels.get(prefix)
        if n is not None and buf in SYNC_BN_BUFFERS:
            fits = value.numel() == 1 and value.dim() <= 1 if buf == "_running_iter" else tuple(value.shape) == (n,)
            if fits:
                continue
        out[key] = value
    return out


def _load_part(module: nn.Module, path: str, what: str) -> None:
    state = read_state_dict(path, what)
    load_state_strict(module, path, what, state=drop_sync_bn_buffers(module, state))


def load(weights: list[str], device="cpu") -> UPerNetSegmenter:
    if len(weights) != 2:
        raise ConfigError(None, "upernet-r101 takes two weights files: --segmenter-weights "
                                "encoder_epoch_50.pth,decoder_epoch_50.pth")
    model = UPerNetR101()
    _load_part(model.encoder, weights[0], "UperNet ResNet-101 encoder (encoder_epoch_50.pth)")
    _load_part(model.decoder, weights[1], "UperNet decoder, 150 ADE20K classes (decoder_epoch_50.pth)")
    return UPerNetSegmenter(model, device, weights)
