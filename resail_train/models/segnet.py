"""The frozen segmentation network behind the segmentation loss (paper appendix C, Fig. F).

A U-Net of 12 residual blocks following the OASIS discriminator: 6 encoder blocks (each halves the
resolution with 2×2 average pooling) with channels ``3-w-w-2w-2w-4w-4w`` (``w = base_width``, 128 in
the paper → 3-128-128-256-256-512-512) and 6 decoder blocks (each doubles the resolution with
nearest upsampling) that take the concatenation of the previous decoder output and the encoder
feature of the same resolution (skip connection), ending at ``w / 2`` channels; a 1×1 conv then
gives ``num_classes`` logits at the input resolution. Unlike the OASIS discriminator there is no
"fake" (N+1) channel and no ignore channel: ignored pixels are excluded by the loss instead.

Residual block (OASIS ``residual_block_D``): main path ``[LReLU(0.2)] → [up] → conv3×3 → LReLU(0.2)
→ conv3×3 → [avgpool]``; shortcut ``[up] → [conv1×1 if channels change] → [avgpool]``. The very
first block starts with its conv (no activation on the RGB input) and pools before its shortcut
conv. Spectral norm on every conv (OASIS), switchable.

Input ``[B, 3, H, W]`` in [-1, 1] with ``H`` and ``W`` divisible by 64 (2**6); output
``[B, num_classes, H, W]`` logits over dense class indices 0..num_classes-1.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from resail_train.runtime import pad_to_multiple

NUM_DOWN = 6


class SegResBlock(nn.Module):
    """``SegResBlock(fin, fout, direction, first=False, spectral=True)``; direction -1 down, +1 up."""

    def __init__(self, fin: int, fout: int, direction: int, first: bool = False, spectral: bool = True) -> None:
        super().__init__()
        sn = spectral_norm if spectral else (lambda m: m)
        self.direction = direction
        self.first = first
        self.learned_shortcut = fin != fout
        self.conv1 = sn(nn.Conv2d(fin, fout, 3, padding=1))
        self.conv2 = sn(nn.Conv2d(fout, fout, 3, padding=1))
        if self.learned_shortcut:
            self.conv_s = sn(nn.Conv2d(fin, fout, 1))

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.direction > 0:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, 2)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.first or self.direction > 0:
            x = self._resample(x)
            return self.conv_s(x) if self.learned_shortcut else x
        if self.learned_shortcut:
            x = self.conv_s(x)
        return self._resample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dx = x if self.first else F.leaky_relu(x, 0.2)
        if self.direction > 0:
            dx = self._resample(dx)
        dx = self.conv2(F.leaky_relu(self.conv1(dx), 0.2))
        if self.direction < 0:
            dx = self._resample(dx)
        return self._shortcut(x) + dx


class SegNet(nn.Module):
    """``SegNet(num_classes, base_width=128, in_channels=3, spectral=True)``.

    ``forward(image [B, 3, H, W] in [-1, 1]) -> logits [B, num_classes, H, W]``.
    """

    def __init__(self, num_classes: int, base_width: int = 128, in_channels: int = 3, spectral: bool = True) -> None:
        super().__init__()
        w = base_width
        if w < 2:
            raise ValueError(f"base_width must be >= 2, got {w}")
        self.num_classes = num_classes
        ch = [in_channels, w, w, 2 * w, 2 * w, 4 * w, 4 * w]
        self.down = nn.ModuleList(
            SegResBlock(ch[i], ch[i + 1], -1, first=(i == 0), spectral=spectral) for i in range(NUM_DOWN)
        )
        up = [SegResBlock(ch[-1], ch[-2], +1, spectral=spectral)]
        for i in range(1, NUM_DOWN - 1):
            up.append(SegResBlock(2 * ch[-1 - i], ch[-2 - i], +1, spectral=spectral))
        up.append(SegResBlock(2 * ch[1], w // 2, +1, spectral=spectral))
        self.up = nn.ModuleList(up)
        self.head = nn.Conv2d(w // 2, num_classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        factor = 2 ** NUM_DOWN
        if image.shape[-2] % factor or image.shape[-1] % factor:
            raise ValueError(f"SegNet input size {tuple(image.shape[-2:])} is not divisible by {factor}")
        skips = []
        x = image
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.up[0](x)
        for i in range(1, NUM_DOWN):
            x = self.up[i](torch.cat((skips[-1 - i], x), dim=1))
        return self.head(x)


def segment(segnet: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Segmentation logits at the images' size (inputs padded to a multiple of 64 for the U-Net)."""
    h, w = images.shape[-2:]
    return segnet(pad_to_multiple(images))[..., :h, :w]
