"""Atomic, ``weights_only``-loadable training checkpoints.

Layout under ``RUN_DIR/checkpoints/``: ``latest.pt`` (rewritten every ``log.latest_every`` steps and
at the end of a run) and ``step_XXXXXXX.pt`` (every ``log.checkpoint_every`` steps, kept).

A checkpoint is a dict of state dicts, numbers, strings, lists and tensors only, so it loads with
``torch.load(path, weights_only=True)``:

``{"format": 1, "step", "epoch", "batch_in_epoch", "config" (plain dict), "label_nc",
"classes" (ClassMeta dict), "models": {"G", "D", ["G_ema"]}, "optimizers": {"G", "D"},
"schedulers": {"G", "D"}, "scalers": {...} (fp16 AMP only), "sampler": {...}, "rng": {...}}``

RNG states (:func:`capture_rng_state`): python ``random`` (version, 625 words as an int64 tensor,
gauss), numpy's legacy global generator (MT19937 key as an int64 tensor, pos, has_gauss,
cached_gaussian), torch CPU (uint8 tensor), CUDA (a list of uint8 tensors, one per device, when
CUDA is initialised). Writes go to ``<name>.tmp`` and are renamed with :func:`os.replace`.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import CacheError

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"
FORMAT_VERSION = 1


def step_name(step: int) -> str:
    return f"step_{int(step):07d}.pt"


def capture_rng_state() -> dict:
    """Python, numpy, torch (and CUDA) RNG states as primitives and tensors."""
    version, words, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(list(words), dtype=torch.int64),
                   "gauss": None if gauss is None else float(gauss)},
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_cached)},
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only when CUDA is available)."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), int(npst["pos"]),
                         int(npst["has_gauss"]), float(npst["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda[:n]])


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path.tmp`` then ``os.replace`` (the old file stays until the new one is whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """``torch.load(path, weights_only=True)``; unreadable or foreign files → :class:`CacheError`."""
    path = Path(path)
    if not path.is_file():
        raise CacheError(path, "checkpoint not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is a cache problem
        raise CacheError(path, f"cannot read checkpoint ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if not isinstance(obj, dict):
        raise CacheError(path, "not a RESAIL checkpoint (expected a dict)")
    return obj


def save_training_checkpoint(run_dir: str | Path, state: dict, step: int, keep: bool) -> list[Path]:
    """Write ``checkpoints/latest.pt`` (and ``step_XXXXXXX.pt`` when ``keep``); returns the paths."""
    ckdir = Path(run_dir) / CHECKPOINT_DIR
    state = {"format": FORMAT_VERSION, **state}
    out = [save_atomic(state, ckdir / LATEST)]
    if keep:  # a byte copy of latest.pt, written atomically as well
        dst = ckdir / step_name(step)
        tmp = dst.with_name(dst.name + ".tmp")
        try:
            shutil.copyfile(out[0], tmp)
            os.replace(tmp, dst)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        out.append(dst)
    return out


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    p = Path(run_dir) / CHECKPOINT_DIR / LATEST
    return p if p.is_file() else None


# --------------------------------------------------------------------------- which generator (issue 11)
BEST = "best.pt"
GENERATOR_FILE = "generator.pt"  # = resail_train.trainer.GENERATOR_FILE (the trainer imports this module)
CHECKPOINT_CHOICES = ("latest", "best")


def generator_checkpoint_path(run_dir: str | Path, which: str | Path | None = "latest") -> Path:
    """The generator file ``--checkpoint best|latest|PATH`` names.

    ``latest`` (default) = ``RUN/generator.pt`` (written at the end of ``resail train``); ``best`` =
    ``RUN/checkpoints/best.pt`` (lowest validation FID, written when ``log.fid_every > 0``); anything
    else is a path: a generator file, ``best.pt`` or a training checkpoint (``latest.pt``,
    ``step_*.pt``; its EMA generator when present).
    """
    run_dir = Path(run_dir)
    w = "latest" if which is None or str(which) == "" else str(which)
    if w == "latest":
        return run_dir / GENERATOR_FILE
    if w == "best":
        p = run_dir / CHECKPOINT_DIR / BEST
        if not p.is_file():
            raise CacheError(p, "no best-by-FID checkpoint in this run (train with log.fid_every > 0, "
                                "or use --checkpoint latest)")
        return p
    return Path(w)


def as_generator_file(obj: dict) -> dict:
    """A training checkpoint (``models.G``/``G_ema``) viewed as a generator file; generator files unchanged."""
    if "state_dict" in obj or not isinstance(obj.get("models"), dict):
        return obj
    models = obj["models"]
    ema = "G_ema" in models
    out = {k: obj[k] for k in ("config", "label_nc", "classes", "step", "cache_dir") if k in obj}
    out.update({"format": 1, "kind": "resail-generator", "ema": ema, "state_dict": models["G_ema" if ema else "G"]})
    classes = obj.get("classes") or {}
    n = len(classes.get("classes", [])) if isinstance(classes, dict) else 0
    if n and "label_nc" in obj:
        out["instance_edges"] = int(obj["label_nc"]) == n + 1
    return out
