"""Shape, wiring and loading tests for resail_train's networks (tiny sizes, CPU)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from pipeline.errors import ConfigError
from resail_train.models.discriminator import SesameDiscriminator, SesameMultiscaleDiscriminator
from resail_train.models.generator import RESAILGenerator, RESAILResBlock, upsample_positions
from resail_train.models.norms.registry import make_norm
from resail_train.models.norms.resail import RESAILNorm
from resail_train.models.norms.spade import SPADENorm
from resail_train.models.segnet import SegNet, SegResBlock
from resail_train.models.vgg import RELU_INDICES, VGG19Features, load_vgg19, make_vgg19_features
from tests.fixtures.tensors import onehot, rand


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- normalisation
def test_resail_norm_shape_and_param_free_bn():
    norm = RESAILNorm(norm_nc=6, label_nc=4, hidden=8)
    x = torch.randn(2, 6, 8, 8)
    out = norm(x, onehot(2, 4, 32, 32), rand(2, 3, 32, 32))  # label/guidance at a higher resolution
    assert out.shape == x.shape
    bn = norm.param_free_norm
    assert isinstance(bn, nn.BatchNorm2d) and not bn.affine
    assert list(bn.parameters()) == []
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(norm)
    assert isinstance(converted.param_free_norm, nn.SyncBatchNorm)


def test_resail_norm_hidden_width_and_adain_layout():
    norm = RESAILNorm(norm_nc=5, label_nc=3, hidden=12)
    assert norm.coarse.shared[0].out_channels == 12
    assert norm.fine.conv1.in_channels == 3 and norm.fine.conv1.out_channels == 12
    assert norm.fine.sem_conv.out_channels == 24 and norm.fine.sem_conv.stride == (2, 2)
    assert norm.fine.sem_proj.kernel_size == (1, 1)
    assert norm.fine.gamma is not norm.fine.beta
    assert norm.mix_gamma.shape == (1,) and norm.mix_beta.shape == (1,)
    assert norm.mix_gamma.item() == 0.0 and norm.mix_beta.item() == 0.0


def test_mix_at_init_is_mean_of_branches():
    norm = RESAILNorm(norm_nc=4, label_nc=3, hidden=8)
    seg, guid = onehot(2, 3, 16, 16), rand(2, 3, 16, 16)
    size = (8, 8)
    seg_s = F.interpolate(seg, size=size, mode="nearest")
    guid_s = F.interpolate(guid, size=size, mode="bilinear", align_corners=False)
    with torch.no_grad():
        gs, bs = norm.coarse(seg_s)
        gr, br = norm.fine(guid_s, seg_s)
        gamma, beta = norm.modulation(seg, guid, size)
        assert torch.allclose(gamma, 0.5 * (gr + gs), atol=1e-6)
        assert torch.allclose(beta, 0.5 * (br + bs), atol=1e-6)
        x = torch.randn(2, 4, 8, 8)
        out = norm(x, seg, guid)
        expected = F.batch_norm(x, None, None, training=True) * (1 + gamma) + beta
        assert torch.allclose(out, expected, atol=1e-5)


def test_fine_branch_adain_follows_semantic_map():
    norm = RESAILNorm(norm_nc=4, label_nc=3, hidden=8)
    guid = rand(1, 3, 8, 8)
    with torch.no_grad():
        a, _ = norm.fine(guid, onehot(1, 3, 8, 8, seed=1))
        b, _ = norm.fine(guid, onehot(1, 3, 8, 8, seed=2))
    assert not torch.allclose(a, b)


def test_gradients_reach_both_branches_and_mix_scalars():
    norm = RESAILNorm(norm_nc=4, label_nc=3, hidden=8)
    x = torch.randn(2, 4, 8, 8)
    out = norm(x, onehot(2, 3, 8, 8), rand(2, 3, 8, 8))
    (out * torch.randn_like(out)).sum().backward()
    modules = {
        "coarse.shared": norm.coarse.shared[0], "coarse.gamma": norm.coarse.gamma, "coarse.beta": norm.coarse.beta,
        "fine.conv1": norm.fine.conv1, "fine.conv2": norm.fine.conv2, "fine.conv3": norm.fine.conv3,
        "fine.gamma": norm.fine.gamma, "fine.beta": norm.fine.beta,
        "fine.sem_conv": norm.fine.sem_conv, "fine.sem_proj": norm.fine.sem_proj,
    }
    for name, m in modules.items():
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0, name
    for p in (norm.mix_gamma, norm.mix_beta):
        assert p.grad is not None and p.grad.abs().item() > 0


def test_spade_norm_and_factory():
    spade = make_norm("spade", 6, 4, hidden=8)
    assert isinstance(spade, SPADENorm)
    assert not any("fine" in n or "mix" in n for n, _ in spade.named_parameters())
    x = torch.randn(2, 6, 4, 4)
    assert spade(x, onehot(2, 4, 16, 16)).shape == x.shape
    assert isinstance(make_norm("resail", 6, 4, hidden=8), RESAILNorm)
    with pytest.raises(ValueError):
        make_norm("sean", 6, 4)
    with pytest.raises(ValueError):
        RESAILNorm(6, 4, hidden=8)(x, onehot(2, 4, 4, 4), None)


# ---------------------------------------------------------------- generator
@pytest.mark.parametrize("n", range(8))
def test_upsample_positions_count(n):
    pos = upsample_positions(n)
    assert sum(pos) == n and not pos[0]
    assert len(pos) == (8 if n == 7 else 7)


def test_upsample_positions_match_spade():
    # SPADE "normal": up after head_0 and before up_0..up_3; "more": also before G_middle_1.
    assert upsample_positions(5) == (False, True, False, True, True, True, True)
    assert upsample_positions(6) == (False, True, True, True, True, True, True)
    with pytest.raises(ValueError):
        upsample_positions(8)


def test_generator_square_shape_and_range():
    G = RESAILGenerator(label_nc=5, ngf=4, crop_size=(64, 64), num_upsampling=3, norm_hidden=8)
    assert G.start_size == (8, 8)
    out = G(onehot(2, 5, 64, 64), rand(2, 3, 64, 64))
    assert out.shape == (2, 3, 64, 64)
    assert out.abs().max() <= 1.0


def test_generator_cityscapes_aspect_six_upsamplings():
    # 512×256 (W×H) with 6 upsamplings starts 8 wide × 4 high; here scaled down to 128×64.
    assert RESAILGenerator(label_nc=3, ngf=1, crop_size=(256, 512), num_upsampling=6, norm_hidden=2).start_size == (4, 8)
    G = RESAILGenerator(label_nc=3, ngf=2, crop_size=(64, 128), num_upsampling=6, norm_hidden=4)
    assert G.start_size == (1, 2)
    out = G(onehot(2, 3, 64, 128), rand(2, 3, 64, 128))
    assert out.shape == (2, 3, 64, 128)


def test_generator_channel_schedule():
    G = RESAILGenerator(label_nc=3, ngf=2, crop_size=(32, 32), num_upsampling=5, norm_hidden=4)
    outs = [b.conv_1.out_channels for b in G.blocks.values()]
    assert list(G.blocks) == ["head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3"]
    assert outs == [32, 32, 32, 16, 8, 4, 2]
    assert G.fc.in_channels == 3 and G.fc.out_channels == 32
    assert G.conv_img.out_channels == 3


def test_generator_bad_sizes():
    with pytest.raises(ValueError):
        RESAILGenerator(label_nc=3, ngf=2, crop_size=(60, 64), num_upsampling=3)
    G = RESAILGenerator(label_nc=3, ngf=2, crop_size=(16, 16), num_upsampling=2, norm_hidden=4)
    with pytest.raises(ValueError):
        G(onehot(1, 4, 16, 16), rand(1, 3, 16, 16))


def test_spade_generator_has_no_fine_branch():
    G = RESAILGenerator(label_nc=4, ngf=2, crop_size=(32, 32), num_upsampling=3, norm="spade", norm_hidden=4)
    names = [n for n, _ in G.named_parameters()]
    assert not any(".fine." in n or "mix_" in n for n in names)
    assert any(".coarse." in n for n in names)
    assert G(onehot(2, 4, 32, 32)).shape == (2, 3, 32, 32)
    R = RESAILGenerator(label_nc=4, ngf=2, crop_size=(32, 32), num_upsampling=3, norm="resail", norm_hidden=4)
    assert any(".fine." in n for n, _ in R.named_parameters())
    with pytest.raises(ValueError):
        R(onehot(2, 4, 32, 32), None)


def test_generator_spectral_norm_and_init():
    G = RESAILGenerator(label_nc=4, ngf=2, crop_size=(32, 32), num_upsampling=3, norm_hidden=4)
    for name, block in G.blocks.items():
        assert isinstance(block, RESAILResBlock)
        assert parametrize.is_parametrized(block.conv_0, "weight"), name
        assert parametrize.is_parametrized(block.conv_1, "weight"), name
        if block.learned_shortcut:
            assert parametrize.is_parametrized(block.conv_s, "weight"), name
            assert block.conv_s.bias is None
    assert G.blocks["up_0"].learned_shortcut and not G.blocks["head_0"].learned_shortcut
    # Xavier normal gain 0.02, zero biases; mix scalars 0.
    w = G.fc.weight
    fan_in, fan_out = w.shape[1] * 9, w.shape[0] * 9
    expected_std = 0.02 * (2.0 / (fan_in + fan_out)) ** 0.5
    assert 0.5 * expected_std < w.std().item() < 1.5 * expected_std
    for m in G.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
    for n, p in G.named_parameters():
        if "mix_" in n:
            assert p.item() == 0.0


def test_generator_backward_reaches_norms():
    G = RESAILGenerator(label_nc=3, ngf=2, crop_size=(16, 16), num_upsampling=2, norm_hidden=4)
    out = G(onehot(2, 3, 16, 16), rand(2, 3, 16, 16))
    out.square().mean().backward()
    blk = G.blocks["up_3"]
    for p in (blk.norm_0.fine.conv1.weight, blk.norm_0.coarse.gamma.weight, blk.norm_0.mix_gamma,
              blk.conv_0.parametrizations.weight.original):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_models_build_networks_from_a_config(tmp_path):
    """resail_train.models.build builds every network from a config (trainer re-exports the same functions)."""
    from pipeline.datasets.base import ClassMeta
    from pipeline.errors import CacheError
    from resail_train import checkpoint as ckpt
    from resail_train.models import build as models
    from resail_train.training import trainer
    from resail_train.config import load_config
    from tests.fixtures.toy_dataset import TOY_CLASSES

    assert trainer.build_generator is models.build_generator and trainer.load_segnet is models.load_segnet
    ov = ["model.ngf=2", "model.norm_hidden=16", "model.ndf=4", "data.crop_size=[32, 32]", "model.num_upsampling=3"]
    G = models.build_generator(load_config("demo", ov + ["model.norm=sean_plus"]), 6)
    assert G.norm_kind == "sean_plus" and G.crop_size == (32, 32) and G.label_nc == 6
    fc = G.blocks["head_0"].norm_0.style_fc  # per-class weights get the generator's Xavier(0.02) init too
    expected_std = 0.02 * (2.0 / (16 + 16)) ** 0.5
    assert 0.7 * expected_std < fc.weight.std().item() < 1.3 * expected_std and torch.count_nonzero(fc.bias) == 0
    D = models.build_discriminator(load_config("demo", ov + ["model.num_D=1"]), 6)
    assert isinstance(D, SesameMultiscaleDiscriminator) and len(D(rand(1, 3, 32, 32), onehot(1, 6, 32, 32))) == 1
    cfg = load_config("demo", ["segnet.base_width=4", "segnet.spectral=false"])
    net = models.build_segnet(cfg, 5)
    assert isinstance(net, SegNet)
    meta = ClassMeta.from_dict(TOY_CLASSES)
    with pytest.raises(ConfigError, match="train-segnet"):
        models.load_segnet(tmp_path / "none.pt", meta, torch.device("cpu"))
    ckpt.save_atomic({"state_dict": net.state_dict(), "num_classes": 4, "base_width": 4, "spectral": False},
                     tmp_path / "seg.pt")
    with pytest.raises(CacheError, match="another class list"):
        models.load_segnet(tmp_path / "seg.pt", meta, torch.device("cpu"))
    ckpt.save_atomic({"state_dict": net.state_dict(), "num_classes": 5, "base_width": 4, "spectral": False,
                      "classes": TOY_CLASSES}, tmp_path / "seg.pt")
    loaded = models.load_segnet(tmp_path / "seg.pt", meta, torch.device("cpu"))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


# ---------------------------------------------------------------- discriminator
def test_sesame_discriminator_outputs():
    D = SesameMultiscaleDiscriminator(label_nc=5, ndf=4, n_layers=4, num_D=2)
    out = D(rand(2, 3, 64, 64), onehot(2, 5, 64, 64))
    assert len(out) == 2
    for scale in out:
        assert len(scale) == 5  # 4 intermediate features + logits
        assert [f.shape[1] for f in scale] == [4, 8, 16, 32, 1]
    assert out[0][-1].shape == (2, 1, 11, 11)
    assert out[1][-1].shape == (2, 1, 7, 7)


def test_sesame_fusion_formula():
    f = torch.tensor([[[[2.0]], [[-1.0]]]])  # [1, 2, 1, 1]
    s = torch.tensor([[[[1.0]], [[3.0]]]])
    fused = SesameDiscriminator.fuse(f, s)
    assert torch.allclose(fused, torch.tensor([[[[10.0]], [[-5.0]]]]))  # f + f·Σs = f·5


def test_sesame_semantic_pathway_affects_logits_only():
    D = SesameDiscriminator(label_nc=3, ndf=4, n_layers=3).eval()  # eval: no power iteration between calls
    img = rand(1, 3, 32, 32)
    with torch.no_grad():
        a = D(img, onehot(1, 3, 32, 32, seed=1))
        b = D(img, onehot(1, 3, 32, 32, seed=2))
    for fa, fb in zip(a[:-1], b[:-1]):  # image-pathway features do not see the label map
        assert torch.equal(fa, fb)
    assert not torch.allclose(a[-1], b[-1])


def test_discriminator_spectral_norm():
    D = SesameMultiscaleDiscriminator(label_nc=3, ndf=4, n_layers=4, num_D=2)
    for d in D.scales:
        for stages in (d.img_stages, d.sem_stages):
            assert not parametrize.is_parametrized(stages[0][0], "weight")  # first conv plain (released code)
            for stage in stages[1:]:
                assert parametrize.is_parametrized(stage[0], "weight")
                assert isinstance(stage[1], nn.InstanceNorm2d)
    with pytest.raises(ValueError):
        D(rand(1, 3, 32, 32), onehot(1, 3, 16, 16))


def test_discriminator_multiscale_downsampling_pools_inputs():
    D = SesameMultiscaleDiscriminator(label_nc=2, ndf=2, n_layers=2, num_D=2).eval()
    img, seg = rand(1, 3, 16, 16), onehot(1, 2, 16, 16)
    with torch.no_grad():
        out = D(img, seg)
        direct = D.scales[1](D.downsample(img), D.downsample(seg))
    assert torch.allclose(out[1][-1], direct[-1])
    assert D.downsample(img).shape[-2:] == (8, 8)


# ---------------------------------------------------------------- segnet
def test_segnet_shape_and_structure():
    net = SegNet(num_classes=7, base_width=4)
    blocks = [m for m in net.modules() if isinstance(m, SegResBlock)]
    assert len(blocks) == 12
    assert [b.conv2.out_channels for b in net.down] == [4, 4, 8, 8, 16, 16]
    out = net(rand(2, 3, 64, 64))
    assert out.shape == (2, 7, 64, 64)
    out2 = net(rand(1, 3, 64, 128))
    assert out2.shape == (1, 7, 64, 128)
    with pytest.raises(ValueError):
        net(rand(1, 3, 48, 64))


def test_segnet_default_channels():
    net = SegNet(num_classes=3)  # construct only (no forward): paper widths 3-128-128-256-256-512-512
    assert [b.conv2.out_channels for b in net.down] == [128, 128, 256, 256, 512, 512]
    assert net.up[-1].conv2.out_channels == 64 and net.head.out_channels == 3


# ---------------------------------------------------------------- VGG
def test_vgg_layout_matches_torchvision_indexing():
    feats = make_vgg19_features()
    assert len(feats) == 37
    convs = [i for i, m in enumerate(feats) if isinstance(m, nn.Conv2d)]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
    assert all(isinstance(feats[i], nn.ReLU) for i in RELU_INDICES)
    keys = set(VGG19Features().state_dict())
    assert keys == {f"features.{i}.{p}" for i in convs for p in ("weight", "bias")}


def test_vgg_feature_shapes_and_input_grad():
    vgg = VGG19Features()
    x = rand(1, 3, 32, 32).requires_grad_(True)
    feats = vgg(x)
    assert [tuple(f.shape) for f in feats] == [(1, 64, 32, 32), (1, 128, 16, 16), (1, 256, 8, 8),
                                              (1, 512, 4, 4), (1, 512, 2, 2)]
    assert not any(p.requires_grad for p in vgg.parameters())
    feats[-1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_vgg_imagenet_normalisation():
    vgg = VGG19Features(normalize_input=True)
    raw = VGG19Features(normalize_input=False)
    raw.load_state_dict(vgg.state_dict())
    x = rand(1, 3, 16, 16)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(vgg(x)[0], raw(((x + 1) / 2 - mean) / std)[0], atol=1e-5)


def test_load_vgg19_round_trip(tmp_path):
    src = VGG19Features()
    state = {k: v for k, v in src.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files also hold the classifier
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    vgg = load_vgg19(path)
    assert not vgg.training and not any(p.requires_grad for p in vgg.parameters())
    for k, v in src.state_dict().items():
        assert torch.equal(vgg.state_dict()[k], v)
    x = rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(vgg(x)[-1], src.eval()(x)[-1])


def test_load_vgg19_errors(tmp_path):
    missing = tmp_path / "nope" / "vgg19.pth"
    with pytest.raises(ConfigError) as err:
        load_vgg19(missing)
    assert str(missing) in str(err.value)

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError) as err:
        load_vgg19(junk)
    assert str(junk) in str(err.value)

    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ConfigError, match="missing"):
        load_vgg19(wrong)

    shapes = tmp_path / "shapes.pth"
    bad = dict(VGG19Features().state_dict())
    bad["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(bad, shapes)
    with pytest.raises(ConfigError, match="shape"):
        load_vgg19(shapes)
