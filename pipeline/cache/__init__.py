"""The stage caches: names and schemas (:mod:`.files`), atomic writes and locks (:mod:`.atomic`),
lineage (:mod:`.lineage`), and the segment database with its retrieval table (:mod:`.segment_db`).

This package re-exports their public names, so ``from pipeline import cache; cache.SEGMENTS_H5`` reads
as one vocabulary; the modules themselves import from each other in one direction only
(files → atomic → lineage → segment_db).
"""
from pipeline.cache.files import (  # noqa: F401
    SCHEMA_VERSION, SEGMENTS_PARQUET, IMAGES_PARQUET, SEGMENTS_H5, SKIPPED_JSON, SEGMENT_SCHEMA,
    IMAGE_SCHEMA, H5_CHUNK, LAB_STATS, H5_OPTS, RETRIEVAL_PARQUET, RETRIEVAL_SCHEMA, GUIDANCE_H5,
    GUIDANCE_SCHEMA_VERSION, DISTORTIONS_H5, DISTORTIONS_SCHEMA_VERSION, escape_key, image_key, valid_key,
    DISTORTIONS_PARQUET, DISTORTION_SCHEMA,
)
from pipeline.cache.atomic import (  # noqa: F401
    LOCK_WAIT_ENV, tmp_path, lock_path, finish_interrupted_commit, stage_lock, atomic_outputs,
    write_json_atomic, write_parquet, write_text_atomic,
)
from pipeline.cache.lineage import (  # noqa: F401
    LINEAGE_ATTR, LINEAGE_META, STAGE_FILES, Lineage, lineage_id, make_lineage, file_digest, sample_digest,
    dataset_digest, stamp_h5, with_lineage, rebuild_hint, read_lineage, require_lineage, check_inputs,
    segments_lineage, retrieval_lineage, STAGE_OF, check_stage_h5, upstream_ids, image_digests, read_h5, damaged_h5,
)
from pipeline.cache.segment_db import (  # noqa: F401
    encode_crop, decode_crop, SegmentWriter, SegmentDB, process_db, release_process_dbs, write_retrieval,
    read_retrieval,
)
