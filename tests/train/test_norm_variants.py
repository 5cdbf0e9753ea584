"""The Table-3 normalisation variants (``model.norm``): layer semantics against independent
re-computations, generator shape/gradient/guidance checks per variant, and per variant a tiny
training run that resumes bit-exactly and then synthesises and edits through :class:`Synthesizer`.

Sizes are tiny (label_nc 5, ngf 2, hidden 4, 32×32): the whole file takes about 25 s of CPU time."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from pipeline.errors import ConfigError
from resail_train.config import load_config
from resail_train.models.generator import RESAILGenerator
from resail_train.models.norms.registry import make_norm
from resail_train.models.norms.resail import RESAILNorm
from resail_train.models.norms.spade import SPADENorm
from resail_train.models.norms.registry import NORM_NAMES, NormVariant, get_norm_variant, norm_names, register
from resail_train.models.norms.pix2pixhd_plus import ConcatConvNorm
from resail_train.models.norms.sean_plus import (PerClassLinear, RegionStyleEncoder, SEANPlusNorm, broadcast_codes,
                                          region_average)
from resail_train.models.norms.spade_plus import SPADEPlusNorm
from tests.fixtures.tensors import onehot, rand
from tests.fixtures.training import tensors_equal


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- registry and config
def test_registry_names_layers_and_config():
    assert NORM_NAMES == ("resail", "spade", "spade_plus", "pix2pixhd_plus", "sean_plus")
    layers = {"resail": RESAILNorm, "spade": SPADENorm, "spade_plus": SPADEPlusNorm,
              "pix2pixhd_plus": ConcatConvNorm, "sean_plus": SEANPlusNorm}
    for name, cls in layers.items():
        v = get_norm_variant(name)
        assert v.name == name and v.released and v.summary
        assert type(make_norm(name, 6, 4, hidden=8)) is cls
        assert load_config("demo", [f"model.norm={name}"]).model.norm == name
    assert [n for n in NORM_NAMES if not get_norm_variant(n).uses_guidance] == ["spade"]
    with pytest.raises(ValueError, match="unknown norm kind 'sean'.*sean_plus"):
        get_norm_variant("sean")
    with pytest.raises(ConfigError, match="model.norm: expected one of resail, spade, spade_plus"):
        load_config("demo", ["model.norm=spade+"])


def test_registered_variant_is_accepted_by_config_and_generator():
    from resail_train.models.norms import registry as norms

    register(NormVariant("test_spade_copy", SPADENorm, uses_guidance=False, released="-", summary="test"))
    try:
        assert "test_spade_copy" in norm_names()
        assert load_config("demo", ["model.norm=test_spade_copy"]).model.norm == "test_spade_copy"
        G = RESAILGenerator(label_nc=3, ngf=2, crop_size=(16, 16), num_upsampling=2, norm="test_spade_copy",
                            norm_hidden=4)
        assert G(onehot(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    finally:
        norms._REGISTERED.pop("test_spade_copy")
    assert "test_spade_copy" not in norm_names()


# --------------------------------------------------------------------------- the layers
def test_spade_plus_reduces_to_spade_when_the_guidance_weights_are_zero():
    """SPADE+ = SPADE over [label, RGB]: with the RGB input weights zeroed it must equal SPADE
    with the same label weights (checks the concatenation order and the shared layout)."""
    plus, spade = SPADEPlusNorm(6, 4, hidden=8), SPADENorm(6, 4, hidden=8)
    assert plus.coarse.shared[0].in_channels == 4 + 3
    with torch.no_grad():
        plus.coarse.shared[0].weight[:, 4:] = 0
        spade.coarse.shared[0].weight.copy_(plus.coarse.shared[0].weight[:, :4])
        spade.coarse.shared[0].bias.copy_(plus.coarse.shared[0].bias)
        for head in ("gamma", "beta"):
            getattr(spade.coarse, head).load_state_dict(getattr(plus.coarse, head).state_dict())
    x, seg = torch.randn(2, 6, 8, 8), onehot(2, 4, 16, 16)
    a = plus(x, seg, rand(2, 3, 16, 16, seed=1))
    b = plus(x, seg, rand(2, 3, 16, 16, seed=2))
    torch.testing.assert_close(a, spade(x, seg), rtol=0, atol=1e-6)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="guidance"):
        plus(x, seg, None)


def test_pix2pixhd_plus_is_a_conv_over_the_concatenation_then_plain_batch_norm():
    norm = ConcatConvNorm(6, 4, hidden=8)
    assert norm.conv.in_channels == 6 + 4 + 3 and norm.conv.out_channels == 6
    assert list(norm.param_free_norm.parameters()) == [] and not hasattr(norm, "coarse")
    x, seg, g = torch.randn(3, 6, 8, 8), onehot(3, 4, 32, 32), rand(3, 3, 32, 32)
    out = norm(x, seg, g)
    # no γ/β: the output is exactly batch-normalised per channel
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(6), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.var(dim=(0, 2, 3), unbiased=False), torch.ones(6), rtol=0, atol=1e-3)
    # each input part enters through its own slice of the conv weights: zero the guidance slice → guidance-free
    with torch.no_grad():
        norm.conv.weight[:, 10:] = 0
    torch.testing.assert_close(norm(x, seg, g), norm(x, seg, rand(3, 3, 32, 32, seed=5)), rtol=0, atol=0)
    with torch.no_grad():
        norm.conv.weight[:, 6:10] = 0  # and the label slice → only x matters
    torch.testing.assert_close(norm(x, seg, g), norm(x, onehot(3, 4, 32, 32, seed=9), g), rtol=0, atol=0)


def test_region_average_and_broadcast_match_sean_loops():
    """Against SEAN's per-class loops: masked mean of the encoder features per class, and the
    per-class fc + masked scatter of the codes into the style map."""
    feats, seg = torch.randn(2, 5, 6, 6), onehot(2, 4, 12, 12, seed=3)
    seg[1, 0] += seg[1, 2]  # class 2 absent in sample 1: its pixels relabelled 0
    seg[1, 2] = 0
    codes = region_average(feats, seg)
    small = F.interpolate(seg, size=(6, 6), mode="nearest").bool()
    for b in range(2):
        for c in range(4):
            m = small[b, c]
            expect = feats[b][:, m].mean(1) if m.any() else torch.zeros(5)
            torch.testing.assert_close(codes[b, c], expect, rtol=1e-5, atol=1e-6)
    assert torch.equal(codes[1, 2], torch.zeros(5))

    fc = PerClassLinear(4, 5, 5)
    mu = F.relu(fc(codes))
    style = broadcast_codes(mu, small.float())
    ref = torch.zeros(2, 5, 6, 6)
    for b in range(2):
        for c in range(4):
            m = small[b, c]
            v = F.relu(F.linear(codes[b, c], fc.weight[c], fc.bias[c]))
            ref[b].masked_scatter_(m.expand(5, 6, 6), v[:, None].expand(5, int(m.sum())).contiguous())
    torch.testing.assert_close(style, ref, rtol=1e-5, atol=1e-6)


def test_sean_plus_layer_and_encoder():
    enc = RegionStyleEncoder(label_nc=4, style_dim=8)
    seg, g = onehot(2, 4, 16, 16), rand(2, 3, 16, 16)
    codes = enc(g, seg)
    assert codes.shape == (2, 4, 8) and codes.abs().max() <= 1  # tanh features, averaged
    feat = enc.net(g)
    assert feat.shape == (2, 8, 8, 8)  # half the input size, as the released Zencoder
    norm = SEANPlusNorm(6, 4, hidden=8)
    assert norm.mix_gamma.item() == 0 and norm.mix_beta.item() == 0 and norm.style_fc.weight.shape == (4, 8, 8)
    x = torch.randn(2, 6, 8, 8)
    out = norm(x, seg, codes)
    assert out.shape == x.shape
    # the style map is piecewise constant: one code per class region
    s = F.interpolate(seg, size=(8, 8), mode="nearest")
    style = broadcast_codes(F.relu(norm.style_fc(codes)), s)
    for c in range(4):
        m = s[0, c].bool()
        if m.any():
            vals = style[0][:, m]
            torch.testing.assert_close(vals, vals[:, :1].expand_as(vals))
    # codes (not an RGB image) are what it expects
    with pytest.raises(ValueError, match="style codes"):
        norm(x, seg, g)


# --------------------------------------------------------------------------- the generator per variant
def _tiny_generator(norm: str) -> RESAILGenerator:
    # init_gain 1: gradients well above float noise at these tiny widths
    return RESAILGenerator(label_nc=5, ngf=2, crop_size=(16, 16), num_upsampling=2, norm=norm, norm_hidden=4,
                           init_gain=1.0)


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_generator_shape_gradients_and_guidance_dependence(norm):
    G = _tiny_generator(norm)
    lab = torch.randint(0, 5, (2, 16, 16), generator=torch.Generator().manual_seed(0))
    lab[:, :4, :5] = torch.arange(5)  # every class present in every sample (each SEAN+ class fc learns)
    seg = F.one_hot(lab, 5).permute(0, 3, 1, 2).float()
    g1, g2 = rand(2, 3, 16, 16, seed=1), rand(2, 3, 16, 16, seed=2)
    out = G(seg, g1)
    assert out.shape == (2, 3, 16, 16) and out.abs().max() <= 1
    (out * rand(2, 3, 16, 16, seed=7)).sum().backward()
    dead = [n for n, p in G.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == [], dead
    G.eval()  # in train mode every call advances spectral norm's power iteration
    with torch.no_grad():
        a, b = G(seg, g1), G(seg, g2)
    if norm == "spade":
        assert torch.equal(a, b) and torch.equal(a, G(seg, None))
    else:
        assert (a - b).abs().max() > 1e-4
        with pytest.raises(ValueError, match="needs a guidance image"):
            G(seg, None)


def test_generator_layout_per_variant():
    kinds = {}
    for norm in NORM_NAMES:
        G = _tiny_generator(norm)
        kinds[norm] = {name: type(b.norm_0).__name__ for name, b in G.blocks.items()}
        has_encoder = isinstance(G.guidance_encoder, RegionStyleEncoder)
        assert has_encoder == (norm == "sean_plus")
        if not has_encoder:
            assert not any(k.startswith("guidance_encoder") for k in G.state_dict())
    assert set(kinds["spade_plus"].values()) == {"SPADEPlusNorm"}
    assert set(kinds["pix2pixhd_plus"].values()) == {"ConcatConvNorm"}
    # SEAN (and the released SeanGenerator) keep plain SPADE in the last ResBlk
    assert kinds["sean_plus"].pop("up_3") == "SPADENorm" and set(kinds["sean_plus"].values()) == {"SEANPlusNorm"}
    # the backbone does not change: same block names and main conv shapes for every variant
    shapes = {n: [tuple(p.shape) for k, p in _tiny_generator(n).state_dict().items() if ".conv_" in k or k.startswith(("fc.", "conv_img"))]
              for n in NORM_NAMES}
    assert all(s == shapes["resail"] for s in shapes.values())


# --------------------------------------------------------------------------- train, resume, synthesise, edit
TINY = {
    "base": "demo",
    "data": {"load_size": None, "crop_size": [32, 32], "num_workers": 0, "flip": True},
    "model": {"ngf": 2, "norm_hidden": 4, "ndf": 4, "n_layers_D": 1, "num_D": 1, "num_upsampling": 3},
    "optim": {"batch_size": 2, "epochs": 1, "decay_epochs": 0},
    "loss": {"lambda_seg": 0.0},
    "log": {"scalar_every": 1, "sample_every": 100, "latest_every": 1, "checkpoint_every": 100, "n_samples": 1},
}


@pytest.fixture(scope="module")
def variant_cache(tmp_path_factory) -> Path:
    from tests.fixtures.train_cache import make_train_cache

    return make_train_cache(tmp_path_factory.mktemp("norms"), n_train=4, n_val=0, size=(32, 32), noise=20,
                            guidance="shifted", variants=1)


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_variant_trains_resumes_synthesises_and_edits(norm, variant_cache, tmp_path):
    from resail_train.synthesis import Synthesizer
    from resail_train.training.trainer import TrainOptions, train
    from tests.fixtures.toy_dataset import toy_label_map

    data = copy.deepcopy(TINY)
    data["model"]["norm"] = norm
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    cfg = load_config(tmp_path / "c.yaml")
    opts = dict(progress=False, device="cpu")
    straight = train(variant_cache, tmp_path / "a", cfg, TrainOptions(max_steps=2, **opts))
    assert straight.step == 2
    train(variant_cache, tmp_path / "b", cfg, TrainOptions(max_steps=1, **opts))
    train(variant_cache, tmp_path / "b", cfg, TrainOptions(max_steps=2, resume=True, **opts))
    a = torch.load(tmp_path / "a" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "latest.pt", weights_only=True)
    for part in ("models", "optimizers", "schedulers"):
        assert tensors_equal(a[part], b[part]), part
    assert a["config"]["model"]["norm"] == norm
    losses = json.loads((tmp_path / "a" / "logs" / "metrics.json").read_text())["train"]
    assert all(np.isfinite(v) for v in losses.values() if isinstance(v, (int, float)))

    # the generator file records the variant: Synthesizer rebuilds it without being told
    with Synthesizer.load(tmp_path / "a", variant_cache, device="cpu") as syn:
        assert syn.G.norm_kind == norm
        assert tensors_equal(syn.G.state_dict(), a["models"]["G"])
        lab, inst = toy_label_map(np.random.default_rng(123), 32, 32)
        img, guid, res = syn.synthesize(lab, inst)
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and guid.shape == (32, 32, 3)
        # an edit: every segment with a second candidate takes it (global edit, rank 1)
        edit = syn.guidance(lab, inst, rank=1)
        assert (edit.guidance != res.guidance).any()
        f0 = syn.generate(*syn.prepare(lab, res.guidance, inst))
        f1 = syn.generate(*syn.prepare(lab, edit.guidance, inst))
        if norm == "spade":
            assert torch.equal(f0, f1)
        else:
            assert not torch.equal(f0, f1)
        img1, _, _ = syn.synthesize(lab, inst, rank=1)
        assert img1.shape == img.shape
