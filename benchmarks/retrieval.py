"""Retrieval benchmark: the exact top-k engine against an authors-style brute force.

``run_retrieval_bench`` builds, for each database size, a synthetic segment database (jittered
copies of seed masks spread over ``n_classes`` classes with a skewed class frequency), takes
``n_queries`` database rows as training queries (own image excluded, as the ``retrieve`` stage
does), and times

(a) the reference in the authors' style: unpacked uint8 S×S masks; per query the XOR count against
    all same-class candidates as one N×S×S numpy operation, then a sort. Unpacking is not timed.
    It runs on a random subset of the queries when the full set would take longer than
    ``ref_budget_s`` (the table says how many);
(b) the engine (:class:`pipeline.retrieve.retrieval.SegmentIndex`): build once, then one batched search;
(c) the on-line use: 50 queries against the index per call (median latency).

It checks that the top-k of (a) and (b) are identical on the common queries, records the engine's
peak resident memory (Linux ``VmHWM``, reset before the engine phase when the kernel allows it),
prints a Markdown table and returns the figures as a dict.
"""
from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass

import numpy as np

from pipeline.retrieve.retrieval import (
    NO_EXCLUDE,
    RetrievalParams,
    SegmentIndex,
    TopK,
    _concat_topk,
    log_areas,
    mask_size_from_packed,
    pair_scores,
    unpack_masks,
)

try:  # cv2 rasterises the synthetic polygons; a numpy fallback keeps the benchmark importable
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None


# --------------------------------------------------------------------------------------------
# Synthetic databases
# --------------------------------------------------------------------------------------------
@dataclass
class SegmentTable:
    """Columns of a segment database (pipeline.retrieve.retrieval array conventions)."""

    packed: np.ndarray  # uint8 [N, ceil(S*S/8)]
    class_ids: np.ndarray  # int64 [N]
    box_areas: np.ndarray  # int64 [N]
    image_keys: np.ndarray  # int64 [N]
    segment_ids: np.ndarray  # int64 [N]
    mask_size: int

    def __len__(self) -> int:
        return int(self.class_ids.shape[0])


def _class_of_samples(rng: np.random.Generator, n: int, n_classes: int) -> np.ndarray:
    p = 1.0 / np.arange(1, n_classes + 1) ** 0.7  # skewed like real datasets
    return rng.choice(n_classes, size=n, p=p / p.sum())


def _polygon_seeds(rng: np.random.Generator, n_classes: int, per_class: int) -> dict:
    """Star-shaped polygon seeds: per class a vertex count and roughness, per seed radii/aspect."""
    k_cls = rng.integers(6, 19, n_classes)
    rough = rng.uniform(0.1, 0.45, n_classes)
    kmax = int(k_cls.max())
    radii = np.ones((n_classes, per_class, kmax))
    angles = np.zeros((n_classes, per_class, kmax))
    for c in range(n_classes):
        k = int(k_cls[c])
        r = np.exp(rng.normal(0, rough[c], (per_class, k)))
        radii[c, :, :k] = r
        radii[c, :, k:] = r[:, -1:]
        a = np.sort(rng.uniform(0, 2 * np.pi, (per_class, k)), axis=1)
        angles[c, :, :k] = a
        angles[c, :, k:] = a[:, -1:]
    return {
        "k": k_cls,
        "radii": radii,
        "angles": angles,
        "aspect": np.exp(rng.normal(0, 0.5, (n_classes, per_class))),
        "log_area": rng.uniform(math.log(64), math.log(200_000), (n_classes, per_class)),
    }


def _fill_polygon(pts: np.ndarray, s: int) -> np.ndarray:
    if cv2 is not None:
        img = np.zeros((s, s), np.uint8)
        cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        return img.view(bool)
    # even-odd fill of pixel centres (slow fallback)
    yy, xx = np.mgrid[0:s, 0:s] + 0.0
    inside = np.zeros((s, s), bool)
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for a, b, c, d in zip(x0, y0, x1, y1):
        cond = (b > yy) != (d > yy)
        xint = (c - a) * (yy - b) / np.where(d == b, 1e-12, d - b) + a
        inside ^= cond & (xx < xint)
    return inside


def _synthetic_polygons(rng, n, s, n_classes, per_class, jitter, chunk=8192):
    seeds = _polygon_seeds(rng, n_classes, per_class)
    cls = _class_of_samples(rng, n, n_classes)
    sid = rng.integers(0, per_class, n)
    packed = np.empty((n, (s * s + 7) // 8), np.uint8)
    area = np.empty(n, np.int64)
    kmax = seeds["radii"].shape[2]
    for lo in range(0, n, chunk):
        c, j = cls[lo:lo + chunk], sid[lo:lo + chunk]
        m = c.size
        r = seeds["radii"][c, j] * np.exp(rng.normal(0, jitter, (m, kmax)))
        th = (seeds["angles"][c, j] + rng.normal(0, jitter, (m, 1))
              + rng.normal(0, jitter / 2, (m, kmax)))
        asp = seeds["aspect"][c, j][:, None] * np.exp(rng.normal(0, jitter, (m, 1)))
        x = r * np.cos(th) * asp
        y = r * np.sin(th)
        x = (x - x.min(1, keepdims=True)) / np.ptp(x, axis=1, keepdims=True) * (s - 1)
        y = (y - y.min(1, keepdims=True)) / np.ptp(y, axis=1, keepdims=True) * (s - 1)
        masks = np.empty((m, s, s), bool)
        ks = seeds["k"][c]
        for i in range(m):
            masks[i] = _fill_polygon(np.stack([x[i, :ks[i]], y[i, :ks[i]]], 1), s)
        packed[lo:lo + m] = np.packbits(masks.reshape(m, -1), axis=1)
        la = seeds["log_area"][c, j] + rng.normal(0, 0.35, m)
        area[lo:lo + m] = np.maximum(16, np.round(np.exp(la))).astype(np.int64)
    return packed, cls.astype(np.int64), area


def _jittered_real(rng, n, s, real_masks, real_classes, jitter, chunk=4096):
    """Jitter real normalised masks: crop up to ``jitter`` of each side, stretch back (nearest)."""
    m_real = unpack_masks(real_masks, s)
    pick = rng.integers(0, m_real.shape[0], n)
    packed = np.empty((n, (s * s + 7) // 8), np.uint8)
    base = np.arange(s) + 0.5
    for lo in range(0, n, chunk):
        p = pick[lo:lo + chunk]
        m = p.size
        cut = rng.uniform(0, jitter, (m, 4)) * s  # top, bottom, left, right
        rows = cut[:, :1] + base[None] * (s - cut[:, :1] - cut[:, 1:2]) / s
        cols = cut[:, 2:3] + base[None] * (s - cut[:, 2:3] - cut[:, 3:4]) / s
        rows = np.clip(rows.astype(np.int64), 0, s - 1)
        cols = np.clip(cols.astype(np.int64), 0, s - 1)
        masks = m_real[p[:, None, None], rows[:, :, None], cols[:, None, :]]
        packed[lo:lo + m] = np.packbits(masks.reshape(m, -1), axis=1)
    cls = np.asarray(real_classes, dtype=np.int64)[pick]
    area = np.maximum(16, np.round(np.exp(rng.uniform(math.log(64), math.log(200_000), n))))
    return packed, cls, area.astype(np.int64)


def synthetic_database(
    n: int,
    mask_size: int = 128,
    *,
    n_classes: int = 20,
    seeds_per_class: int | None = None,
    jitter: float = 0.12,
    segments_per_image: int = 10,
    real_masks: np.ndarray | None = None,
    real_classes: np.ndarray | None = None,
    seed: int = 0,
) -> SegmentTable:
    """A database of ``n`` segments made by jittering seed masks (fixed ``seed``).

    Without ``real_masks``: random star-shaped polygons (``seeds_per_class`` per class, default
    ``max(20, n // 500)``), class frequencies ∝ 1/(c+1)^0.7, each segment a jittered copy of a seed
    (vertex radii/angles/aspect) stretched to fill the S×S frame, box areas log-uniform 64…200k
    jittered per segment. With ``real_masks`` (packed uint8 [M, S*S/8]) and ``real_classes`` [M]:
    jittered crops of those masks, keeping their classes.
    """
    rng = np.random.default_rng(seed)
    s = mask_size
    if real_masks is not None:
        if real_classes is None:
            raise ValueError("real_masks needs real_classes")
        s = mask_size_from_packed(np.asarray(real_masks).shape[1])
        packed, cls, area = _jittered_real(rng, n, s, real_masks, real_classes, jitter)
    else:
        per = seeds_per_class or max(20, n // 500)
        packed, cls, area = _synthetic_polygons(rng, n, s, n_classes, per, jitter)
    images = rng.integers(0, max(1, n // segments_per_image), n).astype(np.int64)
    return SegmentTable(packed, cls, area, images, np.arange(n, dtype=np.int64), s)


# --------------------------------------------------------------------------------------------
# Authors-style reference
# --------------------------------------------------------------------------------------------
def reference_topk(db: SegmentTable, queries: np.ndarray, exclude: np.ndarray,
                   params: RetrievalParams, slice_masks: int = 16384) -> tuple[TopK, float]:
    """Per query: XOR count against all same-class candidates on unpacked uint8 masks (one
    N×S×S numpy operation per slice of ``slice_masks``), score, sort. Returns (TopK, seconds of
    the per-query work; unpacking excluded). ``query_index`` = position in ``queries``."""
    s = db.mask_size
    area = db.box_areas.astype(np.float64)
    logs = log_areas(area)
    by_class: dict[int, list[int]] = {}
    for i, r in enumerate(queries):
        by_class.setdefault(int(db.class_ids[r]), []).append(i)
    parts, timed = [], 0.0
    for c, qis in by_class.items():
        cand = np.flatnonzero(db.class_ids == c)
        xors = np.empty((len(qis), cand.size), np.int64)
        pops = np.empty(cand.size, np.int64)
        qmasks = unpack_masks(db.packed[queries[qis]], s).view(np.uint8)
        qpop = qmasks.reshape(len(qis), -1).sum(1, dtype=np.int64)
        for lo in range(0, cand.size, slice_masks):
            mc = unpack_masks(db.packed[cand[lo:lo + slice_masks]], s).view(np.uint8)
            pops[lo:lo + mc.shape[0]] = mc.reshape(mc.shape[0], -1).sum(1, dtype=np.int64)
            t = time.perf_counter()
            for j in range(len(qis)):
                xors[j, lo:lo + mc.shape[0]] = np.count_nonzero(
                    (mc != qmasks[j]).reshape(mc.shape[0], -1), axis=1)
            timed += time.perf_counter() - t
        t = time.perf_counter()
        for j, qi in enumerate(qis):
            r = queries[qi]
            ok = db.image_keys[cand] != exclude[qi] if exclude[qi] != NO_EXCLUDE else slice(None)
            idx = cand[ok]
            score, shape, scale = pair_scores(
                xors[j][ok], np.full(idx.size, qpop[j]), pops[ok], np.full(idx.size, area[r]),
                area[idx], np.full(idx.size, logs[r]), logs[idx], params)
            adm = score <= params.max_score
            idx, score, shape, scale = idx[adm], score[adm], shape[adm], scale[adm]
            o = np.lexsort((db.segment_ids[idx], score))[: params.k]
            parts.append(TopK(
                np.full(o.size, qi, np.int64), np.arange(o.size, dtype=np.int32),
                db.segment_ids[idx][o], score[o].astype(np.float32),
                shape[o].astype(np.float32), scale[o].astype(np.float32)))
        timed += time.perf_counter() - t
    return _concat_topk(parts), timed


# --------------------------------------------------------------------------------------------
# Memory helpers
# --------------------------------------------------------------------------------------------
def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------
def run_retrieval_bench(
    sizes=(10_000, 100_000, 1_000_000),
    n_queries: int = 2000,
    mask_size: int = 128,
    real_masks: np.ndarray | None = None,
    real_classes: np.ndarray | None = None,
    seed: int = 0,
    jobs: int | None = None,
    *,
    ref_budget_s: float = 60.0,
    online_queries: int = 50,
    device: str = "cpu",
    params: RetrievalParams = RetrievalParams(),
    print_fn=print,
) -> dict:
    """Run the benchmark for each size; print a Markdown table; return ``{size: figures}``.

    ``jobs``: torch CPU threads the engine may use for large blocks (``search(threads=)``,
    default 1; the reference is numpy, single-threaded). ``ref_budget_s``: time the
    authors-style reference on as many queries as fit this budget (estimated from three
    calibration queries; at least 3). Figures per size: ``gen_s``, ``build_s``, ``engine_qps``,
    ``ref_qps``, ``ref_queries``, ``speedup``, ``identical``, ``peak_rss_mb`` (engine phase),
    ``peak_reset`` (False: the peak is the whole process's), ``index_mb``, ``online_ms``,
    ``bounded_per_query``, ``scored_per_query``.
    """
    jobs = int(jobs or 1)
    results: dict[int, dict] = {}
    for n in sizes:
        results[int(n)] = _bench_one(int(n), n_queries, mask_size, real_masks, real_classes,
                                     seed, ref_budget_s, online_queries, device, params, jobs)
    print_fn(format_table(results, jobs))
    return results


def _bench_one(n, n_queries, mask_size, real_masks, real_classes, seed, ref_budget_s,
               online_queries, device, params, jobs) -> dict:
    t = time.perf_counter()
    db = synthetic_database(n, mask_size, real_masks=real_masks, real_classes=real_classes,
                            seed=seed)
    gen_s = time.perf_counter() - t
    rng = np.random.default_rng(seed + 1)
    nq = min(n_queries, n)
    queries = np.sort(rng.choice(n, nq, replace=False))
    exclude = db.image_keys[queries]

    # (b) engine -----------------------------------------------------------------------------
    reset = _reset_peak_rss()
    t = time.perf_counter()
    index = SegmentIndex.build(db.packed, db.class_ids, db.box_areas, db.image_keys,
                               db.segment_ids, device=device)
    build_s = time.perf_counter() - t
    stats: dict = {}
    t = time.perf_counter()
    res = index.search(db.packed[queries], db.class_ids[queries], db.box_areas[queries], exclude,
                       params, threads=jobs, stats=stats)
    search_s = time.perf_counter() - t
    peak = _peak_rss_bytes()

    # (c) on-line: a label map's worth of queries per call ------------------------------------
    no = min(online_queries, n)
    lat = []
    for rep in range(7):
        sel = np.random.default_rng(seed + 100 + rep).choice(n, no, replace=False)
        t = time.perf_counter()
        index.search(db.packed[sel], db.class_ids[sel], db.box_areas[sel], None, params)
        lat.append(time.perf_counter() - t)
    online_ms = float(np.median(lat) * 1e3)

    # (a) authors-style reference on a subset ---------------------------------------------------
    order = rng.permutation(nq)
    cal = order[:3]
    _, cal_s = reference_topk(db, queries[cal], exclude[cal], params)
    n_ref = int(min(nq, max(3, ref_budget_s / max(cal_s / cal.size, 1e-6))))
    sub = np.sort(order[:n_ref])
    ref, ref_s = reference_topk(db, queries[sub], exclude[sub], params)
    # engine rows of the same queries, re-indexed to positions in `sub`
    pos = np.full(nq, -1)
    pos[sub] = np.arange(sub.size)
    keep = pos[res.query_index] >= 0
    eng = TopK(pos[res.query_index[keep]].astype(np.int64), res.rank[keep],
               res.candidate_id[keep], res.score[keep], res.shape_term[keep],
               res.scale_term[keep])
    eng = _concat_topk([eng])
    diff = eng.first_difference(ref)
    engine_qps = nq / search_s
    ref_qps = n_ref / ref_s
    return {
        "n": n,
        "queries": nq,
        "gen_s": gen_s,
        "build_s": build_s,
        "search_s": search_s,
        "engine_qps": engine_qps,
        "ref_queries": n_ref,
        "ref_qps": ref_qps,
        "speedup": engine_qps / ref_qps,
        "identical": diff is None,
        "difference": diff,
        "peak_rss_mb": peak / 2**20,
        "peak_reset": reset,
        "index_mb": index.memory_bytes() / 2**20,
        "packed_mb": db.packed.nbytes / 2**20,
        "online_ms": online_ms,
        "bounded_per_query": stats["bounded_pairs"] / nq,
        "scored_per_query": stats["scored_pairs"] / nq,
        "results": len(res),
    }


def format_table(results: dict, threads: int) -> str:
    lines = [
        f"Retrieval benchmark (engine torch threads: {threads}; reference = authors-style unpacked "
        "N×S×S XOR per query, timed on a random subset of the queries)",
        "",
        "| DB segments | queries | engine q/s | reference q/s (queries timed) | speedup | "
        "identical top-k | engine peak RSS MB | index MB (+packed MB) | build s | "
        "on-line 50 q ms | bounded / scored pairs per query |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in results.items():
        peak = f"{r['peak_rss_mb']:.0f}" + ("" if r["peak_reset"] else " (process)")
        lines.append(
            f"| {n:,} | {r['queries']:,} | {r['engine_qps']:,.0f} | "
            f"{r['ref_qps']:,.2f} ({r['ref_queries']}) | {r['speedup']:,.0f}× | "
            f"{'yes' if r['identical'] else 'NO: ' + str(r['difference'])} | {peak} | "
            f"{r['index_mb']:.0f} (+{r['packed_mb']:.0f}) | {r['build_s']:.1f} | "
            f"{r['online_ms']:.1f} | {r['bounded_per_query']:,.0f} / "
            f"{r['scored_per_query']:,.0f} |")
    return "\n".join(lines)
