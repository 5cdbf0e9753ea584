"""Decompose a whole dataset into the segment database (``resail decompose``).

Per image (in parallel, results consumed in input order): load through the adapter, split into
segments (:mod:`pipeline.decompose.segments`), normalise and bit-pack masks, cut crops, and take each
segment's lαβ mean/std (:mod:`pipeline.lab_colour`; what the colour distortion transfers, stored
so that ``resail distort`` need not decode every crop again). Then, once all
rows are known, flag retrieval candidates and queries (``pruning``: per image and class as the
released code, per class over the database split, or none) and write the
cache atomically (:mod:`pipeline.cache`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import cache
from pipeline.datasets.base import DatasetAdapter, SampleRef
from pipeline.datasets.resized import ResizedAdapter
from pipeline.errors import ConfigError, DataError
from pipeline.lab_colour import lab_stats_ln, ln_lms
from pipeline.parallel import ordered_map
from pipeline.decompose.segments import PRUNING_MODES, decompose, normalised_mask, pack_mask, pruning_flags


@dataclass(frozen=True)
class DecomposeParams:
    min_area: int = 16
    mask_size: int = 128
    preserved_ratio: float = 0.9
    db_split: str = "train"
    pruning: str = "image"  # image (released code: per image and class, queries too) | dataset | none

    def __post_init__(self) -> None:
        if self.pruning not in PRUNING_MODES:
            raise ConfigError(None, f"decompose.pruning must be one of {', '.join(PRUNING_MODES)}, got {self.pruning!r}")
        if not 0.0 < float(self.preserved_ratio) <= 1.0:
            raise ConfigError(None, f"decompose.preserved_ratio must be in (0, 1], got {self.preserved_ratio!r}")


@dataclass
class ImageSegments:
    """Everything one image contributes to the database (picklable, crosses process borders)."""

    ref: SampleRef
    height: int
    width: int
    has_instances: bool
    source_size: tuple[int, int]  # (H, W) on disk, before --resize
    rows: list[dict]
    packed: np.ndarray  # [n, S*S/8] uint8
    crop_pngs: list[bytes]  # cache.encode_crop of each segment
    lab: np.ndarray  # [n, 6] float64: lαβ mean, std of each segment's pixels (the colour distortion's targets)


@dataclass
class Failure:
    ref: SampleRef
    error: str


@dataclass
class DecomposeSummary:
    n_images: int
    n_segments: int
    n_candidates: int
    skipped: list[dict] = field(default_factory=list)
    n_pruned_queries: int = 0  # segments pruned per image (no guidance)
    images_per_split: dict[str, int] = field(default_factory=dict)  # decomposed (not skipped) images


def decompose_sample(ref: SampleRef, adapter: DatasetAdapter, params: DecomposeParams) -> ImageSegments | Failure:
    """One image → its segments. Bad input comes back as a :class:`Failure`, not an exception,
    so that ``--on-error skip`` can go on and ``fail`` can report the file."""
    try:
        sample = adapter.load(ref)
    except DataError as e:
        return Failure(ref, str(e))
    segs = decompose(sample.labels, sample.instances, adapter.classes(), params.min_area)
    S = params.mask_size
    packed = np.zeros((len(segs), S * S // 8), dtype=np.uint8)
    lab = np.zeros((len(segs), 6), dtype=np.float64)
    ln = ln_lms(sample.image).reshape(sample.image.shape) if segs else None
    rows, pngs = [], []
    for k, s in enumerate(segs):
        norm = normalised_mask(s.mask, S)
        packed[k] = pack_mask(norm)
        y0, x0, y1, x1 = s.box
        rows.append(dict(class_id=s.class_id, is_thing=s.is_thing, y0=y0, x0=x0, y1=y1, x1=x1, area=s.area,
                         box_area=s.box_area, norm_area=int(norm.sum()), source=s.source))
        pngs.append(cache.encode_crop(sample.image[y0:y1, x0:x1], s.mask))
        mean, std = lab_stats_ln(ln[y0:y1, x0:x1][s.mask].reshape(-1, 1, 3))
        lab[k, :3], lab[k, 3:] = mean, std
    h, w = sample.labels.shape
    return ImageSegments(ref, h, w, sample.instances is not None, sample.source_size or (h, w), rows, packed, pngs,
                         lab)


def collect_refs(adapter: DatasetAdapter, splits: list[str] | None) -> list[SampleRef]:
    """Every sample of the requested splits (all splits when ``None``). A split asked for by name
    that is absent or has no images is an error (a typo or an empty folder must not pass silently)."""
    available = adapter.splits()
    wanted = splits or available
    for s in wanted:
        if s not in available:
            raise DataError(adapter.root, f"split '{s}' not found (available: {', '.join(available) or 'none'})")
    by_split = {s: adapter.refs(s) for s in wanted}
    if splits:
        empty = [s for s in wanted if not by_split[s]]
        if empty:
            raise DataError(adapter.root, f"requested split(s) {', '.join(empty)} contain no images"
                                          + (" of the subset" if adapter.options.get("subset", "all") != "all" else ""))
    refs = [r for s in wanted for r in by_split[s]]
    if not refs:
        raise DataError(adapter.root, f"no images found in split(s) {', '.join(wanted)}")
    return refs


def build_segment_db(adapter: DatasetAdapter, out_dir: str | Path, *, splits: list[str] | None = None,
                     params: DecomposeParams = DecomposeParams(), jobs: int = 1, backend: str = "loky",
                     scheduler: str | None = None, on_error: str = "fail", progress: bool = True,
                     refs: list[SampleRef] | None = None) -> DecomposeSummary:
    """Write ``segments.parquet``, ``images.parquet``, ``segments.h5`` and ``skipped.json``.

    ``on_error="fail"`` stops at the first bad sample with a :class:`DataError` naming it and
    leaves no output; ``"skip"`` leaves it out and lists it in ``skipped.json``. ``refs``: an
    explicit list of samples (a subset, for tests and benchmarks) instead of every sample of ``splits``.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(on_error)
    out_dir = Path(out_dir)
    refs = collect_refs(adapter, splits) if refs is None else list(refs)
    if not refs:
        raise DataError(adapter.root, "no samples given")
    meta = adapter.classes()
    attrs = dict(dataset_format=adapter.format, data_root=str(adapter.root), classes=meta.to_json(),
                 adapter_options=json.dumps(adapter.options, sort_keys=True),
                 resize=str(adapter.spec) if isinstance(adapter, ResizedAdapter) else "",
                 min_area=params.min_area, preserved_ratio=params.preserved_ratio, pruning=params.pruning,
                 db_split=params.db_split)
    skipped: list[dict] = []
    digests: list[tuple[str, str, str]] = []  # per kept image (split, id, digest): content of its files (lineage, see pipeline.cache)
    # skipped.json belongs to the database it describes: published with it, never beside an older one.
    targets = (out_dir / cache.SEGMENTS_H5, out_dir / cache.SEGMENTS_PARQUET, out_dir / cache.IMAGES_PARQUET,
               out_dir / cache.SKIPPED_JSON)
    with cache.atomic_outputs(*targets) as (h5_tmp, seg_tmp, img_tmp, skipped_tmp):
        writer = cache.SegmentWriter(h5_tmp, params.mask_size, attrs)
        results = ordered_map(decompose_sample, refs, jobs=jobs, backend=backend, scheduler=scheduler,
                              desc="decompose", progress=progress, adapter=adapter, params=params)
        try:
            for res in results:
                if isinstance(res, Failure):
                    if on_error == "fail":
                        raise DataError(None, res.error)
                    skipped.append({"split": res.ref.split, "image_id": res.ref.image_id,
                                    "image": str(res.ref.image), "error": res.error})
                    continue
                writer.add_image(res.ref.image_id, res.ref.split, res.height, res.width, res.has_instances,
                                 res.rows, res.packed, res.crop_pngs, source_size=res.source_size, lab=res.lab)
                digests.append((res.ref.split, res.ref.image_id, cache.sample_digest(res.ref)))
            n_images = len(refs) - len(skipped)
            if n_images == 0:
                # Nothing is written: the previous database and its skipped.json stay as they were.
                raise DataError(None, f"every sample failed ({len(skipped)}), nothing written; first: {skipped[0]['error']}")
            cols = writer.columns()
            split_arr = np.asarray(cols["split"], dtype=object)
            image_keys = np.repeat(np.arange(n_images), writer.segments_per_image())
            flags, query = pruning_flags(params.pruning, image_keys, np.asarray(cols["class_id"]),
                                         np.asarray(cols["area"]), split_arr == params.db_split, params.preserved_ratio)
            lineage = cache.make_lineage("decompose", {"dataset": cache.dataset_digest(digests)},
                                         {k: v for k, v in attrs.items() if k != "data_root"} | {"mask_size": params.mask_size})
            writer.finish(flags, seg_tmp, img_tmp, lineage=lineage, digests=[d for _, _, d in digests], query=query)
            skipped_tmp.write_text(json.dumps(skipped, indent=2, sort_keys=True) + "\n")
        finally:
            results.close()
            writer.close()
    per_split: dict[str, int] = {}
    for split, _, _ in digests:
        per_split[split] = per_split.get(split, 0) + 1
    return DecomposeSummary(n_images, writer.n_segments, int(flags.sum()), skipped, int((~query).sum()), per_split)

