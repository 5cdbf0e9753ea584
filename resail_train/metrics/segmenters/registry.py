"""The segmentation networks that score generated images (paper Table 1), chosen by name.

``load_segmenter(name, weights, device="cpu")`` returns a :class:`Segmenter` whose
``predict(images, scales=None)`` takes uint8 RGB ``[N, H, W, 3]`` and returns int64 ``[N, H, W]`` in
the network's own class indices. Names:

* ``drn-d-105`` (:mod:`resail_train.metrics.segmenters.drn`): fyu/drn's ``DRNSeg('drn_d_105', 19)``, Cityscapes
  19 trainIds — the SPADE/OASIS/RESAIL Cityscapes protocol;
* ``upernet-r101`` (:mod:`resail_train.metrics.segmenters.upernet`): CSAILVision's ``ade20k-resnet101-upernet``
  (``encoder_epoch_50.pth,decoder_epoch_50.pth``), ADE20K 150 classes (ids 1..150 → 0..149);
* ``deeplabv2-r101`` (:mod:`resail_train.metrics.segmenters.deeplabv2`): kazuto1011's
  ``deeplabv2_resnet101_msc-cocostuff164k-100000.pth`` (``MSC(DeepLabV2)``), COCO-Stuff 182;
* ``own`` (:mod:`resail_train.metrics.segmenters.own`): the run's separate evaluation net
  ``RUN/eval_segnet.pt`` (``resail train-eval-segnet``), in the run's own class list. Its numbers are
  *not* comparable with the paper's.

Published checkpoints are loaded unchanged with ``load_state_dict(strict=True)`` (a ``module.``
prefix of ``nn.DataParallel`` and a ``{"state_dict": ...}`` wrapper are tolerated); any other file
is refused with one line naming it (:func:`load_state_strict`). Weights are read with
``torch.load(weights_only=True)``.

Every segmenter also maps a dataset label map to its indices: :meth:`Segmenter.label_lut` gives
``lut[raw_class_id]`` = network index, ``IGNORE`` (255) for void / classes the network does not
score.
"""
from __future__ import annotations

from typing import Callable

import torch

from pipeline.errors import ConfigError
from resail_train.metrics.segmenters import deeplabv2, drn, own, upernet
from resail_train.metrics.segmenters.base import Segmenter, split_weights

LOADERS: dict[str, Callable] = {"own": own.load, "drn-d-105": drn.load, "upernet-r101": upernet.load,
                                "deeplabv2-r101": deeplabv2.load}
NAMES = tuple(LOADERS)
#: the dataset each published segmenter scores (checked before its weights are read)
DATASETS = {"drn-d-105": "cityscapes", "upernet-r101": "ade20k", "deeplabv2-r101": "coco-stuff"}


def load_segmenter(name: str, weights, device: str | torch.device = "cpu", **kwargs) -> Segmenter:
    """The segmenter ``name`` (one of :data:`NAMES`) with its weights file(s); see the module docstring."""
    if name not in LOADERS:
        raise ConfigError(None, f"unknown segmenter {name!r} (choose {', '.join(NAMES)})")
    return LOADERS[name](split_weights(weights), device, **kwargs)


def check_dataset(seg: Segmenter | str, meta, source=None) -> None:
    """A published segmenter only scores its own dataset: refuse another class list with one line."""
    name = seg if isinstance(seg, str) else seg.name
    dataset = DATASETS.get(name, "") if isinstance(seg, str) else seg.dataset
    if dataset and meta.dataset != dataset:
        raise ConfigError(source, f"segmenter {name} scores {dataset}, but this run's classes are "
                                  f"{meta.dataset!r} (use --segmenter own)")
