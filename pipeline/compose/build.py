"""Retrieval guidance for a whole dataset (``resail compose``): segment DB + retrieval → guidance.h5.

For every image of the segment database (all splits, database order), its segments are the
queries; each query takes the candidate of rank ``R`` (default 0) from ``retrieval.parquet``, or
the rank given for it in ``overrides`` ({query segment id: rank}, used by editing). The label map
is loaded through the dataset adapter (for the thing/stuff maps of rules 3–4) and
:func:`pipeline.compose.composition.compose_guidance` builds the image.

**Ours** (choices):

* A query with no retrieval rows (no admissible candidate), or with fewer than ``R + 1`` ranks,
  is black: a rank that does not exist is not replaced by a worse-or-better one, so ``--rank R``
  always means "the R-th best admissible candidate, or nothing".
* Workers open the segment database themselves (once per process, cached and re-opened if the
  files change) and read the crops they need; tasks carry only ids and the sample reference
  (no pixels cross process borders).
  The main process only writes ``guidance.h5``, in database image order, so its bytes do not
  depend on ``jobs``/backend.
* ``guidance.h5`` datasets: ``image_key`` uint8 H×W×3 and ``valid_key`` bool H×W, gzip level 4,
  ``track_times=False``. Root attrs: ``schema_version``, ``lineage`` (segments + retrieval ids and
  the rank/overrides, see :mod:`pipeline.cache`), ``rank`` (int, or ``"per-segment"`` when
  overrides are given, then ``base_rank`` and ``overrides`` JSON too), ``n_images``,
  ``retrieval`` (the retrieval params JSON).
* Each worker re-hashes its sample's files and compares them with the digest decompose recorded:
  a label edited after decompose (even at the same size) is an error, not a silently wrong paste.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from pipeline import cache
from pipeline.cache import SegmentDB
from pipeline.compose.composition import QuerySegment, compose_guidance
from pipeline.datasets.base import DatasetAdapter, SampleRef
from pipeline.errors import CacheError, ConfigError, DataError, ResailError
from pipeline.deflate import DEFLATE_IMPL, CompressedArray
from pipeline.parallel import ordered_map

PREVIEW_DIR = "guidance_preview"


# --------------------------------------------------------------------------- dataset source
def recorded_source(cache_dir: str | Path) -> tuple[str | None, str | None]:
    """(dataset_format, data_root) recorded in ``segments.h5`` by ``resail decompose``."""
    with SegmentDB.open(cache_dir) as db:
        attrs = db.attrs
    return attrs.get("dataset_format") or None, attrs.get("data_root") or None



# --------------------------------------------------------------------------- matches
def select_matches(table, n_segments: int, rank: int = 0, overrides: Mapping[int, int] | None = None) -> np.ndarray:
    """Candidate segment id per query segment (−1 = black) from the retrieval table's columns."""
    if rank < 0:
        raise ConfigError(None, f"--rank must be >= 0, got {rank}")
    q = table.column("query_id").to_numpy()
    r = table.column("rank").to_numpy()
    c = table.column("candidate_id").to_numpy()
    match = np.full(n_segments, -1, dtype=np.int64)
    sel = r == rank
    match[q[sel]] = c[sel]
    for qid, rk in (overrides or {}).items():
        qid, rk = int(qid), int(rk)
        if not 0 <= qid < n_segments:
            raise ConfigError(None, f"override for segment {qid}: the segment database has {n_segments} segments")
        if rk < 0:
            raise ConfigError(None, f"override for segment {qid}: rank must be >= 0, got {rk}")
        hit = np.flatnonzero((q == qid) & (r == rk))
        match[qid] = c[hit[0]] if hit.size else -1
    return match


def check_retrieval(table, db: SegmentDB) -> None:
    """Rows beyond the DB are caught by :func:`cache.read_retrieval`; here: negative ids/ranks,
    duplicate (query, rank) pairs and class mismatches (a stale file from another database)."""
    path = db.cache_dir / cache.RETRIEVAL_PARQUET
    if not table.num_rows:
        return
    q = table.column("query_id").to_numpy()
    r = table.column("rank").to_numpy()
    c = table.column("candidate_id").to_numpy()
    if q.min() < 0 or c.min() < 0 or r.min() < 0:
        raise CacheError(path, "negative query_id, candidate_id or rank")
    key = q.astype(np.int64) * (int(r.max()) + 1) + r
    if np.unique(key).size != key.size:
        raise CacheError(path, "duplicate (query_id, rank) rows")
    cls = db.col("class_id")
    bad = np.flatnonzero(cls[q] != cls[c])
    if bad.size:
        k = bad[0]
        raise CacheError(path, f"query {q[k]} (class {cls[q[k]]}) matched to segment {c[k]} of class {cls[c[k]]} "
                               "(stale cache: re-run `resail retrieve`)")


# --------------------------------------------------------------------------- worker side
@dataclass(frozen=True)
class ImageTask:
    """One image's work (small and picklable: ids and paths, no pixels)."""

    split: str
    image_id: str
    ref: SampleRef
    height: int
    width: int
    first: int  # first segment id of the image
    matches: np.ndarray  # int64 [n_segments of the image], candidate id or −1
    digest: str = ""  # content digest of the sample's files recorded by decompose ("" = not checked)


@dataclass
class ImageResult:
    guidance: CompressedArray  # H×W×3 uint8, deflated in the worker (pipeline.deflate)
    valid: CompressedArray  # H×W bool
    n_matched: int
    n_valid: int  # pasted pixels


@dataclass
class Failure:
    kind: str  # 'data' | 'cache'
    path: str | None
    problem: str

    def error(self) -> ResailError:
        return (DataError if self.kind == "data" else CacheError)(self.path, self.problem)


class _CropReader:
    """A worker's view of the segment database: the process's open SegmentDB (crops through its
    public :meth:`SegmentDB.crop`) and the box/thing/area columns as numpy arrays."""

    def __init__(self, db: SegmentDB) -> None:
        self.db = db
        self.meta = db.meta
        self.cols = {n: db.col(n) for n in ("y0", "x0", "y1", "x1", "is_thing", "area")}

    def box(self, s: int) -> tuple[int, int, int, int]:
        c = self.cols
        return int(c["y0"][s]), int(c["x0"][s]), int(c["y1"][s]), int(c["x1"][s])

    def crop(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        rgb, mask = self.db.crop(s)
        y0, x0, y1, x1 = self.box(s)
        if mask.shape != (y1 - y0, x1 - x0):
            raise CacheError(self.db.cache_dir / cache.SEGMENTS_H5,
                             f"crop of segment {s} is {mask.shape[1]}x{mask.shape[0]}, its box {x1 - x0}x{y1 - y0}")
        return rgb, mask

    def queries(self, first: int, n: int) -> list[QuerySegment]:
        """The segments ``first .. first+n-1`` (one image) with their mask crops."""
        return [QuerySegment(self.box(s), self.crop(s)[1], bool(self.cols["is_thing"][s]), int(self.cols["area"][s]))
                for s in range(first, first + n)]


_READER_LOCK = threading.Lock()
_READERS: dict[str, _CropReader] = {}


def _worker_reader(cache_dir: str | Path) -> _CropReader:
    """This process's crop reader of ``cache_dir`` (rebuilt when the database was re-opened)."""
    db = cache.process_db(cache_dir)
    key = str(Path(cache_dir).resolve())
    with _READER_LOCK:
        reader = _READERS.get(key)
        if reader is None or reader.db is not db:
            reader = _READERS[key] = _CropReader(db)
        return reader


def release_worker_db(cache_dir: str | Path) -> None:
    """Close this process's database of ``cache_dir`` (the main process, after a run)."""
    with _READER_LOCK:
        _READERS.pop(str(Path(cache_dir).resolve()), None)
    cache.release_process_dbs(cache_dir)


def compose_image(task: ImageTask, adapter: DatasetAdapter, cache_dir: str) -> ImageResult | Failure:
    """One image → its guidance (runs in a worker). Expected errors come back as a Failure."""
    try:
        reader = _worker_reader(cache_dir)
        sample = adapter.load(task.ref)
        if sample.labels.shape != (task.height, task.width):
            h, w = sample.labels.shape
            raise DataError(task.ref.label, f"label map is {w}x{h} but the segment database recorded "
                                            f"{task.width}x{task.height} for {task.split}/{task.image_id} "
                                            "(dataset changed: re-run `resail decompose`)")
        if task.digest and cache.sample_digest(task.ref) != task.digest:
            raise DataError(task.ref.label, f"{task.split}/{task.image_id} changed since `resail decompose` read it "
                                            "(its files' content differs from the segment database's record): "
                                            "rerun `resail decompose`")
        queries = reader.queries(task.first, len(task.matches))
        matches = [None if c < 0 else reader.crop(int(c)) for c in task.matches.tolist()]
        guidance, valid = compose_guidance(sample.labels, reader.meta, queries, matches)
        # Compressed here, not by the client: the client only copies chunks (it saturated at ~5 workers).
        return ImageResult(CompressedArray.whole(guidance), CompressedArray.whole(valid),
                           int((task.matches >= 0).sum()), int(valid.sum()))
    except DataError as e:
        return Failure("data", e.path, e.problem)
    except CacheError as e:
        return Failure("cache", e.path, e.problem)


# --------------------------------------------------------------------------- driver
@dataclass
class ComposeSummary:
    path: Path
    n_images: int
    n_queries: int
    n_matched: int
    valid_fraction: float  # pasted pixels / all pixels


def compose_dataset(cache_dir: str | Path, *, data_root: str | Path | None = None, fmt: str | None = None,
                    rank: int = 0, overrides: Mapping[int, int] | None = None, jobs: int = 1,
                    backend: str = "loky", scheduler: str | None = None, progress: bool = True) -> ComposeSummary:
    """Write ``<cache_dir>/guidance.h5`` atomically (nothing is left behind on failure).

    ``data_root``/``fmt``: ``None`` → the values recorded in the segment DB.
    """
    cache_dir = Path(cache_dir)
    out = cache_dir / cache.GUIDANCE_H5
    with SegmentDB.open(cache_dir) as db:
        n_seg = len(db)
        seg_lin = cache.segments_lineage(cache_dir)
        ret_lin = cache.retrieval_lineage(cache_dir, seg_lin)
        digests = cache.image_digests(db)
        table, rparams = cache.read_retrieval(cache_dir, n_seg)
        check_retrieval(table, db)
        deepest = max([int(rank), *(int(v) for v in (overrides or {}).values())])
        if rparams.get("k") is not None and deepest >= int(rparams["k"]):
            # every query would stay black: a rank sweep (Table B) needs the retrieval to keep that many
            raise ConfigError(cache_dir / cache.RETRIEVAL_PARQUET,
                              f"rank {deepest} asked but retrieval kept k={rparams['k']} candidates per query "
                              f"(set retrieve.k >= {deepest + 1}: resail retrieve --k {deepest + 1})")
        match = select_matches(table, n_seg, rank, overrides)
        adapter = db.open_adapter(fmt, data_root)
        if adapter.classes() != db.meta:
            raise DataError(adapter.root, f"class list of the dataset ({adapter.classes().dataset}) differs from the one "
                                          f"the segment database was built with ({db.meta.dataset})")
        rows = db.image_rows()
        tasks = []
        for row, ref, digest in zip(rows, db.sample_refs(adapter, rows), digests):
            a, n = int(row["first_segment"]), int(row["n_segments"])
            tasks.append(ImageTask(row["split"], row["image_id"], ref, int(row["height"]), int(row["width"]),
                                   a, match[a:a + n].copy(), digest))
    lineage = cache.make_lineage("compose", {"segments": seg_lin.id, "retrieval": ret_lin.id},
                                 {"rank": int(rank), "overrides": {str(int(k)): int(v) for k, v in (overrides or {}).items()}})
    n_matched = n_valid = n_pixels = 0
    try:
        with cache.atomic_outputs(out) as (tmp,):
            with h5py.File(tmp, "w", libver="earliest") as f:
                cache.stamp_h5(f, lineage, cache.GUIDANCE_SCHEMA_VERSION)
                if overrides:
                    f.attrs["rank"] = "per-segment"
                    f.attrs["base_rank"] = int(rank)
                    f.attrs["overrides"] = json.dumps({str(int(k)): int(v) for k, v in sorted(overrides.items())})
                else:
                    f.attrs["rank"] = int(rank)
                f.attrs["n_images"] = len(tasks)
                f.attrs["deflate"] = DEFLATE_IMPL
                f.attrs["retrieval"] = json.dumps(rparams, sort_keys=True)
                results = ordered_map(compose_image, tasks, jobs=jobs, backend=backend, scheduler=scheduler,
                                      desc="compose", progress=progress, adapter=adapter, cache_dir=str(cache_dir))
                try:
                    for task, res in zip(tasks, results):
                        if isinstance(res, Failure):
                            raise res.error()
                        res.guidance.write(f, cache.image_key(task.split, task.image_id))
                        res.valid.write(f, cache.valid_key(task.split, task.image_id))
                        n_matched += res.n_matched
                        n_valid += res.n_valid
                        n_pixels += task.height * task.width
                finally:
                    results.close()
    finally:
        release_worker_db(cache_dir)
    return ComposeSummary(out, len(tasks), int(sum(len(t.matches) for t in tasks)), n_matched,
                          n_valid / n_pixels if n_pixels else 0.0)


# --------------------------------------------------------------------------- preview
def read_guidance(cache_dir: str | Path, split: str, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(guidance H×W×3 uint8, valid H×W bool) of one image from ``guidance.h5``."""
    path = Path(cache_dir) / cache.GUIDANCE_H5
    cache.check_stage_h5(path, cache_dir)
    with h5py.File(path, "r") as f:
        k, v = cache.image_key(split, image_id), cache.valid_key(split, image_id)
        if k not in f or v not in f:
            raise CacheError(path, f"no guidance for {split}/{image_id} (stale: re-run `resail compose`)")
        return cache.read_h5(path, f[k]), cache.read_h5(path, f[v]).astype(bool)


def preview(cache_dir: str | Path, n: int, out_dir: str | Path | None = None, *, data_root: str | Path | None = None,
            fmt: str | None = None) -> list[Path]:
    """Write ``n`` PNGs (label colours | guidance | real image) of images spread evenly over the
    database order into ``out_dir`` (default ``<cache_dir>/guidance_preview``); old
    ``guidance_*.png`` there are removed first. Returns the written paths."""
    from pipeline.visualize import colorize_labels, hstack, write_png

    cache_dir = Path(cache_dir)
    out_dir = Path(out_dir) if out_dir is not None else cache_dir / PREVIEW_DIR
    with SegmentDB.open(cache_dir) as db:
        rows = db.image_rows()
        meta = db.meta
        if n <= 0 or not rows:
            return []
        adapter = db.open_adapter(fmt, data_root)
        picks = sorted(set(np.linspace(0, len(rows) - 1, min(n, len(rows))).round().astype(int).tolist()))
        refs = dict(zip(picks, db.sample_refs(adapter, [rows[i] for i in picks])))
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("guidance_*.png"):
        old.unlink()
    written = []
    for i in picks:
        row = rows[i]
        sample = adapter.load(refs[i])
        guidance, _ = read_guidance(cache_dir, row["split"], row["image_id"])
        if guidance.shape[:2] != sample.labels.shape:
            raise CacheError(cache_dir / cache.GUIDANCE_H5, f"guidance of {row['split']}/{row['image_id']} is "
                                                            f"{guidance.shape[1]}x{guidance.shape[0]}, label map "
                                                            f"{sample.labels.shape[1]}x{sample.labels.shape[0]}")
        safe = row["image_id"].replace("/", "_").replace("\\", "_")
        path = out_dir / f"guidance_{row['split']}_{safe}.png"
        write_png(path, hstack([colorize_labels(sample.labels, meta), guidance, sample.image]))
        written.append(path)
    return written
