"""Pre-generated distorted ground truth (``resail distort``; paper appendix A.2, method notes §4).

The released code distorts the real image online in its data loader; **ours** pre-generates ``K``
seeded variants per image once, so a training run reads them like any other cache and a run can be
audited afterwards. The per-image work is :func:`pipeline.distort.distortions.distort_image`; this module is
the dataset-level driver around it.

Per image of the selected splits (default: the segment database's ``db_split``, i.e. the training
images), in the database's image order:

1. the real image is loaded through the dataset adapter (format and root from the segment database's
   attributes, overridable); its size must match ``images.parquet`` (else: stale cache);
2. its segments come from the segment database: box, mask crop, class, thing flag, in segment order;
3. ``distort_variants`` makes the ``K`` variants (each what ``distort_image`` gives), variant ``v`` with the generator
   ``default_rng(SeedSequence([seed, crc32("<split>/<image_id>"), v]))`` — a function of the seed and
   the image's name only, so the bytes do not depend on the order, ``--jobs``, the backend or which
   other images are processed;
4. the ``K`` recomposed images go to ``distortions.h5`` and one audit row per (variant, segment) to
   ``distortions.parquet`` (schemas in :mod:`pipeline.cache`). Both are written atomically.

Colour targets
--------------
The colour distortion transfers the lαβ mean/std (population, of the target's *masked* crop pixels)
of a random segment of the same class. The target is drawn with the colour generator that
``distort_image`` hands to the chooser:

* ``color_targets="retrieval"`` (``"auto"`` when ``retrieval.parquet`` exists): uniformly among the
  segment's retrieved candidates (all ranks), as the released code draws among its match list.
  **Ours:** candidates of another class, outside the database split or the segment itself are
  dropped (``resail retrieve`` should not produce them for training queries; other segments of the
  same image stay, as in the released match list, and appear with ``retrieve.exclude: self``), and a
  segment left without a candidate falls back to the class rule below;
* ``color_targets="class"`` (``"auto"`` without ``retrieval.parquet``): uniformly among the
  non-empty segments of the same class in the *other* images of the database split (sorted by
  segment id, so the draw is reproducible). No such segment: the colour distortion is recorded as
  skipped (``no_target``) and the segment keeps its colours.

Target statistics are computed once, before the per-image work, for every segment that can be a
target (the database split's non-empty segments; decoding each crop once), in chunks of contiguous
segments run in parallel with the same ``--jobs``; the chunking does not depend on ``--jobs``.
``color_targets`` in the root attrs is ``none`` when the colour distortion cannot fire.

Files
-----
``distortions.h5``: ``/<split>/<image_id>`` uint8 ``[K, H, W, 3]``, gzip, one chunk per variant,
``track_times=False``, datasets created in image order; dataset attrs ``first_segment``,
``n_segments``; root attrs ``schema_version``, ``seed``, ``variants``, ``kinds`` (comma list),
``probs`` (JSON), ``scale_range`` (JSON), ``paste_rules``, ``color_targets`` (the mode actually used:
``retrieval``, ``class`` or ``none``), ``resolution_reference``, ``splits`` (comma list), ``db_split``,
``n_images``.

Resolution reference
--------------------
The released code draws the resolution scale against the image *on disk* and resizes to the working
size afterwards, so a ``--resize`` cache loses only ``min(1, scale·source/working)`` per axis
(``resolution_reference="source"``, default; ``images.parquet`` ``source_height``/``source_width``).
``"working"`` applies the drawn scale to the cached image itself (this project's earlier behaviour;
the same as ``source`` for a cache without ``--resize``).
``distortions.parquet``: :data:`pipeline.cache.DISTORTION_SCHEMA`.
"""
from __future__ import annotations

import json
import re
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import h5py
import numpy as np
import pyarrow as pa

from pipeline import cache
from pipeline.cache import SegmentDB
from pipeline.datasets import open_dataset
from pipeline.datasets.base import DatasetAdapter, SampleRef
from pipeline.deflate import DEFLATE_IMPL, CompressedArray
from pipeline.distort.distortions import CANVASES, KINDS, distort_variants, lab_stats
from pipeline.errors import CacheError, ConfigError, ResailError
from pipeline.compose.build import select_matches
from pipeline.parallel import ordered_map
from pipeline.decompose.segments import decompose
from pipeline.visualize import hstack, write_png

__all__ = [
    "COLOR_TARGET_MODES",
    "RESOLUTION_REFERENCES",
    "DistortParams",
    "DistortSummary",
    "ColorTargets",
    "variant_rng",
    "image_hash",
    "parse_kinds",
    "build_color_targets",
    "build_distortions",
    "image_tasks",
    "task_segments",
    "distort_sample",
    "read_distortions",
    "read_distortion_valid",
    "matched_segments",
    "resolution_factor",
    "preview",
]

SCHEMA_VERSION = cache.DISTORTIONS_SCHEMA_VERSION  # 2: escaped keys + lineage (pipeline.cache)
COLOR_TARGET_MODES = ("auto", "retrieval", "class")
#: What the resolution scale is relative to: the image on disk before ``decompose --resize`` (the
#: released code distorts there, then resizes) or the cached working image.
RESOLUTION_REFERENCES = ("source", "working")
PREVIEW_DIR = "distort_preview"
#: The retrieval rank whose matches decide which segments a variant shows (compose's default rank).
MATCH_RANK = 0

_STATS_CHUNK_PIXELS = 1 << 21  # pixels of crops per colour-statistics task (fixed: not tied to --jobs)


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------
def parse_kinds(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"color,shape"`` / a list → kinds in the canonical order of :data:`KINDS`; ConfigError if bad."""
    if value is None:
        return KINDS
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else [str(s).strip() for s in value]
    items = [s for s in items if s]
    unknown = sorted(set(items) - set(KINDS))
    if unknown:
        raise ConfigError(None, f"unknown distortion kind(s) {', '.join(unknown)} (choose from {', '.join(KINDS)})")
    if not items:
        raise ConfigError(None, f"no distortion kind selected (choose from {', '.join(KINDS)})")
    return tuple(k for k in KINDS if k in items)


@dataclass(frozen=True)
class DistortParams:
    """What a run of ``resail distort`` depends on (besides the caches). Validated on creation."""

    variants: int = 4
    seed: int = 0
    kinds: tuple[str, ...] = KINDS
    probs: Mapping[str, float] = field(default_factory=lambda: {k: 1.0 for k in KINDS})
    scale_range: tuple[float, float] = (0.5, 1.0)
    paste_rules: str = "a1"
    color_targets: str = "auto"
    canvas: str = "black"
    resolution_reference: str = "source"

    def __post_init__(self) -> None:
        if isinstance(self.variants, bool) or int(self.variants) != self.variants or self.variants < 1:
            raise ConfigError(None, f"variants must be a positive integer, got {self.variants!r}")
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or self.seed < 0:
            raise ConfigError(None, f"seed must be a non-negative integer, got {self.seed!r}")
        object.__setattr__(self, "kinds", parse_kinds(self.kinds))
        probs = {k: 1.0 for k in KINDS}
        for k, v in dict(self.probs).items():
            if k not in KINDS:
                raise ConfigError(None, f"probability of unknown distortion kind '{k}'")
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ConfigError(None, f"probability of '{k}' must be a number, got {v!r}") from None
            if not 0.0 <= v <= 1.0:
                raise ConfigError(None, f"probability of '{k}' must be in [0, 1], got {v}")
            probs[k] = v
        object.__setattr__(self, "probs", probs)
        lo, hi = (float(v) for v in self.scale_range)
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(None, f"resolution scale range must satisfy 0 < min <= max <= 1, got ({lo}, {hi})")
        object.__setattr__(self, "scale_range", (lo, hi))
        if self.paste_rules not in ("a1", "free"):
            raise ConfigError(None, f"paste_rules must be 'a1' or 'free', got {self.paste_rules!r}")
        if self.canvas not in CANVASES:
            raise ConfigError(None, f"canvas must be one of {', '.join(CANVASES)}, got {self.canvas!r}")
        if self.resolution_reference not in RESOLUTION_REFERENCES:
            raise ConfigError(None, f"resolution_reference must be one of {', '.join(RESOLUTION_REFERENCES)}, "
                                    f"got {self.resolution_reference!r}")
        if self.color_targets not in COLOR_TARGET_MODES:
            raise ConfigError(None, f"color_targets must be one of {', '.join(COLOR_TARGET_MODES)}, "
                                    f"got {self.color_targets!r}")

    @property
    def color_may_fire(self) -> bool:
        return "color" in self.kinds and self.probs["color"] > 0.0


@dataclass
class DistortSummary:
    n_images: int
    n_segments: int
    variants: int
    splits: list[str]
    color_targets: str  # "retrieval" | "class" | "none" (colour off)
    applied: dict[str, int]  # per kind: (variant, segment) pairs where it was applied
    stats_s: float  # seconds spent on target colour statistics
    total_s: float
    out_dir: Path


# --------------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------------
def image_hash(split: str, image_id: str) -> int:
    """Stable 32-bit name hash of an image (``zlib.crc32`` of ``"<split>/<image_id>"`` in UTF-8)."""
    return zlib.crc32(f"{split}/{image_id}".encode("utf-8"))


def variant_rng(seed: int, split: str, image_id: str, variant: int) -> np.random.Generator:
    """The generator of one (image, variant): ``SeedSequence([seed, image_hash, variant])``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), image_hash(split, image_id), int(variant)]))


# --------------------------------------------------------------------------------------------------
# Per-process handles (workers open the caches themselves: only paths cross process borders)
# --------------------------------------------------------------------------------------------------
def _release_dbs(cache_dir: str | Path) -> None:
    """Close this process's database of ``cache_dir`` and forget its adapters (workers' go when they exit)."""
    cache.release_process_dbs(cache_dir)
    _worker_adapter.cache_clear()


@lru_cache(maxsize=4)
def _worker_adapter(fmt: str, root: str, options: str = "{}", resize: str = "") -> DatasetAdapter:
    # options (JSON) and resize: the adapter the segment DB recorded (label space, subset, working resolution)
    return open_dataset(fmt, root, json.loads(options), resize or None)


# --------------------------------------------------------------------------------------------------
# Colour targets
# --------------------------------------------------------------------------------------------------
@dataclass
class ColorTargets:
    """Everything a worker needs to pick a colour target (plain arrays: pickles/memmaps cheaply).

    ``stats``: float64 ``[N, 6]`` lαβ (mean, std) per segment id, NaN where not computed.
    ``pools``: class id → sorted ids of the non-empty database-split segments of that class.
    ``offsets``/``candidates``: CSR of the filtered retrieved candidates per query (rank order),
    or None when retrieval is not used. ``mode``: ``"retrieval"`` or ``"class"``.
    """

    mode: str
    stats: np.ndarray
    pools: dict[int, np.ndarray]
    offsets: np.ndarray | None = None
    candidates: np.ndarray | None = None

    def pick(self, segment_id: int, class_id: int, first: int, n: int, rng: np.random.Generator) -> int | None:
        """Target id for one segment of the image whose segments are ``first..first+n-1``."""
        if self.offsets is not None:
            a, b = int(self.offsets[segment_id]), int(self.offsets[segment_id + 1])
            if b > a:
                return int(self.candidates[a + int(rng.integers(b - a))])
        pool = self.pools.get(int(class_id))
        if pool is None or pool.size == 0:
            return None
        lo, hi = (int(v) for v in np.searchsorted(pool, [first, first + n]))
        size = pool.size - (hi - lo)
        if size <= 0:
            return None
        k = int(rng.integers(size))
        return int(pool[k if k < lo else k + (hi - lo)])

    def chooser(self, first: int, n: int) -> Callable[[int, int, np.random.Generator], tuple | None]:
        """``f(segment_index, class_id, rng)`` for :func:`distort_image`."""
        def choose(index: int, class_id: int, rng: np.random.Generator):
            target = self.pick(first + index, class_id, first, n, rng)
            if target is None:
                return None
            s = self.stats[target]
            if np.isnan(s[0]):  # build_color_targets(queries=...) was not told this query
                raise RuntimeError(f"colour statistics of segment {target} were not computed")
            return s[:3], s[3:], target
        return choose


def _stats_chunk(run: tuple[int, int], *, cache_dir: str) -> np.ndarray:
    """lαβ (mean, std) ``[n, 6]`` of the masked crop pixels of segments ``run[0]..run[1]-1``."""
    first, stop = run
    db = cache.process_db(cache_dir)
    out = np.full((stop - first, 6), np.nan)
    for i, sid in enumerate(range(first, stop)):
        rgb, mask = db.crop(sid)
        if mask.any():
            mean, std = lab_stats(rgb[mask])
            out[i, :3], out[i, 3:] = mean, std
    return out


def _runs(ids: np.ndarray, box_area: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Split sorted ids into contiguous half-open ranges of at most ``budget`` crop pixels each."""
    runs: list[tuple[int, int]] = []
    if ids.size == 0:
        return runs
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    for block in np.split(ids, breaks):
        start, pixels = int(block[0]), 0
        for sid in block:
            px = int(box_area[sid])
            if pixels and pixels + px > budget:
                runs.append((start, int(sid)))
                start, pixels = int(sid), 0
            pixels += px
        runs.append((start, int(block[-1]) + 1))
    return runs


def build_color_targets(db: SegmentDB, mode: str = "auto", *, db_split: str | None = None, jobs: int = 1,
                        backend: str = "loky", scheduler: str | None = None, progress: bool = True,
                        queries: np.ndarray | None = None) -> ColorTargets:
    """Candidate lists and target statistics for the colour distortion (module docstring).

    ``queries`` (bool ``[N]``, default all): the segments that will be distorted. Statistics are
    computed only for the segments they can pick — their retrieved candidates, and the class pool
    of a query left without one (or every pool of their classes in ``class`` mode) — since
    decoding every crop of the database split cost as much as a fifth of the stage; the others
    stay NaN and are never picked."""
    if mode not in COLOR_TARGET_MODES:
        raise ConfigError(None, f"color_targets must be one of {', '.join(COLOR_TARGET_MODES)}, got {mode!r}")
    db_split = db_split or str(db.attrs.get("db_split", "train"))
    n = len(db)
    class_ids = db.col("class_id").astype(np.int64)
    area = db.col("area").astype(np.int64)
    in_db = (db.col("split").astype(object) == db_split) & (area > 0)
    images = db.images
    n_seg = images.column("n_segments").to_numpy().astype(np.int64)
    seg_image = np.repeat(np.arange(len(n_seg)), n_seg)
    if seg_image.size != n:
        raise CacheError(db.cache_dir / cache.IMAGES_PARQUET,
                         f"n_segments adds up to {seg_image.size} but segments.parquet has {n} rows")

    use_retrieval = mode == "retrieval" or (mode == "auto" and (db.cache_dir / cache.RETRIEVAL_PARQUET).is_file())
    offsets = candidates = None
    if use_retrieval:
        table, _ = cache.read_retrieval(db.cache_dir, n)
        q = table.column("query_id").to_numpy().astype(np.int64)
        c = table.column("candidate_id").to_numpy().astype(np.int64)
        r = table.column("rank").to_numpy().astype(np.int64)
        if q.size and (q.min() < 0 or c.min() < 0):
            raise CacheError(db.cache_dir / cache.RETRIEVAL_PARQUET, "negative segment id")
        order = np.lexsort((r, q))
        q, c = q[order], c[order]
        keep = (class_ids[c] == class_ids[q]) & (c != q) & in_db[c]
        q, c = q[keep], c[keep]
        offsets = np.searchsorted(q, np.arange(n + 1)).astype(np.int64)
        candidates = c

    pools = {int(k): np.flatnonzero(in_db & (class_ids == k)).astype(np.int64) for k in np.unique(class_ids[in_db])}
    wanted = np.zeros(n, bool)
    queries = np.ones(n, bool) if queries is None else np.asarray(queries, bool)
    fallback = queries.copy()  # queries that may fall back to their class pool
    if offsets is not None:
        wanted[candidates[np.repeat(queries, np.diff(offsets))]] = True
        fallback &= np.diff(offsets) == 0
    for k in np.unique(class_ids[fallback]):
        pool = pools.get(int(k))
        if pool is not None:
            wanted[pool] = True
    ids = np.flatnonzero(in_db & wanted)
    stats = np.full((n, 6), np.nan)
    stored = db.lab_stats()  # written by decompose: no crop to decode
    if stored is not None:
        stats[ids] = stored[ids]
    else:  # a database written before /lab_stats existed
        runs = _runs(ids, db.col("box_area").astype(np.int64), _STATS_CHUNK_PIXELS)
        res = ordered_map(_stats_chunk, runs, jobs=jobs, backend=backend, scheduler=scheduler,
                          desc="colour stats", unit="chunk", progress=progress, cache_dir=str(db.cache_dir))
        try:
            for (a, b), part in zip(runs, res):
                stats[a:b] = part
        finally:
            res.close()
    return ColorTargets("retrieval" if use_retrieval else "class", stats, pools, offsets, candidates)


# --------------------------------------------------------------------------------------------------
# Per image
# --------------------------------------------------------------------------------------------------
@dataclass
class _ImageTask:
    ref: SampleRef
    height: int
    width: int
    first: int
    boxes: np.ndarray  # [n, 4] int64 (y0, x0, y1, x1)
    class_ids: np.ndarray  # [n] int64
    is_thing: np.ndarray  # [n] bool
    paste: np.ndarray  # [n] bool: has a retrieval match (all True on the real canvas)
    areas: np.ndarray  # [n] int64 mask pixels (checks the masks re-derived from the label map)
    source_size: tuple[int, int] | None = None  # (H, W) on disk before --resize; None = (height, width)


@dataclass
class _Context:
    cache_dir: str
    fmt: str
    data_root: str
    params: DistortParams
    targets: ColorTargets | None
    options: str = "{}"  # adapter options (JSON) and working resolution, as SegmentDB.open_adapter rebuilds them
    resize: str = ""


@dataclass
class _ImageResult:
    split: str
    image_id: str
    first: int
    variants: CompressedArray  # [K, H, W, 3] uint8, deflated in the worker (pipeline.deflate)
    valid: CompressedArray  # [K, H, W] bool
    columns: dict[str, Any]


@dataclass
class _Failure:
    error: type
    path: str | None
    problem: str


def _columns(task: _ImageTask, records_per_variant: list[list[dict]]) -> dict[str, Any]:
    variant, seg, applied, target, skipped, moved, scale = [], [], [], [], [], [], []
    for v, records in enumerate(records_per_variant):
        for rec in records:
            if not rec["pasted"]:  # audit rows only for the segments a variant shows
                continue
            variant.append(v)
            seg.append(task.first + rec["segment"])
            applied.append("+".join(rec["applied"]))
            color, shape, res = rec["color"], rec["shape"], rec["resolution"]
            target.append(-1 if "color" not in rec["applied"] or color.get("target_id") is None
                          else int(color["target_id"]))
            skipped.append(shape["skipped"] if shape is not None and shape["skipped"] else "")
            moved.append(len(shape["moved"]) if "shape" in rec["applied"] else 0)
            scale.append(res["scale"] if res is not None else 1.0)
    m = len(variant)
    return {
        "split": [task.ref.split] * m, "image_id": [task.ref.image_id] * m,
        "variant": np.asarray(variant, np.int32), "segment_id": np.asarray(seg, np.int64),
        "applied": applied, "color_target": np.asarray(target, np.int64), "shape_skipped": skipped,
        "n_moved": np.asarray(moved, np.int32), "scale": np.asarray(scale, np.float32),
    }


def _masks_from_labels(sample, task: _ImageTask, db: SegmentDB) -> list[np.ndarray] | None:
    """The image's segment masks re-derived from its label/instance maps by the decomposition itself
    (:func:`pipeline.decompose.segments.decompose`, deterministic), or None when they do not match the
    database's rows (count, class, box, area) — then the caller decodes the stored crops.

    Decoding the RGBA crop PNGs only for their alpha channel was the stage's largest single cost
    at full resolution (the crops of one Cityscapes frame cover ~2.6 image areas); labelling the
    label map once costs about half of that."""
    segs = decompose(sample.labels, sample.instances, db.meta, int(db.attrs.get("min_area", 0)))
    if len(segs) != len(task.class_ids):
        return None
    for i, seg in enumerate(segs):
        if (seg.class_id != task.class_ids[i] or tuple(seg.box) != tuple(int(v) for v in task.boxes[i])
                or seg.area != task.areas[i]):
            return None
    return [seg.mask for seg in segs]


def resolution_factor(height: int, width: int, source_size: tuple[int, int] | None,
                      reference: str = "source") -> tuple[float, float]:
    """``(source_h/height, source_w/width)`` for ``reference="source"``, ``(1, 1)`` for ``"working"`` or
    when the image was not resized (:func:`pipeline.distort.distortions.effective_scale`)."""
    if reference == "working" or source_size is None:
        return 1.0, 1.0
    return source_size[0] / height, source_size[1] / width


def task_segments(sample, task: _ImageTask, db: SegmentDB, cache_dir: str | Path) -> list[tuple]:
    """The ``(box, mask, class_id, is_thing)`` segments of one loaded sample, as :func:`distort_variants`
    takes them (masks re-derived from the label map, else the stored crops); CacheError when the
    sample or a crop disagrees with the segment database."""
    ref = task.ref
    if sample.image.shape[:2] != (task.height, task.width):
        raise CacheError(Path(cache_dir) / cache.IMAGES_PARQUET,
                         f"image {ref.split}/{ref.image_id} is {sample.image.shape[1]}x{sample.image.shape[0]} "
                         f"on disk but {task.width}x{task.height} in the segment database "
                         "(stale cache: re-run `resail decompose`)")
    masks = _masks_from_labels(sample, task, db)
    segments = []
    for i in range(len(task.class_ids)):
        y0, x0, y1, x1 = (int(v) for v in task.boxes[i])
        mask = masks[i] if masks is not None else db.crop_mask(task.first + i)
        if mask.shape != (y1 - y0, x1 - x0):
            raise CacheError(Path(cache_dir) / cache.SEGMENTS_H5,
                             f"crop of segment {task.first + i} is {mask.shape[1]}x{mask.shape[0]}, its box "
                             f"{x1 - x0}x{y1 - y0} (corrupt cache)")
        segments.append(((y0, x0, y1, x1), mask, int(task.class_ids[i]), bool(task.is_thing[i])))
    return segments


def distort_sample(image: np.ndarray, task: _ImageTask, segments: list[tuple], params: DistortParams,
                   targets: ColorTargets | None, rngs: Sequence[np.random.Generator]
                   ) -> list[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]]:
    """One ``(image, valid, records)`` per generator for one image (HxWx3 uint8, the working resolution):
    the per-image operator of the stage, shared by ``resail distort`` (the K generators of
    :func:`variant_rng`) and the training loader's on-line mode (one generator per sample and epoch)."""
    chooser = targets.chooser(task.first, len(segments)) if targets is not None else None
    factor = resolution_factor(task.height, task.width, task.source_size, params.resolution_reference)
    return distort_variants(image, segments, chooser, rngs, params.probs, params.kinds,
                            scale_range=params.scale_range, paste_rules=params.paste_rules, paste=task.paste,
                            canvas=params.canvas, resolution_factor=factor)


def distort_task(task: _ImageTask, *, ctx: _Context) -> _ImageResult | _Failure:
    """All ``K`` variants of one image (runs in a worker; expected errors come back as a value)."""
    p = ctx.params
    ref = task.ref
    try:
        sample = _worker_adapter(ctx.fmt, ctx.data_root, ctx.options, ctx.resize).load(ref)
        segments = task_segments(sample, task, cache.process_db(ctx.cache_dir), ctx.cache_dir)
    except ResailError as e:
        return _Failure(type(e), e.path, e.problem)
    out = np.empty((p.variants, task.height, task.width, 3), np.uint8)
    valid = np.empty((p.variants, task.height, task.width), bool)
    records = []
    rngs = [variant_rng(p.seed, ref.split, ref.image_id, v) for v in range(p.variants)]
    for v, (o, m, recs) in enumerate(distort_sample(sample.image, task, segments, p, ctx.targets, rngs)):
        out[v], valid[v] = o, m
        records.append(recs)
    return _ImageResult(ref.split, ref.image_id, task.first, CompressedArray.of(out), CompressedArray.of(valid),
                        _columns(task, records))


# --------------------------------------------------------------------------------------------------
# Dataset driver
# --------------------------------------------------------------------------------------------------
def matched_segments(db: SegmentDB, rank: int = MATCH_RANK) -> np.ndarray:
    """bool ``[N]``: segments that have a retrieved candidate of ``rank`` — exactly the queries
    ``resail compose --rank rank`` pastes (its :func:`pipeline.compose.build.select_matches`); the
    others (pruned, below ``min_area`` as queries, or without an admissible candidate) stay black
    in the guidance and therefore in every distorted variant."""
    path = db.cache_dir / cache.RETRIEVAL_PARQUET
    if not path.is_file():
        raise CacheError(path, "missing (run `resail retrieve` first: the distorted ground truth shows only "
                               "segments with a retrieval match; or set distort.canvas: real)")
    table, _ = cache.read_retrieval(db.cache_dir, len(db))
    return select_matches(table, len(db), rank) >= 0


def _select_images(db: SegmentDB, splits: list[str]) -> list[dict]:
    rows = db.image_rows()
    present = {r["split"] for r in rows}
    for s in splits:
        if s not in present:
            raise CacheError(db.cache_dir / cache.IMAGES_PARQUET,
                             f"no images of split '{s}' in the segment database "
                             f"(it has: {', '.join(sorted(present)) or 'none'})")
    return [r for r in rows if r["split"] in splits]


def image_tasks(db: SegmentDB, rows: Sequence[dict], refs: Sequence[SampleRef], canvas: str) -> list[_ImageTask]:
    """What :func:`task_segments` / :func:`distort_sample` need per image of ``rows`` (database image
    rows, ``refs`` their samples): boxes, classes, thing flags, areas, which segments are pasted
    (:func:`matched_segments` on the black canvas, all on the real one) and the size on disk."""
    boxes = np.stack([db.col(c).astype(np.int64) for c in ("y0", "x0", "y1", "x1")], axis=1)
    class_ids, is_thing = db.col("class_id").astype(np.int64), db.col("is_thing").astype(bool)
    areas = db.col("area").astype(np.int64)
    paste = matched_segments(db) if canvas == "black" else np.ones(len(db), bool)
    tasks = []
    for r, ref in zip(rows, refs):
        a, b = int(r["first_segment"]), int(r["first_segment"]) + int(r["n_segments"])
        src = ((int(r["source_height"]), int(r["source_width"]))
               if r.get("source_height") is not None and r.get("source_width") is not None else None)
        tasks.append(_ImageTask(ref, int(r["height"]), int(r["width"]), a, boxes[a:b], class_ids[a:b],
                                is_thing[a:b], paste[a:b], areas[a:b], src))
    return tasks


def build_distortions(cache_dir: str | Path, params: DistortParams = DistortParams(), *,
                      splits: Sequence[str] | None = None, fmt: str | None = None,
                      data_root: str | Path | None = None, out_dir: str | Path | None = None, jobs: int = 1,
                      backend: str = "loky", scheduler: str | None = None, progress: bool = True) -> DistortSummary:
    """Write ``distortions.h5`` and ``distortions.parquet`` into ``out_dir`` (default ``cache_dir``).

    ``splits``: splits to distort *besides* the database split (which is always included first).
    ``fmt``/``data_root`` override the dataset recorded in the segment database. Expected problems
    raise :class:`CacheError` / :class:`DataError` / :class:`ConfigError` before anything is
    written, or while writing, in which case no output file is replaced.
    """
    t_start = time.perf_counter()
    cache_dir = Path(cache_dir)
    out_dir = Path(out_dir) if out_dir is not None else cache_dir
    try:
        db = cache.process_db(cache_dir)
        db_split = str(db.attrs.get("db_split", "train"))
        wanted = [db_split] + [s for s in dict.fromkeys(splits or []) if s != db_split]
        rows = _select_images(db, wanted)
        adapter = db.open_adapter(fmt, data_root)
        refs = db.sample_refs(adapter, rows)
        tasks = image_tasks(db, rows, refs, params.canvas)
        t0 = time.perf_counter()
        queries = np.zeros(len(db), bool)
        for t in tasks:
            queries[t.first:t.first + len(t.paste)] = t.paste
        targets = (build_color_targets(db, params.color_targets, db_split=db_split, jobs=jobs, backend=backend,
                                       scheduler=scheduler, progress=progress, queries=queries)
                   if params.color_may_fire else None)
        stats_s = time.perf_counter() - t0
        ctx = _Context(str(cache_dir), adapter.format, str(adapter.root), params, targets,
                       json.dumps(adapter.options, sort_keys=True), str(getattr(adapter, "spec", "") or ""))
        applied = {k: 0 for k in KINDS}
        n_segments = 0
        batches: list[pa.RecordBatch] = []
        targets_mode = targets.mode if targets is not None else "none"
        h5_path, pq_path = out_dir / cache.DISTORTIONS_H5, out_dir / cache.DISTORTIONS_PARQUET
        lineage = cache.make_lineage("distort", cache.upstream_ids(
            cache_dir, retrieval=targets_mode == "retrieval" or params.canvas == "black"),
                                     {"params": repr(params), "splits": wanted, "db_split": db_split})  #
        with cache.atomic_outputs(h5_path, pq_path) as (h5_tmp, pq_tmp):
            with h5py.File(h5_tmp, "w", libver="earliest", track_order=False) as f:
                cache.stamp_h5(f, lineage, cache.DISTORTIONS_SCHEMA_VERSION)
                for k, v in (("seed", int(params.seed)),
                             ("variants", int(params.variants)), ("kinds", ",".join(params.kinds)),
                             ("probs", json.dumps(params.probs, sort_keys=True)),
                             ("scale_range", json.dumps(list(params.scale_range))),
                             ("paste_rules", params.paste_rules), ("color_targets", targets_mode),
                             ("canvas", params.canvas), ("match_rank", MATCH_RANK), ("deflate", DEFLATE_IMPL),
                             ("resolution_reference", params.resolution_reference),
                             ("splits", ",".join(wanted)), ("db_split", db_split), ("n_images", len(tasks))):
                    f.attrs[k] = v
                results = ordered_map(distort_task, tasks, jobs=jobs, backend=backend, scheduler=scheduler,
                                      desc="distort", progress=progress, ctx=ctx)
                try:
                    for task, res in zip(tasks, results):
                        if isinstance(res, _Failure):
                            raise res.error(res.path, res.problem)
                        ds = res.variants.write(f, cache.image_key(res.split, res.image_id))
                        ds.attrs["first_segment"] = res.first
                        ds.attrs["n_segments"] = len(task.class_ids)
                        ds.attrs["n_pasted"] = int(task.paste.sum())
                        res.valid.write(f, cache.valid_key(res.split, res.image_id))
                        n_segments += len(task.class_ids)
                        batch = pa.record_batch([pa.array(res.columns[fl.name], type=fl.type)
                                                 for fl in cache.DISTORTION_SCHEMA], schema=cache.DISTORTION_SCHEMA)
                        for kind in KINDS:
                            applied[kind] += sum(kind in a.split("+") for a in res.columns["applied"])
                        batches.append(batch)
                finally:
                    results.close()
            table = pa.Table.from_batches(batches, schema=cache.DISTORTION_SCHEMA).combine_chunks()
            cache.write_parquet(cache.with_lineage(table, lineage), pq_tmp)
    finally:
        _release_dbs(cache_dir)
    return DistortSummary(len(tasks), n_segments, params.variants, wanted, targets_mode, applied, stats_s,
                          time.perf_counter() - t_start, out_dir)


# --------------------------------------------------------------------------------------------------
# Reading back and previews
# --------------------------------------------------------------------------------------------------
def _open_distortions(path: Path) -> h5py.File:
    if not path.is_file():
        raise CacheError(path, "missing (run `resail distort` first)")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise CacheError(path, f"not a readable HDF5 file ({e})") from None


def _read_key(cache_dir: str | Path, key: str, what: str, split: str, image_id: str) -> np.ndarray:
    path = Path(cache_dir) / cache.DISTORTIONS_H5
    if path.is_file():
        cache.check_stage_h5(path, cache_dir)  # schema, lineage
    with _open_distortions(path) as f:
        if key not in f:
            raise CacheError(path, f"no {what} for image {split}/{image_id}")
        return cache.read_h5(path, f[key])


def read_distortions(cache_dir: str | Path, split: str, image_id: str) -> np.ndarray:
    """The ``[K, H, W, 3]`` uint8 variants of one image."""
    return _read_key(cache_dir, cache.image_key(split, image_id), "variants", split, image_id)


def read_distortion_valid(cache_dir: str | Path, split: str, image_id: str) -> np.ndarray:
    """The ``[K, H, W]`` bool validity masks of one image's variants (pixels a segment was pasted on)."""
    return _read_key(cache_dir, cache.valid_key(split, image_id), "validity masks", split, image_id).astype(bool)


def _fit_height(img: np.ndarray, max_height: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h <= max_height:
        return img
    nw = max(1, round(w * max_height / h))
    return cv2.resize(img, (nw, max_height), interpolation=cv2.INTER_AREA)


def preview(cache_dir: str | Path, n: int, out_dir: str | Path | None = None, *, fmt: str | None = None,
            data_root: str | Path | None = None, max_height: int = 256, gap: int = 4) -> list[Path]:
    """PNG strips ``real | variant 1 … K`` of the first ``n`` images of ``distortions.h5`` (database
    image order) into ``out_dir`` (default ``CACHE/distort_preview``), named ``<split>_<image_id>.png``.
    Tiles taller than ``max_height`` are scaled down (aspect kept). Returns the written paths."""
    cache_dir = Path(cache_dir)
    out_dir = Path(out_dir) if out_dir is not None else cache_dir / PREVIEW_DIR
    if n <= 0:
        return []
    written: list[Path] = []
    with SegmentDB.open(cache_dir) as db, _open_distortions(cache_dir / cache.DISTORTIONS_H5) as f:
        adapter = db.open_adapter(fmt, data_root)
        rows = [r for r in db.image_rows() if cache.image_key(r["split"], r["image_id"]) in f][:n]
        for r, ref in zip(rows, db.sample_refs(adapter, rows)):
            real = adapter.load(ref).image
            variants = cache.read_h5(cache_dir / cache.DISTORTIONS_H5, f[cache.image_key(r["split"], r["image_id"])])
            strip = hstack([_fit_height(im, max_height) for im in (real, *variants)], gap=gap)
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{r['split']}_{r['image_id']}") + ".png"
            write_png(out_dir / name, strip)
            written.append(out_dir / name)
    return written
