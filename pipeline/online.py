"""On-line guidance for label maps that are not in the database (synthesis and editing).

:class:`OnlineGuidance` loads the segment database and its exact index once; then each call
decomposes a new label map (+ optional instance map) exactly as ``resail decompose`` does,
retrieves against the database split (no image excluded) and composes the guidance image with the
paper's four rules — the same functions the offline stages use, so a label map that *is* in the
database gets exactly the guidance ``resail compose`` wrote for it.

Array conventions: labels H×W int (dataset class ids, ``ignore_id`` = void); instances H×W int
(0 = none); guidance H×W×3 uint8 RGB; valid H×W bool.

**Several images for one map** (:func:`draw_ranks`, ``choose(..., temperature=T, rng=...)``): each
segment draws its candidate from its top-k with probability ∝ ``exp(−(score + TIE_BREAK·rank)/T)``
(the scores are the retrieval's geometric scores, lower = better). ``TIE_BREAK`` (1e-4) only orders
candidates of *equal* score the way retrieval ranks them (lower segment id first), so that T → 0
draws rank 0 for every segment — exactly the rank-0 guidance — even where scores tie; at the
temperatures of interest (T ≥ 0.1) it changes a probability by under 1 %. One uniform number per
segment, in segment order, from :func:`sample_rng` (seed, sample index): a segment's draw depends on
the seed, the sample index, its position and its own candidates only.

**Appearance from a photo** (:meth:`OnlineGuidance.photo_reference`, :meth:`OnlineGuidance.photo_topk`):
a photo with its label map (+ optional instance map) is decomposed exactly as ``resail decompose``
cuts a database image (the cache's ``min_area``, mask size and pruning rule applied to the photo
alone), and its segments become a one-image candidate database, searched with the cache's retrieval
params (same geometric score, same ``k`` and ``max_score``, exact top-k). A query segment takes the
best-scoring photo segment of its class (ties: decomposition order); crops are pasted with the same
four rules. A segment with no admissible photo candidate (its class is absent from the photo, or
every photo segment of it scores above ``max_score``) falls back to the database (rank 0), or stays
black with ``strict``.
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline import cache
from pipeline.cache import SegmentDB
from pipeline.compose.composition import compose_guidance
from pipeline.errors import ConfigError, DataError
from pipeline.retrieve.retrieval import NO_EXCLUDE, RetrievalParams, SegmentIndex, TopK
from pipeline.retrieve.build import build_index
from pipeline.decompose.segments import (Segment, decompose, normalised_mask, pack_mask, pruning_flags,
                                         segment_query_flags)

MAX_SAMPLES = 64  # samples of one map per call (resail synthesize --samples)
DEFAULT_TEMPERATURE = 1.0  # --samples N > 1 without --temperature
TIE_BREAK = 1e-4  # per rank, added to the score in the draw: equal scores keep the retrieval order as T → 0


@dataclass
class OnlineResult:
    guidance: np.ndarray  # H×W×3 uint8
    valid: np.ndarray  # H×W bool, pixels that received a paste
    segments: list[Segment]  # the label map's segments (query i = segments[i])
    topk: TopK  # query_index = index into ``segments``
    matches: np.ndarray  # chosen candidate segment id per query, −1 = black (or taken from the photo)
    timings: dict = field(default_factory=dict)  # seconds: decompose, retrieve, compose
    photo_matches: np.ndarray | None = None  # reference photo: its segment per query, −1 = none


class OnlineGuidance:
    """Retrieval guidance for arbitrary label maps against a decomposed training database."""

    def __init__(self, cache_dir: str | Path, params: RetrievalParams | None = None, device: str = "cpu",
                 crop_cache: int = 4096) -> None:
        self.cache_dir = Path(cache_dir)
        self.db = SegmentDB.open(self.cache_dir)
        attrs = self.db.attrs
        self.meta = self.db.meta
        self.min_area = int(attrs.get("min_area", 16))
        self.pruning = str(attrs.get("pruning", "dataset"))  # per-image query pruning of the database (B)
        self.preserved_ratio = float(attrs.get("preserved_ratio", 0.9))
        self.params = params or self._recorded_params()
        self.index = build_index(self.db, device)
        self._crops: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._crop_cache = crop_cache
        self._valid_ids = np.append(self.meta.ids, self.meta.ignore_id)

    def _recorded_params(self) -> RetrievalParams:
        """The params ``resail retrieve`` used for this cache, so on-line matches the offline stage."""
        path = self.cache_dir / cache.RETRIEVAL_PARQUET
        if not path.is_file():
            return RetrievalParams()
        _, p = cache.read_retrieval(self.cache_dir)
        ms = p.get("max_score")
        return RetrievalParams(k=int(p.get("k", 10)), max_score=float("inf") if ms is None else float(ms),
                               alpha=float(p.get("alpha", 1.0)), scale_term=str(p.get("scale_term", "step")))

    # ------------------------------------------------------------------ inputs
    def check(self, labels: np.ndarray, instances: np.ndarray | None = None, source: str | Path | None = None) -> None:
        """DataError (naming ``source``) for class ids outside the list or a mismatched instance map."""
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise DataError(source, f"label map must be 2-D (H×W class ids), got shape {labels.shape}")
        present = np.unique(labels)
        bad = present[~np.isin(present, self._valid_ids)]
        if bad.size:
            raise DataError(source, f"class id(s) {', '.join(map(str, bad[:8].tolist()))} not in the class list "
                                    f"of {self.meta.dataset}")
        if instances is not None and np.asarray(instances).shape != labels.shape:
            raise DataError(source, f"instance map shape {np.asarray(instances).shape} does not match the label "
                                    f"map {labels.shape}")

    def crop(self, segment_id: int) -> tuple[np.ndarray, np.ndarray]:
        """A database crop (LRU-cached: interactive edits reuse the same candidates)."""
        hit = self._crops.get(segment_id)
        if hit is not None:
            self._crops.move_to_end(segment_id)
            return hit
        crop = self.db.crop(segment_id)
        self._crops[segment_id] = crop
        if len(self._crops) > self._crop_cache:
            self._crops.popitem(last=False)
        return crop

    # ------------------------------------------------------------------ calls
    def decompose(self, labels: np.ndarray, instances: np.ndarray | None = None) -> list[Segment]:
        """The segments of a label map, exactly as ``resail decompose`` cuts them (same ``min_area``)."""
        return decompose(np.asarray(labels), None if instances is None else np.asarray(instances), self.meta,
                         self.min_area)

    def retrieve_segments(self, segs: Sequence[Segment]) -> TopK:
        """Exact top-k of given segments (``query_index`` = position in ``segs``).

        A segment's candidates depend only on its class, its box-sized mask crop and its box area
        (no image is excluded on-line), never on the other queries, so an interactive editor can
        re-retrieve just the segments a repaint changed and keep the rest."""
        S = self.db.mask_size
        packed = np.stack([pack_mask(normalised_mask(s.mask, S)) for s in segs]) if len(segs) else \
            np.zeros((0, S * S // 8), np.uint8)
        return self.index.search(packed, [s.class_id for s in segs], [s.box_area for s in segs],
                                 np.full(len(segs), NO_EXCLUDE), self.params)

    def retrieve(self, labels: np.ndarray, instances: np.ndarray | None = None) -> tuple[list[Segment], TopK]:
        """Segments of a label map and their exact top-k database candidates (segments pruned per
        image, as ``resail decompose`` prunes them, get no rows: they stay black)."""
        segs = self.decompose(labels, instances)
        return segs, self.retrieve_segments(segs).only_queries(
            segment_query_flags(segs, self.pruning, self.preserved_ratio))

    def compose(self, labels: np.ndarray, segs: Sequence[Segment], matches: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """(guidance, valid) pasting candidate ``matches[i]`` (−1 = black) for ``segs[i]``, with the
        crop cache."""
        crops = [None if c < 0 else self.crop(int(c)) for c in np.asarray(matches).tolist()]
        return compose_guidance(np.asarray(labels), self.meta, segs, crops)

    def guidance(self, labels: np.ndarray, instances: np.ndarray | None = None, *, rank: int = 0,
                 overrides: Mapping[int, int] | None = None, source: str | Path | None = None,
                 temperature: float | None = None, seed: int = 0, sample: int = 0) -> OnlineResult:
        """Guidance of a label map. ``rank``: which candidate every segment takes (0 = best);
        ``overrides``: {segment index: rank} for single segments (local editing). A rank a
        segment does not have leaves it black, as in ``resail compose``. ``temperature``: every
        segment draws its rank instead (:func:`draw_ranks` with ``sample_rng(seed, sample)``)."""
        t0 = time.perf_counter()
        self.check(labels, instances, source)
        segs, top = self.retrieve(labels, instances)
        t1 = time.perf_counter()
        rng = None if temperature is None else sample_rng(seed, sample)
        matches = choose(top, len(segs), rank, overrides, temperature=temperature, rng=rng)
        guidance, valid = self.compose(labels, segs, matches)
        t2 = time.perf_counter()
        return OnlineResult(guidance, valid, segs, top, matches,
                            {"retrieve": t1 - t0, "compose": t2 - t1, "total": t2 - t0})

    # ------------------------------------------------------------------ a photo as the database
    def photo_reference(self, image: np.ndarray, labels: np.ndarray, instances: np.ndarray | None = None,
                        source: str | Path | None = None) -> "PhotoReference":
        """A photo (H×W×3 uint8 RGB) and its label map (H×W class ids, + optional instance map) as a
        one-image candidate database (see the module docstring). DataError naming ``source`` for a
        size mismatch, class ids outside the class list, or a photo that is not RGB."""
        image = np.asarray(image)
        labels = np.asarray(labels)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(source, f"reference photo must be H×W×3 uint8 RGB, got {image.dtype} {image.shape}")
        if labels.ndim == 2 and image.shape[:2] != labels.shape:
            raise DataError(source, f"reference photo is {image.shape[1]}x{image.shape[0]} but its label map is "
                                    f"{labels.shape[1]}x{labels.shape[0]}")
        self.check(labels, instances, source)
        segs = self.decompose(labels, instances)
        S = self.db.mask_size
        packed = np.stack([pack_mask(normalised_mask(s.mask, S)) for s in segs]) if segs else \
            np.zeros((0, S * S // 8), np.uint8)
        cls = np.asarray([s.class_id for s in segs], np.int64)
        areas = np.asarray([s.area for s in segs], np.int64)
        cand, _ = pruning_flags(self.pruning, np.zeros(len(segs), np.int64), cls, areas, np.ones(len(segs), bool),
                                self.preserved_ratio)
        crops = []
        for s in segs:
            y0, x0, y1, x1 = s.box
            crops.append((np.ascontiguousarray(image[y0:y1, x0:x1]), s.mask))
        index = SegmentIndex.build(packed, cls, np.asarray([s.box_area for s in segs], np.float64),
                                   np.zeros(len(segs), np.int64), candidate=cand, mask_size=S)
        return PhotoReference(None if source is None else str(source), tuple(labels.shape), segs, cand, crops, index)

    def photo_topk(self, photo: "PhotoReference", segs: Sequence[Segment]) -> TopK:
        """Top-k of the query segments ``segs`` among the photo's candidate segments (``candidate_id`` =
        the photo segment's index), same score and params as the database search; segments pruned as
        queries (per-image pruning) get no rows, as in :meth:`retrieve`."""
        S = self.db.mask_size
        packed = np.stack([pack_mask(normalised_mask(s.mask, S)) for s in segs]) if len(segs) else \
            np.zeros((0, S * S // 8), np.uint8)
        top = photo.index.search(packed, [s.class_id for s in segs], [s.box_area for s in segs],
                                 np.full(len(segs), NO_EXCLUDE), self.params)
        return top.only_queries(segment_query_flags(list(segs), self.pruning, self.preserved_ratio))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "OnlineGuidance":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_samples(n, what: str = "samples") -> int:
    """``n`` as the number of samples of one map (1…MAX_SAMPLES), else ConfigError (one line naming ``what``)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= int(n) <= MAX_SAMPLES:
        raise ConfigError(None, f"{what} must be an integer in 1..{MAX_SAMPLES}, got {str(n)[:40]}")
    return int(n)


def check_temperature(t, what: str = "temperature") -> float:
    """``t`` as a sampling temperature (> 0 and finite), else ConfigError (one line naming ``what``)."""
    try:
        v = float(t)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(None, f"{what} must be a number > 0, got {str(t)[:40]}") from None
    if isinstance(t, bool) or not math.isfinite(v) or v <= 0:
        raise ConfigError(None, f"{what} must be > 0 and finite, got {str(t)[:40]}")
    return v


def sample_rng(seed: int, sample: int) -> np.random.Generator:
    """The numpy Generator of sample ``sample`` (>= 0) under ``seed``: PCG64 from
    ``SeedSequence([seed mod 2**64, sample])``, so every (seed, sample) pair has its own stream."""
    if int(sample) < 0:
        raise ValueError(f"sample index must be >= 0, got {sample}")
    return np.random.default_rng(np.random.SeedSequence([int(seed) % (1 << 64), int(sample)]))


def draw_ranks(top: TopK, n_queries: int, temperature: float, rng: np.random.Generator,
               avoid: Mapping[int, int] | None = None) -> np.ndarray:
    """A rank per query (int64 [n_queries]) drawn from its top-k rows by a softmax over
    ``−(score + TIE_BREAK·rank)/temperature`` (module docstring). Queries without rows get 0 (black
    in :func:`choose`). ``avoid``: {query: rank} excluded from that query's draw when it has another
    candidate (the studio's "shuffle this segment" always changes it). One ``rng.random()`` per query."""
    t = check_temperature(temperature)
    u = rng.random(n_queries)
    out = np.zeros(n_queries, np.int64)
    if len(top) == 0 or n_queries == 0:
        return out
    q = top.query_index
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
    ends = np.r_[starts[1:], len(q)]
    score = top.score.astype(np.float64)
    rank = top.rank.astype(np.int64)
    for a, b in zip(starts.tolist(), ends.tolist()):
        qi = int(q[a])
        if not 0 <= qi < n_queries:
            raise ValueError(f"query {qi} out of range 0..{n_queries - 1}")
        eff = score[a:b] + TIE_BREAK * rank[a:b]
        allowed = np.ones(b - a, bool)
        if avoid is not None and qi in avoid and b - a > 1:
            allowed = rank[a:b] != int(avoid[qi])
        w = np.zeros(b - a)
        w[allowed] = np.exp(-(eff[allowed] - eff[allowed].min()) / t)
        c = np.cumsum(w)
        k = int(np.searchsorted(c, u[qi] * c[-1], side="right"))
        out[qi] = int(rank[a + min(k, b - a - 1)])
    return out


def choose(top: TopK, n_queries: int, rank: int = 0, overrides: Mapping[int, int] | None = None, *,
           temperature: float | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """Candidate id per query for a global ``rank`` and per-query ``overrides`` (−1 = black).

    ``temperature``: every query's rank is drawn by :func:`draw_ranks` with ``rng`` instead of
    ``rank`` (which must then be 0); ``overrides`` still win. T → 0 gives rank 0 everywhere."""
    if rank < 0 or any(r < 0 for r in (overrides or {}).values()):
        raise ValueError("ranks must be >= 0")
    if temperature is None:
        want = np.full(n_queries, rank, np.int64)
    else:
        if rank != 0:
            raise ValueError("a drawn choice (temperature) takes no global rank")
        if rng is None:
            raise ValueError("a drawn choice (temperature) needs rng (see sample_rng)")
        want = draw_ranks(top, n_queries, temperature, rng)
    for q, r in (overrides or {}).items():
        if not 0 <= int(q) < n_queries:
            raise ValueError(f"segment {q} out of range 0..{n_queries - 1}")
        want[int(q)] = int(r)
    out = np.full(n_queries, -1, np.int64)
    sel = top.rank == want[top.query_index]
    out[top.query_index[sel]] = top.candidate_id[sel]
    return out


@dataclass
class PhotoReference:
    """A reference photo decomposed into candidate segments (:meth:`OnlineGuidance.photo_reference`).

    ``segments[j]`` is photo segment ``j`` (decomposition order); ``candidate[j]`` whether pruning
    kept it as a candidate; ``crops[j]`` its (RGB box crop H×W×3 uint8, bool mask) — what a database
    crop holds; ``index`` the exact top-k engine over the candidates (ids = ``j``)."""

    source: str | None
    shape: tuple[int, int]
    segments: list[Segment]
    candidate: np.ndarray
    crops: list[tuple[np.ndarray, np.ndarray]]
    index: SegmentIndex

    @property
    def class_ids(self) -> set[int]:
        """Classes with at least one candidate segment in the photo."""
        return {int(s.class_id) for s, c in zip(self.segments, self.candidate.tolist()) if c}

    @property
    def nbytes(self) -> int:
        return int(sum(r.nbytes + m.nbytes + s.mask.nbytes + 200 for (r, m), s in zip(self.crops, self.segments))
                   + self.index.memory_bytes() + self.index.packed.nbytes)


def photo_choice(ptop: TopK, n_queries: int) -> np.ndarray:
    """Photo segment per query from :meth:`OnlineGuidance.photo_topk` rows: the rank-0 one, −1 = none."""
    out = np.full(n_queries, -1, np.int64)
    sel = ptop.rank == 0
    out[ptop.query_index[sel]] = ptop.candidate_id[sel]
    return out


def with_photo(matches: np.ndarray, ptop: TopK, explicit=(), strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(database matches, photo matches) once a reference photo is applied to the database choice
    ``matches``: a query with a photo candidate takes it (its database match becomes −1) unless it is
    in ``explicit`` (local choices win); the others keep ``matches``, or with ``strict`` become −1
    (black) unless explicit."""
    n = len(matches)
    explicit = np.isin(np.arange(n), [int(i) for i in explicit])
    pm = photo_choice(ptop, n)
    pm[explicit] = -1
    out = np.asarray(matches, np.int64).copy()
    out[pm >= 0] = -1
    if strict:
        out[(pm < 0) & ~explicit] = -1
    return out, pm
