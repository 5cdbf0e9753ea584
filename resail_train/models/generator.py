"""The RESAIL generator (paper §3.3 "Generator", Fig. 2(b)): SPADE's generator with RESAIL ResBlks.

No VAE / noise input: the one-hot label map is resized (nearest) to the start size
``(H / 2**n, W / 2**n)`` (``n = num_upsampling``, ``(H, W) = crop_size``) and a ``conv3×3`` maps it
to ``16·ngf`` channels. Then seven ResBlks with SPADE's channel schedule

    head_0 16→16, G_middle_0 16→16, G_middle_1 16→16, up_0 16→8, up_1 8→4, up_2 4→2, up_3 2→1 (·ngf)

with nearest ×2 upsampling before G_middle_0, up_0, up_1, up_2, up_3 (``num_upsampling = 5``, e.g.
256×256 from an 8×8 start) and additionally before G_middle_1 for ``num_upsampling = 6`` (e.g.
Cityscapes 512×256 from an 8-wide × 4-high start; the aspect comes from ``crop_size``).
``num_upsampling = 7`` adds SPADE's ``up_4`` block (ngf → ngf/2) after one more upsampling. Fewer
than 5 upsamplings (tiny tests/demos) drop the upsamplings from the front (before G_middle_0 first,
then before up_0, …). Output: ``LeakyReLU(0.2) → conv3×3 → tanh``.

ResBlk (SPADE/released code): ``norm_0 → LReLU(0.2) → conv3×3 (fin→fmid)``, ``norm_1 → LReLU →
conv3×3 (fmid→fout)``, ``fmid = min(fin, fout)``; learned shortcut ``norm_s → conv1×1 (no bias)``
when ``fin ≠ fout``. The normalisation layers are the ``norm`` variant of paper Table 3, looked up
by name in :mod:`resail_train.models.norms.registry` (``resail`` = :class:`~resail_train.models.norms.resail.RESAILNorm`,
``spade``, ``spade_plus``, ``pix2pixhd_plus``, ``sean_plus``): the backbone is the same for all.
Each norm is fed the full-resolution label map and a conditioning ``cond`` (and resizes them to its
feature size): the guidance image itself, or — for a variant with a guidance encoder (``sean_plus``'s
style encoder) — that encoder's output, computed once per forward as ``guidance_encoder(guidance,
seg)``. Blocks a variant lists in ``plain_blocks`` use plain SPADE (SEAN's last ResBlk).

Spectral norm (``torch.nn.utils.parametrizations.spectral_norm``) wraps the ResBlk convolutions
(conv_0, conv_1, conv_s) as in the released code's ``spectralspadesyncbatch3x3``; the input conv,
output conv, the normalisation layers' convs and the guidance encoder are left plain (released
code). Initialisation: Xavier normal with gain 0.02 on every conv / linear weight (modules with an
``init_xavier_(gain)`` method initialise themselves), zero biases, applied *before* spectral norm is
attached; the mix scalars stay 0.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from resail_train.models.norms.registry import get_norm_variant

MAX_UPSAMPLING = 7


def xavier_init_(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """Xavier-normal(gain) every Conv/Linear weight under ``module``, zero their biases (in place)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif hasattr(m, "init_xavier_"):
            m.init_xavier_(gain)
    return module


class RESAILResBlock(nn.Module):
    """``RESAILResBlock(fin, fout, label_nc, norm="resail", norm_hidden=128, spectral=True)``.

    ``forward(x [B, fin, h, w], seg [B, label_nc, H, W], guidance [B, 3, H, W] | None) -> [B, fout, h, w]``.
    Spectral norm is attached by :meth:`apply_spectral_norm` (after initialisation).
    """

    def __init__(self, fin: int, fout: int, label_nc: int, norm: str = "resail", norm_hidden: int = 128) -> None:
        super().__init__()
        self.learned_shortcut = fin != fout
        fmid = min(fin, fout)
        self.conv_0 = nn.Conv2d(fin, fmid, 3, padding=1)
        self.conv_1 = nn.Conv2d(fmid, fout, 3, padding=1)
        make_norm = get_norm_variant(norm).make_norm
        self.norm_0 = make_norm(fin, label_nc, norm_hidden)
        self.norm_1 = make_norm(fmid, label_nc, norm_hidden)
        if self.learned_shortcut:
            self.conv_s = nn.Conv2d(fin, fout, 1, bias=False)
            self.norm_s = make_norm(fin, label_nc, norm_hidden)

    def apply_spectral_norm(self) -> None:
        self.conv_0 = spectral_norm(self.conv_0)
        self.conv_1 = spectral_norm(self.conv_1)
        if self.learned_shortcut:
            self.conv_s = spectral_norm(self.conv_s)

    def forward(self, x: torch.Tensor, seg: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """``cond``: the guidance image, or the variant's guidance-encoder output."""
        if self.learned_shortcut:
            x_s = self.conv_s(self.norm_s(x, seg, cond))
        else:
            x_s = x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg, cond), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg, cond), 0.2))
        return x_s + dx


def upsample_positions(num_upsampling: int) -> tuple[bool, ...]:
    """For blocks (head_0, G_middle_0, G_middle_1, up_0, up_1, up_2, up_3[, up_4]): upsample before it?"""
    if not 0 <= num_upsampling <= MAX_UPSAMPLING:
        raise ValueError(f"num_upsampling must be in 0..{MAX_UPSAMPLING}, got {num_upsampling}")
    # Block indices in the order their upsampling is added as num_upsampling grows to 5.
    standard = [1, 3, 4, 5, 6]  # G_middle_0, up_0, up_1, up_2, up_3
    before = set(standard[len(standard) - min(num_upsampling, 5):])
    if num_upsampling >= 6:
        before.add(2)  # SPADE "more": between G_middle_0 and G_middle_1
    n_blocks = 8 if num_upsampling == 7 else 7
    if num_upsampling == 7:
        before.add(7)  # SPADE "most": up_4
    return tuple(i in before for i in range(n_blocks))


class RESAILGenerator(nn.Module):
    """``RESAILGenerator(label_nc, ngf=64, crop_size=(256, 256), num_upsampling=5, norm="resail",
    norm_hidden=128, spectral=True, init_gain=0.02)``.

    ``forward(seg [B, label_nc, H, W] float one-hot, guidance [B, 3, H, W] in [-1, 1] | None)``
    ``-> [B, 3, H, W]`` in [-1, 1]. ``(H, W) = crop_size`` (must be divisible by ``2**num_upsampling``);
    ``guidance`` may be ``None`` only for a variant that ignores it (``norm="spade"``). ``norm``: a
    name of :func:`resail_train.models.norms.registry.norm_names`. ``label_nc`` is the number of one-hot
    channels the caller builds from its dataset's class list.
    """

    def __init__(
        self,
        label_nc: int,
        ngf: int = 64,
        crop_size: tuple[int, int] = (256, 256),
        num_upsampling: int = 5,
        norm: str = "resail",
        norm_hidden: int = 128,
        spectral: bool = True,
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        h, w = (int(v) for v in crop_size)
        ups = upsample_positions(num_upsampling)
        factor = 2 ** num_upsampling
        if h % factor or w % factor:
            raise ValueError(f"crop_size {(h, w)} is not divisible by 2**num_upsampling = {factor}")
        self.label_nc = label_nc
        self.crop_size = (h, w)
        self.num_upsampling = num_upsampling
        self.norm_kind = norm
        variant = get_norm_variant(norm)
        self.uses_guidance = variant.uses_guidance
        self.start_size = (h // factor, w // factor)
        self.upsample_before = ups

        nf = ngf
        chans = [16 * nf, 16 * nf, 16 * nf, 16 * nf, 8 * nf, 4 * nf, 2 * nf, 1 * nf]
        if len(ups) == 8:
            chans.append(nf // 2)
        names = ["head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3", "up_4"]
        self.fc = nn.Conv2d(label_nc, 16 * nf, 3, padding=1)
        self.blocks = nn.ModuleDict()
        for i in range(len(ups)):
            kind = "spade" if names[i] in variant.plain_blocks else norm
            self.blocks[names[i]] = RESAILResBlock(chans[i], chans[i + 1], label_nc, kind, norm_hidden)
        # None for most variants (no state-dict keys); SEAN+'s style encoder otherwise.
        self.guidance_encoder = variant.make_encoder(label_nc, norm_hidden) if variant.make_encoder else None
        self.conv_img = nn.Conv2d(chans[len(ups)], 3, 3, padding=1)

        xavier_init_(self, init_gain)
        if spectral:
            for block in self.blocks.values():
                block.apply_spectral_norm()

    def forward(self, seg: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        if seg.dim() != 4 or seg.shape[1] != self.label_nc:
            raise ValueError(f"expected a one-hot map [B, {self.label_nc}, H, W], got {tuple(seg.shape)}")
        if guidance is None and self.uses_guidance:
            raise ValueError(f"norm {self.norm_kind!r} needs a guidance image (only 'spade' runs without)")
        cond = guidance if self.guidance_encoder is None else self.guidance_encoder(guidance, seg)
        x = self.fc(F.interpolate(seg, size=self.start_size, mode="nearest"))
        for up, block in zip(self.upsample_before, self.blocks.values()):
            if up:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(x, seg, cond)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))
