"""Validation FID during training and the best-by-FID checkpoint (``log.fid_every``).

The released RESAIL code validates FID while training and reports ``--which_epoch best``: every
``--save_latest_freq`` training images its ``train.py`` signals a separate FID process, which renders
the whole validation split with the latest weights and copies them to ``best_net_G.pth`` when the
FID is the lowest so far (docs/evaluation.md, "Which checkpoint"). With ``log.fid_every = N > 0``
the trainer calls :meth:`FIDMonitor.step` every N steps (rank 0): the generator (its EMA copy when
``optim.ema_decay > 0``, in eval mode, fixed noise seed) renders the first ``log.fid_images`` images
of ``log.fid_split`` (``null`` = every image of the split, as the released code and the paper
configs do) from their rank-0 retrieval guidance (``guidance.h5``) at the training size; FID against
the same real images (features computed once) with the bundled Inception (``auto``,
:func:`resail_train.metrics.fid.resolve_fid_inception`) is logged to dvclive as ``val/fid``, and when
it is the lowest so far the generator is written to ``RUN/checkpoints/best.pt`` — a generator file
like ``generator.pt`` plus ``"fid"``, ``"fid_images"`` and ``"fid_split"`` — which ``--checkpoint
best`` selects. A resumed run keeps the best FID of ``best.pt``. The subset is fixed so values are
comparable across steps; with few images FID is biased upwards (absolute values are then not those
of ``resail evaluate`` on the full split).

Images are streamed in batches of :data:`BATCH` (label maps, guidance and real images are read again
at every measurement; only the real images' Inception features are kept), so a whole validation
split (5000 COCO-Stuff images) costs the memory of one batch.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from resail_train import checkpoint as ckpt
from resail_train.training.data import CacheDataset, collate, tensor_to_rgb, worker_init
from resail_train.metrics.fid import (AUTO, FEATURE_DIM, frechet_distance_features, inception_features,
                                      resolve_fid_inception)
from resail_train.runtime import onehot

BATCH = 8


class FIDMonitor:
    def __init__(self, trainer, weights: str = AUTO) -> None:
        cfg = trainer.cfg
        self.device = trainer.device
        self.inception = resolve_fid_inception(weights)
        if self.inception is None:
            raise ValueError("log.fid_every needs Inception weights")
        self.cache_dir, self.split, self.seed = trainer.cache_dir, cfg.log.fid_split, cfg.seed
        self.size = cfg.data.crop_size
        self.instance_edges = trainer.dataset.instance_edges
        self.data_root = trainer.opts.data_root
        self.num_classes = trainer.num_classes
        self.workers = int(getattr(cfg.data, "num_workers", 0) or 0)
        limit = getattr(cfg.log, "fid_images", None)
        ds = self._dataset()
        try:
            self.n = len(ds) if limit is None else min(int(limit), len(ds))
            feats = [inception_features(self.inception, np.stack([tensor_to_rgb(x) for x in b["image"]]),
                                        batch_size=BATCH, device=self.device) for b in self._batches(ds)]
        finally:
            ds.close()
        self.real_features = np.concatenate(feats) if feats else np.empty((0, FEATURE_DIM))
        self.best_path = trainer.run_dir / ckpt.CHECKPOINT_DIR / ckpt.BEST
        self.best = math.inf
        if self.best_path.is_file():  # a resumed run: beat the best so far, not infinity
            try:
                old = ckpt.load_checkpoint(self.best_path)
                # only a value measured on the same images is a bar to beat (a resume may change log.*)
                if old.get("fid_images", self.n) == self.n and old.get("fid_split", self.split) == self.split:
                    self.best = float(old.get("fid", math.inf))
            except Exception:  # noqa: BLE001 - an unreadable best.pt is simply replaced
                pass

    def _dataset(self) -> CacheDataset:
        return CacheDataset(self.cache_dir, self.split, load_size=self.size, crop_size=self.size, train=False,
                            flip=False, guidance="rank0", distortions=False, instance_edges=self.instance_edges,
                            seed=self.seed, data_root=self.data_root,
                            allow_resize=True)  # resized to the training size on purpose

    def _batches(self, ds: CacheDataset):
        """The first ``self.n`` items in order, in batches of BATCH; the loader has its own generator,
        so reading the data draws nothing from the global torch RNG (the generator's noise stays fixed)."""
        workers = min(self.workers, max(0, math.ceil(self.n / BATCH) - 1))
        return DataLoader(Subset(ds, range(self.n)), batch_size=BATCH, shuffle=False, num_workers=workers,
                          collate_fn=collate, worker_init_fn=worker_init if workers else None,
                          generator=torch.Generator())

    @torch.no_grad()
    def fid(self, generator: torch.nn.Module) -> float:
        """FID of ``generator`` on the fixed subset (the module's train/eval mode is restored)."""

        was_training = generator.training
        generator.eval()
        feats = []
        ds = self._dataset()
        try:
            torch.manual_seed(0)
            for b in self._batches(ds):
                seg = onehot(b["labels"], self.num_classes)
                if "edges" in b:
                    seg = torch.cat([seg, b["edges"]], dim=1)
                out = generator(seg.to(self.device), b["guidance"].to(self.device))
                fakes = np.stack([tensor_to_rgb(f) for f in out.float().cpu()])
                feats.append(inception_features(self.inception, fakes, batch_size=BATCH, device=self.device))
        finally:
            ds.close()
            generator.train(was_training)
        return frechet_distance_features(np.concatenate(feats), self.real_features)

    def step(self, trainer, live) -> float | None:
        """Measure, log ``val/fid`` and keep ``best.pt``; None when the subset has fewer than 2 images."""
        if self.n < 2:
            return None
        g = trainer.G_ema if trainer.G_ema is not None else trainer.G
        value = self.fid(g)
        if live is not None:
            live.step = trainer.step
            live.log_metric("val/fid", value)
        if math.isfinite(value) and value < self.best:
            self.best = value
            self._write_best(trainer, g, value)
        return value

    def _write_best(self, trainer, g: torch.nn.Module, value: float) -> Path:
        # the generator-file format of Trainer._write_generator, so read_generator() loads it as is
        obj = {"format": 1, "kind": "resail-generator", "ema": trainer.G_ema is not None, "step": trainer.step,
               "config": trainer.cfg.to_dict(), "label_nc": trainer.label_nc, "num_classes": trainer.num_classes,
               "instance_edges": trainer.dataset.instance_edges, "classes": trainer.meta.to_dict(),
               "cache_dir": str(trainer.cache_dir), "state_dict": g.state_dict(), "fid": float(value),
               "fid_images": self.n, "fid_split": trainer.cfg.log.fid_split}
        return ckpt.save_atomic(obj, self.best_path)
