"""``own``: the run's separate evaluation segmentation net (``RUN/eval_segnet.pt``), never the loss net.

``resail train-eval-segnet`` trains it on the real training images with its own seed
(:mod:`resail_train.training.segnet_trainer`, ``role="eval"``); the generator never received gradients from
it. It predicts the run's dense class indices (0..C−1, the order of the class list), so labels map
through the class list's lookup table. Its numbers measure the same thing as Table 1's published
segmenters but are **not comparable** with the paper's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.datasets.base import ClassMeta
from pipeline.errors import CacheError, ConfigError
from resail_train import checkpoint as ckpt
from resail_train.metrics.segmenters.base import IGNORE, Segmenter
from resail_train.models.build import load_segnet
from resail_train.models.segnet import segment


class OwnSegmenter(Segmenter):
    name = "own"
    dataset = ""  # the run's own class list
    default_scales = (1.0,)

    def __init__(self, model, device, weights, num_classes: int, meta=None) -> None:
        super().__init__(model, device, weights)
        self.num_classes = int(num_classes)
        self.meta = meta

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x / 127.5 - 1.0  # the loader's [-1, 1] (resail_train.training.data.rgb_to_tensor)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return segment(self.model, x)

    def label_lut(self, meta) -> np.ndarray:
        lut = np.asarray(meta.lookup_table(), np.int64).copy()
        lut[(lut < 0) | (lut >= self.num_classes)] = IGNORE
        return lut


def load(weights: list[str], device="cpu", meta=None) -> OwnSegmenter:
    """``eval_segnet.pt`` of ``resail train-eval-segnet`` (checked against ``meta`` when given)."""
    if len(weights) != 1:
        raise ConfigError(None, "--segmenter own takes one file (default RUN/eval_segnet.pt)")
    path = Path(weights[0])
    if not path.is_file():
        raise ConfigError(path, "evaluation segmentation net not found (train it with `resail train-eval-segnet`, "
                                "or pass --segmenter drn-d-105|upernet-r101|deeplabv2-r101 --segmenter-weights ...)")
    obj = ckpt.load_checkpoint(path)
    if obj.get("kind") != "resail-eval-segnet":
        raise CacheError(path, f"not an evaluation segmentation net of `resail train-eval-segnet` (kind "
                               f"{obj.get('kind')!r}; the loss net segnet.pt is never used for evaluation)")
    if meta is None:
        meta = ClassMeta.from_dict(obj["classes"])
    net = load_segnet(path, meta, torch.device(device))
    return OwnSegmenter(net, device, weights, int(obj["num_classes"]), meta)
