"""Decompose a whole dataset into the segment database (``resail decompose``).

Per image (in parallel, results consumed in input order): load through the adapter, split into
segments (:mod:`pipeline.segments`), normalise and bit-pack masks, cut crops. Then, once all
rows are known, flag retrieval candidates per class over the database split and write the
cache atomically (:mod:`pipeline.cache`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import cache
from pipeline.datasets.base import DatasetAdapter, SampleRef
from pipeline.errors import DataError
from pipeline.parallel import ordered_map
from pipeline.segments import candidate_flags, decompose, normalised_mask, pack_mask


@dataclass(frozen=True)
class DecomposeParams:
    min_area: int = 16
    mask_size: int = 128
    preserved_ratio: float = 0.9
    db_split: str = "train"


@dataclass
class ImageSegments:
    """Everything one image contributes to the database (picklable, crosses process borders)."""

    ref: SampleRef
    height: int
    width: int
    has_instances: bool
    rows: list[dict]
    packed: np.ndarray  # [n, S*S/8] uint8
    crop_pngs: list[bytes]  # cache.encode_crop of each segment


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
    rows, pngs = [], []
    for k, s in enumerate(segs):
        norm = normalised_mask(s.mask, S)
        packed[k] = pack_mask(norm)
        y0, x0, y1, x1 = s.box
        rows.append(dict(class_id=s.class_id, is_thing=s.is_thing, y0=y0, x0=x0, y1=y1, x1=x1, area=s.area,
                         box_area=s.box_area, norm_area=int(norm.sum()), source=s.source))
        pngs.append(cache.encode_crop(sample.image[y0:y1, x0:x1], s.mask))
    h, w = sample.labels.shape
    return ImageSegments(ref, h, w, sample.instances is not None, rows, packed, pngs)


def collect_refs(adapter: DatasetAdapter, splits: list[str] | None) -> list[SampleRef]:
    available = adapter.splits()
    wanted = splits or available
    for s in wanted:
        if s not in available:
            raise DataError(adapter.root, f"split '{s}' not found (available: {', '.join(available) or 'none'})")
    refs = [r for s in wanted for r in adapter.refs(s)]
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
                 min_area=params.min_area, preserved_ratio=params.preserved_ratio, db_split=params.db_split)
    skipped: list[dict] = []
    targets = (out_dir / cache.SEGMENTS_H5, out_dir / cache.SEGMENTS_PARQUET, out_dir / cache.IMAGES_PARQUET)
    with cache.atomic_outputs(*targets) as (h5_tmp, seg_tmp, img_tmp):
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
                                 res.rows, res.packed, res.crop_pngs)
            n_images = len(refs) - len(skipped)
            if n_images == 0:
                cache.write_json_atomic(out_dir / cache.SKIPPED_JSON, skipped)
                raise DataError(adapter.root, f"every sample failed ({len(skipped)}); see {out_dir / cache.SKIPPED_JSON}")
            cols = writer.columns()
            split_arr = np.asarray(cols["split"], dtype=object)
            flags = candidate_flags(np.asarray(cols["class_id"]), np.asarray(cols["area"]),
                                    split_arr == params.db_split, params.preserved_ratio)
            writer.finish(flags, seg_tmp, img_tmp)
        finally:
            results.close()
            writer.close()
    cache.write_json_atomic(out_dir / cache.SKIPPED_JSON, skipped)
    return DecomposeSummary(n_images, writer.n_segments, int(flags.sum()), skipped)

