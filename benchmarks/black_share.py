"""How much of the retrieval guidance stays black, per pruning mode and ``max_score``.

The numbers behind the choice of ``decompose.pruning`` and ``retrieve.max_score``: every black pixel of
the guidance is a pixel where the generator gets no retrieved appearance to follow.

A segment is black in the guidance when it has no retrieval rows: it was pruned per image
(``decompose.pruning: image``, no query) or no candidate of its class is admissible (``D >
max_score``, or the class has no candidate but the query itself — or, with ``retrieve.exclude:
image``, none outside the query's own image). Pixel shares come from
the real composition (``guidance.h5`` ``valid`` maps, all four paste rules), so void pixels and
segments below ``min_area`` count as black too; the last columns count only labelled (non-void)
pixels.

Run: ``resail black-share --format folder --data-root data/camvid_demo`` (stages/black_share.py).
Every (pruning, max_score) pair decomposes (once per pruning), retrieves and composes in a
temporary folder; nothing is written elsewhere.
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.cache import SegmentDB
from pipeline.datasets import open_dataset
from pipeline.decompose.build import DecomposeParams, build_segment_db
from pipeline.compose.build import compose_dataset, read_guidance
from pipeline.retrieve.retrieval import RetrievalParams
from pipeline.retrieve.build import run_retrieval
from pipeline.decompose.segments import PRUNING_MODES

SPLITS = ("train", "val")


def _labelled_pixels(cache_dir: Path) -> dict[tuple[str, str], int]:
    """Non-void pixels of every image (independent of the settings)."""
    with SegmentDB.open(cache_dir) as db:
        adapter = db.open_adapter()
        ignore = db.meta.ignore_id
        return {(r.split, r.image_id): int((adapter.load(r).labels != ignore).sum()) for r in db.sample_refs(adapter)}


def measure(cache_dir: Path, labelled: dict[tuple[str, str], int], max_score: float | None, jobs: int,
            exclude: str = "self") -> dict:
    """Black shares of one cache after retrieval with ``max_score`` (``exclude``: ``retrieve.exclude``)
    and composition."""
    params = RetrievalParams(k=10, max_score=math.inf if max_score is None else float(max_score))
    run_retrieval(cache_dir, params, device="cpu", progress=False, exclude=exclude)
    compose_dataset(cache_dir, jobs=jobs, progress=False)
    import pyarrow.parquet as pq

    matched = set(pq.read_table(cache_dir / "retrieval.parquet", columns=["query_id"]).column("query_id").to_pylist())
    out = {}
    with SegmentDB.open(cache_dir) as db:
        split_col = db.col("split")
        has = np.zeros(len(db), bool)
        has[list(matched)] = True
        for split in SPLITS:
            sel = split_col == split
            if not sel.any():
                continue
            black = tot = black_lab = lab = 0
            for r in db.image_rows(split):
                _, valid = read_guidance(cache_dir, split, r["image_id"])
                black += int((~valid).sum())
                tot += valid.size
                n_lab = labelled[(split, r["image_id"])]
                lab += n_lab
                black_lab += n_lab - int(valid.sum())  # pasted pixels are never void (rule: nothing pasted on void)
            out[split] = dict(segments=float((~has[sel]).mean()), pruned=float((~db.col("query")[sel]).mean()),
                              pixels=black / tot, labelled=black_lab / max(lab, 1), n_segments=int(sel.sum()))
    return out


def run_black_share(fmt: str, data_root: str | Path, *, max_scores=(None, 0.58, 0.15), prunings=PRUNING_MODES,
                    jobs: int = 2, options: dict | None = None, resize: str | None = None) -> list[dict]:
    adapter = open_dataset(fmt, data_root, options, resize)
    rows = []
    t0 = time.perf_counter()
    print(f"black share of the retrieval guidance: {data_root} ({fmt}), min_area 16, preserved_ratio 0.9, k 10, "
          "step scale term")
    print("| pruning | max_score | segments black (train) | pixels black (train) | labelled px black (train) "
          "| segments black (val) | pixels black (val) | labelled px black (val) | pruned queries (train / val) |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        labelled = None
        for pruning in prunings:
            cache_dir = Path(tmp) / pruning
            build_segment_db(adapter, cache_dir, params=DecomposeParams(pruning=pruning), jobs=jobs, progress=False)
            if labelled is None:
                labelled = _labelled_pixels(cache_dir)
            for ms in max_scores:
                r = dict(pruning=pruning, max_score=ms, **measure(cache_dir, labelled, ms, jobs))
                rows.append(r)
                t, v = r.get("train", {}), r.get("val", {})
                cell = lambda d, k: f"{100 * d[k]:.1f} %" if k in d else "–"  # noqa: E731
                print(f"| {r['pruning']} | {'null' if r['max_score'] is None else r['max_score']} | {cell(t, 'segments')} | "
                      f"{cell(t, 'pixels')} | {cell(t, 'labelled')} | {cell(v, 'segments')} | {cell(v, 'pixels')} | "
                      f"{cell(v, 'labelled')} | {cell(t, 'pruned')} / {cell(v, 'pruned')} |", flush=True)
    print(f"{len(labelled or {})} images, {time.perf_counter() - t0:.0f} s")
    return rows


def parse_max_scores(text: str) -> tuple[float | None, ...]:
    """``"null,0.58,0.15"`` → ``(None, 0.58, 0.15)``; ``null``, ``none`` or an empty item = no threshold."""
    return tuple(None if s.strip() in ("null", "none", "") else float(s) for s in text.split(","))
