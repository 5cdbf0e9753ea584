"""Table 4 guidance modes: which passes run, which losses each gets, gradients, and the default = before."""
from __future__ import annotations

import copy

import pytest
import torch

from resail_train.config import config_from_dict, load_config
from resail_train.guidance_modes import GUIDANCE_MODES, passes_for
from resail_train.training.losses import (balanced_cross_entropy, feature_matching_loss, hinge_d_loss_fake, hinge_d_loss_real,
                                 hinge_g_loss)
from resail_train.training.trainer import TrainOptions, Trainer, segment, set_requires_grad, split_preds
from tests.fixtures.train_cache import make_train_cache, mask_guidance, write_toy_retrieval
from tests.fixtures.training import write_config, write_untrained_segnet

# Written from the paper (Table 4 rows, §3.2 "retrieval guidance lacks paired ground truth", §3.4
# "adversarial and segmentation losses on both") independently of resail_train/guidance_modes.py:
# mode → [(batch key of the guidance, generator loss names)], paired pass first.
PAIRED = ["G_gan", "G_fm", "G_vgg", "G_seg"]
RET = ["G_gan_ret", "G_seg_ret"]
EXPECTED = {
    "retrieval": [("guidance", RET)],
    "distorted-retrieval": [("guidance_distorted", RET)],
    "distorted-gt": [("distorted", PAIRED)],
    "retrieval+original-gt": [("original_gt", PAIRED), ("guidance", RET)],
    "retrieval+distorted-gt": [("distorted", PAIRED), ("guidance", RET)],
}


@pytest.fixture(scope="module")
def mode_cache(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("modes")
    cache_dir = make_train_cache(tmp, n_train=4, n_val=0, size=(32, 32), noise=20, guidance="shifted", variants=2)
    write_toy_retrieval(cache_dir)
    mask_guidance(cache_dir, keep_rows=24)
    write_untrained_segnet(tmp / "segnet.pt")
    from resail_train.models.vgg import VGG19Features

    torch.manual_seed(0)
    torch.save(VGG19Features().state_dict(), tmp / "vgg19.pth")  # random weights, torchvision layout
    return cache_dir, tmp


def make_trainer(mode_cache, tmp_path, mode: str, **sections) -> Trainer:
    cache_dir, shared = mode_cache
    sec = {"segnet": {"path": str(shared / "segnet.pt")}, "data": {"crop_size": [32, 32], "guidance_mode": mode}}
    for k, v in sections.items():
        sec.setdefault(k, {}).update(v)
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = load_config(write_config(tmp_path / f"{mode}.yaml", **sec))
    tr = Trainer(cache_dir, tmp_path / "run", cfg, TrainOptions(device="cpu", progress=False,
                                                             vgg_weights=str(shared / "vgg19.pth")))
    tr._setup()
    return tr


class CallLog:
    """Wraps the generator: records the guidance of every call and the gradient reaching every output."""

    def __init__(self, G: torch.nn.Module) -> None:
        self.G, self.calls, self.grads = G, [], []
        self.orig = G.forward

    def __call__(self, seg, guidance):
        out = self.orig(seg, guidance)
        self.calls.append(guidance.detach().clone())
        if out.requires_grad:
            slot = len(self.grads)
            self.grads.append(None)

            def hook(g, slot=slot):
                self.grads[slot] = float(g.abs().sum())
            out.register_hook(hook)
        return out


def test_table_is_the_papers_table4():
    assert set(GUIDANCE_MODES) == set(EXPECTED)
    for mode, want in EXPECTED.items():
        got = [(p.key, [f"G_{t}{p.suffix}" for t in p.losses]) for p in passes_for(mode)]
        assert got == want, mode
    assert load_config("demo").data.guidance_mode == "retrieval+distorted-gt"


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_mode_runs_its_passes_with_its_losses_and_grads_reach_g(mode, mode_cache, tmp_path):
    tr = make_trainer(mode_cache, tmp_path, mode)
    try:
        want = EXPECTED[mode]
        assert tr.vgg_loss is not None and tr.vgg_loss.vgg.normalize_input is False  # loss.vgg_input: raw
        tr.sampler.set_position(0, 0)
        batch = next(iter(tr.loader))
        # The loader produces exactly the guidance sources the passes need.
        present = {k for k in ("guidance", "guidance_distorted", "distorted", "original_gt") if k in batch}
        derived = {"guidance"} if mode in ("distorted-retrieval", "retrieval+original-gt") else set()  # made from it
        assert present == {key for key, _ in want} | derived
        x = tr._inputs(batch)
        log = CallLog(tr.G)
        tr.G.forward = log
        before = [p.detach().clone() for p in tr.G.parameters()]
        losses, fakes = tr.train_step(x)
        n = len(want)
        # G step: one call per pass; D step: the same passes again (under no_grad).
        assert len(log.calls) == 2 * n and len(fakes) == n
        for i, (key, _) in enumerate(want):
            assert torch.equal(log.calls[i], x[key]) and torch.equal(log.calls[n + i], x[key])
            assert fakes[i].shape == x["real"].shape
        # Loss terms: the expected generator terms, D_real and one D_fake per pass.
        g_names = [name for _, names in want for name in names]
        d_names = ["D_real"] + ["D_fake" + ("" if names is PAIRED else "_ret") for _, names in want]
        assert set(losses) == set(g_names) | set(d_names) | {"G_total", "D_total"}
        assert all(torch.isfinite(v) for v in losses.values())
        assert torch.allclose(losses["G_total"], sum(losses[k] for k in g_names), rtol=1e-5)
        # Gradients reach the generator through every pass of the G step.
        assert len(log.grads) == n and all(g is not None and g > 0 for g in log.grads), log.grads
        assert any(not torch.equal(a, b.detach()) for a, b in zip(before, tr.G.parameters()))
    finally:
        tr.dataset.close()
        if tr._det_prev is not None:
            torch.use_deterministic_algorithms(tr._det_prev[0])


def _old_train_step(tr: Trainer, x: dict) -> dict:
    """The train step as it was before data.guidance_mode (commit 203ffe1), for the default-mode check."""
    cfg = tr.cfg.loss
    seg, real, labels = x["seg"], x["real"], x["labels"]
    guid = [x["distorted"], x["guidance"]]
    set_requires_grad(tr.D, False)
    fakes = tr.G_passes(seg, guid)
    n = len(fakes)
    preds = split_preds(tr.D_frozen(torch.cat(fakes + [real]), seg.repeat(n + 1, 1, 1, 1)), n + 1)
    losses = {"G_gan": hinge_g_loss(preds[0])}
    losses["G_fm"] = feature_matching_loss(preds[0], preds[-1], cfg.lambda_fm)
    losses["G_vgg"] = cfg.lambda_vgg * tr.vgg_loss(fakes[0].float(), real)
    losses["G_gan_ret"] = hinge_g_loss(preds[1])
    logits = segment(tr.segnet, torch.cat(fakes)).float().chunk(n)
    losses["G_seg"] = cfg.lambda_seg * balanced_cross_entropy(logits[0], labels, tr.num_classes)
    losses["G_seg_ret"] = cfg.lambda_seg * balanced_cross_entropy(logits[1], labels, tr.num_classes)
    g_total = sum(v.float() for v in losses.values())
    tr.opt_G.zero_grad(set_to_none=True)
    g_total.backward()
    tr.opt_G.step()
    set_requires_grad(tr.D, True)
    with torch.no_grad():
        fakes_d = [f.detach() for f in tr.G_passes(seg, guid)]
    preds = split_preds(tr.D_train(torch.cat(fakes_d + [real]), seg.repeat(n + 1, 1, 1, 1)), n + 1)
    losses["D_real"] = hinge_d_loss_real(preds[-1]) * n
    losses["D_fake"] = hinge_d_loss_fake(preds[0])
    losses["D_fake_ret"] = hinge_d_loss_fake(preds[1])
    d_total = losses["D_real"] + losses["D_fake"] + losses["D_fake_ret"]
    tr.opt_D.zero_grad(set_to_none=True)
    d_total.backward()
    tr.opt_D.step()
    tr.sched_G.step()
    tr.sched_D.step()
    losses["G_total"], losses["D_total"] = g_total, d_total
    return {k: v.detach() for k, v in losses.items()}


def test_default_mode_reproduces_the_previous_losses_and_update(mode_cache, tmp_path):
    a = make_trainer(mode_cache, tmp_path / "a", "retrieval+distorted-gt")
    b = make_trainer(mode_cache, tmp_path / "b", "retrieval+distorted-gt")
    try:
        a.sampler.set_position(0, 0)
        batch = next(iter(a.loader))
        new, _ = a.train_step(a._inputs(batch))
        old = _old_train_step(b, b._inputs(batch))
        assert list(new) == list(old)  # same names, same order
        for k in old:
            assert torch.equal(new[k], old[k]), k
        for pa, pb in zip(list(a.G.parameters()) + list(a.D.parameters()), list(b.G.parameters()) + list(b.D.parameters())):
            assert torch.equal(pa, pb)
    finally:
        for tr in (a, b):
            tr.dataset.close()
        if a._det_prev is not None:
            torch.use_deterministic_algorithms(a._det_prev[0])


def test_legacy_configs_keep_their_meaning():
    old = copy.deepcopy(load_config("demo").to_dict())
    del old["data"]["guidance_mode"], old["loss"]["vgg_input"]
    old["loss"]["retrieval_pass"] = False
    cfg = config_from_dict(old)
    assert cfg.data.guidance_mode == "distorted-gt" and cfg.loss.vgg_input == "imagenet"
    old["loss"]["retrieval_pass"] = True
    assert config_from_dict(old).data.guidance_mode == "retrieval+distorted-gt"
    assert load_config("demo", ["loss.vgg_input=imagenet"]).loss.vgg_input == "imagenet"


def test_paper_configs_use_the_released_batch_sizes():
    got = {n: load_config(n).optim.batch_size for n in ("cityscapes", "ade20k", "ade20k-outdoor", "coco-stuff")}
    assert got == {"cityscapes": 3, "ade20k": 8, "ade20k-outdoor": 2, "coco-stuff": 3}
    for n in got:
        c = load_config(n)
        assert (c.optim.epochs, c.optim.decay_epochs) == (200, 100) and c.loss.vgg_input == "raw"
    out = load_config("ade20k-outdoor")
    assert out.data.crop_size == [256, 256] and out.model.num_upsampling == 5 and out.name == "ade20k-outdoor"


def test_imagenet_vgg_input_option(mode_cache, tmp_path):
    tr = make_trainer(mode_cache, tmp_path, "distorted-gt", loss={"vgg_input": "imagenet"})
    try:
        assert tr.vgg_loss.vgg.normalize_input is True
    finally:
        tr.dataset.close()
        if tr._det_prev is not None:
            torch.use_deterministic_algorithms(tr._det_prev[0])


def test_unused_sources_are_not_loaded(mode_cache, tmp_path):
    """`retrieval` needs no distortions.h5 (and `distorted-gt` no guidance)."""
    prev = torch.are_deterministic_algorithms_enabled()
    try:
        tr = make_trainer(mode_cache, tmp_path, "retrieval")
        assert tr.dataset.use_distortions is False and tr.dataset.guidance_mode == "rank0"
        tr.dataset.close()
        tr = make_trainer(mode_cache, tmp_path / "g", "distorted-gt")
        assert tr.dataset.use_distortions is True and tr.dataset.guidance_mode is None
        tr.dataset.close()
    finally:
        torch.use_deterministic_algorithms(prev)
