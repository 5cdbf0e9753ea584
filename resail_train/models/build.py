"""Model construction from a training config: the one place that turns ``cfg.model`` into networks.

The trainer, synthesis, evaluation and the benchmarks build their networks here, so a run's
checkpoint (which stores its config, ``model.norm`` included) always rebuilds the variant it was
trained with — ``resail synthesize`` / ``edit`` / ``evaluate`` of a ``sean_plus`` run get a
``sean_plus`` generator without being told.

* :func:`build_generator` — the SPADE-backbone generator with the ``model.norm`` ResBlk
  normalisation (:mod:`resail_train.models.norms.registry`);
* :func:`build_discriminator` — the two-pathway SESAME multi-scale discriminator;
* :func:`build_segnet` / :func:`load_segnet` — the segmentation net of the segmentation loss and
  of the evaluation (``resail train-segnet`` files).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from pipeline.datasets.base import ClassMeta
from pipeline.errors import CacheError, ConfigError
from resail_train import checkpoint as ckpt
from resail_train.config import TrainConfig
from resail_train.models.discriminator import SesameMultiscaleDiscriminator
from resail_train.models.generator import RESAILGenerator

__all__ = ["build_generator", "build_discriminator", "build_segnet", "load_segnet", "SEGNET_MISSING"]

SEGNET_MISSING = ("segmentation net not found: run `resail train-segnet --cache CACHE --out RUN_DIR` first "
                  "(or set segnet.path, or loss.lambda_seg: 0 to train without the segmentation loss)")


def build_generator(cfg: TrainConfig, label_nc: int) -> RESAILGenerator:
    """``cfg.model`` (ngf, norm, norm_hidden, num_upsampling) + ``data.crop_size`` → the generator."""
    m = cfg.model
    return RESAILGenerator(label_nc, ngf=m.ngf, crop_size=tuple(cfg.data.crop_size), num_upsampling=m.num_upsampling,
                           norm=m.norm, norm_hidden=m.norm_hidden)


def build_discriminator(cfg: TrainConfig, label_nc: int) -> SesameMultiscaleDiscriminator:
    """``cfg.model`` (ndf, n_layers_D, num_D) → the discriminator."""
    m = cfg.model
    return SesameMultiscaleDiscriminator(label_nc, ndf=m.ndf, n_layers=m.n_layers_D, num_D=m.num_D)


def build_segnet(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """``cfg.segnet`` (base_width, spectral) → an untrained segmentation net."""
    from resail_train.models.segnet import SegNet

    return SegNet(num_classes, base_width=cfg.segnet.base_width, spectral=cfg.segnet.spectral)


def load_segnet(path: str | Path, meta: ClassMeta, device: torch.device) -> nn.Module:
    """The frozen segmentation net of ``resail train-segnet`` (eval mode, no grads), checked against ``meta``."""
    from resail_train.models.segnet import SegNet

    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, SEGNET_MISSING)
    obj = ckpt.load_checkpoint(path)
    try:
        state, c, width, spectral = obj["state_dict"], int(obj["num_classes"]), int(obj["base_width"]), bool(obj["spectral"])
        classes = obj.get("classes")
    except (KeyError, TypeError, ValueError):
        raise CacheError(path, "not a segmentation-net file of `resail train-segnet`") from None
    if c != meta.num_classes or (classes is not None and ClassMeta.from_dict(classes) != meta):
        raise CacheError(path, f"segmentation net was trained on another class list ({c} classes, dataset "
                               f"{(classes or {}).get('name')!r}); this cache has {meta.num_classes} ({meta.dataset})")
    net = SegNet(c, base_width=width, spectral=spectral)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise CacheError(path, f"segmentation net weights do not fit ({str(e).splitlines()[0]})") from None
    net.to(device).eval()
    net.requires_grad_(False)
    return net
