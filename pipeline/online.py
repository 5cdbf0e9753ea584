"""On-line guidance for label maps that are not in the database (synthesis and editing).

:class:`OnlineGuidance` loads the segment database and its exact index once; then each call
decomposes a new label map (+ optional instance map) exactly as ``resail decompose`` does,
retrieves against the database split (no image excluded) and composes the guidance image with the
paper's four rules — the same functions the offline stages use, so a label map that *is* in the
database gets exactly the guidance ``resail compose`` wrote for it.

Array conventions: labels H×W int (dataset class ids, ``ignore_id`` = void); instances H×W int
(0 = none); guidance H×W×3 uint8 RGB; valid H×W bool.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline import cache
from pipeline.cache import SegmentDB
from pipeline.composition import compose_guidance
from pipeline.errors import DataError
from pipeline.retrieval import NO_EXCLUDE, RetrievalParams, TopK
from pipeline.retrieval_db import build_index
from pipeline.segments import Segment, decompose, normalised_mask, pack_mask, segment_query_flags


@dataclass
class OnlineResult:
    guidance: np.ndarray  # H×W×3 uint8
    valid: np.ndarray  # H×W bool, pixels that received a paste
    segments: list[Segment]  # the label map's segments (query i = segments[i])
    topk: TopK  # query_index = index into ``segments``
    matches: np.ndarray  # chosen candidate segment id per query, −1 = black
    timings: dict = field(default_factory=dict)  # seconds: decompose, retrieve, compose


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
                 overrides: Mapping[int, int] | None = None, source: str | Path | None = None) -> OnlineResult:
        """Guidance of a label map. ``rank``: which candidate every segment takes (0 = best);
        ``overrides``: {segment index: rank} for single segments (local editing). A rank a
        segment does not have leaves it black, as in ``resail compose``."""
        t0 = time.perf_counter()
        self.check(labels, instances, source)
        segs, top = self.retrieve(labels, instances)
        t1 = time.perf_counter()
        matches = choose(top, len(segs), rank, overrides)
        guidance, valid = self.compose(labels, segs, matches)
        t2 = time.perf_counter()
        return OnlineResult(guidance, valid, segs, top, matches,
                            {"retrieve": t1 - t0, "compose": t2 - t1, "total": t2 - t0})

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "OnlineGuidance":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def choose(top: TopK, n_queries: int, rank: int = 0, overrides: Mapping[int, int] | None = None) -> np.ndarray:
    """Candidate id per query for a global ``rank`` and per-query ``overrides`` (−1 = black)."""
    if rank < 0 or any(r < 0 for r in (overrides or {}).values()):
        raise ValueError("ranks must be >= 0")
    want = np.full(n_queries, rank, np.int64)
    for q, r in (overrides or {}).items():
        if not 0 <= int(q) < n_queries:
            raise ValueError(f"segment {q} out of range 0..{n_queries - 1}")
        want[int(q)] = int(r)
    out = np.full(n_queries, -1, np.int64)
    sel = top.rank == want[top.query_index]
    out[top.query_index[sel]] = top.candidate_id[sel]
    return out
