"""Schemas, readers and writers of the stage caches; the only place that knows a file name,
an HDF5 path or a column name.

Every writer is atomic: it writes ``<name>.tmp`` beside the target and renames at the end, so a
failed or interrupted stage leaves either the previous complete file or nothing.

Segment database (written by ``resail decompose``)
-------------------------------------------------
``segments.parquet`` — one row per segment, ``segment_id`` dense 0..N-1 in row order:
    segment_id int64, image_id string, split string, class_id int32, is_thing bool,
    y0, x0, y1, x1 int32 (half-open box, original pixels), area int64 (mask pixels),
    box_area int64 ((y1-y0)·(x1-x0)), norm_area int32 (pixels of the S×S normalised mask),
    source string ('instance' | 'component'), candidate bool (retrieval database row).
``images.parquet`` — one row per decomposed image:
    image_id string, split string, height int32, width int32, first_segment int64,
    n_segments int32, has_instances bool.
``segments.h5``:
    /norm_masks   uint8 [N, S*S/8]  np.packbits of the row-major S×S normalised mask; attr mask_size
    /crop_png     uint8 [B]         one PNG file per segment, concatenated: the box-sized crop as RGBA,
                                    RGB = image pixels, alpha = 255 inside the mask, 0 outside
    /crop_offsets int64 [N+1]       byte offset of each segment's PNG in /crop_png
    PNG keeps the database small and lets the workers compress in parallel; any PNG reader can
    open a crop (``SegmentDB.crop`` decodes it).
    root attrs: schema_version, n_segments, mask_size, min_area, preserved_ratio, db_split,
    dataset_format, data_root, classes (ClassMeta JSON).
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from pipeline.datasets import open_dataset
from pipeline.datasets.base import ClassMeta, DatasetAdapter, SampleRef
from pipeline.errors import CacheError, DataError

SCHEMA_VERSION = 1
SEGMENTS_PARQUET = "segments.parquet"
IMAGES_PARQUET = "images.parquet"
SEGMENTS_H5 = "segments.h5"
SKIPPED_JSON = "skipped.json"

SEGMENT_SCHEMA = pa.schema([
    ("segment_id", pa.int64()), ("image_id", pa.string()), ("split", pa.string()),
    ("class_id", pa.int32()), ("is_thing", pa.bool_()),
    ("y0", pa.int32()), ("x0", pa.int32()), ("y1", pa.int32()), ("x1", pa.int32()),
    ("area", pa.int64()), ("box_area", pa.int64()), ("norm_area", pa.int32()),
    ("source", pa.string()), ("candidate", pa.bool_()),
])
IMAGE_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("split", pa.string()), ("height", pa.int32()), ("width", pa.int32()),
    ("first_segment", pa.int64()), ("n_segments", pa.int32()), ("has_instances", pa.bool_()),
])

_H5_CHUNK = 1 << 18  # elements per chunk of the flat crop arrays
_H5_OPTS = dict(compression="gzip", compression_opts=1, track_times=False)


# --------------------------------------------------------------------------- atomic writes
def tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def atomic_outputs(*paths: Path) -> Iterator[list[Path]]:
    """Yield temp paths for ``paths``; rename all of them at the end, delete them on failure."""
    paths = [Path(p) for p in paths]
    tmps = [tmp_path(p) for p in paths]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    for t in tmps:
        t.unlink(missing_ok=True)
    try:
        yield tmps
    except BaseException:
        for t in tmps:
            t.unlink(missing_ok=True)
        raise
    for t, p in zip(tmps, paths):
        os.replace(t, p)


def write_json_atomic(path: Path, obj) -> None:
    with atomic_outputs(path) as (tmp,):
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_parquet(table: pa.Table, path: Path) -> None:
    """Deterministic Parquet: fixed compression, no statistics that depend on anything but data."""
    pq.write_table(table, path, compression="zstd", compression_level=3)


# --------------------------------------------------------------------------- crops
def encode_crop(rgb: np.ndarray, mask: np.ndarray) -> bytes:
    """Box-sized RGB crop + bool mask → PNG bytes (RGBA, alpha = mask). Runs in the workers."""
    bgra = np.dstack([rgb[:, :, ::-1], mask.astype(np.uint8) * 255])
    ok, buf = cv2.imencode(".png", bgra, [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                          cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_crop(data: np.ndarray | bytes) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_crop`: (RGB H×W×3 uint8, mask H×W bool)."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 3 or arr.shape[2] != 4:
        raise ValueError("corrupt crop PNG")
    return np.ascontiguousarray(arr[:, :, 2::-1]), arr[:, :, 3] > 0


# --------------------------------------------------------------------------- segment DB writer
class SegmentWriter:
    """Streams decomposed images into ``segments.h5`` and collects the Parquet rows.

    Rows are appended in call order; callers pass images in a fixed order so that the bytes of
    the outputs do not depend on parallelism. Use as a context manager inside
    :func:`atomic_outputs`.
    """

    def __init__(self, h5_path: Path, mask_size: int, attrs: dict) -> None:
        if mask_size % 8:
            raise ValueError("mask_size must be a multiple of 8")
        self.mask_size = mask_size
        self._f = h5py.File(h5_path, "w", libver="earliest", track_order=False)
        nbytes = mask_size * mask_size // 8
        self._masks = self._f.create_dataset("norm_masks", shape=(0, nbytes), maxshape=(None, nbytes), dtype=np.uint8,
                                             chunks=(max(1, min(1024, _H5_CHUNK // nbytes)), nbytes), **_H5_OPTS)
        self._masks.attrs["mask_size"] = mask_size
        self._png = self._f.create_dataset("crop_png", shape=(0,), maxshape=(None,), dtype=np.uint8,
                                           chunks=(_H5_CHUNK,), track_times=False)
        self._attrs = dict(attrs)
        self._offsets = [0]
        self._cols: dict[str, list] = {f.name: [] for f in SEGMENT_SCHEMA if f.name != "candidate"}
        self._imgs: dict[str, list] = {f.name: [] for f in IMAGE_SCHEMA}
        self._buf_masks: list[np.ndarray] = []
        self._buf_png: list[bytes] = []
        self._buf_bytes = 0

    @property
    def n_segments(self) -> int:
        return len(self._cols["segment_id"])

    def add_image(self, image_id: str, split: str, height: int, width: int, has_instances: bool,
                  rows: list[dict], packed_masks: np.ndarray, crop_pngs: list[bytes]) -> None:
        """Append one image's segments (``rows`` hold the scalar columns of SEGMENT_SCHEMA,
        ``crop_pngs`` the :func:`encode_crop` bytes)."""
        first = self.n_segments
        for k, r in enumerate(rows):
            self._cols["segment_id"].append(first + k)
            self._cols["image_id"].append(image_id)
            self._cols["split"].append(split)
            for name in ("class_id", "is_thing", "y0", "x0", "y1", "x1", "area", "box_area", "norm_area", "source"):
                self._cols[name].append(r[name])
            self._offsets.append(self._offsets[-1] + len(crop_pngs[k]))
        for name, v in (("image_id", image_id), ("split", split), ("height", height), ("width", width),
                        ("first_segment", first), ("n_segments", len(rows)), ("has_instances", has_instances)):
            self._imgs[name].append(v)
        if rows:
            self._buf_masks.append(packed_masks)
            self._buf_png.extend(crop_pngs)
            self._buf_bytes += sum(len(b) for b in crop_pngs)
        if self._buf_bytes >= 4 * _H5_CHUNK:
            self._flush()

    @staticmethod
    def _append(ds: h5py.Dataset, data: np.ndarray) -> None:
        n = ds.shape[0]
        ds.resize(n + data.shape[0], axis=0)
        ds[n:] = data

    def _flush(self) -> None:
        if self._buf_masks:
            self._append(self._masks, np.concatenate(self._buf_masks))
            self._append(self._png, np.frombuffer(b"".join(self._buf_png), dtype=np.uint8))
        self._buf_masks, self._buf_png, self._buf_bytes = [], [], 0

    def finish(self, candidate: np.ndarray, segments_parquet: Path, images_parquet: Path) -> None:
        """Flush, write offsets/attrs and the two Parquet tables (all to the given temp paths)."""
        self._flush()
        self._f.create_dataset("crop_offsets", data=np.asarray(self._offsets, dtype=np.int64), track_times=False)
        for k, v in {**self._attrs, "schema_version": SCHEMA_VERSION, "n_segments": self.n_segments,
                     "mask_size": self.mask_size}.items():
            self._f.attrs[k] = v
        self._f.close()
        cols = {**self._cols, "candidate": np.asarray(candidate, dtype=bool)}
        write_parquet(pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in SEGMENT_SCHEMA},
                               schema=SEGMENT_SCHEMA), segments_parquet)
        write_parquet(pa.table({f.name: pa.array(self._imgs[f.name], type=f.type) for f in IMAGE_SCHEMA},
                               schema=IMAGE_SCHEMA), images_parquet)

    def columns(self) -> dict[str, list]:
        return self._cols

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()


# --------------------------------------------------------------------------- segment DB reader
@dataclass
class SegmentDB:
    """Read access to a decomposed dataset, validated against the schema on open."""

    cache_dir: Path
    segments: pa.Table
    images: pa.Table
    h5: h5py.File
    meta: ClassMeta
    mask_size: int
    _offsets: np.ndarray | None = None  # loaded on the first crop() call
    _png_ds: h5py.Dataset | None = None

    @classmethod
    def open(cls, cache_dir: str | Path) -> "SegmentDB":
        cache_dir = Path(cache_dir)
        seg_p, img_p, h5_p = cache_dir / SEGMENTS_PARQUET, cache_dir / IMAGES_PARQUET, cache_dir / SEGMENTS_H5
        for p in (seg_p, img_p, h5_p):
            if not p.is_file():
                raise CacheError(p, "missing (run `resail decompose` first)")
        segments = _read_parquet(seg_p, SEGMENT_SCHEMA)
        images = _read_parquet(img_p, IMAGE_SCHEMA)
        try:
            h5 = h5py.File(h5_p, "r")
        except OSError as e:
            raise CacheError(h5_p, f"not a readable HDF5 file ({e})") from None
        try:
            for name in ("norm_masks", "crop_offsets", "crop_png"):
                if name not in h5:
                    raise CacheError(h5_p, f"dataset /{name} is missing")
            n = segments.num_rows
            mask_size = int(h5["norm_masks"].attrs.get("mask_size", -1))
            if h5["norm_masks"].shape != (n, mask_size * mask_size // 8):
                raise CacheError(h5_p, f"/norm_masks has shape {h5['norm_masks'].shape}, expected ({n}, "
                                       f"{mask_size * mask_size // 8}) for {n} Parquet rows and mask_size {mask_size}")
            if h5["crop_offsets"].shape != (n + 1,):
                raise CacheError(h5_p, f"/crop_offsets has {h5['crop_offsets'].shape[0]} entries, expected {n + 1}")
            total = int(h5["crop_offsets"][-1]) if n else 0
            if h5["crop_png"].shape[0] != total:
                raise CacheError(h5_p, "/crop_png does not match /crop_offsets (truncated file?)")
            ids = segments.column("segment_id").to_numpy()
            if n and not np.array_equal(ids, np.arange(n)):
                raise CacheError(seg_p, "segment_id is not dense 0..N-1 in row order")
            meta = ClassMeta.from_dict(json.loads(h5.attrs["classes"]))
        except CacheError:
            h5.close()
            raise
        except (KeyError, ValueError, json.JSONDecodeError) as e:
            h5.close()
            raise CacheError(h5_p, f"invalid segment database ({e})") from None
        return cls(cache_dir, segments, images, h5, meta, mask_size)

    # -- columns
    def col(self, name: str) -> np.ndarray:
        return self.segments.column(name).to_numpy(zero_copy_only=False)

    def __len__(self) -> int:
        return self.segments.num_rows

    @property
    def attrs(self) -> dict:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self.h5.attrs.items()}

    def norm_masks(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Packed normalised masks [n, S*S/8] (all rows, or ``ids`` in the given order)."""
        ds = self.h5["norm_masks"]
        if ids is None:
            return ds[...]
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        out = np.empty((len(ids), ds.shape[1]), dtype=np.uint8)
        if len(ids):
            out[order] = ds[ids[order]] if np.all(np.diff(ids[order]) > 0) else ds[...][ids[order]]
        return out

    def crop(self, segment_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB crop H×W×3 uint8, mask crop H×W bool) of one segment, box-sized."""
        seg = int(segment_id)
        if not 0 <= seg < len(self):
            raise CacheError(self.cache_dir / SEGMENTS_H5, f"segment {seg} out of range 0..{len(self) - 1}")
        if self._offsets is None:
            self._offsets = self.h5["crop_offsets"][...]
            self._png_ds = self.h5["crop_png"]
        a, b = int(self._offsets[seg]), int(self._offsets[seg + 1])
        try:
            return decode_crop(self._png_ds[a:b])
        except ValueError as e:
            raise CacheError(self.cache_dir / SEGMENTS_H5, f"crop of segment {seg}: {e}") from None

    # -- the dataset it was decomposed from
    def open_adapter(self, fmt: str | None = None, data_root: str | Path | None = None) -> DatasetAdapter:
        """The adapter of the dataset ``resail decompose`` read; ``fmt``/``data_root`` override the
        recorded ones (a moved dataset)."""
        attrs = self.attrs
        fmt, data_root = fmt or attrs.get("dataset_format"), data_root or attrs.get("data_root")
        if not fmt or not data_root:
            raise DataError(self.cache_dir / SEGMENTS_H5, "no dataset format/root recorded; pass --format and --data-root")
        if not Path(data_root).is_dir():
            raise DataError(data_root, "dataset root does not exist or is not a folder (moved? pass --data-root)")
        return open_dataset(fmt, data_root)

    def sample_refs(self, adapter: DatasetAdapter, rows: list[dict] | None = None) -> list[SampleRef]:
        """The adapter's sample of each ``images.parquet`` row (all rows by default), in row order.
        A row the dataset no longer has is a DataError (stale cache or wrong data root)."""
        by_split: dict[str, dict[str, SampleRef]] = {}
        out = []
        for r in self.image_rows() if rows is None else rows:
            if r["split"] not in by_split:
                by_split[r["split"]] = {ref.image_id: ref for ref in adapter.refs(r["split"])}
            ref = by_split[r["split"]].get(r["image_id"])
            if ref is None:
                raise DataError(adapter.root, f"image {r['split']}/{r['image_id']} of the segment database is not in "
                                              "the dataset (stale cache or wrong --data-root: re-run `resail decompose`)")
            out.append(ref)
        return out

    def image_rows(self, split: str | None = None) -> list[dict]:
        rows = self.images.to_pylist()
        return [r for r in rows if split is None or r["split"] == split]

    def close(self) -> None:
        self.h5.close()

    def __enter__(self) -> "SegmentDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- per-process handles
_PROCESS_DBS: dict[str, tuple[tuple, SegmentDB]] = {}
_PROCESS_LOCK = threading.Lock()


def _db_files_signature(cache_dir: Path) -> tuple:
    """(inode, size, mtime) of the segment DB files; () when one is missing."""
    sig = []
    for name in (SEGMENTS_H5, SEGMENTS_PARQUET, IMAGES_PARQUET):
        try:
            st = os.stat(cache_dir / name)
        except OSError:
            return ()
        sig.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(sig)


def process_db(cache_dir: str | Path) -> SegmentDB:
    """This process's open :class:`SegmentDB` of ``cache_dir``: opened once, re-opened when the files
    were replaced. Parallel workers use it so that only paths cross process borders."""
    cache_dir = Path(cache_dir)
    key = str(cache_dir.resolve())
    sig = _db_files_signature(cache_dir)
    with _PROCESS_LOCK:
        held = _PROCESS_DBS.get(key)
        if held is not None and sig and held[0] == sig:
            return held[1]
        if held is not None:
            held[1].close()
            del _PROCESS_DBS[key]
        db = SegmentDB.open(cache_dir)  # a missing file raises CacheError naming it
        _PROCESS_DBS[key] = (sig, db)
        return db


def release_process_dbs(cache_dir: str | Path | None = None) -> None:
    """Close this process's held database(s) (``None``: all of them), e.g. in the main process after a run."""
    with _PROCESS_LOCK:
        keys = list(_PROCESS_DBS) if cache_dir is None else [str(Path(cache_dir).resolve())]
        for key in keys:
            held = _PROCESS_DBS.pop(key, None)
            if held is not None:
                held[1].close()


def _read_parquet(path: Path, schema: pa.Schema) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise CacheError(path, f"not a readable Parquet file ({e})") from None
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise CacheError(path, f"missing column(s) {', '.join(missing)}")
    return table


# --------------------------------------------------------------------------- retrieval results
RETRIEVAL_PARQUET = "retrieval.parquet"
RETRIEVAL_SCHEMA = pa.schema([
    ("query_id", pa.int64()), ("rank", pa.int32()), ("candidate_id", pa.int64()),
    ("score", pa.float32()), ("shape_term", pa.float32()), ("scale_term", pa.float32()),
])
"""``retrieval.parquet`` — one row per (query segment, rank), rank 0 = best; sorted by
(query_id, rank). Queries without an admissible candidate have no rows. File-level metadata:
k, max_score, alpha, scale_term (as JSON under key ``resail``)."""


def write_retrieval(columns: dict[str, np.ndarray], path: Path, params: dict) -> None:
    """Write retrieval rows (column arrays of RETRIEVAL_SCHEMA) atomically with their params."""
    table = pa.table({f.name: pa.array(np.asarray(columns[f.name]), type=f.type) for f in RETRIEVAL_SCHEMA},
                     schema=RETRIEVAL_SCHEMA)
    table = table.replace_schema_metadata({"resail": json.dumps(params, sort_keys=True)})
    with atomic_outputs(path) as (tmp,):
        write_parquet(table, tmp)


def read_retrieval(cache_dir: str | Path, n_segments: int | None = None) -> tuple[pa.Table, dict]:
    """(table, params) of ``retrieval.parquet``, checked against the segment count when given."""
    path = Path(cache_dir) / RETRIEVAL_PARQUET
    if not path.is_file():
        raise CacheError(path, "missing (run `resail retrieve` first)")
    table = _read_parquet(path, RETRIEVAL_SCHEMA)
    meta = table.schema.metadata or {}
    params = json.loads(meta.get(b"resail", b"{}"))
    if n_segments is not None and table.num_rows:
        top = max(pa.compute.max(table.column("query_id")).as_py(), pa.compute.max(table.column("candidate_id")).as_py())
        if top >= n_segments:
            raise CacheError(path, f"refers to segment {top} but the segment database has {n_segments} rows "
                                   "(stale cache: re-run `resail retrieve`)")
    return table, params


# --------------------------------------------------------------------------- guidance images
GUIDANCE_H5 = "guidance.h5"
"""``guidance.h5`` — per image ``/<split>/<image_id>`` uint8 H×W×3 (composite guidance at
label-map resolution) and ``/<split>/<image_id>__valid`` bool H×W (pixels that were pasted).
Root attrs: rank (or 'per-segment'), n_images."""

# --------------------------------------------------------------------------- distortions
DISTORTIONS_H5 = "distortions.h5"
"""``distortions.h5`` — per training image ``/<split>/<image_id>`` uint8 [K, H, W, 3]."""


def image_key(split: str, image_id: str) -> str:
    """HDF5 path of one image's dataset in guidance.h5 / distortions.h5."""
    return f"/{split}/{image_id}"


def valid_key(split: str, image_id: str) -> str:
    return f"/{split}/{image_id}__valid"


# --------------------------------------------------------------------------- distortion audit table
DISTORTIONS_PARQUET = "distortions.parquet"
DISTORTION_SCHEMA = pa.schema([
    ("split", pa.string()), ("image_id", pa.string()), ("variant", pa.int32()), ("segment_id", pa.int64()),
    ("applied", pa.string()), ("color_target", pa.int64()), ("shape_skipped", pa.string()),
    ("n_moved", pa.int32()), ("scale", pa.float32()),
])
"""``distortions.parquet`` — audit of ``distortions.h5``: one row per (image, variant, segment), in
the HDF5's image order, then variant, then segment_id. ``applied``: kinds actually applied joined by
``+`` in the order colour, shape, resolution (empty: none); ``color_target``: segment whose lαβ
statistics were transferred (-1: none); ``shape_skipped``: why a drawn shape distortion was not
applied (empty: applied or not drawn); ``n_moved``: control points moved by an applied shape
distortion (0 otherwise); ``scale``: resolution scale (1.0 when not drawn)."""
