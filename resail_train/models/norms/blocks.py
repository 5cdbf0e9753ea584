"""The layers that the Table-3 normalisation variants share (paper §3.3, appendix B eq. f–h).

Every variant computes ``out = BN(x) · (1 + γ) + β`` with a parameter-free ``BatchNorm2d(affine=False)``
(so ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` turns it into synchronised BatchNorm under
DDP, as the paper trains) and differs only in where γ, β come from:

* **Coarse branch** (SPADE): ``conv3×3(label → hidden) + ReLU``, then one ``conv3×3(hidden → C)``
  head for γs and another for βs (:class:`CoarseBranch`).
* **Fine branch** (RESAIL) on the guidance image (retrieval-based guidance or distorted ground
  truth): ``conv3×3(3 → hidden) → AdaIN₁ → ReLU → conv3×3 → AdaIN₂ → ReLU → conv3×3`` then a
  ``conv3×3(hidden → C)`` head for γr and a separate one for βr ("four-layer convolutional network").
  The AdaIN parameters come from the semantic map: ``conv3×3 stride 2 (label → 2·hidden)`` → global
  average pool → vector ``c1`` (first half = per-channel scale ``a``, second half = bias ``b``) for
  AdaIN₁, and ``conv1×1(c1)`` → ``c2`` for AdaIN₂ — the released code's layout. ``AdaIN(h) =
  a · IN(h) + b`` with a parameter-free instance norm (:class:`FineBranch`).
* **Mix** (eq. h, :func:`mix`): ``γ = σ(wγ)·γr + (1 − σ(wγ))·γs`` and likewise β, with two learnable
  scalars initialised to 0 (so the branches start weighted 0.5 / 0.5).

Resizing: the one-hot label map is resized to ``x``'s spatial size with nearest neighbour, the
guidance image bilinearly (``align_corners=False``).

Tensor conventions: ``x`` ``[B, C, h, w]`` float; ``seg`` ``[B, label_nc, H, W]`` float one-hot (any
resolution); ``guidance`` ``[B, 3, H, W]`` float in [-1, 1] (any resolution; pixels
without guidance are black, i.e. -1).

Choice where the paper is vague: the stride-2 semantic conv uses padding 1 (the released code uses
none) so the layer also works on the 1×1/2×2 maps of tiny test generators; after the global pool
this changes only border contributions.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F




def resize_seg(seg: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(seg.shape[-2:]) == tuple(size):
        return seg
    return F.interpolate(seg, size=size, mode="nearest")


def resize_guidance(guidance: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(guidance.shape[-2:]) == tuple(size):
        return guidance
    return F.interpolate(guidance, size=size, mode="bilinear", align_corners=False)


class CoarseBranch(nn.Module):
    """SPADE modulation from the semantic map: returns ``(γs, βs)``, each ``[B, norm_nc, h, w]``."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128) -> None:
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)

    def forward(self, seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``seg``: one-hot already at the target size."""
        actv = self.shared(seg)
        return self.gamma(actv), self.beta(actv)


class AdaIN(nn.Module):
    """``AdaIN(h) = a · IN(h) + b`` with per-sample, per-channel ``a``, ``b`` of shape ``[B, C, 1, 1]``."""

    def forward(self, h: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return scale * F.instance_norm(h) + bias


class FineBranch(nn.Module):
    """RESAIL's guidance-image branch with semantic AdaIN: returns ``(γr, βr)``."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128, image_nc: int = 3) -> None:
        super().__init__()
        self.hidden = hidden
        self.conv1 = nn.Conv2d(image_nc, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv3 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        # AdaIN parameters from the semantic map (stride-2 conv, global pool, 1×1 conv).
        self.sem_conv = nn.Conv2d(label_nc, 2 * hidden, 3, stride=2, padding=1)
        self.sem_proj = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        self.adain1 = AdaIN()
        self.adain2 = AdaIN()

    def adain_params(self, seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``seg`` one-hot → ``(c1, c2)``, each ``[B, 2·hidden, 1, 1]`` (scale half, bias half)."""
        c1 = F.adaptive_avg_pool2d(self.sem_conv(seg), 1)
        c2 = self.sem_proj(c1)
        return c1, c2

    def forward(self, guidance: torch.Tensor, seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``guidance`` and ``seg`` already at the target size."""
        n = self.hidden
        c1, c2 = self.adain_params(seg)
        h = F.relu(self.adain1(self.conv1(guidance), c1[:, :n], c1[:, n:]))
        h = F.relu(self.adain2(self.conv2(h), c2[:, :n], c2[:, n:]))
        h = self.conv3(h)
        return self.gamma(h), self.beta(h)


class ModulatedNorm(nn.Module):
    """``out = BN(x) · (1 + γ) + β`` with a parameter-free BatchNorm; subclasses give ``modulation``.

    The base of every SPADE-family variant (``spade``, ``spade_plus``, ``sean_plus``, ``resail``):
    they differ only in where ``(γ, β)`` come from.
    """

    def __init__(self, norm_nc: int) -> None:
        super().__init__()
        self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)

    def modulation(
        self, seg: torch.Tensor, guidance: torch.Tensor | None, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, seg: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        gamma, beta = self.modulation(seg, guidance, tuple(x.shape[-2:]))
        return self.param_free_norm(x) * (1 + gamma) + beta


def mix(weight: torch.Tensor, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """Eq. h: ``σ(w)·fine + (1 − σ(w))·coarse`` (also SEAN's blending of style and SPADE maps)."""
    w = torch.sigmoid(weight)
    return w * fine + (1 - w) * coarse


def require_guidance(guidance: torch.Tensor | None, layer: str) -> torch.Tensor:
    if guidance is None:
        raise ValueError(f"{layer} needs a guidance image (use norm='spade' for none)")
    return guidance
