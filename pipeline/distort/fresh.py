"""Distorted ground truth drawn fresh per sample (the training loader's ``data.distortion: online``).

The released code distorts every training image anew at every step (colour and resolution in its
DataLoader workers, the TPS shape warp on the GPU); ``resail distort`` pre-generates ``K`` variants
instead. :class:`FreshDistortions` gives the loader the stage's own per-image operator —
:func:`pipeline.distort.build.task_segments` and :func:`pipeline.distort.build.distort_sample`, the
two calls ``resail distort`` makes per image — for one generator per (sample, epoch), so a
fresh distortion is a draw from the same distribution as a cached variant, not a re-implementation.

It needs the segment database (``segments.parquet``/``segments.h5``/``images.parquet``), the
dataset root (the real image and the label map, loaded by the caller) and ``retrieval.parquet``
(which segments are pasted on the black canvas; the colour targets); not ``distortions.h5``.
The colour target statistics and the paste flags are computed once, when it is opened (in the
main process); a worker opens its own segment-database handle (crops are read only when a label
map does not reproduce the stored masks).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from pipeline.cache import SegmentDB
from pipeline.datasets.base import DatasetAdapter, Sample
from pipeline.distort.build import (ColorTargets, DistortParams, build_color_targets, distort_sample, image_tasks,
                                    task_segments)
from pipeline.errors import CacheError, ResailError

__all__ = ["params_from_h5", "FreshDistortions"]


def params_from_h5(path: str | Path) -> DistortParams:
    """The :class:`DistortParams` a ``distortions.h5`` was made with (its root attributes).

    A file from before ``resolution_reference`` was recorded was made relative to the working image
    (``working``); ``color_targets`` ``none`` (colour could not fire) reads as ``auto``."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError as e:
        raise CacheError(path, f"not a readable HDF5 file ({e})") from None

    def text(key: str, default: str) -> str:
        v = attrs.get(key, default)
        return v.decode() if isinstance(v, bytes) else str(v)

    try:
        targets = text("color_targets", "auto")
        return DistortParams(
            variants=int(attrs.get("variants", 4)), seed=int(attrs.get("seed", 0)),
            kinds=text("kinds", "color,shape,resolution"),
            probs=json.loads(text("probs", "{}")),
            scale_range=tuple(json.loads(text("scale_range", "[0.5, 1.0]"))),
            paste_rules=text("paste_rules", "a1"),
            color_targets="auto" if targets == "none" else targets,
            canvas=text("canvas", "black"),
            resolution_reference=text("resolution_reference", "working"))
    except (ValueError, TypeError, ResailError) as e:
        raise CacheError(path, f"distortion parameters in the attributes are unreadable ({e})") from None


class FreshDistortions:
    """``FreshDistortions.open(cache_dir, params, rows, adapter)``; then ``distort(i, sample, rng)``
    for the image ``rows[i]`` → ``(image HxWx3 uint8, valid HxW bool, records)``, exactly what
    ``resail distort`` stores as a variant whose generator is ``rng``.

    Pickles without its database handle (each DataLoader worker opens its own on first use)."""

    def __init__(self, cache_dir: Path, params: DistortParams, tasks: list, targets: ColorTargets | None) -> None:
        self.cache_dir, self.params, self.tasks, self.targets = Path(cache_dir), params, tasks, targets
        self._db: SegmentDB | None = None
        self._pid: int | None = None

    @classmethod
    def open(cls, cache_dir: str | Path, params: DistortParams, rows: Sequence[dict],
             adapter: DatasetAdapter) -> "FreshDistortions":
        """Plan the images ``rows`` (database image rows) the way ``resail distort`` plans its images."""
        cache_dir = Path(cache_dir)
        with SegmentDB.open(cache_dir) as db:
            tasks = image_tasks(db, rows, db.sample_refs(adapter, list(rows)), params.canvas)
            targets = None
            if params.color_may_fire:
                queries = np.zeros(len(db), bool)
                for t in tasks:
                    queries[t.first:t.first + len(t.paste)] = t.paste
                targets = build_color_targets(db, params.color_targets, progress=False, queries=queries)
        return cls(cache_dir, params, tasks, targets)

    @property
    def color_targets(self) -> str:
        """The colour-target mode in use: ``retrieval``, ``class`` or ``none`` (as the stage records it)."""
        return self.targets.mode if self.targets is not None else "none"

    def _segment_db(self) -> SegmentDB:
        if self._pid != os.getpid():
            self._db = None  # inherited over fork: the parent owns that handle
            self._pid = os.getpid()
        if self._db is None:
            self._db = SegmentDB.open(self.cache_dir)
        return self._db

    def distort(self, i: int, sample: Sample, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """One distorted ground truth of image ``i`` (its loaded ``sample``) drawn with ``rng``."""
        task = self.tasks[i]
        segments = task_segments(sample, task, self._segment_db(), self.cache_dir)
        (out, valid, records), = distort_sample(sample.image, task, segments, self.params, self.targets, [rng])
        return out, valid, records

    def close(self) -> None:
        if self._db is not None and self._pid == os.getpid():
            self._db.close()
        self._db = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_db"], state["_pid"] = None, None
        return state
