"""``model.norm: pix2pixhd_plus`` — guidance by concatenation (paper Table 3 "Pix2pixHD+", appendix C).

"We concatenate the feature with the semantic map and the guidance image following with convolution
layer, and we discard the encoder part of Pix2pixHD": each ResBlk normalisation becomes
``BN(conv3×3([x (C), label one-hot (label_nc), guidance RGB (3)] → C))`` with a parameter-free
BatchNorm and **no** γ/β modulation — the label map and guidance enter only as extra conv inputs,
the way pix2pixHD feeds its input. "Decoder-only": the generator backbone is the same SPADE decoder
as for every variant (downsampled label map → conv → ResBlks with upsampling); pix2pixHD's
downsampling encoder and its global/local split are not used. Released code: ``No_norm``
(``--norm_way no_norm``: one conv of ``norm_nc + label_nc + 3 → norm_nc``, then the param-free norm).
``hidden`` is unused (there is no hidden layer).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from resail_train.models.norms.blocks import require_guidance, resize_guidance, resize_seg
from resail_train.models.norms.variant import NormVariant


class ConcatConvNorm(nn.Module):
    """``ConcatConvNorm(norm_nc, label_nc, hidden=128)``; ``forward(x, seg, guidance) -> [B, norm_nc, h, w]``."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128, image_nc: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(norm_nc + label_nc + image_nc, norm_nc, 3, padding=1)
        self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)

    def forward(self, x: torch.Tensor, seg: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        guidance = require_guidance(guidance, "ConcatConvNorm")
        size = tuple(x.shape[-2:])
        h = torch.cat([x, resize_seg(seg, size).to(x.dtype), resize_guidance(guidance, size).to(x.dtype)], dim=1)
        return self.param_free_norm(self.conv(h))


VARIANT = NormVariant(
    "pix2pixhd_plus", ConcatConvNorm, released="No_norm (--norm_way no_norm)",
    summary="Pix2pixHD+: conv over [features, label map, guidance], parameter-free BN, no modulation")
