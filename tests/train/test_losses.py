"""Hand-computed checks of the GAN, feature-matching, perceptual and segmentation losses."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from resail_train.training.losses import (
    VGG_LAYER_WEIGHTS,
    VGGLoss,
    balanced_cross_entropy,
    class_balance_weights,
    feature_matching_loss,
    final_logits,
    hinge_d_loss,
    hinge_d_loss_fake,
    hinge_d_loss_real,
    hinge_g_loss,
)


def t(*vals: float) -> torch.Tensor:
    return torch.tensor(vals).view(1, 1, 1, -1)


# Two scales: [feature, logits] per scale.
FAKE = [[t(0.0, 1.0), t(2.0, -1.0)], [t(3.0), t(0.5, -0.5, 1.5)]]
REAL = [[t(1.0, 1.0), t(0.5, 2.0)], [t(1.0), t(-1.0, 3.0, 1.0)]]


def test_final_logits_forms():
    assert len(final_logits(FAKE)) == 2 and torch.equal(final_logits(FAKE)[1], FAKE[1][1])
    x = t(1.0)
    assert final_logits(x) == [x]
    assert final_logits([x, x]) == [x, x]


def test_hinge_generator():
    # scale 0: -mean(2, -1) = -0.5; scale 1: -mean(0.5, -0.5, 1.5) = -0.5 → mean -0.5
    assert hinge_g_loss(FAKE).item() == pytest.approx(-0.5)


def test_hinge_discriminator():
    # real: scale 0 relu(1-0.5)=0.5, relu(1-2)=0 → 0.25; scale 1 relu(2)=2, 0, 0 → 2/3
    real = (0.25 + 2.0 / 3.0) / 2
    # fake: scale 0 relu(3)=3, relu(0)=0 → 1.5; scale 1 relu(1.5)=1.5, relu(0.5)=0.5, relu(2.5)=2.5 → 1.5
    fake = (1.5 + 1.5) / 2
    assert hinge_d_loss_real(REAL).item() == pytest.approx(real)
    assert hinge_d_loss_fake(FAKE).item() == pytest.approx(fake)
    assert hinge_d_loss(REAL, FAKE).item() == pytest.approx(real + fake)


def test_feature_matching_hand_values_and_detach():
    fake = [[f.clone().requires_grad_(True) for f in s] for s in FAKE]
    real = [[f.clone().requires_grad_(True) for f in s] for s in REAL]
    # scale 0: L1((0,1),(1,1)) = 0.5; scale 1: L1(3, 1) = 2 → (0.5 + 2) / 2 = 1.25, ×10
    loss = feature_matching_loss(fake, real, weight=10.0)
    assert loss.item() == pytest.approx(12.5)
    loss.backward()
    assert fake[0][0].grad is not None
    assert all(f.grad is None for s in real for f in s)
    assert fake[0][1].grad is None  # logits are not matched


def test_feature_matching_sums_layers():
    fake = [[t(1.0), t(2.0), t(9.0)]]
    real = [[t(0.0), t(0.0), t(0.0)]]
    assert feature_matching_loss(fake, real).item() == pytest.approx(3.0)
    assert feature_matching_loss(fake, real, average_layers=True).item() == pytest.approx(1.5)
    with pytest.raises(ValueError):
        feature_matching_loss(fake, real + real)


class _StubVGG(nn.Module):
    """Five 'layers': the input scaled by 1..5."""

    def forward(self, x):
        return [x * (i + 1) for i in range(5)]


def test_vgg_loss_layer_weights():
    fake = torch.zeros(1, 3, 2, 2, requires_grad=True)
    real = torch.ones(1, 3, 2, 2)
    loss = VGGLoss(_StubVGG())(fake, real)
    expected = sum(w * (i + 1) for i, w in enumerate(VGG_LAYER_WEIGHTS))
    assert VGG_LAYER_WEIGHTS == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert fake.grad is not None


LABELS = torch.tensor([[[0, 0, 0, 1], [4, 4, 2, 2]]])  # 4 classes, 4 = ignore


def test_class_balance_weights_hand_values():
    # counts 3, 1, 2, 0 over N = 6 valid pixels, K = 3 present: w_c = 6 / (3 · n_c)
    w = class_balance_weights(LABELS, num_classes=4, ignore_index=4)
    assert torch.allclose(w, torch.tensor([2 / 3, 2.0, 1.0, 0.0]))
    # per-pixel weights sum to N
    valid = LABELS != 4
    assert w[LABELS[valid]].sum().item() == pytest.approx(6.0)


def test_class_balance_weights_match_oasis_without_ignore():
    labels = torch.tensor([[[0, 1, 1, 1], [2, 2, 1, 1]], [[0, 0, 0, 0], [1, 1, 1, 1]]])
    onehot = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    occ = onehot.sum(dim=(0, 2, 3))
    k = (occ > 0).sum()
    oasis = torch.reciprocal(occ) * onehot.numel() / (k * onehot.shape[1])
    ours = class_balance_weights(labels, 4)
    present = occ > 0
    assert torch.allclose(ours[present], oasis[present])
    assert ours[3] == 0


def test_class_balance_weights_edge_cases():
    assert torch.count_nonzero(class_balance_weights(torch.full((1, 2, 2), 4), 4, ignore_index=4)) == 0
    with pytest.raises(ValueError):
        class_balance_weights(torch.tensor([[[5]]]), 4, ignore_index=4)


def test_balanced_ce_uniform_logits():
    logits = torch.zeros(1, 4, 2, 4)
    loss = balanced_cross_entropy(logits, LABELS, ignore_index=4)
    assert loss.item() == pytest.approx(math.log(4))


def test_balanced_ce_hand_value_and_ignore_excluded():
    logits = torch.randn(1, 4, 2, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = balanced_cross_entropy(logits, LABELS, ignore_index=4)
    w = torch.tensor([2 / 3, 2.0, 1.0, 0.0])
    logp = torch.log_softmax(logits.detach(), dim=1)
    total = 0.0
    for y in range(2):
        for x in range(4):
            c = int(LABELS[0, y, x])
            if c != 4:
                total += float(w[c] * -logp[0, c, y, x])
    assert loss.item() == pytest.approx(total / 6, rel=1e-5)
    loss.backward()
    assert torch.count_nonzero(logits.grad[0, :, 1, :2]) == 0  # ignored pixels get no gradient

    other = logits.detach().clone()
    other[0, :, 1, :2] = 100.0 * torch.randn(4, 2)  # change only the ignored pixels
    assert balanced_cross_entropy(other, LABELS, ignore_index=4).item() == pytest.approx(loss.item(), rel=1e-6)


def test_balanced_ce_all_ignored_and_shape_check():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = balanced_cross_entropy(logits, torch.full((1, 2, 2), 3), ignore_index=3)
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(ValueError):
        balanced_cross_entropy(logits, torch.zeros(1, 3, 3, dtype=torch.long))
