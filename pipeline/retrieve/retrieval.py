"""Geometric-consistency score and the exact top-k retrieval engine (docs/method.md §2).

Score
-----
For a query segment q and a candidate c of the same class (lower = more similar)::

    D       = D_shape + alpha * D_scale
    D_shape = |Mq XOR Mc| / max(|Mq|, |Mc|)            (0 when both masks are empty)
    D_scale = 1 if max(sq, sc) >= 2 * min(sq, sc) else 0                   (scale_term="step")
            = |ln sq - ln sc|                                               (scale_term="log")

``M`` are the S×S normalised masks, ``|M|`` their pixel counts, ``s`` the bounding-box areas at the
original resolution (positive). ``max(sq/sc, sc/sq) >= 2`` is evaluated as the equivalent exact
comparison ``max >= 2·min``; the log term uses ``math.log`` of each area (:func:`log_areas`).

Float contract: every score that is reported or compared is produced by :func:`pair_scores` from
exact integers (the XOR count and the two popcounts) and float64 areas, with one fixed sequence of
IEEE float64 operations, so the engine and the brute-force reference agree bit for bit whatever the
device, batching or chunking. Orderings use those float64 values (ascending score, then lower
candidate id); :class:`TopK` reports them rounded to float32.

Admissible candidates: same class, candidate flag set, ``D <= max_score`` and, when the query names
an image to exclude (``exclude_image != -1``), a different image key.

Array conventions
-----------------
``packed``: uint8 [N, ceil(S*S/8)], each row ``np.packbits(mask.reshape(-1))`` of a bool S×S mask
(row-major, big-endian bit order, numpy's default). ``class_ids``/``image_keys``/``segment_ids``:
integers [N]; ``box_areas``: positive numbers [N] (``(y1-y0)*(x1-x0)``); ``candidate``: bool [N].

Engine (:class:`SegmentIndex`)
------------------------------
Candidates are grouped per class and sorted by (area octave ``floor(log2 s)``, popcount, id); each
octave of a class is cut into chunks of at most ``chunk_size`` candidates. Per segment the index
keeps the pixel counts of an 8×8 grid of tiles (64 numbers, from popcounts of the packed bytes).
Queries are grouped by class and sorted the same way into blocks of ``query_batch`` rows; a
block keeps a running exact top-k per query and ``tau`` = its k-th score (``max_score`` while it
holds fewer than k). Exact lower bounds of D, cheapest first:

* octave window: with the step term and ``tau < alpha`` a candidate must have ``ratio < 2``, so
  its octave is within one of the query's (log term: within ``ceil(tau / (alpha ln 2)) + 1``);
* popcount window: ``D >= |a-b| / max(a, b)`` (a, b popcounts) keeps ``b`` in
  ``[a(1-tau), a/(1-tau)]``; with the octave window this is one contiguous range per octave;
* tile bound: ``|Mq XOR Mc| >= sum_t |nq_t - nc_t|`` (L1 of the tile counts, ``torch.cdist(p=1)``
  over a block), plus the scale term, known exactly from the areas:
  ``LB = L1 / max(a, b) + alpha * D_scale <= D``.

Each block first visits every query's *home* chunk (own octave, nearest popcount) for that query
alone, then sweeps the other chunks, nearest octaves first, each restricted to the union of the
active queries' windows (queries whose window misses a chunk skip it). In a visit: compute LB;
a query holding fewer than k results *probes* its ``k + 2`` lowest-LB candidates exactly, which
sets a tight ``tau``; then every pair with ``LB <= tau`` (float32, with a relative slack of 1e-6
that absorbs its rounding) is re-checked in float64 with :func:`pair_scores` fed the tile L1 in
place of the XOR count (the same expression with a smaller integer, hence <= the exact score bit
for bit, and able to drop pairs that tie with the k-th score but have a higher id); the rest are
scored exactly (XOR + popcount of the packed rows: ``np.bitwise_count`` on uint64 words, a SWAR
popcount in torch on CUDA) and merged. Small classes (block × class <= 2**18 pairs) are a single
visit. A true top-k member, including one tied with the k-th score and a lower id, always has
``LB <= D <= tau`` at every step, so nothing it needs is pruned and the result equals the brute
force exactly, whatever the batching, chunking or device.

CPU threads: the search runs torch on one thread by default. Waking an OpenMP pool for many
small blocks costs more than it saves, and on a shared, loaded machine two threads measured 3-4×
*slower* than one. ``search(threads=n)`` lets blocks above ~16M pair-tiles use n threads (for an
idle many-core machine); for throughput, shard the queries across processes instead.

Memory model
------------
The index keeps a *reference* to the caller's packed array (no copy when it is C-contiguous
uint8; a read-only ``np.memmap`` works) and, per candidate, 180 bytes: tile counts (64 × uint16)
and row/id/image/sort key/area/log-area (int64/float64) and popcount (int32). A 1M-candidate
database at S=128 is therefore the 2.05 GB packed masks + 0.18 GB index. Search work memory is
bounded by the block, about ``query_batch × chunk_size × 24`` bytes of float32/bool matrices (≈25 MB
at the defaults), plus pair gathers of at most ``_PAIR_CHUNK`` pairs (≈16 MB), independent of
the database size. On CUDA the index also copies the tile counts (float32), metadata and the
candidates' packed rows to the GPU (~2.3 GB per 1M at S=128); final scores and the top-k merge
always run on the CPU through :func:`pair_scores`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

NO_EXCLUDE = -1
SCALE_TERMS = ("step", "log")

_ID_SENTINEL = np.iinfo(np.int64).max
_TILE_GRID = 8  # tiles per side of the lower-bound grid (8×8 = 64 tiles)
_PAIR_CHUNK = 4096  # pairs gathered at once in the exact stage
_REL_SLACK = 1e-6  # relative slack on thresholds compared with float32 bounds
_ABS_SLACK = 1e-9
_UINT_OF_BYTES = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_SINGLE_PASS_PAIRS = 1 << 18  # block x class pairs below which a class is one block
_BIG_BLOCK = 1 << 24  # block work (pairs x tiles) above which torch may use several threads


# --------------------------------------------------------------------------------------------
# Parameters and results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrievalParams:
    """Top-k size, admissibility threshold and scale term of the score (docs/method.md §2)."""

    k: int = 10
    max_score: float = float("inf")
    alpha: float = 1.0
    scale_term: str = "step"

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or int(self.k) != self.k or self.k < 1:
            raise ValueError(f"k must be a positive integer, got {self.k!r}")
        if not (0 <= self.alpha <= 1e30):  # bounds are float32: keep alpha * D_scale finite
            raise ValueError(f"alpha must be in [0, 1e30], got {self.alpha!r}")
        if self.scale_term not in SCALE_TERMS:
            raise ValueError(f"scale_term must be one of {SCALE_TERMS}, got {self.scale_term!r}")
        if math.isnan(self.max_score):
            raise ValueError("max_score must not be NaN")


@dataclass
class TopK:
    """Retrieval results, one row per (query, rank), sorted by query index then rank.

    ``query_index`` int64 (position of the query in the searched batch), ``rank`` int32 (0 = best),
    ``candidate_id`` int64 (segment id), ``score``/``shape_term``/``scale_term`` float32
    (``scale_term`` is D_scale before the alpha weight). Queries without an admissible candidate
    have no rows.
    """

    query_index: np.ndarray
    rank: np.ndarray
    candidate_id: np.ndarray
    score: np.ndarray
    shape_term: np.ndarray
    scale_term: np.ndarray

    FIELDS = ("query_index", "rank", "candidate_id", "score", "shape_term", "scale_term")

    @classmethod
    def empty(cls) -> "TopK":
        return cls(
            np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64),
            np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
        )

    def __len__(self) -> int:
        return int(self.query_index.shape[0])

    def columns(self) -> dict[str, np.ndarray]:
        return {f: getattr(self, f) for f in self.FIELDS}

    def only_queries(self, is_query: np.ndarray) -> "TopK":
        """The rows of the queries whose ``is_query[query_index]`` is True (pruned queries get none)."""
        keep = np.asarray(is_query, dtype=bool)[self.query_index] if len(self) else np.zeros(0, bool)
        return TopK(*(getattr(self, f)[keep] for f in self.FIELDS))

    def same_as(self, other: "TopK") -> bool:
        """Exact equality of every column (dtype and values)."""
        return all(
            getattr(self, f).dtype == getattr(other, f).dtype
            and np.array_equal(getattr(self, f), getattr(other, f))
            for f in self.FIELDS
        )

    def first_difference(self, other: "TopK") -> str | None:
        """A short description of the first mismatch, or None when identical."""
        if len(self) != len(other):
            return f"row counts differ: {len(self)} vs {len(other)}"
        for f in self.FIELDS:
            a, b = getattr(self, f), getattr(other, f)
            if a.dtype != b.dtype:
                return f"{f}: dtype {a.dtype} vs {b.dtype}"
            bad = np.flatnonzero(a != b)
            if bad.size:
                i = int(bad[0])
                return f"{f} differs at row {i} (query {self.query_index[i]}): {a[i]} vs {b[i]}"
        return None

    def for_query(self, q: int) -> "TopK":
        lo, hi = np.searchsorted(self.query_index, [q, q + 1])
        return TopK(*(getattr(self, f)[lo:hi] for f in self.FIELDS))


def _concat_topk(parts: list[TopK]) -> TopK:
    if not parts:
        return TopK.empty()
    cols = [np.concatenate([getattr(p, f) for p in parts]) for f in TopK.FIELDS]
    order = np.lexsort((cols[1], cols[0]))
    return TopK(*(c[order] for c in cols))


# --------------------------------------------------------------------------------------------
# Score
# --------------------------------------------------------------------------------------------
def log_areas(areas: np.ndarray) -> np.ndarray:
    """``math.log`` of each (positive) area as float64; one libm call per distinct value, so the
    same area always gives the same bits whatever array it sits in."""
    areas = np.asarray(areas, dtype=np.float64)
    uniq, inv = np.unique(areas, return_inverse=True)
    logs = np.fromiter((math.log(u) for u in uniq), dtype=np.float64, count=uniq.size)
    return logs[inv.reshape(areas.shape)]


def pair_scores(
    xor: np.ndarray,
    pop_q: np.ndarray,
    pop_c: np.ndarray,
    area_q: np.ndarray,
    area_c: np.ndarray,
    log_q: np.ndarray | None,
    log_c: np.ndarray | None,
    params: RetrievalParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score of pairs from exact integers: returns float64 ``(score, shape_term, scale_term)``.

    ``xor``/``pop_*`` integer arrays (exact counts), ``area_*`` float64 box areas, ``log_*`` the
    :func:`log_areas` of them (only read when ``scale_term == "log"``). This is the single
    definition of the score used by the engine and by every reference.
    """
    xor = np.asarray(xor, dtype=np.int64)
    m = np.maximum(np.asarray(pop_q, dtype=np.int64), np.asarray(pop_c, dtype=np.int64))
    # both masks empty -> xor == 0 -> 0 / 1 == 0
    shape = xor / np.maximum(m, 1)
    if params.scale_term == "step":
        aq = np.asarray(area_q, dtype=np.float64)
        ac = np.asarray(area_c, dtype=np.float64)
        scale = (np.maximum(aq, ac) >= 2.0 * np.minimum(aq, ac)).astype(np.float64)
    else:
        scale = np.abs(np.asarray(log_q, dtype=np.float64) - np.asarray(log_c, dtype=np.float64))
    score = shape + params.alpha * scale
    return score, shape, scale


def geometric_score(
    mask_q: np.ndarray, mask_c: np.ndarray, area_q: float, area_c: float,
    params: RetrievalParams = RetrievalParams(),
) -> tuple[float, float, float]:
    """Score of one pair of bool masks (same shape): ``(score, shape_term, scale_term)`` float64."""
    mq = np.asarray(mask_q, dtype=bool)
    mc = np.asarray(mask_c, dtype=bool)
    if mq.shape != mc.shape:
        raise ValueError(f"mask shapes differ: {mq.shape} vs {mc.shape}")
    _check_areas(np.array([area_q, area_c], dtype=np.float64), "area")
    xor = np.array([np.count_nonzero(mq ^ mc)])
    logs = log_areas(np.array([area_q, area_c], dtype=np.float64))
    s, sh, sc = pair_scores(
        xor, np.array([np.count_nonzero(mq)]), np.array([np.count_nonzero(mc)]),
        np.array([area_q], np.float64), np.array([area_c], np.float64), logs[:1], logs[1:], params,
    )
    return float(s[0]), float(sh[0]), float(sc[0])


# --------------------------------------------------------------------------------------------
# Packed-mask helpers
# --------------------------------------------------------------------------------------------
def mask_size_from_packed(nbytes: int) -> int:
    """Largest S with ``ceil(S*S/8) == nbytes`` (S = 128 for 2048 bytes)."""
    s = math.isqrt(nbytes * 8)
    while s > 0 and (s * s + 7) // 8 > nbytes:
        s -= 1
    if s <= 0 or (s * s + 7) // 8 != nbytes:
        raise ValueError(f"{nbytes} bytes per packed mask is not ceil(S*S/8) for any S")
    return s


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """bool [N, S, S] -> packed uint8 [N, ceil(S*S/8)] (``np.packbits`` of each flattened mask)."""
    masks = np.asarray(masks, dtype=bool)
    return np.packbits(masks.reshape(masks.shape[0], -1), axis=1)


def unpack_masks(packed: np.ndarray, mask_size: int) -> np.ndarray:
    """packed uint8 [N, ceil(S*S/8)] -> bool [N, S, S]."""
    packed = np.asarray(packed, dtype=np.uint8)
    bits = np.unpackbits(packed, axis=1, count=mask_size * mask_size)
    return bits.reshape(packed.shape[0], mask_size, mask_size).view(bool)


def tile_counts(packed: np.ndarray, mask_size: int, grid: int = _TILE_GRID,
                chunk: int = 8192) -> np.ndarray:
    """Pixel counts of a ``grid × grid`` tiling of each mask: uint16 [N, grid*grid].

    Tile edges are ``(i * S) // grid``. When every tile is whole bytes wide the counts come from
    popcounts of the packed bytes; otherwise masks are unpacked chunk by chunk.
    """
    packed = np.asarray(packed, dtype=np.uint8)
    n = packed.shape[0]
    g = max(1, min(grid, mask_size))
    out = np.empty((n, g * g), dtype=_tile_dtype(mask_size, g))
    s = mask_size
    fast = s % 8 == 0 and s % g == 0 and (s // g) % 8 == 0
    edges = (np.arange(g) * s) // g
    for lo in range(0, n, chunk):
        blk = np.ascontiguousarray(packed[lo:lo + chunk])
        if fast:
            w = s // g // 8  # bytes per tile row
            if w in _UINT_OF_BYTES:  # one word per tile row
                cnt = np.bitwise_count(blk.view(_UINT_OF_BYTES[w])).reshape(-1, g, s // g, g)
                out[lo:lo + chunk] = cnt.sum(axis=2, dtype=out.dtype).reshape(-1, g * g)
            else:
                cnt = np.bitwise_count(blk.reshape(-1, g, s // g, g, w))
                out[lo:lo + chunk] = cnt.sum(axis=(2, 4), dtype=out.dtype).reshape(-1, g * g)
        else:
            m = unpack_masks(blk, s).view(np.uint8)
            r = np.add.reduceat(m, edges, axis=1, dtype=np.uint32)
            r = np.add.reduceat(r, edges, axis=2, dtype=np.uint32)
            out[lo:lo + chunk] = r.reshape(-1, g * g)
    return out


def _xor_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact popcount of ``a ^ b`` per row of two uint8 [P, L] arrays -> int64 [P]."""
    if a.shape[1] % 8 == 0:
        a = a.view(np.uint64)
        b = b.view(np.uint64)
    return np.bitwise_count(a ^ b).sum(axis=1, dtype=np.int64)


_M1 = 0x5555555555555555
_M2 = 0x3333333333333333
_M4 = 0x0F0F0F0F0F0F0F0F
_H01 = 0x0101010101010101


def _torch_popcount64(x: torch.Tensor) -> torch.Tensor:
    """SWAR popcount of int64 words (arithmetic shifts are harmless: the masks clear the top
    bits they would set)."""
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    return (x * _H01) >> 56


def _check_areas(areas: np.ndarray, what: str) -> None:
    if areas.size and not (np.all(np.isfinite(areas)) and np.all(areas > 0)):
        raise ValueError(f"{what}: box areas must be finite and > 0")


def _as_packed(packed: np.ndarray, nbytes: int | None, what: str) -> np.ndarray:
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8:
        packed = np.asarray(packed, dtype=np.uint8)
    if packed.ndim != 2:
        raise ValueError(f"{what}: packed masks must be 2-D uint8 [N, bytes], got {packed.shape}")
    if nbytes is not None and packed.shape[1] != nbytes:
        raise ValueError(f"{what}: {packed.shape[1]} bytes per mask, index has {nbytes}")
    if not packed.flags.c_contiguous and not isinstance(packed, np.memmap):
        packed = np.ascontiguousarray(packed)
    return packed


def _vec(x, n: int, dtype, what: str) -> np.ndarray:
    a = np.asarray(x).reshape(-1).astype(dtype, copy=False)
    if a.shape[0] != n:
        raise ValueError(f"{what}: expected {n} values, got {a.shape[0]}")
    return a


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}")
    return dev


# --------------------------------------------------------------------------------------------
# Brute-force reference
# --------------------------------------------------------------------------------------------
def brute_force_topk(
    packed_q: np.ndarray,
    class_q,
    box_area_q,
    exclude_image_q,
    packed_c: np.ndarray,
    class_c,
    box_area_c,
    image_c,
    segment_id_c,
    candidate_c=None,
    params: RetrievalParams = RetrievalParams(),
    mask_size: int | None = None,
) -> TopK:
    """Plain reference: for each query, unpack, XOR-count against every admissible same-class
    candidate, score with :func:`pair_scores`, sort by (score, id), keep k. Slow; for tests."""
    packed_q = _as_packed(packed_q, None, "queries")
    packed_c = _as_packed(packed_c, packed_q.shape[1], "candidates")
    s = mask_size or mask_size_from_packed(packed_c.shape[1])
    nq, nc = packed_q.shape[0], packed_c.shape[0]
    cq = _vec(class_q, nq, np.int64, "class_q")
    aq = _vec(box_area_q, nq, np.float64, "box_area_q")
    if exclude_image_q is None:
        exclude_image_q = np.full(nq, NO_EXCLUDE)
    eq = _vec(exclude_image_q, nq, np.int64, "exclude_image_q")
    cc = _vec(class_c, nc, np.int64, "class_c")
    ac = _vec(box_area_c, nc, np.float64, "box_area_c")
    ic = _vec(image_c, nc, np.int64, "image_c")
    idc = _vec(segment_id_c, nc, np.int64, "segment_id_c")
    cand = np.ones(nc, bool) if candidate_c is None else _vec(candidate_c, nc, bool, "candidate")
    _check_areas(aq, "queries")
    _check_areas(ac, "candidates")
    lq, lc = log_areas(aq), log_areas(ac)
    mq_all = unpack_masks(packed_q, s)
    mc_all = unpack_masks(packed_c, s)
    pop_c = mc_all.reshape(nc, -1).sum(axis=1, dtype=np.int64)
    parts = []
    for i in range(nq):
        sel = (cc == cq[i]) & cand
        if eq[i] != NO_EXCLUDE:
            sel &= ic != eq[i]
        idx = np.flatnonzero(sel)
        if idx.size == 0:
            continue
        mq = mq_all[i]
        xor = (mc_all[idx] != mq).reshape(idx.size, -1).sum(axis=1, dtype=np.int64)
        pq = np.full(idx.size, int(mq.sum()), np.int64)
        score, shape, scale = pair_scores(
            xor, pq, pop_c[idx], np.full(idx.size, aq[i]), ac[idx],
            np.full(idx.size, lq[i]), lc[idx], params)
        ok = score <= params.max_score
        idx, score, shape, scale = idx[ok], score[ok], shape[ok], scale[ok]
        order = np.lexsort((idc[idx], score))[: params.k]
        r = order.size
        parts.append(TopK(
            np.full(r, i, np.int64), np.arange(r, dtype=np.int32), idc[idx][order],
            score[order].astype(np.float32), shape[order].astype(np.float32),
            scale[order].astype(np.float32)))
    return _concat_topk(parts)


# --------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------
class _Best:
    """Running top-k of a query block (float64 scores, ascending, ties by lower id)."""

    def __init__(self, nq: int, k: int) -> None:
        self.k = k
        self.score = np.full((nq, k), np.inf)
        self.id = np.full((nq, k), _ID_SENTINEL, np.int64)
        self.shape = np.zeros((nq, k))
        self.scale = np.zeros((nq, k))
        self.count = np.zeros(nq, np.int64)

    def tau(self, max_score: float) -> np.ndarray:
        """Largest score a new candidate may have and still enter (inf while not full)."""
        return np.minimum(self.score[:, -1], max_score)

    def merge(self, q, score, cid, shape, scale) -> None:
        """Merge scored pairs (block row ``q``); a pair already held is dropped."""
        if q.size == 0:
            return
        k = self.k
        rows = np.unique(q)
        held_s = self.score[rows]
        hr, hc = np.nonzero(np.isfinite(held_s))
        held_id = self.id[rows]
        all_q = np.concatenate([hr, np.searchsorted(rows, q)])
        all_s = np.concatenate([held_s[hr, hc], score])
        all_id = np.concatenate([held_id[hr, hc], cid])
        all_sh = np.concatenate([self.shape[rows][hr, hc], shape])
        all_sc = np.concatenate([self.scale[rows][hr, hc], scale])
        order = np.lexsort((all_id, all_s, all_q))
        qs, ids = all_q[order], all_id[order]
        first = np.ones(order.size, bool)
        first[1:] = (qs[1:] != qs[:-1]) | (ids[1:] != ids[:-1])
        order, qs = order[first], qs[first]
        rank = np.arange(qs.size) - np.searchsorted(qs, np.arange(rows.size))[qs]
        top = rank < k
        keep, r, c = order[top], qs[top], rank[top]
        new_s = np.full((rows.size, k), np.inf)
        new_id = np.full((rows.size, k), _ID_SENTINEL, np.int64)
        new_sh = np.zeros((rows.size, k))
        new_sc = np.zeros((rows.size, k))
        new_s[r, c] = all_s[keep]
        new_id[r, c] = all_id[keep]
        new_sh[r, c] = all_sh[keep]
        new_sc[r, c] = all_sc[keep]
        self.score[rows] = new_s
        self.id[rows] = new_id
        self.shape[rows] = new_sh
        self.scale[rows] = new_sc
        self.count[rows] = np.bincount(r, minlength=rows.size)


class _torch_threads:
    """Temporarily set torch's intra-op CPU threads (restored on exit; no-op when equal)."""

    def __init__(self, n: int) -> None:
        self.n = max(1, int(n))
        self.old = 0

    def __enter__(self) -> None:
        self.old = torch.get_num_threads()
        if self.old != self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        if torch.get_num_threads() != self.old:
            torch.set_num_threads(self.old)


@dataclass
class _Queries:
    packed: np.ndarray
    tiles: np.ndarray
    pop: np.ndarray
    area: np.ndarray
    log: np.ndarray
    excl: np.ndarray
    bucket: np.ndarray
    stats: dict


class SegmentIndex:
    """Exact top-k index over the candidate segments (see the module docstring).

    Build once with :meth:`build`; :meth:`search` is batched, read-only and cheap per call, so the
    same object serves the offline ``retrieve`` stage and on-line synthesis.
    """

    def __init__(self) -> None:  # use build()
        self.mask_size = 0
        self.nbytes = 0
        self.device = torch.device("cpu")
        self.chunk_size = 8192
        self._on_device = False

    # ---------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        packed: np.ndarray,
        class_ids,
        box_areas,
        image_keys,
        segment_ids=None,
        candidate=None,
        *,
        mask_size: int | None = None,
        device: str | torch.device = "cpu",
        chunk_size: int = 8192,
        _torch_exact: bool = False,
    ) -> "SegmentIndex":
        """Index the rows of ``packed`` whose ``candidate`` flag is set (all rows by default).

        ``segment_ids`` default to the row numbers (they are the reported ids and the tie-break).
        ``packed`` is kept by reference, not copied: keep it alive and unchanged. ``device``:
        "cpu", "cuda" or "auto" (CUDA when available). ``chunk_size``: candidates per streamed
        block (a memory/speed knob; results never depend on it). ``_torch_exact`` (tests): use
        the device code path (torch tensors, SWAR popcount) on the CPU as well.
        """
        self = cls()
        packed = _as_packed(packed, None, "candidates")
        n = packed.shape[0]
        self.nbytes = packed.shape[1]
        self.mask_size = int(mask_size or mask_size_from_packed(self.nbytes))
        if (self.mask_size ** 2 + 7) // 8 != self.nbytes:
            raise ValueError(f"mask_size {self.mask_size} does not match {self.nbytes} bytes")
        if self.mask_size > 2048:  # tile L1 sums must stay exact in float32
            raise ValueError(f"mask_size {self.mask_size} > 2048 is not supported")
        self.device = _resolve_device(device)
        self.chunk_size = int(chunk_size)
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        cls_all = _vec(class_ids, n, np.int64, "class_ids")
        area_all = _vec(box_areas, n, np.float64, "box_areas")
        img_all = _vec(image_keys, n, np.int64, "image_keys")
        ids_all = (np.arange(n, dtype=np.int64) if segment_ids is None
                   else _vec(segment_ids, n, np.int64, "segment_ids"))
        cand = np.ones(n, bool) if candidate is None else _vec(candidate, n, bool, "candidate")
        rows = np.flatnonzero(cand)
        area = area_all[rows]
        _check_areas(area, "candidates")
        self._packed = packed
        tiles = np.empty((rows.size, _grid(self.mask_size) ** 2), _tile_dtype(self.mask_size))
        step = 65536
        for lo in range(0, rows.size, step):
            r = rows[lo:lo + step]
            blk = packed[lo:lo + r.size] if rows.size == n else packed[r]
            tiles[lo:lo + r.size] = tile_counts(blk, self.mask_size)
        pop = tiles.sum(axis=1, dtype=np.int64)
        # key = area octave * M + popcount: sorted per class, both windows are contiguous ranges
        self._M = self.mask_size * self.mask_size + 1
        octave = _octave(area)
        self._omin = int(octave.min()) if octave.size else 0
        self._nbuckets = int(octave.max()) - self._omin + 1 if octave.size else 1
        key = (octave - self._omin) * self._M + pop
        order = np.lexsort((ids_all[rows], key, cls_all[rows]))
        self._rows = rows[order]
        self._tiles = tiles[order]
        del tiles
        self._key = key[order]
        self._pop = pop[order].astype(np.int32)
        self._ids = ids_all[self._rows]
        self._img = img_all[self._rows]
        self._area = area[order]
        self._log = log_areas(self._area)
        c = cls_all[self._rows]
        self._classes, self._starts = np.unique(c, return_index=True)
        self._ends = np.append(self._starts[1:], c.size)
        self._on_device = self.device.type == "cuda" or _torch_exact
        if self._on_device:
            self._to_device()
        return self

    def _to_device(self) -> None:
        dev = self.device
        self._tiles_dev = torch.from_numpy(self._tiles.astype(np.float32)).to(dev)
        self._pop_dev = torch.from_numpy(self._pop.astype(np.float32)).to(dev)
        self._area_dev = torch.from_numpy(self._area).to(dev)
        self._log_dev = torch.from_numpy(self._log).to(dev)
        self._img_dev = torch.from_numpy(self._img).to(dev)
        words = -(-self.nbytes // 8)
        parts = []
        for lo in range(0, self._rows.size, 65536):
            blk = _pad_words(self._packed[self._rows[lo:lo + 65536]], words)
            parts.append(torch.from_numpy(blk.view(np.int64)).to(dev))
        self._packed_dev = (torch.cat(parts) if parts
                            else torch.zeros((0, words), dtype=torch.int64, device=dev))

    def __len__(self) -> int:
        return int(self._rows.size)

    @property
    def packed(self) -> np.ndarray:
        """The packed mask array given to :meth:`build` (by reference; all rows, not only the
        candidates), e.g. to take query rows from without a second copy."""
        return self._packed

    @property
    def classes(self) -> np.ndarray:
        return self._classes.copy()

    def class_size(self, class_id: int) -> int:
        i = np.searchsorted(self._classes, class_id)
        if i < self._classes.size and self._classes[i] == class_id:
            return int(self._ends[i] - self._starts[i])
        return 0

    def memory_bytes(self) -> int:
        """Bytes held by the index on the host (excluding the referenced packed array)."""
        return sum(a.nbytes for a in (self._rows, self._tiles, self._key, self._pop, self._ids,
                                      self._img, self._area, self._log))

    # ---------------------------------------------------------------- search
    def search(
        self,
        packed_q: np.ndarray,
        class_q,
        box_area_q,
        exclude_image_q=None,
        params: RetrievalParams = RetrievalParams(),
        *,
        query_batch: int = 128,
        chunk_size: int | None = None,
        threads: int | None = None,
        stats: dict | None = None,
    ) -> TopK:
        """Exact top-k for each query (rows of ``packed_q``), identical to :func:`brute_force_topk`.

        ``exclude_image_q``: per query an image key whose candidates are skipped, or -1 for none
        (None = no exclusion). ``query_batch``/``chunk_size`` trade memory for speed only.
        ``threads``: torch CPU threads for large blocks (default 1; small blocks always run on
        one thread). ``stats``: optional dict that receives work counters (``bounded_pairs``: pairs
        given a tile bound, ``scored_pairs``: pairs scored exactly, ``blocks``).
        """
        packed_q = _as_packed(packed_q, self.nbytes, "queries")
        nq = packed_q.shape[0]
        cq = _vec(class_q, nq, np.int64, "class_q")
        aq = _vec(box_area_q, nq, np.float64, "box_area_q")
        if exclude_image_q is None:
            exclude_image_q = np.full(nq, NO_EXCLUDE)
        eq = _vec(exclude_image_q, nq, np.int64, "exclude_image_q")
        _check_areas(aq, "queries")
        if query_batch < 1:
            raise ValueError("query_batch must be >= 1")
        chunk = int(chunk_size or self.chunk_size)
        if chunk < 1:
            raise ValueError("chunk_size must be >= 1")
        stats = stats if stats is not None else {}
        for key in ("bounded_pairs", "scored_pairs", "blocks"):
            stats.setdefault(key, 0)
        if nq == 0 or len(self) == 0 or params.max_score < 0:
            return TopK.empty()
        tq = tile_counts(packed_q, self.mask_size)
        pq = tq.sum(axis=1, dtype=np.int64)
        qb = _octave(aq) - self._omin
        q = _Queries(packed_q, tq, pq, aq, log_areas(aq), eq, qb, stats)
        big_threads = int(threads or 1)
        order = np.lexsort((np.arange(nq), pq, qb, cq))
        cs = cq[order]
        parts = []
        with _torch_threads(1):
            for grp in np.split(order, np.flatnonzero(np.diff(cs)) + 1):
                ci = int(np.searchsorted(self._classes, cq[grp[0]]))
                if ci >= self._classes.size or self._classes[ci] != cq[grp[0]]:
                    continue
                s, e = int(self._starts[ci]), int(self._ends[ci])
                for lo in range(0, grp.size, query_batch):
                    parts.append(self._search_block(q, grp[lo:lo + query_batch], s, e, params,
                                                    chunk, big_threads))
        return _concat_topk(parts)

    # one block: queries `sel` (same class, sorted by octave and popcount) against [s, e)
    def _search_block(self, q: _Queries, sel: np.ndarray, s: int, e: int,
                      params: RetrievalParams, chunk: int, big_threads: int) -> TopK:
        nb = sel.size
        best = _Best(nb, params.k)
        blk = _Block(self, q, sel, best, params, big_threads)
        if nb * (e - s) <= _SINGLE_PASS_PAIRS and e - s <= chunk:
            # little work: one block over the whole class beats many small ones
            blk.run(np.arange(nb), s, e)
            return blk.result()
        keyc = self._key[s:e]
        M = self._M
        nbk = self._nbuckets
        # chunks: each octave's range split into pieces of <= chunk candidates
        bstart = s + np.searchsorted(keyc, np.arange(nbk + 1, dtype=np.int64) * M)
        ch_lo, ch_b = [], []
        for ob in np.flatnonzero(bstart[1:] > bstart[:-1]):
            for lo in range(int(bstart[ob]), int(bstart[ob + 1]), chunk):
                ch_lo.append(lo)
                ch_b.append(ob)
        ch_lo = np.array(ch_lo, np.int64)
        ch_b = np.array(ch_b, np.int64)
        ch_hi = np.minimum(ch_lo + chunk, bstart[ch_b + 1])
        # home chunk of each query: its own octave, nearest popcount (-1: octave empty)
        pq = q.pop[sel]
        qb = q.bucket[sel]
        qbc = np.clip(qb, 0, nbk - 1)
        in_b = (qb == qbc) & (bstart[qbc + 1] > bstart[qbc])
        hp = s + np.searchsorted(keyc, qbc * M + pq)
        hp = np.minimum(hp, bstart[qbc + 1] - 1)
        home = np.where(in_b, np.searchsorted(ch_lo, hp, side="right") - 1, -1)
        # 1) home phase: each query first meets the candidates most like it (same octave, near
        #    popcount) and probes them, which gives a tight threshold before the sweep
        for j in np.unique(home[home >= 0]):
            act = np.flatnonzero(home == j)
            blk.run(act, int(ch_lo[j]), int(ch_hi[j]))
        # 2) sweep: every chunk, nearest octaves first, restricted to the queries' windows
        mid_b = np.median(qbc)
        mid_p = np.median(hp)
        sweep = np.lexsort((np.abs(ch_lo - mid_p), np.abs(ch_b - mid_b)))
        for j in sweep:
            lo_c, hi_c, bj = int(ch_lo[j]), int(ch_hi[j]), int(ch_b[j])
            tau = best.tau(params.max_score)
            reach = _octave_reach(tau, params)
            lo_p, hi_p = _pop_window(pq, tau, M - 1)
            a = lo_c + np.searchsorted(keyc[lo_c - s:hi_c - s], bj * M + lo_p, side="left")
            b = lo_c + np.searchsorted(keyc[lo_c - s:hi_c - s], bj * M + hi_p, side="right")
            ok = (b > a) & (np.abs(qb - bj) <= reach) & (home != j)
            act = np.flatnonzero(ok)
            if act.size:
                blk.run(act, int(a[act].min()), int(b[act].max()))
        return blk.result()

    def _bounds(self, tq, pq, aq, lq, eq, has_ex, a: int, b: int,
                params: RetrievalParams) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 [Qa, b-a]: tile L1 distances (exact integers) and lower bounds of D (inf for
        excluded pairs)."""
        if self._on_device:
            tc = self._tiles_dev[a:b]
            pc = self._pop_dev[a:b]
            ac = self._area_dev[a:b]
            lc = self._log_dev[a:b]
            ic = self._img_dev[a:b]
        else:
            tc = torch.from_numpy(self._tiles[a:b].astype(np.float32))
            pc = torch.from_numpy(self._pop[a:b].astype(np.float32))
            ac = torch.from_numpy(self._area[a:b])
            lc = torch.from_numpy(self._log[a:b])
            ic = torch.from_numpy(self._img[a:b])
        l1 = torch.cdist(tq, tc, p=1.0)  # exact integers in float32 (sums < 2**24)
        m = torch.maximum(pq[:, None], pc[None, :]).clamp_min_(1.0)
        lb = l1 / m
        if params.alpha > 0:
            if params.scale_term == "step":
                step = (ac[None, :] >= (2.0 * aq)[:, None]) | (ac[None, :] <= (0.5 * aq)[:, None])
                lb.add_(step.to(lb.dtype), alpha=params.alpha)
            else:
                # difference in float64, then one float32 rounding (relative, inside the slack)
                lb.add_((lq[:, None] - lc[None, :]).abs_().to(lb.dtype), alpha=params.alpha)
        lb.masked_fill_(has_ex[:, None] & (ic[None, :] == eq[:, None]), float("inf"))
        return l1, lb

    def _refine(self, q: _Queries, sel: np.ndarray, best: _Best, qb: np.ndarray,
                cpos: np.ndarray, l1: np.ndarray,
                params: RetrievalParams) -> tuple[np.ndarray, np.ndarray]:
        """Exact float64 filter of survivor pairs before their masks are read.

        :func:`pair_scores` with the tile L1 in place of the XOR count is the same float64
        expression with a smaller integer, so it is <= the exact score bit for bit (IEEE rounding
        is monotone). A pair cannot enter when that bound exceeds the row's threshold, or equals it
        while the row is full and its id is above the k-th id (ties go to lower ids).
        """
        qrows = sel[qb]
        lb, _, _ = pair_scores(l1, q.pop[qrows], self._pop[cpos], q.area[qrows], self._area[cpos],
                               q.log[qrows], self._log[cpos], params)
        tau = best.tau(params.max_score)[qb]
        full = best.count[qb] >= best.k
        kth_id = best.id[qb, -1]
        ok = (lb < tau) | ((lb == tau) & (~full | (self._ids[cpos] < kth_id)))
        return qb[ok], cpos[ok]

    def _score_pairs(self, q: _Queries, sel: np.ndarray, best: _Best, qb: np.ndarray,
                     cpos: np.ndarray, params: RetrievalParams) -> None:
        """Exact scores of pairs (block row ``qb``, sorted candidate position ``cpos``); merge."""
        if qb.size == 0:
            return
        qrows = sel[qb]
        q.stats["scored_pairs"] += qb.size
        xor = np.empty(qb.size, np.int64)
        for lo in range(0, qb.size, _PAIR_CHUNK):
            hi = lo + _PAIR_CHUNK
            if self._on_device:
                xor[lo:hi] = self._xor_counts_dev(q.packed[qrows[lo:hi]], cpos[lo:hi])
            else:
                xor[lo:hi] = _xor_counts(q.packed[qrows[lo:hi]],
                                         self._packed[self._rows[cpos[lo:hi]]])
        score, shape, scale = pair_scores(
            xor, q.pop[qrows], self._pop[cpos], q.area[qrows], self._area[cpos],
            q.log[qrows], self._log[cpos], params)
        ok = score <= params.max_score
        best.merge(qb[ok], score[ok], self._ids[cpos[ok]], shape[ok], scale[ok])

    def _xor_counts_dev(self, qpacked: np.ndarray, cpos: np.ndarray) -> np.ndarray:
        words = self._packed_dev.shape[1]
        qa = torch.from_numpy(_pad_words(qpacked, words).view(np.int64)).to(self.device)
        cb = self._packed_dev[torch.from_numpy(cpos).to(self.device)]
        return _torch_popcount64(qa ^ cb).sum(dim=1).cpu().numpy().astype(np.int64)


class _Block:
    """Bound / probe / filter / score steps of one query block against candidate ranges."""

    def __init__(self, index: SegmentIndex, q: _Queries, sel: np.ndarray, best: _Best,
                 params: RetrievalParams, big_threads: int) -> None:
        self.ix = index
        self.q = q
        self.sel = sel
        self.best = best
        self.params = params
        self.big_threads = big_threads
        dev = self.dev = index.device
        self.tq = torch.from_numpy(q.tiles[sel].astype(np.float32)).to(dev)
        self.pq = torch.from_numpy(q.pop[sel].astype(np.float32)).to(dev)
        self.aq = torch.from_numpy(q.area[sel]).to(dev)
        self.lq = torch.from_numpy(q.log[sel]).to(dev)
        self.eq = torch.from_numpy(q.excl[sel]).to(dev)
        self.has_ex = self.eq != NO_EXCLUDE
        self.kp = params.k + 2

    def result(self) -> TopK:
        best, sel = self.best, self.sel
        rows, ranks = np.nonzero(np.isfinite(best.score))
        return TopK(
            sel[rows].astype(np.int64), ranks.astype(np.int32), best.id[rows, ranks],
            best.score[rows, ranks].astype(np.float32), best.shape[rows, ranks].astype(np.float32),
            best.scale[rows, ranks].astype(np.float32))

    def run(self, act: np.ndarray, a: int, b: int) -> None:
        """Block rows ``act`` against sorted candidate positions [a, b)."""
        ix, q, best, params, dev = self.ix, self.q, self.best, self.params, self.dev
        q.stats["blocks"] += 1
        q.stats["bounded_pairs"] += act.size * (b - a)
        act_t = torch.from_numpy(act).to(dev)
        work = act.size * (b - a) * self.tq.shape[1]
        threads = self.big_threads if (dev.type == "cpu" and work >= _BIG_BLOCK) else 1
        with _torch_threads(threads):
            l1, lb = ix._bounds(self.tq[act_t], self.pq[act_t], self.aq[act_t], self.lq[act_t],
                                self.eq[act_t], self.has_ex[act_t], a, b, params)
        # probe: rows not yet full score their k+2 lowest-bound candidates exactly (bound ties go
        # to lower positions = lower ids, which keeps groups of identical masks cheap)
        need = np.flatnonzero(best.count[act] < params.k)
        if need.size:
            need_t = torch.from_numpy(need).to(dev)
            kk = min(self.kp, b - a)
            key = lb[need_t] + torch.arange(b - a, device=dev, dtype=lb.dtype) * 1e-7
            _, cols = torch.topk(key, kk, dim=1, largest=False, sorted=False)
            rr = need_t[:, None].expand_as(cols)
            fin = torch.isfinite(lb[rr, cols])
            rr, cc = rr[fin], cols[fin]
            lb[rr, cc] = float("inf")  # not scored twice in this block
            ix._score_pairs(q, self.sel, best, act[rr.cpu().numpy()], a + cc.cpu().numpy(),
                            params)
        # survivors: bound <= threshold (slack covers the float32 rounding), then exact filter
        tau = best.tau(params.max_score)[act]
        with np.errstate(over="ignore"):  # a huge finite max_score becomes inf: no pruning
            tau_s = (tau * (1.0 + _REL_SLACK) + _ABS_SLACK).astype(np.float32)
        # (inf marks excluded or already probed pairs; it must not pass while tau is inf)
        nz = torch.nonzero((lb <= torch.from_numpy(tau_s).to(dev)[:, None]) & torch.isfinite(lb))
        if nz.shape[0]:
            l1v = l1[nz[:, 0], nz[:, 1]].cpu().numpy().astype(np.int64)
            nz = nz.cpu().numpy()
            qb, cpos = ix._refine(q, self.sel, best, act[nz[:, 0]], a + nz[:, 1], l1v, params)
            ix._score_pairs(q, self.sel, best, qb, cpos, params)


def _pad_words(packed: np.ndarray, words: int) -> np.ndarray:
    """uint8 [n, L] -> C-contiguous uint8 [n, 8*words] (zero padding: XOR counts unchanged)."""
    if packed.shape[1] == words * 8:
        return np.ascontiguousarray(packed)
    out = np.zeros((packed.shape[0], words * 8), np.uint8)
    out[:, : packed.shape[1]] = packed
    return out


def _grid(mask_size: int) -> int:
    return max(1, min(_TILE_GRID, mask_size))


def _tile_dtype(mask_size: int, grid: int | None = None):
    g = grid or _grid(mask_size)
    biggest = (-(-mask_size // g)) ** 2  # pixels in the largest tile
    return np.uint16 if biggest <= np.iinfo(np.uint16).max else np.uint32


def _octave(areas: np.ndarray) -> np.ndarray:
    """floor(log2(area)) exactly (from the float exponent), int64."""
    return np.frexp(np.asarray(areas, dtype=np.float64))[1].astype(np.int64) - 1


def _octave_reach(tau: np.ndarray, params: RetrievalParams) -> np.ndarray:
    """Largest |octave(sq) - octave(sc)| of a pair that can have D <= tau (int64 per row).

    step: D <= tau < alpha forces ratio < 2, i.e. octaves at most 1 apart. log: alpha*|ln sq -
    ln sc| <= D gives |log2 sq - log2 sc| <= tau / (alpha ln 2), octaves at most ceil() + 1
    apart. Otherwise unbounded. Thresholds carry the same slack as the bounds.
    """
    unbounded = np.int64(1 << 40)
    t = tau * (1.0 + _REL_SLACK) + _ABS_SLACK
    if params.alpha == 0:
        return np.full(tau.shape, unbounded)
    if params.scale_term == "step":
        return np.where(t < params.alpha, 1, unbounded)
    with np.errstate(over="ignore", invalid="ignore"):
        d = t / (params.alpha * math.log(2.0)) * (1.0 + 1e-9)
    fin = np.isfinite(d) & (d < 1e9)
    out = np.full(tau.shape, unbounded)
    out[fin] = np.ceil(d[fin]).astype(np.int64) + 1
    return out


def _pop_window(pop: np.ndarray, tau: np.ndarray, pmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Popcount range [lo, hi] (int64, within [0, pmax]) that can hold a candidate with D <= tau.

    D >= |a-b|/max(a,b): b >= a(1-tau) and b <= a/(1-tau) (any b once tau >= 1); thresholds carry
    the same slack as the bounds and the range is widened by one.
    """
    t = tau * (1.0 + _REL_SLACK) + _ABS_SLACK
    a = pop.astype(np.float64)
    lo = np.zeros(pop.shape, np.int64)
    hi = np.full(pop.shape, pmax, np.int64)
    fin = t < 1.0
    lo[fin] = np.clip(np.floor(a[fin] * (1.0 - t[fin])) - 1.0, 0, pmax).astype(np.int64)
    hi[fin] = np.clip(np.ceil(a[fin] / (1.0 - t[fin])) + 1.0, 0, pmax).astype(np.int64)
    return lo, hi
