"""Training the frozen segmentation net of the segmentation loss (paper appendix C, Fig. F).

The U-Net :class:`resail_train.models.segnet.SegNet` learns to segment **real** training images with the
class-balanced cross-entropy of :func:`resail_train.training.losses.balanced_cross_entropy` (OASIS
weights, ignored pixels excluded). Data: :class:`resail_train.training.data.CacheDataset` without
guidance or distortions, same resize/crop/flip as the generator's config (``data.*``); inputs are
padded (replicate; labels with the ignore index) to a multiple of 64 for the U-Net.

Optimiser: Adam ``segnet.lr``, betas (0.9, 0.999); ``segnet.epochs`` epochs of ``segnet.batch_size``
(the released code's nets were trained 80 epochs on Cityscapes/ADE20K, 40 on COCO-Stuff).

Logging (dvclive, ``RUN_DIR/segnet_logs``): ``train/loss``, ``train/miou`` and
``train/pixel_acc`` (running confusion matrix since the last evaluation) and ``val/miou``,
``val/pixel_acc`` on ``segnet.val_split`` (whole images, resized to ``data.load_size`` when set,
centre-cropped to ``data.crop_size``) every ``segnet.eval_every`` steps and at the end.

Output: ``RUN_DIR/segnet.pt`` written atomically (``torch.load(..., weights_only=True)``):
``{"format": 1, "kind": "resail-segnet", "state_dict", "num_classes", "base_width", "spectral",
"classes" (ClassMeta dict), "crop_size", "step", "train_miou", "val_miou", "val_pixel_acc", "seed", "role"}``.

``role="eval"`` (``resail train-eval-segnet``) trains a *second* net of the same kind for
evaluation only — the generator never saw its gradients — with its own seed (default
``cfg.seed + EVAL_SEED_OFFSET``): ``RUN_DIR/eval_segnet.pt`` (``"kind": "resail-eval-segnet"``),
``RUN_DIR/eval_segnet_logs/``, ``RUN_DIR/eval_segnet_summary.json``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.cache import write_json_atomic
from pipeline.errors import ConfigError
from resail_train import checkpoint as ckpt
from resail_train.config import TrainConfig
from resail_train.training.data import CacheDataset, EpochBatchSampler, collate, worker_init
from resail_train.training.losses import balanced_cross_entropy
from resail_train.metrics.segmentation import confusion_matrix, segmentation_scores
from resail_train.models.build import build_segnet
from resail_train.models.segnet import segment
from resail_train.run_files import (EVAL_SEGNET_FILE, EVAL_SEGNET_LOGS, EVAL_SEGNET_SUMMARY_FILE, SEGNET_FILE,  # noqa: F401
                                    SEGNET_LOGS, SEGNET_SUMMARY_FILE)
from resail_train.runtime import log, resolve_device

EVAL_SEED_OFFSET = 1000


@dataclass(frozen=True)
class SegnetRole:
    """Where a segmentation net of one role is written, and how its file is tagged."""
    file: str
    logs: str
    summary: str
    kind: str


ROLES = {"loss": SegnetRole(SEGNET_FILE, SEGNET_LOGS, SEGNET_SUMMARY_FILE, "resail-segnet"),
         "eval": SegnetRole(EVAL_SEGNET_FILE, EVAL_SEGNET_LOGS, EVAL_SEGNET_SUMMARY_FILE, "resail-eval-segnet")}


@dataclass
class SegnetResult:
    path: Path
    steps: int
    seconds: float
    train_loss: float
    train_miou: float
    train_pixel_acc: float
    val_miou: float | None
    val_pixel_acc: float | None


@torch.no_grad()
def evaluate(net: torch.nn.Module, dataset: CacheDataset, device: torch.device, batch_size: int) -> dict:
    """mIoU / pixel accuracy of ``net`` on every image of ``dataset`` (eval geometry)."""
    was_training = net.training
    net.eval()
    c = dataset.num_classes
    conf = np.zeros((c, c), dtype=np.int64)
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
        pred = segment(net, batch["image"].to(device)).argmax(1).cpu()
        conf += confusion_matrix(pred, batch["labels"], c, ignore_index=c)
    net.train(was_training)
    return segmentation_scores(conf)


def train_segnet(cache_dir: str | Path, run_dir: str | Path, cfg: TrainConfig, *, max_steps: int | None = None,
                 device: str = "auto", progress: bool = True, data_root: str | None = None,
                 threads: int | None = None, role: str = "loss", seed: int | None = None) -> SegnetResult:
    """Train the segmentation net on the real images of ``cfg.data.split``; write ``RUN_DIR/segnet.pt``
    (``role="loss"``) or ``RUN_DIR/eval_segnet.pt`` (``role="eval"``, seed ``cfg.seed + 1000`` by default)."""
    run_dir = Path(run_dir)
    if role not in ROLES:
        raise ValueError(f"role must be one of {sorted(ROLES)}, got {role!r}")
    files = ROLES[role]
    if seed is None:
        seed = cfg.seed + (EVAL_SEED_OFFSET if role == "eval" else 0)
    seed = int(seed)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(None, "train-segnet runs in one process: start it without torchrun")
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(int(threads))
    d, s = cfg.data, cfg.segnet
    train_ds = CacheDataset(cache_dir, d.split, load_size=d.load_size, crop_size=d.crop_size, train=True, flip=d.flip,
                            guidance=None, distortions=False, seed=seed, data_root=data_root,
                            allow_resize=d.allow_resize)
    val_ds = None
    if s.val_split:
        try:
            val_ds = CacheDataset(cache_dir, s.val_split, load_size=d.load_size, crop_size=d.crop_size, train=False,
                                  flip=False, guidance=None, distortions=False, seed=seed, data_root=data_root,
                                  allow_resize=d.allow_resize)
        except Exception as e:  # noqa: BLE001 - a missing val split only disables validation
            from pipeline.errors import ResailError

            if not isinstance(e, ResailError):
                raise
            log(f"train-segnet: no validation ({e})")
    c = train_ds.num_classes
    sampler = EpochBatchSampler(len(train_ds), s.batch_size, seed=seed + 1)
    if sampler.batches_per_epoch < 1:
        raise ConfigError(cfg.source, f"split '{d.split}' has {len(train_ds)} images: fewer than one batch of "
                                      f"{s.batch_size} (lower segnet.batch_size)")
    total = s.epochs * sampler.batches_per_epoch
    stop = total if max_steps is None else min(total, int(max_steps))
    nw = d.num_workers
    loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, num_workers=nw, collate_fn=collate,
                                         pin_memory=dev.type == "cuda", worker_init_fn=worker_init if nw else None,
                                         persistent_workers=nw > 0)
    torch.manual_seed(seed)
    net = build_segnet(cfg, c).to(dev).train()
    opt = torch.optim.Adam(net.parameters(), lr=s.lr, betas=(0.9, 0.999))
    log(f"train-segnet ({role}, seed {seed}): {len(train_ds)} images of '{d.split}', {c} classes, width {s.base_width}, "
        f"batch {s.batch_size}, {stop} steps on {dev}")

    from dvclive import Live

    run_dir.mkdir(parents=True, exist_ok=True)
    live = Live(dir=str(run_dir / files.logs), save_dvc_exp=False, dvcyaml=False)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=stop, desc="train-segnet", unit="step", dynamic_ncols=True)
    conf = np.zeros((c, c), dtype=np.int64)
    loss_sum, loss_n = 0.0, 0
    train_scores = {"miou": float("nan"), "pixel_acc": float("nan")}
    val_scores = None
    step, epoch = 0, 0
    t0 = time.perf_counter()
    last_loss = float("nan")

    def log_eval() -> None:
        nonlocal conf, loss_sum, loss_n, train_scores, val_scores, last_loss
        train_scores = segmentation_scores(conf)
        last_loss = loss_sum / max(1, loss_n)
        live.step = step
        live.log_metric("train/loss", last_loss)
        live.log_metric("train/miou", train_scores["miou"])
        live.log_metric("train/pixel_acc", train_scores["pixel_acc"])
        if val_ds is not None:
            val_scores = evaluate(net, val_ds, dev, s.batch_size)
            live.log_metric("val/miou", val_scores["miou"])
            live.log_metric("val/pixel_acc", val_scores["pixel_acc"])
        live.make_summary()
        if bar is not None:
            bar.set_postfix(loss=f"{last_loss:.3f}", miou=f"{train_scores['miou']:.3f}",
                            **({"val_miou": f"{val_scores['miou']:.3f}"} if val_scores else {}))
        conf = np.zeros((c, c), dtype=np.int64)
        loss_sum, loss_n = 0.0, 0

    while step < stop:
        sampler.set_position(epoch, 0)
        for batch in loader:
            images = batch["image"].to(dev, non_blocking=True)
            labels = batch["labels"].to(dev, non_blocking=True)
            logits = segment(net, images)
            loss = balanced_cross_entropy(logits, labels, ignore_index=c)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach())
            loss_n += 1
            conf += confusion_matrix(logits.detach().argmax(1).cpu(), labels.cpu(), c, ignore_index=c)
            if bar is not None:
                bar.update(1)
            if step % s.eval_every == 0 or step >= stop:
                log_eval()
            if step >= stop:
                break
        epoch += 1
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    net.eval()
    out = {"format": 1, "kind": files.kind, "seed": seed, "role": role, "state_dict": net.state_dict(), "num_classes": c,
           "base_width": s.base_width, "spectral": s.spectral, "classes": train_ds.meta.to_dict(),
           "crop_size": list(d.crop_size), "step": step, "train_miou": float(train_scores["miou"]),
           "val_miou": None if val_scores is None else float(val_scores["miou"]),
           "val_pixel_acc": None if val_scores is None else float(val_scores["pixel_acc"])}
    path = ckpt.save_atomic(out, run_dir / files.file)
    live.end()
    result = SegnetResult(path, step, seconds, last_loss, float(train_scores["miou"]),
                          float(train_scores["pixel_acc"]),
                          None if val_scores is None else float(val_scores["miou"]),
                          None if val_scores is None else float(val_scores["pixel_acc"]))
    write_json_atomic(run_dir / files.summary, {k: (str(v) if isinstance(v, Path) else v)
                                                         for k, v in result.__dict__.items()})
    train_ds.close()
    if val_ds is not None:
        val_ds.close()
    return result
