"""``model.norm: spade_plus`` — SPADE fed the guidance (paper Table 3 "SPADE+", appendix C, Fig. E).

"Semantic map concatenating with the guidance image is convolved to produce the modulation
parameters": SPADE's modulation network unchanged except that its first conv reads
``[label one-hot (label_nc), guidance RGB (3)]`` instead of the label map alone —
``conv3×3(label_nc + 3 → hidden) + ReLU``, then ``conv3×3(hidden → C)`` for γ and another for β,
and ``out = BN(x)·(1 + γ) + β`` with a parameter-free BatchNorm. Released code: ``SPADE_CAT``
(``--norm_way spade_cat``; same layer sizes, hidden 128). The guidance is resized bilinearly and
the label map nearest to the feature size, as in :class:`~resail_train.models.norms.resail.RESAILNorm`.
"""
from __future__ import annotations

import torch

from resail_train.models.norms.blocks import (CoarseBranch, ModulatedNorm, require_guidance, resize_guidance,
                                        resize_seg)
from resail_train.models.norms.variant import NormVariant


class SPADEPlusNorm(ModulatedNorm):
    """``SPADEPlusNorm(norm_nc, label_nc, hidden=128)``; ``forward(x, seg, guidance)``.

    ``coarse`` is a :class:`~resail_train.models.norms.blocks.CoarseBranch` over ``label_nc + 3`` channels
    (label channels first, then RGB)."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128, image_nc: int = 3) -> None:
        super().__init__(norm_nc)
        self.coarse = CoarseBranch(norm_nc, label_nc + image_nc, hidden)

    def modulation(
        self, seg: torch.Tensor, guidance: torch.Tensor | None, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        guidance = require_guidance(guidance, "SPADEPlusNorm")
        return self.coarse(torch.cat([resize_seg(seg, size), resize_guidance(guidance, size)], dim=1))


VARIANT = NormVariant(
    "spade_plus", SPADEPlusNorm, released="SPADE_CAT (--norm_way spade_cat)",
    summary="SPADE+: SPADE whose modulation net reads the label map concatenated with the guidance")
