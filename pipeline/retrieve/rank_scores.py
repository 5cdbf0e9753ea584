"""Mean retrieval score per rank: what the paper's Table B reports (appendix C).

Table B's "shape non-similarity threshold" row (0.15 … 0.58) is no threshold in the released code:
its search has none (``data/data_base.py`` ``match_topk`` keeps the top-k of every query), and its
``helper.py`` prints, for the ranks :data:`HELPER_RANKS`, the mean score ``D`` of the rank-``r``
candidate over the validation queries — the score of the segment pasted when a run pastes rank ``r``
instead of the best. Read so, the Table-B grid is a sweep of ``compose.rank``; this module gives
the number to put beside each rank, on the score of :mod:`pipeline.retrieve.retrieval` (the released
one: XOR count over the larger mask on the S×S masks, plus 1 for a ≥ 2× box-area ratio).

``helper.py`` details that :func:`cache_rank_mean_scores` can reproduce: its queries are the
validation segments (``score[n_train:]``) against the training database; it asks every class for its
top ``1000 + 1`` and a class with fewer candidates raises inside ``torch.topk`` and is skipped for
every rank (``require_rank=1000``); the mean is over the pooled queries of all classes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import cache
from pipeline.errors import ConfigError

#: The ranks ``helper.py`` of the released code averages (its ``score_index`` loop).
HELPER_RANKS = (0, 10, 50, 132, 254, 369, 528, 660, 858, 990)


@dataclass(frozen=True)
class RankScore:
    rank: int
    mean: float  # NaN when no counted query has a candidate of this rank
    n: int  # queries counted


def rank_mean_scores(query_id, rank, score, ranks: Sequence[int], *, queries: np.ndarray | None = None,
                     require_rank: int | None = None) -> list[RankScore]:
    """Mean ``score`` of the rank-``r`` rows for each ``r`` of ``ranks``.

    ``query_id``/``rank``/``score``: the columns of ``retrieval.parquet`` (any order). ``queries``: bool
    per segment id, the queries that count (None: all). ``require_rank``: count only queries that have
    a row of this rank (``helper.py`` drops classes whose top-1001 list is not full). A query without
    a row of rank ``r`` does not count for ``r`` (compose leaves it black there).
    """
    q = np.asarray(query_id, np.int64)
    r = np.asarray(rank, np.int64)
    s = np.asarray(score, np.float64)
    keep = np.ones(q.size, bool)
    if queries is not None:
        queries = np.asarray(queries, bool)
        inside = q < queries.size
        keep &= inside & queries[np.where(inside, q, 0)]
    if require_rank is not None:
        keep &= np.isin(q, q[r == int(require_rank)])
    out = []
    for want in ranks:
        sel = keep & (r == int(want))
        n = int(sel.sum())
        out.append(RankScore(int(want), float(s[sel].mean()) if n else float("nan"), n))
    return out


def cache_rank_mean_scores(cache_dir: str | Path, ranks: Sequence[int] = HELPER_RANKS, *,
                           split: str | None = "val", require_rank: int | None = None
                           ) -> tuple[list[RankScore], dict]:
    """:func:`rank_mean_scores` of a cache's ``retrieval.parquet`` over the queries of ``split`` (None:
    every query) → ``(rows, retrieve params recorded in the file)``. ConfigError when the file was
    retrieved with ``k`` too small for the largest rank asked for."""
    cache_dir = Path(cache_dir)
    with cache.SegmentDB.open(cache_dir) as db:
        n = len(db)
        splits = db.col("split")
        table, params = cache.read_retrieval(cache_dir, n)
    top = max([int(r) for r in ranks] + ([int(require_rank)] if require_rank is not None else []))
    k = params.get("k")
    if k is not None and int(k) <= top:
        raise ConfigError(None, f"{cache_dir / cache.RETRIEVAL_PARQUET} keeps k={k} candidates per query; rank {top} "
                                f"needs k >= {top + 1} (resail retrieve --k {top + 1})")
    queries = None if split is None else np.asarray(splits == split, bool)
    cols = {c: table.column(c).to_numpy() for c in ("query_id", "rank", "score")}
    return rank_mean_scores(cols["query_id"], cols["rank"], cols["score"], ranks, queries=queries,
                            require_rank=require_rank), params
