"""Retrieval over a segment database (``resail retrieve``): every segment is a query, the
candidate rows of the database split are the index, results go to ``retrieval.parquet``.

Training queries (rows of the database split) never retrieve from their own image; queries of
other splits search the whole database (method.md §2). Segments pruned per image
(``segments.parquet`` ``query`` = False, ``decompose.pruning: image``) are not searched, so they
have no rows and compose leaves them black, as the released code gives them no guidance. The index is the exact engine of
:mod:`pipeline.retrieval`, so the table equals a brute-force search row for row.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pipeline import cache
from pipeline.cache import SegmentDB
from pipeline.retrieval import NO_EXCLUDE, RetrievalParams, SegmentIndex, TopK


def image_keys(db: SegmentDB) -> np.ndarray:
    """Per segment, the row of its image in ``images.parquet`` (the image key of the engine)."""
    first = db.images.column("first_segment").to_numpy()
    count = db.images.column("n_segments").to_numpy()
    return np.repeat(np.arange(len(first), dtype=np.int64), count) if len(db) else np.zeros(0, np.int64)


def build_index(db: SegmentDB, device: str = "cpu") -> SegmentIndex:
    """The exact top-k index over the database's candidate rows (masks loaded once)."""
    return SegmentIndex.build(db.norm_masks(), db.col("class_id"), db.col("box_area"), image_keys(db),
                              candidate=db.col("candidate"), mask_size=db.mask_size, device=device)


def query_exclusions(db: SegmentDB) -> np.ndarray:
    """Image key to exclude per query: its own image for database-split rows, none otherwise."""
    db_split = db.attrs.get("db_split", "train")
    keys = image_keys(db)
    return np.where(db.col("split") == db_split, keys, NO_EXCLUDE)


@dataclass
class RetrieveSummary:
    n_queries: int
    n_matched: int  # queries with at least one admissible candidate
    n_rows: int
    n_pruned: int = 0  # segments not searched (pruned per image)


def run_retrieval(cache_dir: str | Path, params: RetrievalParams = RetrievalParams(), *, device: str = "cpu",
                  batch: int = 4096, threads: int | None = None, progress: bool = True) -> RetrieveSummary:
    """Search every segment of the database; write ``retrieval.parquet`` atomically."""
    cache_dir = Path(cache_dir)
    with SegmentDB.open(cache_dir) as db:
        index = build_index(db, device)
        packed = index.packed  # the same array the index holds: no second copy of the masks
        classes, areas, excl = db.col("class_id"), db.col("box_area"), query_exclusions(db)
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
    cache.write_retrieval(cols, cache_dir / cache.RETRIEVAL_PARQUET, params_dict(params))
    return RetrieveSummary(n, int(np.unique(cols["query_id"]).size), int(cols["query_id"].size), len(db) - n)


def params_dict(p: RetrievalParams) -> dict:
    d = asdict(p)
    d["max_score"] = None if np.isinf(d["max_score"]) else d["max_score"]
    return d
