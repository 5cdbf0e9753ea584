"""The RESAIL training loop (paper §3.4, appendix B; docs/method.md §6) in plain PyTorch.

One iteration = one generator step then one discriminator step (SPADE order):

* **G step** — the generator runs once per pass of ``data.guidance_mode``
  (:mod:`resail_train.guidance_modes`, paper Table 4; default: twice on the same label map). The
  *paired* pass (distorted or original ground truth as guidance) gets hinge GAN + feature matching
  λ_fm + VGG λ_vgg against the real image + class-balanced segmentation CE ×λ_seg of the frozen
  segmentation net; a *retrieval* pass (retrieval guidance, or its distorted version) gets hinge GAN
  + segmentation CE. The discriminator (parameters frozen for this step) sees every fake and the real
  image in one concatenated batch (InstanceNorm is per sample, so this equals separate calls);
  feature matching uses the real image's features.
* **D step** — every fake is generated again with the updated G under ``no_grad`` (SPADE / the
  released code) and D minimises ``Σ_fakes [hinge_real + hinge_fake]`` — the real term once per
  fake, as the released code sums ``D_real`` and ``D_real_retrieval``.

All G passes go through one module call (:class:`GeneratorPasses`), so DDP sees one forward per
backward. Learning rates decay linearly to 0 over the last ``optim.decay_epochs`` epochs
(per iteration); Adam betas ``(optim.beta1, optim.beta2)``.

Exact resume: the data order and every random choice of a sample are functions of
``(seed, epoch, index)`` (:mod:`resail_train.training.data`), the sampler's position is saved, and the
models, optimisers, schedulers, AMP scalers, EMA and RNG states go into the checkpoint. On CPU with
``deterministic: true`` (``torch.use_deterministic_algorithms``) N steps straight and N/2 + resume +
N/2 give bit-identical weights.

DDP: started by ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``), ``init_process_group``
with NCCL on CUDA and gloo on CPU; BatchNorm → SyncBatchNorm on CUDA (PyTorch's SyncBatchNorm has
no CPU kernel, so CPU/gloo runs keep per-process BatchNorm); :class:`EpochBatchSampler` shards the
data like ``DistributedSampler``; ``optim.batch_size`` is the global batch. Only rank 0 writes
checkpoints, logs and samples. On resume every rank restores rank 0's RNG state.

Run folder (``RUN_DIR``): ``config.yaml`` (the resolved config), ``checkpoints/latest.pt`` and
``checkpoints/step_XXXXXXX.pt``, ``generator.pt`` (final generator weights — EMA when used — with
what is needed to rebuild it: ``config``, ``label_nc``, ``num_classes``, ``instance_edges``,
``classes``, ``cache_dir``, ``step``, ``ema``), ``samples/step_XXXXXXX.png`` (rows: label colours | retrieval
guidance | distorted GT | fake from retrieval guidance | fake from distorted GT | real in the default
mode; in general the guidance of each pass, retrieval passes first, then their fakes, then real),
``logs/`` (dvclive: ``metrics.json``, ``plots/metrics/{train,lr,perf}/*.tsv``), ``train_summary.json``.

One training per run folder: rank 0 holds the folder's advisory lock (``RUN/.train.lock``,
:func:`pipeline.cache.atomic.stage_lock`) from before it touches the folder until it is done, so a
second ``resail train`` into the same folder refuses in one line (:class:`BusyError`) instead of
mixing its config and weights with the first one's. Options are checked before that
(:meth:`TrainOptions.validate`: a step count < 1 never reaches the folder). A resume compares the
checkpoint's config with the new one and refuses any difference that changes what is trained
(:func:`config_differences`) unless ``TrainOptions.allow_config_change`` is set.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from pipeline.cache import write_json_atomic
from pipeline.cache.atomic import stage_lock, write_text_atomic
from pipeline.datasets.base import ClassMeta
from pipeline.errors import BusyError, CacheError, ConfigError
from resail_train import checkpoint as ckpt
from resail_train.config import VGG_HELP, TrainConfig, config_fingerprint, config_from_dict, flatten
from resail_train.training.data import CacheDataset, EpochBatchSampler, collate, tensor_to_rgb, worker_init
from resail_train.guidance_modes import passes_for
from resail_train.models.build import SEGNET_MISSING, build_discriminator, build_generator, load_segnet
from resail_train.models.segnet import segment
from resail_train.training.losses import (VGGLoss, balanced_cross_entropy, feature_matching_loss, hinge_d_loss_fake,
                                 hinge_d_loss_real, hinge_g_loss)

from resail_train.run_files import (CONFIG_FILE, GENERATOR_FILE, LOGS_DIR, PREVIOUS_DIR, SAMPLES_DIR, SEGNET_FILE,
                                    TRAIN_SUMMARY_FILE)
from resail_train.runtime import DistEnv, log, onehot, resolve_device


# --------------------------------------------------------------------------- small helpers
def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def split_preds(preds: list[list[torch.Tensor]], n: int) -> list[list[list[torch.Tensor]]]:
    """Discriminator output of a batch of ``n`` equal chunks → ``n`` outputs of one chunk each."""
    return [[[t.chunk(n, dim=0)[i] for t in scale] for scale in preds] for i in range(n)]


def linear_decay(total_steps: int, decay_steps: int) -> Callable[[int], float]:
    """LR factor: 1 until ``total − decay``, then linear to 0 at ``total`` (per iteration)."""
    start = total_steps - decay_steps

    def factor(step: int) -> float:
        if decay_steps <= 0 or step < start:
            return 1.0
        return max(0.0, (total_steps - step) / decay_steps)
    return factor


class GeneratorPasses(nn.Module):
    """Runs the generator once per guidance image (one module call for DDP)."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, seg: torch.Tensor, guidances: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.generator(seg, g) for g in guidances]


def resolve_vgg(cfg: TrainConfig, vgg_weights: str | None) -> str | None:
    """The VGG19 weights path to use, or ``None`` (loss off); refuses when the config requires VGG."""
    if cfg.loss.lambda_vgg <= 0:
        return None
    path = vgg_weights or cfg.vgg_weights
    if path:
        if not Path(path).is_file():
            raise ConfigError(path, f"VGG19 weights not found; {VGG_HELP}")
        return str(path)
    if cfg.loss.vgg_required:
        raise ConfigError(cfg.source, f"config '{cfg.name}' needs VGG19 weights and none were given: {VGG_HELP}")
    return None


# --------------------------------------------------------------------------- resume: config changes
TRAIN_LOCK = "train"  # RUN/.train.lock: the run folder's lock (pipeline.cache.atomic.lock_path of RUN/train)

# Config keys a resume may change freely: they do not change what is trained (the config's name,
# DataLoader worker processes, and how often scalars/samples/checkpoints/FID are written).
RESUME_FREE_KEYS = ("name", "data.num_workers", "log")


def config_differences(old: dict, new: dict, free: tuple[str, ...] = RESUME_FREE_KEYS) -> list[tuple[str, Any, Any]]:
    """``[(dotted key, old value, new value)]`` of two config dicts, sorted by key, skipping the
    keys in (or under) ``free``. A key missing on one side has the value ``"(absent)"``."""
    a, b = flatten(old), flatten(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if any(k == f or k.startswith(f + ".") for f in free):
            continue
        va, vb = a.get(k, "(absent)"), b.get(k, "(absent)")
        if va != vb:
            out.append((k, va, vb))
    return out


def _show(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_differences(diffs: list[tuple[str, Any, Any]]) -> str:
    """``seed: 0 → 7; optim.lr_G: 0.0004 → 0.001`` (one line)."""
    return "; ".join(f"{k}: {_show(a)} → {_show(b)}" for k, a, b in diffs)


# --------------------------------------------------------------------------- options/results
@dataclass
class TrainOptions:
    max_steps: int | None = None  # stop after this many steps in total (does not change the schedule)
    resume: bool = False
    amp: bool = False
    compile: bool = False
    device: str = "auto"
    vgg_weights: str | None = None
    progress: bool = True
    data_root: str | None = None
    threads: int | None = None
    # resume with a config that differs from the checkpoint's (the differences are logged); without
    # it such a resume is refused, naming every differing key (the model and crop size never change)
    allow_config_change: bool = False
    # data.distortion: online — the pipeline.distort.build.DistortParams to draw with (`resail train`
    # passes params.yaml's distort section when the cache has no distortions.h5); None: those
    # distortions.h5 records, else the defaults
    distort_params: Any = None

    def validate(self) -> None:
        """ConfigError for option values no run can use; called before the run folder is touched."""
        for name, v in (("max_steps", self.max_steps), ("threads", self.threads)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise ConfigError(None, f"{name} (--{name.replace('_', '-')}) must be a whole number >= 1, "
                                        f"got {v!r}")


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    total_steps: int
    epoch: int
    seconds: float
    data_wait_fraction: float
    step_time_s: float
    last_losses: dict = field(default_factory=dict)
    checkpoint: Path | None = None


# --------------------------------------------------------------------------- the trainer
class Trainer:
    def __init__(self, cache_dir: str | Path, run_dir: str | Path, cfg: TrainConfig, opts: TrainOptions = TrainOptions()):
        self.cache_dir, self.run_dir, self.cfg, self.opts = Path(cache_dir), Path(run_dir), cfg, opts
        self._det_prev: tuple[bool, bool] | None = None

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg, opts = self.cfg, self.opts
        kind = "cuda" if (opts.device in (None, "auto") and torch.cuda.is_available()) or opts.device == "cuda" else "cpu"
        if opts.device not in (None, "auto", "cpu", "cuda"):
            raise ConfigError(None, f"unknown device {opts.device!r} (auto, cpu or cuda)")
        # Checks that need no data first: refuse early and cheaply.
        self.vgg_path = resolve_vgg(cfg, opts.vgg_weights)
        self.segnet_path = Path(cfg.segnet.path) if cfg.segnet.path else self.run_dir / SEGNET_FILE
        if cfg.loss.lambda_seg > 0 and not self.segnet_path.is_file():
            raise ConfigError(self.segnet_path, SEGNET_MISSING)
        self.dist = DistEnv.from_env(kind)
        self.device = resolve_device(kind, self.dist.local_rank)
        if opts.threads:
            torch.set_num_threads(int(opts.threads))
        self._det_prev = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.amp = bool(opts.amp) and self.device.type == "cuda"
        if opts.amp and not self.amp:
            log("train: --amp ignored on CPU (autocast is for CUDA here)")
        self.amp_dtype = torch.bfloat16 if cfg.optim.amp_dtype == "bf16" else torch.float16

        ws = self.dist.world_size
        if cfg.optim.batch_size % ws:
            raise ConfigError(cfg.source, f"optim.batch_size {cfg.optim.batch_size} is not divisible by the "
                                          f"{ws} processes")
        self.batch_per_rank = cfg.optim.batch_size // ws
        d = cfg.data
        self.passes = passes_for(d.guidance_mode)  # Table 4: which guidance feeds which pass, which losses
        src = {p.source for p in self.passes}
        self.dataset = CacheDataset(self.cache_dir, d.split, load_size=d.load_size, crop_size=d.crop_size, train=True,
                                    flip=d.flip,
                                    guidance=d.guidance_sampling if src - {"distorted-gt"} else None,
                                    distortions="distorted-gt" in src, original_gt="original-gt" in src,
                                    distorted_retrieval="distorted-retrieval" in src,
                                    instance_edges=d.instance_edges, topk=d.topk, seed=cfg.seed,
                                    data_root=opts.data_root, allow_resize=d.allow_resize,
                                    distortion=d.distortion, distort_params=opts.distort_params)
        if d.instance_edges and not self.dataset.instance_edges:
            log("train: data.instance_edges is on but the dataset has no instance maps; no edge channel")
        self.meta = self.dataset.meta
        self.num_classes = self.dataset.num_classes
        self.label_nc = self.dataset.label_nc
        self.sampler = EpochBatchSampler(len(self.dataset), self.batch_per_rank, seed=cfg.seed, shuffle=True,
                                         rank=self.dist.rank, world_size=ws)
        self.steps_per_epoch = self.sampler.batches_per_epoch
        if self.steps_per_epoch < 1:
            raise ConfigError(cfg.source, f"split '{d.split}' has {len(self.dataset)} images: fewer than one batch of "
                                          f"{cfg.optim.batch_size} (lower optim.batch_size)")
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        nw = d.num_workers
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, num_workers=nw, collate_fn=collate,
            pin_memory=self.device.type == "cuda", worker_init_fn=worker_init if nw else None,
            persistent_workers=nw > 0, prefetch_factor=4 if nw else None)

        # Models: identical init on every rank (DDP also broadcasts from rank 0).
        torch.manual_seed(cfg.seed)
        self.G = build_generator(cfg, self.label_nc).to(self.device)
        self.D = build_discriminator(cfg, self.label_nc).to(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.G = nn.SyncBatchNorm.convert_sync_batchnorm(self.G)
        self.G_ema = None
        if cfg.optim.ema_decay > 0:
            self.G_ema = copy.deepcopy(self.G).eval()
            set_requires_grad(self.G_ema, False)
        betas = (float(cfg.optim.beta1), float(cfg.optim.beta2))
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=cfg.optim.lr_G, betas=betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.optim.lr_D, betas=betas)
        decay = cfg.optim.decay_epochs * self.steps_per_epoch
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, linear_decay(self.total_steps, decay))
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, linear_decay(self.total_steps, decay))
        fp16 = self.amp and self.amp_dtype == torch.float16
        self.scaler_G = torch.amp.GradScaler("cuda", enabled=fp16)
        self.scaler_D = torch.amp.GradScaler("cuda", enabled=fp16)

        passes = GeneratorPasses(self.G)
        disc = self.D
        if self.opts.compile:
            passes = torch.compile(passes)
            disc = torch.compile(disc)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            passes = nn.parallel.DistributedDataParallel(passes, device_ids=ids)
            disc = nn.parallel.DistributedDataParallel(disc, device_ids=ids)
        self.G_passes, self.D_train = passes, disc
        self.D_frozen = torch.compile(self.D) if self.opts.compile else self.D  # G step: no DDP, no D grads

        self.segnet = load_segnet(self.segnet_path, self.meta, self.device) if cfg.loss.lambda_seg > 0 else None
        self.vgg_loss = None
        if self.vgg_path:
            from resail_train.models.vgg import load_vgg19

            self.vgg_loss = VGGLoss(load_vgg19(self.vgg_path, normalize_input=cfg.loss.vgg_input == "imagenet"))
            self.vgg_loss = self.vgg_loss.to(self.device)

        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self._resumed_from: Path | None = None

    def _autocast(self):
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        st = {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "total_steps": self.total_steps, "config": self.cfg.to_dict(), "label_nc": self.label_nc,
            "classes": self.meta.to_dict(), "world_size": self.dist.world_size,
            "models": {"G": self.G.state_dict(), "D": self.D.state_dict()},
            "optimizers": {"G": self.opt_G.state_dict(), "D": self.opt_D.state_dict()},
            "schedulers": {"G": self.sched_G.state_dict(), "D": self.sched_D.state_dict()},
            "scalers": {"G": self.scaler_G.state_dict(), "D": self.scaler_D.state_dict()},
            "sampler": {"epoch": self.epoch, "start_batch": self.batch_in_epoch, "seed": self.sampler.seed,
                        "n": self.sampler.n, "batch_size": self.sampler.batch_size},
            "rng": ckpt.capture_rng_state(),
        }
        if self.G_ema is not None:
            st["models"]["G_ema"] = self.G_ema.state_dict()
        return st

    def load_state_dict(self, st: dict, path: Path) -> None:
        mine = self.cfg.to_dict()
        theirs = st.get("config") or {}
        if config_fingerprint(theirs, ("model",)) != config_fingerprint(mine, ("model",)) or \
                theirs.get("data", {}).get("crop_size") != mine["data"]["crop_size"]:
            raise ConfigError(path, "checkpoint was trained with another model config (model section / crop size "
                                    "differ); resume with the same config or start a new run")
        if int(st.get("label_nc", -1)) != self.label_nc or ClassMeta.from_dict(st["classes"]) != self.meta:
            raise ConfigError(path, "checkpoint was trained on another class list / label channels")
        try:  # an older checkpoint's config, completed with today's defaults, compares key by key
            theirs = config_from_dict(theirs, str(path)).to_dict()
        except ConfigError:
            pass
        diffs = config_differences(theirs, mine)
        if diffs and not self.opts.allow_config_change:
            raise ConfigError(path, f"checkpoint was trained with another config: {describe_differences(diffs)}; "
                                    "resume with the same config, or allow the change (--allow-config-change)")
        if diffs:
            log(f"train: resuming with a changed config (allowed): {describe_differences(diffs)}")
        if int(st.get("world_size", 1)) != self.dist.world_size:
            log(f"train: checkpoint was written with {st.get('world_size')} processes, resuming with "
                f"{self.dist.world_size}: the data order differs from an uninterrupted run")
        if (st["sampler"]["n"], st["sampler"]["batch_size"]) != (self.sampler.n, self.sampler.batch_size):
            log("train: dataset size or batch size changed since the checkpoint; the data order differs")
        try:
            self.G.load_state_dict(st["models"]["G"])
            self.D.load_state_dict(st["models"]["D"])
            if self.G_ema is not None:
                self.G_ema.load_state_dict(st["models"].get("G_ema", st["models"]["G"]))
            self.opt_G.load_state_dict(st["optimizers"]["G"])
            self.opt_D.load_state_dict(st["optimizers"]["D"])
            self.sched_G.load_state_dict(st["schedulers"]["G"])
            self.sched_D.load_state_dict(st["schedulers"]["D"])
            if self.scaler_G.is_enabled() and st.get("scalers"):
                self.scaler_G.load_state_dict(st["scalers"]["G"])
                self.scaler_D.load_state_dict(st["scalers"]["D"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CacheError(path, f"checkpoint does not fit this run ({str(e).splitlines()[0]})") from None
        self.step, self.epoch, self.batch_in_epoch = int(st["step"]), int(st["epoch"]), int(st["batch_in_epoch"])
        ckpt.restore_rng_state(st["rng"])

    # ---------------------------------------------------------------- one iteration
    def _inputs(self, batch: dict) -> dict:
        dev = self.device
        nb = dev.type == "cuda"
        labels = batch["labels"].to(dev, non_blocking=nb)
        seg = onehot(labels, self.num_classes)
        if "edges" in batch:
            seg = torch.cat([seg, batch["edges"].to(dev, non_blocking=nb)], dim=1)
        x = {"labels": labels, "seg": seg, "real": batch["image"].to(dev, non_blocking=nb)}
        for p in self.passes:
            x[p.key] = batch[p.key].to(dev, non_blocking=nb)
        return x

    def _guidances(self, x: dict) -> list[torch.Tensor]:
        """The guidance image of each pass of ``data.guidance_mode``, in pass order."""
        return [x[p.key] for p in self.passes]

    def train_step(self, x: dict) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """One G step and one D step; the passes and their losses come from :data:`self.passes`
        (:mod:`resail_train.guidance_modes`): every pass GAN (+ seg), a paired pass also FM + VGG."""
        cfg = self.cfg.loss
        seg, real, labels = x["seg"], x["real"], x["labels"]
        passes = self.passes
        # ---- generator
        set_requires_grad(self.D, False)
        with self._autocast():
            fakes = self.G_passes(seg, self._guidances(x))
            n = len(fakes)
            preds = split_preds(self.D_frozen(torch.cat(fakes + [real]), seg.repeat(n + 1, 1, 1, 1)), n + 1)
            pred_real = preds[-1]
            losses: dict[str, torch.Tensor] = {}
            for i, p in enumerate(passes):
                losses["G_gan" + p.suffix] = hinge_g_loss(preds[i])
                if "fm" in p.losses and cfg.lambda_fm > 0:
                    losses["G_fm" + p.suffix] = feature_matching_loss(preds[i], pred_real, cfg.lambda_fm)
                if "vgg" in p.losses and self.vgg_loss is not None:
                    losses["G_vgg" + p.suffix] = cfg.lambda_vgg * self.vgg_loss(fakes[i].float(), real)
            if self.segnet is not None and any("seg" in p.losses for p in passes):
                logits = segment(self.segnet, torch.cat(fakes)).float().chunk(n)  # one segnet call for all passes
                for i, p in enumerate(passes):
                    if "seg" in p.losses:
                        losses["G_seg" + p.suffix] = cfg.lambda_seg * balanced_cross_entropy(logits[i], labels,
                                                                                             self.num_classes)
            g_total = sum(v.float() for v in losses.values())
        self.opt_G.zero_grad(set_to_none=True)
        self.scaler_G.scale(g_total).backward()
        self.scaler_G.step(self.opt_G)
        self.scaler_G.update()
        set_requires_grad(self.D, True)
        if self.G_ema is not None:
            self._update_ema()
        # ---- discriminator
        with torch.no_grad(), self._autocast():
            fakes_d = [f.detach() for f in self.G_passes(seg, self._guidances(x))]
        with self._autocast():
            preds = split_preds(self.D_train(torch.cat(fakes_d + [real]), seg.repeat(n + 1, 1, 1, 1)), n + 1)
            real_term = hinge_d_loss_real(preds[-1])
            losses["D_real"] = real_term * n
            d_total = losses["D_real"].float()
            for i, p in enumerate(passes):
                losses["D_fake" + p.suffix] = hinge_d_loss_fake(preds[i])
                d_total = d_total + losses["D_fake" + p.suffix].float()
        self.opt_D.zero_grad(set_to_none=True)
        self.scaler_D.scale(d_total).backward()
        self.scaler_D.step(self.opt_D)
        self.scaler_D.update()
        self.sched_G.step()
        self.sched_D.step()
        losses["G_total"], losses["D_total"] = g_total.detach(), d_total.detach()
        return {k: v.detach() for k, v in losses.items()}, fakes

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.cfg.optim.ema_decay
        for pe, p in zip(self.G_ema.parameters(), self.G.parameters()):
            pe.lerp_(p.detach(), 1.0 - decay)
        for be, b in zip(self.G_ema.buffers(), self.G.buffers()):
            be.copy_(b)

    # ---------------------------------------------------------------- outputs
    def _sample_grid(self, batch: dict, fakes: list[torch.Tensor]) -> np.ndarray:
        from pipeline.visualize import colorize_labels, hstack, vstack

        ids = np.append(self.meta.ids, self.meta.ignore_id)
        rows = []
        k = min(self.cfg.log.n_samples, batch["image"].shape[0])
        for i in range(k):
            lab = ids[batch["labels"][i].cpu().numpy()]
            order = sorted(range(len(self.passes)), key=lambda j: self.passes[j].paired)  # retrieval passes first
            cols = [colorize_labels(lab, self.meta)]
            cols += [tensor_to_rgb(batch[self.passes[j].key][i]) for j in order]
            cols += [tensor_to_rgb(fakes[j][i]) for j in order]
            cols.append(tensor_to_rgb(batch["image"][i]))
            rows.append(hstack(cols))
        return vstack(rows)

    def _write_sample(self, batch: dict, fakes: list[torch.Tensor]) -> Path:
        from pipeline.visualize import write_png

        path = self.run_dir / SAMPLES_DIR / f"step_{self.step:07d}.png"
        write_png(path, self._sample_grid(batch, fakes))
        return path

    def _save(self, keep: bool) -> Path:
        paths = ckpt.save_training_checkpoint(self.run_dir, self.state_dict(), self.step, keep)
        self._drop_previous()  # this run now has a checkpoint of its own
        return paths[0]

    def _write_generator(self) -> Path:
        g = self.G_ema if self.G_ema is not None else self.G
        obj = {"format": 1, "kind": "resail-generator", "ema": self.G_ema is not None, "step": self.step,
               "config": self.cfg.to_dict(), "label_nc": self.label_nc, "num_classes": self.num_classes,
               "instance_edges": self.dataset.instance_edges, "classes": self.meta.to_dict(),
               "cache_dir": str(self.cache_dir), "state_dict": g.state_dict()}
        return ckpt.save_atomic(obj, self.run_dir / GENERATOR_FILE)

    # -- a fresh start never destroys the previous run before it has a run of its own 
    def _run_outputs(self) -> tuple[str, ...]:
        return (ckpt.CHECKPOINT_DIR, SAMPLES_DIR, LOGS_DIR, GENERATOR_FILE, TRAIN_SUMMARY_FILE, CONFIG_FILE)

    def _fresh_run_dir(self) -> None:
        """Move the previous run's outputs into ``RUN/.previous_run/``: they are deleted once this run
        has written its first checkpoint (:meth:`_save`) and put back when it fails before that
        (:meth:`run`; or by the next start after a kill), so a bad rerun never costs the old run."""
        prev = self.run_dir / PREVIOUS_DIR
        for name in self._run_outputs():
            p = self.run_dir / name
            if p.exists():
                prev.mkdir(parents=True, exist_ok=True)
                os.replace(p, prev / name)
        self._previous = prev if prev.is_dir() else None

    def _restore_previous(self) -> None:
        """Put ``.previous_run`` back (the outputs of the failed/killed start are discarded)."""
        prev = self.run_dir / PREVIOUS_DIR
        if prev.is_dir():
            for name in self._run_outputs():
                src, dst = prev / name, self.run_dir / name
                if src.exists():
                    if dst.is_dir():
                        shutil.rmtree(dst)
                    elif dst.exists():
                        dst.unlink()
                    os.replace(src, dst)
            shutil.rmtree(prev, ignore_errors=True)
        self._previous = None

    def _drop_previous(self) -> None:
        if getattr(self, "_previous", None) is not None:
            shutil.rmtree(self._previous, ignore_errors=True)
            self._previous = None

    def _open_live(self, resume: bool):
        try:
            from dvclive import Live
        except ImportError:  # pragma: no cover - dvclive is a dependency
            return None
        return Live(dir=str(self.run_dir / LOGS_DIR), resume=resume, save_dvc_exp=False, dvcyaml=False)

    # ---------------------------------------------------------------- main loop
    def _lock(self):
        """The run folder's lock, held by rank 0 only (torchrun's other ranks write nothing there)."""
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0:
            return contextlib.nullcontext()
        return self._locked()

    @contextlib.contextmanager
    def _locked(self):
        held = contextlib.ExitStack()
        try:
            held.enter_context(stage_lock(self.run_dir / TRAIN_LOCK))
        except BusyError as e:  # name the run folder, not the lock's file
            raise BusyError(self.run_dir, e.problem) from None
        with held:
            yield

    def run(self) -> TrainResult:
        self.opts.validate()
        with self._lock():
            return self._run_locked()

    def _run_locked(self) -> TrainResult:
        try:
            return self._run()
        except BaseException:
            if getattr(self, "_previous", None) is not None:
                self._restore_previous()  # failed before its first checkpoint: the old run comes back
            raise
        finally:
            if self._det_prev is not None:
                torch.use_deterministic_algorithms(self._det_prev[0])
                torch.backends.cudnn.benchmark = self._det_prev[1]
            ds = getattr(self, "dataset", None)
            if ds is not None:
                ds.close()
            d = getattr(self, "dist", None)
            if d is not None:
                d.close()

    def _run(self) -> TrainResult:
        self._setup()
        cfg, opts, main = self.cfg, self.opts, self.dist.is_main
        if main and (self.run_dir / PREVIOUS_DIR).is_dir() and ckpt.latest_checkpoint(self.run_dir) is None:
            self._restore_previous()  # an earlier fresh start was killed before its first checkpoint
        elif main and (self.run_dir / PREVIOUS_DIR).is_dir():
            shutil.rmtree(self.run_dir / PREVIOUS_DIR, ignore_errors=True)  # killed right after its first one
        latest = ckpt.latest_checkpoint(self.run_dir)
        if opts.resume and latest is not None:
            self.load_state_dict(ckpt.load_checkpoint(latest), latest)
            self._resumed_from = latest
        elif main:
            if opts.resume:
                log(f"train: --resume but no checkpoint in {self.run_dir / ckpt.CHECKPOINT_DIR}; starting fresh")
            self._fresh_run_dir()
        self.dist.barrier()
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / CONFIG_FILE, cfg.to_yaml())
        stop = self.total_steps if opts.max_steps is None else min(self.total_steps, int(opts.max_steps))
        n_img = len(self.dataset)
        if main:
            log(f"train: config {cfg.name} ({cfg.source}); {n_img} images of split '{cfg.data.split}', "
                f"batch {cfg.optim.batch_size} ({self.dist.world_size} process(es)), {self.steps_per_epoch} steps/epoch, "
                f"{self.total_steps} steps in the schedule; device {self.device}"
                f"{', AMP ' + cfg.optim.amp_dtype if self.amp else ''}")
            desc = "; ".join(f"{p.source} → {'+'.join(p.losses)}" for p in self.passes)
            log(f"train: guidance mode {cfg.data.guidance_mode} ({desc}), sampling {cfg.data.guidance_sampling}")
            log(f"train: crop {cfg.data.crop_size[0]}x{cfg.data.crop_size[1]} (HxW), "
                f"ngf {cfg.model.ngf}, norm {cfg.model.norm}, label channels {self.label_nc}")
            if cfg.loss.lambda_vgg > 0 and self.vgg_loss is None:
                log("train: VGG perceptual loss is OFF (no VGG19 weights given; pass --vgg-weights PATH to enable it)")
            elif self.vgg_loss is not None:
                log(f"train: VGG perceptual loss on ({self.vgg_path}; input {cfg.loss.vgg_input})")
            if self.segnet is None:
                log("train: segmentation loss is OFF (loss.lambda_seg = 0)")
            else:
                log(f"train: segmentation loss ×{cfg.loss.lambda_seg} with {self.segnet_path}")
            if self._resumed_from is not None:
                log(f"train: resumed from {self._resumed_from} at step {self.step} (epoch {self.epoch}, "
                    f"batch {self.batch_in_epoch})")
        live = self._open_live(self._resumed_from is not None) if main else None
        bar = None
        if main and opts.progress:
            from tqdm import tqdm

            bar = tqdm(total=stop, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        self.G.train()
        self.D.train()
        t_start = time.perf_counter()
        win = {"wait": 0.0, "steps": 0, "t0": time.perf_counter(), "losses": {}}
        tot_wait, tot_time, tot_steps = 0.0, 0.0, 0
        last_losses: dict[str, float] = {}
        last = None
        while self.step < stop:
            if self.batch_in_epoch >= self.steps_per_epoch:
                self.epoch += 1
                self.batch_in_epoch = 0
            self.sampler.set_position(self.epoch, self.batch_in_epoch)
            t_prev = time.perf_counter()
            for batch in self.loader:
                t_data = time.perf_counter()
                losses, fakes = self.train_step(self._inputs(batch))
                self.step += 1
                self.batch_in_epoch += 1
                for k, v in losses.items():
                    win["losses"][k] = win["losses"].get(k, 0.0) + v  # tensors: no sync here
                win["wait"] += t_data - t_prev
                win["steps"] += 1
                last = (batch, fakes)
                done = self.step >= stop
                if self.step % cfg.log.scalar_every == 0 or done:
                    last_losses = {k: float(v) / win["steps"] for k, v in win["losses"].items()}  # syncs the device
                    elapsed = time.perf_counter() - win["t0"]
                    wait_frac = win["wait"] / elapsed if elapsed > 0 else 0.0
                    tot_wait, tot_time, tot_steps = tot_wait + win["wait"], tot_time + elapsed, tot_steps + win["steps"]
                    if main:
                        self._log_scalars(live, last_losses, wait_frac, elapsed / win["steps"])
                        if bar is not None:
                            bar.set_postfix(G=f"{last_losses['G_total']:.3f}", D=f"{last_losses['D_total']:.3f}",
                                            wait=f"{100 * wait_frac:.0f}%")
                    win = {"wait": 0.0, "steps": 0, "t0": time.perf_counter(), "losses": {}}
                if main:
                    if self.step % cfg.log.sample_every == 0 or done:
                        self._write_sample(batch, fakes)
                    keep = self.step % cfg.log.checkpoint_every == 0
                    if keep or self.step % cfg.log.latest_every == 0 or done:
                        self._save(keep)
                    self._fid_checkpoint(live)  # log.fid_every → val/fid, best.pt
                if bar is not None:
                    bar.update(1)
                t_prev = time.perf_counter()
                if done:
                    break
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t_start
        ck = None
        if main:
            if last is None:  # nothing to do (already at the end of the schedule / max-steps)
                self._save(False)
            ck = ckpt.latest_checkpoint(self.run_dir)
            self._write_generator()
            summary = {"step": self.step, "total_steps": self.total_steps, "epoch": self.epoch,
                       "seconds": round(seconds, 3), "data_wait_fraction": tot_wait / tot_time if tot_time else 0.0,
                       "step_time_s": tot_time / tot_steps if tot_steps else 0.0, "losses": last_losses,
                       "device": str(self.device), "world_size": self.dist.world_size,
                       "cache_dir": str(self.cache_dir), "config": cfg.name}
            write_json_atomic(self.run_dir / TRAIN_SUMMARY_FILE, summary)
            if live is not None:
                live.end()
            log(f"train: step {self.step}/{self.total_steps} in {seconds:.1f}s "
                f"(data wait {100 * summary['data_wait_fraction']:.1f}% of step time) → {self.run_dir}")
        self.dist.barrier()
        return TrainResult(self.run_dir, self.step, self.total_steps, self.epoch, seconds,
                           tot_wait / tot_time if tot_time else 0.0, tot_time / tot_steps if tot_steps else 0.0,
                           last_losses, ck)

    # -- validation FID every log.fid_every steps; checkpoints/best.pt keeps the lowest
    def _fid_checkpoint(self, live) -> None:
        every = int(getattr(self.cfg.log, "fid_every", 0) or 0)
        if every <= 0 or self.step % every:
            return
        if getattr(self, "_fid_monitor", None) is None:
            from resail_train.training.fid_monitor import FIDMonitor

            self._fid_monitor = FIDMonitor(self)
        value = self._fid_monitor.step(self, live)
        if value is not None:
            log(f"train: step {self.step} validation FID {value:.2f} ({self._fid_monitor.n} images; "
                f"best {self._fid_monitor.best:.2f})")

    def _log_scalars(self, live, losses: dict, wait_frac: float, step_time: float) -> None:
        if live is None:
            return
        live.step = self.step
        for k, v in losses.items():
            live.log_metric(f"train/{k}", v)
        live.log_metric("lr/G", self.opt_G.param_groups[0]["lr"])
        live.log_metric("lr/D", self.opt_D.param_groups[0]["lr"])
        live.log_metric("perf/data_wait_fraction", wait_frac)
        live.log_metric("perf/step_time_s", step_time)
        live.log_metric("epoch", self.epoch, plot=False)
        live.make_summary()


def train(cache_dir: str | Path, run_dir: str | Path, cfg: TrainConfig, opts: TrainOptions = TrainOptions()) -> TrainResult:
    """Train (or resume) a RESAIL generator; see the module docstring."""
    return Trainer(cache_dir, run_dir, cfg, opts).run()
