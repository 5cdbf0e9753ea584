"""Tests of resail_train.metrics: Fréchet distance, pytorch-fid InceptionV3, segmentation scores."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from resail_train.metrics.fid import (FIDInceptionV3, fid_from_features, frechet_distance, gaussian_stats,
                                      inception_features, load_fid_inception)
from resail_train.metrics.segmentation import confusion_matrix, segmentation_scores

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"


# ============================================================================================
# Fréchet distance
# ============================================================================================
def _random_spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def test_identical_gaussians_give_zero():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=6)
    sigma = _random_spd(rng, 6)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_one_dimensional_by_hand():
    # (1 - 3)^2 + 4 + 1 - 2 * sqrt(4 * 1) = 4 + 5 - 4 = 5
    assert frechet_distance(1.0, 4.0, 3.0, 1.0) == pytest.approx(5.0, abs=1e-10)
    assert frechet_distance([1.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(5.0, abs=1e-10)


def test_diagonal_by_hand():
    mu1, var1 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 4.0, 9.0])
    mu2, var2 = np.array([1.0, 1.0, 0.0]), np.array([4.0, 1.0, 1.0])
    # ||mu1-mu2||^2 = 1 + 0 + 4 = 5
    # sum(v1 + v2 - 2 sqrt(v1 v2)) = (1+4-4) + (4+1-4) + (9+1-6) = 1 + 1 + 4 = 6
    got = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(11.0, abs=1e-10)


def test_non_diagonal_matches_eigen_formula():
    rng = np.random.default_rng(1)
    d = 8
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, scale=2.0)
    # Tr((s1 s2)^(1/2)) = Tr((s1^(1/2) s2 s1^(1/2))^(1/2)) = sum of sqrt of that SPD matrix's
    # eigenvalues; s1^(1/2) from the eigendecomposition of s1.
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(w)) @ v.T
    lam = np.linalg.eigvalsh(r @ s2 @ r)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(lam))
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # symmetric in its two arguments
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_singular_covariances_stay_finite():
    rng = np.random.default_rng(2)
    # 4 samples in 10-D: rank-deficient covariances, as with small FID sample sets
    f1, f2 = rng.normal(size=(4, 10)), rng.normal(size=(4, 10)) + 0.5
    value = fid_from_features(f1, f2)
    assert math.isfinite(value) and value > 0
    # zero covariance: sqrt term vanishes, FID = ||diff||^2 + Tr(s2)
    s2 = np.diag([1.0, 2.0, 3.0])
    got = frechet_distance(np.zeros(3), np.zeros((3, 3)), np.ones(3), s2)
    assert got == pytest.approx(3.0 + 6.0, abs=1e-4)


def test_large_imaginary_component_raises():
    # sqrt(diag(-1, 1)) = diag(i, 1): not a covariance product, must not be silently accepted
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), np.eye(2))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_gaussian_stats_by_hand():
    f = np.array([[0, 0], [2, 0], [0, 2], [2, 2]], dtype=np.float32)
    mu, sigma = gaussian_stats(f)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, [1.0, 1.0])
    # unbiased: sum of squared deviations 4 / (4 - 1)
    np.testing.assert_allclose(sigma, [[4 / 3, 0.0], [0.0, 4 / 3]])
    mu1, s1 = gaussian_stats(np.array([[1.0], [3.0]]))
    assert s1.shape == (1, 1) and s1[0, 0] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        gaussian_stats(np.zeros((1, 3)))


def test_fid_of_shifted_features_is_squared_shift():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(200, 5))
    shift = np.array([1.0, -2.0, 0.0, 0.5, 0.0])
    assert fid_from_features(f, f + shift) == pytest.approx(float(shift @ shift), abs=1e-6)


# ============================================================================================
# InceptionV3 (pytorch-fid variant): checkpoint compatibility
# ============================================================================================
# Written from the public definition (torchvision Inception3 + pytorch-fid's FID patches), NOT
# from resail_train.metrics.fid: (name, in_channels, out_channels, kernel_h, kernel_w).
def _stem():
    return [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3),
            ("Conv2d_2b_3x3", 32, 64, 3, 3), ("Conv2d_3b_1x1", 64, 80, 1, 1),
            ("Conv2d_4a_3x3", 80, 192, 3, 3)]


def _block_a(cin, pool):
    return [("branch1x1", cin, 64, 1, 1), ("branch5x5_1", cin, 48, 1, 1),
            ("branch5x5_2", 48, 64, 5, 5), ("branch3x3dbl_1", cin, 64, 1, 1),
            ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3),
            ("branch_pool", cin, pool, 1, 1)]


def _block_b(cin):
    return [("branch3x3", cin, 384, 3, 3), ("branch3x3dbl_1", cin, 64, 1, 1),
            ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3)]


def _block_c(c7):
    return [("branch1x1", 768, 192, 1, 1), ("branch7x7_1", 768, c7, 1, 1),
            ("branch7x7_2", c7, c7, 1, 7), ("branch7x7_3", c7, 192, 7, 1),
            ("branch7x7dbl_1", 768, c7, 1, 1), ("branch7x7dbl_2", c7, c7, 7, 1),
            ("branch7x7dbl_3", c7, c7, 1, 7), ("branch7x7dbl_4", c7, c7, 7, 1),
            ("branch7x7dbl_5", c7, 192, 1, 7), ("branch_pool", 768, 192, 1, 1)]


def _block_d():
    return [("branch3x3_1", 768, 192, 1, 1), ("branch3x3_2", 192, 320, 3, 3),
            ("branch7x7x3_1", 768, 192, 1, 1), ("branch7x7x3_2", 192, 192, 1, 7),
            ("branch7x7x3_3", 192, 192, 7, 1), ("branch7x7x3_4", 192, 192, 3, 3)]


def _block_e(cin):
    return [("branch1x1", cin, 320, 1, 1), ("branch3x3_1", cin, 384, 1, 1),
            ("branch3x3_2a", 384, 384, 1, 3), ("branch3x3_2b", 384, 384, 3, 1),
            ("branch3x3dbl_1", cin, 448, 1, 1), ("branch3x3dbl_2", 448, 384, 3, 3),
            ("branch3x3dbl_3a", 384, 384, 1, 3), ("branch3x3dbl_3b", 384, 384, 3, 1),
            ("branch_pool", cin, 192, 1, 1)]


def _expected_checkpoint_shapes():
    convs = list(_stem())
    blocks = {
        "Mixed_5b": _block_a(192, 32), "Mixed_5c": _block_a(256, 64),
        "Mixed_5d": _block_a(288, 64), "Mixed_6a": _block_b(288),
        "Mixed_6b": _block_c(128), "Mixed_6c": _block_c(160), "Mixed_6d": _block_c(160),
        "Mixed_6e": _block_c(192), "Mixed_7a": _block_d(),
        "Mixed_7b": _block_e(1280), "Mixed_7c": _block_e(2048),
    }
    for block, specs in blocks.items():
        convs += [(f"{block}.{name}", cin, cout, kh, kw) for name, cin, cout, kh, kw in specs]
    shapes = {}
    for name, cin, cout, kh, kw in convs:
        shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{stat}"] = (cout,)
        # the release file was saved with torch >= 0.4.1: it carries BN step counters
        # (pytorch-fid reports them as "unexpected" keys when loaded under torch 0.4.0)
        shapes[f"{name}.bn.num_batches_tracked"] = ()
    # TF graph's 1008-way classifier (pytorch-fid builds Inception3(num_classes=1008, aux_logits=False))
    shapes["fc.weight"] = (1008, 2048)
    shapes["fc.bias"] = (1008,)
    return shapes


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = FIDInceptionV3().eval()
    # Default init makes activations vanish through 94 layers; a fan-in He init plus
    # randomised BN statistics keeps them O(1) so numerical comparisons mean something.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            elif isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.1)
    return m


def test_state_dict_matches_pytorch_fid_checkpoint_layout(model):
    expected = _expected_checkpoint_shapes()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(expected) == 94 * 6 + 2 == 566
    assert sorted(got) == sorted(expected)
    assert got == expected
    assert got["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert got["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert got["fc.weight"] == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in got)


def test_parameter_count_matches_torchvision_minus_aux(model):
    # torchvision publishes 27,161,264 parameters for Inception3 (1000 classes, with AuxLogits).
    aux = (768 * 128 + 2 * 128) + (128 * 768 * 5 * 5 + 2 * 768) + (768 * 1000 + 1000)
    expected = 27_161_264 - aux - (2048 * 1000 + 1000) + (2048 * 1008 + 1008)
    assert sum(p.numel() for p in model.parameters()) == expected == 23_850_960


def test_batchnorm_eps_matches_tf_graph(model):
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 94 and all(m.eps == pytest.approx(1e-3) for m in bns)


# --- block wiring against reference forwards written from the public definition -------------
def _seq(block, *names):
    def run(x):
        for n in names:
            x = getattr(block, n)(x)
        return x
    return run


def _valid_avg(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _ref_a(b, x, pool=_valid_avg):
    return torch.cat([b.branch1x1(x), _seq(b, "branch5x5_1", "branch5x5_2")(x),
                      _seq(b, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")(x),
                      b.branch_pool(pool(x))], 1)


def _ref_c(b, x):
    return torch.cat([b.branch1x1(x), _seq(b, "branch7x7_1", "branch7x7_2", "branch7x7_3")(x),
                      _seq(b, *[f"branch7x7dbl_{i}" for i in range(1, 6)])(x),
                      b.branch_pool(_valid_avg(x))], 1)


def _ref_e(b, x, pool):
    s = b.branch3x3_1(x)
    d = _seq(b, "branch3x3dbl_1", "branch3x3dbl_2")(x)
    return torch.cat([b.branch1x1(x), b.branch3x3_2a(s), b.branch3x3_2b(s),
                      b.branch3x3dbl_3a(d), b.branch3x3dbl_3b(d), b.branch_pool(pool(x))], 1)


def _ref_b(b, x):
    return torch.cat([b.branch3x3(x),
                      _seq(b, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")(x),
                      F.max_pool2d(x, 3, stride=2)], 1)


def _ref_d(b, x):
    return torch.cat([_seq(b, "branch3x3_1", "branch3x3_2")(x),
                      _seq(b, *[f"branch7x7x3_{i}" for i in range(1, 5)])(x),
                      F.max_pool2d(x, 3, stride=2)], 1)


@torch.no_grad()
def test_blocks_follow_fid_variant_pooling_and_branch_order(model):
    g = torch.Generator().manual_seed(0)
    x = lambda c, s=7: torch.rand(1, c, s, s, generator=g)  # noqa: E731
    tv_avg = lambda t: F.avg_pool2d(t, 3, stride=1, padding=1)  # torchvision: pads count  # noqa: E731
    max_same = lambda t: F.max_pool2d(t, 3, stride=1, padding=1)  # noqa: E731

    xa = x(192)
    out = model.Mixed_5b(xa)
    assert out.shape == (1, 256, 7, 7)
    torch.testing.assert_close(out, _ref_a(model.Mixed_5b, xa))
    # the check is sensitive to the pooling quirk: torchvision's padded average differs
    assert not torch.allclose(out, _ref_a(model.Mixed_5b, xa, pool=tv_avg))

    xb = x(288, 9)
    torch.testing.assert_close(model.Mixed_6a(xb), _ref_b(model.Mixed_6a, xb))
    assert model.Mixed_6a(xb).shape == (1, 768, 4, 4)

    xc = x(768)
    torch.testing.assert_close(model.Mixed_6e(xc), _ref_c(model.Mixed_6e, xc))
    torch.testing.assert_close(model.Mixed_7a(xc), _ref_d(model.Mixed_7a, xc))
    assert model.Mixed_7a(xc).shape == (1, 1280, 3, 3)

    xe1 = x(1280, 5)
    torch.testing.assert_close(model.Mixed_7b(xe1), _ref_e(model.Mixed_7b, xe1, _valid_avg))
    xe2 = x(2048, 5)
    out = model.Mixed_7c(xe2)
    assert out.shape == (1, 2048, 5, 5)
    torch.testing.assert_close(out, _ref_e(model.Mixed_7c, xe2, max_same))
    assert not torch.allclose(out, _ref_e(model.Mixed_7c, xe2, _valid_avg))


# --- whole network --------------------------------------------------------------------------
def test_features_shape_and_input_conventions(model):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    f = inception_features(model, imgs, batch_size=2, device="cpu")
    assert f.shape == (3, 2048) and f.dtype == np.float64
    assert np.isfinite(f).all() and f.std() > 0
    # same images as a float NCHW tensor in [0, 1], one batch
    t = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    f2 = inception_features(model, t, batch_size=8, device="cpu")
    np.testing.assert_allclose(f, f2, rtol=1e-4, atol=1e-5)
    # another, non-square input size
    g = inception_features(model, torch.rand(2, 3, 100, 80), batch_size=4, device="cpu")
    assert g.shape == (2, 2048) and np.isfinite(g).all()
    # empty input
    assert inception_features(model, imgs[:0], batch_size=4).shape == (0, 2048)


@torch.no_grad()
def test_forward_resizes_and_normalises_like_pytorch_fid(model):
    x = torch.rand(1, 3, 50, 70)
    resized = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    raw = FIDInceptionV3(resize_input=False, normalize_input=False)
    raw.load_state_dict(model.state_dict())
    raw.eval()
    torch.testing.assert_close(model(x), raw(2 * resized - 1), rtol=1e-4, atol=1e-5)


def test_state_dict_round_trips_through_loader(model, tmp_path):
    path = tmp_path / WEIGHTS_NAME
    torch.save(model.state_dict(), path)
    loaded = load_fid_inception(path)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    ref = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k
    x = torch.rand(1, 3, 75, 75)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    # a plain dict without BN step counters (as older torch saved them) also loads
    plain = {k: v for k, v in ref.items() if not k.endswith("num_batches_tracked")}
    torch.save(plain, tmp_path / "no_counters.pth")
    load_fid_inception(tmp_path / "no_counters.pth")


def test_loader_errors_name_the_path_and_the_weights(model, tmp_path):
    missing = tmp_path / "nowhere" / WEIGHTS_NAME
    with pytest.raises(ConfigError) as ei:
        load_fid_inception(missing)
    assert str(missing) in str(ei.value) and WEIGHTS_NAME in str(ei.value)

    with pytest.raises(ConfigError) as ei:
        load_fid_inception(None)
    assert WEIGHTS_NAME in str(ei.value)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ConfigError) as ei:
        load_fid_inception(garbage)
    assert str(garbage) in str(ei.value) and WEIGHTS_NAME in str(ei.value)

    sd = model.state_dict()
    wrong_keys = {("module." + k): v for k, v in sd.items()}
    torch.save(wrong_keys, tmp_path / "wrong_keys.pth")
    with pytest.raises(ConfigError, match="missing keys"):
        load_fid_inception(tmp_path / "wrong_keys.pth")

    # torchvision's ImageNet Inception (1000 classes) is not the FID network
    wrong_shape = dict(sd)
    wrong_shape["fc.weight"] = torch.zeros(1000, 2048)
    wrong_shape["fc.bias"] = torch.zeros(1000)
    torch.save(wrong_shape, tmp_path / "wrong_shape.pth")
    with pytest.raises(ConfigError, match="shape"):
        load_fid_inception(tmp_path / "wrong_shape.pth")

    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ConfigError):
        load_fid_inception(tmp_path / "list.pth")


# ============================================================================================
# Segmentation scores
# ============================================================================================
IGN = 255


def test_confusion_matrix_and_scores_by_hand():
    target = np.array([[0, 0, 1], [1, 2, IGN]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])  # last pixel ignored (its pred 2 must not count)
    conf = confusion_matrix(pred, target, num_classes=4, ignore_index=IGN)
    assert conf.dtype == np.int64 and conf.shape == (4, 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = 1  # rows: target, columns: prediction
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[2, 0] = 1
    np.testing.assert_array_equal(conf, expected)

    s = segmentation_scores(conf)
    # class 0: TP 1, |target| 2, |pred| 2 -> 1/3; class 1: TP 2, 2, 3 -> 2/3; class 2: 0/1;
    # class 3 absent from both -> NaN, excluded from the mean
    iou = s["per_class_iou"]
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(2 / 3)
    assert iou[2] == 0.0 and math.isnan(iou[3])
    assert s["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert s["pixel_acc"] == pytest.approx(3 / 5)


def test_class_only_predicted_counts_in_the_mean():
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])  # class 2: false positive only -> IoU 0, not NaN
    s = segmentation_scores(confusion_matrix(pred, target, 3, ignore_index=IGN))
    assert s["per_class_iou"] == pytest.approx([1 / 2, 1.0, 0.0])
    assert s["miou"] == pytest.approx(0.5)
    assert s["pixel_acc"] == pytest.approx(0.75)


def test_confusion_matrix_matches_naive_count_and_accepts_tensors():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 6, size=(2, 17, 13))
    target[rng.random(target.shape) < 0.2] = IGN
    pred = rng.integers(0, 6, size=target.shape)
    naive = np.zeros((6, 6), dtype=np.int64)
    for t, p in zip(target.ravel(), pred.ravel()):
        if t != IGN:
            naive[t, p] += 1
    np.testing.assert_array_equal(confusion_matrix(pred, target, 6, IGN), naive)
    np.testing.assert_array_equal(
        confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 6, IGN), naive)
    s = segmentation_scores(naive)
    assert s["pixel_acc"] == pytest.approx(np.trace(naive) / naive.sum())


def test_perfect_and_empty_and_invalid():
    t = np.array([[0, 1], [2, IGN]], dtype=np.uint8)
    s = segmentation_scores(confusion_matrix(t, t, 5, ignore_index=IGN))
    assert s["miou"] == 1.0 and s["pixel_acc"] == 1.0
    assert sum(math.isnan(v) for v in s["per_class_iou"]) == 2

    s = segmentation_scores(confusion_matrix(np.full(3, IGN), np.full(3, IGN), 3, IGN))
    assert math.isnan(s["miou"]) and math.isnan(s["pixel_acc"])

    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3, IGN)  # pred out of range
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 1]), np.array([0, 7]), 3, IGN)  # target out of range
    with pytest.raises(ValueError):
        confusion_matrix(np.zeros(3, int), np.zeros(4, int), 3, IGN)
