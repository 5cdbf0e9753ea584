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
CUDA is initialised). Writes go to a temp file unique to the writer (``<name>.<pid>-<random>.tmp``,
:func:`pipeline.cache.atomic.tmp_path`) and are renamed with :func:`os.replace`, so two writers never
share a half-written file; a full disk leaves the previous file and one :class:`CacheError` line.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from pipeline.cache.atomic import disk_full_error, tmp_path
from pipeline.errors import CacheError
from resail_train.run_files import (BEST, CHECKPOINT_DIR, CONFIG_FILE, DETAILS_FILE, GENERATOR_FILE, LATEST,  # noqa: F401
                                    TRAIN_SUMMARY_FILE, step_name)

FORMAT_VERSION = 1


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


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state: what ``torch.save`` needs on disk, give or take."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _replace_or_fail(tmp: Path, path: Path, err: BaseException, needed: int) -> BaseException:
    """Delete ``tmp``; the error to raise for a failed write of ``path`` (a full disk: one line)."""
    tmp.unlink(missing_ok=True)
    full = disk_full_error(path, err, needed)
    return err if full is None else full


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a fresh temp beside ``path``, then ``os.replace`` (the old file stays until
    the new one is whole; concurrent writers each have their own temp)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        err = _replace_or_fail(tmp, path, e, _tensor_bytes(obj) + (1 << 16))
        if err is e:
            raise
        raise err from None
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
        tmp = tmp_path(dst)
        try:
            shutil.copyfile(out[0], tmp)
            os.replace(tmp, dst)
        except BaseException as e:
            err = _replace_or_fail(tmp, dst, e, _tensor_bytes(state) + (1 << 16))
            if err is e:
                raise
            raise err from None
        out.append(dst)
    return out


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    p = Path(run_dir) / CHECKPOINT_DIR / LATEST
    return p if p.is_file() else None


# --------------------------------------------------------------------------- which generator
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


def export_generator(src: str | Path, dst: str | Path, *, half: bool = True, drop_cache_dir: bool = True) -> Path:
    """A run's generator (a generator file or a training checkpoint; its EMA generator when present) as
    a stand-alone generator file ``dst``: the weights (half precision with ``half``, which halves the
    file and loads back into the float32 network unchanged up to fp16 rounding), the config, the class
    list and the step. ``drop_cache_dir`` removes the training machine's cache path, which means
    nothing elsewhere (the user passes ``--cache``)."""
    obj = as_generator_file(load_checkpoint(src))
    missing = [k for k in ("config", "label_nc", "classes", "state_dict") if k not in obj]
    if missing:
        raise CacheError(src, f"not a RESAIL generator or training checkpoint (missing {', '.join(missing)})")
    out = dict(obj)
    if half:
        out["state_dict"] = {k: (v.half() if v.is_floating_point() else v) for k, v in obj["state_dict"].items()}
    if drop_cache_dir:
        out.pop("cache_dir", None)
    return save_atomic(out, dst)


_CACHE_KEYS = ("cache_dir", "cache")


def recorded_cache_dir(run_dir: str | Path) -> Path | None:
    """The stage cache a run was trained on, where the run folder records it.

    Looked up in ``train_summary.json``, ``generator.pt``, ``config.yaml`` (keys ``cache_dir`` or
    ``cache``) and ``eval_details.json`` (``cache_dir``, written by ``resail evaluate``).
    """
    run_dir = Path(run_dir)
    cands: list = []
    for name in (TRAIN_SUMMARY_FILE, DETAILS_FILE):
        p = run_dir / name
        if p.is_file():
            try:
                d = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(d, dict):
                cands += [d.get(k) for k in _CACHE_KEYS]
                det = d.get("details")
                if isinstance(det, dict):
                    cands.append(det.get("cache_dir"))
    p = run_dir / CONFIG_FILE
    if p.is_file():
        try:
            d = yaml.safe_load(p.read_text())
            if isinstance(d, dict):
                cands += [d.get(k) for k in _CACHE_KEYS]
        except (OSError, yaml.YAMLError):
            pass
    g = run_dir / GENERATOR_FILE
    if g.is_file() and not any(cands):
        try:
            obj = load_checkpoint(g)
            cands += [obj.get(k) for k in _CACHE_KEYS]
        except CacheError:
            pass
    for c in cands:
        if isinstance(c, str) and c:
            return Path(c)
    return None
