"""The segment database (``resail decompose``): crop encoding, the writer, the reader
(:class:`SegmentDB`, one handle per process), and the retrieval table that indexes it."""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from pipeline.datasets import open_dataset
from pipeline.datasets.base import ClassMeta, DatasetAdapter, SampleRef
from pipeline.errors import CacheError, DataError
from pipeline.cache.atomic import atomic_outputs, finish_interrupted_commit, write_parquet
from pipeline.cache.files import (H5_CHUNK, H5_OPTS, IMAGE_SCHEMA, IMAGES_PARQUET, LAB_STATS, RETRIEVAL_PARQUET,
                                  RETRIEVAL_SCHEMA, SCHEMA_VERSION, SEGMENT_SCHEMA, SEGMENTS_H5, SEGMENTS_PARQUET)
from pipeline.cache.lineage import (LINEAGE_ATTR, Lineage, make_lineage, read_h5, rebuild_hint, retrieval_lineage,
                                    segments_lineage, with_lineage)

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
                                             chunks=(max(1, min(1024, H5_CHUNK // nbytes)), nbytes), **H5_OPTS)
        self._masks.attrs["mask_size"] = mask_size
        self._png = self._f.create_dataset("crop_png", shape=(0,), maxshape=(None,), dtype=np.uint8,
                                           chunks=(H5_CHUNK,), track_times=False)
        self._attrs = dict(attrs)
        self._offsets = [0]
        self._cols: dict[str, list] = {f.name: [] for f in SEGMENT_SCHEMA if f.name not in ("candidate", "query")}
        self._imgs: dict[str, list] = {f.name: [] for f in IMAGE_SCHEMA}
        self._buf_masks: list[np.ndarray] = []
        self._buf_png: list[bytes] = []
        self._buf_bytes = 0
        self._lab: list[np.ndarray] | None = []  # per image [n, 6]; None once an image came without

    @property
    def n_segments(self) -> int:
        return len(self._cols["segment_id"])

    def add_image(self, image_id: str, split: str, height: int, width: int, has_instances: bool,
                  rows: list[dict], packed_masks: np.ndarray, crop_pngs: list[bytes],
                  source_size: tuple[int, int] | None = None, lab: np.ndarray | None = None) -> None:
        """Append one image's segments (``rows`` hold the scalar columns of SEGMENT_SCHEMA,
        ``crop_pngs`` the :func:`encode_crop` bytes). ``height``/``width``: the working resolution;
        ``source_size``: (H, W) on disk before ``--resize`` (default: the same); ``lab``: ``[n, 6]``
        lαβ mean/std per segment (``/lab_stats`` is written only when every image gave them)."""
        first = self.n_segments
        if lab is None:
            self._lab = None
        elif self._lab is not None:
            self._lab.append(np.asarray(lab, np.float64).reshape(len(rows), 6))
        for k, r in enumerate(rows):
            self._cols["segment_id"].append(first + k)
            self._cols["image_id"].append(image_id)
            self._cols["split"].append(split)
            for name in ("class_id", "is_thing", "y0", "x0", "y1", "x1", "area", "box_area", "norm_area", "source"):
                self._cols[name].append(r[name])
            self._offsets.append(self._offsets[-1] + len(crop_pngs[k]))
        for name, v in (("image_id", image_id), ("split", split), ("height", height), ("width", width),
                        ("first_segment", first), ("n_segments", len(rows)), ("has_instances", has_instances),
                        ("source_height", (source_size or (height, width))[0]),
                        ("source_width", (source_size or (height, width))[1])):
            self._imgs[name].append(v)
        if rows:
            self._buf_masks.append(packed_masks)
            self._buf_png.extend(crop_pngs)
            self._buf_bytes += sum(len(b) for b in crop_pngs)
        if self._buf_bytes >= 4 * H5_CHUNK:
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

    def finish(self, candidate: np.ndarray, segments_parquet: Path, images_parquet: Path,
               lineage: "Lineage | None" = None, digests: list[str] | None = None,
               query: np.ndarray | None = None) -> None:
        """Flush, write offsets/attrs and the two Parquet tables (all to the given temp paths).
        ``lineage`` goes into all three files, ``digests`` (one per image) into ``/image_digests``."""
        self._flush()
        self._f.create_dataset("crop_offsets", data=np.asarray(self._offsets, dtype=np.int64), track_times=False)
        if digests is not None:
            self._f.create_dataset("image_digests", data=np.asarray(digests, dtype="S32"), track_times=False)
        if self._lab is not None:
            lab = np.concatenate(self._lab) if self._lab else np.zeros((0, 6))
            self._f.create_dataset(LAB_STATS, data=lab, track_times=False)
        for k, v in {**self._attrs, "schema_version": SCHEMA_VERSION, "n_segments": self.n_segments,
                     "mask_size": self.mask_size}.items():
            self._f.attrs[k] = v
        if lineage is not None:
            self._f.attrs[LINEAGE_ATTR] = lineage.to_json()
        self._f.close()
        cols = {**self._cols, "candidate": np.asarray(candidate, dtype=bool),
                "query": np.ones(self.n_segments, dtype=bool) if query is None else np.asarray(query, dtype=bool)}
        seg_t = pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in SEGMENT_SCHEMA}, schema=SEGMENT_SCHEMA)
        img_t = pa.table({f.name: pa.array(self._imgs[f.name], type=f.type) for f in IMAGE_SCHEMA}, schema=IMAGE_SCHEMA)
        if lineage is not None:
            seg_t, img_t = with_lineage(seg_t, lineage), with_lineage(img_t, lineage)
        write_parquet(seg_t, segments_parquet)
        write_parquet(img_t, images_parquet)

    def columns(self) -> dict[str, list]:
        return self._cols

    def segments_per_image(self) -> list[int]:
        """``n_segments`` of every image added so far, in order (groups the rows per image)."""
        return list(self._imgs["n_segments"])

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()


# --------------------------------------------------------------------------- segment DB reader
def _check_segments_schema(h5_path: Path) -> None:
    """An older segment database (other columns/attrs) is one line saying how to rebuild it."""
    try:
        with h5py.File(h5_path, "r") as f:
            got = int(f.attrs.get("schema_version", 0))
    except (OSError, TypeError, ValueError):
        return  # unreadable: SegmentDB.open reports it below
    if got != SCHEMA_VERSION:
        raise CacheError(h5_path, f"segment database schema {got}, this version reads {SCHEMA_VERSION}: "
                                  f"{rebuild_hint('decompose')}")


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
        finish_interrupted_commit(h5_p)  # a decompose killed between its renames (see atomic_outputs)
        for p in (seg_p, img_p, h5_p):
            if not p.is_file():
                raise CacheError(p, "missing (run `resail decompose` first)")
        segments_lineage(cache_dir)  # same decompose run in all three files, current schema
        _check_segments_schema(h5_p)
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
            total = int(read_h5(h5_p, h5["crop_offsets"], -1)) if n else 0
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

    @property
    def h5_path(self) -> Path:
        """``segments.h5`` of this database (named by every error about its contents)."""
        return self.cache_dir / SEGMENTS_H5

    def lab_stats(self) -> np.ndarray | None:
        """``[N, 6]`` float64 lαβ (mean, std) of every segment's pixels, or None for a database
        written before ``/lab_stats`` existed (callers then compute them from the crops)."""
        if LAB_STATS not in self.h5:
            return None
        ds = self.h5[LAB_STATS]
        if ds.shape != (len(self), 6):
            raise CacheError(self.cache_dir / SEGMENTS_H5, f"/{LAB_STATS} has shape {ds.shape}, expected ({len(self)}, 6)")
        return read_h5(self.h5_path, ds)

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
            return read_h5(self.h5_path, ds)
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        out = np.empty((len(ids), ds.shape[1]), dtype=np.uint8)
        if len(ids):
            out[order] = (read_h5(self.h5_path, ds, ids[order]) if np.all(np.diff(ids[order]) > 0)
                          else read_h5(self.h5_path, ds)[ids[order]])
        return out

    def crop(self, segment_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB crop H×W×3 uint8, mask crop H×W bool) of one segment, box-sized."""
        seg = int(segment_id)
        if not 0 <= seg < len(self):
            raise CacheError(self.cache_dir / SEGMENTS_H5, f"segment {seg} out of range 0..{len(self) - 1}")
        if self._offsets is None:
            self._offsets = read_h5(self.h5_path, self.h5["crop_offsets"])
            self._png_ds = self.h5["crop_png"]
        a, b = int(self._offsets[seg]), int(self._offsets[seg + 1])
        data = read_h5(self.h5_path, self._png_ds, slice(a, b))
        try:
            return decode_crop(data)
        except ValueError as e:
            raise CacheError(self.cache_dir / SEGMENTS_H5, f"crop of segment {seg}: {e}") from None

    def crop_mask(self, segment_id: int) -> np.ndarray:
        """The mask crop (H×W bool) of one segment (its crop's alpha channel)."""
        return self.crop(segment_id)[1]

    # -- the dataset it was decomposed from
    def open_adapter(self, fmt: str | None = None, data_root: str | Path | None = None) -> DatasetAdapter:
        """The adapter of the dataset ``resail decompose`` read, with the adapter options and the
        working resolution it recorded (so every sample comes as decompose saw it); ``fmt``/``data_root``
        override the recorded ones (a moved dataset)."""
        attrs = self.attrs
        fmt, data_root = fmt or attrs.get("dataset_format"), data_root or attrs.get("data_root")
        if not fmt or not data_root:
            raise DataError(self.cache_dir / SEGMENTS_H5, "no dataset format/root recorded; pass --format and --data-root")
        if not Path(data_root).is_dir():
            raise DataError(data_root, "dataset root does not exist or is not a folder (moved? pass --data-root)")
        return open_dataset(fmt, data_root, self.adapter_options, self.resize or None)

    @property
    def adapter_options(self) -> dict[str, str]:
        """Adapter options decompose used (h5 attr ``adapter_options``, JSON), e.g. ``{"label_space": "label-ids"}``."""
        raw = self.attrs.get("adapter_options") or "{}"
        try:
            opts = json.loads(raw)
        except json.JSONDecodeError:
            raise CacheError(self.cache_dir / SEGMENTS_H5, "attr adapter_options is not JSON") from None
        return {str(k): str(v) for k, v in opts.items()}

    @property
    def resize(self) -> str:
        """The working resolution decompose used (h5 attr ``resize``): ``HxW``, ``S`` or ``""`` (original)."""
        return str(self.attrs.get("resize", "") or "")

    def query_flags(self) -> np.ndarray:
        """Per segment, whether it is a retrieval query (False: pruned per image, gets no guidance)."""
        return self.col("query").astype(bool)

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


def write_retrieval(columns: dict[str, np.ndarray], path: Path, params: dict) -> None:
    """Write retrieval rows (column arrays of RETRIEVAL_SCHEMA) atomically with their params."""
    table = pa.table({f.name: pa.array(np.asarray(columns[f.name]), type=f.type) for f in RETRIEVAL_SCHEMA},
                     schema=RETRIEVAL_SCHEMA)
    table = table.replace_schema_metadata({"resail": json.dumps(params, sort_keys=True)})
    # Lineage: the segment database it was computed from (same folder) + the retrieval params.
    table = with_lineage(table, make_lineage("retrieve", {"segments": segments_lineage(Path(path).parent).id}, params))
    with atomic_outputs(path) as (tmp,):
        write_parquet(table, tmp)


def read_retrieval(cache_dir: str | Path, n_segments: int | None = None) -> tuple[pa.Table, dict]:
    """(table, params) of ``retrieval.parquet``, checked against the segment count when given."""
    path = Path(cache_dir) / RETRIEVAL_PARQUET
    if not path.is_file():
        raise CacheError(path, "missing (run `resail retrieve` first)")
    retrieval_lineage(cache_dir)  # built from the segment database now in cache_dir
    table = _read_parquet(path, RETRIEVAL_SCHEMA)
    meta = table.schema.metadata or {}
    params = json.loads(meta.get(b"resail", b"{}"))
    if n_segments is not None and table.num_rows:
        top = max(pa.compute.max(table.column("query_id")).as_py(), pa.compute.max(table.column("candidate_id")).as_py())
        if top >= n_segments:
            raise CacheError(path, f"refers to segment {top} but the segment database has {n_segments} rows "
                                   "(stale cache: re-run `resail retrieve`)")
    return table, params

