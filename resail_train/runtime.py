"""What every part of training, synthesis and evaluation shares at run time: the one-line logger,
the device choice, the distributed environment (``torchrun``), and the two tensor conventions of the
networks' inputs (one-hot label maps; padding to the segmentation net's multiple)."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipeline.errors import ConfigError

SEGNET_MULTIPLE = 64  # the segmentation U-Net halves its input six times


def log(msg: str) -> None:
    """One line to stderr (rank 0 only), safe next to a tqdm bar."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    try:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)
    except Exception:  # noqa: BLE001
        print(msg, file=sys.stderr, flush=True)


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(None, "--device cuda: no CUDA device available")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(None, f"unknown device {name!r} (auto, cpu or cuda)")


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device_kind: str) -> "DistEnv":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        here = False
        if not dist.is_initialized():
            backend = "nccl" if device_kind == "cuda" else "gloo"
            if device_kind == "cuda":
                torch.cuda.set_device(local % torch.cuda.device_count())
            dist.init_process_group(backend=backend)
            here = True
        return cls(rank, world, local, here)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def onehot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dense labels [B, H, W] (ignore = C) → float one-hot [B, C, H, W]; ignored pixels all-zero."""
    oh = F.one_hot(labels.clamp(0, num_classes), num_classes + 1)[..., :num_classes]
    return oh.permute(0, 3, 1, 2).float()


def pad_to_multiple(x: torch.Tensor, multiple: int = SEGNET_MULTIPLE, value: float | None = None) -> torch.Tensor:
    """Pad the last two dims (bottom/right) to a multiple: replicate for images, ``value`` for labels."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return x
    if value is None:
        return F.pad(x, (0, pw, 0, ph), mode="replicate")
    return F.pad(x, (0, pw, 0, ph), mode="constant", value=value)
