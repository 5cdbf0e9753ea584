"""``model.norm: spade`` — SPADE: γ, β from the label map alone; the guidance is ignored (Table 3 baseline).

Released code: ``SPADE`` (``--norm_way spade``).
"""
from __future__ import annotations

import torch

from resail_train.models.norms.blocks import CoarseBranch, ModulatedNorm, resize_seg
from resail_train.models.norms.variant import NormVariant


class SPADENorm(ModulatedNorm):
    """SPADE (coarse branch only): the ``norm: spade`` ablation. ``guidance`` is accepted and ignored."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128) -> None:
        super().__init__(norm_nc)
        self.coarse = CoarseBranch(norm_nc, label_nc, hidden)

    def modulation(
        self, seg: torch.Tensor, guidance: torch.Tensor | None, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(γ, β)`` at spatial ``size``."""
        return self.coarse(resize_seg(seg, size))


VARIANT = NormVariant(
    "spade", SPADENorm, uses_guidance=False, released="SPADE (--norm_way spade)",
    summary="SPADE: modulation from the label map only; the guidance is ignored")
