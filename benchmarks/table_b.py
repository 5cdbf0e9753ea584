"""Table B on our data: the mean score of the pasted candidate per rank, beside the paper's value.

The paper's Table B ("shape non-similarity threshold" 0.15 … 0.58 → FID) is a sweep of the pasted
rank read as the mean score of the rank-r candidate (:mod:`pipeline.retrieve.rank_scores`,
:mod:`resail_train.reporting.paper_numbers`). This prints, for each rank, that mean on a cache's
``retrieval.parquet`` — which must keep ``k >= max rank + 1`` candidates per query
(``resail retrieve --k 991`` for the released ranks) — next to the paper's value and FID.

Run: ``resail bench table-b --cache CACHE [--ranks 0,10,…] [--split val|all] [--require-rank 1000]``.
The defaults count what the released ``helper.py`` counts (validation queries against the training
database); ``--require-rank 1000`` with ``k >= 1001`` also drops the classes whose top-1001 list is
not full, as ``helper.py`` does.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.retrieve.rank_scores import HELPER_RANKS, cache_rank_mean_scores
from resail_train.reporting.paper_numbers import TABLE_B_MEAN_SCORE, TABLES


def run_table_b(cache_dir: str | Path, ranks: Sequence[int] = HELPER_RANKS, *, split: str | None = "val",
                require_rank: int | None = None, print_fn: Callable[[str], None] = print) -> list[dict]:
    """One row per rank: ``rank``, ``mean`` (ours), ``n`` (queries counted), ``paper`` (value), ``paper_fid``."""
    rows, params = cache_rank_mean_scores(cache_dir, ranks, split=split, require_rank=require_rank)
    table_b = TABLES["B"]
    print_fn(f"Table B as a rank sweep: {cache_dir} (retrieve k={params.get('k')}, exclude="
             f"{params.get('exclude', 'image')}, max_score={params.get('max_score')}), queries: "
             f"{split or 'all'}" + (f", only those with a rank-{require_rank} candidate" if require_rank is not None
                                    else ""))
    print_fn("| rank | mean score of the pasted candidate (ours) | queries | paper value | paper FID |")
    print_fn("|---|---|---|---|---|")
    out = []
    for r in rows:
        paper = TABLE_B_MEAN_SCORE.get(r.rank)
        row = table_b.row_for(r.rank)
        out.append({"rank": r.rank, "mean": None if math.isnan(r.mean) else r.mean, "n": r.n, "paper": paper,
                    "paper_fid": None if row is None else row.fid})
        print_fn(f"| {r.rank} | {'—' if math.isnan(r.mean) else f'{r.mean:.3f}'} | {r.n} | "
                 f"{'—' if paper is None else paper} | {'—' if row is None else row.fid} |")
    return out
