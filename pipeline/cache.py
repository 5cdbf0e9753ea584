"""Schemas, readers and writers of the stage caches; the only place that knows a file name,
an HDF5 path or a column name.

Every writer is atomic: it writes a uniquely named ``<name>.<pid>-<random>.tmp`` beside the target
and renames at the end (several outputs of one stage as one unit, through a commit journal), so a
failed, interrupted or concurrent stage leaves either the previous complete files or nothing; a
stage holds an advisory lock (``.<name>.lock``) while it writes. Every stage file records its
lineage (see "Lineage" below).

Segment database (written by ``resail decompose``)
-------------------------------------------------
``segments.parquet`` — one row per segment, ``segment_id`` dense 0..N-1 in row order:
    segment_id int64, image_id string, split string, class_id int32, is_thing bool,
    y0, x0, y1, x1 int32 (half-open box, working-resolution pixels), area int64 (mask pixels),
    box_area int64 ((y1-y0)·(x1-x0)), norm_area int32 (pixels of the S×S normalised mask),
    source string ('instance' | 'component'), candidate bool (retrieval database row),
    query bool (False: pruned per image, gets no guidance).
``images.parquet`` — one row per decomposed image:
    image_id string, split string, height int32, width int32 (working resolution), first_segment int64,
    n_segments int32, has_instances bool, source_height, source_width int32 (size on disk).
``segments.h5``:
    /norm_masks   uint8 [N, S*S/8]  np.packbits of the row-major S×S normalised mask; attr mask_size
    /crop_png     uint8 [B]         one PNG file per segment, concatenated: the box-sized crop as RGBA,
                                    RGB = image pixels, alpha = 255 inside the mask, 0 outside
    /crop_offsets int64 [N+1]       byte offset of each segment's PNG in /crop_png
    PNG keeps the database small and lets the workers compress in parallel; any PNG reader can
    open a crop (``SegmentDB.crop`` decodes it).
    root attrs: schema_version, n_segments, mask_size, min_area, preserved_ratio, pruning, db_split,
    dataset_format, data_root, adapter_options (JSON), resize ('HxW', 'S' or '' = original),
    classes (ClassMeta JSON).
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import secrets
import socket
import sys
import threading
import time
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
from pipeline.errors import BusyError, CacheError, ConfigError, DataError

SCHEMA_VERSION = 3  # 2: lineage record in all three files, /image_digests; 3: query flag, source size, adapter options, resize
SEGMENTS_PARQUET = "segments.parquet"
IMAGES_PARQUET = "images.parquet"
SEGMENTS_H5 = "segments.h5"
SKIPPED_JSON = "skipped.json"

SEGMENT_SCHEMA = pa.schema([
    ("segment_id", pa.int64()), ("image_id", pa.string()), ("split", pa.string()),
    ("class_id", pa.int32()), ("is_thing", pa.bool_()),
    ("y0", pa.int32()), ("x0", pa.int32()), ("y1", pa.int32()), ("x1", pa.int32()),
    ("area", pa.int64()), ("box_area", pa.int64()), ("norm_area", pa.int32()),
    ("source", pa.string()), ("candidate", pa.bool_()), ("query", pa.bool_()),
])
IMAGE_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("split", pa.string()), ("height", pa.int32()), ("width", pa.int32()),
    ("first_segment", pa.int64()), ("n_segments", pa.int32()), ("has_instances", pa.bool_()),
    ("source_height", pa.int32()), ("source_width", pa.int32()),
])

_H5_CHUNK = 1 << 18  # elements per chunk of the flat crop arrays
LAB_STATS = "lab_stats"  # segments.h5: [N, 6] lαβ mean/std per segment (optional: older databases lack it)
_H5_OPTS = dict(compression="gzip", compression_opts=1, track_times=False)


# --------------------------------------------------------------------------- atomic writes
LOCK_WAIT_ENV = "RESAIL_LOCK_WAIT"  # seconds a writer waits for a busy stage lock (default 0: refuse)


def tmp_path(path: Path) -> Path:
    """A fresh temp name beside ``path``, unique per call: ``<name>.<pid>-<random>.tmp``.

    Unique names mean two writers never share (or delete) each other's half-written file."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def lock_path(path: Path) -> Path:
    """The advisory lock file of the stage whose (first) output is ``path``: ``.<name>.lock``."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _journal_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.commit")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmps(path: Path) -> None:
    """Delete temp files of ``path`` left by killed writers (their pid is gone; the legacy fixed
    ``<name>.tmp`` too). Runs under the stage lock, so no live locked writer owns them."""
    legacy = path.with_name(path.name + ".tmp")
    legacy.unlink(missing_ok=True)
    for t in path.parent.glob(glob.escape(path.name) + ".*.tmp"):
        pid = t.name[len(path.name) + 1:].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            t.unlink(missing_ok=True)


def finish_interrupted_commit(path: Path) -> bool:
    """Complete a multi-file commit that was killed between its renames (roll forward).

    A multi-file writer first writes ``.<first output>.commit`` (the temp → target pairs, after every
    temp is complete), then renames, then deletes the journal; so a journal on disk means "these
    temps are whole and must all be published". Readers and the next writer call this before they
    look at the files; it is idempotent and safe to race (a rename already done is skipped)."""
    j = _journal_path(path)
    try:
        pairs = json.loads(j.read_text())["renames"]
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError):
        j.unlink(missing_ok=True)  # a torn journal: its renames never started (it is written atomically)
        return False
    for t, p in pairs:
        t, p = path.parent / t, path.parent / p
        with contextlib.suppress(FileNotFoundError):
            os.replace(t, p)
    j.unlink(missing_ok=True)
    return True


def _holder(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} (`{info.get('command')}`) since {info.get('since')}"


@contextlib.contextmanager
def stage_lock(path: Path, wait: float | None = None) -> Iterator[None]:
    """Hold the advisory (``fcntl.flock``) lock of the stage that writes ``path``.

    A second writer of the same output waits up to ``wait`` seconds (default: ``$RESAIL_LOCK_WAIT``,
    else 0) and then refuses with one line naming the holder (pid, host, command, start time). The
    kernel drops the lock when the holder dies, so a killed run never leaves the stage locked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if wait is None:
        try:
            wait = float(os.environ.get(LOCK_WAIT_ENV, "0") or 0)
        except ValueError:
            raise ConfigError(None, f"${LOCK_WAIT_ENV} must be a number of seconds") from None
    lf = lock_path(path)
    try:
        fd = os.open(lf, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CacheError(path.parent, f"cannot write here ({e.strerror or e})") from None
    deadline = time.monotonic() + max(0.0, wait)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BusyError(path, f"another run is writing it: {_holder(lf)}; wait for it to finish "
                                          f"(or set {LOCK_WAIT_ENV}=SECONDS to wait)") from None
                time.sleep(0.1)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
                "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_outputs(*paths: Path, lock: bool = True) -> Iterator[list[Path]]:
    """Yield fresh temp paths for ``paths`` and publish them together at the end; delete them on failure.

    * Temp names are unique per writer (:func:`tmp_path`), so concurrent runs never mix bytes.
    * ``lock``: hold the stage lock of ``paths[0]`` (:func:`stage_lock`) for the whole write, so a
      second writer of the same outputs refuses (or waits) instead of racing. Previews and small
      side files pass ``lock=False``.
    * Several outputs are one unit: a journal listing the renames is written once every temp is
      complete, then the renames run, then the journal goes (see :func:`finish_interrupted_commit`),
      so a kill between two renames is rolled forward by the next reader or writer, never left as a
      new file beside an old one.
    """
    paths = [Path(p) for p in paths]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    with stage_lock(paths[0]) if lock else contextlib.nullcontext():
        if lock:
            finish_interrupted_commit(paths[0])
            for p in paths:
                _remove_stale_tmps(p)
        tmps = [tmp_path(p) for p in paths]
        try:
            yield tmps
        except BaseException:
            for t in tmps:
                t.unlink(missing_ok=True)
            raise
        if len(paths) > 1:
            same_dir = all(t.parent == paths[0].parent and p.parent == paths[0].parent for t, p in zip(tmps, paths))
            if same_dir:
                j = _journal_path(paths[0])
                jt = tmp_path(j)
                with open(jt, "w") as fh:
                    json.dump({"renames": [[t.name, p.name] for t, p in zip(tmps, paths)]}, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(jt, j)
                finish_interrupted_commit(paths[0])
                return
        for t, p in zip(tmps, paths):
            os.replace(t, p)


def write_json_atomic(path: Path, obj) -> None:
    with atomic_outputs(path, lock=False) as (tmp,):
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
                                  f"{_rebuild('decompose')}")


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

    def lab_stats(self) -> np.ndarray | None:
        """``[N, 6]`` float64 lαβ (mean, std) of every segment's pixels, or None for a database
        written before ``/lab_stats`` existed (callers then compute them from the crops)."""
        if LAB_STATS not in self.h5:
            return None
        ds = self.h5[LAB_STATS]
        if ds.shape != (len(self), 6):
            raise CacheError(self.cache_dir / SEGMENTS_H5, f"/{LAB_STATS} has shape {ds.shape}, expected ({len(self)}, 6)")
        return ds[...]

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


# --------------------------------------------------------------------------- guidance images
GUIDANCE_H5 = "guidance.h5"
GUIDANCE_SCHEMA_VERSION = 2  # 2: escaped keys, valid maps under "<key>@valid", lineage attrs
"""``guidance.h5`` — per image ``image_key(split, id)`` uint8 H×W×3 (composite guidance at
label-map resolution) and ``valid_key(split, id)`` bool H×W (pixels that were pasted).
Root attrs: schema_version, lineage, rank (or 'per-segment'), n_images."""

# --------------------------------------------------------------------------- distortions
DISTORTIONS_H5 = "distortions.h5"
DISTORTIONS_SCHEMA_VERSION = 3  # 2: escaped keys, lineage attrs (h5 and parquet); 3: black canvas + per-variant valid masks (helper A)
"""``distortions.h5`` — per training image ``image_key(split, id)`` uint8 [K, H, W, 3] and ``valid_key(split, id)`` bool [K, H, W]."""

_KEY_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")


def escape_key(name: str) -> str:
    """One HDF5 path component from any split or image id, reversibly: bytes outside
    ``[A-Za-z0-9_.-]`` become ``%XX`` and a leading ``.`` too, so ``/``, ``.``, ``..``, ``@`` and
    ``%`` can never form another path, a parent link or a ``@valid`` suffix."""
    out = []
    for i, ch in enumerate(name):
        if ch in _KEY_SAFE and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out) or "%"


def image_key(split: str, image_id: str) -> str:
    """HDF5 path of one image's dataset in guidance.h5 / distortions.h5 (ids escaped)."""
    return f"/{escape_key(split)}/{escape_key(image_id)}"


def valid_key(split: str, image_id: str) -> str:
    """HDF5 path of one image's valid map in guidance.h5: ``@`` never occurs in an escaped id."""
    return image_key(split, image_id) + "@valid"


# --------------------------------------------------------------------------- lineage
"""Lineage: every stage file records what it was built from, and every reader checks it.

``lineage`` (an HDF5 root attr, or the Parquet metadata key ``resail_lineage``) is the JSON
``{"stage", "id", "inputs"}``: ``inputs`` maps each upstream ("dataset", "segments", "retrieval")
to the id recorded in that upstream's files when this file was built, and ``id`` =
:func:`lineage_id` of (stage, inputs, stage params). The segment database's only input is the
dataset's content digest (a hash of every image/label/instance file it kept); its per-image
digests are kept in ``segments.h5:/image_digests`` so that compose can tell an edited label.
A reader compares the recorded inputs with the upstream files now on disk: a difference is one
line naming the stage to rerun; a file without lineage (an older version) asks to rebuild it.
All files of one stage carry the same id, so a mix of two runs is caught as well.
"""
LINEAGE_ATTR = "lineage"
LINEAGE_META = b"resail_lineage"
STAGE_FILES = {"dataset": "the dataset", "segments": SEGMENTS_H5, "retrieval": RETRIEVAL_PARQUET}


@dataclass(frozen=True)
class Lineage:
    stage: str
    id: str
    inputs: dict

    def to_json(self) -> str:
        return json.dumps({"stage": self.stage, "id": self.id, "inputs": self.inputs}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Lineage":
        d = json.loads(text)
        return cls(str(d["stage"]), str(d["id"]), {str(k): str(v) for k, v in dict(d["inputs"]).items()})


def lineage_id(stage: str, inputs: dict, params: dict) -> str:
    """Content id of a stage output: a hash of its upstream ids and its parameters (sorted JSON)."""
    blob = json.dumps({"stage": stage, "inputs": inputs, "params": params}, sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()


def make_lineage(stage: str, inputs: dict, params: dict) -> Lineage:
    return Lineage(stage, lineage_id(stage, inputs, params), dict(inputs))


def file_digest(path: Path | None, h=None):
    """blake2b of a file's bytes (streamed); ``None`` hashes as "absent"."""
    h = h or hashlib.blake2b(digest_size=16)
    if path is None:
        h.update(b"\0absent\0")
        return h
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror or e})") from None
    h.update(b"\0eof\0")
    return h


def sample_digest(ref: SampleRef) -> str:
    """Content digest of one sample's files (image, label, instance map)."""
    h = hashlib.blake2b(digest_size=16)
    for p in (ref.image, ref.label, ref.instance):
        file_digest(p, h)
    return h.hexdigest()


def dataset_digest(items: list[tuple[str, str, str]]) -> str:
    """Digest of a whole dataset from its (split, image_id, sample digest) triples, order-free."""
    return lineage_id("dataset", {}, {"samples": sorted(items)})


def stamp_h5(f: h5py.File, lineage: Lineage, schema_version: int) -> None:
    """Record lineage and schema version in an HDF5 file being written."""
    f.attrs["schema_version"] = int(schema_version)
    f.attrs[LINEAGE_ATTR] = lineage.to_json()


def with_lineage(table: pa.Table, lineage: Lineage) -> pa.Table:
    """The table with ``lineage`` added to its Parquet metadata (other keys kept)."""
    meta = dict(table.schema.metadata or {})
    meta[LINEAGE_META] = lineage.to_json().encode()
    return table.replace_schema_metadata(meta)


def _rebuild(stage: str) -> str:
    return f"rebuild with `resail {stage}`"


def read_lineage(path: Path) -> Lineage | None:
    """The lineage recorded in an ``.h5`` or ``.parquet`` stage file (``None``: none recorded)."""
    path = Path(path)
    finish_interrupted_commit(path)
    if not path.is_file():
        raise CacheError(path, "missing")
    try:
        if path.suffix == ".parquet":
            raw = (pq.read_schema(path).metadata or {}).get(LINEAGE_META)
        else:
            with h5py.File(path, "r") as f:
                raw = f.attrs.get(LINEAGE_ATTR)
    except (OSError, pa.ArrowInvalid) as e:
        raise CacheError(path, f"not a readable {path.suffix[1:].upper()} file ({e})") from None
    if raw is None:
        return None
    try:
        return Lineage.from_json(raw)
    except (ValueError, KeyError, TypeError):
        raise CacheError(path, "corrupt lineage record") from None


def require_lineage(path: Path, stage: str) -> Lineage:
    lin = read_lineage(path)
    if lin is None:
        raise CacheError(path, f"written by an older version (no lineage record): {_rebuild(stage)}")
    return lin


def check_inputs(path: Path, stage: str, lineage: Lineage, current: dict) -> None:
    """``current``: {upstream name: its Lineage now on disk}; any recorded input that differs is stale."""
    for name, up in current.items():
        rec = lineage.inputs.get(name)
        if rec != up.id:
            raise CacheError(path, f"was built from another {STAGE_FILES.get(name, name)} "
                                   f"(recorded {rec or 'none'}, now {up.id}): rerun `resail {stage}`")


def segments_lineage(cache_dir: str | Path) -> Lineage:
    """The segment database's lineage, checked to be the same in its three files (one decompose run)."""
    cache_dir = Path(cache_dir)
    h5_lin = require_lineage(cache_dir / SEGMENTS_H5, "decompose")
    for name in (SEGMENTS_PARQUET, IMAGES_PARQUET):
        other = require_lineage(cache_dir / name, "decompose")
        if other.id != h5_lin.id:
            raise CacheError(cache_dir / name, f"comes from another decompose run than {SEGMENTS_H5} "
                                               f"(interrupted or mixed copy): {_rebuild('decompose')}")
    return h5_lin


def retrieval_lineage(cache_dir: str | Path, segments: Lineage | None = None) -> Lineage:
    """``retrieval.parquet``'s lineage, checked against the segment database now on disk."""
    cache_dir = Path(cache_dir)
    path = cache_dir / RETRIEVAL_PARQUET
    if not path.is_file():
        raise CacheError(path, "missing (run `resail retrieve` first)")
    lin = require_lineage(path, "retrieve")
    check_inputs(path, "retrieve", lin, {"segments": segments or segments_lineage(cache_dir)})
    return lin


STAGE_OF = {GUIDANCE_H5: ("compose", GUIDANCE_SCHEMA_VERSION), DISTORTIONS_H5: ("distort", DISTORTIONS_SCHEMA_VERSION)}


def check_stage_h5(path: str | Path, cache_dir: str | Path | None = None) -> Lineage:
    """Validate ``guidance.h5`` / ``distortions.h5`` before reading it: readable (not cut), current
    schema, and built from the segment database and retrieval now in ``cache_dir`` (default: its
    folder). Every problem is one CacheError line saying what to rerun."""
    path = Path(path)
    stage, version = STAGE_OF[path.name]
    cache_dir = Path(cache_dir) if cache_dir is not None else path.parent
    finish_interrupted_commit(path)
    if not path.is_file():
        raise CacheError(path, f"missing (run `resail {stage}` first)")
    try:
        with h5py.File(path, "r") as f:
            got = f.attrs.get("schema_version")
    except OSError as e:
        raise CacheError(path, f"not a readable HDF5 file (cut or corrupt? {_rebuild(stage)}): {e}") from None
    if got is None or int(got) != version:
        raise CacheError(path, f"schema version {got if got is not None else 1} (expected {version}): {_rebuild(stage)}")
    lin = require_lineage(path, stage)
    seg = segments_lineage(cache_dir)
    current = {"segments": seg}
    if "retrieval" in lin.inputs:  # distort without colour transfer does not read retrieval.parquet
        current["retrieval"] = retrieval_lineage(cache_dir, seg)  # a stale retrieval is named first
    check_inputs(path, stage, lin, current)
    return lin


def upstream_ids(cache_dir: str | Path, retrieval: bool = True) -> dict:
    """{"segments": id[, "retrieval": id]} of the caches now in ``cache_dir``, checked against each
    other: the ``inputs`` a new guidance/distortions file records."""
    seg = segments_lineage(cache_dir)
    out = {"segments": seg.id}
    if retrieval:
        out["retrieval"] = retrieval_lineage(cache_dir, seg).id
    return out


def image_digests(db: "SegmentDB") -> list[str]:
    """Per-image content digests recorded by decompose, in ``images.parquet`` row order."""
    path = db.cache_dir / SEGMENTS_H5
    if "image_digests" not in db.h5:
        raise CacheError(path, f"no /image_digests (older version): {_rebuild('decompose')}")
    d = db.h5["image_digests"][...]
    if d.shape != (db.images.num_rows,):
        raise CacheError(path, f"/image_digests has {d.shape[0]} entries for {db.images.num_rows} images")
    return [x.decode() if isinstance(x, bytes) else str(x) for x in d]


# --------------------------------------------------------------------------- distortion audit table
DISTORTIONS_PARQUET = "distortions.parquet"
DISTORTION_SCHEMA = pa.schema([
    ("split", pa.string()), ("image_id", pa.string()), ("variant", pa.int32()), ("segment_id", pa.int64()),
    ("applied", pa.string()), ("color_target", pa.int64()), ("shape_skipped", pa.string()),
    ("n_moved", pa.int32()), ("scale", pa.float32()),
])
"""``distortions.parquet`` — audit of ``distortions.h5``: one row per (image, variant, pasted segment), in
the HDF5's image order, then variant, then segment_id. ``applied``: kinds actually applied joined by
``+`` in the order colour, shape, resolution (empty: none); ``color_target``: segment whose lαβ
statistics were transferred (-1: none); ``shape_skipped``: why a drawn shape distortion was not
applied (empty: applied or not drawn); ``n_moved``: control points moved by an applied shape
distortion (0 otherwise); ``scale``: resolution scale (1.0 when not drawn)."""
