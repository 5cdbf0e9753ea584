"""Training losses (paper §3.4, eq. 5–6; docs/method.md §6).

Discriminator outputs follow :mod:`resail_train.models.discriminator`: a list over scales of
``[f_1, …, f_n, logits]``. The adversarial functions also accept a bare logits tensor or a list of
per-scale logits tensors.

* Hinge GAN (SPADE ``GANLoss('hinge')``): ``L_G = −mean(D(fake))``; ``L_D = mean(relu(1 − D(real)))
  + mean(relu(1 + D(fake)))``; each mean is over one scale's patch logits, then averaged over scales.
* Feature matching (pix2pixHD/SPADE as in the released code): for every scale and every
  intermediate feature (all but the logits) ``L1(f_fake, f_real.detach())``, **summed over layers
  and averaged over scales**, times ``weight`` (λ_fm = 10 in the paper). ``average_layers=True``
  divides by the number of layers as well.
* Perceptual (pix2pixHD VGG loss): ``Σ_i w_i · L1(φ_i(fake), φ_i(real).detach())`` over relu1_1 …
  relu5_1 with ``w = (1/32, 1/16, 1/8, 1/4, 1)``; λ_vgg = 10 is applied by the caller.
* Segmentation (OASIS class balancing, ×5 by the caller): per-pixel cross-entropy of the frozen
  segmentation net's logits on the fake, weighted per class by ``w_c = N / (K · n_c)`` where ``n_c``
  is the number of pixels of class c in the batch, ``N`` the number of non-ignored pixels and ``K``
  the number of classes present (absent classes and ignored pixels weigh 0). The loss is
  ``Σ_p w_{y_p} · CE_p / N`` over non-ignored pixels; as ``Σ_p w_{y_p} = N`` this is a weighted mean,
  and it equals OASIS's formula when nothing is ignored (OASIS counts "don't care" pixels in N;
  we exclude them from both counts).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from resail_train.models.vgg import VGG19Features

VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)

Preds = torch.Tensor | Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]]


def final_logits(preds: Preds) -> list[torch.Tensor]:
    """Per-scale patch logits from any accepted discriminator-output form."""
    if isinstance(preds, torch.Tensor):
        return [preds]
    out = []
    for p in preds:
        out.append(p if isinstance(p, torch.Tensor) else p[-1])
    if not out:
        raise ValueError("empty discriminator output")
    return out


def hinge_g_loss(fake_preds: Preds) -> torch.Tensor:
    """Generator hinge loss ``mean over scales of −mean(D(fake))``."""
    logits = final_logits(fake_preds)
    return sum(-x.mean() for x in logits) / len(logits)


def hinge_d_loss_real(real_preds: Preds) -> torch.Tensor:
    """``mean over scales of mean(relu(1 − D(real)))``."""
    logits = final_logits(real_preds)
    return sum(F.relu(1 - x).mean() for x in logits) / len(logits)


def hinge_d_loss_fake(fake_preds: Preds) -> torch.Tensor:
    """``mean over scales of mean(relu(1 + D(fake)))``."""
    logits = final_logits(fake_preds)
    return sum(F.relu(1 + x).mean() for x in logits) / len(logits)


def hinge_d_loss(real_preds: Preds, fake_preds: Preds) -> torch.Tensor:
    """Discriminator hinge loss: real term + fake term (each averaged over scales)."""
    return hinge_d_loss_real(real_preds) + hinge_d_loss_fake(fake_preds)


def feature_matching_loss(
    fake_preds: Sequence[Sequence[torch.Tensor]],
    real_preds: Sequence[Sequence[torch.Tensor]],
    weight: float = 1.0,
    average_layers: bool = False,
) -> torch.Tensor:
    """``weight · (1/num_D) Σ_scales Σ_layers L1(fake_f, real_f.detach())`` (logits excluded).

    With ``average_layers`` the inner sum becomes a mean over the intermediate layers.
    """
    if len(fake_preds) != len(real_preds) or not fake_preds:
        raise ValueError("fake and real discriminator outputs have different numbers of scales")
    total = fake_preds[0][0].new_zeros(())
    for fake, real in zip(fake_preds, real_preds):
        n = len(fake) - 1
        if n < 1 or len(real) != len(fake):
            raise ValueError("each scale needs at least one intermediate feature plus logits")
        layer_sum = sum(F.l1_loss(f, r.detach()) for f, r in zip(fake[:-1], real[:-1]))
        total = total + (layer_sum / n if average_layers else layer_sum)
    return total * (weight / len(fake_preds))


class VGGLoss(nn.Module):
    """``VGGLoss(vgg: VGG19Features, weights=VGG_LAYER_WEIGHTS)``; ``forward(fake, real) -> scalar``.

    Both images in [-1, 1], ``[B, 3, H, W]``. The real image's features are computed without grad.
    """

    def __init__(self, vgg: VGG19Features, weights: Sequence[float] = VGG_LAYER_WEIGHTS) -> None:
        super().__init__()
        self.vgg = vgg
        self.weights = tuple(float(w) for w in weights)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        fake_f = self.vgg(fake)
        with torch.no_grad():
            real_f = self.vgg(real)
        if len(fake_f) != len(self.weights):
            raise ValueError(f"{len(fake_f)} VGG layers but {len(self.weights)} weights")
        return sum(w * F.l1_loss(f, r.detach()) for w, f, r in zip(self.weights, fake_f, real_f))


def _valid_mask(labels: torch.Tensor, num_classes: int, ignore_index: int | None) -> torch.Tensor:
    valid = torch.ones_like(labels, dtype=torch.bool) if ignore_index is None else labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"label values outside 0..{num_classes - 1} (ignore_index={ignore_index})")
    return valid


def class_balance_weights(labels: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> torch.Tensor:
    """OASIS class-balancing weights over the whole batch.

    ``labels``: int tensor (any shape, e.g. ``[B, H, W]``) of dense class indices 0..num_classes-1,
    or ``ignore_index``. Returns float ``[num_classes]``: ``w_c = N / (K · n_c)`` for present
    classes (``n_c`` pixels of class c, ``N`` non-ignored pixels, ``K`` classes present), 0 for
    absent classes. All zeros when every pixel is ignored.
    """
    valid = _valid_mask(labels, num_classes, ignore_index)
    counts = torch.bincount(labels[valid].reshape(-1).long(), minlength=num_classes).to(torch.float32)
    present = counts > 0
    k = int(present.sum())
    weights = torch.zeros(num_classes, dtype=torch.float32, device=labels.device)
    if k:
        weights[present] = counts.sum() / (k * counts[present])
    return weights


def balanced_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class-balanced cross-entropy ``Σ_valid w_{y_p} · CE_p / N_valid``.

    ``logits`` ``[B, C, H, W]``; ``labels`` ``[B, H, W]`` int (dense indices, or ``ignore_index``).
    ``weights`` defaults to :func:`class_balance_weights` of ``labels``. Ignored pixels contribute
    nothing (and are not counted in ``N_valid``); returns 0 (with grad) when all are ignored.
    """
    if logits.dim() != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    num_classes = logits.shape[1]
    labels = labels.long()
    valid = _valid_mask(labels, num_classes, ignore_index)
    if weights is None:
        weights = class_balance_weights(labels, num_classes, ignore_index)
    weights = weights.to(device=logits.device, dtype=logits.dtype)
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    ce = F.cross_entropy(logits, safe, reduction="none")
    pixel_w = weights[safe] * valid.to(logits.dtype)
    n_valid = valid.sum()
    if int(n_valid) == 0:
        return (logits * 0).sum()
    return (pixel_w * ce).sum() / n_valid.to(logits.dtype)
