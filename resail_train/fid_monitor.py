"""Validation FID during training and the best-by-FID checkpoint (``log.fid_every``; issue 11).

The released RESAIL code validates FID while training and reports ``--which_epoch best``. With
``log.fid_every = N > 0`` the trainer calls :meth:`FIDMonitor.step` every N steps (rank 0): the
generator (its EMA copy when ``optim.ema_decay > 0``, in eval mode, fixed noise seed) renders the first
``log.fid_images`` images of ``log.fid_split`` from their rank-0 retrieval guidance (``guidance.h5``)
at the training size; FID against the same real images (features computed once) with the bundled
Inception (``auto``, :func:`resail_train.metrics.fid.resolve_fid_inception`) is logged to dvclive as
``val/fid``, and when it is the lowest so far the generator is written to
``RUN/checkpoints/best.pt`` — a generator file like ``generator.pt`` plus ``"fid"`` and
``"fid_images"`` — which ``--checkpoint best`` selects. A resumed run keeps the best FID of
``best.pt``. The subset is fixed so values are comparable across steps; with few images FID is
biased upwards (absolute values are not those of ``resail evaluate`` on the full split).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from resail_train import checkpoint as ckpt
from resail_train.data import CacheDataset, tensor_to_rgb
from resail_train.metrics.fid import AUTO, inception_features, resolve_fid_inception

BATCH = 8


class FIDMonitor:
    def __init__(self, trainer, weights: str = AUTO) -> None:
        from resail_train.trainer import onehot

        cfg = trainer.cfg
        self.device = trainer.device
        self.inception = resolve_fid_inception(weights)
        if self.inception is None:
            raise ValueError("log.fid_every needs Inception weights")
        size = cfg.data.crop_size
        ds = CacheDataset(trainer.cache_dir, cfg.log.fid_split, load_size=size, crop_size=size, train=False,
                          flip=False, guidance="rank0", distortions=False, instance_edges=trainer.dataset.instance_edges,
                          seed=cfg.seed, data_root=trainer.opts.data_root,
                          allow_resize=True)  # resized to the training size on purpose
        try:
            items = [ds[i] for i in range(min(int(cfg.log.fid_images), len(ds)))]
        finally:
            ds.close()
        self.n = len(items)
        seg = onehot(torch.stack([it["labels"] for it in items]), trainer.num_classes)
        if items and "edges" in items[0]:
            seg = torch.cat([seg, torch.stack([it["edges"] for it in items])], dim=1)
        self.seg, self.guidance = seg, torch.stack([it["guidance"] for it in items])
        real = np.stack([tensor_to_rgb(it["image"]) for it in items])
        self.real_features = inception_features(self.inception, real, batch_size=BATCH, device=self.device)
        self.best_path = trainer.run_dir / ckpt.CHECKPOINT_DIR / ckpt.BEST
        self.best = math.inf
        if self.best_path.is_file():  # a resumed run: beat the best so far, not infinity
            try:
                old = ckpt.load_checkpoint(self.best_path)
                self.best = float(old.get("fid", math.inf))
            except Exception:  # noqa: BLE001 - an unreadable best.pt is simply replaced
                pass

    @torch.no_grad()
    def fid(self, generator: torch.nn.Module) -> float:
        """FID of ``generator`` on the fixed subset (the module's train/eval mode is restored)."""
        from resail_train.evaluation import frechet_distance_features

        was_training = generator.training
        generator.eval()
        fakes = []
        try:
            torch.manual_seed(0)
            for s in range(0, self.n, BATCH):
                out = generator(self.seg[s:s + BATCH].to(self.device), self.guidance[s:s + BATCH].to(self.device))
                fakes += [tensor_to_rgb(f) for f in out.float().cpu()]
        finally:
            generator.train(was_training)
        feats = inception_features(self.inception, np.stack(fakes), batch_size=BATCH, device=self.device)
        return frechet_distance_features(feats, self.real_features)

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
