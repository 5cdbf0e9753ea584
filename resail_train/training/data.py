"""Training data from a stage cache: real image, dense labels, guidance, distorted ground truth.

:class:`CacheDataset` reads, per image of one split of the segment database:

* the real image and label map through the dataset adapter (format and root recorded by
  ``resail decompose`` in ``segments.h5``; overridable), labels mapped to dense indices
  0..C-1 with :meth:`ClassMeta.lookup_table` (ignore → C);
* the retrieval guidance: ``guidance_sampling="rank0"`` reads ``guidance.h5`` (rank-0 composite);
  ``"topk"`` composes it on the fly with :func:`pipeline.compose.composition.compose_guidance`, each
  segment pasting a rank drawn uniformly among its admissible retrieved candidates (at most
  ``topk``) — a fresh draw per sample per epoch; segments without a candidate stay black;
* one distorted ground-truth variant from ``distortions.h5`` (``[K, H, W, 3]``), drawn uniformly
  per sample per epoch, and its validity mask (``valid_key``: where a distorted segment was pasted)
  when the file has one (``distorted_valid``); or, with ``distortion="online"``, a fresh one per
  (seed, epoch, index), made by the distort stage's own per-image operator
  (:class:`pipeline.distort.fresh.FreshDistortions`) with ``default_rng([seed, epoch, index, 2])``,
  and its validity mask — no ``distortions.h5`` needed (the segment database, the dataset and
  ``retrieval.parquet`` are); the parameters: ``distort_params``, else those ``distortions.h5``
  records when it exists, else :class:`pipeline.distort.build.DistortParams`'s defaults;
* for the Table 4 guidance modes (:mod:`resail_train.guidance_modes`), on request:
  ``original_gt`` — the real image, black where the retrieval guidance is black (its valid map:
  ``guidance.h5``'s, or the top-k composite's); ``guidance_distorted`` — the retrieval guidance with
  every pasted segment distorted by :func:`pipeline.distort.distortions.distort_image`, the function that
  made the distorted ground truth, with the parameters recorded in ``distortions.h5`` (defaults of
  :class:`pipeline.distort.build.DistortParams` without it). A segment is its query box with the
  mask "query mask ∩ guidance valid" (the pixels the guidance really shows for it); colour targets
  are drawn uniformly among the query's retrieved candidates, as the distort stage does. Done on
  line, with ``default_rng([seed, epoch, index, 1])``: a fresh, reproducible distortion per
  (image, epoch), like the released code's on-line distortion, and no extra cache or stage for an
  ablation row;
* optionally the instance edge map (SPADE ``get_edges``: a pixel whose instance id differs from a
  4-neighbour's), when asked for and the database has instance maps.

Geometry (identical for image, labels, guidance, distortion and instances): resize to
``load_size`` (``[H, W]``; ``None`` keeps the original size; RGB with
:func:`pipeline.resize.resize_image` — PIL bicubic, antialiased when shrinking, as SPADE and the
released code load images — labels/instances/masks nearest with
:func:`pipeline.resize.resize_index_map`), then a crop of
``crop_size`` (random in training, centred otherwise) and, in training with ``flip``, a
horizontal flip with probability 0.5.

Randomness: every random choice of a sample (flip, crop offset, distortion variant, top-k ranks)
comes from ``numpy.random.default_rng([seed, epoch, index])`` — a function of the sample and the
epoch only, so the data do not depend on the number of DataLoader workers, their scheduling, or on
a restart. Keys are ``(epoch, index)`` pairs produced by :class:`EpochBatchSampler` (a plain int
key means epoch 0).

HDF5 handles are opened lazily in the process that reads (first ``__getitem__`` in each worker)
and re-opened when the process id changes, so no handle crosses a ``fork``; the dataset pickles
without them. Every read of their data goes through :func:`pipeline.cache.lineage.read_h5`: a damaged
chunk is one :class:`CacheError` line naming the file, the dataset and the stage to rerun, which a
DataLoader worker hands back to the main process as that same error.

Sample dict (tensors, CHW): ``image`` float32 [3, h, w] in [-1, 1]; ``labels`` int64 [h, w];
``guidance`` / ``distorted`` / ``guidance_distorted`` / ``original_gt`` float32 [3, h, w] in
[-1, 1] (when enabled; black guidance = -1); ``distorted_valid`` bool [h, w] (with ``distorted``,
when ``distortions.h5`` stores it); ``edges`` float32 [1, h, w] (when enabled); ``index`` int; ``image_id`` str.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pipeline import cache
from pipeline.cache import SegmentDB
from pipeline.cache.lineage import read_h5
from pipeline.datasets.base import ClassMeta
from pipeline.errors import CacheError, ConfigError, DataError, ResailError
from pipeline.resize import resize_image, resize_index_map

GUIDANCE_SAMPLING = ("rank0", "topk")  # data.guidance_sampling: which retrieved candidate a sample pastes
CHUNK_CACHE_BYTES = 32 << 20
GUIDANCE_DISTORT_STREAM = 1  # default_rng([seed, epoch, index, 1]): the on-line guidance distortion's own stream
DISTORTION_SOURCES = ("cached", "online")  # data.distortion: K pre-generated variants, or one fresh per sample
DISTORTED_GT_STREAM = 2  # default_rng([seed, epoch, index, 2]): the on-line distorted ground truth's own stream


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """Where a sample's pixels come from: resize target, crop box, flip."""

    resize: tuple[int, int] | None  # (H, W) or None
    crop: tuple[int, int, int, int]  # y0, x0, h, w in the resized image
    flip: bool


def plan_geometry(size: tuple[int, int], load_size: Sequence[int] | None, crop_size: Sequence[int],
                  train: bool, flip: bool, rng: np.random.Generator) -> Geometry:
    """Draw the geometry of one sample (order of draws: flip, crop y, crop x)."""
    h, w = (int(load_size[0]), int(load_size[1])) if load_size is not None else size
    ch, cw = int(crop_size[0]), int(crop_size[1])
    if ch > h or cw > w:
        raise ConfigError(None, f"crop_size {ch}x{cw} (HxW) is larger than the {'load_size' if load_size else 'image'} "
                                f"{h}x{w}; set data.load_size")
    do_flip = bool(rng.random() < 0.5) if (train and flip) else False
    if train:
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
    else:
        y0, x0 = (h - ch) // 2, (w - cw) // 2
    return Geometry((h, w) if load_size is not None else None, (y0, x0, ch, cw), do_flip)


def apply_geometry(arr: np.ndarray, geo: Geometry, nearest: bool) -> np.ndarray:
    """Resize (antialiased bicubic for uint8 images, nearest for maps), crop and flip an H×W(×C) array."""
    if geo.resize is not None and tuple(arr.shape[:2]) != geo.resize:
        th, tw = geo.resize
        arr = resize_index_map(arr, th, tw) if nearest else resize_image(arr, th, tw)
    y0, x0, ch, cw = geo.crop
    arr = arr[y0:y0 + ch, x0:x0 + cw]
    if geo.flip:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


def instance_edges(inst: np.ndarray) -> np.ndarray:
    """SPADE's edge map: True where the instance id differs from a 4-neighbour's."""
    e = np.zeros(inst.shape, dtype=bool)
    dx = inst[:, 1:] != inst[:, :-1]
    dy = inst[1:, :] != inst[:-1, :]
    e[:, 1:] |= dx
    e[:, :-1] |= dx
    e[1:, :] |= dy
    e[:-1, :] |= dy
    return e


def rgb_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 → float32 [3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(127.5).sub_(1.0)


def tensor_to_rgb(t: torch.Tensor) -> np.ndarray:
    """float [3, H, W] in [-1, 1] → H×W×3 uint8."""
    x = ((t.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------- sampler
class EpochBatchSampler(Sampler):
    """Seeded, resumable batch sampler; yields lists of ``(epoch, index)`` keys.

    Epoch ``e`` uses the permutation ``default_rng([seed, e]).permutation(n)`` (identity without
    ``shuffle``). Under DDP (``world_size > 1``) it shards like ``DistributedSampler``: the order is
    padded by wrapping to a multiple of ``world_size`` and rank ``r`` takes every ``world_size``-th
    item from ``r``. Incomplete batches are dropped (BatchNorm needs whole batches).
    :meth:`set_position` selects the epoch and the number of batches already done in it; one pass
    of ``iter()`` yields the rest of that epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.n, self.batch_size, self.seed, self.shuffle = int(n), int(batch_size), int(seed), bool(shuffle)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        per_rank = math.ceil(self.n / self.world_size) if self.n else 0
        return per_rank // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        idx = (np.random.default_rng([self.seed, int(epoch)]).permutation(self.n) if self.shuffle
               else np.arange(self.n))
        if self.world_size > 1:
            total = math.ceil(self.n / self.world_size) * self.world_size
            idx = np.concatenate([idx, idx[:total - self.n]]) if total > self.n else idx
            idx = idx[self.rank::self.world_size]
        return idx

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start_batch": self.start_batch, "seed": self.seed, "n": self.n,
                "batch_size": self.batch_size, "world_size": self.world_size}

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        idx = self.order(self.epoch)
        b = self.batch_size
        for k in range(self.start_batch, self.batches_per_epoch):
            yield [(self.epoch, int(i)) for i in idx[k * b:(k + 1) * b]]


# --------------------------------------------------------------------------- dataset
def check_working_resolution(db: SegmentDB, load_size: tuple[int, int] | None, allow_resize: bool) -> None:
    """Refuse a ``data.load_size`` that disagrees with the resolution the cache was decomposed at
    (``resail decompose --resize``): the loader would rescale caches made for another size. The
    config key ``data.allow_resize: true`` accepts it."""
    from pipeline.datasets.resized import ResizeSpec

    spec = ResizeSpec.parse(db.resize)
    if spec is None or allow_resize or spec.agrees_with(load_size):
        return
    want = f"{spec.height}x{spec.width}" if spec.short_side is None else f"shorter side {spec.short_side}"
    raise ConfigError(db.cache_dir / cache.SEGMENTS_H5,
                      f"data.load_size {list(load_size)} disagrees with the cache's working resolution ({want}, "
                      f"`resail decompose --resize {spec}`): set data.load_size to match it (or null), re-run decompose "
                      "at the size you train, or set data.allow_resize: true")


class CacheDataset(Dataset):
    """``CacheDataset(cache_dir, split="train", *, load_size, crop_size, train=True, flip=True,
    guidance="rank0"|"topk"|None, distortions=True, instance_edges=False, topk=10, seed=0,
    data_root=None, fmt=None, allow_resize=False, original_gt=False, distorted_retrieval=False,
    distortion="cached", distort_params=None)`` — see the module docstring (``original_gt`` and
    ``distorted_retrieval`` need ``guidance``; ``distortion="online"`` draws the distorted ground truth
    fresh with the :class:`pipeline.distort.build.DistortParams` ``distort_params``)."""

    def __init__(self, cache_dir: str | Path, split: str = "train", *, load_size: Sequence[int] | None,
                 crop_size: Sequence[int], train: bool = True, flip: bool = True, guidance: str | None = "rank0",
                 distortions: bool = True, instance_edges: bool = False, topk: int = 10, seed: int = 0,
                 data_root: str | Path | None = None, fmt: str | None = None, allow_resize: bool = False,
                 original_gt: bool = False, distorted_retrieval: bool = False, distortion: str = "cached",
                 distort_params=None) -> None:
        self.cache_dir = Path(cache_dir)
        if distortion not in DISTORTION_SOURCES:
            raise ConfigError(None, f"distortion must be one of {DISTORTION_SOURCES}, got {distortion!r}")
        if guidance is not None and guidance not in GUIDANCE_SAMPLING:
            raise ConfigError(None, f"guidance sampling must be one of {GUIDANCE_SAMPLING}, got {guidance!r}")
        if guidance is None and (original_gt or distorted_retrieval):
            raise ConfigError(None, "original_gt / distorted_retrieval are derived from the retrieval guidance: "
                                    "give guidance='rank0' or 'topk'")
        self.original_gt, self.distorted_retrieval = bool(original_gt), bool(distorted_retrieval)
        need_segments = guidance == "topk" or self.distorted_retrieval  # crops + retrieval table on line
        self.split, self.train, self.flip, self.seed = split, bool(train), bool(flip), int(seed)
        self.load_size = None if load_size is None else (int(load_size[0]), int(load_size[1]))
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.guidance_mode, self.use_distortions, self.topk = guidance, bool(distortions), int(topk)

        with SegmentDB.open(self.cache_dir) as db:
            self.meta: ClassMeta = db.meta
            check_working_resolution(db, self.load_size, allow_resize)
            rows = db.image_rows(split)
            self.has_instances = any(bool(r["has_instances"]) for r in db.image_rows())
            if need_segments:
                self._seg_cols = {c: db.col(c) for c in ("y0", "x0", "y1", "x1", "is_thing", "area", "class_id")}
                self._crop_offsets = read_h5(db.h5_path, db.h5["crop_offsets"])
            if not rows:
                raise CacheError(self.cache_dir / cache.IMAGES_PARQUET,
                                 f"no images of split '{split}' in the segment database")
            self.adapter = db.open_adapter(fmt, data_root)
            if self.adapter.classes() != self.meta:
                raise DataError(self.adapter.root, "class list of the dataset differs from the one the segment "
                                                   "database was built with (re-run `resail decompose`)")
            self.refs = db.sample_refs(self.adapter, rows)
        self.rows = rows
        self.instance_edges = bool(instance_edges) and self.has_instances
        self.lut = self.meta.lookup_table()
        self.num_classes = self.meta.num_classes

        self.guidance_path = self.cache_dir / cache.GUIDANCE_H5
        self.distortions_path = self.cache_dir / cache.DISTORTIONS_H5
        self.segments_path = self.cache_dir / cache.SEGMENTS_H5
        if guidance == "rank0" and not self.guidance_path.is_file():
            raise CacheError(self.guidance_path, "missing (run `resail compose` first)")
        self.fresh = None  # FreshDistortions in on-line mode
        cached = self.use_distortions and distortion == "cached"
        if cached and not self.distortions_path.is_file():
            raise CacheError(self.distortions_path, "missing (run `resail distort` first, or set "
                                                    "data.distortion: online)")
        # Lineage (pipeline.cache): the files were built from this segment DB; current schema.
        for used, path in ((guidance == "rank0", self.guidance_path), (cached, self.distortions_path)):
            if used:
                cache.check_stage_h5(path, self.cache_dir)
        self.has_distorted_valid = cached and self._first_has(self.distortions_path)
        if self.use_distortions and distortion == "online":
            from pipeline.distort.fresh import FreshDistortions, params_from_h5

            if distort_params is None:
                from pipeline.distort.build import DistortParams

                distort_params = (params_from_h5(self.distortions_path) if self.distortions_path.is_file()
                                  else DistortParams())
            self.fresh = FreshDistortions.open(self.cache_dir, distort_params, rows, self.adapter)
            self.has_distorted_valid = True
        self._distort_kw = self._guidance_distortion_params() if self.distorted_retrieval else None
        self._stats_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if need_segments:
            table, _ = cache.read_retrieval(self.cache_dir, len(self._seg_cols["y0"]))
            q = table.column("query_id").to_numpy().astype(np.int64)
            r = table.column("rank").to_numpy().astype(np.int64)
            c = table.column("candidate_id").to_numpy().astype(np.int64)
            order = np.lexsort((r, q))
            q, r, c = q[order], r[order], c[order]
            n_seg = len(self._seg_cols["y0"])
            self._ret_start = np.searchsorted(q, np.arange(n_seg), side="left")
            self._ret_count = np.searchsorted(q, np.arange(n_seg), side="right") - self._ret_start
            self._ret_cand = c
        self._handles: dict[str, h5py.File] = {}
        self._pid = None

    def _first_has(self, path: Path) -> bool:
        """Whether ``path`` stores valid maps (checked on the split's first image; then required for all)."""
        row = self.rows[0]
        try:
            with h5py.File(path, "r") as f:
                return cache.valid_key(row["split"], row["image_id"]) in f
        except OSError as e:
            raise CacheError(path, f"not a readable HDF5 file ({e})") from None

    def _guidance_distortion_params(self) -> dict:
        """Keyword arguments of :func:`distort_image` for the guidance: those ``distortions.h5`` was made with."""
        import json

        from pipeline.distort.build import DistortParams

        attrs: dict = {}
        if self.distortions_path.is_file():
            with h5py.File(self.distortions_path, "r") as f:
                attrs = dict(f.attrs)
        try:
            p = DistortParams(kinds=str(attrs["kinds"]) if "kinds" in attrs else None,
                              probs=json.loads(attrs["probs"]) if "probs" in attrs else {},
                              scale_range=tuple(json.loads(attrs["scale_range"])) if "scale_range" in attrs
                              else (0.5, 1.0),
                              paste_rules=str(attrs.get("paste_rules", "a1")))
        except (ValueError, TypeError, KeyError, ResailError) as e:
            raise CacheError(self.distortions_path, f"distortion parameters in the attributes are unreadable ({e})") \
                from None
        return {"probs": p.probs, "kinds": p.kinds, "scale_range": p.scale_range, "paste_rules": p.paste_rules}

    # -- pickling: never carry open HDF5 handles into another process
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_pid"] = None
        return state

    def _file(self, path: Path) -> h5py.File:
        if self._pid != os.getpid():
            self._handles = {}  # inherited over fork: drop without closing (the parent owns them)
            self._pid = os.getpid()
        f = self._handles.get(str(path))
        if f is None:
            try:
                f = h5py.File(path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
            except FileNotFoundError:
                raise CacheError(path, "missing") from None
            except OSError as e:
                raise CacheError(path, f"not a readable HDF5 file ({e})") from None
            self._handles[str(path)] = f
        return f

    def close(self) -> None:
        if self.fresh is not None:
            self.fresh.close()
        if self._pid == os.getpid():
            for f in self._handles.values():
                if f.id.valid:
                    f.close()
        self._handles = {}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def label_nc(self) -> int:
        """Channels of the generator's semantic input: C one-hot (+1 edge map)."""
        return self.num_classes + (1 if self.instance_edges else 0)

    # -- cached arrays
    def _dataset(self, path: Path, key: str, row: dict, what: str) -> tuple[h5py.Dataset, int, int]:
        """One image's HDF5 dataset and the image's recorded (H, W); a missing key is a stale cache."""
        f = self._file(path)
        if key not in f:
            raise CacheError(path, f"no {what} for {row['split']}/{row['image_id']} (stale cache: re-run the stage)")
        return f[key], int(row["height"]), int(row["width"])

    def _read_rgb(self, path: Path, row: dict, what: str, variant_rng: np.random.Generator | None) -> np.ndarray:
        return self._read_rgb_variant(path, row, what, variant_rng)[0]

    def _read_rgb_variant(self, path: Path, row: dict, what: str,
                          variant_rng: np.random.Generator | None) -> tuple[np.ndarray, int | None]:
        """The image (one variant drawn from ``variant_rng`` of a ``[K, H, W, 3]`` dataset) and its variant."""
        key = cache.image_key(row["split"], row["image_id"])
        ds, h, w = self._dataset(path, key, row, what)
        if variant_rng is not None:
            if ds.ndim != 4 or tuple(ds.shape[1:]) != (h, w, 3) or ds.shape[0] < 1:
                raise CacheError(path, f"{key} has shape {ds.shape}, expected [K, {h}, {w}, 3]")
            variant = int(variant_rng.integers(ds.shape[0]))
            arr = read_h5(path, ds, variant)
        else:
            variant = None
            if tuple(ds.shape) != (h, w, 3):
                raise CacheError(path, f"{key} has shape {ds.shape}, expected ({h}, {w}, 3)")
            arr = read_h5(path, ds)
        if arr.dtype != np.uint8:
            raise CacheError(path, f"{key} has dtype {arr.dtype}, expected uint8")
        return arr, variant

    def _read_valid(self, path: Path, row: dict, variant: int | None) -> np.ndarray:
        """The bool H×W valid map of an image (``variant`` of a ``[K, H, W]`` one) stored beside its image."""
        key = cache.valid_key(row["split"], row["image_id"])
        ds, h, w = self._dataset(path, key, row, "valid map")
        ok = tuple(ds.shape) == (h, w) if variant is None else \
            (ds.ndim == 3 and tuple(ds.shape[1:]) == (h, w) and ds.shape[0] > variant)
        if not ok:
            want = f"({h}, {w})" if variant is None else f"[K > {variant}, {h}, {w}]"
            raise CacheError(path, f"{key} has shape {ds.shape}, expected {want}")
        return np.asarray(read_h5(path, ds, Ellipsis if variant is None else variant), dtype=bool)

    def _crop(self, seg: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB and mask crop of one segment of ``segments.h5`` (checked against its box)."""
        f = self._file(self.segments_path)
        png, off, cols = f["crop_png"], self._crop_offsets, self._seg_cols
        y0, x0, y1, x1 = (int(cols[k][seg]) for k in ("y0", "x0", "y1", "x1"))
        data = read_h5(self.segments_path, png, slice(int(off[seg]), int(off[seg + 1])))
        try:
            rgb, mask = cache.decode_crop(data)
        except ValueError as e:
            raise CacheError(self.segments_path, f"crop of segment {seg}: {e}") from None
        if mask.shape != (y1 - y0, x1 - x0):
            raise CacheError(self.segments_path, f"crop of segment {seg} does not match its box")
        return rgb, mask

    def _lab_stats(self, seg: int) -> tuple[np.ndarray, np.ndarray] | None:
        """lαβ (mean, std) of a segment's masked crop (memoised per process; None when empty)."""
        from pipeline.distort.distortions import lab_stats

        hit = self._stats_cache.get(seg)
        if hit is None:
            rgb, mask = self._crop(seg)
            if not mask.any():
                return None
            if len(self._stats_cache) >= 4096:
                self._stats_cache.clear()
            hit = self._stats_cache[seg] = lab_stats(rgb[mask])
        return hit

    def _distort_guidance(self, row: dict, guidance: np.ndarray, valid: np.ndarray,
                          rng: np.random.Generator) -> np.ndarray:
        """The retrieval guidance distorted like the ground truth (module docstring)."""
        from pipeline.distort.distortions import distort_image

        cols = self._seg_cols
        segments, ids = [], []
        first, n = int(row["first_segment"]), int(row["n_segments"])
        for s in range(first, first + n):
            if not self._ret_count[s]:
                continue  # no match: black in the guidance, nothing to distort
            y0, x0, y1, x1 = (int(cols[k][s]) for k in ("y0", "x0", "y1", "x1"))
            mask = self._crop(s)[1] & valid[y0:y1, x0:x1]
            if mask.any():
                segments.append(((y0, x0, y1, x1), mask, int(cols["class_id"][s]), bool(cols["is_thing"][s])))
                ids.append(s)

        def color_target(i: int, class_id: int, crng: np.random.Generator):
            s = ids[i]
            count = int(self._ret_count[s])
            target = int(self._ret_cand[self._ret_start[s] + int(crng.integers(count))])
            stats = self._lab_stats(target)
            return None if stats is None else (stats[0], stats[1], target)

        out, _, _ = distort_image(guidance, segments, color_target, rng, canvas="black", **self._distort_kw)
        return out

    def _compose_topk(self, row: dict, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A top-k composite of one image and its valid map (ranks drawn from ``rng``)."""
        from pipeline.compose.composition import QuerySegment, compose_guidance

        cols, crop = self._seg_cols, self._crop

        first, n = int(row["first_segment"]), int(row["n_segments"])
        queries, matches = [], []
        for s in range(first, first + n):
            box = tuple(int(cols[k][s]) for k in ("y0", "x0", "y1", "x1"))
            queries.append(QuerySegment(box, crop(s)[1], bool(cols["is_thing"][s]), int(cols["area"][s])))
            count = min(int(self._ret_count[s]), self.topk)
            matches.append(crop(int(self._ret_cand[self._ret_start[s] + int(rng.integers(count))])) if count else None)
        return compose_guidance(labels, self.meta, queries, matches)

    # -- one sample
    def __getitem__(self, key) -> dict:
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (0, int(key))
        row, ref = self.rows[index], self.refs[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        sample = self.adapter.load(ref)
        h, w = int(row["height"]), int(row["width"])
        if sample.labels.shape != (h, w):
            raise DataError(ref.label, f"label map is {sample.labels.shape[1]}x{sample.labels.shape[0]} but the segment "
                                       f"database recorded {w}x{h} (dataset changed: re-run `resail decompose`)")
        geo = plan_geometry((h, w), self.load_size, self.crop_size, self.train, self.flip, rng)
        dense = self.lut[np.clip(sample.labels, 0, len(self.lut) - 1)]
        if (dense < 0).any():
            raise DataError(ref.label, "label ids outside the class list")
        out = {
            "image": rgb_to_tensor(apply_geometry(sample.image, geo, nearest=False)),
            "labels": torch.from_numpy(apply_geometry(dense, geo, nearest=True).astype(np.int64)),
            "index": index,
            "image_id": row["image_id"],
        }
        if self.fresh is not None:
            drng = np.random.default_rng([self.seed, epoch, index, DISTORTED_GT_STREAM])
            dist, dv, _ = self.fresh.distort(index, sample, drng)
            out["distorted"] = rgb_to_tensor(apply_geometry(dist, geo, nearest=False))
            out["distorted_valid"] = torch.from_numpy(apply_geometry(dv, geo, nearest=True))
        elif self.use_distortions:
            dist, variant = self._read_rgb_variant(self.distortions_path, row, "distortions", rng)
            out["distorted"] = rgb_to_tensor(apply_geometry(dist, geo, nearest=False))
            if self.has_distorted_valid:
                dv = self._read_valid(self.distortions_path, row, variant)
                out["distorted_valid"] = torch.from_numpy(apply_geometry(dv, geo, nearest=True))
        if self.guidance_mode is not None:
            valid = None
            if self.guidance_mode == "rank0":
                g = self._read_rgb(self.guidance_path, row, "guidance", None)
                if self.original_gt or self.distorted_retrieval:
                    valid = self._read_valid(self.guidance_path, row, None)
            else:
                g, valid = self._compose_topk(row, sample.labels, rng)
            out["guidance"] = rgb_to_tensor(apply_geometry(g, geo, nearest=False))
            if self.original_gt:
                masked = np.where(valid[..., None], sample.image, 0).astype(np.uint8)
                out["original_gt"] = rgb_to_tensor(apply_geometry(masked, geo, nearest=False))
            if self.distorted_retrieval:
                drng = np.random.default_rng([self.seed, epoch, index, GUIDANCE_DISTORT_STREAM])
                gd = self._distort_guidance(row, g, valid, drng)
                out["guidance_distorted"] = rgb_to_tensor(apply_geometry(gd, geo, nearest=False))
        if self.instance_edges:
            inst = sample.instances if sample.instances is not None else np.zeros((h, w), np.int64)
            edges = instance_edges(apply_geometry(inst, geo, nearest=True))
            out["edges"] = torch.from_numpy(edges.astype(np.float32))[None]
        return out


def collate(batch: list[dict]) -> dict:
    """Stack tensors, keep ints/strings as lists."""
    out = {}
    for k in batch[0]:
        v = [b[k] for b in batch]
        out[k] = torch.stack(v) if isinstance(v[0], torch.Tensor) else v
    return out


def worker_init(worker_id: int) -> None:
    """DataLoader worker start: one thread for cv2/torch (the main process owns the cores)."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
