"""Lineage of the stage caches: what each file was built from, recorded on write and checked on read."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from pipeline.datasets.base import SampleRef
from pipeline.errors import CacheError, DataError
from pipeline.cache.atomic import finish_interrupted_commit
from pipeline.cache.files import (DISTORTIONS_H5, DISTORTIONS_SCHEMA_VERSION, GUIDANCE_H5, GUIDANCE_SCHEMA_VERSION,
                                  IMAGES_PARQUET, RETRIEVAL_PARQUET, SEGMENTS_H5, SEGMENTS_PARQUET)

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


def rebuild_hint(stage: str) -> str:
    return f"rebuild with `resail {stage}`"


# --------------------------------------------------------------------------- guarded dataset reads
#: The stage that writes each HDF5 cache file (what to rerun when one of its datasets is damaged).
H5_WRITER = {SEGMENTS_H5: "decompose", GUIDANCE_H5: "compose", DISTORTIONS_H5: "distort"}


def damaged_h5(path: str | Path, key: str, err: BaseException) -> CacheError:
    """The one-line error of an HDF5 dataset whose stored bytes cannot be read back."""
    path = Path(path)
    stage = H5_WRITER.get(path.name)
    reason = " ".join(str(err).split()) or type(err).__name__
    hint = rebuild_hint(stage) if stage else "rebuild it with the stage that wrote it"
    return CacheError(path, f"dataset {key} is damaged (cannot read its data: {reason}): {hint}")


def read_h5(path: str | Path, ds: h5py.Dataset, sel=Ellipsis):
    """``ds[sel]``, where damaged stored data is a :class:`CacheError` naming the file, the dataset and
    the stage to rerun.

    Corrupt bytes inside a compressed chunk leave the file's headers and sizes intact, so the file
    opens and the damage only shows when the chunk is inflated: h5py then raises a bare OSError
    ("Can't synchronously read data") that would surface as a traceback from whatever stage (or
    DataLoader worker) happened to read it. Every read of segments.h5 / guidance.h5 / distortions.h5
    data goes through here."""
    try:
        return ds[sel]
    except OSError as e:
        raise damaged_h5(path, ds.name, e) from None


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
        raise CacheError(path, f"written by an older version (no lineage record): {rebuild_hint(stage)}")
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
                                               f"(interrupted or mixed copy): {rebuild_hint('decompose')}")
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
        raise CacheError(path, f"not a readable HDF5 file (cut or corrupt? {rebuild_hint(stage)}): {e}") from None
    if got is None or int(got) != version:
        raise CacheError(path, f"schema version {got if got is not None else 1} (expected {version}): {rebuild_hint(stage)}")
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


def image_digests(db) -> list[str]:
    """Per-image content digests recorded by decompose, in ``images.parquet`` row order (``db``: a
    :class:`~pipeline.cache.segment_db.SegmentDB`)."""
    path = db.cache_dir / SEGMENTS_H5
    if "image_digests" not in db.h5:
        raise CacheError(path, f"no /image_digests (older version): {rebuild_hint('decompose')}")
    d = read_h5(path, db.h5["image_digests"])
    if d.shape != (db.images.num_rows,):
        raise CacheError(path, f"/image_digests has {d.shape[0]} entries for {db.images.num_rows} images")
    return [x.decode() if isinstance(x, bytes) else str(x) for x in d]

