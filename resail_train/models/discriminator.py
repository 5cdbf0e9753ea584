"""SESAME multi-scale discriminator (paper appendix B "Discriminator", Fig. C; SESAME, ECCV 2020).

Each scale is a PatchGAN with ``n_layers`` (4) stages and **two pathways** of identical layout:

    stage 0: conv4×4 stride 2 (→ ndf) + LeakyReLU(0.2)
    stage k: conv4×4 stride 2 (stride 1 for the last stage), channels ×2 up to 512,
             spectral norm + InstanceNorm (conv without bias) + LeakyReLU(0.2)

The image pathway sees the RGB image, the semantic pathway the one-hot label map. Their final
features ``f`` (image) and ``s`` (semantics) are fused as ``f + f · Σ_c s_c`` (element-wise add and
multiply with the channel sum of the semantic embedding), then a conv4×4 (stride 1, → 1 channel)
gives the patch logits. Padding is 2 for every 4×4 conv (``ceil((4 − 1) / 2)``, pix2pixHD/SPADE).

Multi-scale: ``num_D`` (2) such networks; scale ``i + 1`` sees image and label map average-pooled
(3×3, stride 2, padding 1, ``count_include_pad=False``).

Output convention (SPADE/pix2pixHD): ``D(image, seg)`` returns a list over scales; each entry is the
list ``[f_1, …, f_n_layers, logits]`` — the image-pathway features after each stage (the last one
before fusion; used by the feature-matching loss) followed by the patch logits ``[B, 1, h, w]``.

Spectral norm: as in the released code (``norm_D = spectralinstance``), the normalised middle convs
of both pathways carry spectral norm; the first conv of each pathway and the final logit conv are
plain. Init: Xavier normal gain 0.02, zero bias, before spectral norm (SPADE ``init_weights``).

"Two SESAME multi-scale discriminators" (paper appendix B / docs/method.md §6) — our reading, which is
what the authors' released training code does: **one** :class:`SesameMultiscaleDiscriminator` with
``num_D = 2`` scales (i.e. two discriminators at two scales). It is shared by both generator passes:
the fake from distorted-ground-truth guidance and the fake from retrieval guidance are each judged
against the same real image with their label map (two hinge terms per D step, one per fake), so
``D`` sees both fakes. The trainer instantiates it once; nothing here depends on the guidance type.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from resail_train.models.generator import xavier_init_

KW = 4
PADW = int(math.ceil((KW - 1.0) / 2))


def _pathway(in_nc: int, ndf: int, n_layers: int) -> tuple[nn.ModuleList, int]:
    """The conv stages of one pathway (plain nn.Conv2d; spectral norm attached by the caller)."""
    stages = nn.ModuleList([nn.Sequential(nn.Conv2d(in_nc, ndf, KW, stride=2, padding=PADW), nn.LeakyReLU(0.2))])
    nf = ndf
    for n in range(1, n_layers):
        nf_prev, nf = nf, min(nf * 2, 512)
        stride = 1 if n == n_layers - 1 else 2
        stages.append(
            nn.Sequential(
                nn.Conv2d(nf_prev, nf, KW, stride=stride, padding=PADW, bias=False),
                nn.InstanceNorm2d(nf, affine=False),
                nn.LeakyReLU(0.2),
            )
        )
    return stages, nf


class SesameDiscriminator(nn.Module):
    """One scale. ``SesameDiscriminator(label_nc, ndf=64, n_layers=4, image_nc=3, spectral=True)``.

    ``forward(image [B, 3, H, W], seg [B, label_nc, H, W]) -> [f_1, …, f_n_layers, logits]``.
    """

    def __init__(
        self, label_nc: int, ndf: int = 64, n_layers: int = 4, image_nc: int = 3,
        spectral: bool = True, init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.img_stages, nf = _pathway(image_nc, ndf, n_layers)
        self.sem_stages, _ = _pathway(label_nc, ndf, n_layers)
        self.final = nn.Conv2d(nf, 1, KW, stride=1, padding=PADW)
        xavier_init_(self, init_gain)
        if spectral:
            for stages in (self.img_stages, self.sem_stages):
                for stage in stages[1:]:
                    stage[0] = spectral_norm(stage[0])

    @staticmethod
    def fuse(f: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """SESAME fusion ``f + f · Σ_c s_c``."""
        return f + f * s.sum(dim=1, keepdim=True)

    def forward(self, image: torch.Tensor, seg: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        h = image
        for stage in self.img_stages:
            h = stage(h)
            feats.append(h)
        s = seg
        for stage in self.sem_stages:
            s = stage(s)
        feats.append(self.final(self.fuse(h, s)))
        return feats


class SesameMultiscaleDiscriminator(nn.Module):
    """``SesameMultiscaleDiscriminator(label_nc, ndf=64, n_layers=4, num_D=2, image_nc=3, spectral=True)``.

    ``forward(image [B, 3, H, W] in [-1, 1], seg [B, label_nc, H, W] one-hot)`` → list (one per scale,
    full resolution first) of ``[f_1, …, f_n_layers, logits]``. Real and fake may be concatenated
    along the batch and split afterwards (SPADE does this so InstanceNorm/SN see one batch).
    """

    def __init__(
        self, label_nc: int, ndf: int = 64, n_layers: int = 4, num_D: int = 2, image_nc: int = 3,
        spectral: bool = True, init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        if num_D < 1:
            raise ValueError(f"num_D must be >= 1, got {num_D}")
        self.label_nc = label_nc
        self.scales = nn.ModuleList(
            SesameDiscriminator(label_nc, ndf, n_layers, image_nc, spectral, init_gain) for _ in range(num_D)
        )

    @staticmethod
    def downsample(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, kernel_size=3, stride=2, padding=1, count_include_pad=False)

    def forward(self, image: torch.Tensor, seg: torch.Tensor) -> list[list[torch.Tensor]]:
        if image.shape[0] != seg.shape[0] or image.shape[-2:] != seg.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and label map {tuple(seg.shape)} do not match")
        out = []
        for i, d in enumerate(self.scales):
            if i:
                image, seg = self.downsample(image), self.downsample(seg)
            out.append(d(image, seg))
        return out
