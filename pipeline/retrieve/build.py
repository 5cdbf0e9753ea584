"""Retrieval over a segment database (``resail retrieve``): every segment is a query, the
candidate rows of the database split are the index, results go to ``retrieval.parquet``.

Training queries (rows of the database split) never retrieve themselves (``exclude="self"``, default:
the released code drops its best hit, the query's own segment, so other segments of the same image
stay candidates) or, with ``exclude="image"`` (this project's earlier rule), any segment of their own
image; queries of other splits search the whole database (docs/method.md §2). Segments pruned per image
(``segments.parquet`` ``query`` = False, ``decompose.pruning: image``) are not searched, so they
have no rows and compose leaves them black, as the released code gives them no guidance. The index is the exact engine of
:mod:`pipeline.retrieve.retrieval`, so the table equals a brute-force search row for row.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pipeline import cache
from pipeline.cache import SegmentDB
from pipeline.errors import ConfigError
from pipeline.retrieve.retrieval import NO_EXCLUDE, RetrievalParams, SegmentIndex, TopK

#: What a training query may not retrieve: its own segment, or every segment of its image.
EXCLUDE_MODES = ("self", "image")


def image_keys(db: SegmentDB) -> np.ndarray:
    """Per segment, the row of its image in ``images.parquet`` (the image key of the engine)."""
    first = db.images.column("first_segment").to_numpy()
    count = db.images.column("n_segments").to_numpy()
    return np.repeat(np.arange(len(first), dtype=np.int64), count) if len(db) else np.zeros(0, np.int64)


def exclusion_keys(db: SegmentDB, exclude: str = "self") -> np.ndarray:
    """Per segment, the key the engine compares with a query's exclusion: its segment id (``self``) or
    its image row (``image``)."""
    if exclude not in EXCLUDE_MODES:
        raise ConfigError(None, f"retrieve.exclude must be one of {', '.join(EXCLUDE_MODES)}, got {exclude!r}")
    return np.arange(len(db), dtype=np.int64) if exclude == "self" else image_keys(db)


def build_index(db: SegmentDB, device: str = "cpu", exclude: str = "self") -> SegmentIndex:
    """The exact top-k index over the database's candidate rows (masks loaded once), keyed for ``exclude``."""
    return SegmentIndex.build(db.norm_masks(), db.col("class_id"), db.col("box_area"), exclusion_keys(db, exclude),
                              candidate=db.col("candidate"), mask_size=db.mask_size, device=device)


def query_exclusions(db: SegmentDB, exclude: str = "self") -> np.ndarray:
    """Key to exclude per query (:func:`exclusion_keys`): its own segment (``self``) or image (``image``)
    for database-split rows, none otherwise."""
    db_split = db.attrs.get("db_split", "train")
    keys = exclusion_keys(db, exclude)
    return np.where(db.col("split") == db_split, keys, NO_EXCLUDE)


@dataclass
class RetrieveSummary:
    n_queries: int
    n_matched: int  # queries with at least one admissible candidate
    n_rows: int
    n_pruned: int = 0  # segments not searched (pruned per image)


def run_retrieval(cache_dir: str | Path, params: RetrievalParams = RetrievalParams(), *, device: str = "cpu",
                  batch: int = 4096, threads: int | None = None, progress: bool = True,
                  exclude: str = "self") -> RetrieveSummary:
    """Search every segment of the database; write ``retrieval.parquet`` atomically (``exclude``: what a
    training query may not retrieve, :data:`EXCLUDE_MODES`; recorded in the file's params)."""
    cache_dir = Path(cache_dir)
    if exclude not in EXCLUDE_MODES:
        raise ConfigError(None, f"retrieve.exclude must be one of {', '.join(EXCLUDE_MODES)}, got {exclude!r}")
    with SegmentDB.open(cache_dir) as db:
        index = build_index(db, device, exclude)
        packed = index.packed  # the same array the index holds: no second copy of the masks
        classes, areas, excl = db.col("class_id"), db.col("box_area"), query_exclusions(db, exclude)
        rows = np.flatnonzero(db.query_flags())  # the segments that are queries, ascending
        n = len(rows)
        parts: list[TopK] = []
        with tqdm(total=n, desc="retrieve", unit="seg", disable=not progress, dynamic_ncols=True) as bar:
            for lo in range(0, n, batch):
                sel = rows[lo:lo + batch]
                top = index.search(packed[sel], classes[sel], areas[sel], excl[sel], params, threads=threads)
                top.query_index = sel[top.query_index]
                parts.append(top)
                bar.update(len(sel))
    cols = {f: np.concatenate([getattr(p, f) for p in parts]) if parts else getattr(TopK.empty(), f)
            for f in TopK.FIELDS}
    cols["query_id"] = cols.pop("query_index")
    cache.write_retrieval(cols, cache_dir / cache.RETRIEVAL_PARQUET, {**params_dict(params), "exclude": exclude})
    return RetrieveSummary(n, int(np.unique(cols["query_id"]).size), int(cols["query_id"].size), len(db) - n)


def params_dict(p: RetrievalParams) -> dict:
    d = asdict(p)
    d["max_score"] = None if np.isinf(d["max_score"]) else d["max_score"]
    return d
