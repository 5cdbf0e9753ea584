"""``model.norm: resail`` — ours: retrieval-based spatially adaptive normalisation (paper §3.3, eq. f–h).

SPADE's coarse branch on the label map plus a fine branch on the guidance image whose activations are
modulated by semantic AdaIN, the two (γ, β) pairs mixed by learned weights (:mod:`.blocks`). Released
code: ``SIN`` (``--norm_way`` default).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from resail_train.models.norms.blocks import (CoarseBranch, FineBranch, ModulatedNorm, mix, require_guidance,
                                              resize_guidance, resize_seg)
from resail_train.models.norms.variant import NormVariant


class RESAILNorm(ModulatedNorm):
    """Retrieval-based spatially adaptive normalisation.

    ``RESAILNorm(norm_nc, label_nc, hidden=128)``; ``forward(x, seg, guidance) -> [B, norm_nc, h, w]``.
    Submodules: ``coarse`` (:class:`CoarseBranch`), ``fine`` (:class:`FineBranch`); scalars
    ``mix_gamma`` (wγ) and ``mix_beta`` (wβ), both ``nn.Parameter`` of shape ``[1]``, initialised 0.
    """

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128) -> None:
        super().__init__(norm_nc)
        self.coarse = CoarseBranch(norm_nc, label_nc, hidden)
        self.fine = FineBranch(norm_nc, label_nc, hidden)
        self.mix_gamma = nn.Parameter(torch.zeros(1))
        self.mix_beta = nn.Parameter(torch.zeros(1))

    def modulation(
        self, seg: torch.Tensor, guidance: torch.Tensor | None, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed ``(γ, β)`` at spatial ``size`` (eq. h)."""
        guidance = require_guidance(guidance, "RESAILNorm")
        seg = resize_seg(seg, size)
        gamma_s, beta_s = self.coarse(seg)
        gamma_r, beta_r = self.fine(resize_guidance(guidance, size), seg)
        return mix(self.mix_gamma, gamma_r, gamma_s), mix(self.mix_beta, beta_r, beta_s)


VARIANT = NormVariant(
    "resail", RESAILNorm, released="SIN (norm_way default)",
    summary="ours: SPADE coarse branch + guidance fine branch with semantic AdaIN, learned mix (eq. f-h)")
