"""``model.norm: sean_plus`` — SEAN fed the guidance (paper Table 3 "SEAN+", appendix C, Fig. E).

"We extract per region style vectors from the guidance image with a style encoder network and
input the style vector and semantic map into the SEAN module. [...] dimension of style vector is
set to 128." Two parts, laid out as the released code (``SeanGenerator`` with ``Zencoder`` and
``ACE``) and SEAN itself:

* **Style encoder** (:class:`RegionStyleEncoder`, run once per generator forward on the full-size
  guidance image, shared by every ResBlk): ``reflect-pad + conv3×3(3 → w) → IN → LReLU(0.2)``,
  two ``conv3×3 stride 2`` (w → 2w → 4w) each ``→ IN → LReLU``, one ``convT3×3 stride 2``
  (4w → 8w) ``→ IN → LReLU``, ``reflect-pad + conv3×3(8w → S) → tanh`` (a feature map at half
  the input size), then **region-wise average pooling**: the style code of class c is the mean of
  the features over the pixels of c (label map resized nearest to that size); absent classes get
  a zero code. Output ``[B, label_nc, S]``. Released: w = 32, S = 128.
* **SEAN layer** (:class:`SEANPlusNorm`): per-class fully connected layer + ReLU on each class's
  code (SEAN's ``fc_mu<c>``, one ``S×S`` matrix per class), broadcast over that class's mask into
  a style map ``[B, S, h, w]``, ``conv3×3(S → C)`` for γ_style and another for β_style; a SPADE
  branch (label → hidden → γ_spade, β_spade); blended as SEAN does with learnable scalars
  ``γ = σ(wγ)·γ_style + (1 − σ(wγ))·γ_spade`` (same for β), initialised 0; ``out = BN(x)·(1 + γ) + β``.

Choices: S is ``model.norm_hidden`` (128 in the paper configs = the paper's style dimension; the
demo's 16 keeps it small) and the encoder width w = S / 4 (32 at S = 128, as released). As in
SEAN and the released ``SeanGenerator``, the last standard ResBlk (``up_3``) keeps plain SPADE.
The broadcast is ``einsum(codes, one-hot)`` rather than SEAN's per-class masked scatter: identical
for a one-hot map, differentiable for every class at once (no DDP "unused parameter" for classes
absent from a batch), and with the optional instance-edge channel the edge "region" gets its own
code added on top. SEAN's per-pixel noise (``noise_var``) is not used by the released ``ACE``
forward and is left out.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from resail_train.models.norms.blocks import CoarseBranch, ModulatedNorm, mix, require_guidance, resize_seg
from resail_train.models.norms.variant import NormVariant


def region_average(features: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """``features [B, S, h, w]``, ``seg [B, C, H, W]`` (one-hot, any size) → ``[B, C, S]`` class means (0 if absent)."""
    m = resize_seg(seg, tuple(features.shape[-2:])).to(features.dtype)
    area = m.sum(dim=(2, 3)).clamp(min=1.0)
    return torch.einsum("bshw,bchw->bcs", features, m) / area.unsqueeze(-1)


def broadcast_codes(codes: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """``codes [B, C, S]`` + ``seg [B, C, h, w]`` (at the target size) → style map ``[B, S, h, w]``."""
    return torch.einsum("bcs,bchw->bshw", codes, seg.to(codes.dtype))


class RegionStyleEncoder(nn.Module):
    """``RegionStyleEncoder(label_nc, style_dim=128, image_nc=3)``; ``forward(guidance, seg) -> [B, label_nc, S]``."""

    def __init__(self, label_nc: int, style_dim: int = 128, image_nc: int = 3) -> None:
        super().__init__()
        w = max(1, style_dim // 4)
        self.label_nc = label_nc
        self.style_dim = style_dim

        def block(conv: nn.Module, nc: int) -> list[nn.Module]:
            return [conv, nn.InstanceNorm2d(nc), nn.LeakyReLU(0.2)]

        self.net = nn.Sequential(
            nn.ReflectionPad2d(1), *block(nn.Conv2d(image_nc, w, 3), w),
            *block(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), 2 * w),
            *block(nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), 4 * w),
            *block(nn.ConvTranspose2d(4 * w, 8 * w, 3, stride=2, padding=1, output_padding=1), 8 * w),
            nn.ReflectionPad2d(1), nn.Conv2d(8 * w, style_dim, 3), nn.Tanh(),
        )

    def forward(self, guidance: torch.Tensor | None, seg: torch.Tensor) -> torch.Tensor:
        guidance = require_guidance(guidance, "RegionStyleEncoder")
        return region_average(self.net(guidance), seg)


class PerClassLinear(nn.Module):
    """One ``S_in → S_out`` linear layer per class: ``[B, C, S_in] -> [B, C, S_out]`` (SEAN's ``fc_mu<c>``)."""

    def __init__(self, num_classes: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_classes, out_features))
        bound = 1 / math.sqrt(in_features)  # nn.Linear's default init, per class
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def init_xavier_(self, gain: float) -> None:
        """Hook of :func:`resail_train.models.generator.xavier_init_`: Xavier-normal per class matrix, zero bias."""
        with torch.no_grad():
            for w in self.weight:
                nn.init.xavier_normal_(w, gain=gain)
            self.bias.zero_()

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bci,coi->bco", codes, self.weight) + self.bias


class SEANPlusNorm(ModulatedNorm):
    """``SEANPlusNorm(norm_nc, label_nc, hidden=128)``; ``forward(x, seg, codes [B, label_nc, hidden])``.

    Submodules: ``coarse`` (SPADE branch), ``style_fc`` (:class:`PerClassLinear`), ``gamma`` / ``beta``
    (convs on the style map); scalars ``mix_gamma`` / ``mix_beta`` initialised 0.
    """

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128) -> None:
        super().__init__(norm_nc)
        self.style_dim = hidden
        self.coarse = CoarseBranch(norm_nc, label_nc, hidden)
        self.style_fc = PerClassLinear(label_nc, hidden, hidden)
        self.gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.mix_gamma = nn.Parameter(torch.zeros(1))
        self.mix_beta = nn.Parameter(torch.zeros(1))

    def modulation(
        self, seg: torch.Tensor, codes: torch.Tensor | None, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        codes = require_guidance(codes, "SEANPlusNorm")
        if codes.dim() != 3 or codes.shape[1:] != (seg.shape[1], self.style_dim):
            raise ValueError(f"SEANPlusNorm expects style codes [B, {seg.shape[1]}, {self.style_dim}] from "
                             f"RegionStyleEncoder, got {tuple(codes.shape)}")
        seg = resize_seg(seg, size)
        style = broadcast_codes(F.relu(self.style_fc(codes)), seg)
        gamma_s, beta_s = self.coarse(seg)
        return mix(self.mix_gamma, self.gamma(style), gamma_s), mix(self.mix_beta, self.beta(style), beta_s)


VARIANT = NormVariant(
    "sean_plus", SEANPlusNorm, make_encoder=RegionStyleEncoder, plain_blocks=("up_3",),
    released="SeanGenerator + ACE (style encoder Zencoder; --netG sean)",
    summary="SEAN+: per-class style codes from the guidance (style encoder) broadcast over each class, "
            "blended with SPADE")
