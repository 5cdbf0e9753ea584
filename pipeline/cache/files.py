"""The names and schemas of every stage-cache file: the one place that knows a file name, an HDF5
path, a Parquet column or a schema version. Readers and writers import these names from here.

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


import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)


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

H5_CHUNK = 1 << 18  # elements per chunk of the flat crop arrays
LAB_STATS = "lab_stats"  # segments.h5: [N, 6] lαβ mean/std per segment (optional: older databases lack it)
H5_OPTS = dict(compression="gzip", compression_opts=1, track_times=False)


# --------------------------------------------------------------------------- retrieval results
RETRIEVAL_PARQUET = "retrieval.parquet"
RETRIEVAL_SCHEMA = pa.schema([
    ("query_id", pa.int64()), ("rank", pa.int32()), ("candidate_id", pa.int64()),
    ("score", pa.float32()), ("shape_term", pa.float32()), ("scale_term", pa.float32()),
])
"""``retrieval.parquet`` — one row per (query segment, rank), rank 0 = best; sorted by
(query_id, rank). Queries without an admissible candidate have no rows. File-level metadata:
k, max_score, alpha, scale_term (as JSON under key ``resail``)."""


# --------------------------------------------------------------------------- guidance images
GUIDANCE_H5 = "guidance.h5"
GUIDANCE_SCHEMA_VERSION = 2  # 2: escaped keys, valid maps under "<key>@valid", lineage attrs
"""``guidance.h5`` — per image ``image_key(split, id)`` uint8 H×W×3 (composite guidance at
label-map resolution) and ``valid_key(split, id)`` bool H×W (pixels that were pasted).
Root attrs: schema_version, lineage, rank (or 'per-segment'), n_images."""

# --------------------------------------------------------------------------- distortions
DISTORTIONS_H5 = "distortions.h5"
DISTORTIONS_SCHEMA_VERSION = 3  # 2: escaped keys, lineage attrs (h5 and parquet); 3: black canvas + per-variant valid masks
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
